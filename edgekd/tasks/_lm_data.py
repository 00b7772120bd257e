"""Task text-generation's data: prompts written for the model (instruction, chat template), token
sequences with the span a loss scores, the teacher's generated responses and the filter they pass, the
teacher's cached top-k logits, and length-bucketed batches.

A sequence is (ids, start): ids (L,) the prompt's tokens then the response's (ending in eos), start the
index of the first response token; a model is scored on predicting ids[start:] (the logits at positions
start-1 .. L-2). Plain text (no prompts) has start 1: every token after the first is scored."""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import InputError, RecipeError


@dataclass
class Seqs:
    """Token sequences and where their scored span starts; `source` says where each came from
    ("reference", "generated", "text") and `prompt` the index of its prompt in its split."""
    ids: list[np.ndarray]
    start: np.ndarray  # (N,) int
    source: list[str] = field(default_factory=list)
    prompt: list[int] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.ids)

    def scored(self) -> np.ndarray:
        """(N,) tokens scored per sequence."""
        return np.array([len(x) - s for x, s in zip(self.ids, self.start)], dtype=np.int64)

    def subset(self, idx) -> "Seqs":
        return Seqs([self.ids[i] for i in idx], self.start[idx], [self.source[i] for i in idx],
                    [self.prompt[i] for i in idx])

    def save(self, path: Path) -> None:
        json.dump({"ids": [x.tolist() for x in self.ids], "start": self.start.tolist(), "source": self.source,
                   "prompt": self.prompt}, open(path, "w"))

    @classmethod
    def load(cls, path: Path) -> "Seqs":
        d = json.load(open(path))
        return cls([np.array(x, dtype=np.int64) for x in d["ids"]], np.array(d["start"], dtype=np.int64), d["source"],
                   d["prompt"])


def uses_chat(tokenizer, lm) -> bool:
    return lm.chat == "true" or (lm.chat == "auto" and bool(getattr(tokenizer, "chat_template", None)))


def prompt_ids(tokenizer, prompt: str, lm) -> list[int]:
    """The prompt as the model reads it: the instruction before it; the user's turn of the chat template
    with the assistant's turn opened, when the tokenizer has one."""
    text = f"{lm.instruction}\n\n{prompt}" if lm.instruction else prompt
    if uses_chat(tokenizer, lm):
        if not getattr(tokenizer, "chat_template", None):
            raise RecipeError("lm.chat = 'true' but the teacher's tokenizer has no chat template; set lm.chat = 'auto'")
        out = tokenizer.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True, tokenize=True)
        return list(out if isinstance(out, (list, tuple)) else out["input_ids"])  # a BatchEncoding in transformers 5
    return list(tokenizer(text + "\n", add_special_tokens=True)["input_ids"])


def response_ids(tokenizer, response: str) -> list[int]:
    return list(tokenizer(response, add_special_tokens=False)["input_ids"]) + [tokenizer.eos_token_id]


def pair_seqs(tokenizer, prompts: list[str], responses: list[str], lm, *, max_length: int, source: str,
              prompt_index: list[int] | None = None) -> tuple[Seqs, int]:
    """Prompt/response sequences, truncated to max_length -> (sequences, how many were truncated)."""
    ids, start, cut = [], [], 0
    for p, r in zip(prompts, responses):
        a, b = prompt_ids(tokenizer, p, lm), response_ids(tokenizer, r)
        seq = (a + b)[:max_length]
        cut += len(a) + len(b) > max_length
        ids.append(np.array(seq, dtype=np.int64))
        start.append(len(a))
    idx = prompt_index if prompt_index is not None else list(range(len(prompts)))
    return Seqs(ids, np.array(start, dtype=np.int64), [source] * len(ids), list(idx)), cut


def text_seqs(tokenizer, texts: list[str], *, max_length: int) -> Seqs:
    """Plain text for language modelling on the domain: every token after the first is scored."""
    ids = [np.array(tokenizer(t, add_special_tokens=True)["input_ids"][:max_length], dtype=np.int64) for t in texts]
    keep = [i for i, x in enumerate(ids) if len(x) >= 2]
    return Seqs([ids[i] for i in keep], np.ones(len(keep), dtype=np.int64), ["text"] * len(keep), keep)


def check_prompts(tokenizer, prompts: list[str], lm, *, max_length: int, where: str) -> None:
    """A prompt that leaves no room for a response under data.max_length stops the build, one line."""
    lengths = [len(prompt_ids(tokenizer, p, lm)) for p in prompts]
    long = [i for i, n in enumerate(lengths) if n >= max_length]
    if long:
        raise InputError(f"{len(long)} {where} prompt(s) are longer than the context data.max_length = {max_length} "
                         f"tokens (the longest: {max(lengths)}, prompt {long[0] + 1}); raise data.max_length (up to the "
                         "model's context) or shorten those prompts")


# batches -----------------------------------------------------------------------------------------------

def collate(seqs: Seqs, idx, pad_id: int):
    """-> (ids (B, L) int64, attention mask (B, L), scored-position mask (B, L) bool: the positions whose
    logits predict a scored token), right-padded."""
    import torch

    L = max(len(seqs.ids[i]) for i in idx)
    ids = torch.full((len(idx), L), pad_id, dtype=torch.long)
    mask = torch.zeros((len(idx), L), dtype=torch.long)
    sel = torch.zeros((len(idx), L), dtype=torch.bool)
    for b, i in enumerate(idx):
        x, s = seqs.ids[i], int(seqs.start[i])
        ids[b, :len(x)] = torch.from_numpy(x)
        mask[b, :len(x)] = 1
        sel[b, s - 1:len(x) - 1] = True
    return ids, mask, sel


def length_batches(seqs: Seqs, batch_size: int, seed: int, pad_id: int):
    """fit()'s batches(epoch, generator): sequences of similar length together (less padding), batches in
    a random order each epoch. Each batch is (ids, mask, scored, idx)."""
    import torch

    order = np.argsort([len(x) for x in seqs.ids], kind="stable")
    chunks = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]

    def batches(epoch: int, g):
        perm = torch.randperm(len(chunks), generator=g).tolist()
        for c in perm:
            idx = np.sort(chunks[c])
            ids, mask, sel = collate(seqs, idx, pad_id)
            yield ids, mask, sel, torch.from_numpy(idx)

    return batches


def token_logits(model, ids, mask, sel, compact: bool = False):
    """The model's logits at the scored positions only, (N, V): the LM head runs on N rows instead of
    B x L (a 49k vocabulary makes full logits the largest tensor of a step). compact: a trimmed head's
    (N, K + 1) form instead (edgekd.models.lm_vocab), where it has one."""
    base = getattr(model, model.base_model_prefix)
    h = base(input_ids=ids, attention_mask=mask).last_hidden_state  # (B, L, H)
    head = model.get_output_embeddings()
    return head.compact(h[sel]) if compact and hasattr(head, "compact") else head(h[sel])  # (N, V) or (N, K + 1)


def block_influence(model, seqs: Seqs, *, device: str = "cpu", n: int = 8, max_len: int = 256):
    """(L,) per decoder layer, 1 - the mean cosine between its input and output hidden states over the
    tokens of the first `n` sequences (ShortGPT, Men et al. 2024): how much the layer changes the stream."""
    import torch

    was = next(model.parameters()).device
    model.to(device)
    total = None
    try:
        with torch.no_grad():
            for ids in seqs.ids[:n]:
                x = torch.as_tensor(np.asarray(ids)[None, :max_len], dtype=torch.long, device=device)
                hs = model(input_ids=x, output_hidden_states=True).hidden_states  # L + 1 x (1, T, H)
                bi = torch.stack([1 - torch.nn.functional.cosine_similarity(a[0].float(), b[0].float(), dim=-1).mean()
                                  for a, b in zip(hs[:-1], hs[1:])])
                total = bi if total is None else total + bi
    finally:
        model.to(was)
    return (total / min(n, len(seqs.ids))).cpu().numpy()


def selected_logits(model):
    """`model` as a module whose forward(ids, mask, sel) is token_logits: what a training step calls, so
    that under torchrun it goes through DistributedDataParallel's own forward, the only path on which
    DDP averages the ranks' gradients (calling the wrapped model directly trains each rank apart)."""
    import torch

    class SelectedLogits(torch.nn.Module):
        def __init__(self, lm):
            super().__init__()
            self.lm = lm

        def forward(self, ids, mask, sel, compact: bool = False):
            return token_logits(self.lm, ids, mask, sel, compact)

    return SelectedLogits(model)


def labels_at(ids, sel):
    """(N,) the next token of every scored position."""
    import torch

    nxt = torch.roll(ids, -1, dims=1)
    return nxt[sel]


def mean_nll(model, seqs: Seqs, *, pad_id: int, batch_size: int = 8) -> float:
    """Mean negative log-likelihood per scored token (nats), on the device the model is on."""
    import torch
    import torch.nn.functional as F

    device = next(model.parameters()).device
    total, count = 0.0, 0
    order = np.argsort([len(x) for x in seqs.ids], kind="stable")
    with torch.no_grad():
        for i in range(0, len(order), batch_size):
            ids, mask, sel = collate(seqs, order[i:i + batch_size], pad_id)
            ids, mask, sel = ids.to(device), mask.to(device), sel.to(device)
            logits = token_logits(model, ids, mask, sel).float()
            total += F.cross_entropy(logits, labels_at(ids, sel), reduction="sum").item()
            count += int(sel.sum())
    return total / max(count, 1)


# the teacher's data --------------------------------------------------------------------------------------

def generate(model, tokenizer, prompts: list[list[int]], *, n: int, temperature: float, top_p: float,
             max_new_tokens: int, seed: int, device: str, batch_size: int = 16, log=None) -> list[list[list[int]]]:
    """`n` responses per prompt (token ids, eos excluded), sampled at temperature / top_p (greedy at 0),
    left-padded batches of similar length."""
    import torch

    torch.manual_seed(seed)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    eos = tokenizer.eos_token_id
    out: list[list[list[int]]] = [[] for _ in prompts]
    order = np.argsort([len(p) for p in prompts], kind="stable")
    model.to(device).eval()
    done = 0
    for i in range(0, len(order), batch_size):
        idx = order[i:i + batch_size]
        L = max(len(prompts[j]) for j in idx)
        ids = torch.full((len(idx), L), pad, dtype=torch.long)
        mask = torch.zeros((len(idx), L), dtype=torch.long)
        for b, j in enumerate(idx):
            ids[b, L - len(prompts[j]):] = torch.tensor(prompts[j])
            mask[b, L - len(prompts[j]):] = 1
        kw = dict(do_sample=True, temperature=temperature, top_p=top_p, num_return_sequences=n) if temperature > 0 \
            else dict(do_sample=False)
        with torch.no_grad():
            gen = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), max_new_tokens=max_new_tokens,
                                 pad_token_id=pad, eos_token_id=eos, **kw)[:, L:].cpu().numpy()
        for r, row in enumerate(gen):
            j = idx[r // (n if temperature > 0 else 1)]
            toks = row.tolist()
            out[j].append(toks[:toks.index(eos)] if eos in toks else toks)
        done += len(idx)
        if log:
            log(f"[generate] {done}/{len(prompts)} prompts")
    model.to("cpu")
    return out


def repeat_share(tokens: list[int], n: int = 3) -> float:
    """Share of a response's n-grams that occur earlier in it: 0 for none, near 1 for a loop."""
    grams = [tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1)]
    return 1 - len(set(grams)) / len(grams) if grams else 0.0


def user_filter(ref: str):
    """package.module:function(prompt, response) -> True (keep) or a reason to drop (str / False)."""
    import importlib

    mod, _, fn = ref.partition(":")
    try:
        return getattr(importlib.import_module(mod), fn)
    except (ImportError, AttributeError) as e:
        raise RecipeError(f"lm.filter '{ref}' cannot be imported ({e}); give package.module:function") from None


def filter_reason(prompt: str, response: str, tokens: list[int], mean_logprob: float, lm, user=None) -> str:
    """Why a generated response is dropped, or "" to keep it."""
    if len(tokens) < lm.min_tokens:
        return "too short"
    if repeat_share(tokens) > lm.max_repeat:
        return "repetitive"
    if mean_logprob < lm.min_logprob:
        return "teacher unsure"
    if lm.pattern and not re.search(lm.pattern, response):
        return "pattern"
    if lm.json:
        try:
            json.loads(response)
        except ValueError:
            return "not JSON"
    if user is not None:
        verdict = user(prompt, response)
        if verdict is not True:
            return str(verdict) if isinstance(verdict, str) and verdict else "user filter"
    return ""


def shared_topk(model, seqs: Seqs, **kw):
    """teacher_topk over the sequences, split between the ranks of a torchrun build (each sequence's
    log-probabilities computed by one rank, all ranks given all of them; edgekd.shard)."""
    from ..shard import split_gather

    def part(idx: np.ndarray) -> list:
        ids, lp, off, own = teacher_topk(model, seqs.subset(idx), **kw)
        return [(ids[off[i]:off[i + 1]], lp[off[i]:off[i + 1]], own[i]) for i in range(len(idx))]

    rows = split_gather(len(seqs), part)
    k = kw["k"]
    cat = lambda j, dt: np.concatenate([r[j] for r in rows]) if rows else np.zeros((0, k), dt)  # noqa: E731
    offsets = np.concatenate([[0], np.cumsum([len(r[0]) for r in rows], dtype=np.int64)])
    return cat(0, np.int32), cat(1, np.float16), offsets, np.array([r[2] for r in rows], dtype=np.float64)


def shared_generate(model, tokenizer, prompts: list[list[int]], **kw) -> list[list[list[int]]]:
    """generate over the prompts, split between the ranks of a torchrun build (edgekd.shard)."""
    from ..shard import split_gather

    return split_gather(len(prompts), lambda idx: generate(model, tokenizer, [prompts[i] for i in idx], **kw))


def teacher_topk(model, seqs: Seqs, *, k: int, pad_id: int, device: str, batch_size: int = 8, bf16: bool = False):
    """The teacher's top-k tokens and log-probabilities at every scored position, sequence after
    sequence -> (ids (M, k) int32, logprobs (M, k) float16, offsets (N + 1,), mean log-prob of each
    sequence's own tokens (N,))."""
    import contextlib

    import torch

    model.to(device).eval()
    cast = torch.autocast(torch.device(device).type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
    n = seqs.scored()
    offsets = np.concatenate([[0], np.cumsum(n)])
    top_ids = np.zeros((int(offsets[-1]), k), dtype=np.int32)
    top_lp = np.zeros((int(offsets[-1]), k), dtype=np.float16)
    mean_lp = np.zeros(len(seqs), dtype=np.float64)
    order = np.argsort([len(x) for x in seqs.ids], kind="stable")
    with torch.no_grad(), cast:
        for i in range(0, len(order), batch_size):
            idx = np.sort(order[i:i + batch_size])
            ids, mask, sel = (t.to(device) for t in collate(seqs, idx, pad_id))
            lp = torch.log_softmax(token_logits(model, ids, mask, sel).float(), -1)  # (N_b, V)
            own = lp.gather(1, labels_at(ids, sel)[:, None])[:, 0]
            v, j = lp.topk(k, dim=-1)
            row = 0
            for s in idx:  # sel's row-major order is the batch's sequences in order
                m = int(n[s])
                top_ids[offsets[s]:offsets[s + 1]] = j[row:row + m].cpu().numpy()
                top_lp[offsets[s]:offsets[s + 1]] = v[row:row + m].cpu().numpy()
                mean_lp[s] = float(own[row:row + m].mean()) if m else -math.inf
                row += m
    model.to("cpu")
    return top_ids, top_lp, offsets, mean_lp


def rouge_l(a: str, b: str) -> float:
    """ROUGE-L F1 of two texts over lower-cased words (Lin 2004): the longest common subsequence."""
    x, y = a.lower().split(), b.lower().split()
    if not x or not y:
        return float(x == y)
    prev = [0] * (len(y) + 1)
    for u in x:
        cur = [0]
        for j, v in enumerate(y):
            cur.append(prev[j] + 1 if u == v else max(prev[j + 1], cur[j]))
        prev = cur
    lcs = prev[-1]
    if not lcs:
        return 0.0
    p, r = lcs / len(x), lcs / len(y)
    return 2 * p * r / (p + r)
