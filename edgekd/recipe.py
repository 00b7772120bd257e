"""Recipes: one frozen dataclass per section, validated when built, loaded from TOML, overridden with
typed `key=value` strings. A build writes the fully resolved recipe as `recipe.lock.toml`."""

from __future__ import annotations

import tomllib
import typing
from dataclasses import dataclass, field, fields, is_dataclass, replace
from pathlib import Path

from .errors import RecipeError
from .registry import closest

OPTIMIZERS = ("sgd", "adamw")
# image-classification: the MNIST pipeline; embedding / classification: a Hugging Face text encoder
TASKS = ("image-classification", "embedding", "classification")
TEXT_SOURCES = ("stdlib-docstrings", "csv", "jsonl")
DEFAULT_RECIPE = Path(__file__).resolve().parent.parent / "examples" / "mnist" / "edgekd.toml"


def _check(cond: bool, key: str, want: str, got) -> None:
    if not cond:
        raise RecipeError(f"{key} must be {want}, got {got!r}")


@dataclass(frozen=True)
class DataSpec:
    source: str = "mnist"
    n_train: int = 3500
    n_val: int = 500  # validation slice, used to choose the checkpoint (best vs last)
    n_test: int = 1000
    augment: bool = True
    # text tasks
    path: str = ""  # a CSV or JSONL file of (text, label) rows for source = "csv" / "jsonl"
    text_field: str = "text"
    label_field: str = "label"
    max_length: int = 128  # tokens per text (longer texts are truncated)
    # source = "stdlib-docstrings": also train on the comment blocks of the training modules
    train_comments: bool = False

    def __post_init__(self):
        for k in ("n_train", "n_val", "n_test"):
            _check(getattr(self, k) > 0, f"data.{k}", "> 0", getattr(self, k))
        _check(8 <= self.max_length <= 4096, "data.max_length", "in [8, 4096]", self.max_length)
        if self.source in ("csv", "jsonl"):
            _check(bool(self.path), "data.path", f"a {self.source.upper()} file for data.source = '{self.source}'", self.path)
        _check(not self.train_comments or self.source == "stdlib-docstrings", "data.train_comments",
               "false unless data.source = 'stdlib-docstrings'", self.train_comments)


@dataclass(frozen=True)
class TeacherSpec:
    arch: str = "mnist-teacher"
    checkpoint: str = ""  # a state_dict for `arch`, loaded with weights_only=True
    torchscript: str = ""  # a TorchScript file
    factory: str = ""  # "package.module:function" returning an nn.Module
    # A Hugging Face model folder, hub id, or "package:NAME/SUBDIR" (a model folder inside an installed
    # Python package), loaded with from_pretrained; its code runs only with trust_remote_code = true.
    hf: str = ""
    trust_remote_code: bool = False
    epochs: int = 8
    optimizer: str = "adamw"
    lr: float = 0.003
    batch_size: int = 64
    label_smoothing: float = 0.0

    def __post_init__(self):
        _check(self.optimizer in OPTIMIZERS, "teacher.optimizer", " or ".join(map(repr, OPTIMIZERS)), self.optimizer)
        _check(0 <= self.label_smoothing < 1, "teacher.label_smoothing", "in [0, 1)", self.label_smoothing)
        given = [k for k in ("checkpoint", "torchscript", "factory", "hf") if getattr(self, k)]
        _check(len(given) <= 1, "teacher", "given by at most one of checkpoint, torchscript, factory, hf", given)
        if self.factory:
            _check(":" in self.factory, "teacher.factory", "'package.module:function'", self.factory)
        _check(self.epochs >= 0, "teacher.epochs", ">= 0", self.epochs)
        _check(self.lr > 0, "teacher.lr", "> 0", self.lr)
        _check(self.batch_size > 0, "teacher.batch_size", "> 0", self.batch_size)

    @property
    def source(self) -> str:
        for k in ("checkpoint", "torchscript", "factory", "hf"):
            if getattr(self, k):
                return k
        return "train"


@dataclass(frozen=True)
class StudentSpec:
    """Image tasks: `arch` names a registered architecture. Text tasks: arch = "layer-subset" keeps
    `layers` of the teacher's layers (embeddings and layers copied, the DistilBERT recipe), or
    arch = "narrow" builds a fresh encoder of `layers` x `hidden` (heads, intermediate) whose output
    is projected to the teacher's width."""
    arch: str = "mnist-student"
    layers: int = 3
    keep_layers: str = ""  # layer-subset: teacher layers to copy, 0-based ("0,2,4"); default every other
    hidden: int = 256
    heads: int = 4
    intermediate: int = 1024

    def __post_init__(self):
        _check(self.layers >= 1, "student.layers", ">= 1", self.layers)
        _check(self.hidden >= 8 and self.heads >= 1 and self.hidden % self.heads == 0, "student.hidden",
               "a multiple of student.heads (>= 8)", (self.hidden, self.heads))
        _check(self.intermediate >= 8, "student.intermediate", ">= 8", self.intermediate)
        if self.keep_layers:
            try:
                keep = [int(v) for v in self.keep_layers.split(",")]
            except ValueError:
                keep = []
            _check(len(keep) == self.layers and all(k >= 0 for k in keep), "student.keep_layers",
                   f"{self.layers} comma-separated 0-based teacher layer indices (student.layers)", self.keep_layers)


@dataclass(frozen=True)
class DistillSpec:
    temperature: float = 4.0
    alpha: float = 0.9
    epochs: int = 40
    optimizer: str = "sgd"
    lr: float = 0.05
    batch_size: int = 64
    # Consistent teaching (Beyer et al. 2022): the teacher labels the very augmented view the student
    # sees. The teacher's logits for `views` augmented copies of each image are computed once and
    # cached, so an epoch costs one student pass, not a teacher pass too.
    views: int = 8
    # Text tasks: weights of the feature losses (edgekd.losses, each with its formula and paper),
    # added to the logit KD loss (classification) or used alone (embedding).
    embedding_mse: float = 0.0
    embedding_cos: float = 0.0
    similarity_mse: float = 0.0
    hidden_mse: float = 0.0
    attention_kl: float = 0.0
    # which teacher layer each student layer learns from, 1-based "1:2,2:4,3:6"; default: uniform
    layer_map: str = ""
    # classification: drop training texts the teacher gets wrong / is less sure of than this
    drop_teacher_wrong: bool = False
    min_teacher_confidence: float = 0.0

    def __post_init__(self):
        _check(self.temperature > 0, "distill.temperature", "> 0", self.temperature)
        _check(0 <= self.alpha <= 1, "distill.alpha", "in [0, 1]", self.alpha)
        _check(self.epochs >= 0, "distill.epochs", ">= 0", self.epochs)
        _check(self.optimizer in OPTIMIZERS, "distill.optimizer", " or ".join(map(repr, OPTIMIZERS)), self.optimizer)
        _check(self.lr > 0, "distill.lr", "> 0", self.lr)
        _check(self.batch_size > 0, "distill.batch_size", "> 0", self.batch_size)
        _check(self.views >= 1, "distill.views", ">= 1", self.views)
        for k in ("embedding_mse", "embedding_cos", "similarity_mse", "hidden_mse", "attention_kl"):
            _check(getattr(self, k) >= 0, f"distill.{k}", ">= 0", getattr(self, k))
        _check(0 <= self.min_teacher_confidence < 1, "distill.min_teacher_confidence", "in [0, 1)",
               self.min_teacher_confidence)
        if self.layer_map:
            parse_layer_map(self.layer_map)


@dataclass(frozen=True)
class QuantizeSpec:
    method: str = "qat"  # "qat": quantization-aware distillation; "ptq": calibration only
    epochs: int = 3
    # Small: BatchNorm is folded before fake-quant, so the network is no longer scale-invariant and
    # SGD at the distillation rate diverges (seen at 5e-3).
    lr: float = 5e-4
    calibration: int = 256  # inputs used to calibrate activation ranges
    # text tasks: QAT fine-tunes on this many training texts (a random subset; 0 = all): it starts
    # from the distilled student and needs far fewer steps than distillation
    train_texts: int = 0
    reduce_range: str = "auto"  # 7-bit weights: "auto" = on x86 CPUs without VNNI, "true", "false"

    def __post_init__(self):
        _check(self.method in ("qat", "ptq"), "quantize.method", "'qat' or 'ptq'", self.method)
        _check(self.epochs >= 0, "quantize.epochs", ">= 0", self.epochs)
        _check(self.lr > 0, "quantize.lr", "> 0", self.lr)
        _check(self.calibration > 0, "quantize.calibration", "> 0", self.calibration)
        _check(self.train_texts >= 0, "quantize.train_texts", ">= 0 (0 = all)", self.train_texts)
        _check(self.reduce_range in ("auto", "true", "false"), "quantize.reduce_range",
               "'auto', 'true' or 'false'", self.reduce_range)


@dataclass(frozen=True)
class ExportSpec:
    opset: int = 17
    parity_samples: int = 500
    fp32_max_abs_diff: float = 1e-3
    fp32_min_agreement: float = 0.99
    int8_min_agreement: float = 0.97
    # text INT8 student: store the word and position embedding tables INT8 with one scale per row
    # (MiniLM student: file 53 -> 17.5 MB, peak RSS 152 -> 88 MB, but p50 at 128 tokens measured
    # 0.6-2.4 ms slower, so off unless size or memory matter more than latency)
    int8_embeddings: bool = False

    def __post_init__(self):
        _check(13 <= self.opset <= 21, "export.opset", "in [13, 21]", self.opset)
        _check(self.parity_samples > 0, "export.parity_samples", "> 0", self.parity_samples)
        _check(self.fp32_max_abs_diff > 0, "export.fp32_max_abs_diff", "> 0", self.fp32_max_abs_diff)
        for k in ("fp32_min_agreement", "int8_min_agreement"):
            _check(0 <= getattr(self, k) <= 1, f"export.{k}", "in [0, 1]", getattr(self, k))


@dataclass(frozen=True)
class Recipe:
    name: str = "mnist"
    task: str = "image-classification"  # or "embedding" / "classification" (text, Hugging Face teacher)
    seed: int = 0
    device: str = "auto"  # training device: "auto" (CUDA when present), "cpu", "cuda", "cuda:N"
    data: DataSpec = field(default_factory=DataSpec)
    teacher: TeacherSpec = field(default_factory=TeacherSpec)
    student: StudentSpec = field(default_factory=StudentSpec)
    distill: DistillSpec = field(default_factory=DistillSpec)
    quantize: QuantizeSpec = field(default_factory=QuantizeSpec)
    export: ExportSpec = field(default_factory=ExportSpec)
    # Where relative paths in the recipe are resolved from; not part of the recipe itself.
    base_dir: str = field(default=".", compare=False, metadata={"internal": True})

    def __post_init__(self):
        _check(self.task in TASKS, "task", " or ".join(map(repr, TASKS)), self.task)
        text = self.task != "image-classification"
        if text:
            _check(self.teacher.source == "hf", "teacher.hf", f"a Hugging Face model for task = '{self.task}'",
                   self.teacher.hf)
            _check(self.data.source in TEXT_SOURCES, "data.source", f"one of {', '.join(TEXT_SOURCES)} for a text task",
                   self.data.source)
            _check(self.student.arch in ("layer-subset", "narrow"), "student.arch",
                   "'layer-subset' or 'narrow' for a text task", self.student.arch)
            if self.task == "embedding":
                d = self.distill
                _check(d.embedding_mse + d.embedding_cos + d.similarity_mse + d.hidden_mse + d.attention_kl > 0, "distill",
                       "given at least one loss weight for task = 'embedding' (e.g. distill.embedding_cos = 1)",
                       "all zero")
        else:
            _check(self.teacher.source != "hf", "task", "'embedding' or 'classification' for a Hugging Face teacher",
                   self.task)
        _check(self.device in ("auto", "cpu", "cuda") or self.device.startswith("cuda:"), "device",
               "'auto', 'cpu', 'cuda' or 'cuda:N'", self.device)

    def to_dict(self) -> dict:
        return _to_dict(self)

    def path(self, value: str) -> Path:
        """A path from the recipe, relative to the recipe file's folder."""
        p = Path(value).expanduser()
        return p if p.is_absolute() else Path(self.base_dir) / p


def parse_layer_map(text: str) -> dict[int, int]:
    """"1:2,2:4,3:6" -> {1: 2, 2: 4, 3: 6}: student layer -> teacher layer, both 1-based."""
    out = {}
    try:
        for pair in text.split(","):
            s, t = pair.split(":")
            out[int(s)] = int(t)
    except ValueError:
        raise RecipeError(f"distill.layer_map must look like '1:2,2:4,3:6' (student:teacher, 1-based), got {text!r}") from None
    if not out or min(out) < 1 or min(out.values()) < 1:
        raise RecipeError(f"distill.layer_map layers are 1-based, got {text!r}")
    return out


def _to_dict(obj) -> dict:
    out = {}
    for f in fields(obj):
        if f.metadata.get("internal"):
            continue
        v = getattr(obj, f.name)
        out[f.name] = _to_dict(v) if is_dataclass(v) else v
    return out


def _hints(cls) -> dict:
    return typing.get_type_hints(cls)


def _coerce(key: str, typ, value, *, from_text: bool):
    """Check (TOML) or parse (`key=value` text) one value against the field's type."""
    if from_text:
        text = value.strip()
        if typ is bool:
            low = text.lower()
            if low in ("true", "1", "yes", "on"):
                return True
            if low in ("false", "0", "no", "off"):
                return False
            raise RecipeError(f"{key} must be true or false, got {text!r}")
        if typ is int:
            try:
                return int(text)
            except ValueError:
                raise RecipeError(f"{key} must be an integer, got {text!r}") from None
        if typ is float:
            try:
                return float(text)
            except ValueError:
                raise RecipeError(f"{key} must be a number, got {text!r}") from None
        return text
    if typ is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if typ is str and isinstance(value, bool):  # reduce_range = true in TOML means "true"
        return "true" if value else "false"
    if not isinstance(value, typ) or (typ is int and isinstance(value, bool)):
        want = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}[typ]
        raise RecipeError(f"{key} must be {want}, got {value!r}")
    return value


def _build(cls, data: dict, prefix: str, *, from_text: bool = False, base=None):
    """Build dataclass `cls` from a (possibly partial) dict, refusing unknown keys."""
    hints = _hints(cls)
    names = [f.name for f in fields(cls) if not f.metadata.get("internal")]
    kwargs = {}
    for key, value in data.items():
        full = f"{prefix}{key}"
        if key not in names:
            raise RecipeError(f"unknown recipe key '{full}'{closest(full, _all_keys(cls, prefix))}")
        typ = hints[key]
        if is_dataclass(typ):
            if not isinstance(value, dict):
                raise RecipeError(f"{full} must be a table ([{full}]), got {value!r}")
            sub_base = getattr(base, key) if base is not None else None
            kwargs[key] = _build(typ, value, f"{full}.", from_text=from_text, base=sub_base)
        else:
            kwargs[key] = _coerce(full, typ, value, from_text=from_text)
    try:
        if base is not None:
            return replace(base, **kwargs)
        return cls(**kwargs)
    except TypeError as e:  # defensive: a dataclass refusing its arguments is our bug, say so plainly
        raise RecipeError(f"{prefix or 'recipe'}: {e}") from None


def _all_keys(cls, prefix: str = "") -> list[str]:
    keys = []
    hints = _hints(cls)
    for f in fields(cls):
        if f.metadata.get("internal"):
            continue
        if is_dataclass(hints[f.name]):
            keys += _all_keys(hints[f.name], f"{prefix}{f.name}.")
        else:
            keys.append(f"{prefix}{f.name}")
    return keys


def recipe_keys() -> list[str]:
    """Every settable key, dotted."""
    return _all_keys(Recipe)


def load_recipe(path: str | Path | None = None) -> Recipe:
    """Read a TOML recipe (the embedded MNIST example when `path` is None)."""
    if path is None and not DEFAULT_RECIPE.is_file():  # installed without the examples folder
        return Recipe()
    p = Path(path) if path else DEFAULT_RECIPE
    if not p.is_file():
        raise RecipeError(f"recipe file '{p}' does not exist; pass recipe=PATH to an edgekd.toml")
    try:
        data = tomllib.loads(p.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise RecipeError(f"recipe '{p}' is not valid TOML ({e}); fix the file's syntax") from None
    except OSError as e:
        raise RecipeError(f"recipe '{p}' cannot be read ({e.strerror})") from None
    recipe = _build(Recipe, data, "")
    return replace(recipe, base_dir=str(p.resolve().parent))


def parse_override(text: str) -> tuple[str, str]:
    if "=" not in text:
        raise RecipeError(f"'{text}' is not a key=value override (e.g. distill.temperature=2)")
    key, value = text.split("=", 1)
    key = key.strip()
    if not key:
        raise RecipeError(f"'{text}' has no key before '='")
    return key, value


def apply_overrides(recipe: Recipe, overrides: list[str]) -> Recipe:
    """Apply `section.key=value` strings, typed by the field they set."""
    nested: dict = {}
    for text in overrides:
        key, value = parse_override(text)
        parts = key.split(".")
        if key not in recipe_keys():
            raise RecipeError(f"unknown recipe key '{key}'{closest(key, recipe_keys())}")
        d = nested
        for part in parts[:-1]:
            d = d.setdefault(part, {})
        d[parts[-1]] = value
    if not nested:
        return recipe
    return _build(Recipe, nested, "", from_text=True, base=recipe)


def recipe_toml(recipe: Recipe) -> str:
    import tomli_w

    return tomli_w.dumps(recipe.to_dict())


__all__ = ["Recipe", "load_recipe", "apply_overrides", "recipe_keys", "recipe_toml"]
