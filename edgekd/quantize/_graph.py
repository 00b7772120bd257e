"""Image students, before fake-quant: the `torch.export` capture (batch axis dynamic, a plain trainable
GraphModule), BatchNorm folded into the convolutions, whole-map average pooling made global, and the ATen
op tables the placement in graph_qat reads."""

from __future__ import annotations

import copy

import torch
import torch.nn as nn

from ..errors import EdgeKDError

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


def _erase_unused_attrs(gm) -> None:
    for n in list(gm.graph.nodes):
        if n.op == "get_attr" and not n.users:
            gm.graph.erase_node(n)


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


def _fold_pads_graph(gm) -> int:
    """In place: a zero constant Pad of the spatial axes in front of convolutions (transformers' TF-style
    "SAME" padding puts one before every convolution, most of them empty) removed when it pads nothing,
    and folded into each convolution's own padding when it is symmetric. A runtime's quantizer then sees
    convolution after convolution: a Pad between a dequantize and a quantize kept PT2E's integer chain
    apart, and litert-torch's layout pass stopped on it. Asymmetric pads (stride 2 on an even map) stay.
    The torch-graph twin of graph_onnx._fold_pads. Returns how many Pads were removed."""
    g, removed = gm.graph, 0
    for pad in list(g.nodes):
        if pad.op != "call_function" or pad.target not in (aten.pad.default, aten.constant_pad_nd.default) \
                or not _grid_preserving(gm, pad):  # constant zero padding only
            continue
        x, amounts = pad.args[0], [int(a) for a in pad.args[1]]
        if not any(amounts):
            pad.replace_all_uses_with(x)
            g.erase_node(pad)
            removed += 1
            continue
        # (left, right, top, bottom) of an NCHW map -> conv2d's (height, width) padding
        if len(amounts) != 4 or amounts[0] != amounts[1] or amounts[2] != amounts[3]:
            continue
        for conv in list(pad.users):
            args = list(conv.args) + [None] * (7 - len(conv.args))  # (x, w, b, stride, padding, dilation, groups)
            own = args[4] if args[4] is not None else 0
            if conv.target != aten.conv2d.default or conv.args[0] is not pad or any(
                    own if isinstance(own, (list, tuple)) else [own]) or conv.kwargs:
                continue
            args[3] = args[3] if args[3] is not None else [1, 1]
            args[4], args[5], args[6] = [amounts[2], amounts[0]], args[5] or [1, 1], args[6] or 1
            conv.args = (x, *args[1:])
        if not pad.users:
            g.erase_node(pad)
            removed += 1
    g.lint()
    gm.recompile()
    return removed


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
