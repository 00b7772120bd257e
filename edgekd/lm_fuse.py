"""One GroupQueryAttention node per layer in place of the exported attention subgraph of a causal LM.

optimum's export of a Llama-family decoder writes each layer's attention as ~100 small nodes: reshapes
and transposes of q, k and v, rotary embedding as slices, negations and concats, the KV-cache concat,
repeat_kv's expand of keys and values to every query head, the mask's where, two matmuls and a softmax.
At one token per step, the arithmetic is small and onnxruntime spends much of each step dispatching
those nodes. onnxruntime's `com.microsoft.GroupQueryAttention` does the rotary embedding, cache append,
grouped attention and softmax in one kernel (the node onnxruntime-genai's model builder writes), so a
layer becomes its projections, one attention node and its MLP.

The rewrite keeps the folder's contract: the same inputs (input_ids, attention_mask, position_ids,
past_key_values.{i}.key/value) and outputs (logits, present.{i}.key/value, (batch, kv_heads, total,
head_dim)), so `ORTModelForCausalLM` and edgekd's runtime load it as before. It keeps the semantics
for every input, padded batches included:
  - rotary: cos/sin tables (total, head_dim/2) computed in the graph once per call from the model's own
    inverse frequencies and attention scaling, cos(p * inv_freq) * scaling for the call's places p (a
    constant table for the whole context would add megabytes to a small file), non-interleaved (rotate_half),
    at each row's place in its cache (past + t). The kernel reads position_ids only as a prompt's first
    position, which would rotate a left-padded row's cached keys unlike its later tokens; cache places
    are shifted from optimum's position_ids by the row's padding alone, and attention with rotary
    embeddings sees only differences of positions, so the logits are the same (position_ids stays an
    input, unread);
  - padding: attention_bias (batch, 1, T, total) = (1 - attention_mask) * float32 min, what the
    exported mask adds, beside the op's causal mask;
  - seqlens_k = total - 1 for every row, so each row appends its T new keys after its whole past, as the
    exported concat does (padding is a masked position, not a shorter row).
A graph whose layers do not all match (another attention layout, a model without rotary) is left as it
was; the caller reports why. Parity against PyTorch is checked after, as for every export."""

from __future__ import annotations

import numpy as np

__all__ = ["fuse_attention", "rotary_frequencies", "unfuse_attention"]

MS = "com.microsoft"


def rotary_frequencies(model):
    """(inv_freq (head_dim/2,) float32, attention_scaling) of the model's own rotary embedding module
    (`model.model.rotary_emb`, transformers' Llama family), checked against what the module returns:
    cos = cat(f, f).cos() * scaling with f = position * inv_freq, the rotate_half layout that
    GroupQueryAttention's non-interleaved rotary reads. None where the model has no such module or
    its tables are not that (frequencies that change with the sequence's length: dynamic, longrope)."""
    import torch

    rope = getattr(getattr(model, "model", None), "rotary_emb", None)
    inv = getattr(rope, "inv_freq", None)
    if rope is None or inv is None or any(k in str(getattr(rope, "rope_type", "default")) for k in ("dynamic", "longrope")):
        return None
    inv = inv.detach().float().cpu().numpy()  # (head_dim/2,)
    scaling = float(getattr(rope, "attention_scaling", 1.0))
    pos = torch.tensor([[0, 1, 2, 7, 100, 1000]])
    with torch.no_grad():
        cos, sin = (t[0].float().numpy() for t in rope(torch.zeros(1, dtype=torch.float32), pos))  # (6, head_dim)
    f = pos[0].numpy().astype(np.float32)[:, None] * inv[None]  # (6, head_dim/2)
    ours = [np.concatenate([g(f), g(f)], -1) * scaling for g in (np.cos, np.sin)]
    if cos.shape != ours[0].shape or not all(np.allclose(a, b, atol=1e-5) for a, b in zip((cos, sin), ours)):
        return None
    return inv, scaling


def fuse_attention(proto, *, num_heads: int, kv_heads: int, scale: float, inv_freq: np.ndarray,
                   rope_scaling: float = 1.0) -> dict:
    """Rewrite `proto` (an optimum text-generation-with-past export, float32, before or after weight-only
    quantization) in place: each layer's attention becomes one GroupQueryAttention node. Returns
    {"fused": layers} or, leaving the graph untouched, {"fused": 0, "why": reason}."""
    from onnx import TensorProto, helper, numpy_helper

    g = proto.graph
    head_dim = 2 * len(inv_freq)
    if head_dim % 16:  # onnxruntime's CPU kernel refuses other sizes at run time
        return {"fused": 0, "why": f"head_dim {head_dim} is not a multiple of 16, which GroupQueryAttention needs"}
    inputs = {i.name: i for i in g.input}
    if "input_ids" not in inputs or "attention_mask" not in inputs:
        return {"fused": 0, "why": "the graph has no input_ids or attention_mask input"}
    if inputs.get("past_key_values.0.key") is None or \
            inputs["past_key_values.0.key"].type.tensor_type.elem_type != TensorProto.FLOAT:
        return {"fused": 0, "why": "the graph's cache is not float32"}
    layers = sum(n.startswith("past_key_values.") and n.endswith(".key") for n in inputs)
    producer = {o: n for n in g.node for o in n.output}
    plans = []
    for i in range(layers):
        pre = f"/model/layers.{i}/self_attn/"
        proj = {}
        for p in ("q", "k", "v"):  # the projection's last node (MatMul, or the Add of its bias)
            group = [n for n in g.node if n.name.startswith(f"{pre}{p}_proj/")]
            if not group:
                return {"fused": 0, "why": f"layer {i} has no {p}_proj node under {pre}"}
            proj[p] = group[-1].output[0]
        o = [n for n in g.node if n.name.startswith(f"{pre}o_proj/MatMul")]
        cat = {kv: producer.get(f"present.{i}.{kv}") for kv in ("key", "value")}
        if len(o) != 1 or any(c is None or c.op_type != "Concat" or c.input[0] != f"past_key_values.{i}.{kv}"
                              for kv, c in cat.items()):
            return {"fused": 0, "why": f"layer {i}'s output projection or cache concat is not where optimum writes it"}
        plans.append((i, proj, o[0]))

    f = "/edgekd/gqa/"
    ids, mask = "input_ids", "attention_mask"
    const = [numpy_helper.from_array(np.asarray(v, dt), f + k) for k, v, dt in (
        ("one_i32", 1, np.int32), ("idx1", 1, np.int64), ("s0", [0], np.int64), ("s1", [1], np.int64),
        ("s2", [2], np.int64), ("ax12", [1, 2], np.int64), ("one_f", 1.0, np.float32),
        ("min_f", np.finfo(np.float32).min, np.float32), ("ones2", [1, 1], np.int64), ("one1", [1], np.int64))]
    const += [numpy_helper.from_array(np.asarray(inv_freq, np.float32)[None], f + "inv_freq"),  # (1, head_dim/2)
              numpy_helper.from_array(np.asarray(rope_scaling, np.float32), f + "rope_scaling"),
              numpy_helper.from_array(np.asarray([0, 0, 0], np.int64), f + "zeros3"),
              numpy_helper.from_array(np.asarray(1, np.int64), f + "one64")]
    N = helper.make_node
    shared = [
        N("Shape", [mask], [f + "mshape"]), N("Gather", [f + "mshape", f + "idx1"], [f + "total64"], axis=0),
        N("Cast", [f + "total64"], [f + "total"], to=TensorProto.INT32),  # () int32: past + T
        N("Sub", [f + "total", f + "one_i32"], [f + "last"]),
        N("Shape", [ids], [f + "ishape"]), N("Slice", [f + "ishape", f + "s0", f + "s1"], [f + "batch"]),
        N("Expand", [f + "last", f + "batch"], [f + "seqlens_k"]),  # (B,) int32: every row full length
        N("Cast", [mask], [f + "maskf"], to=TensorProto.FLOAT),
        N("Sub", [f + "one_f", f + "maskf"], [f + "pad"]), N("Mul", [f + "pad", f + "min_f"], [f + "bias2"]),
        N("Unsqueeze", [f + "bias2", f + "ax12"], [f + "bias4"]),  # (B, 1, 1, total)
        N("Slice", [f + "ishape", f + "s1", f + "s2"], [f + "t"]),
        N("Concat", [f + "ones2", f + "t", f + "one1"], [f + "bshape"], axis=0),
        N("Expand", [f + "bias4", f + "bshape"], [f + "bias"]),  # (B, 1, T, total)
        # the kernel indexes the tables by cache place; this call reads places past .. total-1 only, so only
        # those rows are computed and the rows before are zeros (a decoded token: one row of cos and sin)
        N("Gather", [f + "ishape", f + "idx1"], [f + "t64"], axis=0),
        N("Sub", [f + "total64", f + "t64"], [f + "past64"]),
        N("Range", [f + "past64", f + "total64", f + "one64"], [f + "places"]),  # (T,) past .. total-1
        N("Cast", [f + "places"], [f + "placesf"], to=TensorProto.FLOAT),
        N("Unsqueeze", [f + "placesf", f + "one1"], [f + "col"]),  # (T, 1)
        N("Mul", [f + "col", f + "inv_freq"], [f + "freqs"]),  # (T, head_dim/2)
        N("Unsqueeze", [f + "past64", f + "s0"], [f + "past1"]),
        N("Concat", [f + "past1", f + "zeros3"], [f + "pads"], axis=0),  # [past, 0, 0, 0]: rows before
        N("Cos", [f + "freqs"], [f + "cos1"]), N("Mul", [f + "cos1", f + "rope_scaling"], [f + "cos2"]),
        N("Pad", [f + "cos2", f + "pads"], [f + "cos"]),  # (total, head_dim/2)
        N("Sin", [f + "freqs"], [f + "sin1"]), N("Mul", [f + "sin1", f + "rope_scaling"], [f + "sin2"]),
        N("Pad", [f + "sin2", f + "pads"], [f + "sin"]),
    ]
    nodes = [n for n in g.node if not (n.op_type == "Concat" and n.output[0].startswith("present."))]
    for i, proj, o_node in plans:
        out = f"{f}{i}/attn"
        node = N("GroupQueryAttention",
                 [proj["q"], proj["k"], proj["v"], f"past_key_values.{i}.key", f"past_key_values.{i}.value",
                  f + "seqlens_k", f + "total", f + "cos", f + "sin", "", f + "bias"],
                 [out, f"present.{i}.key", f"present.{i}.value"], name=f"{f}{i}", domain=MS,
                 num_heads=num_heads, kv_num_heads=kv_heads, scale=float(scale), do_rotary=1, rotary_interleaved=0)
        o_node.input[0] = out
        at = next(k for k, n in enumerate(nodes) if n.name == o_node.name)
        nodes.insert(at, node)
    nodes = shared + nodes
    g.ClearField("node")
    g.node.extend(_live(nodes, {o.name for o in g.output}))
    g.initializer.extend(const)
    used = {x for n in g.node for x in n.input}
    keep = [t for t in g.initializer if t.name in used]
    g.ClearField("initializer")
    g.initializer.extend(keep)
    if not any(o.domain == MS for o in proto.opset_import):
        proto.opset_import.append(helper.make_opsetid(MS, 1))
    return {"fused": layers, "op": f"{MS}.GroupQueryAttention"}


def _live(nodes: list, outputs: set) -> list:
    """The nodes some graph output depends on, in their order (one backward pass: `nodes` is sorted)."""
    need, keep = set(outputs), []
    for n in reversed(nodes):
        if any(o in need for o in n.output):
            keep.append(n)
            need.update(x for x in n.input if x)
    return keep[::-1]



def unfuse_attention(proto) -> int:
    """The inverse rewrite, in standard ONNX operators, for a runtime without GroupQueryAttention
    (OpenVINO reads the node but cannot save it in an IR): each node written by fuse_attention becomes
    rotary embedding, cache concat, repeated keys and values, and softmax(q·kᵀ·scale + mask)·v, the
    layout optimum exports, so that runtime's own attention fusion finds it again. Returns how many."""
    from onnx import helper, numpy_helper

    g = proto.graph
    def fused(n) -> bool:
        return n.op_type == "GroupQueryAttention" and n.domain == MS

    count = sum(map(fused, g.node))
    if not count:
        return 0
    f = "/edgekd/sdpa/"
    N = helper.make_node
    half = next((t.dims[1] for t in g.initializer if t.name == "/edgekd/gqa/inv_freq"), None)  # head_dim / 2
    if half is None:
        raise ValueError("these GroupQueryAttention nodes were not written by edgekd.lm_fuse (no /edgekd/gqa/inv_freq); "
                         "export the model again")
    d = 2 * half
    const = {"zero": 0, "one": 1, "ax0": [0], "ax1": [1], "ax2": [2], "s_idx": 2, "t_idx": 1}
    inits = [numpy_helper.from_array(np.asarray(v, np.int64), f + k) for k, v in const.items()]
    inits += [numpy_helper.from_array(np.asarray(np.finfo(np.float32).min, np.float32), f + "min"),
              numpy_helper.from_array(np.asarray(0.0, np.float32), f + "zero_f")]
    out = []
    for n in g.node:
        if not fused(n):
            out.append(n)
            continue
        a = {x.name: helper.get_attribute_value(x) for x in n.attribute}
        q, k, v, pk, pv, _, _, cos, sin = n.input[:9]
        bias = n.input[10] if len(n.input) > 10 and n.input[10] else None
        h, kvh = a["num_heads"], a["kv_num_heads"]
        p = f"{n.name}/"
        inits += [numpy_helper.from_array(np.array(s, np.int64), p + nm) for nm, s in (
            ("qshape", [0, 0, h, d]), ("kvshape", [0, 0, kvh, d]), ("rep", [1, 1, h // kvh, 1, 1]),
            ("hshape", [0, h, -1, d]), ("oshape", [0, 0, h * d]), ("half", [half]), ("d", [d]), ("last", [-1]))]
        inits.append(numpy_helper.from_array(np.asarray(a.get("scale", d ** -0.5), np.float32), p + "scale"))
        out += [  # positions P .. P+T-1 of this call's tokens, P = the past's length
            N("Shape", [pk], [p + "pks"]), N("Gather", [p + "pks", f + "s_idx"], [p + "P"], axis=0),
            N("Shape", [q], [p + "qs"]), N("Gather", [p + "qs", f + "t_idx"], [p + "T"], axis=0),
            N("Add", [p + "P", p + "T"], [p + "S"]),
            N("Range", [p + "P", p + "S", f + "one"], [p + "pos"]),  # (T,)
            N("Range", [f + "zero", p + "S", f + "one"], [p + "keys"]),  # (S,)
            N("Gather", [cos, p + "pos"], [p + "c"], axis=0), N("Concat", [p + "c", p + "c"], [p + "cos"], axis=-1),
            N("Gather", [sin, p + "pos"], [p + "s"], axis=0), N("Concat", [p + "s", p + "s"], [p + "sin"], axis=-1),
        ]
        for x, shape, heads in ((q, "qshape", "q"), (k, "kvshape", "k"), (v, "kvshape", "v")):
            out += [N("Reshape", [x, p + shape], [p + heads + "3"]),
                    N("Transpose", [p + heads + "3"], [p + heads + "4"], perm=[0, 2, 1, 3])]  # (B, heads, T, D)
        for x in ("q", "k"):  # x·cos + rotate_half(x)·sin, rotate_half(x) = cat(-x2, x1)
            out += [N("Slice", [p + x + "4", f + "ax0", p + "half", p + "last"], [p + x + "1"]),
                    N("Slice", [p + x + "4", p + "half", p + "d", p + "last"], [p + x + "2"]),
                    N("Neg", [p + x + "2"], [p + x + "n"]),
                    N("Concat", [p + x + "n", p + x + "1"], [p + x + "h"], axis=-1),
                    N("Mul", [p + x + "4", p + "cos"], [p + x + "a"]), N("Mul", [p + x + "h", p + "sin"], [p + x + "b"]),
                    N("Add", [p + x + "a", p + x + "b"], [p + x + "r"])]
        pres_k, pres_v = n.output[1], n.output[2]
        out += [N("Concat", [pk, p + "kr"], [pres_k], axis=2), N("Concat", [pv, p + "v4"], [pres_v], axis=2)]
        for x, src in (("K", pres_k), ("V", pres_v)):  # repeat_kv: (B, kv, S, D) -> (B, h, S, D)
            out += [N("Unsqueeze", [src, f + "ax2"], [p + x + "u"]), N("Expand", [p + x + "u", p + "rep"], [p + x + "t"]),
                    N("Reshape", [p + x + "t", p + "hshape"], [p + x + "h"])]
        out += [  # causal mask (T, S): key j is seen by the token at position i when j <= i
            N("Unsqueeze", [p + "pos", f + "ax1"], [p + "rows"]),
            N("LessOrEqual", [p + "keys", p + "rows"], [p + "seen"]),
            N("Where", [p + "seen", f + "zero_f", f + "min"], [p + "mask"]),
            *([N("Add", [p + "mask", bias], [p + "maskb"])] if bias else []),
            N("Transpose", [p + "Kh"], [p + "kt"], perm=[0, 1, 3, 2]),
            N("MatMul", [p + "qr", p + "kt"], [p + "qk"]),
            N("Mul", [p + "qk", p + "scale"], [p + "qks"]),
            N("Add", [p + "qks", p + ("maskb" if bias else "mask")], [p + "logits"]),
            N("Softmax", [p + "logits"], [p + "probs"], axis=-1),
            N("MatMul", [p + "probs", p + "Vh"], [p + "o4"]),
            N("Transpose", [p + "o4"], [p + "o3"], perm=[0, 2, 1, 3]),
            N("Reshape", [p + "o3", p + "oshape"], [n.output[0]]),
        ]
    g.ClearField("node")
    g.node.extend(out)
    g.initializer.extend(inits)
    return count
