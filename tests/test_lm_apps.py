"""Small language models in apps: `edgekd.runtime.load` on a text-generation build (a Generator: prompts
written as the build wrote them, greedy and sampled text equal to the causal LM's tokens, streaming,
stop strings, one-line refusals, no torch) and `edgekd serve` on it (/generate, OpenAI's
/v1/chat/completions and /v1/completions, streamed and not, bad requests, capacity, disconnects), and
the example apps in examples/apps against the runtime (the Python app as a command, the Node.js app
under node's test runner, the web page in headless Chromium; as tests/test_apps.py runs them on image
builds), on one tiny Llama-class build."""

import asyncio
import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

pytest.importorskip("transformers")
pytest.importorskip("optimum.exporters.onnx")
pytest.importorskip("jinja2")
sys.path.insert(0, str(Path(__file__).parent))
from conftest import chromium, missing  # noqa: E402
from test_apps import _serve  # noqa: E402  (the apps' local HTTP server)

PROMPTS = ["def add(a, b):\n    return a + b", "def upper(text): # ü ✓"]


@pytest.fixture(scope="module")
def build(tiny_lm_build) -> Path:
    return tiny_lm_build("llama")


@pytest.fixture(scope="module")
def gen(build):
    import edgekd.runtime

    return edgekd.runtime.load(build)


def _copy(build: Path, tmp_path: Path) -> Path:
    out = tmp_path / build.name
    shutil.copytree(build, out, ignore=shutil.ignore_patterns("teacher", "student-baseline", "student-fp32", "report*"))
    return out


# ---------------------------------------------------------------- the runtime

def test_prompts_are_the_builds_prompts(build, gen, tmp_path):
    """The runtime's prompt tokens (chat template rendered with jinja2, no transformers) are those of the
    build's own prompt_ids with transformers' tokenizer, with and without the chat template."""
    from transformers import AutoTokenizer

    import edgekd.runtime
    from edgekd.errors import InputError
    from edgekd.recipe_lm import LMSpec
    from edgekd.tasks._lm_data import prompt_ids

    lock = tomllib.loads((build / "recipe.lock.toml").read_text())["lm"]
    lm = LMSpec(instruction=lock["instruction"], chat=lock["chat"])
    tok = AutoTokenizer.from_pretrained(build / "student-int4")
    assert gen.chat and gen.instruction == lm.instruction
    for p in PROMPTS:
        assert gen.prompt_ids(p) == prompt_ids(tok, p, lm), p

    plain = _copy(build, tmp_path)  # the same model, prompts written without the chat template
    m = json.loads((plain / "manifest.json").read_text())
    m["preprocessing"]["chat_template"] = False
    (plain / "manifest.json").write_text(json.dumps(m))
    g = edgekd.runtime.load(plain)
    lm = LMSpec(instruction=lock["instruction"], chat="false")
    for p in PROMPTS:
        assert g.prompt_ids(p) == prompt_ids(tok, p, lm), p
    assert g.prompt_ids([{"role": "user", "content": "x"}]) == tok("x\n")["input_ids"]
    with pytest.raises(InputError, match="without a chat template"):
        g.prompt_ids([{"role": "system", "content": "a"}, {"role": "user", "content": "b"}])


TEMPLATE = """{{ bos_token }}
{% for message in messages %}
    {% if message['role'] not in ['system', 'user', 'assistant'] %}
        {{ raise_exception('Unknown role: ' + message['role']) }}
    {% endif %}
    {% if loop.first and message['role'] == 'system' %}
<|im_start|>system
{{ message['content'] | trim }} {{ {'lang': 'fr', 'note': '<é>'} | tojson }}<|im_end|>
    {% else %}
<|im_start|>{{ message['role'] }}
{% generation %}{{ message['content'] }}{% endgeneration %}<|im_end|>
    {% endif %}
{% endfor %}
{% if add_generation_prompt %}
<|im_start|>assistant
{% endif %}"""


def test_a_chat_template_renders_as_transformers_renders_it(build, tmp_path):
    """Whitespace control, loop variables, tojson, {% generation %}, the special tokens and
    raise_exception, against transformers' apply_chat_template on the same folder."""
    from transformers import AutoTokenizer

    import edgekd.runtime
    from edgekd.errors import InputError

    folder = _copy(build, tmp_path)
    (folder / "student-int4" / "chat_template.jinja").write_text(TEMPLATE)
    g = edgekd.runtime.load(folder)
    tok = AutoTokenizer.from_pretrained(folder / "student-int4")
    chats = [[{"role": "user", "content": "def f(x): return x"}],
             [{"role": "system", "content": "  Be brief.  "}, {"role": "user", "content": "ünï ✓"},
              {"role": "assistant", "content": "ok"}, {"role": "user", "content": "again"}]]
    for chat in chats:
        want = tok.apply_chat_template(chat, add_generation_prompt=True, tokenize=True)
        want = list(want if isinstance(want, list) else want["input_ids"])
        assert g.prompt_ids(chat) == want
    with pytest.raises(InputError, match="Unknown role: tool") as e:
        g.prompt_ids([{"role": "tool", "content": "x"}])
    assert "\n" not in str(e.value)


def test_greedy_and_sampled_text_are_the_causal_lms_tokens(build, gen):
    """generate decodes exactly the tokens CausalLM.generate picks from the same prompt ids, greedy and
    sampled with a seed; stream's pieces join to generate's text, one piece per token."""
    from edgekd.lm_runtime import CausalLM

    lm = CausalLM(build / "student-int4")
    for p in PROMPTS:
        ids = gen.prompt_ids(p)
        for opts in ({}, {"temperature": 0.9, "top_k": 50, "top_p": 0.95, "seed": 3}):
            want = lm.generate(ids, max_new_tokens=24, stop_ids=gen.eos_ids, **opts)
            assert gen.generate(p, max_new_tokens=24, **opts) == gen.decode(want)
            s = gen.stream(p, max_new_tokens=24, **opts)
            pieces = list(s)
            assert len(pieces) == s.tokens == len(want) and "".join(pieces) == s.text == gen.decode(want)
            assert s.prompt_tokens == len(ids)
            assert s.finish_reason == ("stop" if want[-1] in gen.eos_ids else "length")


def test_stop_strings_cut_the_text_and_end_generation(gen):
    opts = {"max_new_tokens": 40, "temperature": 1.0, "seed": 1}
    full = gen.stream(PROMPTS[0], **opts)
    text = "".join(full)
    stop = text[len(text) // 2:len(text) // 2 + 3]
    assert len(text) > 10 and stop
    s = gen.stream(PROMPTS[0], stop=["never there", stop], **opts)
    pieces = list(s)
    assert "".join(pieces) == s.text == text[:text.find(stop)] and s.finish_reason == "stop"
    assert s.tokens < full.tokens


def test_stream_pieces_hold_back_incomplete_characters(gen):
    """Byte-level tokens of a multi-byte character: no piece carries half a character."""
    from edgekd.runtime import TextStream

    text = "héllo wörld ✓ 日本"
    ids = gen.tokenizer.encode(text, add_special_tokens=False).ids
    assert len(ids) > len(text.split())  # the tiny vocabulary splits the characters into bytes
    s = TextStream(iter(ids), gen.decode, prompt_tokens=1, max_new_tokens=len(ids), eos_ids=(), stop=())
    pieces = list(s)
    assert "".join(pieces) == text and not any("\ufffd" in p for p in pieces) and "" in pieces
    s = TextStream(iter(ids), gen.decode, prompt_tokens=1, max_new_tokens=len(ids), eos_ids=(), stop=("wö",))
    assert "".join(s) == "héllo " and s.finish_reason == "stop"


@pytest.mark.parametrize("prompt, opts, match", [
    ("def add(a, b): " * 40, {}, "tokens, at most 63"),
    ("   ", {}, "the prompt is empty"),
    ([{"role": "user"}], {}, "message 0 must be"),
    ({"role": "user", "content": "x"}, {}, "give a prompt string"),
    ("x", {"max_new_tokens": 0}, "max_new_tokens must be a whole number >= 1"),
    ("x", {"max_new_tokens": 1000}, "exceeds the model's context of 256"),
    ("x", {"temperature": -1}, "temperature must be >= 0"),
    ("x", {"top_p": 0}, "top_p must be in"),
    ("x", {"seed": -1}, "seed must be"),
    ("x", {"stop": [""]}, "non-empty strings"),
])
def test_bad_prompts_and_options_are_one_line(gen, prompt, opts, match):
    from edgekd.errors import InputError

    with pytest.raises(InputError, match=match) as e:
        gen.generate(prompt, **opts)
    assert "\n" not in str(e.value)


def test_a_changed_model_file_is_refused(build, tmp_path):
    import edgekd.runtime
    from edgekd.errors import InputError

    folder = _copy(build, tmp_path)
    with open(folder / "student-int4" / "model.onnx", "ab") as f:
        f.write(b"\0")
    with pytest.raises(InputError, match="does not match the sha256"):
        edgekd.runtime.load(folder)


def test_the_generator_never_imports_the_training_stack(build):
    code = f"""
import sys
import edgekd.runtime
g = edgekd.runtime.load({str(build)!r})
assert type(g).__name__ == "Generator"
assert isinstance(g.generate({PROMPTS[0]!r}, max_new_tokens=4), str)
assert isinstance(g.generate([{{"role": "user", "content": "hi"}}], max_new_tokens=2, temperature=1.0), str)
heavy = sorted(m for m in ("torch", "transformers", "click", "tqdm", "matplotlib", "onnx") if m in sys.modules)
print("HEAVY", heavy)
"""
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "HEAVY []" in res.stdout, res.stdout


# ---------------------------------------------------------------- edgekd serve

def _client(build, **spec):
    from starlette.testclient import TestClient

    from edgekd.serve import ServeSpec, create_app

    return TestClient(create_app(ServeSpec(build=str(build), **spec)), raise_server_exceptions=False)


def _events(r) -> list:
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream"), r.text
    chunks = [c for c in r.text.split("\n\n") if c]
    assert all(c.startswith("data: ") for c in chunks) and chunks[-1] == "data: [DONE]"
    return [json.loads(c[len("data: "):]) for c in chunks[:-1]]


def test_generate_over_http_streamed_and_not(build, gen):
    body = {"prompt": PROMPTS[0], "max_new_tokens": 16}
    want = gen.stream(PROMPTS[0], max_new_tokens=16)
    text = "".join(want)
    with _client(build) as c:
        r = c.post("/generate", json=body)
        assert r.status_code == 200, r.text
        assert r.json() == {"text": text, "tokens": want.tokens, "prompt_tokens": want.prompt_tokens,
                            "finish_reason": want.finish_reason}
        ev = _events(c.post("/generate", json={**body, "stream": True}))
        assert len(ev) == want.tokens and "".join(e["text"] for e in ev) == text
        assert ev[-1]["finish_reason"] == want.finish_reason and ev[-1]["tokens"] == want.tokens
        assert "finish_reason" not in ev[0] or len(ev) == 1
        sampled = {"prompt": PROMPTS[1], "max_new_tokens": 12, "temperature": 0.8, "top_p": 0.9, "seed": 7,
                   "stop": ["zz"]}
        assert c.post("/generate", json=sampled).json()["text"] == gen.generate(
            PROMPTS[1], max_new_tokens=12, temperature=0.8, top_p=0.9, seed=7, stop=["zz"])
        chat = [{"role": "user", "content": "hi"}]
        assert c.post("/generate", json={"messages": chat, "max_new_tokens": 5}).json()["text"] == \
            gen.generate(chat, max_new_tokens=5)
        r = c.post("/generate", content=b"{nope")
        assert r.status_code == 400 and "not JSON" in r.json()["error"]
        h = c.get("/health").json()
        assert h["task"] == "text-generation" and h["generating"] == 0 and h["requests"] == 4


def test_openai_routes(build, gen):
    chat = [{"role": "user", "content": PROMPTS[0]}]
    want_chat = gen.stream(chat, max_new_tokens=10)
    want_chat_text = "".join(want_chat)
    want_text = gen.generate(PROMPTS[1], max_new_tokens=10)
    with _client(build) as c:
        r = c.post("/v1/chat/completions", json={"model": "cpu-int4", "messages": chat, "max_tokens": 10,
                                                 "temperature": 0})
        assert r.status_code == 200, r.text
        j = r.json()
        assert j["object"] == "chat.completion" and j["model"] == "cpu-int4" and j["id"].startswith("chatcmpl-")
        assert j["choices"][0]["message"] == {"role": "assistant", "content": want_chat_text}
        assert j["choices"][0]["finish_reason"] == want_chat.finish_reason
        assert j["usage"] == {"prompt_tokens": want_chat.prompt_tokens, "completion_tokens": want_chat.tokens,
                              "total_tokens": want_chat.prompt_tokens + want_chat.tokens}
        ev = _events(c.post("/v1/chat/completions", json={"messages": chat, "max_completion_tokens": 10,
                                                          "temperature": 0, "stream": True}))
        assert all(e["object"] == "chat.completion.chunk" and len({e["id"] for e in ev}) == 1 for e in ev)
        assert ev[0]["choices"][0]["delta"]["role"] == "assistant"
        assert "".join(e["choices"][0]["delta"].get("content", "") for e in ev) == want_chat_text
        assert ev[-1]["choices"][0]["finish_reason"] == want_chat.finish_reason and ev[-1]["usage"] == j["usage"]
        assert all(e["choices"][0]["finish_reason"] is None for e in ev[:-1])

        r = c.post("/v1/completions", json={"model": "x", "prompt": PROMPTS[1], "max_tokens": 10, "temperature": 0})
        j = r.json()
        assert r.status_code == 200 and j["object"] == "text_completion" and j["choices"][0]["text"] == want_text
        ev = _events(c.post("/v1/completions", json={"prompt": [PROMPTS[1]], "max_tokens": 10, "temperature": 0,
                                                     "stream": True, "stream_options": {"include_usage": True}}))
        assert "".join(e["choices"][0]["text"] for e in ev) == want_text
        assert ev[-1]["choices"][0]["finish_reason"] == j["choices"][0]["finish_reason"]
        assert ev[-1]["usage"] == j["usage"]


@pytest.mark.parametrize("path, body, status, match", [
    ("/generate", {}, 422, 'no "prompt"'),
    ("/generate", {"prompt": "x", "max_new_tokens": -1}, 422, "whole number >= 1"),
    ("/generate", {"prompt": "x", "max_new_tokens": 2000}, 422, "at most 1024 new tokens"),
    ("/generate", {"prompt": "def add(a, b): " * 40}, 413, "tokens, at most 63"),
    ("/generate", {"prompt": "a" * 10_001}, 413, "at most 10000"),
    ("/generate", {"prompt": 5}, 422, '"prompt" must be a string'),
    ("/generate", {"prompt": "x", "messages": []}, 422, "not both"),
    ("/generate", {"prompt": "x", "temperature": "hot"}, 422, '"temperature" must be a number'),
    ("/generate", {"prompt": "x", "top_p": 2}, 422, "top_p must be in"),
    ("/generate", {"prompt": "x", "stream": "yes"}, 422, '"stream" must be true or false'),
    ("/generate", {"prompt": "x", "stop": ["a"] * 17}, 422, "at most 16"),
    ("/generate", {"prompt": "x", "foo": 1}, 422, "unknown field 'foo'"),
    ("/generate", [1], 422, "must be a JSON object"),
    ("/v1/chat/completions", {"prompt": "x"}, 422, "unknown field 'prompt'"),
    ("/v1/chat/completions", {"messages": "hi"}, 422, '"messages" must be a non-empty list'),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}], "n": 2}, 422, '"n" must be 1'),
    ("/v1/completions", {"model": "x"}, 422, 'no "prompt"'),
    ("/predict", {"inputs": ["x"]}, 404, "use /v1/chat/completions"),
])
def test_bad_generation_requests_get_a_4xx_with_one_line(build, path, body, status, match):
    with _client(build) as c:
        r = c.post(path, json=body)
        assert r.status_code == status, r.text
        err = r.json()["error"]
        assert match in err and "\n" not in err and "Traceback" not in r.text


def test_responses_past_max_generations_get_503(build):
    """Each admitted response holds a turn until its pieces end (or are dropped unread)."""
    import gc

    from edgekd.serve_lm import Generations, RequestError, ServeSpec

    g = Generations(ServeSpec(build=str(build), max_generations=2))
    first, second = g.admit(), g.admit()
    with pytest.raises(RequestError) as e:
        g.admit()
    assert e.value.status == 503 and "at most 2" in str(e.value)
    first()
    first()  # twice is once
    assert g.active == 1
    pieces = g.pieces(iter(()), None, second)  # never read: a client gone before the first token
    del pieces
    gc.collect()
    assert g.active == 0
    g.stop()


@pytest.mark.parametrize("spec_version", ["2.0", "2.4"])
def test_a_client_that_disconnects_stops_its_generation(build, gen, spec_version):
    """The ASGI app driven by hand: the client goes away after the first streamed piece. Under ASGI 2.0
    starlette cancels the response; under 2.4 the server checks between tokens. Either way the model
    stops within a token or two and the response's turn is freed."""
    from edgekd.serve import ServeSpec, create_app

    n = 100
    full = gen.stream(PROMPTS[0], max_new_tokens=n)
    list(full)
    assert full.finish_reason == "length"  # the whole response would be n tokens
    app = create_app(ServeSpec(build=str(build)))
    body = json.dumps({"prompt": PROMPTS[0], "max_new_tokens": n, "stream": True}).encode()

    async def go():
        got_piece, sent = asyncio.Event(), []

        async def receive():
            if not sent:
                sent.append(True)
                return {"type": "http.request", "body": body, "more_body": False}
            await got_piece.wait()
            return {"type": "http.disconnect"}

        async def send(message):
            if message["type"] == "http.response.body" and message.get("body"):
                got_piece.set()

        scope = {"type": "http", "asgi": {"version": "3.0", "spec_version": spec_version}, "http_version": "1.1",
                 "method": "POST", "scheme": "http", "path": "/generate", "raw_path": b"/generate", "query_string": b"",
                 "root_path": "", "headers": [(b"content-type", b"application/json")], "client": ("t", 1),
                 "server": ("t", 80)}
        await app(scope, receive, send)
        app.state.generations.stop()  # waits for the token in flight

    asyncio.run(go())
    g = app.state.generations
    assert g.active == 0 and 1 <= g.tokens < 10


# ---------------------------------------------------------------- the example apps (examples/apps)

APPS = Path(__file__).resolve().parent.parent / "examples" / "apps"
SCREENSHOT = APPS.parent.parent / "build" / "test-output" / "web-app-generate.png"  # kept after the run
NEW_TOKENS = 12
# what a tokenizer must split as the `tokenizers` package does: code, runs of spaces, tabs and newlines,
# accents, CJK and emoji (bytes of a character over several tokens), digits, odd spaces, special tokens
TEXTS = ["def add(a, b):\n    return a + b", "  leading,   inner\t\ttabs\n\n\nand trailing  ",
         "héllo wörld ✓ naïve café 日本語 🙂", "x = {'k': [1, 2.5e-3]}  # s[::-1] != s\r\n",
         "123456789 3.14159 ١٢٣ ﬁ\u00a0nbsp\u200bzero-width",
         "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"]


def _varied(build: Path, folder: Path) -> Path:
    """A copy of the build whose INT4 block scales get a random sign and size. The tiny student answers
    every prompt with newlines and barely reads positions (wrong position ids move its logits by 0.5% of
    the largest), so it would hardly show a cache or positions fed wrong; the copy's responses change
    from token to token and wrong positions move its logits by 9%. Its context is the model's 256
    positions rather than the 64 tokens the build was distilled on, so a conversation fits."""
    import hashlib

    import numpy as np
    import onnx
    from onnx import numpy_helper

    out = _copy(build, folder)
    shutil.rmtree(out / "student-int4-openvino", ignore_errors=True)
    f = out / "student-int4" / "model.onnx"
    model = onnx.load(f)
    rng = np.random.default_rng(0)
    for t in model.graph.initializer:
        if t.name.endswith("_scales"):  # MatMulNBits' and GatherBlockQuantized's, one per block of weights
            a = numpy_helper.to_array(t)
            a = a * rng.lognormal(0, 1, a.shape) * rng.choice([-1, 1], a.shape)
            t.CopyFrom(numpy_helper.from_array(a.astype(np.float32), t.name))
    onnx.save(model, f)
    m = json.loads((out / "manifest.json").read_text())
    m["sha256"] = hashlib.sha256(f.read_bytes()).hexdigest()
    config = json.loads((out / "student-int4" / "config.json").read_text())
    m["preprocessing"]["max_length"] = config["max_position_embeddings"]
    (out / "manifest.json").write_text(json.dumps(m))
    return out


@pytest.fixture(scope="module")
def lm_cases(build, tmp_path_factory) -> dict:
    """The Python runtime's prompt tokens, greedy tokens, text and the logits of each step for PROMPTS on
    the build and on a varied copy, and the `tokenizers` package's ids of TEXTS."""
    import edgekd.runtime

    builds = []
    for name, folder in (("tiny", build), ("varied", _varied(build, tmp_path_factory.mktemp("lm-varied")))):
        g = edgekd.runtime.load(folder)
        prompts = []
        for p in PROMPTS:
            ids = g.prompt_ids(p)
            new = g.lm.generate(ids, max_new_tokens=NEW_TOKENS, stop_ids=g.eos_ids)
            pieces = [piece for piece in g.stream(p, max_new_tokens=NEW_TOKENS) if piece]
            logits, cache = g.lm.prefill(ids)
            rows = [logits[-1]]  # the logits each new token was picked from, (V,) each
            for t in new[:-1]:
                row, cache = g.lm.step(t, cache)
                rows.append(row)
            prompts.append({"prompt": p, "prompt_ids": ids, "ids": new, "text": g.decode(new), "pieces": len(pieces),
                            "finish_reason": "stop" if new[-1] in g.eos_ids else "length",
                            "logits": [r.tolist() for r in rows]})
        builds.append({"name": name, "dir": str(folder), "prompts": prompts})
    assert len({t for c in builds[1]["prompts"] for t in c["ids"]}) > 2, builds[1]  # not one token over and over
    tok = edgekd.runtime.load(build).tokenizer
    texts = []
    for t in TEXTS:
        ids = tok.encode(t, add_special_tokens=False).ids
        texts.append({"text": t, "ids": ids, "decoded": tok.decode(ids, skip_special_tokens=True)})
    return {"builds": builds, "max_new_tokens": NEW_TOKENS, "tokenizer": {"build": str(build), "texts": texts}}


def _python_app(*args, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(APPS / "python" / "predict.py"), *map(str, args)], input=stdin,
                          capture_output=True, text=True, timeout=120)


def test_python_app_writes_the_runtimes_response(lm_cases):
    b = lm_cases["builds"][1]
    res = _python_app(b["dir"], *PROMPTS, "--max-new-tokens", NEW_TOKENS)
    assert res.returncode == 0, res.stderr
    assert res.stdout == "".join(c["text"] + "\n" for c in b["prompts"])

    # a conversation, a line a turn: the second reply reads the first exchange when the two fit in the
    # build's context (the varied copy's), else only the second line (the tiny build's 64 tokens)
    import edgekd.runtime

    line = PROMPTS[0].replace("\n    ", " ")  # a line of the terminal holds no newline
    for b in lm_cases["builds"]:
        g = edgekd.runtime.load(b["dir"])
        first = g.generate(line, max_new_tokens=NEW_TOKENS)
        chat = [{"role": "user", "content": f"{g.instruction}\n\n{line}"}, {"role": "assistant", "content": first},
                {"role": "user", "content": "and again"}]
        fits = len(g.prompt_ids(chat)) < g.context
        assert fits == (b["name"] == "varied")
        second = g.generate(chat if fits else chat[2:], max_new_tokens=NEW_TOKENS)
        res = _python_app(b["dir"], "--chat", "--max-new-tokens", NEW_TOKENS, stdin=f"{line}\nand again\n\nnot read\n")
        assert res.returncode == 0, res.stderr
        assert res.stdout == f"{first}\n{second}\n"

    res = _python_app(lm_cases["builds"][0]["dir"], "def add(a, b): " * 40)
    assert res.returncode == 1 and res.stdout == "" and res.stderr.startswith("error: the prompt is ")
    assert len(res.stderr.strip().splitlines()) == 1


def test_node_app_generates_the_runtimes_tokens(lm_cases, tmp_path):
    """node --test examples/apps/node/test/generate.test.mjs: the JavaScript tokenizer's ids, the prompt
    tokens, the greedy tokens (onnxruntime-node, INT4 MatMulNBits and GatherBlockQuantized) and text,
    the command line's streamed response, a refusal."""
    node = shutil.which("node")
    if node is None:
        missing("node is not installed (Debian: apt-get install nodejs npm)")
    if not (APPS / "node" / "node_modules" / "@huggingface" / "tokenizers").is_dir():
        missing("examples/apps/node/node_modules is missing or old (npm ci --ignore-scripts there)")
    (tmp_path / "cases.json").write_text(json.dumps(lm_cases))
    res = subprocess.run([node, "--test", "--test-reporter=tap", "test/generate.test.mjs"], cwd=APPS / "node",
                         env={**os.environ, "EDGEKD_LM_CASES": str(tmp_path / "cases.json")},
                         capture_output=True, text=True, timeout=180)
    out = res.stdout + res.stderr
    assert res.returncode == 0, out[-6000:]
    counts = {k: int(v) for k, v in re.findall(r"^# (pass|fail|skipped|todo) (\d+)$", out, re.M)}
    assert counts == {"pass": 4, "fail": 0, "skipped": 0, "todo": 0}, out[-3000:]


# records what the page does while it generates: the lengths its response's text had (one more per piece
# it wrote) and the logits each token was picked from (the last row of every pass's logits)
_WATCH = """
const r = document.getElementById("response");
delete r.dataset.finish;  // set again when this generation ends
window.responseLengths = [];
window.responseWatch?.disconnect();
window.responseWatch = new MutationObserver(() => window.responseLengths.push(r.textContent.length));
window.responseWatch.observe(r, {childList: true, characterData: true, subtree: true});
window.pageLogits = [];
const g = window.edgekdPage.generator, s = g.session;
if (!s.recorded) g.session = {inputNames: s.inputNames, outputNames: s.outputNames, recorded: true, run: async (f) => {
  const out = await s.run(f), [, t, v] = out.logits.dims;
  window.pageLogits.push(Array.from(out.logits.data.subarray((t - 1) * v, t * v)));
  return out;
}};
"""


def test_web_page_generates_the_runtimes_tokens_in_chromium(lm_cases, tmp_path, capsys):
    """The page loads the INT4 build with onnxruntime-web (WebAssembly) from local files only; a prompt
    typed in its box gives the Python runtime's prompt tokens, greedy tokens and text (and logits within
    WebAssembly's rounding), written into the page piece by piece; Stop ends it; its tokenizer gives the
    `tokenizers` package's ids."""
    import numpy as np
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    for package in ("onnxruntime-web", "@huggingface/tokenizers", "@huggingface/jinja"):
        if not (APPS / "web" / "node_modules" / package).is_dir():
            missing(f"examples/apps/web/node_modules/{package} is missing (npm ci --ignore-scripts there)")
    with chromium(width=1000, height=800) as driver:
        driver.set_script_timeout(60)
        for b in lm_cases["builds"]:
            with _serve(Path(b["dir"])) as url:
                driver.get(f"{url}/web/")
                state = WebDriverWait(driver, 60).until(
                    lambda d: d.execute_script("return document.body.dataset.state"))
                logs = [e["message"] for e in driver.get_log("browser")]
                assert state == "ready", (driver.find_element(By.ID, "status").text, logs)
                assert driver.find_element(By.ID, "generate").is_displayed()
                assert not driver.find_element(By.ID, "classify").is_displayed()
                for c in b["prompts"]:
                    box, limit = driver.find_element(By.ID, "prompt"), driver.find_element(By.ID, "max-new-tokens")
                    box.clear()
                    box.send_keys(c["prompt"])  # a newline is Enter: a new line in the box
                    limit.clear()
                    limit.send_keys(str(NEW_TOKENS))
                    driver.execute_script(_WATCH)
                    driver.find_element(By.ID, "run").click()
                    response = driver.find_element(By.ID, "response")
                    WebDriverWait(driver, 60).until(
                        lambda d: d.find_element(By.ID, "response").get_attribute("data-finish"))
                    what = (b["name"], c["prompt"], driver.find_element(By.ID, "status").text)
                    assert response.get_attribute("data-finish") == c["finish_reason"], what
                    prompt_ids, ids = ([int(i) for i in response.get_attribute(k).split(",")]
                                       for k in ("data-prompt-ids", "data-ids"))
                    assert prompt_ids == c["prompt_ids"] and ids == c["ids"], what
                    text = driver.execute_script("return document.getElementById('response').textContent")
                    assert text == c["text"], what
                    # WebAssembly computes MatMulNBits in float32, the CPU rounds its activations to int8
                    # (accuracy_level 4; set to 0, the CPU gives the page's logits within 4e-6): within 3%
                    # of the largest logit, 1.4% seen; wrong position ids would move the varied copy's by 9%
                    got, want = np.array(driver.execute_script("return window.pageLogits")), np.array(c["logits"])
                    assert got.shape == want.shape and np.abs(got - want).max() < 0.03 * np.abs(want).max(), what
                    seen = driver.execute_script("return window.responseLengths")
                    assert len(set(seen) - {0}) == c["pieces"] and c["pieces"] > 1, (what, seen)  # written as generated
                    assert re.match(rf"{len(c['ids'])} tokens in \d+\.\d\d s", driver.find_element(By.ID, "speed").text)
                driver.save_screenshot(str(tmp_path / f"web-app-generate-{b['name']}.png"))

                # Stop, pressed as the first piece appears: the generation ends after that token
                driver.execute_script(_WATCH + "new MutationObserver((_, o) => { o.disconnect(); "
                                      "document.getElementById('stop').click(); }).observe(r, {childList: true});")
                driver.find_element(By.ID, "run").click()
                WebDriverWait(driver, 60).until(
                    lambda d: d.find_element(By.ID, "response").get_attribute("data-finish"))
                response = driver.find_element(By.ID, "response")
                assert response.get_attribute("data-finish") == "stopped"
                assert response.get_attribute("data-ids") == str(b["prompts"][-1]["ids"][0])

                if b["name"] == "tiny":
                    got = driver.execute_script(
                        "const t = window.edgekdPage.generator;"
                        "return arguments[0].map((s) => [t.tokenizer.encode(s, {add_special_tokens: false}).ids,"
                        " t.decode(t.tokenizer.encode(s, {add_special_tokens: false}).ids)])", TEXTS)
                    assert got == [[c["ids"], c["decoded"]] for c in lm_cases["tokenizer"]["texts"]]

                # nothing came from anywhere but the local server; the model ran on onnxruntime-web's WebAssembly
                fetched = driver.execute_script("return performance.getEntriesByType('resource').map((e) => e.name)")
                assert fetched and all(u.startswith(url + "/") for u in fetched), fetched
                assert any(u.endswith(".wasm") for u in fetched)
                assert any(u.endswith("/web/model/student-int4/model.onnx") for u in fetched)
                assert any(u.endswith("/web/model/student-int4/tokenizer.json") for u in fetched)

    SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(tmp_path / "web-app-generate-varied.png", SCREENSHOT)
    with capsys.disabled():
        print(f"\nweb page screenshot: {SCREENSHOT}")
