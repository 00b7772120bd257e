"""Training loops of the text tasks: the classification teacher's head, and distillation of a text
student (feature losses + logit KD) shared by the distill and quantization-aware stages."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import EdgeKDError


@dataclass
class TextFit:
    val_score: float  # mean cosine to the teacher (embedding) or accuracy (classification)
    chosen_epoch: int
    epochs: int
    history: list[dict] = field(default_factory=list)


def batches(mask: np.ndarray, *, batch_size: int, rng: np.random.Generator | None) -> list[np.ndarray]:
    """Index batches of texts of similar length (shuffled in chunks of 50 batches, then sorted by length
    inside each chunk), so trimming a batch to its longest text wastes little on padding.
    rng None: in order (evaluation)."""
    n = len(mask)
    if rng is None:
        order = np.argsort(mask.sum(1), kind="stable")
        return [order[i:i + batch_size] for i in range(0, n, batch_size)]
    order = rng.permutation(n)
    lengths = mask.sum(1)
    chunk = batch_size * 50
    out = []
    for c in range(0, n, chunk):
        part = order[c:c + chunk]
        part = part[np.argsort(lengths[part], kind="stable")]
        out += [part[i:i + batch_size] for i in range(0, len(part), batch_size)]
    return [out[i] for i in rng.permutation(len(out))]


def _feed(tokens: dict, idx, device):
    import torch

    mask = tokens["attention_mask"][idx]
    s = max(1, int(mask.sum(1).max()))  # trim padding to the longest text of the batch
    return (torch.from_numpy(np.ascontiguousarray(tokens["input_ids"][idx, :s])).to(device),
            torch.from_numpy(np.ascontiguousarray(mask[:, :s])).to(device))


def encode(model, tokens: dict, *, batch_size: int = 64, device: str = "cpu") -> np.ndarray:
    """The model's output (embedding or logits) for every text, float32, in input order."""
    import torch

    model.to(device)
    out = np.zeros((len(tokens["input_ids"]), 0), np.float32)
    with torch.no_grad():
        for idx in batches(tokens["attention_mask"], batch_size=batch_size, rng=None):
            y = model(*_feed(tokens, idx, device)).float().cpu().numpy()
            if out.shape[1] == 0:
                out = np.zeros((len(tokens["input_ids"]), y.shape[1]), np.float32)
            out[idx] = y
    model.to("cpu")
    return out


def score(pred: np.ndarray, target: np.ndarray, y: np.ndarray | None) -> float:
    """Validation score: accuracy with labels, else mean cosine to the teacher's embeddings."""
    from .text import mean_cosine

    return float((pred.argmax(1) == y).mean()) if y is not None else mean_cosine(pred, target)


def fit_head(teacher, tokens: dict, y: np.ndarray, val_tokens: dict, y_val: np.ndarray, *, epochs: int, lr: float,
             seed: int, device: str = "cpu") -> dict:
    """Train the teacher's classification head on its frozen sentence embeddings (a linear probe):
    the encoder is pretrained, the head is what the labels teach."""
    import torch
    import torch.nn.functional as F

    torch.manual_seed(seed)
    e = torch.from_numpy(encode(_EmbeddingOf(teacher), tokens, device=device))
    e_val = torch.from_numpy(encode(_EmbeddingOf(teacher), val_tokens, device=device))
    yt = torch.from_numpy(y)
    opt = torch.optim.AdamW(teacher.head.parameters(), lr=lr, weight_decay=0.0)
    g = torch.Generator().manual_seed(seed)
    best, best_state, chosen = -1.0, None, 0
    for epoch in range(1, max(epochs, 1) + 1):
        for idx in torch.randperm(len(e), generator=g).split(32):
            loss = F.cross_entropy(teacher.head(e[idx]), yt[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        with torch.no_grad():
            acc = float((teacher.head(e_val).argmax(1).numpy() == y_val).mean())
        if acc > best:
            best, chosen, best_state = acc, epoch, copy.deepcopy(teacher.head.state_dict())
    teacher.head.load_state_dict(best_state)
    return {"val_accuracy": best, "chosen_epoch": chosen}


class _EmbeddingOf:
    """Calls a TextEncoder for its pooled embedding only (whatever its task head)."""

    def __init__(self, enc):
        self.enc = enc

    def to(self, device):
        self.enc.to(device)
        return self

    def __call__(self, ids, mask):
        return self.enc.features(ids, mask)["embedding"]


def distill_text(student, teacher, *, tokens: dict, target: np.ndarray, y: np.ndarray | None, val_tokens: dict,
                 val_target: np.ndarray, y_val: np.ndarray | None, spec, epochs: int, lr: float, seed: int,
                 layer_map: dict[int, int], train_mode=None, eval_mode=None, checkpoint: Path | None = None,
                 log=None, device: str = "cpu", desc: str = "distill") -> TextFit:
    """Distil `student` from `teacher` with the losses weighted in `spec` (a DistillSpec):

        L = alpha * KD(s, t; T) + (1 - alpha) * CE(s, y)          (classification, spec.alpha/temperature)
          + sum_k w_k * L_k(features_s, features_t)                (k in edgekd.losses.feature_losses)

    target: the teacher's outputs (embeddings (N, D) or logits (N, K)) for `tokens`, computed once;
    the teacher runs online only when a hidden-state or attention loss needs its features.
    AdamW with linear warm-up (10%) and linear decay; the weights of the epoch with the best validation
    score are kept (epoch 0, the starting weights, included). `checkpoint` is rewritten every epoch and
    resumed from, as in edgekd.train.fit."""
    import torch
    from tqdm import tqdm

    from .losses import feature_losses, kd_loss
    from .train import save_checkpoint

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    train_mode = train_mode or (lambda m: m.train())
    eval_mode = eval_mode or (lambda m: m.eval())
    weights = {k: getattr(spec, k) for k in feature_losses.names() if getattr(spec, k) > 0}
    online = any(k in weights for k in ("hidden_mse", "attention_kl"))
    classify = y is not None
    # TinyBERT's W_h: learned only when the student's width differs from the teacher's
    ds, dt = student.bert.config.hidden_size, teacher.bert.config.hidden_size
    proj = torch.nn.Linear(ds, dt) if "hidden_mse" in weights and ds != dt else None
    student.to(device)
    teacher.to(device)
    teacher.eval()
    # word embeddings stay frozen: they are most of the parameters, a dense AdamW update of all of them
    # costs more than the layers' and the vocabulary is the teacher's anyway
    student.bert.embeddings.word_embeddings.weight.requires_grad_(False)
    params = [p for p in student.parameters() if p.requires_grad] + (list(proj.parameters()) if proj else [])
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.01)
    plan = [batches(tokens["attention_mask"], batch_size=spec.batch_size, rng=rng) for _ in range(max(epochs, 1))]
    steps = sum(len(p) for p in plan[:epochs]) or 1
    warm = max(1, steps // 10)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min((s + 1) / warm, max(0.0, (steps - s) / (steps - warm + 1e-9))))
    target_t = torch.from_numpy(np.ascontiguousarray(target))
    y_t = torch.from_numpy(y) if classify else None

    def validate() -> float:
        eval_mode(student)
        return score(encode(student, val_tokens, device=device), val_target, y_val)

    start = 0
    if checkpoint is not None and checkpoint.exists():
        ck = torch.load(checkpoint, map_location=device, weights_only=True)
        student.load_state_dict(ck["model"])
        opt.load_state_dict(ck["optimizer"])
        sched.load_state_dict(ck["scheduler"])
        if proj is not None:
            proj.load_state_dict(ck["proj"])
        torch.set_rng_state(ck["torch_rng"].cpu())
        start, best, chosen, history, best_state = ck["epoch"], ck["best"], ck["chosen"], ck["history"], ck["best_state"]
        if log:
            log(f"[{desc}] resuming from epoch {start} of {epochs} ({checkpoint.name})")
    else:
        best = validate()
        best_state, chosen, history = copy.deepcopy(student.state_dict()), 0, []
    bar = tqdm(total=steps, initial=sum(len(p) for p in plan[:start]), desc=desc, unit="step", leave=False, disable=None)
    for epoch in range(start, epochs):
        train_mode(student)
        total, count = 0.0, 0
        for idx in plan[epoch]:
            ids, mask = _feed(tokens, idx, device)
            fs = student.features(ids, mask, attention="attention_kl" in weights)
            if online:
                with torch.no_grad():
                    ft = teacher.features(ids, mask, attention="attention_kl" in weights)
            else:
                ft = {}
            tgt = target_t[idx].to(device)
            ft["logits" if classify else "embedding"] = tgt
            loss = fs["embedding"].new_zeros(())
            if classify:
                loss = loss + kd_loss(fs["logits"], tgt, y_t[idx].to(device), temperature=spec.temperature, alpha=spec.alpha)
            for k, w in weights.items():
                if k in ("embedding_mse", "embedding_cos", "similarity_mse") and "embedding" not in ft:
                    continue
                loss = loss + w * feature_losses.get(k)(fs, ft, mask, layer_map=layer_map, proj=proj)
            if not torch.isfinite(loss):
                raise EdgeKDError(f"{desc}: loss became {loss.item()} at epoch {epoch + 1}; lower the learning rate "
                                  "in the recipe; the last good epoch's checkpoint is kept")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * len(idx)
            count += len(idx)
            bar.update(1)
        val = validate()
        history.append({"epoch": epoch + 1, "loss": total / max(count, 1), "val_score": val})
        bar.set_postfix(loss=f"{total / max(count, 1):.4f}", val=f"{val:.4f}")
        if log:
            log(f"[{desc}] epoch {epoch + 1}/{epochs}: loss {total / max(count, 1):.4f}, validation {val:.4f}")
        if val > best:
            best, chosen, best_state = val, epoch + 1, copy.deepcopy(student.state_dict())
        if checkpoint is not None:
            save_checkpoint(checkpoint, {"model": student.state_dict(), "optimizer": opt.state_dict(),
                                         "scheduler": sched.state_dict(), "proj": proj.state_dict() if proj else {},
                                         "torch_rng": torch.get_rng_state(), "epoch": epoch + 1, "best": best,
                                         "chosen": chosen, "history": history, "best_state": best_state})
    bar.close()
    student.load_state_dict(best_state)
    student.to("cpu")
    teacher.to("cpu")
    eval_mode(student)
    return TextFit(val_score=best, chosen_epoch=chosen, epochs=epochs, history=history)


def filter_by_teacher(teacher_logits: np.ndarray, y: np.ndarray, *, drop_wrong: bool, min_confidence: float) -> np.ndarray:
    """Indices of training texts kept: the teacher is right (when drop_wrong) and its softmax
    probability of its own answer is at least min_confidence."""
    z = teacher_logits - teacher_logits.max(1, keepdims=True)
    p = np.exp(z) / np.exp(z).sum(1, keepdims=True)  # (N, K)
    keep = p.max(1) >= min_confidence
    if drop_wrong:
        keep &= teacher_logits.argmax(1) == y
    return np.flatnonzero(keep)

