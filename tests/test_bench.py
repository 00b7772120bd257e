"""`edgekd bench`: the build's harness on any exported model."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from test_cli import assert_clean_failure


def edgekd(*args):
    return subprocess.run([sys.executable, "-m", "edgekd", *args], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(Path(__file__).parent)})


def test_bench_compares_exported_models(tiny_build, tmp_path):
    d = tiny_build("cpu-int8")
    out = tmp_path / "bench.json"
    res = edgekd("bench", str(d / "student-fp32.onnx"), str(d / "student-int8.onnx"), "iterations=40", "warmup=5",
                 "threads=1,2", "--json", str(out))
    assert res.returncode == 0, res.stderr
    rows = json.loads(out.read_text())
    assert [(Path(r["model"]).name, r["threads"]) for r in rows] == [
        ("student-fp32.onnx", 1), ("student-int8.onnx", 1), ("student-fp32.onnx", 2), ("student-int8.onnx", 2)]
    build = json.loads((d / "report.json").read_text())["models"]["student-int8"]
    for r in rows:  # the same shape of numbers as the build's report
        assert set(build["latency_ms"]) <= set(r["latency_ms"]) and r["peak_rss_mb"] > 10
        assert 0 < r["latency_ms"]["p50"] <= r["latency_ms"]["p99"]
    assert rows[0]["speedup_vs_baseline"] == 1.0 and rows[2]["speedup_vs_baseline"] == 1.0
    assert "student-int8.onnx" in res.stdout
    # throughput at the target's largest batch size is a column of the table
    assert "items/s @32" in res.stdout and all(r["throughput_per_s"]["32"] > 0 for r in rows)


def test_bench_openvino_ir(tiny_build):
    d = tiny_build("cpu-int8-openvino")
    res = edgekd("bench", str(d / "student-int8.xml"), "iterations=20", "warmup=2")
    assert res.returncode == 0, res.stderr
    assert "student-int8.xml" in res.stdout


@pytest.mark.parametrize("content, fragment", [
    (b"\x08\x07garbage that is not a protobuf model" * 3, "is not a valid ONNX model"),
    (None, "does not exist"),
])
def test_bench_refuses_bad_models(tmp_path, content, fragment):
    p = tmp_path / "model.onnx"
    if content is not None:
        p.write_bytes(content)
    assert_clean_failure(edgekd("bench", str(p)), fragment, tmp_path / "nothing")


def test_bench_unknown_setting(tmp_path):
    assert_clean_failure(edgekd("bench", "m.onnx", "thread=2"), "unknown bench setting 'thread'", tmp_path / "nothing")
