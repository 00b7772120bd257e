"""The graph route's export: the QAT graph itself as QDQ ONNX, each fake-quant a QuantizeLinear/
DequantizeLinear pair with the scale and zero point QAT used, weights INT8 initializers (exactly the
fake-quantized integers), biases INT32. Nothing is re-calibrated."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import torch

from ..errors import EdgeKDError
from ..onnx_ops import INTEGER_OPS, optimized_op_types
from ._graph import _erase_unused_attrs, _get_attr, aten
from .fake_quant import ActFakeQuant, WeightFakeQuant, bias_fake_quant
from .graph_qat import QATModel, calibrate


def export_int8_onnx(q: QATModel, path: Path, *, input_shape, opset: int, calib_x: np.ndarray,
                     reduce_range: bool, input_name: str = "input") -> dict:
    """Writes the INT8 QDQ ONNX of a prepare_qat model with the ranges QAT learned, input `input_name`,
    batch axis dynamic. calib_x only gives a range to a quantizer that never saw data. Returns what the
    report shows."""
    from ..export import export_onnx  # the FP32 image models' writer (TorchScript exporter, weights inline)

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
    folded = _fold_pads(path)
    ops = optimized_op_types(path)
    return {"route": "qat-qdq", "activation_ranges_from_qat": len(fqs) - len(unseen), "pads_folded_into_convs": folded,
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

    model, g, consts, producer = _load_graph(path)
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


def _load_graph(path: Path):
    """(model, graph, {constant name: array} of initializers and Constant nodes, {output: producing node})."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path))
    g = model.graph
    consts = {i.name: numpy_helper.to_array(i) for i in g.initializer}
    for n in g.node:
        if n.op_type == "Constant" and n.attribute[0].name == "value":
            consts[n.output[0]] = numpy_helper.to_array(n.attribute[0].t)
    return model, g, consts, {o: n for n in g.node for o in n.output}


def _fold_pads(path: Path) -> int:
    """In place: a zero Pad of the spatial axes in front of a convolution (transformers' TF-style "SAME"
    padding writes one before each) becomes the convolution's own `pads`, which ONNX allows to be
    asymmetric. Left as a node, the Pad sits between a DequantizeLinear and a QuantizeLinear, so every
    such convolution dequantizes, pads in float and quantizes again; folded, the QDQ chain is unbroken
    and onnxruntime runs QLinearConv straight from the previous integer op. Exact: zero padding is the
    zero point, which every activation range here contains. Returns how many Pads were folded."""
    import onnx

    model, g, consts, producer = _load_graph(path)
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 17)
    users: dict[str, list] = {}
    for n in g.node:
        for i in n.input:
            users.setdefault(i, []).append(n)
    outputs = {o.name for o in g.output}

    def same_grid(a, b) -> bool:  # two Q/DQ nodes with equal scale and zero point
        return all(np.array_equal(consts.get(x), consts.get(y)) and x in consts for x, y in zip(a.input[1:3], b.input[1:3]))

    folded = 0
    for pad in [n for n in g.node if n.op_type == "Pad"]:
        mode = next((a.s for a in pad.attribute if a.name == "mode"), b"constant")
        pads = _constant(g, producer, consts, pad.input[1], opset) if len(pad.input) > 1 else None
        value = _constant(g, producer, consts, pad.input[2], opset) if len(pad.input) > 2 and pad.input[2] else np.zeros(())
        if mode != b"constant" or pads is None or value is None or np.any(value != 0) or len(pad.input) > 3 \
                or len(pads) != 8 or np.any(pads[[0, 1, 4, 5]] != 0) or pad.output[0] in outputs:
            continue
        chain, out = [], pad.output[0]  # an optional Q -> DQ pair between the Pad and the convolutions
        if len(users.get(out, [])) == 1 and users[out][0].op_type == "QuantizeLinear":
            q = users[out][0]
            dq = users.get(q.output[0], [])
            if len(dq) != 1 or dq[0].op_type != "DequantizeLinear":
                continue
            chain, out = [q, dq[0]], dq[0].output[0]
        convs = users.get(out, [])
        if not convs or any(c.op_type != "Conv" or c.input[0] != out or out in outputs
                            or next((a.s for a in c.attribute if a.name == "auto_pad"), b"NOTSET") != b"NOTSET"
                            for c in convs):
            continue
        t, left, b, r = (int(v) for v in pads[[2, 3, 6, 7]])
        for c in convs:
            attr = next((a for a in c.attribute if a.name == "pads"), None)
            old = list(attr.ints) if attr is not None else [0, 0, 0, 0]
            new = [old[0] + t, old[1] + left, old[2] + b, old[3] + r]
            if attr is None:
                c.attribute.append(onnx.helper.make_attribute("pads", new))
            else:
                attr.ints[:] = new
        src = pad.input[0]
        before = producer.get(src)
        if chain and before is not None and before.op_type == "DequantizeLinear" and same_grid(before, chain[0]):
            new_in, drop = src, [pad, *chain]  # DQ -> [Pad, Q, DQ] -> Conv: the grid is the same, keep one DQ
        elif chain:
            new_in, drop = chain[1].output[0], [pad]
            chain[0].input[0] = src
        else:
            new_in, drop = src, [pad]
        for c in convs:
            c.input[0] = new_in
        for n in drop:
            g.node.remove(n)
        folded += 1
    if folded:
        used = {i for n in g.node for i in n.input}
        changed = True
        while changed:  # the Pads' shape arithmetic, left without a reader
            changed = False
            for n in list(g.node):
                if n.op_type != "Constant" and not any(o in used or o in outputs for o in n.output) \
                        and n.op_type in ("Cast", "Reshape", "Transpose", "Slice", "Concat", "ConstantOfShape"):
                    g.node.remove(n)
                    changed = True
            used = {i for n in g.node for i in n.input}
        for n in list(g.node):
            if n.op_type == "Constant" and n.output[0] not in used:
                g.node.remove(n)
        for init in list(g.initializer):
            if init.name not in used:
                g.initializer.remove(init)
        onnx.checker.check_model(model)
        onnx.save(model, str(path))
    return folded


def _constant(g, producer: dict, consts: dict, name: str, opset: int = 17):
    """The value of tensor `name` when it depends on constants alone (the exporter writes a Pad's
    amounts as Constant -> Concat -> Reshape -> Slice -> Transpose -> Cast), else None."""
    if name in consts:
        return consts[name]
    initializers = {i.name for i in g.initializer}
    nodes, todo, seen = [], [name], set()
    while todo:
        t = todo.pop()
        if t in seen or t in initializers or not t:
            continue
        seen.add(t)
        n = producer.get(t)
        if n is None:  # a graph input: not a constant
            return None
        nodes.append(n)
        todo += list(n.input)
    from onnx import helper
    from onnx.reference import ReferenceEvaluator

    order = [n for n in g.node if n in nodes]  # the graph's own (topological) order
    inits = [i for i in g.initializer if any(i.name in n.input for n in order)]
    sub = helper.make_graph(order, "constant", [], [helper.make_tensor_value_info(name, 0, None)], inits)
    try:
        model = helper.make_model(sub, opset_imports=[helper.make_opsetid("", opset)])
        return np.asarray(ReferenceEvaluator(model).run(None, {})[0])
    except Exception:  # noqa: BLE001 - an op the reference evaluator lacks: leave the Pad as it is
        return None
