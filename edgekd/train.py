"""The one training loop: teacher fine-tuning, the hard-label baseline, distillation and
quantization-aware distillation, for every task. A task supplies the batches, the loss of one batch
and the validation score; the loop owns the optimizer, the schedule, best-epoch selection,
per-epoch checkpoints (resume) and DistributedDataParallel. Deterministic for a seed on CPU."""

from __future__ import annotations

import contextlib
import copy
import math
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Iterable

import numpy as np

from .errors import EdgeKDError


@dataclass(frozen=True)
class FitSpec:
    epochs: int
    lr: float
    batch_size: int
    steps_per_epoch: int
    optimizer: str = "adamw"  # "adamw" or "sgd" (Nesterov momentum 0.9)
    weight_decay: float | None = None  # None: 5e-4 for SGD, 0.05 for AdamW
    # "onecycle": OneCycleLR, 15% warm-up; "warmup-linear": 10% linear warm-up, then linear decay to 0
    # (the schedule BERT-style encoders are fine-tuned with)
    schedule: str = "onecycle"
    seed: int = 0
    desc: str = "train"
    # "bf16": forward passes under bfloat16 autocast (matmuls and convolutions in bf16; weights,
    # gradients' accumulation, optimizer state and validation stay float32); "fp32": none
    precision: str = "fp32"
    # a run whose loss diverges, or whose best epoch is one of the first of many (the learning rate
    # overshoots; later epochs only get worse), is run once more from the start at lr / RETRY_LR_DIVISOR
    retry: bool = False
    # up to this many more rounds (warm restarts, Loshchilov & Hutter 2017, SGDR) of max(2, epochs // 2)
    # epochs at half the previous rate, from the best weights, while the last epoch still improved the
    # validation score: a run stops on a plateau, not at a count that fits one dataset
    extend: int = 0


@dataclass
class FitResult:
    val_score: float  # the kept epoch's validation score (accuracy, or cosine to the teacher)
    chosen_epoch: int  # 1-based epoch whose weights were kept (0: the starting weights)
    history: list[dict] = field(default_factory=list)
    info: dict = field(default_factory=dict)  # what the task adds for the report (a layer map, a subset size)
    precision: str = "fp32"

    def meta(self) -> dict:
        return {"val_score": self.val_score, "chosen_epoch": self.chosen_epoch, "precision": self.precision,
                "history": self.history, **self.info}


RETRY_LR_DIVISOR = 5


class _Diverged(EdgeKDError):
    pass


def peaked_early(chosen_epoch: int, epochs: int) -> bool:
    """The best validation score came in the first tenth of 10+ epochs, or never beat the start of 3+
    epochs: the signature of a learning rate too high for this model and data."""
    return (epochs >= 10 and chosen_epoch <= max(1, epochs // 10)) or (epochs >= 3 and chosen_epoch == 0)


Batch = tuple
# step(forward, batch) -> scalar loss; `forward` is the model, or its DDP wrapper under torchrun
Step = Callable[[Callable, Batch], "object"]


def fit(model, spec: FitSpec, *, batches: Callable[[int, "object"], Iterable[Batch]], step: Step,
        validate: Callable[[object], float], extra: dict | None = None, train_mode=None, eval_mode=None,
        checkpoint: Path | None = None, log=None, device: str = "cpu") -> FitResult:
    """Train `model` for spec.epochs and keep the weights of the epoch with the best validation score
    (epoch 0, the starting weights, included: fine-tuning never returns worse weights than it got).
    With spec.retry, a diverging or early-peaking run is repeated once from the same start at a lower
    learning rate (one log line says so; FitResult.info records both runs); diverging again stops with
    one line. With spec.extend, a run still improving at its end goes on (_extend). Other arguments:
    see _fit_once."""
    kw = dict(batches=batches, step=step, validate=validate, extra=extra, train_mode=train_mode,
              eval_mode=eval_mode, checkpoint=checkpoint, log=log, device=device)
    r = _fit_retrying(model, spec, kw) if spec.retry else _fit_once(model, spec, **kw)
    return _extend(model, spec, r, kw) if spec.extend else r


def _extend(model, spec: FitSpec, r: FitResult, kw: dict) -> FitResult:
    """spec.extend more rounds while the best epoch is the last one (still improving); each round starts
    from the best weights with a fresh optimizer and schedule at half the last rate and keeps its best
    epoch only when it beats the run's best. A round that diverges ends the extension (best weights kept)."""
    lr, done, rounds = r.info.get("lr", spec.lr), len(r.history), []
    for k in range(spec.extend):
        if r.chosen_epoch != done or done == 0:  # the best epoch came before the end: a plateau
            break
        lr, epochs = lr / 2, max(2, spec.epochs // 2)
        if kw["log"]:
            kw["log"](f"[{spec.desc}] still improving at epoch {done} ({r.val_score:.4f}): {epochs} more epochs "
                      f"at lr {lr:g} from the best weights")
        ck = kw["checkpoint"]
        ck = ck.with_name(f"{ck.stem}.more{k + 1}{ck.suffix}") if ck is not None else None
        best = copy.deepcopy(model.state_dict())
        try:
            more = _fit_once(model, replace(spec, epochs=epochs, lr=lr, seed=spec.seed + 100 + k,
                                            desc=f"{spec.desc} +{k + 1}"), **{**kw, "checkpoint": ck})
        except _Diverged as e:
            model.load_state_dict(best)
            rounds.append({"epochs": epochs, "lr": lr, "diverged": str(e)})
            break
        r.history += [{**h, "epoch": done + h["epoch"]} for h in more.history]
        rounds.append({"epochs": epochs, "lr": lr, "best": more.val_score, "improved": more.chosen_epoch > 0})
        if more.chosen_epoch:
            r.val_score, r.chosen_epoch = more.val_score, done + more.chosen_epoch
        done += epochs
    if rounds:
        r.info["extended"] = rounds
    return r


def _check_ranks_agree(model, desc: str) -> None:
    """Under torch.distributed every rank must end with the same weights (DDP averages each step's
    gradients); ranks that differ were trained apart (a step that called the model around DDP's forward),
    and rank 0's model would have seen 1/world of the data: stop rather than ship it."""
    import torch
    import torch.distributed as dist

    sums = torch.stack([q.detach().double().sum() for q in model.parameters()]).reshape(1, -1)  # (1, P), on their device
    every = [torch.empty_like(sums) for _ in range(dist.get_world_size())]
    dist.all_gather(every, sums)
    if not all(torch.equal(every[0], x) for x in every[1:]):
        raise EdgeKDError(f"{desc}: the torch.distributed ranks ended training with different weights (their "
                          "gradients were not averaged); run without torchrun, and report this as a bug")


def _fit_retrying(model, spec: FitSpec, kw: dict) -> FitResult:
    """fit with spec.retry: one more run from the start at a lower rate when the first diverges or peaks early."""
    import torch

    checkpoint, log, extra = kw["checkpoint"], kw["log"], kw["extra"]
    start = (copy.deepcopy(model.state_dict()), {k: copy.deepcopy(m.state_dict()) for k, m in (extra or {}).items()})
    attempt = 0
    if checkpoint is not None and checkpoint.exists():  # resuming: in the run the checkpoint belongs to
        attempt = int(torch.load(checkpoint, map_location="cpu", weights_only=True).get("attempt", 0))
    first = None
    while True:
        lr = spec.lr / RETRY_LR_DIVISOR ** attempt
        try:
            r = _fit_once(model, replace(spec, lr=lr), attempt=attempt, **kw)
            why = "" if attempt or not peaked_early(r.chosen_epoch, spec.epochs) else \
                f"its best epoch was {r.chosen_epoch} of {spec.epochs}"
        except _Diverged as e:
            if attempt:
                raise EdgeKDError(f"{e}; it diverged at lr {spec.lr:g} and at {lr:g}: set a lower learning rate "
                                  "in the recipe") from None
            r, why = None, str(e).split(": ", 1)[-1].split(";")[0]
        if not why:
            if first is not None:
                r.info["first_run"] = first
                if peaked_early(r.chosen_epoch, spec.epochs):
                    r.info["peaked_early"] = True  # the lower rate did not help either: the report says so
            r.info["lr"] = lr
            return r
        if log:
            log(f"[{spec.desc}] {why} at lr {lr:g}: training again from the start at lr {lr / RETRY_LR_DIVISOR:g}")
        first = {"lr": lr, "why": why, **({"val_score": r.val_score, "chosen_epoch": r.chosen_epoch} if r else {})}
        model.load_state_dict(start[0])
        for k, m in (extra or {}).items():
            m.load_state_dict(start[1][k])
        if checkpoint is not None:
            checkpoint.unlink(missing_ok=True)
        attempt = 1


def _fit_once(model, spec: FitSpec, *, batches: Callable[[int, "object"], Iterable[Batch]], step: Step,
              validate: Callable[[object], float], extra: dict | None = None, train_mode=None, eval_mode=None,
              checkpoint: Path | None = None, log=None, device: str = "cpu", attempt: int = 0) -> FitResult:
    """One training run of spec.epochs, keeping the best epoch's weights.

    batches(epoch, generator): the epoch's batches, tuples of CPU tensors whose first axis is the batch
    (under torch.distributed each rank takes rows rank::world of every tensor). extra: more modules
    trained beside the model (a loss's projection), checkpointed with it. checkpoint: a file rewritten
    atomically after every epoch (model, optimizer, schedule, RNG, best weights); when it exists at the
    start, training resumes there and ends as an uninterrupted run would. Returns the model on the CPU."""
    import torch
    import torch.distributed as dist
    from tqdm import tqdm

    torch.manual_seed(spec.seed)
    g = torch.Generator().manual_seed(spec.seed)
    train_mode = train_mode or (lambda m: m.train())
    eval_mode = eval_mode or (lambda m: m.eval())
    extra = extra or {}
    distributed = dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
    rank, world = (dist.get_rank(), dist.get_world_size()) if distributed else (0, 1)
    model.to(device)
    for m in extra.values():
        m.to(device)
    params = [p for m in (model, *extra.values()) for p in m.parameters() if p.requires_grad]
    opt = _optimizer(spec, params)
    steps = spec.steps_per_epoch * max(spec.epochs, 1)
    if spec.schedule == "onecycle":
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=spec.lr, total_steps=steps, pct_start=0.15)
    else:
        warm = max(1, steps // 10)
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda s: min((s + 1) / warm, max(0.0, (steps - s) / (steps - warm + 1e-9))))
    forward = model
    if distributed:
        on_gpu = device.startswith("cuda")
        forward = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[torch.device(device).index or 0] if on_gpu else None)

    cast = (torch.autocast(torch.device(device).type, dtype=torch.bfloat16) if spec.precision == "bf16"
            else contextlib.nullcontext())

    def score() -> float:
        eval_mode(model)
        return float(validate(model))

    start = 0
    if checkpoint is not None and checkpoint.exists():
        ck = torch.load(checkpoint, map_location=device, weights_only=True)
        model.load_state_dict(ck["model"])
        for k, m in extra.items():
            m.load_state_dict(ck["extra"][k])
        opt.load_state_dict(ck["optimizer"])
        sched.load_state_dict(ck["scheduler"])
        g.set_state(ck["generator"].cpu())
        torch.set_rng_state(ck["torch_rng"].cpu())
        start, best, chosen, history, best_state = ck["epoch"], ck["best"], ck["chosen"], ck["history"], ck["best_state"]
        if log:
            log(f"[{spec.desc}] resuming from epoch {start} of {spec.epochs} ({checkpoint.name})")
    else:
        best = score()
        best_state, chosen, history = copy.deepcopy(model.state_dict()), 0, []
    bar = tqdm(total=spec.steps_per_epoch * spec.epochs, initial=start * spec.steps_per_epoch, desc=spec.desc,
               unit="step", leave=False, disable=None if rank == 0 else True)
    for epoch in range(start, spec.epochs):
        train_mode(model)
        total, count = 0.0, 0
        for i, batch in enumerate(batches(epoch, g)):
            if distributed:
                batch = tuple(t[rank::world] if t is not None else None for t in batch)
            batch = tuple(t.to(device) if t is not None else None for t in batch)
            with cast:
                loss = step(forward, batch).float()
            if not torch.isfinite(loss):
                bar.close()
                raise _Diverged(f"{spec.desc}: loss became {loss.item()} at epoch {epoch + 1}, step {i + 1}; "
                                "the learning rate is likely too high (lower it in the recipe); "
                                "the last good epoch's checkpoint is kept")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            n = len(batch[0])
            total += loss.item() * n
            count += n
            bar.update(1)
        val = score()
        history.append({"epoch": epoch + 1, "loss": total / max(count, 1), "val_score": val})
        bar.set_postfix(loss=f"{total / max(count, 1):.4f}", val=f"{val:.4f}")
        if val > best:  # strictly better: ties keep the earlier, cheaper-to-reach weights
            best, chosen, best_state = val, epoch + 1, copy.deepcopy(model.state_dict())
        if checkpoint is not None and rank == 0:
            save_checkpoint(checkpoint, {
                "model": model.state_dict(), "extra": {k: m.state_dict() for k, m in extra.items()},
                "optimizer": opt.state_dict(), "scheduler": sched.state_dict(), "generator": g.get_state(),
                "torch_rng": torch.get_rng_state(), "epoch": epoch + 1, "best": best, "chosen": chosen,
                "history": history, "best_state": best_state, "attempt": attempt})
    bar.close()
    if distributed:
        _check_ranks_agree(model, spec.desc)
    model.load_state_dict(best_state)
    model.to("cpu")
    for m in extra.values():
        m.to("cpu")
    eval_mode(model)
    return FitResult(val_score=best, chosen_epoch=chosen, history=history, precision=spec.precision)


def _optimizer(spec: FitSpec, params):
    import torch

    if spec.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=spec.lr, weight_decay=0.05 if spec.weight_decay is None else spec.weight_decay)
    return torch.optim.SGD(params, lr=spec.lr, momentum=0.9, nesterov=True,
                           weight_decay=5e-4 if spec.weight_decay is None else spec.weight_decay)


def resolve_precision(precision: str, device: str) -> str:
    """"auto" -> "bf16" where the device computes bfloat16 natively (a CUDA GPU that supports it, or a
    CPU with AVX512-BF16 or AMX: there bf16 matmuls run about twice as fast as float32 ones), else
    "fp32"; "fp32" and "bf16" are kept as given."""
    if precision != "auto":
        return precision
    import torch

    if device.startswith("cuda"):
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    native = getattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)() or \
        getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)()
    return "bf16" if native else "fp32"


def steps_for(n: int, batch_size: int) -> int:
    return max(1, math.ceil(n / batch_size))


def save_checkpoint(path: Path, state: dict) -> None:
    """Write a training checkpoint atomically (a killed write leaves the previous one intact)."""
    import torch

    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def predict(model, x: np.ndarray, *, batch_size: int = 500, bf16: bool = False) -> np.ndarray:
    """Outputs (float32, on the CPU) of a model on an array batch, without touching its train/eval
    flags (the caller set them); runs on the device its parameters are on."""
    import contextlib

    import torch

    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    cast = torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
    out = []
    with torch.no_grad(), cast:
        for i in range(0, len(x), batch_size):
            out.append(model(torch.from_numpy(np.ascontiguousarray(x[i:i + batch_size])).to(device)).float().cpu().numpy())
    return np.concatenate(out)


def accuracy(logits: np.ndarray, y: np.ndarray) -> float:
    return float((logits.argmax(1) == y).mean())
