"""edgekd.runtime and the manifest schema: predictions on the test split equal the build's report, the
runtime never imports the training stack, every manifest matches the published schema, and bad
manifests, files and inputs stop with one line."""
import json
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import numpy as np
import pytest

from edgekd.errors import InputError

ROOT = Path(__file__).resolve().parent.parent


def _raw_mnist_test(build: Path) -> tuple[np.ndarray, np.ndarray]:
    """The build's test split as the dataset stores it: uint8 (N, 28, 28, 1) digits and labels (N,)."""
    from edgekd.data.arrays import split_indices
    from edgekd.data.mnist import _digits
    from edgekd.recipe import load_recipe

    r = load_recipe(build / "recipe.lock.toml")
    x, y = _digits()
    idx = split_indices({"train": len(x)}, r.data, seed=r.seed, where="MNIST")["test"][1]
    return x[idx], y[idx]


def _copy(build: Path, tmp_path: Path) -> Path:
    dst = tmp_path / build.name
    shutil.copytree(build, dst)
    return dst


def _edit_manifest(build: Path, **changes) -> Path:
    m = json.loads((build / "manifest.json").read_text())
    m.update(changes)
    (build / "manifest.json").write_text(json.dumps(m))
    return build


# ---------------------------------------------------------------- parity with the build's report

@pytest.mark.parametrize("target", ["cpu-int8", "cpu-int8-openvino"])
def test_image_predictions_equal_the_report(tiny_build, target):
    """The runtime's preprocessing of the raw uint8 digits gives the build's model inputs bit for bit,
    and its labels give the report's test accuracy."""
    import edgekd.runtime
    from edgekd.data import load_data
    from edgekd.recipe import load_recipe

    build = tiny_build(target)
    model = edgekd.runtime.load(build)
    raw, y = _raw_mnist_test(build)
    r = load_recipe(build / "recipe.lock.toml")
    x = load_data(r.data, seed=r.seed, base=build).x_test  # what the benchmark scored
    assert np.array_equal(np.stack(model.prepare(raw)), x)
    preds = model.predict(raw)
    accuracy = np.mean([p["label"] == model.labels[t] for p, t in zip(preds, y)])
    report = json.loads((build / "report.json").read_text())
    assert accuracy == pytest.approx(report["models"][model.manifest["model"].rsplit(".", 1)[0]]["accuracy"], abs=1e-9)
    assert all(0 < p["probability"] <= 1 for p in preds)


def test_text_embeddings_equal_the_report(tiny_text_build, tmp_path):
    """Tokenized with `tokenizers` as the manifest says, the INT8 student's embeddings of the test texts
    have the report's cosine fidelity to the teacher's (the teacher run through the same runtime)."""
    import edgekd.runtime
    from edgekd.artifacts import sha256_file
    from edgekd.data import load_data
    from edgekd.recipe import load_recipe
    from edgekd.tasks.text import mean_cosine

    build = tiny_text_build
    r = load_recipe(build / "recipe.lock.toml")
    texts = load_data(r.data, seed=r.seed, base=build).x_test
    student = edgekd.runtime.load(build).predict(texts)
    # the teacher through a manifest of its own: a manifest path works as well as a folder
    teacher_manifest = json.loads((build / "manifest.json").read_text())
    teacher_manifest.update(model="teacher.onnx", sha256=sha256_file(build / "teacher.onnx"))
    (tmp_path / "teacher.json").write_text(json.dumps(teacher_manifest))
    for f in ("teacher.onnx", "hf"):
        (tmp_path / f).symlink_to(build / f)
    teacher = edgekd.runtime.load(tmp_path / "teacher.json").predict(texts)
    assert student.shape == teacher.shape == (len(texts), 384) and student.dtype == np.float32
    report = json.loads((build / "report.json").read_text())
    # dynamic INT8 activations (quantize.activations) take each call's range, so the runtime's groups of
    # similar length and the benchmark's batches of 32 give slightly different outputs; static ones do not
    tol = 1e-5 if _activations(build) == "static" else 2e-3
    assert mean_cosine(student, teacher) == pytest.approx(report["models"]["student-int8"]["fidelity_cosine"], abs=tol)


def _activations(build) -> str:
    return (json.loads((build / "report.json").read_text())["int8"].get("activations") or {}).get("chosen", "static")


def test_tokenization_matches_transformers(tiny_text_build):
    """The runtime's `tokenizers` calls give the ids and masks the build's transformers tokenizer gave."""
    from transformers import AutoTokenizer

    import edgekd.runtime

    model = edgekd.runtime.load(tiny_text_build)
    step = model.manifest["preprocessing"]["steps"][0]
    tok = AutoTokenizer.from_pretrained(str(tiny_text_build / step["folder"]))
    texts = ["Short.", "A much longer sentence " * 30, "Ünïcödé and  spaces\tand tabs"]
    want = tok(texts, padding="longest", truncation=True, max_length=step["max_length"], return_tensors="np")
    got = model._prep.pad(model._prep.encode(texts))  # one padded batch, as transformers makes it
    assert got["input_ids"].shape[1] == step["max_length"]  # the long text was cut
    for k in ("input_ids", "attention_mask"):
        assert np.array_equal(got[k], want[k]), k


def test_texts_run_in_groups_of_similar_length(tiny_text_build):
    """A batch of short and long texts runs as groups padded to their own longest text, and gives what
    each text gives alone (static INT8 activations; dynamic ones, within a cosine bound), in input order."""
    import edgekd.runtime

    model = edgekd.runtime.load(tiny_text_build)
    texts = ["Short.", "A much longer sentence " * 30, "Tiny one.", "Another long text " * 20, "Mid-sized text here."]
    groups = model._prep.batches(texts)
    assert sorted(i for rows, _ in groups for i in rows) == list(range(5)) and len(groups) > 1
    for rows, feed in groups:
        lengths = feed["attention_mask"].sum(1)
        assert feed["input_ids"].shape[1] == lengths.max() and lengths.max() <= 1.25 * lengths.mean()
    alone = np.concatenate([model.run([t]) for t in texts])
    grouped = model.run(texts)
    if _activations(tiny_text_build) == "static":
        assert np.allclose(grouped, alone, atol=1e-4)
    else:  # each call's own INT8 range: close to what a text gives alone, not equal
        cos = (grouped * alone).sum(1) / np.linalg.norm(grouped, axis=1) / np.linalg.norm(alone, axis=1)
        assert cos.min() > 0.98, cos


# ---------------------------------------------------------------- torch-free

@pytest.mark.parametrize("build", ["tiny_build", "tiny_text_build"])
def test_runtime_never_imports_the_training_stack(build, request, tmp_path):
    """In a fresh process: load and predict on an image build (file, array) or a text build; torch,
    transformers and click are never imported."""
    from PIL import Image

    if build == "tiny_build":
        folder = request.getfixturevalue(build)("cpu-int8")
        raw, _ = _raw_mnist_test(folder)
        Image.fromarray(raw[0, :, :, 0]).save(tmp_path / "digit.png")
        np.save(tmp_path / "digit.npy", raw[1, :, :, 0])
        use = f"""img = edgekd.runtime.load({str(folder)!r})
p = img.predict([{str(tmp_path / "digit.png")!r}, np.load({str(tmp_path / "digit.npy")!r})])
assert len(p) == 2 and all(x["label"] in img.labels for x in p), p"""
    else:
        use = f"""e = edgekd.runtime.load({str(request.getfixturevalue(build))!r}).predict(["a sentence", "another one"])
assert e.shape == (2, 384), e.shape"""
    code = f"""
import sys, numpy as np
import edgekd.runtime
{use}
heavy = sorted(m for m in ("torch", "transformers", "click", "tqdm", "matplotlib", "onnx") if m in sys.modules)
print("HEAVY", heavy)
"""
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "HEAVY []" in res.stdout, res.stdout


def test_runtime_install_needs_no_training_stack():
    """The core install plus the runtime extra is what edgekd.runtime imports; torch is only in `train`."""
    pp = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    names = lambda reqs: {r.split("[")[0].split(">")[0].split("<")[0].split("=")[0].strip() for r in reqs}  # noqa: E731
    light = names(pp["dependencies"]) | names(pp["optional-dependencies"]["runtime"])
    assert {"numpy", "onnxruntime", "jsonschema", "tokenizers", "pillow"} <= light
    assert not light & {"torch", "transformers", "onnx", "openvino", "matplotlib", "tqdm"}
    assert "torch" in names(pp["optional-dependencies"]["train"])
    assert "schemas/*.json" in tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["edgekd"]


def test_build_without_the_training_stack_says_what_to_install(monkeypatch):
    import importlib.util

    from click.testing import CliRunner

    from edgekd.cli import main

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "torch" else real(name, *a))
    res = CliRunner().invoke(main, ["build", "target=cpu-int8"])
    assert res.exit_code == 2 and "pip install 'edgekd[train]'" in res.output and len(res.output.strip().splitlines()) == 1


# ---------------------------------------------------------------- the schema

def test_schema_ships_in_the_package_and_is_valid():
    import importlib.resources

    import jsonschema

    from edgekd.manifest import SCHEMA_VERSION, schema_path

    shipped = importlib.resources.files("edgekd") / "schemas" / f"manifest-{SCHEMA_VERSION}.schema.json"
    schema = json.loads(shipped.read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    assert schema_path() == Path(str(shipped)) and schema["properties"]["schema_version"]["const"] == SCHEMA_VERSION


@pytest.mark.parametrize("build, target", [("tiny_build", "cpu-int8"), ("tiny_build", "cpu-int8-openvino"),
                                           ("tiny_text_build", None)])
def test_every_build_manifest_matches_the_schema(build, target, request):
    from edgekd.manifest import read_manifest

    folder = request.getfixturevalue(build)
    folder = folder(target) if target else folder
    m = read_manifest(folder)
    assert m["schema_version"] == 1 and (folder / m["model"]).is_file()
    for c in m["companions"]:
        assert (folder / c["file"]).is_file()
    if target == "cpu-int8-openvino":
        assert m["companions"][0]["file"] == "student-int8.bin"


@pytest.mark.parametrize("changes, match", [
    ({"schema_version": 99}, r"schema_version 99, which this edgekd .* does not read .*upgrade edgekd"),
    ({"schema_version": None}, r"has no schema_version.*rebuild"),
    ({"labels": "0123"}, r"does not match manifest schema 1 at labels"),
    ({"preprocessing": {"kind": "image", "raw": "x", "color": "grayscale", "input_shape": [1, 28, 28],
                        "steps": [{"op": "sharpen", "amount": 2}]}}, r"does not match manifest schema 1 at preprocessing"),
    ({"sha256": "0" * 64}, r"does not match the sha256 in manifest.json"),
    ({"model": "gone.onnx"}, r"gone.onnx' named by manifest.json is missing"),
])
def test_bad_manifests_are_refused_with_one_line(tiny_build, tmp_path, changes, match):
    import edgekd.runtime

    build = _edit_manifest(_copy(tiny_build("cpu-int8"), tmp_path), **changes)
    if changes.get("schema_version", 1) is None:
        m = json.loads((build / "manifest.json").read_text())
        del m["schema_version"]
        (build / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(InputError, match=match) as e:
        edgekd.runtime.load(build)
    assert "\n" not in str(e.value)


def test_changed_model_file_and_missing_folder_are_refused(tiny_build, tmp_path):
    import edgekd.runtime

    build = _copy(tiny_build("cpu-int8"), tmp_path)
    with open(build / "student-int8.onnx", "ab") as f:
        f.write(b"\0")
    with pytest.raises(InputError, match="sha256"):
        edgekd.runtime.load(build)
    build = _edit_manifest(_copy(tiny_build("cpu-int8"), tmp_path / "b"), sha256="0" * 64)
    assert edgekd.runtime.load(build, verify=False).labels  # the check can be skipped on purpose
    with pytest.raises(InputError, match="does not exist; give a build folder"):
        edgekd.runtime.load(tmp_path / "nowhere")
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(InputError, match="not readable JSON"):
        edgekd.runtime.load(tmp_path / "bad.json")


def test_builddir_refuses_to_write_a_manifest_its_schema_refuses():
    from edgekd.manifest import validate_manifest

    with pytest.raises(InputError, match="at the top level: 'model' is a required property"):
        validate_manifest({"schema_version": 1}, where="m")


# ---------------------------------------------------------------- bad inputs

def test_bad_image_inputs_stop_with_one_line(tiny_build, tmp_path):
    import edgekd.runtime

    model = edgekd.runtime.load(tiny_build("cpu-int8"))
    (tmp_path / "not.png").write_bytes(b"hello")
    cases = [("digit.png", "wrap one input in a list"), ([], "the batch is empty"),
             ([str(tmp_path / "none.png")], "does not exist"), ([str(tmp_path / "not.png")], "not an image Pillow can decode"),
             ([np.zeros((30, 30), np.uint8)], r"takes \(1, 28, 28\); give 28x28 images"),
             ([np.full((28, 28), 300)], "give whole numbers 0-255"), (["x", 3], "input 0:"),
             ([np.zeros((28, 28, 2), np.uint8)], "2 channels"), ([np.array(["a"])], "not an image"),
             ([np.full((28, 28), np.nan)], "NaN")]
    for inputs, match in cases:
        with pytest.raises(InputError, match=match) as e:
            model.predict(inputs)
        assert "\n" not in str(e.value)


def test_image_inputs_in_every_raw_form_agree(tiny_build, tmp_path):
    """A digit as a uint8 array (H, W) or (H, W, 1), an RGB array, a PNG file path, its bytes and a PIL
    image all become the same model input; RGB is converted with Pillow's luma, as the build does."""
    from PIL import Image

    import edgekd.runtime

    model = edgekd.runtime.load(tiny_build("cpu-int8"))
    raw, _ = _raw_mnist_test(tiny_build("cpu-int8"))
    gray = raw[0, :, :, 0]
    Image.fromarray(gray).save(tmp_path / "d.png")
    forms = [gray, gray[..., None], gray.tolist(), np.repeat(gray[..., None], 3, -1), str(tmp_path / "d.png"),
             (tmp_path / "d.png").read_bytes(), Image.open(tmp_path / "d.png").convert("RGB")]
    xs = model.prepare(forms)
    for x in xs[1:]:
        assert np.array_equal(x, xs[0])
    top = model.predict([gray], top_k=3)[0]
    assert [t["label"] for t in top["top"]][0] == top["label"] and len(top["top"]) == 3


def test_bad_text_inputs_stop_with_one_line(tiny_text_build):
    import edgekd.runtime

    model = edgekd.runtime.load(tiny_text_build)
    for inputs, match in [("one text", "wrap one input in a list"), ([""], "empty string"), (["ok", "  "], "input 1"),
                          ([b"bytes"], "bytes, not a string"), ([None], "NoneType")]:
        with pytest.raises(InputError, match=match):
            model.predict(inputs)
