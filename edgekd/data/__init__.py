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
    # prompt/response text (text generation): {"train": [...], "val": [...], "test": [...]}, the response
    # to each x_* text in order; None for every other data
    responses: dict | None = None

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
        if self.responses is not None:  # (absent from the hash of other data, so their digests stay as they were)
            for part in ("train", "val", "test"):
                h.update(f"responses {part} {len(self.responses[part])}".encode())
                for t in self.responses[part]:
                    h.update(t.encode("utf-8", "surrogatepass"))
                    h.update(b"\0")
        return h.hexdigest()


def load_data(spec, *, seed: int, base: Path) -> Splits:
    """The splits of `spec.source`; paths in `spec` are relative to `base` (the recipe's folder)."""
    _register_builtin()
    splits = sources.get(spec.source)(spec, seed=seed, base=Path(base))
    check_splits(splits, where=f"data.source '{spec.source}'")
    return splits


def check_splits(s, *, where: str) -> None:
    """What a source returns is checked before anything trains, a registered plugin's like a built-in's:
    one line naming the field and what it should be (see `Splits`; image preprocessing steps as the
    manifest schema's `image_preprocessing`, built with edgekd.data._images' helpers)."""
    def bad(field_: str, want: str, got) -> None:
        raise InputError(f"{where} returned {field_} = {got}; it must be {want} (the Splits contract, edgekd.data)")

    if not isinstance(s, Splits):
        bad("a " + type(s).__name__, "an edgekd.data.Splits", "that")
    if s.kind not in ("image", "text"):
        bad("kind", "'image' or 'text'", repr(s.kind))
    for part in ("train", "val", "test"):
        x, y = getattr(s, f"x_{part}"), getattr(s, f"y_{part}")
        if s.kind == "image":
            if not isinstance(x, np.ndarray) or x.ndim != 4 or x.dtype != np.float32:
                bad(f"x_{part}", "a float32 array (N, C, H, W)",
                    f"{type(x).__name__} {getattr(x, 'dtype', '')} {getattr(x, 'shape', '')}".strip())
            if x.shape[1:] != s.x_train.shape[1:]:
                bad(f"x_{part} of shape {x.shape}", f"images of the training split's shape {s.x_train.shape[1:]}", "that")
        elif not isinstance(x, list) or not all(isinstance(t, str) for t in x[:1000]):
            bad(f"x_{part}", "a list of str", type(x).__name__)
        if y is not None:
            y = np.asarray(y)
            if y.ndim != 1 or len(y) != len(x) or (len(y) and (y.dtype.kind not in "iu" or y.min() < 0
                                                                or y.max() >= max(len(s.labels), 1))):
                bad(f"y_{part}", f"{len(x)} integer labels in [0, {len(s.labels)}) (one per input, indexing labels)",
                    f"{y.dtype} {y.shape}")
    if s.responses is not None:
        if s.kind != "text" or not isinstance(s.responses, dict) or set(s.responses) != {"train", "val", "test"}:
            bad("responses", "None or {'train', 'val', 'test'} lists of str beside text inputs",
                type(s.responses).__name__ if s.kind == "text" else f"responses with kind {s.kind!r}")
        for part in ("train", "val", "test"):
            r, x = s.responses[part], getattr(s, f"x_{part}")
            if not isinstance(r, list) or len(r) != len(x) or not all(isinstance(t, str) for t in r):
                bad(f"responses['{part}']", f"a list of {len(x)} str (one response per x_{part} text)",
                    f"{type(r).__name__} of {len(r) if isinstance(r, list) else '?'}")
    if s.kind == "image":
        from ..manifest import check_fragment

        check_fragment(s.preprocessing, "image_preprocessing", where=f"{where}'s preprocessing")


def _register_builtin() -> None:
    # Importing a source module registers it; they import their heavy libraries inside their functions.
    from . import arrays, code, hf_dataset, image_folder, mnist, text  # noqa: F401
