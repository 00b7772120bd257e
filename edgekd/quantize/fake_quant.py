"""Fake-quant modules: activations UINT8 per-tensor (EMA of batch min/max), weights INT8 per-channel
symmetric, biases on the INT32 grid of the integer kernels; the modes that turn range tracking on and off."""

from __future__ import annotations

import torch
import torch.nn as nn


def _weight_range(reduce_range: bool, bits: int = 8) -> tuple[int, int]:
    # onnxruntime.quantization symmetric INT8: [-127, 127], or [-64, 64] with reduce_range; fewer bits
    # (quantize.weight_bits) use +-(2^(bits-1) - 1) of the same INT8 storage and kernels.
    if bits >= 8 or (reduce_range and bits == 7):
        return (-64, 64) if reduce_range else (-127, 127)
    top = 2 ** (bits - 1) - 1
    return (-top, top)


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
