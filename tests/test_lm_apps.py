"""Small language models in apps: `edgekd.runtime.load` on a text-generation build (a Generator: prompts
written as the build wrote them, greedy and sampled text equal to the causal LM's tokens, streaming,
stop strings, one-line refusals, no torch) and `edgekd serve` on it (/generate, OpenAI's
/v1/chat/completions and /v1/completions, streamed and not, bad requests, capacity, disconnects), on
one tiny Llama-class build."""

import asyncio
import json
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
from test_lm_task import TINY_LM, _recipe  # noqa: E402

PROMPTS = ["def add(a, b):\n    return a + b", "def upper(text): # ü ✓"]


@pytest.fixture(scope="module")
def build(tmp_path_factory) -> Path:
    from click.testing import CliRunner

    from edgekd.cli import main

    folder = tmp_path_factory.mktemp("lm-apps")
    res = CliRunner().invoke(main, ["build", f"recipe={_recipe(folder, 'llama')}", "target=cpu-int4", "--out",
                                    str(folder / "build"), *TINY_LM])
    assert res.exit_code == 0, res.output
    return folder / "build" / "cpu-int4"


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
