"""The seams: every registered backend, target, task and loss is tested here by what is registered,
and the code keeps the shape that lets a new one be a single module (a line budget, no task named
outside edgekd/tasks/, every runtime table derived from the backend registry)."""
import json
import re
from pathlib import Path

import numpy as np
import pytest

from edgekd import backends
from edgekd.errors import InputError, TargetError
from edgekd.targets import ALIASES, load_target, target_names

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "edgekd"
MAX_LINES = 600


def test_no_module_is_over_the_line_budget():
    """tinygrad's habit: a file that outgrows the budget is split along a seam, not squeezed."""
    long = {str(p.relative_to(ROOT)): n for p in PACKAGE.rglob("*.py")
            if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_LINES}
    assert not long, f"over {MAX_LINES} lines: {long}"


def test_no_task_is_named_outside_its_own_module():
    """A task's name and its own report fields appear only in edgekd/tasks/: everything else asks the
    task through its hooks."""
    from edgekd.tasks import _register_builtin, tasks

    _register_builtin()
    names = "|".join(re.escape(n) for n in tasks.names())
    # a test of a task's name (== / != / in), or any use of the fields only one task writes
    pattern = re.compile(rf"""(==|!=|\bin)\s*\(?["']({names})["']|fidelity_cosine|sequence_lengths|neighbour_overlap""")
    hits = []
    for p in PACKAGE.rglob("*.py"):
        if "tasks" in p.relative_to(PACKAGE).parts:
            continue
        for i, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1):
            if pattern.search(line) and not line.lstrip().startswith("#"):
                hits.append(f"{p.relative_to(ROOT)}:{i}: {line.strip()[:100]}")
    assert not hits, "\n".join(hits)


def test_manifest_schema_enums_are_the_registered_backends():
    schema = json.loads((PACKAGE / "schemas" / "manifest-1.schema.json").read_text())
    assert sorted(schema["properties"]["format"]["enum"]) == backends.names()
    assert sorted(schema["properties"]["runtime"]["enum"]) == backends.runtime_names()


def test_extensions_name_one_backend_each():
    exts = [backends.get(n).extension for n in backends.names()]
    assert len(set(exts)) == len(exts)
    for n in backends.names():
        b = backends.get(n)
        assert backends.for_file(f"build/student-int8{b.extension}") is b
    with pytest.raises(InputError, match=r"not a model file edgekd runs; give one of: .*\.onnx"):
        backends.for_file("model.h5")


@pytest.mark.parametrize("name", target_names())
def test_target_names_follow_one_grammar(name):
    """<device>-<precision>[-<runtime>], the runtime left out where it is ONNX Runtime."""
    t = load_target(name)
    parts = name.split("-")
    assert parts[1] == t.precision, name
    assert parts[2:] == ([] if t.runtime == "onnxruntime" else [t.runtime]), name
    assert t.format in backends.names() and t.backend.runtime == t.runtime


@pytest.mark.parametrize("old,new", sorted(ALIASES.items()))
def test_earlier_target_names_stay_accepted(old, new):
    assert load_target(old) == load_target(new)


def test_a_runtime_without_its_format_is_refused(tmp_path, monkeypatch):
    (tmp_path / "cpu-int8-odd.toml").write_text('description = "x"\nruntime = "openvino"\nprecision = "int8"\n'
                                                'format = "pte"\n')
    monkeypatch.setenv("EDGEKD_TARGETS", str(tmp_path))
    with pytest.raises(TargetError, match=r"format must be one that runtime openvino runs \(openvino-ir\)"):
        load_target("cpu-int8-odd")


@pytest.mark.parametrize("fmt", backends.names())
def test_every_backend_says_what_is_missing_in_one_line_or_loads(fmt, tmp_path):
    """Installed: a broken file is an InputError naming the file. Not installed: one line with the
    pip command."""
    b = backends.get(fmt)
    missing = b.missing()
    if missing:
        assert "pip install" in missing and "\n" not in missing
        return
    bad = tmp_path / f"broken{b.extension}"
    bad.write_bytes(b"not a model at all" * 8)
    for suffix in b.companions:
        bad.with_suffix(suffix).write_bytes(b"\0" * 16)
    with pytest.raises(InputError, match="broken"):
        backends.load(bad)


@pytest.mark.parametrize("fmt", [n for n in backends.names() if backends.get(n).source == "torch"])
def test_formats_made_from_pytorch_refuse_other_kinds_before_training(fmt):
    """A text build for a target whose backend carries images only stops before anything trains."""
    from dataclasses import replace

    target = next(load_target(n) for n in target_names() if load_target(n).format == fmt)
    b = backends.get(fmt)
    for kind in ("image", "text"):
        if kind in b.kinds:
            continue
        with pytest.raises(InputError, match=f"is for {' and '.join(b.kinds)} models"):
            backends.check_target(replace(target), kind=kind)


def test_complete_feed_adds_zero_segment_ids_only_where_the_model_takes_them():
    ids = np.array([[101, 7, 102]])
    feed = backends.complete_feed({"input_ids": ids, "attention_mask": np.ones_like(ids)},
                                  ["input_ids", "attention_mask", "token_type_ids"])
    assert feed["token_type_ids"].tolist() == [[0, 0, 0]]
    assert set(backends.complete_feed({"input_ids": ids, "extra": ids}, ["input_ids"])) == {"input_ids"}
