"""The "image-folder" source: one sub-folder of images per class, optionally under train/, val/ (or
valid/, validation/) and test/ folders. Images are decoded with Pillow; only the images a split uses
are decoded."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import InputError
from . import Splits, sources
from .arrays import data_path, split_indices

SPLIT_DIRS = {"train": ("train",), "val": ("val", "valid", "validation"), "test": ("test",)}


def _subdirs(folder: Path) -> list[Path]:
    return sorted(d for d in folder.iterdir() if d.is_dir() and not d.name.startswith("."))


def _layout(root: Path) -> dict[str, Path]:
    """{split: folder of class folders}: train/, val/, test/ when the root holds only split folders."""
    names = {d.name for d in _subdirs(root)}
    if "train" not in names or not names <= {n for ns in SPLIT_DIRS.values() for n in ns}:
        return {"train": root}
    out = {}
    for split, candidates in SPLIT_DIRS.items():
        hit = [n for n in candidates if n in names]
        if len(hit) > 1:
            raise InputError(f"{root} has both {hit[0]}/ and {hit[1]}/; keep one validation folder")
        if hit:
            out[split] = root / hit[0]
    return out


def _files(folder: Path) -> dict[str, list[Path]]:
    """{class name: its image files, sorted} for one folder of class folders."""
    from PIL import Image

    exts = {e for e, fmt in Image.registered_extensions().items() if fmt in Image.OPEN}
    classes = {}
    for d in _subdirs(folder):
        files = sorted(p for p in d.iterdir() if p.is_file() and p.suffix.lower() in exts and not p.name.startswith("."))
        if not files:
            raise InputError(f"class folder '{d}' has no images (.png, .jpg, ...); add images or remove the folder")
        classes[d.name] = files
    return classes


def _decode(path: Path):
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im.load()  # decode now, so the file can close; a truncated file fails here
            return im
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise InputError(f"image '{path}' does not decode ({e}); replace or remove the file") from None


@sources.register("image-folder")
def image_folder(spec, *, seed: int, base: Path) -> Splits:
    """Class names are the sub-folder names, sorted; colors per data.color ("auto": grayscale when every
    image is, else RGB); sizes made equal by data.resize / data.crop."""
    from ._images import prepare_images
    from .augment import resolve_policy

    fix = "give a folder with one sub-folder of images per class (optionally under train/, val/, test/)"
    root = data_path(spec, base, fix=fix)
    if not root.is_dir():
        raise InputError(f"data.path '{root}' is not a folder; {fix}")
    layout = _layout(root)
    found = {split: _files(folder) for split, folder in layout.items()}
    classes = sorted({c for per_class in found.values() for c in per_class})
    if len(classes) < 2:
        raise InputError(f"{root} has {len(classes)} class folder{'s' if len(classes) != 1 else ''} "
                         f"({', '.join(classes) or 'none'}); {fix}, at least two classes")
    index = {c: i for i, c in enumerate(classes)}
    items = {split: [(p, index[c]) for c, files in per_class.items() for p in files]
             for split, per_class in found.items()}
    idx = split_indices({s: len(v) for s, v in items.items()}, spec, seed=seed, where=str(root))
    picked = {s: [items[src][i] for i in ii] for s, (src, ii) in idx.items()}
    images = {s: [_decode(p) for p, _ in rows] for s, rows in picked.items()}
    x, pre = prepare_images(images, spec, raw="an image file decoded with Pillow (as in the class folders)",
                            where=str(root))
    y = {s: np.array([label for _, label in rows], np.int64) for s, rows in picked.items()}
    n = sum(len(v) for v in items.values())
    own = [s for s in layout if s != "train"]
    origin = (f"{root.name}/: {n} images in {len(classes)} class folders; "
              + (f"its own {', '.join(['train', *own])} folders" if own else f"split with seed {seed}"))
    return Splits(x["train"], y["train"], x["val"], y["val"], x["test"], y["test"], labels=classes, kind="image",
                  preprocessing=pre, origin=origin,
                  augment=resolve_policy(spec.augment, kind="image", input_shape=x["train"].shape[1:]))
