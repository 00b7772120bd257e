"""`edgekd bench`: the build's harness on any exported model."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
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


def _int8_conv_ir(folder: Path) -> Path:
    """A QDQ convolution (UINT8 activations, INT8 weights) converted to OpenVINO IR, as the
    *-openvino targets make theirs: OpenVINO runs it as an INT8 convolution."""
    import onnx
    from onnx import TensorProto, helper as h, numpy_helper as nh

    from edgekd import backends

    w = np.random.default_rng(0).integers(-100, 100, (16, 8, 3, 3)).astype(np.int8)
    inits = [nh.from_array(np.float32(0.05), "xs"), nh.from_array(np.uint8(128), "xz"), nh.from_array(w, "wq"),
             nh.from_array(np.float32(0.01), "ws"), nh.from_array(np.int8(0), "wz"),
             nh.from_array(np.float32(0.1), "ys"), nh.from_array(np.uint8(0), "yz")]
    nodes = [h.make_node("QuantizeLinear", ["x", "xs", "xz"], ["xq"]), h.make_node("DequantizeLinear", ["xq", "xs", "xz"], ["xd"]),
             h.make_node("DequantizeLinear", ["wq", "ws", "wz"], ["wd"]), h.make_node("Conv", ["xd", "wd"], ["c"], pads=[1, 1, 1, 1]),
             h.make_node("Relu", ["c"], ["r"]), h.make_node("QuantizeLinear", ["r", "ys", "yz"], ["rq"]),
             h.make_node("DequantizeLinear", ["rq", "ys", "yz"], ["y"])]
    graph = h.make_graph(nodes, "int8-conv", [h.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 8, 32, 32])],
                         [h.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 16, 32, 32])], inits)
    onnx.save(h.make_model(graph, opset_imports=[h.make_opsetid("", 13)]), folder / "int8.onnx")
    backends.get("openvino-ir").make(folder / "int8.onnx", folder / "int8.xml")
    return folder / "int8.xml"


def test_openvino_profile_splits_kernel_time_by_precision(tmp_path):
    """The benchmark's profile of an OpenVINO IR (its performance counters, in the fresh worker process):
    shares of kernel time per layer type that sum to 1, the same time split by the precision each kernel
    ran in, with the quantized convolution under INT8, and no reference-kernel fallback."""
    from edgekd.bench import benchmark, input_spec, synthetic_inputs

    xml = _int8_conv_ir(tmp_path)
    res, _ = benchmark(xml, inputs=synthetic_inputs(input_spec(xml), [16]), threads=1, warmup=2, iterations=10,
                       batch_sizes=[1], profile=True)
    prof, detail = res["op_profile"], res["op_profile_detail"]
    assert abs(sum(prof.values()) - 1) < 0.01 and list(prof.values()) == sorted(prof.values(), reverse=True)
    assert detail["profiler"] == "OpenVINO performance counters"
    split = detail["by_precision"]
    assert split["INT8"]["Convolution"] == prof["Convolution"] > 0 and "Convolution" not in split.get("FP32", {})
    assert abs(sum(v for ops in split.values() for v in ops.values()) - 1) < 0.01
    assert detail["reference_kernels"] == {}


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
