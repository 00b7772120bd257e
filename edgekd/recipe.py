"""Recipes: one frozen dataclass per section, validated when built, loaded from TOML, overridden with
typed `key=value` strings. A build writes the fully resolved recipe as `recipe.lock.toml`."""

from __future__ import annotations

import logging
import math
import tomllib
import typing
from dataclasses import dataclass, field, fields, is_dataclass, replace
from pathlib import Path

from .errors import RecipeError
from .overrides import coerce, parse_override
from .recipe_deliverable import ExportSpec, QuantizeSpec
from .recipe_lm import LMSpec
from .recipe_parse import check as _check, parse_layer_map, parse_mean_std  # noqa: F401 - the recipe's value parsers
from .registry import closest

OPTIMIZERS = ("sgd", "adamw")
# Old task names stay accepted as aliases of the registered ones (edgekd.tasks).
TASK_ALIASES = {"embedding": "text-embedding", "classification": "text-classification"}
AUGMENT = ("auto", "digits", "natural", "none")
DEFAULT_RECIPE = Path(__file__).resolve().parent.parent / "examples" / "mnist" / "edgekd.toml"


@dataclass(frozen=True)
class DataSpec:
    """Where the data comes from (`source`, a registered data source: edgekd.data.sources) and how a raw
    input becomes the model's input. Splits: a source's own train/validation/test splits when it has
    them, else a split seeded with `seed` (n_* when given, else the fractions)."""
    source: str = "mnist"
    path: str = ""  # file, folder, saved dataset or hub id, relative to the recipe's folder
    labels_path: str = ""  # arrays: a .npy of labels beside an images .npy
    n_train: int = 0  # 0 = every example the validation and test splits leave
    n_val: int = 0  # 0 = val_fraction of the examples (when the source has no validation split)
    n_test: int = 0
    val_fraction: float = 0.1
    test_fraction: float = 0.1
    # images (arrays, image folders, image datasets)
    color: str = "auto"  # "auto" (as stored), "rgb", "grayscale"
    resize: int = 0  # shorter side to this many pixels (0: keep the stored size)
    crop: int = 0  # then a centered crop x crop square (0: none)
    normalize: str = "auto"  # "auto": per-channel mean/std of the training split; "imagenet"; "none" (x/255);
    # or explicit "m1,m2,m3/s1,s2,s3" on the 0-1 scale
    augment: str = "auto"  # training-time policy: "auto" (digits for small grayscale, natural otherwise),
    # "digits" (small affine jitter), "natural" (random resized crop + horizontal flip), "none"
    image_field: str = "image"  # dataset column of the images
    # text
    text_field: str = "text"
    label_field: str = "label"
    response_field: str = ""  # text-generation: the column of reference responses to the prompts (text_field)
    max_length: int = 128  # tokens per text (longer texts are truncated)
    # source = "stdlib-docstrings": also train on the comment blocks of the training modules
    train_comments: bool = False
    # source = "stdlib-docstrings": also train on this many docstring paragraphs of the installed
    # third-party packages (site-packages; parsed, never imported); 0 = none
    train_packages: int = 0
    # Hugging Face datasets: split names ("" = the usual names: validation/valid/val, test)
    train_split: str = "train"
    val_split: str = ""
    test_split: str = ""

    def __post_init__(self):
        for k in ("n_train", "n_val", "n_test"):
            _check(getattr(self, k) >= 0, f"data.{k}", ">= 0 (0 = by fraction)", getattr(self, k))
        for k in ("val_fraction", "test_fraction"):
            _check(0 < getattr(self, k) < 1, f"data.{k}", "in (0, 1)", getattr(self, k))
        _check(self.val_fraction + self.test_fraction < 1, "data.val_fraction + data.test_fraction", "< 1",
               self.val_fraction + self.test_fraction)
        _check(8 <= self.max_length <= 4096, "data.max_length", "in [8, 4096]", self.max_length)
        _check(self.color in ("auto", "rgb", "grayscale"), "data.color", "'auto', 'rgb' or 'grayscale'", self.color)
        _check(self.resize >= 0 and self.crop >= 0, "data.resize / data.crop", ">= 0", (self.resize, self.crop))
        if self.augment in ("true", "false"):  # the boolean of older recipes
            object.__setattr__(self, "augment", "auto" if self.augment == "true" else "none")
        _check(self.augment in AUGMENT, "data.augment", " or ".join(map(repr, AUGMENT)), self.augment)
        if self.normalize not in ("auto", "imagenet", "none"):
            parse_mean_std(self.normalize)
        _check(not self.train_comments or self.source == "stdlib-docstrings", "data.train_comments",
               "false unless data.source = 'stdlib-docstrings'", self.train_comments)
        _check(self.train_packages >= 0, "data.train_packages", ">= 0", self.train_packages)
        _check(not self.train_packages or self.source == "stdlib-docstrings", "data.train_packages",
               "0 unless data.source = 'stdlib-docstrings'", self.train_packages)


@dataclass(frozen=True)
class ModelSpec:
    """A teacher or a student. `model` is a registered architecture name, or SCHEME:REF with SCHEME a
    registered model source (edgekd.models.sources): torchscript:FILE, factory:package.module:function,
    hf:FOLDER|HUB_ID|package:NAME/SUBDIR, hf-config:MODEL_TYPE|config.json, torchvision:NAME, timm:NAME;
    for a text student also layer-subset (the teacher's embeddings and `layers` of its layers) or
    narrow (a fresh encoder of the teacher's family, `layers` x `hidden`). Every source is told the
    data's input shape and class count."""
    model: str = ""
    weights: str = ""  # a state_dict file loaded into the built model (weights_only)
    config: str = ""  # hf-config / narrow: JSON object of config overrides, e.g. '{"depths": [1, 1]}'
    trust_remote_code: bool = False  # hf: run the model folder's own code (only if you trust it)
    # Training before distillation (the teacher): "auto" trains a model that has no trained weights for
    # this data (an architecture, a library model without weights, a pretrained encoder without a task
    # head); "always" fine-tunes whatever was given; "never" uses it as it is; "probe" (text) trains a
    # linear head on frozen embeddings.
    fine_tune: str = "auto"
    # 0 / "auto": the model family's defaults for this data size (edgekd.schedules; the lock file says which)
    epochs: int = 0
    # teacher: up to this many more rounds of epochs / 2 at half the rate while validation still improves
    # at the end (stop on a plateau); -1: 2 when epochs is automatic, else 0 (exactly `epochs`)
    extend: int = -1
    optimizer: str = "auto"
    lr: float = 0.0
    batch_size: int = 0
    label_smoothing: float = 0.0
    # student: distil the most capable candidate that runs, untrained, within this many ms on the target
    # (and within min_speedup, when both are set)
    max_latency_ms: float = 0.0
    min_speedup: float = 0.0  # student: the same, at least this many times faster than the teacher (timed beside it)
    # student: KEY=VALUE of one setting each ("layers=4"); none: a layer-subset's every layer count
    candidates: list[str] = field(default_factory=list)
    # text students built from the teacher
    layers: int = 3
    keep_layers: str = ""  # layer-subset: teacher layers to copy, 0-based ("0,2,4"); default evenly spread
    # layer-subset of a causal LM: MLP channels each kept layer keeps, those adding most to its output on
    # the training sequences (Minitron's width pruning, edgekd.models.lm_width); 0: every channel
    keep_intermediate: int = 0
    hidden: int = 256
    heads: int = 4
    intermediate: int = 1024

    def __post_init__(self):
        _check(self.optimizer in ("auto", *OPTIMIZERS), "optimizer", " or ".join(map(repr, ("auto", *OPTIMIZERS))),
               self.optimizer)
        _check(0 <= self.label_smoothing < 1, "label_smoothing", "in [0, 1)", self.label_smoothing)
        _check(self.fine_tune in ("auto", "always", "never", "probe"), "fine_tune", "'auto', 'always', 'never' or 'probe'", self.fine_tune)
        _check(self.extend >= -1, "extend", ">= 0, or -1 (automatic)", self.extend)
        for k in ("max_latency_ms", "min_speedup"):
            _check(getattr(self, k) >= 0, k, ">= 0 (0: no budget)", getattr(self, k))
        for k in ("epochs", "lr", "batch_size"):
            _check(getattr(self, k) >= 0, k, ">= 0 (0: the model family's default)", getattr(self, k))
        _check(self.layers >= 1, "layers", ">= 1", self.layers)
        _check(self.hidden >= 8 and self.heads >= 1 and self.hidden % self.heads == 0, "hidden",
               "a multiple of heads (>= 8)", (self.hidden, self.heads))
        _check(self.intermediate >= 8, "intermediate", ">= 8", self.intermediate)
        _check(self.keep_intermediate >= 0, "keep_intermediate", ">= 0 (0: every channel)", self.keep_intermediate)
        if self.keep_layers:
            try:
                keep = [int(v) for v in self.keep_layers.split(",")]
            except ValueError:
                keep = []
            _check(len(keep) == self.layers and all(k >= 0 for k in keep), "keep_layers",
                   f"{self.layers} comma-separated 0-based teacher layer indices (layers)", self.keep_layers)
        if self.config:
            self.config_overrides()

    @property
    def scheme(self) -> str:
        """The model source's registry name: the part before the first ':', or "arch"."""
        return self.model.split(":", 1)[0] if ":" in self.model else "arch"

    @property
    def ref(self) -> str:
        return self.model.split(":", 1)[1] if ":" in self.model else self.model

    def config_overrides(self) -> dict:
        import json

        try:
            value = json.loads(self.config)
        except ValueError:
            value = None
        if not isinstance(value, dict):
            raise RecipeError(f"config must be a JSON object such as '{{\"depths\": [1, 1]}}', got {self.config!r}")
        return value


TEACHER = ModelSpec(model="mnist-teacher")
STUDENT = ModelSpec(model="mnist-student")


# Distillation families (edgekd.losses has each loss's formula, paper and family). Every family keeps
# the response term (logit KD, or the output-embedding losses of text-embedding) and changes what else
# the student learns or from whom:
#   response     the teacher's outputs alone
#   feature      + the teacher's intermediate representations (fitnets_hint, tinybert_hidden, attention_kl)
#   relation     + the teacher's relations between the samples of a batch (rkd_*, similarity_mse)
#   self         born-again: the hard-label baseline (the student's own architecture) is the teacher
#   progressive  teacher-assistant chain: each of distill.assistants learns from the one before
METHODS = ("response", "feature", "relation", "self", "progressive")
# Settings of the teacher signal: the baseline reads none of them, so one baseline serves every method.
_SIGNAL = {"signal": True}
# The per-loss weights of older recipes (distill.hidden_mse = 1.0), kept for one release: each fills
# distill.losses when the section is built and is None after.
_ALIAS = {"signal": True, "alias": True}
_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistillSpec:
    # One of METHODS, or "auto": the family of the losses the recipe names (recipes written before
    # methods existed set distill.hidden_mse alone), else "response". `resolved_method` says which.
    method: str = field(default="auto", metadata=_SIGNAL)
    # progressive: the assistants from largest to smallest, comma-separated; each is a layer count (text
    # students built from the teacher: the student's recipe with that many layers, e.g. "4" for
    # 6 -> 4 -> 2) or a model as student.model takes it (an architecture name or SCHEME:REF)
    assistants: str = field(default="", metadata=_SIGNAL)
    # 0: the task's default (4, Hinton's, for classifiers and encoders; 1 for language models, whose
    # thousands of tokens a high temperature flattens: MiniLLM, GKD and DistillKit train at 0.9-1)
    temperature: float = field(default=0.0, metadata=_SIGNAL)
    alpha: float = field(default=0.9, metadata=_SIGNAL)
    # 0 / "auto": the student family's defaults for this data size (edgekd.schedules; the lock file says which)
    epochs: int = 0
    # more rounds of epochs / 2 at half the rate while validation still improves at the end (teacher.extend's
    # rule); off by default: it raised validation, not test, accuracy on the image-folder example
    extend: int = 0
    optimizer: str = "auto"
    lr: float = 0.0
    batch_size: int = 0
    seed: int = -1  # the students' training order and initialisation; -1: the recipe's seed (repeat a
    # comparison over seeds with the teacher and its targets cached)
    # Consistent teaching (Beyer et al. 2022): the teacher labels the very augmented view the student
    # sees. The teacher's logits for `views` augmented copies of each image are computed once and
    # cached, so an epoch costs one student pass, not a teacher pass too.
    views: int = 8
    # {registered loss name: weight} (edgekd.losses: each one's formula and paper); weight 0 turns a
    # loss off. Classifiers learn kd (weight 1) unless it is named; a family chosen by distill.method
    # without any of its losses named gets their default weights (Recipe.loss_weights).
    losses: dict[str, float] = field(default_factory=dict, metadata=_SIGNAL)
    # feature: which teacher layer each student layer learns from, 1-based "1:2,2:4,3:6" (images: the
    # feature maps found in each model, edgekd.features); default: the same relative depth
    layer_map: str = field(default="", metadata=_SIGNAL)
    # classification: drop training texts the teacher gets wrong / is less sure of than this
    drop_teacher_wrong: bool = False
    min_teacher_confidence: float = 0.0
    # "fp32"; "bf16": the baseline's and the distilled student's training under bfloat16 autocast
    # (quantization-aware training stays float32: it simulates the runtime's rounding); "auto": bf16
    # where the training device computes it natively (AVX512-BF16 or AMX CPUs, recent GPUs)
    precision: str = "fp32"
    # deprecated: distill.losses entries of the same name (hidden_mse: fitnets_hint on images, tinybert_hidden on text)
    embedding_mse: float | None = field(default=None, metadata=_ALIAS)
    embedding_cos: float | None = field(default=None, metadata=_ALIAS)
    hidden_mse: float | None = field(default=None, metadata=_ALIAS)
    attention_kl: float | None = field(default=None, metadata=_ALIAS)
    rkd_distance: float | None = field(default=None, metadata=_ALIAS)
    rkd_angle: float | None = field(default=None, metadata=_ALIAS)
    similarity_mse: float | None = field(default=None, metadata=_ALIAS)

    def __post_init__(self):
        from . import losses

        old = {f.name: getattr(self, f.name) for f in fields(self)
               if f.metadata.get("alias") and getattr(self, f.name) is not None}
        if old:
            table = ", ".join(f"{k} = {float(v)}" for k, v in old.items())
            _log.warning(f"{', '.join('distill.' + k for k in old)} {'is' if len(old) == 1 else 'are'} deprecated; "
                         f"write distill.losses = {{{table}}}" + (" with hidden_mse renamed fitnets_hint (images) "
                                                                  "or tinybert_hidden (text)" if "hidden_mse" in old else ""))
            for k in old:
                object.__setattr__(self, k, None)
        object.__setattr__(self, "losses", {**self.losses, **{k: float(v) for k, v in old.items()}})  # a copy
        _check(self.temperature >= 0, "distill.temperature", "> 0 (0: the task's default)", self.temperature)
        _check(0 <= self.alpha <= 1, "distill.alpha", "in [0, 1]", self.alpha)
        _check(self.extend >= 0, "distill.extend", ">= 0", self.extend)
        _check(self.optimizer in ("auto", *OPTIMIZERS), "distill.optimizer", " or ".join(map(repr, ("auto", *OPTIMIZERS))),
               self.optimizer)
        for k in ("epochs", "lr", "batch_size"):
            _check(getattr(self, k) >= 0, f"distill.{k}", ">= 0 (0: the student family's default)", getattr(self, k))
        _check(self.views >= 1, "distill.views", ">= 1", self.views)
        for name, w in self.losses.items():
            if name not in losses.registry and name not in losses.ALIASES:
                raise RecipeError(f"distill.losses.{name} is not a registered loss{closest(name, losses.names())} "
                                  f"({', '.join(losses.names())})")
            _check(0 <= w < math.inf, f"distill.losses.{name}", "a weight >= 0 (0 turns it off)", w)
        _check(self.precision in ("fp32", "bf16", "auto"), "distill.precision", "'fp32', 'bf16' or 'auto'",
               self.precision)
        _check(self.method in ("auto", *METHODS), "distill.method", "'auto' or " + ", ".join(map(repr, METHODS)),
               self.method)
        given = self._named()
        if "feature" in given and "relation" in given:
            raise RecipeError(f"distill.losses names losses of two families, feature ({', '.join(given['feature'])}) "
                              f"and relation ({', '.join(given['relation'])}); a build distills one: set the other's to 0")
        for fam, keys in given.items():
            if fam != "response" and self.method not in ("auto", fam):
                raise RecipeError(f"distill.losses.{keys[0]} = {self.losses[keys[0]]} is a {fam}-distillation loss, but "
                                  f"distill.method = '{self.method}'; set distill.method = '{fam}' or "
                                  f"distill.losses.{keys[0]} = 0")
        items = self.assistant_list()
        if self.method == "progressive":
            _check(bool(items) and all(items), "distill.assistants",
                   "the assistants between teacher and student, largest first, for distill.method = 'progressive': "
                   "layer counts for text students ('4') or models ('mnist-assistant')", self.assistants)
            for v in items:
                _check(not v.lstrip("-").isdigit() or int(v) >= 1, "distill.assistants", "layer counts >= 1",
                       self.assistants)
        else:
            _check(not self.assistants, "distill.assistants", "empty unless distill.method = 'progressive'",
                   self.assistants)
        _check(0 <= self.min_teacher_confidence < 1, "distill.min_teacher_confidence", "in [0, 1)",
               self.min_teacher_confidence)
        if self.layer_map:
            parse_layer_map(self.layer_map)

    def _named(self) -> dict[str, list[str]]:
        """{family: the names in distill.losses with a weight > 0}."""
        from . import losses

        out: dict[str, list[str]] = {}
        for name, w in self.losses.items():
            if w > 0:
                out.setdefault(losses.get(name).family, []).append(name)
        return out

    @property
    def resolved_method(self) -> str:
        if self.method != "auto":
            return self.method
        return next((fam for fam in ("feature", "relation") if fam in self._named()), "response")

    def assistant_list(self) -> list[str]:
        return [v.strip() for v in self.assistants.split(",")] if self.assistants.strip() else []

    def assistant_specs(self, student: ModelSpec) -> list[ModelSpec]:
        """The student's spec for each assistant, largest first: a layer count keeps the student's model
        with that many layers; a model replaces it (without the student's weights or config)."""
        out = []
        for v in self.assistant_list():
            if v.isdigit():
                out.append(replace(student, layers=int(v), keep_layers=""))
            else:
                out.append(replace(student, model=v, weights="", config="", keep_layers=""))
        return out


@dataclass(frozen=True)
class Recipe:
    name: str = "mnist"
    task: str = "image-classification"  # a registered task (edgekd.tasks): image-classification,
    # text-classification, text-embedding
    seed: int = 0
    device: str = "auto"  # training device: "auto" (CUDA when present), "cpu", "cuda", "cuda:N"
    data: DataSpec = field(default_factory=DataSpec)
    teacher: ModelSpec = field(default_factory=lambda: TEACHER)
    student: ModelSpec = field(default_factory=lambda: STUDENT)
    distill: DistillSpec = field(default_factory=DistillSpec)
    quantize: QuantizeSpec = field(default_factory=QuantizeSpec)
    export: ExportSpec = field(default_factory=ExportSpec)
    lm: LMSpec = field(default_factory=LMSpec)  # task text-generation (edgekd.recipe_lm)
    # Where relative paths in the recipe are resolved from; not part of the recipe itself.
    base_dir: str = field(default=".", compare=False, metadata={"internal": True})

    def __post_init__(self):
        from . import losses
        from .tasks import get as get_task

        object.__setattr__(self, "task", TASK_ALIASES.get(self.task, self.task))
        task = get_task(self.task)
        table = {losses.get(name, task.kind).name: w for name, w in self.distill.losses.items()}
        if list(table) != list(self.distill.losses):  # old names, resolved for this task's data
            object.__setattr__(self, "distill", replace(self.distill, losses=table))
        task.check_recipe(self)  # each task says what it needs of the data and models
        if not self.loss_weights():
            raise RecipeError(f"distill.losses turns no loss on for task '{task.name}'; give at least one loss a weight "
                              f"> 0, e.g. distill.losses = {{{losses.fitting(task, family='response')[0]} = 1.0}}")
        _check(self.device in ("auto", "cpu", "cuda") or self.device.startswith("cuda:"), "device",
               "'auto', 'cpu', 'cuda' or 'cuda:N'", self.device)

    def loss_weights(self) -> dict[str, float]:
        """{registered loss name: weight > 0} of the losses the distilled student learns: distill.losses
        (old names resolved for the task's data), every response loss with a default weight the recipe does
        not name (a classifier's kd), and the default weights of the family distill.method chooses when
        the recipe names none of its losses. A loss this task cannot train with raises RecipeError."""
        from . import losses
        from .tasks import get as get_task

        task, d = get_task(self.task), self.distill
        named = {losses.get(name, task.kind).name: w for name, w in d.losses.items()}
        for name in named:
            if why := losses.misfit(losses.get(name), task):
                raise RecipeError(f"distill.losses.{name} {why}; remove it (the losses for this task: "
                                  f"{', '.join(losses.fitting(task))})")
        method, given = d.resolved_method, d._named()
        unnamed = [losses.get(n) for n in losses.fitting(task) if losses.get(n).default and n not in named]
        out = {loss.name: loss.default for loss in unnamed if loss.family == "response"}
        out.update(named)
        if method not in given:  # a family chosen without naming any of its losses: their defaults
            out.update({loss.name: loss.default for loss in unnamed if loss.family == method})
        return {name: w for name, w in out.items() if w > 0}

    def to_dict(self) -> dict:
        return _to_dict(self)

    def with_absolute_paths(self) -> "Recipe":
        """The same recipe with every local path it names made absolute, so that a copy written
        elsewhere (recipe.lock.toml in a build folder) reads the same files."""
        def model(spec: ModelSpec) -> ModelSpec:
            ref = spec.ref
            if spec.scheme in ("hf", "hf-config", "torchscript") and not ref.startswith("package:") and self.path(ref).exists():
                ref = str(self.path(ref).resolve())
            m = f"{spec.scheme}:{ref}" if ":" in spec.model else ref
            return replace(spec, model=m, weights=str(self.path(spec.weights).resolve()) if spec.weights else "")

        d = self.data
        data = replace(d, path=str(self.path(d.path).resolve()) if d.path and self.path(d.path).exists() else d.path,
                       labels_path=str(self.path(d.labels_path).resolve()) if d.labels_path else "")
        return replace(self, data=data, teacher=model(self.teacher), student=model(self.student))

    def path(self, value: str) -> Path:
        """A path from the recipe, relative to the recipe file's folder."""
        p = Path(value).expanduser()
        return p if p.is_absolute() else Path(self.base_dir) / p


def _to_dict(obj) -> dict:
    out = {}
    for f in fields(obj):
        if f.metadata.get("internal") or f.metadata.get("alias"):  # aliases are None once built
            continue
        v = getattr(obj, f.name)
        out[f.name] = _to_dict(v) if is_dataclass(v) else v
    return out


def _hints(cls) -> dict:
    return typing.get_type_hints(cls)


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
        if type(None) in typing.get_args(typ):  # X | None: a deprecated alias, None when not given
            typ = next(a for a in typing.get_args(typ) if a is not type(None))
        if is_dataclass(typ):
            if not isinstance(value, dict):
                raise RecipeError(f"{full} must be a table ([{full}]), got {value!r}")
            # a section starts from the recipe's value, or from the section's own default (a teacher's
            # default model differs from a student's though both are ModelSpecs)
            sub_base = getattr(base, key) if base is not None else _section_default(cls, key)
            kwargs[key] = _build(typ, value, f"{full}.", from_text=from_text, base=sub_base)
        elif typing.get_origin(typ) is dict and from_text and isinstance(value, dict):  # `KEY.NAME=V`: one entry
            kwargs[key] = {**getattr(base, key), **coerce(full, typ, value, from_text=True)}
        else:
            kwargs[key] = coerce(full, typ, value, from_text=from_text)
    try:
        if base is not None:
            return replace(base, **kwargs)
        return cls(**kwargs)
    except RecipeError as e:
        if cls is ModelSpec:  # its checks name the field alone: say which model
            raise RecipeError(f"{prefix}{e}") from None
        raise
    except TypeError as e:  # defensive: a dataclass refusing its arguments is our bug, say so plainly
        raise RecipeError(f"{prefix or 'recipe'}: {e}") from None


def _is_table(cls, key: str) -> bool:
    """Whether dotted `key` names a table field of `cls`, whose entries `KEY.NAME=VALUE` sets."""
    head, _, rest = key.partition(".")
    typ = _hints(cls).get(head)
    if typ is not None and is_dataclass(typ):
        return _is_table(typ, rest)
    return not rest and typing.get_origin(typ) is dict


def _section_default(cls, key: str):
    f = next(f for f in fields(cls) if f.name == key)
    return f.default_factory() if callable(f.default_factory) else None


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
    data = data if "name" in data else {"name": p.resolve().parent.name or p.stem, **data}  # not the example's name
    recipe = _build(Recipe, data, "")
    return replace(recipe, base_dir=str(p.resolve().parent))


def apply_overrides(recipe: Recipe, overrides: list[str]) -> Recipe:
    """Apply `section.key=value` strings, typed by the field they set."""
    nested: dict = {}
    for text in overrides:
        key, value = parse_override(text)
        parts = key.split(".")
        if key not in recipe_keys() and not _is_table(Recipe, key.rpartition(".")[0]):
            raise RecipeError(f"unknown recipe key '{key}'{closest(key, recipe_keys())}")
        d = nested
        for part in parts[:-1]:
            d = d.setdefault(part, {})
        if not isinstance(d, dict):
            raise RecipeError(f"'{text}': {key.rpartition('.')[0]} was set whole before; set it whole or entry by entry")
        d[parts[-1]] = value
    if not nested:
        return recipe
    return _build(Recipe, nested, "", from_text=True, base=recipe)


def recipe_toml(recipe: Recipe) -> str:
    import tomli_w

    return tomli_w.dumps(recipe.to_dict())


__all__ = ["Recipe", "load_recipe", "apply_overrides", "recipe_keys", "recipe_toml"]
