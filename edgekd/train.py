"""The training loop shared by teacher training, the hard-label baseline, distillation and
quantization-aware distillation. Deterministic for a seed on CPU."""

from __future__ import annotations

import copy
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import EdgeKDError


@dataclass
class FitResult:
    val_accuracy: float
    chosen_epoch: int  # 1-based epoch whose weights were kept (best on validation)
    epochs: int
    history: list[dict] = field(default_factory=list)


def augment(x, generator):
    """Random affine jitter for digits: rotation +-10 deg, scale 0.9-1.1, shift +-2 px.
    x: (B, C, H, W) normalized; border padding keeps the background value."""
    import torch
    import torch.nn.functional as F

    b = x.shape[0]
    angle = (torch.rand(b, generator=generator) * 2 - 1) * math.radians(10)
    scale = 1 + (torch.rand(b, generator=generator) * 2 - 1) * 0.1
    shift = (torch.rand(b, 2, generator=generator) * 2 - 1) * (2 / 14)  # 2 px in [-1, 1] coordinates
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, padding_mode="border", align_corners=False)


def predict(model, x: np.ndarray, *, batch_size: int = 500) -> np.ndarray:
    """Logits (N, K) of a torch model in eval mode."""
    model.eval()
    return predict_mode(model, x, batch_size=batch_size)


def accuracy(logits: np.ndarray, y: np.ndarray) -> float:
    return float((logits.argmax(1) == y).mean())


def teacher_views(teacher, x: np.ndarray, *, views: int, seed: int, augment_on: bool, device: str = "cpu"):
    """`views` augmented copies of x and the teacher's logits on exactly those copies.
    Returns (xs (V, N, C, H, W), logits (V, N, K)). View 0 is the clean image. On CUDA the teacher's
    forward pass runs under bf16 autocast (logits are returned in float32)."""
    import torch

    g = torch.Generator().manual_seed(seed)
    teacher.to(device)
    xs, ts = [], []
    try:
        for v in range(views):
            xv = torch.from_numpy(x)
            if v > 0 and augment_on:
                xv = torch.cat([augment(xv[i:i + 512], g) for i in range(0, len(xv), 512)])
            xs.append(xv.numpy())
            teacher.eval()
            ts.append(predict_mode(teacher, xs[-1], bf16=device.startswith("cuda")))
    finally:
        teacher.to("cpu")
    return np.stack(xs), np.stack(ts)


def fit(model, *, x, y, x_val, y_val, epochs: int, lr: float, batch_size: int, seed: int,
        soft=None, temperature: float = 1.0, alpha: float = 0.0, augment_on: bool = False,
        desc: str = "train", train_mode=None, eval_mode=None, optimizer: str = "sgd",
        weight_decay: float | None = None, label_smoothing: float = 0.0,
        checkpoint: Path | None = None, log=None, device: str = "cpu") -> FitResult:
    """SGD (Nesterov momentum) or AdamW with a one-cycle schedule; keeps the weights of the epoch with
    the best validation accuracy (epoch 0, the starting weights, included).

    x: (N, C, H, W) or, with cached views, (V, N, C, H, W); soft: teacher logits (V, N, K) for the
    same views (distillation), or None (hard labels). Epoch e uses view e mod V, so student and
    teacher always see the same image (consistent teaching, Beyer et al. 2022).

    checkpoint: a file rewritten (atomically) after every epoch with model, optimizer, scheduler,
    RNG states and the best-so-far weights; when it exists at the start, training resumes from it and
    ends exactly as an uninterrupted run would. Under torch.distributed (torchrun), each rank takes
    its slice of every batch and DDP averages gradients; only rank 0 writes the checkpoint.
    The model trains on `device` and is returned on the CPU.
    """
    import torch
    import torch.distributed as dist
    import torch.nn.functional as F
    from tqdm import tqdm

    from .losses import kd_loss

    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    train_mode = train_mode or (lambda m: m.train())
    eval_mode = eval_mode or (lambda m: m.eval())
    distributed = dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
    rank, world = (dist.get_rank(), dist.get_world_size()) if distributed else (0, 1)
    multi = x.ndim == 5
    n = x.shape[1] if multi else x.shape[0]
    per_epoch = max(1, math.ceil(n / batch_size))
    steps = per_epoch * max(epochs, 1)
    model.to(device)
    params = [p for p in model.parameters() if p.requires_grad]
    if optimizer == "adamw":
        opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.05 if weight_decay is None else weight_decay)
    else:
        opt = torch.optim.SGD(params, lr=lr, momentum=0.9, nesterov=True,
                              weight_decay=5e-4 if weight_decay is None else weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.15)
    if distributed:
        on_gpu = device.startswith("cuda")
        forward = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[torch.device(device).index or 0] if on_gpu else None)
    else:
        forward = model
    yt = torch.from_numpy(y)

    def val_acc() -> float:
        eval_mode(model)
        return accuracy(predict_mode(model, x_val), y_val)

    start = 0
    if checkpoint is not None and checkpoint.exists():
        ck = torch.load(checkpoint, map_location=device, weights_only=True)
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["optimizer"])
        sched.load_state_dict(ck["scheduler"])
        g.set_state(ck["generator"].cpu())
        torch.set_rng_state(ck["torch_rng"].cpu())
        start, best, chosen, history, best_state = ck["epoch"], ck["best"], ck["chosen"], ck["history"], ck["best_state"]
        if log:
            log(f"[{desc}] resuming from epoch {start} of {epochs} ({checkpoint.name})")
    else:
        # Epoch 0 (the starting weights) competes too: fine-tuning never returns worse weights than it got.
        best = val_acc()
        best_state, chosen, history = copy.deepcopy(model.state_dict()), 0, []
    bar = tqdm(total=steps, initial=start * per_epoch, desc=desc, unit="step", leave=False,
               disable=None if rank == 0 else True)
    for epoch in range(start, epochs):
        train_mode(model)
        order = torch.randperm(n, generator=g)
        view = epoch % x.shape[0] if multi else None
        xe = torch.from_numpy(np.array(x[view] if multi else x))  # a private copy: x may be memory-mapped
        se = torch.from_numpy(np.array(soft[view])) if soft is not None else None
        total, count = 0.0, 0
        for i in range(0, n, batch_size):
            idx = order[i:i + batch_size]
            xb = xe[idx]
            if augment_on and not multi:
                xb = augment(xb, g)  # every rank draws the same numbers, so generators stay in step
            if distributed:
                idx, xb = idx[rank::world], xb[rank::world]
            yb = yt[idx].to(device)
            out = forward(xb.to(device))
            if soft is not None:
                loss = kd_loss(out, se[idx].to(device), yb, temperature=temperature, alpha=alpha)
            else:
                loss = F.cross_entropy(out, yb, label_smoothing=label_smoothing)
            if not torch.isfinite(loss):
                raise EdgeKDError(f"{desc}: loss became {loss.item()} at epoch {epoch + 1}, step {i // batch_size + 1}; "
                                  "the learning rate is likely too high (lower it in the recipe); "
                                  "the last good epoch's checkpoint is kept")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * len(idx)
            count += len(idx)
            bar.update(1)
        acc = val_acc()
        history.append({"epoch": epoch + 1, "loss": total / count, "val_accuracy": acc})
        bar.set_postfix(loss=f"{total / count:.3f}", val=f"{acc:.4f}")
        if acc > best:  # strictly better: ties keep the earlier, cheaper-to-reach weights
            best, chosen, best_state = acc, epoch + 1, copy.deepcopy(model.state_dict())
        if checkpoint is not None and rank == 0:
            save_checkpoint(checkpoint, {"model": model.state_dict(), "optimizer": opt.state_dict(),
                                         "scheduler": sched.state_dict(), "generator": g.get_state(),
                                         "torch_rng": torch.get_rng_state(), "epoch": epoch + 1, "best": best,
                                         "chosen": chosen, "history": history, "best_state": best_state})
    bar.close()
    model.load_state_dict(best_state)
    model.to("cpu")
    eval_mode(model)
    return FitResult(val_accuracy=best, chosen_epoch=chosen, epochs=epochs, history=history)


def save_checkpoint(path: Path, state: dict) -> None:
    """Write a training checkpoint atomically (a killed write leaves the previous one intact)."""
    import torch

    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def predict_mode(model, x: np.ndarray, *, batch_size: int = 500, bf16: bool = False) -> np.ndarray:
    """Logits (float32, on the CPU) without touching the module's train/eval flags (the caller set
    them); runs on the device the model's parameters are on."""
    import contextlib

    import torch

    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    cast = torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
    out = []
    with torch.no_grad(), cast:
        for i in range(0, len(x), batch_size):
            out.append(model(torch.from_numpy(x[i:i + batch_size]).to(device)).float().cpu().numpy())
    return np.concatenate(out)
