"""The Linear route (transformer students): fake-quant on nn.Linear only, onnxruntime's
MatMulIntegerToFloat route. quantize_onnx(..., qat_model=) gives each MatMul input the range its
fake-quant learned (TensorQuantOverrides, matched by weight values) instead of a MinMax calibration;
quantize_gather_tables makes the embedding tables INT8 weight-only."""

from __future__ import annotations

import copy
import hashlib
import tempfile
from pathlib import Path
from typing import Sequence

import numpy as np
import torch.nn as nn

from ..errors import EdgeKDError
from ..registry import closest
from ._spec import ACTIVATIONS
from .fake_quant import QuantLinear


def fake_quant_linears(model, *, reduce_range: bool):
    """In place: every nn.Linear of `model` gets fake-quantized input (UINT8 per-tensor) and weight
    (INT8 per-channel), exactly what quantize_onnx(..., linear_only=True) writes for its MatMul/Gemm.
    Embeddings, LayerNorm, Softmax and GELU stay float (transformers lose accuracy there first)."""
    for name, mod in list(model.named_modules()):
        if isinstance(mod, nn.Linear):
            parent, _, leaf = name.rpartition(".")
            setattr(model.get_submodule(parent) if parent else model, leaf, QuantLinear(mod, reduce_range))
    return model


def leave_linears_float(model, layers: Sequence[str]):
    """A copy of a fake_quant_linears model whose `layers` (module paths) are plain nn.Linear again: the
    PyTorch reference of quantize_onnx(..., float_layers=layers)."""
    out = copy.deepcopy(model)
    for name in layers:
        parent, _, leaf = name.rpartition(".")
        holder = out.get_submodule(parent) if parent else out
        if not isinstance(getattr(holder, leaf, None), QuantLinear):
            raise EdgeKDError(f"INT8: no fake-quantized Linear named {name!r}")
        setattr(holder, leaf, getattr(holder, leaf).inner)
    return out


def strip_fake_quant(model):
    """A float copy of a fake_quant_linears model with the fine-tuned weights, for ONNX export."""
    out = copy.deepcopy(model)
    for name, mod in list(out.named_modules()):
        if isinstance(mod, QuantLinear):
            parent, _, leaf = name.rpartition(".")
            setattr(out.get_submodule(parent) if parent else out, leaf, mod.inner)
    return out.eval()


class _Reader:
    """onnxruntime CalibrationDataReader over an array (or a list of ready feeds), one feed at a time."""

    def __init__(self, input_name: str, x):
        feeds = x if isinstance(x, list) else [{input_name: x[i:i + 1]} for i in range(len(x))]
        self._it = iter(feeds)

    def get_next(self):
        return next(self._it, None)

    def rewind(self):  # not needed by MinMax; kept for the reader protocol
        pass


def _weight_key(a: np.ndarray) -> tuple:
    a = np.ascontiguousarray(a, dtype=np.float32)
    return a.shape, hashlib.sha1(a.tobytes()).hexdigest()


def _matmul_layers(model_path: Path, qat_model, nodes: list[str]) -> dict[str, tuple[str, "QuantLinear"]]:
    """{ONNX node name: (module path, QuantLinear)} for the MatMul/Gemm nodes among `nodes` whose weight
    (maybe transposed) is a QuantLinear's of qat_model: the weight values identify the module."""
    import onnx
    from onnx import numpy_helper

    by_weight = {}
    for name, mod in qat_model.named_modules():
        if isinstance(mod, QuantLinear):
            w = mod.inner.weight.detach().cpu().numpy()  # (out, in); MatMul holds (in, out)
            by_weight[_weight_key(w)] = by_weight[_weight_key(w.T)] = (name, mod)
    g = onnx.load(str(model_path), load_external_data=False).graph
    inits = {i.name: i for i in g.initializer}
    wanted = set(nodes)
    out = {}
    for n in g.node:
        if n.name in wanted and n.input[1] in inits:
            hit = by_weight.get(_weight_key(numpy_helper.to_array(inits[n.input[1]])))
            if hit is not None:
                out[n.name] = hit
    return out


def _qat_overrides(model_path: Path, qat_model, nodes: list[str]) -> tuple[dict, dict]:
    """TensorQuantOverrides giving each quantized MatMul/Gemm input the range its QuantLinear learned;
    the ONNX weight (maybe transposed) identifies the module. Returns (overrides, info)."""
    import onnx

    layers = _matmul_layers(model_path, qat_model, nodes)
    g = onnx.load(str(model_path), load_external_data=False).graph
    overrides: dict = {}
    unmatched, conflicts = [], 0
    wanted = set(nodes)
    for n in g.node:
        if n.name not in wanted:
            continue
        act = layers[n.name][1].act if n.name in layers and bool(layers[n.name][1].act.seen) else None
        if act is None:
            unmatched.append(n.name)
            continue
        scale, zero = act.qparams()
        entry = [{"scale": np.array(scale, dtype=np.float32), "zero_point": np.array(zero, dtype=np.uint8)}]
        if n.input[0] in overrides and overrides[n.input[0]][0]["scale"] != entry[0]["scale"]:
            conflicts += 1  # one ONNX tensor feeding Linears whose ranges differ: the first one's is kept
            continue
        overrides[n.input[0]] = entry
    return overrides, {"inputs_with_qat_ranges": len(overrides), "matmuls_calibrated": unmatched,
                       "range_conflicts": conflicts}


def linear_layers(fp32_path: Path, qat_model) -> dict[str, str]:
    """{layer: "Linear"} of every fake-quantized nn.Linear of qat_model that the exported FP32 graph runs
    as a MatMul/Gemm with a constant weight, in graph order, by module path (what
    quantize_onnx(float_layers=) takes)."""
    import onnx

    g = onnx.load(str(fp32_path), load_external_data=False).graph
    consts = {i.name for i in g.initializer}
    nodes = [n.name for n in g.node if n.op_type in ("MatMul", "Gemm") and n.input[1] in consts]
    layers = _matmul_layers(fp32_path, qat_model, nodes)
    return {layers[n][0]: "Linear" for n in nodes if n in layers}


def quantize_onnx(fp32_path: Path, out_path: Path, calib_x, *, reduce_range: bool, linear_only: bool = False,
                  qat_model=None, float_layers: Sequence[str] = (), activations: str = "static") -> dict:
    """INT8 with per-channel symmetric INT8 weights. activations "static": QDQ, per-tensor UINT8
    activations with fixed ranges; "dynamic" (linear_only): each MatMul's input range measured per call
    (onnxruntime's DynamicQuantizeLinear + MatMulInteger), no calibration, the QAT-tuned weights.

    calib_x: an array (single-input models) or a list of feeds {input name: array}; MinMax ranges from
    it for every activation that qat_model does not give one.
    linear_only: quantize only MatMul/Gemm nodes with a constant weight (the nn.Linear layers of a
    transformer), inputs only, as fake_quant_linears trains them; everything else stays float.
    "nncf" (linear_only): NNCF's post-training pipeline for transformers on the graph (_nncf_quantize):
    its own placement and static ranges from calib_x, after SmoothQuant and with bias correction.
    qat_model: a fake_quant_linears model: each quantized MatMul/Gemm input gets the range its
    QuantLinear learned (matched by weight values) instead of a calibrated one.
    float_layers: module paths of qat_model's Linears (linear_layers) whose MatMul stays float
    (onnxruntime's nodes_to_exclude; edgekd.budget's fallback). Returns what was done."""
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_dynamic, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if activations not in ACTIVATIONS[1:] or (activations != "static" and not linear_only):
        raise EdgeKDError(f"INT8 activations: 'static', or 'dynamic' / 'nncf' for transformer linears; got {activations!r}")
    input_name = onnx.load(str(fp32_path), load_external_data=False).graph.input[0].name
    calib = calib_x if isinstance(calib_x, list) or calib_x is None else calib_x.astype(np.float32)
    info: dict = {}
    with tempfile.TemporaryDirectory() as d:
        pre = Path(d) / "pre.onnx"
        # symbolic shape inference cannot finish on transformer graphs with dynamic sequence axes; onnx's
        # own shape inference is enough for the quantizer there
        quant_pre_process(str(fp32_path), str(pre), skip_symbolic_shape=linear_only)
        extra: dict = {}
        nodes, excluded = None, []
        if linear_only:
            g = onnx.load(str(pre), load_external_data=False).graph
            consts = {i.name for i in g.initializer}
            nodes = [n.name for n in g.node if n.op_type in ("MatMul", "Gemm") and n.input[1] in consts]
            if float_layers:
                if qat_model is None:
                    raise EdgeKDError("quantize_onnx: float_layers names the qat_model's layers; pass qat_model")
                named = {name: node for node, (name, _) in _matmul_layers(pre, qat_model, nodes).items()}
                unknown = [name for name in float_layers if name not in named]
                if unknown:
                    raise EdgeKDError(f"INT8: no quantized layer named {unknown[0]!r}{closest(unknown[0], list(named))}")
                excluded = [named[name] for name in float_layers]
                nodes = [n for n in nodes if n not in excluded]
                if not nodes:  # an empty nodes_to_quantize would mean "every node" to onnxruntime
                    raise EdgeKDError("INT8: float_layers leaves no layer to quantize; use the FP32 model instead")
                info["float_layers"] = list(float_layers)
            extra["OpTypesToExcludeOutputQuantization"] = ["MatMul", "Gemm"]
            if activations == "dynamic":  # the ranges are the call's own: learned ones do not apply
                # by op type, not node names: the dynamic quantizer rewrites Gemm as MatMul + Add first
                quantize_dynamic(str(pre), str(out_path), per_channel=True, reduce_range=reduce_range,
                                 weight_type=QuantType.QInt8, op_types_to_quantize=["MatMul", "Gemm"],
                                 nodes_to_exclude=excluded, extra_options={"MatMulConstBOnly": True})
                return {**info, "activations": "dynamic"}
            if activations == "nncf":
                return {**info, **_nncf_quantize(pre, out_path, calib, excluded)}
            if qat_model is not None:
                extra["TensorQuantOverrides"], done = _qat_overrides(pre, qat_model, nodes)
                info.update(done)
        quantize_static(
            str(pre), str(out_path), _Reader(input_name, calib),
            quant_format=QuantFormat.QDQ, per_channel=True, reduce_range=reduce_range,
            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.MinMax, nodes_to_quantize=nodes, nodes_to_exclude=excluded,
            extra_options=extra,
        )
    return {**info, "activations": "static"}


def _nncf_quantize(pre: Path, out_path: Path, calib: list[dict], excluded: list[str]) -> dict:
    """NNCF post-training quantization of an ONNX transformer (model_type TRANSFORMER): QDQ on both
    inputs of each linear's MatMul (OpenVINO's CPU plugin runs them as INT8 FullyConnected layers); SmoothQuant (Xiao et al. 2023) first moves each linear's activation
    outliers into its weights, per input channel,

        X W = (X diag(s)^-1) (diag(s) W),  s_j = max|X_j|^a / max|W_j|^(1-a)    (X: (N, C), W: (C, O)),

    and fast bias correction then restores each layer's mean output shift. Weights: the QAT-tuned float
    ones of the graph (trained under an INT8 per-channel grid, which NNCF's weights use too); activation
    ranges: min/max statistics of calib, not QAT's. `excluded` nodes stay float (NNCF's ignored scope)."""
    import contextlib
    import io
    import logging

    import nncf
    import onnx

    logging.getLogger("nncf").setLevel(logging.ERROR)
    model = onnx.load(str(pre))
    names = {i.name for i in model.graph.input}
    data = [{k: v for k, v in f.items() if k in names} for f in calib]
    # its progress bars (rich) write to the console at the time of writing: kept out of the build's log
    with contextlib.redirect_stderr(io.StringIO()), contextlib.redirect_stdout(io.StringIO()):
        q = nncf.quantize(model, nncf.Dataset(data), model_type=nncf.ModelType.TRANSFORMER, subset_size=len(data),
                          ignored_scope=nncf.IgnoredScope(names=list(excluded)) if excluded else None)
    onnx.save(q, str(out_path))
    return {"activations": "nncf", "calibration_inputs": len(data)}


# ---------------------------------------------------------------------------------------------------
# embedding tables: INT8 weight-only, after training


def quantize_gather_tables(path: Path, *, min_rows: int = 256) -> list[dict]:
    """Rewrites, in place, every Gather from a constant FP32 table of at least `min_rows` rows (the
    word and position embeddings of a transformer) into an INT8 table with one scale per row:

        table[r] ~= q[r] * scale[r],  scale[r] = max_j |table[r, j]| / 127,  q: (V, D) int8, scale: (V, 1)
        Gather(table, ids) -> Mul(Cast(Gather(q, ids), float), Gather(scale, ids))      (..., D)

    Only the looked-up rows are dequantized; the table is 4x smaller (and so is the process's peak
    RSS). Weight-only and post-training: the error of each element is at most scale[r] / 2, and the
    export's parity check measures its effect. Returns what was rewritten."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    model = onnx.load(str(path))
    g = model.graph
    inits = {i.name: i for i in g.initializer}
    done = []
    for node in list(g.node):
        if node.op_type != "Gather" or node.input[0] not in inits:
            continue
        axis = next((a.i for a in node.attribute if a.name == "axis"), 0)
        table = numpy_helper.to_array(inits[node.input[0]])
        if axis != 0 or table.ndim != 2 or table.dtype != np.float32 or table.shape[0] < min_rows:
            continue
        scale = np.abs(table).max(1, keepdims=True) / 127.0  # (V, 1)
        scale[scale == 0] = 1.0
        q = np.clip(np.round(table / scale), -127, 127).astype(np.int8)
        name, out = node.input[0], node.output[0]
        g.initializer.remove(inits[name])
        g.initializer.extend([numpy_helper.from_array(q, f"{name}_int8"),
                              numpy_helper.from_array(scale.astype(np.float32), f"{name}_scale")])
        at = list(g.node).index(node)
        g.node.remove(node)
        for k, n in enumerate([
            helper.make_node("Gather", [f"{name}_int8", node.input[1]], [f"{out}_q"], name=f"{node.name}_q", axis=0),
            helper.make_node("Gather", [f"{name}_scale", node.input[1]], [f"{out}_s"], name=f"{node.name}_s", axis=0),
            helper.make_node("Cast", [f"{out}_q"], [f"{out}_f"], name=f"{node.name}_cast", to=TensorProto.FLOAT),
            helper.make_node("Mul", [f"{out}_f", f"{out}_s"], [out], name=f"{node.name}_dequant"),
        ]):
            g.node.insert(at + k, n)
        done.append({"table": name, "shape": list(table.shape),
                     "max_abs_error": float(np.abs(q * scale - table).max())})
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return done
