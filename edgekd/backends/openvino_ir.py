"""OpenVINO IR (`.xml` + `.bin`) on OpenVINO's CPU plugin: the *-openvino targets. Converted from the
ONNX export with OpenVINO's own converter; QDQ pairs become FakeQuantize layers that run in INT8."""

from __future__ import annotations

from pathlib import Path

from . import Backend, complete_feed, first_line, register, shares
from ..errors import InputError

# f32: on CPUs with AMX/AVX512-BF16 OpenVINO otherwise runs float layers in bf16 (a 1e-2 logit error on
# FP32 models); quantized layers still run in INT8
OPTIONS = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": "f32"}


def _compile(path: str, threads: int, extra: dict | None = None):
    import openvino as ov

    try:
        return ov.Core().compile_model(path, "CPU", {"INFERENCE_NUM_THREADS": threads, **OPTIONS, **(extra or {})})
    except Exception as e:  # noqa: BLE001
        raise InputError(f"OpenVINO cannot load '{path}': {first_line(e)}") from None


def _runner(compiled):
    import numpy as np

    req = compiled.create_infer_request()
    names = [n for i in compiled.inputs for n in i.get_names()]
    # np.array: a copy, since the request reuses its output buffer
    run = lambda x: np.array(req.infer(complete_feed(x, names) if isinstance(x, dict) else {0: x})[0])  # noqa: E731
    run.compiled, run.request = compiled, req
    return run


def load(path: str, *, threads: int = 1, profile_prefix: str | None = None):
    """`profile_prefix` is onnxruntime's trace file; OpenVINO's counters come through `profile`."""
    return _runner(_compile(path, threads))


# the tail of a CPU plugin exec_type ("brgconv_avx512_I8", "jit_avx512_f32", "ref_any_FP32") -> precision
PRECISIONS = {"I8": "INT8", "U8": "INT8", "I4": "INT4", "U4": "INT4", "F32": "FP32", "FP32": "FP32",
              "BF16": "BF16", "F16": "FP16", "FP16": "FP16", "I32": "INT32", "I64": "INT64"}


def exec_precision(exec_type: str) -> str:
    return PRECISIONS.get(exec_type.rsplit("_", 1)[-1].upper(), "?")


def profile(path: str, *, threads: int = 1):
    """A runner with OpenVINO's performance counters on, summed over its runs: kernel time per layer
    type, the same split by the precision each kernel ran in (what INT8 actually covers), and the layer
    types left to reference ("ref_*") kernels, the slow generic C++ ones a missing fast kernel falls back to."""
    import openvino as ov

    run = _runner(_compile(path, threads, {ov.properties.enable_profiling(): True}))
    by_op: dict[str, float] = {}
    by_prec: dict[str, dict[str, float]] = {}
    ref: dict[str, float] = {}

    def counted(x):
        out = run(x)
        for p in run.request.get_profiling_info():
            t = p.real_time.total_seconds()
            if p.status != p.Status.EXECUTED or t <= 0:
                continue
            by_op[p.node_type] = by_op.get(p.node_type, 0.0) + t
            prec = by_prec.setdefault(exec_precision(p.exec_type), {})
            prec[p.node_type] = prec.get(p.node_type, 0.0) + t
            if p.exec_type.startswith("ref"):
                ref[p.node_type] = ref.get(p.node_type, 0.0) + t
        return out

    def collect() -> dict:
        total = sum(by_op.values()) or 1.0
        ranked = sorted(by_prec.items(), key=lambda kv: -sum(kv[1].values()))
        return {"by_op": shares(by_op), "profiler": "OpenVINO performance counters",
                "by_precision": {k: {op: round(t / total, 4) for op, t in sorted(v.items(), key=lambda kv: -kv[1])}
                                 for k, v in ranked},
                "reference_kernels": {op: round(t / total, 4) for op, t in sorted(ref.items(), key=lambda kv: -kv[1])}}

    return counted, collect


def make(onnx_path: Path, xml_path: Path) -> None:
    """compress_to_fp16=False: keep FP32 weights FP32 (OpenVINO compresses to FP16 by default)."""
    import openvino as ov

    ov.save_model(ov.convert_model(str(onnx_path)), str(xml_path), compress_to_fp16=False)


def runtime_precisions(xml: Path) -> dict[str, int]:
    """How many executed layers run in each precision (OpenVINO may run FakeQuantize in f32)."""
    import openvino as ov

    compiled = ov.Core().compile_model(str(xml), "CPU", {"INFERENCE_PRECISION_HINT": OPTIONS["INFERENCE_PRECISION_HINT"]})
    counts: dict[str, int] = {}
    for op in compiled.get_runtime_model().get_ordered_ops():
        rt = op.get_rt_info()
        prec = rt["runtimePrecision"].astype(str) if "runtimePrecision" in rt else "?"
        layer = rt["layerType"].astype(str) if "layerType" in rt else op.get_type_name()
        if layer in ("Convolution", "FullyConnected", "MatMul"):
            counts[prec] = counts.get(prec, 0) + 1
    return counts


def signature(path) -> list[dict]:
    import openvino as ov

    types = {"f32": "float32", "f16": "float16", "i64": "int64", "i32": "int32"}
    out = []
    for i in ov.Core().read_model(str(path)).inputs:
        ps = i.get_partial_shape()
        out.append({"name": i.get_any_name(), "shape": [d.get_length() if d.is_static else f"dim{k}" for k, d in enumerate(ps)],
                    "dtype": types.get(i.get_element_type().get_type_name(), "float32")})
    return out


def describe(folder: Path, name: str, meta: dict, target) -> dict:
    return {"openvino_int8_precisions": runtime_precisions(folder / "student-int8.xml")}


BACKEND = register(Backend(
    format="openvino-ir", runtime="openvino", extension=".xml", description="OpenVINO IR on OpenVINO (CPU)",
    load=load, package="openvino", install="openvino", make=make, describe=describe, companions=(".bin",),
    options=OPTIONS, signature=signature, profile=profile))
