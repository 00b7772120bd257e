"""INT8: quantization-aware distillation in PyTorch, then an INT8 QDQ ONNX graph written by
onnxruntime's quantizer.

Why this route (torch 2.13, measured on this project's machines):
- torch.ao.quantization eager/FX QAT is deprecated, and its fused observer op exports to neither
  ONNX exporter nor OpenVINO.
- torchao's PT2E QAT trains well, but its converted graph needs the dynamo exporter and OpenVINO
  cannot convert it directly; `convert_pt2e` alone takes ~17 s.
- NNCF's torch QAT works but compiles a C++ extension on first use (~55 s) and exports an
  OpenVINO-only FakeQuantize op by default.
So training uses torch's own fake-quant ops (`torch.fake_quantize_per_channel_affine` /
`_per_tensor_affine`, straight-through gradients) in exactly the scheme that
`onnxruntime.quantization.quantize_static` then materializes: weights symmetric per-channel INT8
(7-bit with reduce_range), activations asymmetric per-tensor UINT8 from min/max. Weight scales are a
function of the weights (max |w| per output channel), so the exported INT8 weights are the ones the
student was fine-tuned with. One QDQ ONNX graph then feeds both onnxruntime and OpenVINO.
"""

from __future__ import annotations

import platform
from pathlib import Path

import numpy as np


def has_vnni() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return any(f in flags for f in ("avx512_vnni", "avx_vnni", "amx_int8"))


def resolve_reduce_range(setting: str) -> bool:
    """'auto': 7-bit weights on x86 without VNNI, where u8s8 kernels can saturate (ARM never does)."""
    if setting != "auto":
        return setting == "true"
    return platform.machine().lower() in ("x86_64", "amd64") and not has_vnni()


def _weight_range(reduce_range: bool) -> tuple[int, int]:
    # onnxruntime.quantization symmetric INT8: [-127, 127], or [-64, 64] with reduce_range.
    return (-64, 64) if reduce_range else (-127, 127)


def _make_modules():
    import torch
    import torch.nn as nn

    class ActFakeQuant(nn.Module):
        """Per-tensor asymmetric UINT8 fake-quant; range = EMA of batch min/max (as a MinMax
        calibrator sees it), always including 0 so that 0 is exact."""

        def __init__(self, momentum: float = 0.05):
            super().__init__()
            self.momentum = momentum
            self.register_buffer("lo", torch.zeros(()))
            self.register_buffer("hi", torch.zeros(()))
            self.register_buffer("seen", torch.zeros((), dtype=torch.bool))
            self.observe = True

        def forward(self, x):
            if self.observe:
                lo, hi = x.detach().min(), x.detach().max()
                if not bool(self.seen):
                    self.lo.copy_(lo)
                    self.hi.copy_(hi)
                    self.seen.fill_(True)
                else:
                    self.lo.lerp_(lo, self.momentum)
                    self.hi.lerp_(hi, self.momentum)
            lo, hi = torch.clamp(self.lo, max=0.0), torch.clamp(self.hi, min=0.0)
            scale = torch.clamp((hi - lo) / 255.0, min=1e-8)
            zero = torch.clamp(torch.round(-lo / scale), 0, 255).to(torch.int32)
            return torch.fake_quantize_per_tensor_affine(x, scale, zero, 0, 255)

    class QuantWrap(nn.Module):
        """Conv2d/Linear with fake-quantized input (UINT8 per-tensor) and weight (INT8 per-channel)."""

        def __init__(self, inner, reduce_range: bool):
            super().__init__()
            self.inner = inner
            self.act = ActFakeQuant()
            self.qmin, self.qmax = _weight_range(reduce_range)

        def forward(self, x):
            x = self.act(x)
            w = self.inner.weight
            # (C_out, ...) -> scale per output channel: max|w| / (range / 2), symmetric, zero point 0
            absmax = w.detach().abs().flatten(1).amax(1).clamp(min=1e-8)
            scale = absmax * 2 / (self.qmax - self.qmin)
            zero = torch.zeros_like(scale, dtype=torch.int32)
            wq = torch.fake_quantize_per_channel_affine(w, scale, zero, 0, self.qmin, self.qmax)
            if isinstance(self.inner, nn.Conv2d):
                return self.inner._conv_forward(x, wq, self.inner.bias)
            return nn.functional.linear(x, wq, self.inner.bias)

    class QATModel(nn.Module):
        def __init__(self, fused, reduce_range: bool):
            super().__init__()
            self.body = fused
            self.out = ActFakeQuant()
            for name, mod in list(fused.named_modules()):
                if isinstance(mod, (nn.Conv2d, nn.Linear)):
                    parent, _, leaf = name.rpartition(".")
                    setattr(fused.get_submodule(parent) if parent else fused, leaf, QuantWrap(mod, reduce_range))

        def forward(self, x):
            return self.out(self.body(x))

        def set_observe(self, on: bool):
            for m in self.modules():
                if isinstance(m, ActFakeQuant):
                    m.observe = on

        def float_model(self):
            """The BN-folded float model with the fine-tuned weights, for ONNX export."""
            import copy

            fused = copy.deepcopy(self.body)
            for name, mod in list(fused.named_modules()):
                if isinstance(mod, QuantWrap):
                    parent, _, leaf = name.rpartition(".")
                    setattr(fused.get_submodule(parent) if parent else fused, leaf, mod.inner)
            return fused.eval()

    QATModel.Wrap, QATModel.Act = QuantWrap, ActFakeQuant
    return QATModel


def fake_quant_linears(model, *, reduce_range: bool):
    """In place: every nn.Linear of `model` gets fake-quantized input (UINT8 per-tensor) and weight
    (INT8 per-channel), exactly what quantize_onnx(..., linear_only=True) writes for its MatMul/Gemm.
    Embeddings, LayerNorm, Softmax and GELU stay float (transformers lose accuracy there first)."""
    import torch.nn as nn

    Wrap = _make_modules().Wrap
    for name, mod in list(model.named_modules()):
        if isinstance(mod, nn.Linear):
            parent, _, leaf = name.rpartition(".")
            setattr(model.get_submodule(parent) if parent else model, leaf, Wrap(mod, reduce_range))
    return model


def strip_fake_quant(model):
    """A float copy of a fake_quant_linears model with the fine-tuned weights, for ONNX export."""
    import copy

    out = copy.deepcopy(model)
    for name, mod in list(out.named_modules()):
        if hasattr(mod, "inner") and hasattr(mod, "act"):
            parent, _, leaf = name.rpartition(".")
            setattr(out.get_submodule(parent) if parent else out, leaf, mod.inner)
    return out.eval()


def set_observe(model, on: bool) -> None:
    """Activation observers on (ranges follow the data) or off (ranges frozen)."""
    for m in model.modules():
        if hasattr(m, "observe") and hasattr(m, "momentum"):
            m.observe = on


def fold_batchnorm(model):
    """Fold BatchNorm into the preceding convolution (eval statistics) via torch.fx. Without this,
    onnxruntime sees BN between Conv and Q and cannot form integer convolutions."""
    import copy

    import torch.fx
    from torch.fx.experimental.optimization import fuse

    return fuse(torch.fx.symbolic_trace(copy.deepcopy(model).eval()))


def prepare_qat(student, *, reduce_range: bool):
    """A fake-quant copy of `student` (BN folded) ready for quantization-aware distillation."""
    QATModel = _make_modules()
    return QATModel(fold_batchnorm(student), reduce_range)


def calibrate(qat_model, x: np.ndarray) -> None:
    """Initialise activation ranges from data (one pass, observers on, no gradient)."""
    import torch

    qat_model.eval()
    qat_model.set_observe(True)
    with torch.no_grad():
        for i in range(0, len(x), 128):
            qat_model(torch.from_numpy(x[i:i + 128]))
    qat_model.set_observe(False)


def qat_train_mode(m):
    m.train()
    set_observe(m, True)


def qat_eval_mode(m):
    m.eval()
    set_observe(m, False)


class _Reader:
    """onnxruntime CalibrationDataReader over an array (or a list of ready feeds), one feed at a time."""

    def __init__(self, input_name: str, x):
        feeds = x if isinstance(x, list) else [{input_name: x[i:i + 1]} for i in range(len(x))]
        self._it = iter(feeds)

    def get_next(self):
        return next(self._it, None)

    def rewind(self):  # not needed by MinMax; kept for the reader protocol
        pass


def quantize_onnx(fp32_path: Path, out_path: Path, calib_x, *, reduce_range: bool, linear_only: bool = False) -> None:
    """Static INT8 QDQ: per-channel symmetric INT8 weights, per-tensor UINT8 activations (MinMax).

    calib_x: an array (single-input models) or a list of feeds {input name: array}.
    linear_only: quantize only MatMul/Gemm nodes with a constant weight (the nn.Linear layers of a
    transformer), inputs only, as fake_quant_linears trains them; everything else stays float."""
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    model = onnx.load(str(fp32_path), load_external_data=False)
    input_name = model.graph.input[0].name
    extra: dict = {}
    nodes = None
    if linear_only:
        consts = {i.name for i in model.graph.initializer}
        nodes = [n.name for n in model.graph.node if n.op_type in ("MatMul", "Gemm") and n.input[1] in consts]
        extra["OpTypesToExcludeOutputQuantization"] = ["MatMul", "Gemm"]
    calib = calib_x if isinstance(calib_x, list) else calib_x.astype(np.float32)
    pre = out_path.with_suffix(".pre.onnx")
    try:
        # symbolic shape inference cannot finish on transformer graphs with dynamic sequence axes; onnx's
        # own shape inference is enough for the quantizer there
        quant_pre_process(str(fp32_path), str(pre), skip_symbolic_shape=linear_only)
        quantize_static(
            str(pre), str(out_path), _Reader(input_name, calib),
            quant_format=QuantFormat.QDQ, per_channel=True, reduce_range=reduce_range,
            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.MinMax, nodes_to_quantize=nodes, extra_options=extra,
        )
    finally:
        pre.unlink(missing_ok=True)


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


INTEGER_OPS = ("QLinearConv", "QGemm", "QLinearMatMul", "ConvInteger", "MatMulInteger", "QLinearAdd",
               "MatMulIntegerToFloat",
               "QLinearGlobalAveragePool", "QLinearMul", "QLinearSigmoid", "QAttention", "DynamicQuantizeMatMul")


def optimized_op_types(path: Path, *, level: str = "extended") -> dict[str, int]:
    """Op-type counts of the graph onnxruntime actually runs (after its graph optimizations)."""
    import tempfile

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
