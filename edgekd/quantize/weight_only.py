"""Weight-only quantization-aware training for causal LMs: each decoder Linear's weight is rounded in
training (straight-through estimator) to the grid onnxruntime's MatMulNBits stores, so the exported
INT4 (or INT8) weights are exactly the trained ones (edgekd.export_lm.quantize_weights re-quantizes
them by round-to-nearest and finds the same integers and scales).

The grid (onnxruntime's symmetric blockwise quantizer): the weight W (out, in) is cut into blocks of
`block_size` consecutive inputs of one output; m = the block's value of largest magnitude, with its sign;
scale = m / qmin with qmin = -2^(bits-1); q = clamp(round(w / scale), qmin, -qmin - 1); w' = q * scale.
m itself lands on qmin exactly, so quantizing w' again gives the same m, scale and q.

The LM head and the input embedding train on their own grids too when they are two tensors (a student
whose head was trimmed to its domain's tokens, edgekd.models.lm_vocab): the head on `head_bits` (the
grid export quantizes it to), the embedding table on the 4-bit grid of onnxruntime's GatherBlockQuantized,
whose blocks are `block_size` consecutive columns of a row, the same rule as above. A tied table (one
tensor read by two ops) is left to post-training rounding at export: a parametrization on it would untie
them. So is an embedding in an 8-bit build: the exporter stores it on another grid (absmax / 127,
edgekd.export_lm), and its 8-bit rounding error is a sixteenth of the 4-bit one."""

from __future__ import annotations

import copy


def fake_quant_blocks(w, *, bits: int, block_size: int):
    """w (out, in) -> w on the grid above, same shape; `in` padded to a multiple of block_size inside."""
    import torch
    import torch.nn.functional as F

    out_f, in_f = w.shape
    pad = (-in_f) % block_size
    x = F.pad(w, (0, pad)).reshape(out_f, -1, block_size)  # (out, blocks, block)
    idx = x.abs().argmax(-1, keepdim=True)
    m = x.gather(-1, idx)  # (out, blocks, 1): signed largest magnitude
    qmin = -(2 ** (bits - 1))
    scale = m / qmin
    scale = torch.where(scale == 0, torch.ones_like(scale), scale)
    q = torch.clamp(torch.round(x / scale), qmin, -qmin - 1)
    return (q * scale).reshape(out_f, -1)[:, :in_f]


def _module(bits: int, block_size: int):
    import torch

    class RoundWeights(torch.nn.Module):
        """Forward: the weight on the grid; backward: the identity (straight-through)."""

        def forward(self, w):
            return w + (fake_quant_blocks(w.detach(), bits=bits, block_size=block_size) - w).detach()

    return RoundWeights()


def prepare_weights(model, *, bits: int = 4, block_size: int = 32, head_bits: int = 0):
    """A copy of `model` whose decoder Linears (every nn.Linear but the output embedding) compute with
    weights on the `bits` grid; with `head_bits`, an untied head on its grid and, at 4 bits, the input
    embedding on the `bits` grid as well."""
    import torch
    from torch.nn.utils import parametrize

    q = copy.deepcopy(model)
    head, emb = q.get_output_embeddings(), q.get_input_embeddings() if hasattr(q, "get_input_embeddings") else None
    for m in q.modules():
        if isinstance(m, torch.nn.Linear) and m is not head:
            parametrize.register_parametrization(m, "weight", _module(bits, block_size))
    if head_bits and head is not None and emb is not None and head.weight is not emb.weight:
        parametrize.register_parametrization(head, "weight", _module(head_bits, block_size))
        if bits == 4:
            parametrize.register_parametrization(emb, "weight", _module(bits, block_size))
    return q


def bake(model):
    """A copy with the rounded weights stored as plain weights (for export)."""
    from torch.nn.utils import parametrize

    out = copy.deepcopy(model)
    for m in out.modules():
        if parametrize.is_parametrized(m, "weight"):
            parametrize.remove_parametrizations(m, "weight", leave_parametrized=True)
    return out
