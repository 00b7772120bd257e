"""ExecuTorch `.pte` with the XNNPACK delegate: the mobile-int8-executorch target.

ExecuTorch is an optional extra (`pip install 'edgekd[executorch]'`); nothing here imports it unless
a target asks for a `.pte`. Route, as ExecuTorch documents it for XNNPACK: torch.export, for INT8
PT2E post-training quantization with XNNPACKQuantizer (weights symmetric per-channel INT8,
activations per-tensor INT8), then `to_edge_transform_and_lower` with XnnpackPartitioner and
`to_executorch`. The XNNPACK quantizer's scheme differs from the QDQ ONNX scheme (INT8 rather than
UINT8 activations, full 8-bit weights), so INT8 is calibrated afresh on the QAT-tuned float weights.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from . import Backend, first_line, register
from ..errors import EdgeKDError, InputError

NEEDS_EXECUTORCH = "a .pte needs ExecuTorch: pip install 'edgekd[executorch]'"

# Nodes that only unpack a tuple (a delegate's outputs, batch norm's result): no kernel runs for them.
_NOT_KERNELS = ("getitem",)


def require_executorch() -> None:
    """One-line EdgeKDError when the optional ExecuTorch extra is missing."""
    import importlib.util

    if importlib.util.find_spec("executorch") is None:
        raise EdgeKDError(NEEDS_EXECUTORCH)


def export_pte(model, path: Path, input_shape: tuple, *, int8: bool, calib_x: np.ndarray | None) -> dict:
    """Write `model` as an ExecuTorch program lowered to XNNPACK (INT8 through PT2E when `int8`,
    calibrated on `calib_x`) and return its delegate coverage (see `delegation`).

    The program has a fixed batch of 1: a phone app classifies one input at a time, and a static shape
    lets ExecuTorch plan all memory ahead; the `executorch` runner loops over larger batches."""
    import copy
    import warnings

    require_executorch()
    import torch

    if int8 and (calib_x is None or len(calib_x) == 0):
        raise EdgeKDError("an INT8 .pte needs calibration inputs (calib_x)")
    path = Path(path)
    model = copy.deepcopy(model).cpu().eval()
    example = (torch.zeros((1, *input_shape)),)
    with warnings.catch_warnings(), torch.no_grad():
        # ExecuTorch, torchao and torch.export deprecation notices, not the user's concern
        warnings.simplefilter("ignore")
        with _quiet_import_logs():
            from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
            from executorch.exir import to_edge_transform_and_lower
            from torchao.quantization.pt2e.quantize_pt2e import prepare_pt2e  # noqa: F401 - loaded quietly here

        if int8:
            model = _quantize_pt2e(model, example, calib_x)
        edge = to_edge_transform_and_lower(torch.export.export(model, example), partitioner=[XnnpackPartitioner()])
        coverage = delegation(edge.exported_program().graph_module)
        program = edge.to_executorch()
    from ..artifacts import write_atomic

    write_atomic(path, program.buffer)
    return coverage


class _quiet_import_logs:
    """torchao logs "Failed to load ..." for its CUDA-only kernel libraries on a CPU wheel, and torch's
    pytree a deprecation line, on first import: noise, not failures. Silenced while importing only."""

    NAMES = ("torchao", "torch.utils._pytree")

    def __enter__(self):
        import logging

        self.saved = [(logging.getLogger(n), logging.getLogger(n).level) for n in self.NAMES]
        for log, _ in self.saved:
            log.setLevel(logging.CRITICAL)

    def __exit__(self, *exc):
        for log, level in self.saved:
            log.setLevel(level)


def _quantize_pt2e(model, example: tuple, calib_x: np.ndarray):
    """PT2E static PTQ with the XNNPACK quantizer. The graph is captured with a dynamic batch so that
    calibration runs in batches; the converted module is re-exported at batch 1 by the caller."""
    import torch
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
        XNNPACKQuantizer, get_symmetric_quantization_config)
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    batch = torch.export.Dim("batch", min=1, max=1024)
    captured = torch.export.export(model, (torch.zeros((2, *example[0].shape[1:])),),
                                   dynamic_shapes=({0: batch},)).module()
    quantizer = XNNPACKQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True))
    prepared = prepare_pt2e(captured, quantizer)
    x = np.ascontiguousarray(calib_x, dtype=np.float32)
    for i in range(0, len(x), 100):
        prepared(torch.from_numpy(x[i:i + 100]))
    return convert_pt2e(prepared)


def delegation(graph_module) -> dict:
    """Which ops XNNPACK runs and which fall back to ExecuTorch's portable (reference) kernels, from
    ExecuTorch's own `get_delegation_info` on the lowered graph. Tuple unpacking (`getitem`) is left
    out: it is bookkeeping, not a kernel. Shape:
    {"backends": [...], "delegated_subgraphs": n, "delegated_ops": n, "portable_ops": n,
     "delegated_share": 0..1, "by_op": {op: {"delegated": n, "portable": n}}}"""
    from executorch.devtools.backend_debug import get_delegation_info

    info = get_delegation_info(graph_module)
    by_op = {op: {"delegated": b.delegated, "portable": b.non_delegated}
             for op, b in sorted(info.delegation_by_operator.items()) if op not in _NOT_KERNELS}
    delegated = sum(v["delegated"] for v in by_op.values())
    portable = sum(v["portable"] for v in by_op.values())
    backends = sorted({getattr(graph_module, n.name).backend_id for n in graph_module.graph.nodes
                       if n.op == "get_attr" and n.name.startswith("lowered_module_")})
    return {"backends": backends, "delegated_subgraphs": info.num_delegated_subgraphs,
            "delegated_ops": delegated, "portable_ops": portable,
            "delegated_share": round(delegated / (delegated + portable), 4) if delegated + portable else 0.0,
            "by_op": by_op}


def runtime_only() -> None:
    """In a process that only runs programs: ExecuTorch's runtime imports one small module of its exporter
    package (executorch.exir._warnings, decorators), and the package's __init__ imports the whole
    exporter, seconds of imports and memory no app carries. The package is registered without running its
    __init__, so that module alone loads; the exporter cannot be imported in this process afterwards."""
    import importlib.util
    import os
    import sys
    import types

    if "executorch.exir" in sys.modules or (spec := importlib.util.find_spec("executorch")) is None:
        return
    exir = types.ModuleType("executorch.exir")
    exir.__path__ = [os.path.join(p, "exir") for p in spec.submodule_search_locations]
    sys.modules["executorch.exir"] = exir


def load(path: str, *, threads: int = 1, profile_prefix: str | None = None):
    """An ExecuTorch `.pte` through ExecuTorch's Python runtime (host timings only: it loads libtorch, and
    outside the benchmark's process (runtime_only) ExecuTorch's exporter, so its RSS is not a phone's).
    `profile_prefix` is ignored: the pip build has no event tracer. Threads: the count of the process-wide
    threadpool that XNNPACK delegates use, set through ExecuTorch's private `_unsafe_reset_threadpool`, and
    only before the program loads (a program loaded before a reset deadlocks). Portable kernels run on the calling
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
        raise InputError(f"ExecuTorch cannot load '{path}': {first_line(e)}; "
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


def make(model, path: Path, *, int8: bool, calib_x, input_shape) -> dict:
    """The .pte of a PyTorch model (for the INT8 student: its QAT-tuned float model, quantized by the
    XNNPACK quantizer) -> {"delegation": ...}."""
    float_model = model.float_model() if int8 and hasattr(model, "float_model") else model
    return {"delegation": export_pte(float_model, path, input_shape, int8=int8, calib_x=calib_x)}


def describe(folder: Path, name: str, meta: dict, target) -> dict:
    from ._mobile import device_estimates

    return {"mobile": {"model": f"{name}.pte", "delegation": meta.get("made", {}).get(f"{name}.pte", {}).get("delegation"),
                       **device_estimates(folder, target)}}


def report_section(r: dict) -> list[str]:
    mob = r.get("mobile") or {}
    cov = mob.get("delegation")
    if not cov:
        return []
    return ["", "## Mobile (ExecuTorch)", "",
            f"- Deliverable: `{mob['model']}`, an ExecuTorch program lowered to the XNNPACK delegate (INT8 by "
            "ExecuTorch's XNNPACK quantizer, PT2E, per-channel weights, from the QAT-tuned float weights).",
            f"- Delegate coverage: {cov['delegated_ops']} of {cov['delegated_ops'] + cov['portable_ops']} ops "
            f"({100 * cov['delegated_share']:.0f}%) in {cov['delegated_subgraphs']} XNNPACK subgraph(s); "
            f"not delegated: {', '.join(k for k, v in cov['by_op'].items() if v['portable']) or 'none'}.",
            "- **All timings in this report are host timings on this x86 machine**, through ExecuTorch's Python "
            "runtime. They say nothing about a phone's speed. No phone was measured."]


def _available() -> str:
    import importlib.util

    return "" if importlib.util.find_spec("executorch") else NEEDS_EXECUTORCH


BACKEND = register(Backend(
    format="pte", runtime="executorch", extension=".pte", source="torch", kinds=("image",), fixed_batch=1,
    description="ExecuTorch program lowered to XNNPACK", load=load, package="executorch.runtime",
    install="'edgekd[executorch]'", make=make, describe=describe, edgekd_int8=False, available=_available,
    report_section=report_section, memory_measure="rss_increase_mb", runtime_only=runtime_only))
