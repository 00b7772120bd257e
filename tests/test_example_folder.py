"""The image-folder example: make_folder.py writes the layout the image-folder source reads, and the
example recipe (transformers ResNet teacher, the largest ResNet student 3x faster than it) builds through the CLI in tiny mode."""

import json
import subprocess
import sys
import tomllib
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "image-folder"
PER_SPLIT = (300, 60, 20)


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("example") / "digits-rgb"
    res = subprocess.run([sys.executable, str(EXAMPLE / "make_folder.py"), str(out),
                          "--per-split", ",".join(map(str, PER_SPLIT))], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    return out


def test_make_folder_writes_rgb_32x32_class_folders(folder):
    from PIL import Image

    for split, n in zip(("train", "val", "test"), PER_SPLIT):
        files = sorted((folder / split).glob("*/*.png"))
        assert len(files) == n, split
        assert {f.parent.name for f in files} <= {str(d) for d in range(10)}
        with Image.open(files[0]) as im:
            assert (im.mode, im.size) == ("RGB", (32, 32))
            a = np.asarray(im)
        assert len(np.unique(a.reshape(-1, 3), axis=0)) > 2  # a digit blended on a background, not one colour
    names = [{f.name for f in (folder / s).glob("*/*.png")} for s in ("train", "val", "test")]
    assert not (names[0] & names[1] or names[0] & names[2] or names[1] & names[2])  # disjoint splits


def test_make_folder_refuses_a_bad_split(tmp_path):
    res = subprocess.run([sys.executable, str(EXAMPLE / "make_folder.py"), str(tmp_path / "x"), "--per-split", "30,10"],
                         capture_output=True, text=True)
    assert res.returncode != 0 and "--per-split" in res.stderr


def test_example_recipe_loads_with_library_models():
    from edgekd.recipe import load_recipe

    r = load_recipe(EXAMPLE / "edgekd.toml")
    assert (r.task, r.data.source, r.data.augment) == ("image-classification", "image-folder", "digits")
    assert r.path(r.data.path) == EXAMPLE / "digits-rgb"
    assert (r.teacher.model, r.student.model) == ("hf-config:resnet", "hf-config:resnet")
    assert r.teacher.config_overrides()["layer_type"] == "basic"
    assert r.student.min_speedup >= 3 and len(r.student.candidates) > 1
    teacher_width = r.teacher.config_overrides()["hidden_sizes"][-1]
    assert all(json.loads(c.partition("=")[2])["hidden_sizes"][-1] < teacher_width for c in r.student.candidates)


def test_example_builds_in_tiny_mode(folder, tmp_path):
    from click.testing import CliRunner

    from edgekd.cli import main

    args = ["build", f"recipe={EXAMPLE / 'edgekd.toml'}", "target=cpu-int8", "--out", str(tmp_path),
            f"data.path={folder}", "teacher.epochs=4", "distill.epochs=1", "distill.views=2", "quantize.epochs=1",
            "quantize.calibration=16", "export.int8_min_agreement=0", "target.iterations=20", "target.warmup=3",
            "quantize.int8_layers=all"]  # the timed choice of INT8 layers on library models: tests/test_matrix.py
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 0, res.output
    build = tmp_path / "cpu-int8"
    report = json.loads((build / "report.json").read_text())
    assert set(report["models"]) == {"teacher", "student-baseline", "student-fp32", "student-int8"}
    assert report["training"]["teacher"]["note"].startswith("resnet from config")
    lock = tomllib.loads((build / "recipe.lock.toml").read_text())
    assert (lock["teacher"]["model"], lock["student"]["model"]) == ("hf-config:resnet", "hf-config:resnet")
    choice = report["student_choice"]  # the most parameters among the candidates 3x faster than the teacher
    assert choice["teacher_p50_ms"] > 0 and choice["budget_ms"] == pytest.approx(choice["teacher_p50_ms"] / 3)
    fits = [c for c in choice["candidates"] if c["p50_ms"] <= choice["budget_ms"]]
    assert choice["chosen"] == max(fits, key=lambda c: c["params"])["candidate"]
    assert json.loads(lock["student"]["config"]) == json.loads(choice["chosen"].partition("=")[2])
    assert lock["data"]["path"] == str(folder)
    manifest = json.loads((build / "manifest.json").read_text())
    assert manifest["inputs"][0]["shape"][1:] == [3, 32, 32]
