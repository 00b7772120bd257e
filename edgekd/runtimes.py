"""Runtimes that execute exported models: load a file, return a function from a numpy batch to
numpy outputs. This module imports neither torch nor any runtime at import time; apps can copy it."""

from __future__ import annotations

from typing import Callable

import numpy as np

from .registry import Registry
from .errors import InputError

runtimes: Registry = Registry("runtime", error=InputError)

Runner = Callable[[np.ndarray], np.ndarray]


@runtimes.register("onnxruntime")
def onnxruntime_runner(path: str, *, threads: int = 1, profile_prefix: str | None = None) -> Runner:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    # Level ALL: QDQ groups fuse into integer kernels (BASIC would run them emulated in float).
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if profile_prefix:
        so.enable_profiling = True
        so.profile_file_prefix = profile_prefix
    try:
        sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    except Exception as e:  # noqa: BLE001 - onnxruntime raises its own untyped errors for bad files
        raise InputError(f"onnxruntime cannot load '{path}': {str(e).splitlines()[0][:200]}; "
                         "is it a complete, valid ONNX model?") from None
    name = sess.get_inputs()[0].name
    run = lambda x: sess.run(None, {name: x})[0]  # noqa: E731
    run.session = sess  # for end_profiling()
    return run


@runtimes.register("openvino")
def openvino_runner(path: str, *, threads: int = 1, profile_prefix: str | None = None) -> Runner:
    import openvino as ov

    core = ov.Core()
    try:
        compiled = core.compile_model(path, "CPU", {"INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY"})
    except Exception as e:  # noqa: BLE001
        raise InputError(f"OpenVINO cannot load '{path}': {str(e).splitlines()[0][:200]}") from None
    req = compiled.create_infer_request()
    run = lambda x: np.array(req.infer({0: x})[0])  # noqa: E731 - copy: the request reuses its buffer
    run.compiled = compiled
    return run


def runtime_for(path: str) -> str:
    return "openvino" if str(path).endswith(".xml") else "onnxruntime"
