"""Data sources: one signature, `source(spec: DataSpec, *, seed: int, base: Path) -> Splits`, each
registered in `sources` by the name a recipe's `data.source` gives. A source returns train /
validation / test splits plus the preprocessing an app must repeat (written to manifest.json)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import InputError
from ..registry import Registry

sources: Registry = Registry("data source", error=InputError)


@dataclass
class Splits:
    """x_*: images as normalized float32 (N, C, H, W) arrays, or texts as lists of str.
    y_*: int64 label indices (N,), or None for unlabeled text (embedding distillation)."""
    x_train: np.ndarray | list
    y_train: np.ndarray | None
    x_val: np.ndarray | list
    y_val: np.ndarray | None
    x_test: np.ndarray | list
    y_test: np.ndarray | None
    labels: list[str]  # class names by label index; [] when unlabeled
    kind: str  # "image" or "text"
    # How a raw input becomes the model's input, as data an app can follow step by step (manifest.json).
    preprocessing: dict = field(default_factory=dict)
    origin: str = ""  # where the data comes from, one line for the report
    augment: str = "none"  # the resolved training augmentation policy (edgekd.data.augment)

    @property
    def input_shape(self) -> tuple[int, ...]:
        """(C, H, W) for images; () for text."""
        return tuple(self.x_train.shape[1:]) if self.kind == "image" else ()

    @property
    def num_classes(self) -> int:
        return len(self.labels)

    def digest(self) -> str:
        """sha256 of what the splits hold (texts or array bytes, labels): part of the training stages'
        cache keys, so a source whose contents changed on disk (another Python, other installed
        packages, an edited dataset) is not served stale teacher targets."""
        import hashlib

        h = hashlib.sha256()
        for x in (self.x_train, self.y_train, self.x_val, self.y_val, self.x_test, self.y_test):
            if x is None:
                h.update(b"none")
            elif isinstance(x, np.ndarray):
                h.update(str((x.dtype, x.shape)).encode())
                h.update(np.ascontiguousarray(x).data)
            else:
                h.update(str(len(x)).encode())
                for t in x:
                    h.update(t.encode("utf-8", "surrogatepass"))
                    h.update(b"\0")
        h.update("\0".join(map(str, self.labels)).encode())
        return h.hexdigest()


def load_data(spec, *, seed: int, base: Path) -> Splits:
    """The splits of `spec.source`; paths in `spec` are relative to `base` (the recipe's folder)."""
    _register_builtin()
    return sources.get(spec.source)(spec, seed=seed, base=Path(base))


def _register_builtin() -> None:
    # Importing a source module registers it; they import their heavy libraries inside their functions.
    from . import arrays, hf_dataset, image_folder, mnist, text  # noqa: F401
