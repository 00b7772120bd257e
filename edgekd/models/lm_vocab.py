"""A causal LM student whose output layer scores only the tokens its domain uses (lm.vocab).

SmolLM2-class models spend a fifth of their weights and of each decoded token's multiply-adds on the LM
head (49,152 x 576). A student that writes one domain's text needs few of those rows: the head keeps the
K tokens the training sequences use most (and the tokenizer's special tokens), and every other token
shares one learned logit, the floor. The tokenizer and the input embedding stay whole, so the student
reads any text, its logits still span the teacher's vocabulary (distillation, perplexity, agreement and
KL against the teacher line up token for token), and an unseen token is unlikely, never impossible:

    logits[..., v] = h . W_kept[j]   where v = kept[j]
                   = floor           for every other v          (h: (..., H), W_kept: (K, H))

In the exported graph the head is a MatMul on K columns (and one for the floor), gathered over the
vocabulary (`trim_onnx_head`), so apps, onnxruntime's and OpenVINO's loaders and the runtime read it
unchanged.
Vocabulary trimming for distilled LMs: Ushio et al. 2023 ("An efficient multilingual language model
compression through vocabulary trimming"); here the trimmed rows keep one shared floor instead of -inf."""

from __future__ import annotations

import copy
import math
from collections import Counter

import numpy as np

from ..errors import EdgeKDError


def _head_class():
    import torch
    import torch.nn.functional as F

    class TrimmedHead(torch.nn.Module):
        """(..., H) -> (..., vocab): the kept rows' logits, the floor elsewhere."""

        def __init__(self, weight, kept, vocab: int, floor: float):
            super().__init__()
            self.weight = torch.nn.Parameter(weight.detach().clone())  # (K, H)
            self.register_buffer("kept", torch.as_tensor(kept, dtype=torch.long))  # (K,)
            self.floor = torch.nn.Parameter(torch.tensor(float(floor)))
            self.vocab = int(vocab)
            # compact form: token id -> its column of compact(), K for every trimmed id (one shared column)
            columns = torch.full((self.vocab,), len(kept), dtype=torch.long)
            columns[self.kept] = torch.arange(len(kept))
            self.register_buffer("columns", columns, persistent=False)
            self.log_trimmed = math.log(self.vocab - len(kept))  # how many ids share the floor, as a log

        def forward(self, h):
            z = F.linear(h, self.weight)  # (..., K)
            full = z.new_zeros((*z.shape[:-1], self.vocab)) + self.floor.to(z.dtype)
            return full.scatter(-1, self.kept.expand(*z.shape[:-1], -1), z)

        def compact(self, h):
            """(..., H) -> (..., K + 1): the kept logits, then the floor once. The full softmax over V is
            the softmax of these with log_trimmed added to the last column (V - K ids share it), so a
            training loss reads log-probabilities without a (..., V) tensor (edgekd.losses.logprob_reader)."""
            z = F.linear(h, self.weight)
            return torch.cat([z, self.floor.to(z.dtype).expand(*z.shape[:-1], 1)], -1)

    return TrimmedHead


def trimmed(model):
    """The model's TrimmedHead, or None (also when quantization-aware training has parametrized it)."""
    from torch.nn.utils.parametrize import type_before_parametrizations

    head = model.get_output_embeddings()
    # a parametrized module's class is a subclass made on the fly: its own class name is another
    return head if type_before_parametrizations(head).__name__ == "TrimmedHead" and hasattr(head, "kept") else None


def kept_tokens(seqs, tokenizer, n: int, *, topk_ids=None, topk_logprobs=None) -> tuple[np.ndarray, dict]:
    """The ids the head keeps: every special token, and the `n` of highest count in `seqs` (every token of
    every sequence: prompts too, since held-out text is scored whole) plus expected count under the
    teacher (its cached top-k probabilities at the training positions, (N, k) each, summed per id). The
    teacher's mass ranks the tokens the domain could use but the data happens not to: on the SmolLM2
    example 8,192 ids chosen so cover 98.0% of the held-out tokens, 95.2% chosen by count alone. Ties
    break by id, so the set depends on the data and teacher alone.
    -> (sorted ids, {"used": distinct ids in the data, "coverage": share of the data's tokens kept,
    "singletons": ids seen once, "tokens": the data's tokens})"""
    counts = Counter(int(t) for ids in seqs.ids for t in ids)
    total = sum(counts.values())
    score: Counter = Counter(counts)
    if topk_ids is not None:
        mass = np.bincount(np.asarray(topk_ids).ravel(), weights=np.exp(np.asarray(topk_logprobs, np.float64)).ravel())
        for t in np.flatnonzero(mass):
            score[int(t)] += float(mass[t])
    specials = {int(i) for i in tokenizer.all_special_ids if i is not None}
    for attr in ("eos_token_id", "bos_token_id", "pad_token_id"):
        if isinstance(getattr(tokenizer, attr, None), int):
            specials.add(getattr(tokenizer, attr))
    ranked = sorted(score, key=lambda t: (-score[t], t))[:n]
    kept = np.array(sorted(set(ranked) | specials), dtype=np.int64)
    covered = sum(counts[t] for t in ranked)
    return kept, {"used": len(counts), "coverage": covered / max(total, 1),
                  "singletons": sum(1 for c in counts.values() if c == 1), "tokens": total}


def trim(model, kept: np.ndarray, *, floor: float) -> None:
    """In place: `model`'s LM head replaced by a TrimmedHead of the `kept` rows of its weight. The head
    stops being tied to the input embedding (it is a different tensor now)."""
    head = model.get_output_embeddings()
    vocab = head.weight.shape[0]
    if len(kept) >= vocab:
        raise EdgeKDError(f"lm.vocab keeps {len(kept)} of {vocab} tokens: nothing to trim; set lm.vocab = 0")
    import torch

    w = head.weight.detach()[torch.as_tensor(kept)]
    model.config.tie_word_embeddings = False
    if getattr(model.config, "text_config", None) is not None:
        model.config.text_config.tie_word_embeddings = False
    model.set_output_embeddings(_head_class()(w, kept, vocab, floor))


def mass_preserving_floor(model, kept: np.ndarray, seqs, *, max_rows: int = 2048) -> float:
    """The floor that gives the trimmed tokens, together, the probability the untrimmed head gave them,
    on average over training positions: log-mean-exp of their logits (a start; training moves it)."""
    import torch

    head = model.get_output_embeddings()
    base = getattr(model, model.base_model_prefix)
    drop = torch.ones(head.weight.shape[0], dtype=torch.bool)
    drop[torch.as_tensor(kept)] = False
    n_drop, vals, rows = int(drop.sum()), [], 0
    with torch.no_grad():
        for ids in seqs.ids[:64]:
            x = torch.as_tensor(np.asarray(ids)[None, :512], dtype=torch.long)
            h = base(input_ids=x, attention_mask=torch.ones_like(x)).last_hidden_state[0]  # (L, H)
            z = head(h)[:, drop]  # (L, V - K)
            vals.append(torch.logsumexp(z, -1) - np.log(n_drop))
            rows += len(h)
            if rows >= max_rows:
                break
    return float(torch.cat(vals).mean()) if vals else 0.0


def expanded(model):
    """A copy whose head is a plain Linear over the whole vocabulary (the kept rows, zeros elsewhere),
    untied: what save_pretrained and optimum's exporter know how to write. `trim_onnx_head` then cuts
    the exported MatMul down to the kept columns and puts the floor back."""
    import torch

    head = trimmed(model)
    out = copy.deepcopy(model)
    full = torch.nn.Linear(head.weight.shape[1], head.vocab, bias=False)
    with torch.no_grad():
        full.weight.zero_()
        full.weight[head.kept] = head.weight.detach().float()
    out.set_output_embeddings(full)
    return out


def trim_onnx_head(proto, head) -> dict:
    """In place on an exported model.onnx: the MatMul that writes `logits` (through Cast/Identity) reads
    the kept columns of its (H, V) weight and one zero column, a bias puts the floor in that column, and a
    Gather with a constant map (V,) (kept id -> its column, any other id -> the floor's) spreads them over
    the vocabulary. A scatter into a tensor of the floor computes the same, but holds two more (B, T, V)
    tensors at prefill (a filled one and its int64 indices; benchmarks/README.md has the peak RSS of both).
    -> {"kept": K, "vocab": V, "floor": value}"""
    from onnx import helper, numpy_helper

    from ..export_lm import _head_matmul

    g = proto.graph
    inits = {i.name: i for i in g.initializer}
    name = _head_matmul(g)
    node = next((n for n in g.node if n.name == name), None) if name else None
    if node is None or node.input[1] not in inits:
        raise EdgeKDError("the exported graph's logits do not come from a MatMul on a weight: cannot trim its "
                          "LM head; set lm.vocab = 0")
    w_init = inits[node.input[1]]
    w = numpy_helper.to_array(w_init)  # (H, V)
    kept = head.kept.cpu().numpy().astype(np.int64)
    if w.ndim != 2 or w.shape[1] != head.vocab:
        raise EdgeKDError(f"the exported LM head's weight has shape {w.shape}, not (hidden, {head.vocab}): "
                          "cannot trim it; set lm.vocab = 0")
    if sum(1 for n in g.node for i in n.input if i == w_init.name) > 1:
        raise EdgeKDError("the exported LM head's weight is shared with another op: cannot trim it; set lm.vocab = 0")
    floor = float(head.floor.detach())
    k = len(kept)
    cols = np.concatenate([w[:, kept], np.zeros((w.shape[0], 1), w.dtype)], axis=1)  # (H, K + 1)
    bias = np.zeros(k + 1, w.dtype)
    bias[k] = floor
    where = np.full(head.vocab, k, dtype=np.int64)  # (V,): the floor's column unless kept
    where[kept] = np.arange(k)
    g.initializer.remove(w_init)
    g.initializer.extend([numpy_helper.from_array(np.ascontiguousarray(cols), "lm_head.kept_weight"),
                          numpy_helper.from_array(bias, "lm_head.floor_bias"),
                          numpy_helper.from_array(where, "lm_head.columns")])
    out = node.output[0]
    node.input[1], node.output[0] = "lm_head.kept_weight", "lm_head.kept_logits"
    new = [helper.make_node("Add", ["lm_head.kept_logits", "lm_head.floor_bias"], ["lm_head.with_floor"],
                            name="lm_head.Floor"),
           helper.make_node("Gather", ["lm_head.with_floor", "lm_head.columns"], [out], axis=-1, name="lm_head.Spread")]
    at = list(g.node).index(node) + 1
    for i, n in enumerate(new):
        g.node.insert(at + i, n)
    return {"kept": k, "vocab": head.vocab, "floor": floor}
