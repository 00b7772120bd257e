"""GPTQ rounding of a causal LM's decoder Linears by neural-compressor 3.x, on the PyTorch model, for the
weight-only graph onnxruntime runs (edgekd.export_lm.quantize_weights writes its integers as they are).

GPTQ (Frantar et al. 2023, "GPTQ: Accurate Post-Training Quantization for Generative Pre-trained
Transformers") rounds a Linear's weight W (out, in) one input column at a time and moves each column's
rounding error onto the columns not rounded yet, weighted by the inverse Hessian of the layer's
reconstruction error, H = 2 X X^T (in, in), X (in, tokens) the layer's inputs on calibration text. It
needs data (a few training sequences) and no gradient, and keeps more of the model than round to nearest
where the weights are not already on the grid (a student without quantization-aware training).

neural-compressor's symmetric grid: one scale s per `block_size` inputs of an output row, integers
q in [0, 2^bits), zero point 2^(bits-1), w = (q - 2^(bits-1)) * s; onnxruntime's MatMulNBits without
a zero-point input reads its packed integers with the same zero point, so the integers and scales go
into the graph unchanged (no second rounding). Each block's scale is searched (`use_mse_search`: the
block's range shrunk in steps, the least p-norm error kept), not amax / 7.5: on the max-abs grid GPTQ
lost to onnxruntime's round to nearest, whose grid is a sixteenth finer (amax / 8, benchmarks/README.md).
Act-order (columns by falling Hessian diagonal) groups inputs out of order unless the groups are fixed
first, which this version of neural-compressor fails on, so it stays off: MatMulNBits reads consecutive
blocks. The LM head and the embedding are not GPTQ's: export
rounds them to nearest, as for the other candidates."""

from __future__ import annotations

import copy
import hashlib
import logging
import tempfile
import time
from contextlib import contextmanager

from ..errors import EdgeKDError


def fingerprint(w) -> str:
    """A float32 weight (out, in), as PyTorch stores a Linear's, -> a key its ONNX initializer (the same
    numbers, any layout) is found by (edgekd.export_lm.quantize_weights)."""
    import numpy as np

    return hashlib.sha1(np.ascontiguousarray(w, dtype=np.float32).tobytes()).hexdigest()


def gptq_round(model, sequences, *, bits: int = 4, block_size: int = 32, percdamp: float = 0.01):
    """-> (a copy of `model` whose decoder Linears hold GPTQ's rounded weights, in float32;
    {fingerprint(weight): (q (out, in) uint8 in [0, 2^bits), scales (out, in / block_size) float32)};
    meta). `sequences`: 1-D token id arrays the Hessians are estimated on, one forward each."""
    import numpy as np
    import torch

    t0 = time.perf_counter()
    with _inc_quiet():
        from neural_compressor.torch.algorithms.weight_only.modules import WeightOnlyLinear
        from neural_compressor.torch.quantization import GPTQConfig, convert, prepare
    work = copy.deepcopy(model).float().eval()
    from neural_compressor.common import options

    level, workspace = logging.getLogger("neural_compressor").level, options._workspace
    logging.getLogger("neural_compressor").setLevel(logging.ERROR)  # its notices name no action for the user
    try:
        with tempfile.TemporaryDirectory() as d, torch.no_grad():
            options.workspace = d  # its default, ./nc_workspace/<time>, would land in the user's folder
            # model_path: neural-compressor 3.10 resolves it even without layer-wise loading (a hub id
            # otherwise); an empty local folder satisfies it and is never read
            config = GPTQConfig(bits=bits, use_sym=True, group_size=block_size, percdamp=percdamp, model_path=d,
                                use_mse_search=True)
            work = prepare(work, config)
            for ids in sequences:
                work(input_ids=torch.as_tensor(np.asarray(ids, np.int64)).view(1, -1))
            work = convert(work)
    finally:
        logging.getLogger("neural_compressor").setLevel(level)
        options.workspace = workspace
    out = copy.deepcopy(model).float().eval()
    modules = dict(out.named_modules())
    zero = 2 ** (bits - 1)
    grids = {}
    for name, m in work.named_modules():
        if not isinstance(m, WeightOnlyLinear) or name not in modules:
            continue
        u = m.unpack()
        g = u.get("g_idx")
        if g is not None and not torch.equal(g.long().cpu(), torch.arange(m.in_features) // block_size):
            raise EdgeKDError(f"GPTQ grouped the inputs of {name} out of order (act_order without static groups); "
                              "MatMulNBits reads consecutive blocks")
        q = u["int_weight"].to(torch.int32) + zero  # signed integers, unless stored with their zero point
        if u.get("zp") is not None:
            q = q - u["zp"].to(torch.int32).repeat_interleave(block_size, 1)[:, :m.in_features]
        if int(q.min()) < 0 or int(q.max()) >= 2 ** bits:
            raise EdgeKDError(f"GPTQ's integers of {name} fall outside [0, {2 ** bits}): not the symmetric grid "
                              "MatMulNBits reads; set lm.gptq = false")
        scales = u["scales"].float()  # (out, blocks)
        w = (q - zero).float() * scales.repeat_interleave(block_size, 1)[:, :m.in_features]  # (out, in)
        modules[name].weight.data.copy_(w)
        grids[fingerprint(w.numpy())] = (q.to(torch.uint8).numpy(), scales.numpy())
    return out, grids, {"algorithm": "gptq", "route": "neural-compressor GPTQConfig (PyTorch)", "linears": len(grids),
                        "sequences": len(sequences), "tokens": int(sum(len(s) for s in sequences)),
                        "percdamp": percdamp, "seconds": round(time.perf_counter() - t0, 3)}


@contextmanager
def _inc_quiet():
    """neural-compressor sets its logger's level from the LOGLEVEL variable when first imported and logs
    which accelerator it found: ERROR for that import, unless the user set LOGLEVEL."""
    import os

    user = os.environ.get("LOGLEVEL")
    os.environ.setdefault("LOGLEVEL", "ERROR")
    try:
        yield
    finally:
        if user is None:
            os.environ.pop("LOGLEVEL", None)
