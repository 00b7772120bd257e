"""Training settings, one builder for every stage (teacher, baseline, distillation, assistants, QAT) and
every task: the recipe's values where it gives them, otherwise defaults for the model's family and the
data's size. `resolve` fills the recipe's "auto" values once, before any stage, so the cache keys and
recipe.lock.toml carry what was chosen; `fit_spec` turns a resolved recipe into one stage's FitSpec.

Where the defaults come from:
- edgekd's registered CNNs (mnist-*): the schedules they were tuned with in examples/mnist (teacher
  AdamW 3e-3; students SGD with Nesterov momentum at 0.05, long, as patient teaching wants).
- vision models trained from random weights (transformers configs, a factory, TorchScript): AdamW with
  weight decay 0.05 and a one-cycle schedule with warm-up at 2e-3, the recipe timm and the transformers
  image examples use for small models; SGD at 0.05 diverges for these (issue seen on MobileNetV2).
- pretrained vision models (hf: folders or hub ids, or weights given): AdamW at 1e-4, a fine-tune.
- text encoders: AdamW with weight decay 0.01 and linear warm-up then decay (BERT's fine-tuning recipe,
  Devlin et al. 2019: 2e-5 to 5e-5 for 2-4 epochs on large data; small data needs more epochs);
  students built from the teacher's layers start close to a solution and take 1e-4.
- causal LMs: AdamW with linear warm-up then decay; a pretrained teacher is only corrected on the
  domain (2e-5, 1-3 epochs: Minitron's "teacher correction"); students built from its layers take 2e-4
  (MiniLLM and DistiLLM train 100M-class students at 1e-4 to 5e-4), fewer steps than encoders (a
  sequence carries tens of scored tokens, an encoder's text one label).
Epochs follow the data: enough epochs to reach the family's number of optimizer steps, within its
bounds, so a 1,600-image folder gets 30 passes and 50,000 images 10. A run whose loss diverges or whose
best epoch comes first is retried at a lower rate (edgekd.train.fit); a teacher whose epochs are the
family's guess and whose last epoch is still its best goes on, in rounds at half the rate, until
validation stops improving (teacher.extend; students when distill.extend asks)."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace


@dataclass(frozen=True)
class Defaults:
    optimizer: str
    lr: float
    schedule: str  # "onecycle" or "warmup-linear" (edgekd.train.FitSpec)
    weight_decay: float
    steps: int  # optimizer steps to aim for; epochs = ceil(steps / steps per epoch), within `epochs`
    epochs: tuple[int, int]


# (family, role) -> defaults; role "teacher" or "student"
DEFAULTS = {
    ("edgekd-cnn", "teacher"): Defaults("adamw", 3e-3, "onecycle", 0.05, 500, (3, 30)),
    ("edgekd-cnn", "student"): Defaults("sgd", 0.05, "onecycle", 5e-4, 2500, (10, 40)),
    ("vision", "teacher"): Defaults("adamw", 2e-3, "onecycle", 0.05, 1000, (10, 30)),
    ("vision", "student"): Defaults("adamw", 2e-3, "onecycle", 0.05, 1000, (10, 30)),
    ("vision-pretrained", "teacher"): Defaults("adamw", 1e-4, "onecycle", 0.05, 1500, (3, 15)),
    ("vision-pretrained", "student"): Defaults("adamw", 1e-4, "onecycle", 0.05, 1500, (3, 15)),
    ("text", "teacher"): Defaults("adamw", 5e-5, "warmup-linear", 0.01, 1000, (3, 10)),
    ("text-probe", "teacher"): Defaults("adamw", 1e-3, "warmup-linear", 0.01, 1000, (8, 30)),
    ("text", "student"): Defaults("adamw", 1e-4, "warmup-linear", 0.01, 2000, (3, 20)),
    ("lm", "teacher"): Defaults("adamw", 2e-5, "warmup-linear", 0.0, 300, (1, 3)),
    ("lm", "student"): Defaults("adamw", 2e-4, "warmup-linear", 0.01, 600, (2, 10)),
}
BATCH = {"image": 64, "text": 32, "lm": 8}
QAT_LR = 5e-4  # image and text students' quantization-aware fine-tuning
# more rounds a teacher with automatic epochs may train while validation still improves at the end
EXTEND = 2
# distillation temperature: Hinton's 4 for classes and embeddings; 1 for a language model's next-token
# distribution over tens of thousands of tokens (MiniLLM, DistillKit; GKD 0.9)
TEMPERATURE = {"image": 4.0, "text": 4.0, "lm": 1.0}


def family(spec, kind: str, *, role: str, probe: bool = False) -> str:
    """The family of a model spec (edgekd.recipe.ModelSpec) for training defaults."""
    if kind == "text":
        return "text-probe" if probe and role == "teacher" else "text"
    if kind == "lm":
        return "lm"
    if spec.scheme == "arch":
        return "edgekd-cnn"
    pretrained = bool(spec.weights) or spec.scheme == "hf"
    return "vision-pretrained" if pretrained else "vision"


def defaults(spec, kind: str, *, role: str, probe: bool = False) -> Defaults:
    return DEFAULTS[(family(spec, kind, role=role, probe=probe), role)]


def epochs_for(d: Defaults, n_rows: int, batch_size: int) -> int:
    lo, hi = d.epochs
    return max(lo, min(hi, math.ceil(d.steps / max(1, math.ceil(n_rows / batch_size)))))


def resolve(recipe, *, kind: str, n_train: int):
    """The recipe with every automatic training setting (optimizer "auto", lr 0, epochs 0, batch size 0)
    replaced by its default for the models' families and the training split's size."""
    t, ds = recipe.teacher, recipe.distill
    probe = t.fine_tune == "probe"
    td = defaults(t, kind, role="teacher", probe=probe)
    tb = t.batch_size or BATCH[kind]
    # a teacher whose epochs are the family's guess goes on while it still improves (edgekd.train._extend)
    teacher = replace(t, optimizer=td.optimizer if t.optimizer == "auto" else t.optimizer, lr=t.lr or td.lr,
                      epochs=t.epochs or epochs_for(td, n_train, tb), batch_size=tb,
                      extend=(0 if t.epochs else EXTEND) if t.extend < 0 else t.extend)
    sd = defaults(recipe.student, kind, role="student")
    sb = ds.batch_size or BATCH[kind]
    distill = replace(ds, optimizer=sd.optimizer if ds.optimizer == "auto" else ds.optimizer, lr=ds.lr or sd.lr,
                      epochs=ds.epochs or epochs_for(sd, n_train, sb), batch_size=sb,
                      temperature=ds.temperature or TEMPERATURE.get(kind, 4.0))
    # QAT starts from the distilled student: a causal LM's continues its distillation on the grid at the
    # same rate (above it, a short run on a distilled LM ends worse than its rounded start:
    # benchmarks/README.md); image and text students keep the rate their fake-quant ranges were tuned at
    quantize = replace(recipe.quantize, lr=recipe.quantize.lr or (distill.lr if kind == "lm" else QAT_LR))
    return replace(recipe, teacher=teacher, distill=distill, quantize=quantize)


def fit_spec(ctx, *, role: str, n_rows: int, desc: str, qat: bool = False, epochs: int | None = None):
    """The FitSpec of one stage of a resolved recipe. role: "teacher" or "student" (baseline, distilled
    student, assistant, QAT). The QAT stage fine-tunes at quantize.lr for quantize.epochs without
    weight decay (it would pull the learned ranges' weights off their grid) and without retries (its
    epoch 0, the calibrated start, is often the best)."""
    from .train import FitSpec

    r = ctx.recipe
    kind = ctx.io.kind
    if role == "teacher":
        s = r.teacher
        d = defaults(s, kind, role="teacher", probe=s.fine_tune == "probe")
        return FitSpec(epochs=s.epochs if epochs is None else epochs, lr=s.lr, batch_size=s.batch_size,
                       optimizer=s.optimizer, schedule=d.schedule, weight_decay=_decay(d, s.optimizer),
                       steps_per_epoch=_steps(n_rows, s.batch_size), seed=r.seed, desc=desc, retry=True,
                       extend=max(0, s.extend) if epochs is None else 0)
    ds, qs = r.distill, r.quantize
    d = defaults(r.student, kind, role="student")
    explicit = epochs is not None  # a caller's own count (a candidate's trial) is trained exactly
    if epochs is None:
        epochs = (qs.epochs if qs.method == "qat" else 0) if qat else ds.epochs
    seed = student_seed(r)
    return FitSpec(epochs=epochs, lr=qs.lr if qat else ds.lr, batch_size=ds.batch_size, optimizer=ds.optimizer,
                   schedule=d.schedule, weight_decay=0.0 if qat else _decay(d, ds.optimizer),
                   steps_per_epoch=_steps(n_rows, ds.batch_size), seed=seed + (2 if qat else 0), desc=desc,
                   precision="fp32" if qat else ctx.extra.get("precision", "fp32"), retry=not qat,
                   extend=0 if qat or explicit else ds.extend)


def student_seed(recipe) -> int:
    """The students' seed: distill.seed, or the recipe's when it is -1."""
    return recipe.seed if recipe.distill.seed < 0 else recipe.distill.seed


def _decay(d: Defaults, optimizer: str) -> float | None:
    """The family's weight decay for its own optimizer; another optimizer takes its usual one (FitSpec)."""
    return d.weight_decay if optimizer == d.optimizer else None


def _steps(n: int, batch_size: int) -> int:
    return max(1, math.ceil(n / batch_size))
