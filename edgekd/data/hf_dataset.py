"""The "hf-dataset" source: a Hugging Face dataset, from a folder written by `save_to_disk` (Dataset or
DatasetDict), local data files `datasets.load_dataset` reads, or a hub id (online only). Images in
data.image_field (decoded by `datasets` into PIL images), or texts in data.text_field; labels in
data.label_field, named by the column's ClassLabel when it has one."""

from __future__ import annotations

import re
from pathlib import Path

from ..errors import InputError
from . import Splits, sources
from .arrays import encode_labels, split_indices

VAL_NAMES = ("validation", "valid", "val")
BUILDERS = {".csv": "csv", ".json": "json", ".jsonl": "json", ".parquet": "parquet", ".arrow": "arrow",
            ".txt": "text"}


def _first_line(e: Exception) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0]


def _load(spec, base: Path):
    """(Dataset or DatasetDict, where): saved folder, local files, or a hub id."""
    import datasets

    if not spec.path:
        raise InputError("data.source = 'hf-dataset' needs data.path: a folder written by save_to_disk, data "
                         "files, or a hub id")
    p = Path(spec.path).expanduser()
    p = p if p.is_absolute() else Path(base) / p
    try:
        if p.is_dir() and any((p / f).is_file() for f in ("dataset_dict.json", "state.json")):
            return datasets.load_from_disk(str(p)), str(p)
        if p.is_dir():
            return datasets.load_dataset(str(p)), str(p)
        if p.is_file():
            if p.suffix.lower() not in BUILDERS:
                raise InputError(f"data.path '{p}' is not a dataset file ({', '.join(BUILDERS)}); give a folder "
                                 "written by save_to_disk or data files")
            return datasets.load_dataset(BUILDERS[p.suffix.lower()], data_files=str(p)), str(p)
    except InputError:
        raise
    except Exception as e:  # datasets raises many types for unreadable data; say which file and why
        raise InputError(f"data.path '{p}' cannot be read as a dataset ({_first_line(e)}); give a folder written "
                         "by Dataset.save_to_disk or data files") from None
    # a hub id looks like NAME or OWNER/NAME; anything else is a local path that is missing
    if spec.path.startswith((".", "/", "~")) or not re.fullmatch(r"[\w.-]+(/[\w.-]+)?", spec.path):
        raise InputError(f"data.path '{p}' does not exist; give a folder written by save_to_disk, data files, "
                         "or a hub id such as 'owner/name'")
    try:
        return datasets.load_dataset(spec.path), spec.path
    except Exception as e:
        raise InputError(f"data.path '{spec.path}' is no local folder ({p} does not exist) and the hub did not "
                         f"serve it ({_first_line(e)}); give a folder written by save_to_disk") from None


def _splits(ds, spec, where: str) -> dict:
    """{"train": Dataset, "val": ..., "test": ...} by the recipe's split names; absent ones are omitted."""
    import datasets

    if isinstance(ds, datasets.Dataset):
        return {"train": ds}
    names = list(ds.keys())
    if spec.train_split not in names:
        raise InputError(f"{where} has no split '{spec.train_split}' (it has {', '.join(names)}); set "
                         "data.train_split")
    out = {"train": ds[spec.train_split]}
    for split, given, usual in (("val", spec.val_split, VAL_NAMES), ("test", spec.test_split, ("test",))):
        if given and given not in names:
            raise InputError(f"{where} has no split '{given}' (it has {', '.join(names)}); set data.{split}_split")
        hit = given or next((n for n in usual if n in names), "")
        if hit and len(ds[hit]):
            out[split] = ds[hit]
    return out


def _image(value):
    """A PIL image or an array; undecoded {"bytes": ...} entries are decoded here."""
    import io

    import numpy as np

    from .arrays import to_pixels

    if hasattr(value, "mode"):
        return value
    if isinstance(value, dict) and value.get("bytes"):
        from PIL import Image

        with Image.open(io.BytesIO(value["bytes"])) as im:
            im.load()
            return im
    a = np.asarray(value)
    return to_pixels(a[None])[0]  # whole numbers 0-255 in a wider integer type are 8-bit pixels


@sources.register("hf-dataset")
def hf_dataset(spec, *, seed: int, base: Path) -> Splits:
    """Splits by data.train_split / val_split / test_split ("" = validation, valid or val, and test);
    absent ones are carved from train with `seed`."""
    from ._images import prepare_images
    from .augment import resolve_policy
    from .text import labels_of, responses_of, text_splits, texts_of

    ds, where = _load(spec, base)
    parts = _splits(ds, spec, where)
    columns = parts["train"].column_names
    field = spec.image_field if spec.image_field in columns else spec.text_field if spec.text_field in columns else None
    if field is None:
        raise InputError(f"{where} has no '{spec.image_field}' or '{spec.text_field}' column (it has "
                         f"{', '.join(columns)}); set data.image_field or data.text_field")
    for s, d in parts.items():
        if field not in d.column_names:
            raise InputError(f"the {s} split of {where} has no '{field}' column; give every split the same columns")
    has_label = [spec.label_field in d.column_names for d in parts.values()]
    if any(has_label) and not all(has_label):
        raise InputError(f"some splits of {where} have no '{spec.label_field}' column; label every split or none")
    feature = parts["train"].features.get(spec.label_field)
    names = list(feature.names) if hasattr(feature, "names") else None  # a ClassLabel's class names
    n = sum(len(d) for d in parts.values())
    own = [s for s in parts if s != "train"]
    origin = (f"{Path(where).name if Path(where).exists() else where}: {n} rows; "
              + (f"its own {', '.join(['train', *own])} splits" if own else f"split with seed {seed}"))

    if field == spec.text_field and field != spec.image_field:
        stored, responses = {}, {}
        for s, d in parts.items():
            keep = (field, spec.label_field, spec.response_field)
            rows = d.select_columns([c for c in keep if c and c in d.column_names]).to_list()
            stored[s] = (texts_of(rows, spec, f"the {s} split of {where}"),
                         labels_of(rows, spec, f"the {s} split of {where}", required=False))
            responses[s] = responses_of(rows, spec, f"the {s} split of {where}")
        if len({lab is None for _, lab in stored.values()}) > 1:
            raise InputError(f"some splits of {where} are labeled and some are not; label every split or none")
        return text_splits(stored, spec, seed=seed, where=where, origin=origin, names=names,
                           responses=responses if spec.response_field else None)

    if not all(has_label):
        raise InputError(f"{where} has no '{spec.label_field}' column (it has {', '.join(columns)}); set "
                         "data.label_field to the column of class labels")
    idx = split_indices({s: len(d) for s, d in parts.items()}, spec, seed=seed, where=where)
    picked = {s: parts[src].select(ii) for s, (src, ii) in idx.items()}
    images = {s: [_image(v) for v in d[field]] for s, d in picked.items()}
    y, labels = encode_labels({s: list(d[spec.label_field]) for s, d in picked.items()}, where=where, names=names)
    x, pre = prepare_images(images, spec, raw=f"an image as in the dataset's '{field}' column, decoded with Pillow",
                            where=where)
    return Splits(x["train"], y["train"], x["val"], y["val"], x["test"], y["test"], labels=labels, kind="image",
                  preprocessing=pre, origin=origin,
                  augment=resolve_policy(spec.augment, kind="image", input_shape=x["train"].shape[1:]))
