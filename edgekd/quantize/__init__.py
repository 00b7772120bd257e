"""INT8: quantization-aware distillation whose fake-quant graph IS the exported QDQ graph.

One verb and one config: `prepare(model, QuantizeSpec(reduce_range=...), input_shape=...)` returns the
fake-quant copy that quantization-aware distillation trains, the route chosen by the model (below);
the route's export writes the INT8 model. Modules: graph_qat (+ _graph: capture, BatchNorm folding) and
graph_onnx for image students, linear_qat for transformer students, fake_quant for the modules both use,
_spec for QuantizeSpec and the hardware probe; edgekd.onnx_ops inspects the ops onnxruntime runs.

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
import importlib

from ..errors import EdgeKDError, RecipeError
from ..onnx_ops import INTEGER_OPS, optimized_op_types
from ._spec import ACTIVATIONS, RUNTIMES, QuantizeSpec, has_vnni, resolve_reduce_range

# The route modules import torch: they load on first use of one of their names, so that
# `import edgekd.quantize` (the pipeline resolving reduce_range, a runtime-only install) stays cheap.
_WHERE = {name: module for module, names in {
    "fake_quant": ("ActFakeQuant", "WeightFakeQuant", "QuantLinear", "bias_fake_quant", "set_observe",
                   "qat_train_mode", "qat_eval_mode"),
    "graph_qat": ("QATModel", "prepare_qat", "fold_batchnorm", "calibrate", "int8_layers", "leave_float"),
    "graph_onnx": ("export_int8_onnx",),
    "linear_qat": ("fake_quant_linears", "leave_linears_float", "strip_fake_quant", "linear_layers",
                   "quantize_onnx", "quantize_gather_tables", "_Reader"),
}.items() for name in names}

__all__ = ["ACTIVATIONS", "INTEGER_OPS", "RUNTIMES", "QuantizeSpec", "has_vnni", "optimized_op_types", "prepare",
           "resolve_reduce_range", *(name for name in _WHERE if not name.startswith("_"))]


def __getattr__(name: str):
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value  # later look-ups find it without coming here
    return value


def __dir__():
    return sorted(set(globals()) | set(_WHERE))


def prepare(model, spec: QuantizeSpec, *, input_shape=None):
    """A fake-quant copy of `model` (eval mode, ranges not yet observed) for quantization-aware
    distillation. The route is the model's: a transformers-style encoder (token ids in through an
    nn.Embedding, its compute the nn.Linear layers of a module list of blocks) takes the Linear route
    (fake_quant_linears), any other module the graph route (prepare_qat), which captures the model with
    one input of `input_shape` (one example, without the batch axis)."""
    if _takes_linear_route(model):
        if spec.weight_bits != 8:
            raise RecipeError(f"quantize.weight_bits must be 8 for {type(model).__name__} (its Linear layers are "
                              f"quantized by onnxruntime's INT8 quantizer), got {spec.weight_bits}")
        from .linear_qat import fake_quant_linears

        return fake_quant_linears(copy.deepcopy(model), reduce_range=spec.reduce_range).eval()
    if input_shape is None:
        raise EdgeKDError(f"INT8: {type(model).__name__} is quantized as a graph (torch.export), which needs "
                          "its input_shape (one example, without the batch axis)")
    from .graph_qat import prepare_qat

    return prepare_qat(model, input_shape=input_shape, reduce_range=spec.reduce_range, runtime=spec.runtime,
                       weight_bits=spec.weight_bits)


def _takes_linear_route(model) -> bool:
    """Token ids in (an nn.Embedding) and a module list of blocks holding nn.Linear layers: a transformer
    encoder, whose INT8 kernels are onnxruntime's MatMulIntegerToFloat. An image student, transformer or
    not, reads pixels and has no embedding table."""
    import torch.nn as nn

    mods = list(model.modules())
    return (any(isinstance(m, nn.Embedding) for m in mods)
            and any(isinstance(m, nn.ModuleList) and any(isinstance(s, nn.Linear) for s in m.modules())
                    for m in mods))
