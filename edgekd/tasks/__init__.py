"""Tasks: what a build learns and measures. A task is one module registered here; it supplies the
input/output signature, how the teacher's targets are made, the training step, the metrics, the parity
check, the deliverable's manifest and its parts of the report. No module outside edgekd/tasks/ tests a task's
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
    kind = ""  # "image" or "text": which data sources, model sources and losses fit
    response = ""  # what its students answer with and the teacher's cached targets hold: "logits" or "embedding"
    quality = ""  # the headline metric of report.json's models ("accuracy", "fidelity_cosine")
    quality_label = ""  # how the report names it

    def check_recipe(self, recipe) -> None:
        """Refuse, at recipe build time, settings this task cannot run."""

    def check_target(self, target) -> None:
        """Refuse, before any training, a target precision this task does not build."""
        if target.precision not in ("fp32", "int8"):
            from ..errors import InputError

            raise InputError(f"task {self.name} builds fp32 and int8 targets, not '{target.name}' ({target.precision})")

    def quantized_name(self, target) -> str:
        """The quantized student's name among the build's models."""
        return "student-int8"

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

    def targets_inputs(self, ctx: Context) -> dict:
        """Settings the teacher's targets depend on beyond the teacher and the data (part of their key)."""
        return {}

    def student_inputs(self, ctx: Context) -> dict:
        """Task settings the students' training depends on beyond the student and distill sections (part
        of the student stages' keys)."""
        return {}

    def qat_inputs(self, ctx: Context) -> dict:
        """What the quantization-aware stage depends on beyond the quantize section and the target's runtime
        (part of its key): a task whose fake-quant grid follows the target's precision says so here."""
        return {}

    def export_inputs(self, ctx: Context) -> dict:
        """Task settings the export depends on beyond the export and quantize sections (part of its key)."""
        return {}

    # students
    def new_student(self, ctx: Context, teacher, *, spec=None):
        """The student of `spec` (default ctx.recipe.student; an assistant's spec), freshly initialised."""
        raise NotImplementedError

    def train_student(self, ctx: Context, student, teacher, *, distill: bool, checkpoint: Path, qat: bool = False,
                      mentor=None):
        """Baseline (distill False: no teacher signal), distillation, or quantization-aware distillation,
        with the losses ctx.recipe.loss_weights() turns on. The response is learned from the
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

    def bench_inputs(self, ctx: Context):
        """-> edgekd.bench.BenchInputs: the test split's evaluation feeds and the batch-1 cases to time."""
        raise NotImplementedError

    def timing_graph(self, ctx: Context, model, folder: Path, *, int8: bool):
        """An untrained candidate student as the ONNX graph the target would time (INT8: post-training) and
        its headline batch-1 input: -> (path, input). edgekd.student_budget."""
        from ..errors import RecipeError

        raise RecipeError(f"student.max_latency_ms and student.min_speedup are not available for task {self.name}; remove them")

    def benchmark_key(self, ctx: Context) -> dict:
        """What the benchmark stage measures beyond the target profile (part of its key)."""
        return {"cases": list(self._bench_inputs(ctx).cases)}

    def benchmark(self, ctx: Context, export_dir: Path, folder: Path) -> dict:
        """Every exported model timed on the target's runtime, a fresh process each; outputs into `folder`."""
        from ..bench import bench_models

        return bench_models(folder, export_dir, ctx.target, self._bench_inputs(ctx))

    def _bench_inputs(self, ctx: Context):
        if "bench_inputs" not in ctx.extra:
            ctx.extra["bench_inputs"] = self.bench_inputs(ctx)
        return ctx.extra["bench_inputs"]

    def assemble(self, ctx: Context, done: list, data_seconds: float, params: dict) -> dict:
        """report.json from the stages' results (edgekd.report.assemble: the classifiers' and encoders')."""
        from ..report import assemble

        return assemble(self, ctx, done, data_seconds, params)

    def render_markdown(self, r: dict) -> str | None:
        """report.md of a task whose report is its own; None: edgekd.report's sections with report_parts."""
        return None

    def summary_lines(self, r: dict) -> list[str] | None:
        """The CLI's table after a build, for a task whose report is its own; None: the shared one."""
        return None

    def scores(self, ctx: Context, outputs, teacher_outputs) -> dict:
        """Quality fields of one model from its runtime outputs on the test split."""
        raise NotImplementedError

    def item_scores(self, ctx: Context, outputs, teacher_outputs):
        """Per-item quality on the test split, whose mean is `quality`: a bool array (each item right or
        wrong) or a float array (a per-item score). report.json's intervals and paired tests are computed
        from these (edgekd.report.stats); None: the task has none, and its report states no uncertainty."""
        return None

    def manifest(self, ctx: Context, export_meta: dict) -> dict:
        """The task's part of manifest.json: inputs, output, preprocessing, labels."""
        raise NotImplementedError

    def report_extra(self, ctx: Context) -> dict:
        return {}

    def arm_inputs(self, ctx: Context):
        """(inputs, labels) on which an INT8 deliverable is compared between x86 and aarch64 kernels
        (edgekd.verify_arm, for backends that offer it), or None when the task has no such check."""
        return None

    # report: edgekd.report renders report.md from report.json (`r`) alone: the generic sections (the
    # headlines and their flags, the accuracy and memory budgets, the target's sections, stage times, the
    # environment) around the task's parts. `x` is one model's entry of r["models"].
    def quality_points(self, value: float) -> float:
        """A value of `quality` in points: the unit of the verdict's differences, the figures' quality axis
        and the CLI summary (a score in [0, 1] is 100 x value)."""
        raise NotImplementedError

    def quality_phrase(self, r: dict, x: dict) -> str:
        """How a headline names x's quality: "-0.60 points test accuracy (98.40%)", "cosine fidelity
        0.9312 to the teacher"."""
        raise NotImplementedError

    def quality_short(self) -> str:
        """The quality column's heading where space is short (the CLI summary): "acc", "cosine"."""
        raise NotImplementedError

    def model_labels(self) -> dict[str, str]:
        """The four models' names in this task's tables and figures (teacher, student-baseline, ...)."""
        raise NotImplementedError

    def latency_input(self, r: dict) -> str:
        """The input the headline latency was timed on, in words ("48 tokens"); "" when the task times
        one fixed input."""
        return ""

    def distillation_check(self, gain: float) -> str:
        """The headline's flag when the distilled student is `gain` (< 0) points below its baseline."""
        raise NotImplementedError

    def distillation_verdict(self, r: dict) -> list[str]:
        """The verdict's bullets after the headlines: distillation against its baseline, the teacher
        against the student."""
        raise NotImplementedError

    def report_parts(self, r: dict) -> ReportParts:
        """The sections of report.md this task writes."""
        raise NotImplementedError



@dataclass
class ReportParts:
    """A task's parts of report.md, markdown lines that edgekd.report places among the generic sections."""
    title: str  # the page's first line
    table: list[str]  # what was measured and how (a paragraph after the verdict), then the models table
    gains: list[str]  # the section "What distillation and INT8 bought"
    int8: list[str]  # the INT8 graph's bullets: what is quantized and how, the kernels that run
    parity: list[str]  # the section on each export against its PyTorch model
    training: list[str]  # the section of validation scores and chosen epochs
    # the target's sections (latency by thread count, mobile, named-device estimates, the ARM check):
    # the text reports have never shown them
    target_sections: bool = True

def get(name: str) -> Task:
    _register_builtin()
    return tasks.get(name)


def _register_builtin() -> None:
    from . import image, text, text_generation  # noqa: F401

