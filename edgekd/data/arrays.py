"""The "arrays" source (images and labels in NumPy files), and the splitting, labeling and path rules
every source shares: `data_path`, `split_indices`, `encode_labels`."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import InputError
from . import Splits, sources

SPLITS = ("train", "val", "test")


def data_path(spec, base: Path, *, fix: str, key: str = "path") -> Path:
    """spec.<key> (a path) resolved against `base`, the recipe's folder; `fix` says what to give instead."""
    value = getattr(spec, key)
    if not value:
        raise InputError(f"data.source = '{spec.source}' needs data.{key}: {fix}")
    p = Path(value).expanduser()
    p = p if p.is_absolute() else Path(base) / p
    if not p.exists():
        raise InputError(f"data.{key} '{p}' does not exist; {fix}")
    return p


def split_indices(sizes: dict[str, int], spec, *, seed: int, where: str) -> dict[str, tuple[str, np.ndarray]]:
    """Which examples make each split. `sizes`: how many examples each split the data comes with has
    ("train" always; "val" / "test" when the data has them). Missing splits are carved from a
    permutation of train drawn with `seed`: train first, then val, then test, so a seeded split of one
    pool is `order[:n_train]`, `order[n_train:n_train + n_val]`, ... data.n_* of 0 means val_fraction /
    test_fraction of the pool for a carved split, the whole split for a given one, and for train every
    example the carved splits leave. Returns {split: (the split it is drawn from, indices)}."""
    rng = np.random.default_rng(seed)
    pool = sizes["train"]
    carve = [s for s in ("val", "test") if not sizes.get(s)]
    fraction = {"val": spec.val_fraction, "test": spec.test_fraction}
    want = {s: getattr(spec, f"n_{s}") or max(1, round(fraction[s] * pool)) for s in carve}
    n_train = spec.n_train or pool - sum(want.values())
    need = n_train + sum(want.values())
    if need > pool or n_train < 1:
        keys = " + ".join(f"n_{s}" for s in ("train", *carve))
        values = " + ".join(str(v) for v in (n_train, *want.values()))
        raise InputError(f"data.{keys} = {values} {'exceeds' if need > pool else 'leaves no training examples of'} "
                         f"the {pool} {'training ' if len(carve) < 2 else ''}examples of {where}; lower them")
    order = rng.permutation(pool)
    out = {"train": ("train", order[:n_train])}
    at = n_train
    for s in carve:
        out[s] = ("train", order[at:at + want[s]])
        at += want[s]
    for s in ("val", "test"):
        if s in carve:
            continue
        n = getattr(spec, f"n_{s}")
        if n > sizes[s]:
            raise InputError(f"data.n_{s} = {n} exceeds the {sizes[s]} examples of the {s} split of {where}; lower it")
        out[s] = (s, np.sort(rng.permutation(sizes[s])[:n]) if n else np.arange(sizes[s]))
    return out


def encode_labels(values: dict[str, object], *, where: str, names: list[str] | None = None
                  ) -> tuple[dict[str, np.ndarray], list[str]]:
    """Label values per split -> (int64 indices per split, class names). Without `names`, the classes
    are the sorted unique values (integers numerically, else as strings), so indices do not depend on
    row order; with `names` (a dataset's own class names), integer values index them directly."""
    arrays = {s: _label_array(v, where) for s, v in values.items()}
    every = np.concatenate(list(arrays.values()))
    if names is not None:
        names = [str(n) for n in names]
        if every.dtype.kind in "iu":
            bad = every[(every < 0) | (every >= len(names))]
            if len(bad):
                raise InputError(f"label {bad[0]} in {where} is outside the {len(names)} class names; "
                                 "give one name per class index")
            return {s: a.astype(np.int64) for s, a in arrays.items()}, names
        unknown = sorted(set(every.tolist()) - set(names))
        if unknown:
            raise InputError(f"label {unknown[0]!r} in {where} is not among its class names {names}; add it")
        index = {n: i for i, n in enumerate(names)}
        return {s: np.array([index[v] for v in a.tolist()], np.int64) for s, a in arrays.items()}, names
    uniq = np.unique(every)
    if len(uniq) < 2:
        raise InputError(f"{where} has a single label ({uniq.tolist()}); classification needs at least two classes")
    return ({s: np.searchsorted(uniq, a).astype(np.int64) for s, a in arrays.items()},
            [str(v) for v in uniq.tolist()])


def _label_array(values, where: str) -> np.ndarray:
    """A 1-D array of integer or string labels."""
    if not isinstance(values, np.ndarray):
        values = list(values)
        if any(v is None for v in values):
            raise InputError(f"{where} has an empty label; give every example a label")
        if not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in values):
            values = [str(v) for v in values]  # mixed or non-integer labels: compared as names
    a = np.asarray(values).reshape(-1)
    if a.dtype.kind == "f" and np.all(np.isfinite(a)) and np.all(a == np.round(a)):
        a = a.astype(np.int64)
    if a.dtype.kind == "S":
        a = a.astype(str)
    if a.dtype.kind == "b":
        a = a.astype(np.int64)
    if a.dtype.kind not in "iuU":
        raise InputError(f"labels in {where} are {a.dtype} values; give integer or string labels")
    return a


def images_nhwc(x: np.ndarray, where: str) -> np.ndarray:
    """Images (N, H, W), (N, C, H, W) or (N, H, W, C) -> (N, H, W, C). The channel axis is the one of
    size 1, 3 or 4 of axes 1 and 3; when both or neither are, the smaller of the two."""
    if x.ndim == 3:
        return x[..., None]
    if x.ndim != 4:
        raise InputError(f"images in {where} have shape {x.shape}; give (N, H, W), (N, H, W, C) or (N, C, H, W)")
    first, last = x.shape[1] in (1, 3, 4), x.shape[3] in (1, 3, 4)
    if first != last:
        channels_first = first
    elif x.shape[1] != x.shape[3]:
        channels_first = x.shape[1] < x.shape[3]
    else:
        raise InputError(f"images in {where} have shape {x.shape}: the channel axis is ambiguous; store them "
                         "as (N, H, W, C)")
    return x.transpose(0, 2, 3, 1) if channels_first else x


def _load(path: Path, what: str):
    try:
        return np.load(path, allow_pickle=False)  # no pickles: loading data never runs code
    except ValueError as e:
        if "allow_pickle" in str(e):
            raise InputError(f"{what} in {path} holds Python objects; save numeric images and integer or "
                             "fixed-width string labels (np.array(names, dtype=str))") from None
        raise InputError(f"{path} is not a NumPy file ({e}); save it with np.save / np.savez") from None
    except (OSError, EOFError) as e:
        raise InputError(f"{path} cannot be read as a NumPy file ({e}); save it with np.save / np.savez") from None


def _member(z, key: str, path: Path) -> np.ndarray:
    try:
        return z[key]
    except ValueError:  # an object array: np.load refuses to unpickle it
        raise InputError(f"{key} in {path} holds Python objects; save numeric images and integer or "
                         "fixed-width string labels (np.array(names, dtype=str))") from None


def _read(spec, base: Path) -> tuple[Path, dict[str, tuple[np.ndarray, np.ndarray]], list[str] | None]:
    """{split: (images, labels)} as stored, and the file's class names when it has them."""
    fix = ("give a .npz with arrays x and y (or x_train, y_train and optionally x_val, y_val, x_test, "
           "y_test), or a .npy of images with data.labels_path = a .npy of labels")
    path = data_path(spec, base, fix=fix)
    if path.suffix == ".npy":
        if not spec.labels_path:
            raise InputError(f"data.path '{path}' is a .npy of images; set data.labels_path to a .npy of their labels")
        labels = data_path(spec, base, key="labels_path", fix="give a .npy of one label per image")
        return path, {"train": (_load(path, "the images"), _load(labels, "the labels"))}, None
    if path.suffix != ".npz":
        raise InputError(f"data.path '{path}' is not a .npz or .npy file; {fix}")
    z = _load(path, "the archive")
    if not hasattr(z, "files"):
        raise InputError(f"{path} is a single array, not a .npz archive; {fix}")
    with z:
        keys = set(z.files)
        names = _member(z, "label_names", path).tolist() if "label_names" in keys else None
        if {"x", "y"} <= keys:
            return path, {"train": (_member(z, "x", path), _member(z, "y", path))}, names
        if {"x_train", "y_train"} <= keys:
            out = {}
            for s in SPLITS:
                have = {f"x_{s}", f"y_{s}"} & keys
                if len(have) == 1:
                    raise InputError(f"{path} has {have.pop()} but not its pair; store x_{s} and y_{s} together")
                if have:
                    out[s] = (_member(z, f"x_{s}", path), _member(z, f"y_{s}", path))
            return path, out, names
    raise InputError(f"{path} holds {sorted(keys)}; {fix}")


def to_pixels(x: np.ndarray) -> np.ndarray:
    """Integer images whose values all lie in 0-255 are 8-bit pixels, whatever their stored dtype."""
    if x.dtype.kind in "iu" and x.dtype != np.uint8 and x.size and x.min() >= 0 and x.max() <= 255:
        return x.astype(np.uint8)
    return x


@sources.register("arrays")
def arrays(spec, *, seed: int, base: Path) -> Splits:
    """Images and labels from NumPy files: a .npz with x / y (split here with `seed`) or with
    x_train / y_train [x_val / y_val] [x_test / y_test] (a missing split is carved from train), or a
    .npy of images with data.labels_path. Images (N, H, W), (N, H, W, C) or (N, C, H, W), uint8 0-255
    or float; labels integers or strings; optional `label_names` in the .npz."""
    from ._images import prepare_images
    from .augment import resolve_policy

    path, stored, names = _read(spec, base)
    for s, (x, y) in stored.items():
        if len(x) != len(y):
            raise InputError(f"{path} has {len(x)} {s} images but {len(y)} labels; give one label per image")
        if y.ndim > 1 and y.size != len(y):
            raise InputError(f"{s} labels in {path} have shape {y.shape}; give one label per image, shape (N,)")
        if x.dtype.kind not in "uif" or len(x) == 0:
            raise InputError(f"{s} images in {path} are {len(x)} {x.dtype} values; give numeric images")
    where = str(path)
    stored = {s: (to_pixels(x), y) for s, (x, y) in stored.items()}
    idx = split_indices({s: len(x) for s, (x, _) in stored.items()}, spec, seed=seed, where=where)
    images = {s: images_nhwc(stored[src][0], where)[i] for s, (src, i) in idx.items()}
    y, labels = encode_labels({s: stored[src][1].reshape(-1)[i] for s, (src, i) in idx.items()}, where=where,
                              names=names)
    _, h, w, c = images["train"].shape
    dtype = images["train"].dtype
    raw = (f"an image as an (H, W, C) = ({h}, {w}, {c}) {dtype} array, "
           + ("pixel values 0-255" if dtype == np.uint8 else "values on the scale of the stored arrays"))
    x, pre = prepare_images(images, spec, raw=raw, where=where)
    given = [s for s in stored if s != "train"]
    origin = (f"{path.name}: {sum(len(v[0]) for v in stored.values())} images {h}x{w}x{c}, {len(labels)} classes; "
              + (f"its own {', '.join(['train', *given])} splits" if given else f"split with seed {seed}"))
    return Splits(x["train"], y["train"], x["val"], y["val"], x["test"], y["test"], labels=labels, kind="image",
                  preprocessing=pre, origin=origin,
                  augment=resolve_policy(spec.augment, kind="image", input_shape=x["train"].shape[1:]))
