"""The graph route (image students): fake-quant placed on exactly the tensors onnxruntime's QDQ fusions
quantize, the QATModel that trains with it, calibration, and the layers edgekd.budget leaves in float."""

from __future__ import annotations

import copy
from typing import Sequence

import numpy as np
import torch
import torch.nn as nn

from ..errors import EdgeKDError
from ..registry import closest
from ._graph import (_BINARY, _CONV, _WEIGHTED, _capture, _erase_unused_attrs, _fold_batchnorm_graph, _fold_pads_graph, _get_attr,
                     _global_average_pools, _grid_preserving, _is_float_tensor, _is_relu_like, aten)
from ._spec import check_runtime
from .fake_quant import ActFakeQuant, WeightFakeQuant, bias_fake_quant, set_observe


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
        _fold_pads_graph(body)  # for the runtimes that quantize it with their own quantizer (ExecuTorch, LiteRT)
        return body.eval()


def _is_quantizer(gm, n) -> bool:
    if n.op == "call_module":
        return isinstance(gm.get_submodule(n.target), (ActFakeQuant, WeightFakeQuant))
    return n.op == "call_function" and n.target is bias_fake_quant


def prepare_qat(student, *, input_shape, reduce_range: bool, runtime: str = "onnxruntime",
                weight_bits: int = 8) -> QATModel:
    """A fake-quant copy of `student` (BN folded) ready for quantization-aware distillation; the same
    student always gives the same module names, so a saved state_dict loads into a fresh one.
    runtime: whose INT8 kernels the fake-quant graph reproduces exactly (see _place_fake_quant).
    weight_bits < 8: weights on a coarser symmetric grid in the same INT8 storage (quantize.weight_bits)."""
    check_runtime(runtime)
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
