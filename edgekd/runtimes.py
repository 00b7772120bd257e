"""Runtimes that execute exported models: load a file, return a function from a numpy batch to
numpy outputs. This module imports neither torch nor any runtime at import time; apps can copy it."""

from __future__ import annotations

from typing import Callable

import numpy as np

from .registry import Registry
from .errors import InputError

runtimes: Registry = Registry("runtime", error=InputError)

# Session settings besides the thread count, the same for every model a runtime runs; written to
# manifest.json (`runtime_options`) so that an app configures its session as the build measured it.
SESSION_OPTIONS = {
    # sequential, one inter-op thread: the target's `threads` is the whole budget. Level ALL: QDQ
    # groups fuse into integer kernels (BASIC would run them emulated in float).
    "onnxruntime": {"execution_mode": "ORT_SEQUENTIAL", "inter_op_num_threads": 1,
                    "graph_optimization_level": "ORT_ENABLE_ALL"},
    # f32: on CPUs with AMX/AVX512-BF16 OpenVINO otherwise runs float layers in bf16 (a 1e-2 logit error
    # on FP32 models); quantized layers still run in INT8
    "openvino": {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": "f32"},
    "executorch": {},
}

# A runner takes one array (single-input models) or {input name: array} (text models: input_ids,
# attention_mask) and returns the first output.
Runner = Callable[[np.ndarray | dict], np.ndarray]


def complete_feed(feed: dict, names: list[str]) -> dict:
    """A text feed for a model's inputs: BERT-family exports also take token_type_ids, which are all zero
    for one segment of text (what edgekd's models are trained on), so a feed without them gets zeros."""
    if "token_type_ids" in names and "token_type_ids" not in feed and "input_ids" in feed:
        feed = {**feed, "token_type_ids": np.zeros_like(feed["input_ids"])}
    return {k: v for k, v in feed.items() if k in names}


@runtimes.register("onnxruntime")
def onnxruntime_runner(path: str, *, threads: int = 1, profile_prefix: str | None = None) -> Runner:
    import onnxruntime as ort

    opts = SESSION_OPTIONS["onnxruntime"]
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = opts["inter_op_num_threads"]
    so.execution_mode = getattr(ort.ExecutionMode, opts["execution_mode"])
    so.graph_optimization_level = getattr(ort.GraphOptimizationLevel, opts["graph_optimization_level"])
    if profile_prefix:
        so.enable_profiling = True
        so.profile_file_prefix = profile_prefix
    try:
        sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    except Exception as e:  # noqa: BLE001 - onnxruntime raises its own untyped errors for bad files
        raise InputError(f"onnxruntime cannot load '{path}': {str(e).splitlines()[0][:200]}; "
                         "is it a complete, valid ONNX model?") from None
    names = [i.name for i in sess.get_inputs()]
    run = lambda x: sess.run(None, complete_feed(x, names) if isinstance(x, dict) else {names[0]: x})[0]  # noqa: E731
    run.session = sess  # for end_profiling()
    return run


@runtimes.register("openvino")
def openvino_runner(path: str, *, threads: int = 1, profile_prefix: str | None = None) -> Runner:
    import openvino as ov

    core = ov.Core()
    try:
        compiled = core.compile_model(path, "CPU", {"INFERENCE_NUM_THREADS": threads, **SESSION_OPTIONS["openvino"]})
    except Exception as e:  # noqa: BLE001
        raise InputError(f"OpenVINO cannot load '{path}': {str(e).splitlines()[0][:200]}") from None
    req = compiled.create_infer_request()
    names = [n for i in compiled.inputs for n in i.get_names()]
    # np.array: a copy, since the request reuses its output buffer
    run = lambda x: np.array(req.infer(complete_feed(x, names) if isinstance(x, dict) else {0: x})[0])  # noqa: E731
    run.compiled = compiled
    return run


@runtimes.register("executorch")
def executorch_runner(path: str, *, threads: int = 1, profile_prefix: str | None = None) -> Runner:
    """An ExecuTorch `.pte` through ExecuTorch's Python runtime (host timings only: it loads libtorch
    and ExecuTorch's exporter, so its RSS is not a phone's). `profile_prefix` is ignored: the pip
    build has no event tracer. Threads: the count of the process-wide threadpool that XNNPACK
    delegates use, set through ExecuTorch's private `_unsafe_reset_threadpool`, and only before the
    program loads (a program loaded before a reset deadlocks). Portable kernels run on the calling
    thread; nothing else (spinning, affinity) is controlled."""
    import os
    import sys
    import warnings

    import torch  # ExecuTorch's Python runtime is built on libtorch and takes torch tensors

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "experimental API" and deprecation notices
        try:
            from executorch.extension.pybindings import portable_lib
            from executorch.runtime import Runtime
        except ImportError:
            raise InputError("running a .pte needs ExecuTorch: pip install 'edgekd[executorch]'") from None
    sys.stderr.flush()
    saved = os.dup(2)
    try:  # the threadpool's first use logs CPU-probing lines to fd 2: diagnostics, not the user's concern
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
            if portable_lib._threadpool_get_thread_count() != threads:
                portable_lib._unsafe_reset_threadpool(threads)
    finally:
        os.dup2(saved, 2)
        os.close(saved)
    try:
        method = Runtime.get().load_program(str(path)).load_method("forward")
    except Exception as e:  # noqa: BLE001 - the runtime raises untyped errors for bad files
        raise InputError(f"ExecuTorch cannot load '{path}': {str(e).splitlines()[0][:200]}; "
                         "is it a complete .pte file?") from None
    fixed = method.metadata.input_tensor_meta(0).sizes()[0]

    def run(x: np.ndarray) -> np.ndarray:
        if len(x) == fixed:
            return method.execute([torch.from_numpy(np.ascontiguousarray(x))])[0].numpy()
        # a fixed batch-1 program (export_pte): one row at a time
        return np.concatenate([method.execute([torch.from_numpy(np.ascontiguousarray(x[i:i + fixed]))])[0].numpy()
                               for i in range(0, len(x), fixed)])

    run.method = method
    return run
