"""INT8: quantization-aware distillation whose fake-quant graph IS the exported QDQ graph.

Image students (any graph: residual adds, depthwise/grouped convolutions, concatenation, pooling,
squeeze-excitation) are captured with `torch.export` (batch axis dynamic) and BatchNorm is folded into
the convolutions. A fake-quant module then sits on every tensor where onnxruntime's QDQ fusions need a
QuantizeLinear/DequantizeLinear pair to run an integer kernel: inputs and outputs of Conv, Linear, Add,
Mul, Concat, Sigmoid and average pooling, with a ReLU/ReLU6 right after such an op taking the output's
place (onnxruntime removes it into the quantizer); grid-preserving ops (max pooling, reshape, flatten,
padding, slicing, dropout) reuse their input's quantizer, so onnxruntime runs them on UINT8 as they are.
Biases are fake-quantized too, to the INT32 grid scale_x * scale_w that QLinearConv/QGemm add to their
accumulator; logits stay float (QGemm writes float output). Export writes that same graph: each
fake-quant becomes a QDQ pair with the scale and zero point QAT used, weights INT8 initializers (exactly
the fake-quantized integers), biases INT32. Nothing is re-calibrated, so onnxruntime's integer kernels
and the fake-quant PyTorch model differ only by float rounding inside the kernels.
`prepare_qat(runtime="openvino")` leaves out the quantizer between a convolution and the residual Add
that OpenVINO's CPU plugin merges into it (OpenVINO skips that rounding).
`leave_float` (edgekd.budget's accuracy-budget fallback) makes chosen layers compute in float: float
weights and bias, and an input read from before its quantizer, because onnxruntime's
WeightBiasQuantization transformer quantizes (per tensor) the float weight of any Conv/Gemm whose input
comes from a DequantizeLinear, the case of a node merely excluded from a QDQ quantizer.
Transformer students keep nn.Linear fake-quant only (`fake_quant_linears`, onnxruntime's
MatMulIntegerToFloat route), and `quantize_onnx(..., qat_model=)` gives each MatMul input the range its
fake-quant learned (TensorQuantOverrides, matched by weight values) instead of a MinMax calibration.

Scheme: weights symmetric per-channel INT8 (7-bit with reduce_range on x86 without VNNI, where u8s8
kernels can saturate), activations asymmetric per-tensor UINT8 whose range is an EMA of batch min/max
(always including 0, so that 0, padding and ReLU are exact).

Why this route. Earlier trials (torch 2.13, an MNIST student): torch.ao.quantization eager/FX QAT is
deprecated and its fused observer op exports to neither ONNX exporter nor OpenVINO; NNCF's torch QAT
compiles a C++ extension on first use (~55 s) and exports an OpenVINO-only FakeQuantize op by default;
torchao PT2E QAT needs the dynamo exporter and `convert_pt2e` took ~17 s.
Measured for this route (tests/test_quantize.py's students, 300 held-out MNIST digits, top-1
agreement of onnxruntime ORT_ENABLE_ALL with the student's own fake-quant model, one AVX-512 VNNI
x86 host, reduce_range on):
- the previous route (fake-quant on Conv/Linear inputs only, BN folded by torch.fx, then
  onnxruntime's `quantize_static` re-calibrating every activation with MinMax and quantizing Add, pool
  and output tensors QAT never saw): residual 0.993, inverted residual 0.957, grouped 0.997, concat
  0.997, squeeze-excitation 0.997; transformers' ResNet and MobileNetV2 cannot be prepared at all
  (torch.fx symbolic tracing fails on their shape checks);
- this route: 1.000 on all seven (max |logit diff| ~1e-7 on the small ones); before biases were
  fake-quantized, MobileNetV2 reached only 0.96 (the INT32 bias rounding, up to half a step of
  scale_x * scale_w, flips roundings downstream);
- torchao PT2E QAT (X86InductorQuantizer, convert_pt2e, dynamo ONNX export): 0.967 (inverted
  residual) and 0.977 (ResNet) against the prepared model, `convert_pt2e` 12 s, and onnxruntime ran
  only 1 of 6 and 4 of 6 convolutions as QLinearConv (Inductor's placement leaves conv outputs
  unquantized);
- OpenVINO on the onnxruntime-placed file: 0.94-1.0 (Conv+Add fusion); with runtime="openvino": 1.0.
prepare_qat takes 0.2-2 s (torch.export), export_int8_onnx 0.05-1.2 s.
"""

from __future__ import annotations

import copy
import hashlib
import platform
import tempfile
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn as nn

from .errors import EdgeKDError, RecipeError
from .registry import closest

# ---------------------------------------------------------------------------------------------------
# hardware


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


def _weight_range(reduce_range: bool, bits: int = 8) -> tuple[int, int]:
    # onnxruntime.quantization symmetric INT8: [-127, 127], or [-64, 64] with reduce_range; fewer bits
    # (quantize.weight_bits) use +-(2^(bits-1) - 1) of the same INT8 storage and kernels.
    if bits >= 8 or (reduce_range and bits == 7):
        return (-64, 64) if reduce_range else (-127, 127)
    top = 2 ** (bits - 1) - 1
    return (-top, top)


# ---------------------------------------------------------------------------------------------------
# fake-quant modules


def _act_qparams(lo, hi):
    lo, hi = torch.clamp(lo, max=0.0), torch.clamp(hi, min=0.0)
    scale = torch.clamp((hi - lo) / 255.0, min=1e-8)
    zero = torch.clamp(torch.round(-lo / scale), 0, 255).to(torch.int32)
    return scale, zero


class ActFakeQuant(nn.Module):
    """Per-tensor asymmetric UINT8 fake-quant; range = EMA of batch min/max (as a MinMax calibrator
    sees it), always including 0 so that 0 is exact. Straight-through gradient."""

    def __init__(self, momentum: float = 0.05):
        super().__init__()
        self.momentum = momentum
        self.register_buffer("lo", torch.zeros(()))
        self.register_buffer("hi", torch.zeros(()))
        self.register_buffer("seen", torch.zeros((), dtype=torch.bool))
        self.observe = False  # on in calibrate() and qat_train_mode(); off, a forward never moves the range
        self.frozen: tuple[float, int] | None = None  # (scale, zero point) as Python numbers, for export

    def forward(self, x, observe: bool = True):
        if self.frozen is not None:  # exports as QuantizeLinear/DequantizeLinear with constant scale
            return torch.fake_quantize_per_tensor_affine(x, self.frozen[0], self.frozen[1], 0, 255)
        if self.observe and observe:
            lo, hi = x.detach().min(), x.detach().max()
            if not bool(self.seen):
                self.lo.copy_(lo)
                self.hi.copy_(hi)
                self.seen.fill_(True)
            else:
                self.lo.lerp_(lo, self.momentum)
                self.hi.lerp_(hi, self.momentum)
        if not bool(self.seen):  # no range yet: float (calibrate() gives every quantizer one)
            return x
        scale, zero = self._qparams()
        return torch.fake_quantize_per_tensor_affine(x, scale, zero, 0, 255)

    def _qparams(self):
        return _act_qparams(self.lo, self.hi)

    def qparams(self) -> tuple[float, int]:
        """(scale, zero point) of the UINT8 grid, exactly as forward uses them."""
        scale, zero = self._qparams()
        return float(scale), int(zero)


class WeightFakeQuant(nn.Module):
    """Symmetric per-output-channel INT8 fake-quant of a weight (C_out, ...); the scale is a function
    of the weight (max |w| per channel), so it needs no state."""

    def __init__(self, reduce_range: bool, bits: int = 8):
        super().__init__()
        self.qmin, self.qmax = _weight_range(reduce_range, bits)
        self.frozen: torch.Tensor | None = None  # the scale, for export (the weight is then on its grid)

    def scale(self, w):
        # (C_out, ...) -> (C_out,): max|w| / (range / 2), zero point 0
        return w.detach().abs().flatten(1).amax(1).clamp(min=1e-8) * 2 / (self.qmax - self.qmin)

    def forward(self, w):
        if self.frozen is not None:  # the full INT8 range exports as QuantizeLinear(axis 0) + DequantizeLinear
            zero = torch.zeros_like(self.frozen, dtype=torch.int32)
            return torch.fake_quantize_per_channel_affine(w, self.frozen, zero, 0, -128, 127)
        scale = self.scale(w)
        zero = torch.zeros_like(scale, dtype=torch.int32)
        return torch.fake_quantize_per_channel_affine(w, scale, zero, 0, self.qmin, self.qmax)


def bias_fake_quant(b, w, lo, hi, seen, weight_span: int):
    """The INT32 bias QLinearConv/QGemm add to their accumulator: b on the grid scale_x * scale_w[c]
    (C_out,), straight-through. lo/hi/seen: the input quantizer's range; weight_span: qmax - qmin."""
    if not bool(seen):
        return b
    grid = _act_qparams(lo, hi)[0] * (w.detach().abs().flatten(1).amax(1).clamp(min=1e-8) * 2 / weight_span)
    return b + (torch.round(b / grid) * grid - b).detach()


class QuantLinear(nn.Module):
    """nn.Linear with fake-quantized input (UINT8 per-tensor) and weight (INT8 per-channel)."""

    def __init__(self, inner: nn.Linear, reduce_range: bool):
        super().__init__()
        self.inner = inner
        self.act = ActFakeQuant()
        self.wq = WeightFakeQuant(reduce_range)

    def forward(self, x):
        return nn.functional.linear(self.act(x), self.wq(self.inner.weight), self.inner.bias)


def set_observe(model, on: bool) -> None:
    """Activation observers on (ranges follow the data) or off (ranges frozen)."""
    for m in model.modules():
        if isinstance(m, ActFakeQuant):
            m.observe = on


def qat_train_mode(m):
    m.train()
    set_observe(m, True)


def qat_eval_mode(m):
    m.eval()
    set_observe(m, False)


# ---------------------------------------------------------------------------------------------------
# image students: graph capture, BatchNorm folding, fake-quant placement

aten = torch.ops.aten
_CONV = {aten.conv1d.default, aten.conv2d.default, aten.conv1d.padding, aten.conv2d.padding}
_WEIGHTED = _CONV | {aten.linear.default}
_BINARY = {aten.add.Tensor, aten.add_.Tensor, aten.mul.Tensor, aten.mul_.Tensor}
# an op whose output stays on its input's UINT8 grid: it shares the input's quantizer
_GRID = {aten.max_pool1d.default, aten.max_pool2d.default, aten.flatten.using_ints, aten.view.default,
         aten.reshape.default, aten._unsafe_view.default, aten.permute.default, aten.transpose.int,
         aten.t.default, aten.squeeze.dim, aten.squeeze.dims, aten.squeeze.default, aten.unsqueeze.default,
         aten.contiguous.default, aten.clone.default, aten.alias.default, aten.detach.default,
         aten.expand.default, aten.expand_as.default, aten.slice.Tensor, aten.select.int,
         aten.constant_pad_nd.default, aten.pad.default}
_BN = {aten.batch_norm.default, aten._native_batch_norm_legit_no_training.default}


def _is_relu_like(n) -> bool:
    """ReLU / ReLU6: onnxruntime removes them in front of a UINT8 quantizer whose range they contain."""
    if n.op != "call_function":
        return False
    if n.target in (aten.relu.default, aten.relu_.default):
        return True
    return n.target in (aten.hardtanh.default, aten.hardtanh_.default) and tuple(n.args[1:3]) == (0.0, 6.0)


def _grid_preserving(gm, n) -> bool:
    if n.op == "call_module":
        return isinstance(gm.get_submodule(n.target), nn.Dropout)  # identity in eval; a rescale in training
    if n.op != "call_function" or n.target not in _GRID:
        return False
    if n.target == aten.pad.default:  # (x, pad, mode="constant", value=None)
        return (n.args[2] if len(n.args) > 2 else "constant") == "constant" and not (n.args[3] if len(n.args) > 3 else 0)
    if n.target == aten.constant_pad_nd.default:
        return not (n.args[2] if len(n.args) > 2 else 0)
    return True


def _is_float_tensor(n) -> bool:
    """An activation (not a weight, scalar or integer tensor)."""
    if not isinstance(n, torch.fx.Node) or n.op == "get_attr":
        return False
    v = n.meta.get("val")
    return isinstance(v, torch.Tensor) and v.is_floating_point()


def _get_attr(gm, target: str):
    obj = gm
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj


def _set_param(gm, target: str, value) -> None:
    parent, _, leaf = target.rpartition(".")
    mod = gm.get_submodule(parent) if parent else gm
    if leaf in mod._parameters:
        del mod._parameters[leaf]
    mod.register_parameter(leaf, nn.Parameter(value))


def _capture(model, input_shape) -> torch.fx.GraphModule:
    """The eval-mode ATen graph of `model` (one tensor in, logits out), batch axis dynamic, as a plain
    trainable GraphModule (the exported module forbids .train()/.eval())."""
    from torch.export import Dim, export

    model = copy.deepcopy(model).cpu().eval()
    x = torch.zeros((2, *input_shape))  # batch 2: an example batch of 1 would fix the batch axis
    try:
        ep = export(model, (x,), dynamic_shapes=({0: Dim.AUTO},))
    except Exception as e:  # the exporter's own message says which line of the model it cannot trace
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise EdgeKDError(f"INT8: torch.export cannot capture the student ({first}); make its forward "
                          "traceable (no data-dependent Python control flow) or use a PTQ/FP32 target") from e
    gm = ep.module()
    g = gm.graph
    (inp,) = [n for n in g.nodes if n.op == "placeholder"]
    if isinstance(inp.meta["val"].shape[0], int):
        raise EdgeKDError("INT8: the student's forward fixes the batch size (e.g. x.view(2, -1)); write "
                          "x.flatten(1) or x.view(x.size(0), -1) so that any batch size runs")
    for n in list(g.nodes):
        if n.op == "call_module" and n.target == "_guards_fn":  # export's input-shape guard: not trainable state
            g.erase_node(n)
    out = next(n for n in g.nodes if n.op == "output")
    res = out.args[0]
    if isinstance(res, (tuple, list)):
        if len(res) != 1:
            raise EdgeKDError(f"INT8: the student returns {len(res)} outputs; it must return one logits tensor")
        out.args = (res[0],)
    g._codegen = torch.fx.graph.CodeGen()  # plain forward(x) -> tensor, without export's pytree specs
    for n in list(g.nodes):
        if n.op == "call_function" and n.target == aten.dropout.default:
            # a module, so that .train() turns it on again (the graph was captured in eval mode)
            name = f"dropout_{n.name}"
            gm.add_submodule(name, nn.Dropout(n.args[1]))
            with g.inserting_before(n):
                d = g.call_module(name, (n.args[0],))
            d.meta = dict(n.meta)
            n.replace_all_uses_with(d)
            g.erase_node(n)
    return torch.fx.GraphModule(gm, g)


def _fold_batchnorm_graph(gm) -> int:
    """In place: every eval-mode BatchNorm right after a convolution (its only user) folded into the
    convolution's weight and bias. Without this, onnxruntime sees BN between Conv and Q and cannot form
    integer convolutions. Returns how many were folded."""
    g, folded, dead = gm.graph, 0, set()
    for bn in list(g.nodes):
        if bn.op != "call_function" or bn.target not in _BN:
            continue
        conv = bn.args[0]
        if not (conv.op == "call_function" and conv.target in _CONV and len(conv.users) == 1
                and conv.args[1].op == "get_attr" and len(conv.args[1].users) == 1):
            continue
        if bn.target == aten.batch_norm.default:  # (x, gamma, beta, mean, var, training, momentum, eps, cudnn)
            if bn.args[5]:
                continue
            eps = bn.args[7]
        else:  # (x, gamma, beta, mean, var, momentum, eps) -> (out, ...)
            eps = bn.args[6]
        gamma, beta, mean, var = (None if a is None else _get_attr(gm, a.target).detach() for a in bn.args[1:5])
        w_node = conv.args[1]
        b_node = conv.args[2] if len(conv.args) > 2 else None
        w = _get_attr(gm, w_node.target).detach()
        b = _get_attr(gm, b_node.target).detach() if b_node is not None else torch.zeros_like(mean)
        factor = torch.rsqrt(var + eps) * (gamma if gamma is not None else 1.0)  # (C_out,)
        bias = (b - mean) * factor + (beta if beta is not None else 0.0)  # (C_out,)
        _set_param(gm, w_node.target, w * factor.reshape(-1, *([1] * (w.dim() - 1))))  # (C_out, C_in/g, k...)
        if b_node is not None and len(b_node.users) == 1:
            _set_param(gm, b_node.target, bias)
        else:
            target = f"{w_node.target.rpartition('.')[0] or 'conv'}_folded_bias".replace(".", "_")
            gm.register_parameter(target, nn.Parameter(bias))
            with g.inserting_before(conv):
                new_b = g.get_attr(target)
            args = list(conv.args) + [None] * (3 - len(conv.args))
            args[2] = new_b
            conv.args = tuple(args)
        users = list(bn.users)
        if bn.target == aten.batch_norm.default:
            bn.replace_all_uses_with(conv)
        else:
            for u in users:  # getitem(bn, 0) is the normalized tensor; the others are empty statistics
                if u.args[1] == 0:
                    u.replace_all_uses_with(conv)
                g.erase_node(u)
        dead.update(a.target for a in bn.args[1:5] if a is not None)
        g.erase_node(bn)
        folded += 1
    for n in list(g.nodes):
        if n.op == "get_attr" and not n.users:
            dead.add(n.target)
            g.erase_node(n)
    for target in dead:  # the BN's parameters and statistics, so that state_dict holds only live weights
        parent, _, leaf = target.rpartition(".")
        mod = gm.get_submodule(parent) if parent else gm
        if leaf in mod._parameters:
            del mod._parameters[leaf]
        elif leaf in mod._buffers:
            del mod._buffers[leaf]
    gm.recompile()
    return folded


def _place_fake_quant(gm, reduce_range: bool, runtime: str, weight_bits: int = 8) -> None:
    """In place: ActFakeQuant on every tensor onnxruntime's QDQ fusions need quantized (one per tensor,
    shared by all its users, as one QDQ pair is in ONNX), WeightFakeQuant on every Conv/Linear weight,
    bias_fake_quant on their biases. runtime "openvino": no quantizer between a convolution and the
    residual Add OpenVINO fuses into it."""
    g = gm.graph

    def is_fq(n) -> bool:
        return n.op == "call_module" and isinstance(gm.get_submodule(n.target), ActFakeQuant)

    def merged_conv(add):
        """The convolution OpenVINO's CPU plugin merges a residual Add into (a "sum" post-op): the
        first operand when it is a convolution used only there, else the second."""
        if add.op != "call_function" or add.target not in (aten.add.Tensor, aten.add_.Tensor):
            return None
        for p in add.args[:2]:
            if isinstance(p, torch.fx.Node) and p.op == "call_function" and p.target in _CONV and len(p.users) == 1:
                return p
        return None

    def reaches_output(n) -> bool:
        """n is the graph's output, or becomes it through grid-preserving ops only."""
        return any(u.op == "output" or (_grid_preserving(gm, u) and reaches_output(u)) for u in n.users)

    def quantize(n):
        if is_fq(n):
            return
        src = n
        while _grid_preserving(gm, src) and isinstance(src.args[0], torch.fx.Node):
            src = src.args[0]
        if src is not n and is_fq(src):  # same grid as its source: reuse that quantizer, without observing
            name, kwargs = src.target, {"observe": False}
        else:
            name, kwargs = f"fq_{n.name}", {}
            gm.add_submodule(name, ActFakeQuant())
        with g.inserting_after(n):
            fq = g.call_module(name, (n,), kwargs)
        fq.meta = dict(n.meta)
        n.replace_all_uses_with(fq, delete_user_cb=lambda u: u is not fq)

    for n in list(g.nodes):
        if n.op != "call_function":
            continue
        t = n.target
        if t in _WEIGHTED:
            acts = [n.args[0]]
        elif t in _BINARY:
            acts = list(n.args[:2])
            if len(n.args) > 2 or n.kwargs.get("alpha", 1) != 1:
                continue
        elif t == aten.cat.default:
            acts = list(n.args[0])
        elif t in (aten.sigmoid.default, aten.avg_pool2d.default, aten.avg_pool1d.default):
            acts = [n.args[0]]
        elif t == aten.adaptive_avg_pool2d.default and list(n.args[1]) == [1, 1]:  # GlobalAveragePool
            acts = [n.args[0]]
        else:
            continue
        if not all(_is_float_tensor(a) for a in acts):
            continue  # a constant operand (a learned scale, a bias): the op stays float
        for a in acts:
            if not (runtime == "openvino" and a is merged_conv(n)):
                quantize(a)
        if t in _WEIGHTED and n.args[1].op == "get_attr":
            name = f"wq_{n.name}"
            wfq = WeightFakeQuant(reduce_range, weight_bits)
            gm.add_submodule(name, wfq)
            w, b, x = n.args[1], n.args[2] if len(n.args) > 2 else None, n.args[0]
            with g.inserting_before(n):
                wq = g.call_module(name, (w,))
                if isinstance(b, torch.fx.Node) and b.op == "get_attr" and is_fq(x):
                    lo, hi, seen = (g.get_attr(f"{x.target}.{k}") for k in ("lo", "hi", "seen"))
                    bq = g.call_function(bias_fake_quant, (b, w, lo, hi, seen, wfq.qmax - wfq.qmin))
                    n.replace_input_with(b, bq)
            n.replace_input_with(w, wq)
        users = list(n.users)
        out = users[0] if len(users) == 1 and _is_relu_like(users[0]) else n
        if reaches_output(out):
            continue  # logits stay float (QGemm writes float output itself): no UINT8 ties between classes
        if runtime == "openvino" and t in _CONV and out is n and len(users) == 1 and merged_conv(users[0]) is n:
            continue  # OpenVINO folds this Add into the convolution and skips the convolution's own rounding
        quantize(out)
    gm.recompile()


def _global_average_pools(gm) -> int:
    """In place: an average pooling whose one window covers the whole map (no padding, kernel at least
    the map's size; transformers' EfficientNet pools with a kernel of hidden_dim and ceil_mode) becomes
    the global average pooling it computes. onnxruntime's QLinearAveragePool divides such a window by the
    whole kernel area when count_include_pad is set (float AveragePool divides by the map's area, as
    torch does), which zeroes the pooled features; QLinearGlobalAveragePool divides by the map's area.
    Returns how many were rewritten."""
    done = 0
    for n in gm.graph.nodes:
        if n.op != "call_function" or n.target != aten.avg_pool2d.default:
            continue
        # (x, kernel_size, stride=[], padding=0, ceil_mode=False, count_include_pad=True, divisor_override=None)
        args = list(n.args) + [None] * (7 - len(n.args))
        x, kernel, padding, divisor = args[0], list(args[1]), args[3] or 0, args[6]
        h, w = x.meta["val"].shape[2:]
        kh, kw = kernel if len(kernel) == 2 else kernel * 2
        pads = padding if isinstance(padding, (list, tuple)) else [padding]
        out = n.meta["val"].shape[2:]
        if tuple(out) == (1, 1) and kh >= h and kw >= w and not any(pads) and divisor is None:
            n.target, n.args = aten.adaptive_avg_pool2d.default, (x, [1, 1])
            done += 1
    gm.recompile()
    return done


class QATModel(nn.Module):
    """A captured, BN-folded student with fake-quant on exactly the tensors the INT8 graph quantizes."""

    def __init__(self, body: torch.fx.GraphModule, *, reduce_range: bool):
        super().__init__()
        self.body = body
        self.reduce_range = reduce_range

    def forward(self, x):
        return self.body(x)

    def set_observe(self, on: bool):
        set_observe(self, on)

    def float_model(self) -> torch.fx.GraphModule:
        """The BN-folded float model with the fine-tuned weights (fake-quant removed)."""
        body = copy.deepcopy(self.body)
        for n in list(body.graph.nodes):
            if _is_quantizer(body, n):
                n.replace_all_uses_with(n.args[0])
                body.graph.erase_node(n)
        _erase_unused_attrs(body)
        body.delete_all_unused_submodules()
        body.recompile()
        return body.eval()


def _is_quantizer(gm, n) -> bool:
    if n.op == "call_module":
        return isinstance(gm.get_submodule(n.target), (ActFakeQuant, WeightFakeQuant))
    return n.op == "call_function" and n.target is bias_fake_quant


def _erase_unused_attrs(gm) -> None:
    for n in list(gm.graph.nodes):
        if n.op == "get_attr" and not n.users:
            gm.graph.erase_node(n)


RUNTIMES = ("onnxruntime", "openvino")


def prepare_qat(student, *, input_shape, reduce_range: bool, runtime: str = "onnxruntime",
                weight_bits: int = 8) -> QATModel:
    """A fake-quant copy of `student` (BN folded) ready for quantization-aware distillation; the same
    student always gives the same module names, so a saved state_dict loads into a fresh one.
    runtime: whose INT8 kernels the fake-quant graph reproduces exactly (see _place_fake_quant).
    weight_bits < 8: weights on a coarser symmetric grid in the same INT8 storage (quantize.weight_bits)."""
    if runtime not in RUNTIMES:
        raise RecipeError(f"INT8 runtime must be one of {', '.join(RUNTIMES)}, got '{runtime}'")
    gm = _capture(student, tuple(input_shape))
    _fold_batchnorm_graph(gm)
    _global_average_pools(gm)
    _place_fake_quant(gm, reduce_range, runtime, weight_bits)
    return QATModel(gm, reduce_range=reduce_range).eval()


def fold_batchnorm(model, *, input_shape):
    """The captured float model with every BatchNorm after a convolution folded into it."""
    gm = _capture(model, tuple(input_shape))
    _fold_batchnorm_graph(gm)
    return gm.eval()


def calibrate(qat_model, x: np.ndarray, *, only_unseen: bool = False) -> None:
    """Initialise activation ranges from data (one pass, observers on, no gradient). only_unseen:
    observe only quantizers that never saw data (the others keep what QAT learned)."""
    fqs = [m for m in qat_model.modules() if isinstance(m, ActFakeQuant)]
    was_training = qat_model.training
    qat_model.eval()
    for m in fqs:
        m.observe = not (only_unseen and bool(m.seen))
    with torch.no_grad():
        for i in range(0, len(x), 128):
            qat_model(torch.from_numpy(np.ascontiguousarray(x[i:i + 128], dtype=np.float32)))
    set_observe(qat_model, False)
    qat_model.train(was_training)


# ---------------------------------------------------------------------------------------------------
# layers that can stay float (edgekd.budget's fallback)


def int8_layers(q: QATModel) -> dict[str, str]:
    """{layer: module type} of every convolution and linear layer with INT8 weights, in graph order,
    named by its module path in the student (what leave_float takes)."""
    return {name: kind for name, (_, kind) in _weighted_layers(q.body).items()}


def leave_float(q: QATModel, layers: Sequence[str]) -> QATModel:
    """A copy of a prepare_qat model in which `layers` (names from int8_layers) compute in float: its
    export_int8_onnx graph runs float kernels there and integer kernels everywhere else, and the copy
    itself is that graph's PyTorch reference (the parity check)."""
    out = copy.deepcopy(q)
    named = _weighted_layers(out.body)
    unknown = [name for name in layers if name not in named]
    if unknown:
        raise EdgeKDError(f"INT8: no quantized layer named {unknown[0]!r}{closest(unknown[0], list(named))}")
    _leave_float(out.body, {named[name][0] for name in layers})
    return out


def _weighted_layers(gm) -> dict[str, tuple[str, str]]:
    """{layer name: (graph node name, module type)} of the Conv/Linear nodes whose weight is fake-quantized.
    torch.export records each node's module path (nn_module_stack); a module called twice gives two
    layers, the second suffixed #2."""
    out: dict[str, tuple[str, str]] = {}
    for n in gm.graph.nodes:
        if not (n.op == "call_function" and n.target in _WEIGHTED and isinstance(n.args[1], torch.fx.Node)
                and n.args[1].op == "call_module" and isinstance(gm.get_submodule(n.args[1].target), WeightFakeQuant)):
            continue
        stack = list((n.meta.get("nn_module_stack") or {}).values())
        path, kind = stack[-1] if stack else ("", "")
        name, k = path or n.name, 2
        while name in out:
            name, k = f"{path or n.name}#{k}", k + 1
        kind = kind.rpartition(".")[2] or n.target.__name__.split(".")[0]
        groups = n.args[6] if n.target in _CONV and len(n.args) > 6 else 1
        if groups > 1:  # (C_out, C_in / groups, k...): depthwise when every group is one input channel
            kind += " depthwise" if _get_attr(gm, n.args[1].args[0].target).shape[1] == 1 else f" {groups} groups"
        out[name] = (n.name, kind)
    return out


def _leave_float(gm, nodes: set[str]) -> None:
    """In place: the named Conv/Linear nodes compute in float. Their weight and bias are not
    fake-quantized and they read their input from before its quantizer. Reading the dequantized input
    is not enough: onnxruntime's WeightBiasQuantization transformer gives a Conv/Gemm whose input comes
    from a DequantizeLinear per-tensor INT8 weights at load time, so an excluded layer would run an
    integer kernel with coarser weights than edgekd's per-channel ones. A quantizer that nothing reads
    any more is removed; the layer before it then has no output quantizer to fuse with and its kernel
    runs in float too (on INT8 weights): the export's op counts say which kernels run in float."""
    g = gm.graph
    for n in list(g.nodes):
        if n.name not in nodes:
            continue
        w, b, x = n.args[1], n.args[2] if len(n.args) > 2 else None, n.args[0]
        n.replace_input_with(w, w.args[0])
        if isinstance(b, torch.fx.Node) and b.op == "call_function" and b.target is bias_fake_quant:
            n.replace_input_with(b, b.args[0])
        if isinstance(x, torch.fx.Node) and x.op == "call_module" and isinstance(gm.get_submodule(x.target), ActFakeQuant):
            n.replace_input_with(x, x.args[0])
    removed = True
    while removed:
        removed = False
        for n in list(g.nodes):
            if not n.users and _is_quantizer(gm, n):
                g.erase_node(n)
                removed = True
    _erase_unused_attrs(gm)
    gm.recompile()


# ---------------------------------------------------------------------------------------------------
# image export: the QAT graph itself, as QDQ ONNX


def export_int8_onnx(q: QATModel, path: Path, *, input_shape, opset: int, calib_x: np.ndarray,
                     reduce_range: bool, input_name: str = "input") -> dict:
    """Writes the INT8 QDQ ONNX of a prepare_qat model with the ranges QAT learned, input `input_name`,
    batch axis dynamic. calib_x only gives a range to a quantizer that never saw data. Returns what the
    report shows."""
    from .export import export_onnx

    if q.reduce_range != reduce_range:
        raise EdgeKDError(f"INT8 export with reduce_range={reduce_range} of a student trained with "
                          f"reduce_range={q.reduce_range}; prepare and export with the same setting")
    fqs = {name: m for name, m in q.body.named_modules() if isinstance(m, ActFakeQuant)}
    unseen = sorted(name for name, m in fqs.items() if not bool(m.seen))
    if unseen:
        if calib_x is None or len(calib_x) == 0:
            raise EdgeKDError(f"INT8 export: {len(unseen)} activation quantizers never saw data and no "
                              "calibration inputs were given; run calibrate() or pass calib_x")
        calibrate(q, calib_x, only_unseen=True)
    body = copy.deepcopy(q.body).eval()
    for m in body.modules():
        if isinstance(m, ActFakeQuant):
            m.frozen = m.qparams()
    for n in list(body.graph.nodes):  # biases first: their grid is read from the weights before rounding
        if n.op == "call_function" and n.target is bias_fake_quant:
            b = _get_attr(body, n.args[0].target)
            with torch.no_grad():
                b.copy_(bias_fake_quant(b, *(_get_attr(body, a.target) for a in n.args[1:5]), n.args[5]))
            n.replace_all_uses_with(n.args[0])
            body.graph.erase_node(n)
    _erase_unused_attrs(body)
    body.recompile()
    n_weights = 0
    for n in body.graph.nodes:
        if n.op == "call_module" and isinstance(body.get_submodule(n.target), WeightFakeQuant):
            wfq = body.get_submodule(n.target)
            w = _get_attr(body, n.args[0].target)
            with torch.no_grad():
                scale = wfq.scale(w)
                w.copy_(wfq(w))  # on its INT8 grid: the exported integers are exactly what QAT ran
            wfq.frozen = scale
            n_weights += 1
    _traced_sizes(body)
    path = Path(path)
    export_onnx(body, path, tuple(input_shape), opset=opset, input_name=input_name)
    _integer_initializers(path)
    ops = optimized_op_types(path)
    return {"route": "qat-qdq", "activation_ranges_from_qat": len(fqs) - len(unseen),
            "activation_ranges_calibrated": unseen, "int8_weights": n_weights,
            "integer_ops": {k: v for k, v in ops.items() if k in INTEGER_OPS},
            "float_compute_ops": {k: v for k, v in ops.items() if k in _FLOAT_COMPUTE}}


def _traced_sizes(gm) -> None:
    """In place, before the TorchScript ONNX export: torch.export's batch-size nodes (aten.sym_size) and
    the ops that take them (a ViT's class-token expand and head reshapes, an EfficientNet's pooled
    reshape) become the Tensor methods of the same name. The tracer records a size read with x.size(d)
    and passed to a Tensor method as Shape + Gather; an aten op called directly gets a Python int, so the
    graph would run at the example's batch size only."""
    sizes = [n for n in gm.graph.nodes if n.op == "call_function" and n.target == aten.sym_size.int]
    for n in sizes:
        n.target = torch.Tensor.size
    for n in {u for s in sizes for u in s.users}:
        if isinstance(n.target, torch._ops.OpOverload):
            name = n.target.__name__.split(".")[0]
            method = getattr(torch.Tensor, {"_unsafe_view": "reshape"}.get(name, name), None)
            if method is None:
                raise EdgeKDError(f"INT8 export: the student passes its batch size to {name}, which the ONNX exporter "
                                  "would fix to one batch size; build an FP32 target for this student")
            n.target = method
    gm.recompile()


# arithmetic left in float in onnxruntime's optimized graph (MaxPool, Reshape, Slice run on UINT8 as they are)
_FLOAT_COMPUTE = ("Conv", "Gemm", "MatMul", "Add", "Mul", "Sigmoid", "GlobalAveragePool", "AveragePool",
                  "Concat", "FusedConv", "FusedGemm", "ReduceMean", "HardSigmoid", "HardSwish")


def _integer_initializers(path: Path) -> None:
    """In place, on an exported QDQ graph: QuantizeLinear of a constant weight -> an INT8 initializer
    (DequantizeLinear stays), and the float bias of a Conv/Gemm whose inputs are dequantized -> INT32
    at scale_x * scale_w, the form onnxruntime's QDQ fusions (QLinearConv, QGemm) take."""
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load(str(path))
    g = model.graph
    consts = {i.name: numpy_helper.to_array(i) for i in g.initializer}
    for n in g.node:
        if n.op_type == "Constant" and n.attribute[0].name == "value":
            consts[n.output[0]] = numpy_helper.to_array(n.attribute[0].t)
    producer = {o: n for n in g.node for o in n.output}
    new_inits = []

    def axis_of(n) -> int:
        return next((a.i for a in n.attribute if a.name == "axis"), 1)

    def per_axis(v, x, axis):  # broadcast a per-channel vector along `axis` of x
        return v.reshape([-1 if d == axis % x.ndim else 1 for d in range(x.ndim)]) if v.ndim else v

    for k, n in enumerate(list(g.node)):
        if n.op_type != "QuantizeLinear" or n.input[0] not in consts:
            continue
        w, scale, zero = consts[n.input[0]], consts[n.input[1]], consts[n.input[2]]
        axis = axis_of(n)
        ints = np.round(w / per_axis(scale, w, axis)) + per_axis(zero.astype(np.int64), w, axis)
        info = np.iinfo(zero.dtype)
        qname = f"{n.input[0]}_int8_{k}"
        new_inits.append(numpy_helper.from_array(np.clip(ints, info.min, info.max).astype(zero.dtype), qname))
        for m in g.node:  # the DequantizeLinear(s) reading this Q's output read the integers directly
            m.input[:] = [qname if i == n.output[0] else i for i in m.input]
        g.node.remove(n)

    def dq_scale(name):
        p = producer.get(name)
        return consts.get(p.input[1]) if p is not None and p.op_type == "DequantizeLinear" else None

    for n in list(g.node):
        if n.op_type not in ("Conv", "Gemm") or len(n.input) < 3 or n.input[2] not in consts:
            continue
        sx, sw = dq_scale(n.input[0]), dq_scale(n.input[1])
        if sx is None or sw is None or (n.op_type == "Gemm" and _attr_i(n, "transB", 0) != 1):
            continue
        bias = consts[n.input[2]].astype(np.float32)  # (C_out,)
        bscale = (sx.astype(np.float32) * sw.astype(np.float32)) * np.ones_like(bias)  # (C_out,)
        bname = f"{n.input[2]}_int32"
        new_inits += [numpy_helper.from_array(np.round(bias / bscale).astype(np.int32), bname),
                      numpy_helper.from_array(bscale.astype(np.float32), f"{bname}_scale"),
                      numpy_helper.from_array(np.zeros_like(bias, dtype=np.int32), f"{bname}_zero")]
        dq = helper.make_node("DequantizeLinear", [bname, f"{bname}_scale", f"{bname}_zero"], [f"{bname}_dq"],
                              name=f"{n.name}_bias_dq", axis=0)
        g.node.insert(list(g.node).index(n), dq)
        n.input[2] = f"{bname}_dq"
    g.initializer.extend(new_inits)
    used = {i for n in g.node for i in n.input}
    for init in list(g.initializer):
        if init.name not in used:
            g.initializer.remove(init)
    for n in list(g.node):
        if n.op_type == "Constant" and n.output[0] not in used:
            g.node.remove(n)
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def _attr_i(node, name: str, default: int) -> int:
    return next((a.i for a in node.attribute if a.name == name), default)


# ---------------------------------------------------------------------------------------------------
# transformer students: fake-quant nn.Linear only, onnxruntime's MatMulIntegerToFloat route


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
                  qat_model=None, float_layers: Sequence[str] = ()) -> dict:
    """Static INT8 QDQ: per-channel symmetric INT8 weights, per-tensor UINT8 activations.

    calib_x: an array (single-input models) or a list of feeds {input name: array}; MinMax ranges from
    it for every activation that qat_model does not give one.
    linear_only: quantize only MatMul/Gemm nodes with a constant weight (the nn.Linear layers of a
    transformer), inputs only, as fake_quant_linears trains them; everything else stays float.
    qat_model: a fake_quant_linears model: each quantized MatMul/Gemm input gets the range its
    QuantLinear learned (matched by weight values) instead of a calibrated one.
    float_layers: module paths of qat_model's Linears (linear_layers) whose MatMul stays float
    (onnxruntime's nodes_to_exclude; edgekd.budget's fallback). Returns what was done."""
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    input_name = onnx.load(str(fp32_path), load_external_data=False).graph.input[0].name
    calib = calib_x if isinstance(calib_x, list) else calib_x.astype(np.float32)
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
    return info


# ---------------------------------------------------------------------------------------------------
# ONNX helpers


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
