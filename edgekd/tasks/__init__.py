"""Tasks: what a build learns and measures. A task is one module registered here; it supplies the
input/output signature, how the teacher's targets are made, the training step, the metrics, the parity
check, the deliverable's manifest and its report rows. No module outside edgekd/tasks/ tests a task's
name: the pipeline calls the hooks of `Task` in one order for every task."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..errors import RecipeError
from ..registry import Registry

tasks: Registry = Registry("task", error=RecipeError)


@dataclass
class Context:
    """What every stage of one build shares: the recipe, the target, the training device, the data and
    what the task prepared from it (tokens, a tokenizer ...) in `extra`."""
    recipe: object
    target: object
    device: str
    log: object
    data: object = None  # edgekd.data.Splits
    io: object = None  # edgekd.models.ModelIO
    extra: dict = field(default_factory=dict)

    @property
    def base(self) -> Path:
        return Path(self.recipe.base_dir)


class Task:
    """The hooks a task implements. Models are torch modules; arrays are numpy."""
    name = ""
    kind = ""  # "image" or "text": which data sources and model sources fit
    quality = ""  # the headline metric of report.json's models ("accuracy", "fidelity_cosine")
    quality_label = ""  # how the report names it

    def check_recipe(self, recipe) -> None:
        """Refuse, at recipe build time, settings this task cannot run."""

    def prepare(self, ctx: Context) -> None:
        """Turn ctx.data into what training needs (ctx.io, ctx.extra) and check it fits this task."""
        raise NotImplementedError

    def fingerprint(self, ctx: Context) -> dict:
        """Extra inputs of the teacher stage's cache key (e.g. a tokenizer's files)."""
        return {}

    # teacher
    def load_teacher(self, ctx: Context):
        """-> edgekd.models.Built, checked against ctx.io."""
        raise NotImplementedError

    def train_teacher(self, ctx: Context, teacher, checkpoint: Path):
        """Fine-tune the teacher on the labels -> edgekd.train.FitResult."""
        raise NotImplementedError

    def validate(self, ctx: Context, model) -> float | None:
        """The model's quality on the validation split (None when there is nothing to compare with)."""
        raise NotImplementedError

    def teacher_targets(self, ctx: Context, teacher, folder: Path) -> dict:
        """Compute the teacher's outputs that students learn from, once, into `folder`."""
        raise NotImplementedError

    def load_targets(self, ctx: Context, folder: Path) -> None:
        raise NotImplementedError

    # students
    def new_student(self, ctx: Context, teacher, *, spec=None):
        """The student of `spec` (default ctx.recipe.student; an assistant's spec), freshly initialised."""
        raise NotImplementedError

    def train_student(self, ctx: Context, student, teacher, *, distill: bool, checkpoint: Path, qat: bool = False,
                      mentor=None):
        """Baseline (distill False: no teacher signal), distillation, or quantization-aware distillation,
        with the losses ctx.recipe.distill.loss_weights() turns on. The response is learned from the
        teacher's cached targets, or, when `mentor` is given (an assistant, the born-again baseline), from
        the mentor's outputs computed in the step; feature and relation terms always read the teacher."""
        raise NotImplementedError

    def new_qat(self, ctx: Context, student):
        """A fake-quantized copy of the distilled student, calibrated."""
        raise NotImplementedError

    # deliverables
    def export(self, ctx: Context, models: dict, folder: Path) -> dict:
        """Every model to the target's files in `folder`, each checked against its PyTorch model."""
        raise NotImplementedError

    def bench_inputs(self, ctx: Context) -> tuple[dict, list[int] | None]:
        """(arrays the benchmark evaluates and times, sequence lengths to time or None)."""
        raise NotImplementedError

    def scores(self, ctx: Context, outputs, teacher_outputs) -> dict:
        """Quality fields of one model from its runtime outputs on the test split."""
        raise NotImplementedError

    def manifest(self, ctx: Context, export_meta: dict) -> dict:
        """The task's part of manifest.json: inputs, output, preprocessing, labels."""
        raise NotImplementedError

    def report_extra(self, ctx: Context) -> dict:
        return {}


def get(name: str) -> Task:
    _register_builtin()
    return tasks.get(name)


def _register_builtin() -> None:
    from . import image, text  # noqa: F401

