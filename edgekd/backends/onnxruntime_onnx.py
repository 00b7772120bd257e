"""ONNX on ONNX Runtime's CPU execution provider: every build's ONNX files, and the deliverable of the
cpu-* targets."""

from __future__ import annotations

from . import Backend, complete_feed, first_line, register, shares
from ..errors import InputError

# sequential, one inter-op thread: the target's `threads` is the whole budget. Level ALL: QDQ groups
# fuse into integer kernels (BASIC would run them emulated in float).
OPTIONS = {"execution_mode": "ORT_SEQUENTIAL", "inter_op_num_threads": 1, "graph_optimization_level": "ORT_ENABLE_ALL"}


def load(path: str, *, threads: int = 1, profile_prefix: str | None = None):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = OPTIONS["inter_op_num_threads"]
    so.execution_mode = getattr(ort.ExecutionMode, OPTIONS["execution_mode"])
    so.graph_optimization_level = getattr(ort.GraphOptimizationLevel, OPTIONS["graph_optimization_level"])
    if profile_prefix:
        so.enable_profiling = True
        so.profile_file_prefix = profile_prefix
    try:
        sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    except Exception as e:  # noqa: BLE001 - onnxruntime raises its own untyped errors for bad files
        raise InputError(f"onnxruntime cannot load '{path}': {first_line(e)}; is it a complete, valid ONNX model?") from None
    names = [i.name for i in sess.get_inputs()]
    run = lambda x: sess.run(None, complete_feed(x, names) if isinstance(x, dict) else {names[0]: x})[0]  # noqa: E731
    run.session = sess  # for end_profiling()
    return run


def profile(path: str, *, threads: int = 1):
    """A runner under onnxruntime's profiler, and what its trace says: kernel time per op type."""
    import json
    import os
    import shutil
    import tempfile

    d = tempfile.mkdtemp()
    run = load(path, threads=threads, profile_prefix=os.path.join(d, "p"))

    def collect() -> dict:
        try:
            events = json.loads(open(run.session.end_profiling()).read())
        finally:
            shutil.rmtree(d, ignore_errors=True)
        by_op: dict[str, float] = {}
        for e in events:
            if e.get("cat") == "Node" and e.get("name", "").endswith("_kernel_time"):
                op = e.get("args", {}).get("op_name", "?")
                by_op[op] = by_op.get(op, 0.0) + e.get("dur", 0)
        return {"by_op": shares(by_op), "profiler": "onnxruntime profiler"}

    return run, collect


def check(path) -> None:
    import onnx

    try:
        onnx.checker.check_model(onnx.load(str(path)))
    except Exception as e:  # noqa: BLE001 - protobuf decode errors and checker errors alike
        raise InputError(f"'{path}' is not a valid ONNX model ({first_line(e)[:160]}); re-export it") from None


def signature(path) -> list[dict]:
    """Inputs as onnxruntime reads them (.onnx and .ort alike); symbolic axes keep their names."""
    import onnxruntime as ort

    types = {"tensor(float)": "float32", "tensor(float16)": "float16", "tensor(int64)": "int64", "tensor(int32)": "int32"}
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return [{"name": i.name, "shape": [d if isinstance(d, int) else str(d) for d in i.shape],
             "dtype": types.get(i.type, "float32")} for i in sess.get_inputs()]


BACKEND = register(Backend(
    format="onnx", runtime="onnxruntime", extension=".onnx", description="ONNX on ONNX Runtime (CPU)",
    load=load, package="onnxruntime", install="onnxruntime", options=OPTIONS, profile=profile, check=check, kinds=("image", "text", "lm"),
    signature=signature))
