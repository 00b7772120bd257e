"""ONNX op inspection on the export side: which kernels onnxruntime actually runs for a model file."""

from __future__ import annotations

import tempfile
from pathlib import Path

# onnxruntime's integer kernels: one of them in the optimized graph means the INT8 model is not emulated in float
INTEGER_OPS = ("QLinearConv", "QGemm", "QLinearMatMul", "ConvInteger", "MatMulInteger", "QLinearAdd",
               "MatMulIntegerToFloat", "QLinearConcat", "QLinearAveragePool",
               "QLinearGlobalAveragePool", "QLinearMul", "QLinearSigmoid", "QAttention", "DynamicQuantizeMatMul")


def optimized_op_types(path: Path, *, level: str = "extended") -> dict[str, int]:
    """Op-type counts of the graph onnxruntime actually runs (after its graph optimizations)."""
    import onnx
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = {"basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
                                   "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
                                   "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL}[level]
    with tempfile.TemporaryDirectory() as d:
        so.optimized_model_filepath = str(Path(d) / "opt.onnx")
        ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        graph = onnx.load(so.optimized_model_filepath).graph
    counts: dict[str, int] = {}
    for node in graph.node:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return counts
