"""`build(recipe, target)`: the only place that orders the stages. One order for every task:

data -> teacher (load; train or fine-tune when it is not ready; measured before anyone learns from it)
-> soft labels (the teacher's targets, once) -> baseline (no teacher signal) -> assistants (progressive
distillation) -> distilled student (by distill.method) -> quantization-aware distillation -> export (+ parity) -> benchmark (fresh process per model, target
runtime) -> report.

A stage is a function from the artifacts of the stages it reads to a folder of files; edgekd._stages
caches it under a key derived from its declared inputs. What a task does in each stage is its own
module in edgekd/tasks/."""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from ._stages import Stages, StageOut
from .artifacts import MODEL_NAMES, deliverable, model_file, sha256_file
from .errors import EdgeKDError, InputError, RecipeError
from .recipe import Recipe
from .targets import Target


@dataclass
class BuildResult:
    build_dir: Path
    report: dict
    stages: list[StageOut] = field(default_factory=list)

    @property
    def report_md(self) -> Path:
        return self.build_dir / "report.md"


def build(recipe: Recipe, target: Target, *, out_dir: str | Path = "build", force: bool = False,
          log=print, fresh: set | None = None) -> BuildResult | None:
    """Teacher to benchmarked student(s) for one target; writes <out_dir>/<target.name>/.
    Returns None on torch.distributed ranks other than 0. `fresh`: a set shared by the builds of one
    invocation, so that --force rebuilds each stage once, not once per target."""
    import torch

    from .data import load_data
    from .quantize import qat_eval_mode, resolve_reduce_range
    from .schedules import resolve as resolve_training
    from .tasks import Context, get
    from .train import resolve_precision

    task = get(recipe.task)
    check_buildable(recipe, target)
    out_dir = Path(out_dir)
    _check_writable(out_dir)
    created_out = not out_dir.exists()
    torch.manual_seed(recipe.seed)
    device = resolve_device(recipe.device)
    log(f"[device] training on {device}")
    stages = Stages(out_dir / ".cache", force=force, log=log, fresh=fresh)
    try:
        t0 = time.perf_counter()
        ctx = Context(recipe, target, device, log, data=load_data(recipe.data, seed=recipe.seed, base=recipe.base_dir))
        task.prepare(ctx)
        # "auto" training settings resolved once, from the models' families and the data's size: every
        # stage key and recipe.lock.toml carry the values used
        recipe = ctx.recipe = resolve_training(recipe, kind=task.kind, n_train=len(ctx.data.x_train))
        _log_resolved(recipe, log)
        reduce_range = ctx.extra["reduce_range"] = resolve_reduce_range(recipe.quantize.reduce_range)
        # OpenVINO fuses a residual Add into the convolution before it and skips that rounding: QAT
        # trains the placement the target's runtime executes
        qat_for = ctx.extra["qat_runtime"] = "openvino" if target.runtime == "openvino" else "onnxruntime"
        # bf16 autocast for the teacher's targets and the students' training, where asked for ("auto":
        # where this device computes bf16 natively); quantization-aware training stays float32
        precision = ctx.extra["precision"] = resolve_precision(recipe.distill.precision, device)
        data_seconds = time.perf_counter() - t0
        # the device is part of every training key: CUDA and CPU kernels round differently
        data_in = {"task": task.name, "data": asdict(recipe.data), "files": _files(recipe, recipe.data.path),
                   "content": ctx.data.digest(), "seed": recipe.seed, "device": device.split(":")[0], **task.fingerprint(ctx)}
        loaded: dict = {}  # the teacher the stage built, when it ran in this process
        built = _check_models(task, ctx)  # every model spec against the data, before any training
        from . import student_budget

        if student_budget.wanted(recipe):  # the most capable candidate under the budget, timed untrained
            st_choice = stages.run("student-choice", lambda d, _: student_budget.choose(task, ctx, built.module, d),
                                   inputs={**data_in, "student": asdict(recipe.student), "teacher": asdict(recipe.teacher),
                                           "target": {k: getattr(target, k) for k in ("runtime", "format", "precision",
                                                                                      "threads")}})
            recipe = ctx.recipe = student_budget.apply(recipe, st_choice.meta)
            asked = student_budget.describe(recipe.student.max_latency_ms, recipe.student.min_speedup)
            log(f"[student] {st_choice.meta['chosen']} ({asked})")

        # 1. Teacher: loaded; trained or fine-tuned when it is not ready for this data; then measured.
        st_teacher = stages.run("teacher", lambda d, ck: _teacher(task, ctx, d, ck, loaded, built), inputs={
            **data_in, "teacher": asdict(recipe.teacher), "teacher_files": _model_files(recipe, recipe.teacher)})
        teacher = loaded.get("teacher") or _reload_teacher(built, st_teacher)

        # 2. The teacher's targets, computed once.
        st_targets = stages.run("soft-labels", lambda d, _: task.teacher_targets(ctx, teacher, d),
                                inputs={"views": recipe.distill.views, "precision": precision, **task.targets_inputs(ctx)},
                                after=(st_teacher,))
        task.load_targets(ctx, st_targets.dir)

        # 3. Baseline: no teacher signal, same data and budget.
        student_in = {"student": asdict(recipe.student), "student_files": _model_files(recipe, recipe.student),
                      "precision": precision, **task.student_inputs(ctx)}
        st_base = stages.run("baseline", lambda d, ck: _student(task, ctx, teacher, d, ck, distill=False),
                             inputs={**student_in, "distill": _distill_in(recipe.distill, baseline=True)},
                             after=(st_targets,))
        baseline = _load(task.new_student(ctx, teacher), st_base.dir / "model.pt")

        # 4. The distilled student, taught by the teacher or by the mentor the method names.
        mentor, st_mentor, how = _mentor(stages, task, ctx, teacher, (baseline, st_base), st_targets)
        st_dist = stages.run("distill", lambda d, ck: _student(task, ctx, teacher, d, ck, distill=True, mentor=mentor,
                                                               how=how),
                             inputs={**student_in, "distill": _distill_in(recipe.distill)},
                             after=(st_targets,) + ((st_mentor,) if st_mentor else ()))
        student = _load(task.new_student(ctx, teacher), st_dist.dir / "model.pt")

        # 5. Quantization-aware distillation: the fake-quant INT8 student, the same mentor and losses.
        # The accuracy budget acts at export (which layers stay float), so it is the export's input.
        quantize_in = asdict(recipe.quantize)
        quantize_in.pop("max_accuracy_drop")  # read at export, not in training
        st_qat = stages.run("qat", lambda d, ck: _qat(task, ctx, student, teacher, d, ck, mentor=mentor),
                            inputs={"quantize": quantize_in, "reduce_range": reduce_range, "for": qat_for,
                                    **task.qat_inputs(ctx)},
                            after=(st_dist,))
        qat = _load(task.new_qat(ctx, student), st_qat.dir / "model.pt")
        qat_eval_mode(qat)

        if stages.rank != 0:  # export, benchmark and report are rank 0's alone
            return None
        stages.distributed = False  # no collective calls from here on: the other ranks have left
        models = {"teacher": teacher, "student-baseline": baseline, "student-fp32": student, task.quantized_name(target): qat}
        st_export = stages.run("export", lambda d, _: _export(task, ctx, models, d), after=(st_teacher, st_base, st_dist, st_qat),
                               inputs={"export": asdict(recipe.export), "quantize": asdict(recipe.quantize),
                                       "runtime": target.runtime, "format": target.format, "precision": target.precision,
                                       **task.export_inputs(ctx)})
        stages.run("benchmark", lambda d, _: task.benchmark(ctx, st_export.dir, d),
                   inputs={"target": asdict(target), **task.benchmark_key(ctx)}, after=(st_export,))
        from .models import count_params
        from .report import check_budget

        report = task.assemble(ctx, stages.done, data_seconds, {n: count_params(m) for n, m in models.items()})
        check_budget(report, target)
        arm_inputs = task.arm_inputs(ctx) if target.backend.arm_check and target.precision == "int8" else None
        if arm_inputs is not None:
            report["arm_verification"] = _verify_on_arm(st_export.dir / model_file("student-int8", target), arm_inputs, log)
        from .builddir import write_build

        build_dir = write_build(out_dir, target, recipe, report, st_export, task.manifest(ctx, st_export.meta))
    except BaseException:
        if created_out and out_dir.exists() and not any(p for p in out_dir.rglob("*") if p.is_file()):
            shutil.rmtree(out_dir, ignore_errors=True)
        raise
    return BuildResult(build_dir, report, stages.done)


def check_buildable(recipe: Recipe, target) -> None:
    """Before any training (InputError otherwise): the target's runtime is installed and carries the
    task's models, the task builds its precision, and the recipe's INT8 budget can be honoured there."""
    from .backends import check_target as check_backend
    from .tasks import get

    task = get(recipe.task)
    check_backend(target, kind=task.kind)
    task.check_target(target)
    if recipe.quantize.max_accuracy_drop:
        from .budget import check_target

        check_target(target)


def _log_resolved(recipe: Recipe, log) -> None:
    t, d = recipe.teacher, recipe.distill
    log(f"[settings] teacher {t.optimizer} lr {t.lr:g}, {t.epochs} epochs (if trained here); students "
        f"{d.optimizer} lr {d.lr:g}, {d.epochs} epochs, batch {d.batch_size}; QAT lr {recipe.quantize.lr:g} "
        "(edgekd.schedules; recipe.lock.toml)")


def _mentor(stages: Stages, task, ctx, teacher, base: tuple, st_targets: StageOut) -> tuple:
    """Whom the distilled student learns its response from: the teacher (None: its cached targets), the
    baseline (self: born-again networks), or the last of `distill.assistants`, each a stage of its own
    distilled from the one before (progressive). -> (mentor, its stage, the method's report fields)."""
    recipe = ctx.recipe
    method = recipe.distill.resolved_method
    mentor, st_mentor = base if method == "self" else (None, None)
    chain = []
    specs = recipe.distill.assistant_specs(recipe.student)
    for i, (item, spec) in enumerate(zip(recipe.distill.assistant_list(), specs)):
        st = stages.run(f"assistant-{i + 1}", lambda d, ck, spec=spec, m=mentor: _student(
            task, ctx, teacher, d, ck, distill=True, spec=spec, mentor=m), after=(st_mentor or st_targets,),
            inputs={"student": asdict(spec), "student_files": _model_files(recipe, spec), **task.student_inputs(ctx),
                    "distill": _distill_in(recipe.distill, assistant=True)})
        mentor, st_mentor = _load(task.new_student(ctx, teacher, spec=spec), st.dir / "model.pt"), st
        chain.append({"assistant": item, "model": spec.model, "val_score": st.meta.get("val_score"),
                      "params": st.meta.get("params"), "stage": st.dir.name})
    how = {"method": method, "loss_weights": recipe.loss_weights(),
           "mentor": "baseline" if method == "self" else f"assistant-{len(chain)}" if chain else "teacher",
           **({"assistants": chain} if chain else {})}
    return mentor, st_mentor, how


# stage functions -----------------------------------------------------------------------------------

def _check_models(task, ctx):
    """The teacher loaded, and the student and every assistant built from it for this data, before any
    training: a typo in a model type, a config key or a layer list fails here, not after the teacher
    trained. Says a student no smaller than its teacher, and a teacher that will be trained here. -> the
    teacher's edgekd.models.Built, which the teacher stage uses."""
    import torch

    from .models import count_params

    r = ctx.recipe
    built = task.load_teacher(ctx)
    state = torch.get_rng_state()  # the students built here are thrown away: training starts as without them
    try:
        students = [task.new_student(ctx, built.module, spec=s) for s in (r.student, *r.distill.assistant_specs(r.student))]
    finally:
        torch.set_rng_state(state)
    t, s = count_params(built.module), count_params(students[0])
    ctx.log(f"[models] teacher {t:,} parameters, student {s:,} ({s / max(t, 1):.2f}x)")
    if s >= t:
        ctx.log(f"[models] warning: the student ({s:,} parameters) is not smaller than the teacher ({t:,}); it will "
                "hardly be faster: choose a smaller student.model")
    if not built.ready:
        plan = ("it is trained here first" if r.teacher.fine_tune in ("auto", "always", "probe")
                else "teacher.fine_tune = never uses it as it is")
        ctx.log(f"[teacher] not ready for this data ({built.note}): {plan}")
    return built


def _teacher(task, ctx, d: Path, ckpt: Path, keep: dict, built) -> dict:
    import torch

    from .models import count_params

    spec = ctx.recipe.teacher
    train = spec.fine_tune in ("always", "probe") or (spec.fine_tune == "auto" and not built.ready)
    meta = {"model": spec.model, "note": built.note, "params": count_params(built.module), "trained_here": train}
    if train:
        meta.update(task.train_teacher(ctx, built.module, ckpt).meta())
        torch.save(built.module.state_dict(), d / "model.pt")
    meta["val_score"] = task.validate(ctx, built.module)
    _check_teacher(ctx, meta)  # inside the stage: a teacher that fails it is never cached
    keep["teacher"] = built.module.eval()
    return meta


def _reload_teacher(built, st: StageOut):
    m = built.module
    return _load(m, st.dir / "model.pt") if st.meta.get("trained_here") else m.eval()


def _check_teacher(ctx, meta: dict) -> None:
    """A teacher near chance on the validation split would teach noise: stop before anyone learns from
    it. Chance is the larger of 1/K and the most frequent class's share."""
    import numpy as np

    val, y = meta.get("val_score"), ctx.data.y_val
    if val is None or y is None or ctx.io.num_classes < 2 or len(np.unique(y)) < 2:
        return  # nothing to compare with (a validation split of one class says nothing about chance)
    chance = max(1 / ctx.io.num_classes, float(np.bincount(y).max() / len(y)))
    if val < chance + 0.1 * (1 - chance):
        raise EdgeKDError(
            f"teacher '{ctx.recipe.teacher.model}' scores {100 * val:.1f}% on the validation split, near chance "
            f"({100 * chance:.1f}% for {ctx.io.num_classes} classes): it looks untrained for this data"
            f"{' (' + meta['note'] + ')' if meta.get('note') else ''}; give trained "
            "weights (teacher.weights) or let edgekd train it (teacher.fine_tune = always)")


def _student(task, ctx, teacher, d: Path, ckpt: Path, *, distill: bool, spec=None, mentor=None,
             how: dict | None = None) -> dict:
    """A student (or an assistant: `spec`) trained on the labels (distill False), or from the teacher's
    cached targets, or from `mentor` run in the step."""
    import torch

    from .models import count_params

    s = task.new_student(ctx, teacher, spec=spec)
    r = task.train_student(ctx, s, teacher, distill=distill, checkpoint=ckpt, mentor=mentor)
    torch.save(s.state_dict(), d / "model.pt")
    return {"params": count_params(s), **(how or {}), **r.meta()}


def _qat(task, ctx, student, teacher, d: Path, ckpt: Path, *, mentor=None) -> dict:
    import torch

    q = task.new_qat(ctx, student)
    r = task.train_student(ctx, q, teacher, distill=True, checkpoint=ckpt, qat=True, mentor=mentor)
    torch.save(q.state_dict(), d / "model.pt")
    return {"method": ctx.recipe.quantize.method, "reduce_range": ctx.extra["reduce_range"], **r.meta()}


def _export(task, ctx, models: dict, d: Path) -> dict:
    from .backends import describe

    meta = task.export(ctx, models, d)
    meta.update(describe(d, ctx.target, meta))
    return meta


def _load(module, path: Path):
    import torch

    module.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    return module.eval()


# inputs of the cache keys ----------------------------------------------------------------------------

def _distill_in(spec, *, baseline: bool = False, assistant: bool = False) -> dict:
    """The distill section as a stage reads it: the method as resolved ("auto" with no family weights
    trains what "response" does); the baseline without the settings of the teacher signal (the fields
    edgekd.recipe marks "signal"), so one baseline serves every method; an assistant without the chain
    (it learns the response from the model before it, so "4" and "4,3" share it)."""
    d = {**asdict(spec), "method": spec.resolved_method}
    if baseline:
        return {f.name: d[f.name] for f in fields(spec) if not f.metadata.get("signal")}
    if assistant:
        d = {k: v for k, v in d.items() if k not in ("method", "assistants")}
    return d


def _files(recipe: Recipe, *paths: str) -> dict:
    """sha256 of the local files (or a folder's files) a setting names, so an edited file invalidates
    the stages that read it; hub ids and unset values contribute nothing."""
    out = {}
    for value in paths:
        if not value:
            continue
        p = recipe.path(value)
        files = [p] if p.is_file() else sorted(f for f in p.rglob("*") if f.is_file()) if p.is_dir() else []
        if len(files) > 2000:  # a large folder: names, sizes and times stand in for contents
            out[value] = [(str(f.relative_to(p)), f.stat().st_size, f.stat().st_mtime_ns) for f in files]
        else:
            out[value] = {str(f): sha256_file(f) for f in files}
    return out


def _model_files(recipe: Recipe, spec) -> dict:
    ref = spec.ref
    if spec.scheme == "hf" and ref.startswith("package:"):
        from .models.hf import resolve_ref

        ref = resolve_ref(ref, Path(recipe.base_dir), gguf=True)
    local = ref if spec.scheme in ("hf", "hf-config", "torchscript") else ""
    return _files(recipe, local, spec.weights)


def resolve_device(setting: str) -> str:
    """'auto' -> CUDA when present, else CPU; under torchrun each rank takes its LOCAL_RANK's GPU."""
    import torch

    if setting == "auto":
        setting = "cuda" if torch.cuda.is_available() else "cpu"
    if setting.startswith("cuda"):
        if not torch.cuda.is_available():
            raise RecipeError(f"device = '{setting}' but no CUDA GPU is visible; use device=auto or device=cpu")
        if setting == "cuda":
            setting = f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
        torch.cuda.set_device(torch.device(setting))
    return setting


def _check_writable(out_dir: Path) -> None:
    probe = out_dir
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir() or not os.access(probe, os.W_OK | os.X_OK):
        raise InputError(f"output folder '{out_dir}' is not writable; pass --out to a folder you can write")


def _verify_on_arm(model: Path, inputs: tuple, log) -> dict:
    """The INT8 deliverable's test accuracy on aarch64 onnxruntime kernels under user-mode emulation
    (edgekd verify-arm), when the emulator is installed; a note saying how to get it otherwise."""
    from .verify_arm import arm_available, verify_arm

    if not arm_available():
        return {"skipped": "ARM verification needs qemu-user-static and debootstrap (apt-get install "
                           "qemu-user-static debootstrap); then run edgekd verify-arm BUILD_DIR"}
    log("[verify-arm] running the INT8 model on aarch64 onnxruntime (emulated cortex-a76; outputs only)")
    return verify_arm(model, *inputs, log=log)


__all__ = ["build", "BuildResult", "MODEL_NAMES", "deliverable"]
