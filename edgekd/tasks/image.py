"""image-classification: images (N, C, H, W) -> class logits (N, K), any size, channel and class count.

Students learn from the teacher's logits on `distill.views` augmented copies of every training image,
computed once (consistent teaching, Beyer et al. 2022: the teacher labels the very view the student
sees), so an epoch costs one student pass. Feature and relation distillation read the teacher's
intermediate features (edgekd.features, forward hooks), which are not cached: the teacher runs in every
step. A mentor other than the teacher (an assistant, the born-again baseline) runs in the step too.
The QAT student is a captured graph with no submodules to hook, so quantization-aware distillation
learns the response (logits) of the same mentor alone."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import InputError, RecipeError
from . import Context, Task, tasks

# Cached views are memory-mapped, but they are written to disk: cap them for large images.
_VIEWS_BYTES = 2 << 30


class ImageClassification(Task):
    name = "image-classification"
    kind = "image"
    response = "logits"
    quality = "accuracy"
    quality_label = "test accuracy"

    def check_recipe(self, recipe) -> None:
        from .. import losses

        ds = recipe.distill
        if recipe.quantize.activations == "dynamic":
            raise RecipeError("quantize.activations = 'dynamic' applies to transformer students; an image student's "
                              "convolutions run static INT8 (remove the key, or set 'static')")
        if not any(losses.get(k).reads == "logits" for k in recipe.loss_weights()):
            raise RecipeError("distill.losses.kd = 0 leaves quantization-aware training nothing to learn (an image "
                              "student's fake-quant graph has no layers to hook: it learns the logits alone); keep kd > 0")
        counts = [v for v in ds.assistant_list() if v.isdigit()]
        if counts:
            raise RecipeError(f"distill.assistants item '{counts[0]}' is a layer count, which applies to text students "
                              "built from the teacher; give image assistants as models, e.g. distill.assistants = "
                              "'mnist-assistant' (an architecture name or SCHEME:REF)")

    def prepare(self, ctx: Context) -> None:
        from ..models import ModelIO

        d = ctx.data
        if d.kind != "image":
            raise InputError(f"task {self.name} needs images, but data.source '{ctx.recipe.data.source}' gives "
                             f"{d.kind}; use an image source (mnist, arrays, image-folder, hf-dataset with images)")
        if d.y_train is None or d.num_classes < 2:
            raise InputError(f"task {self.name} needs at least two labelled classes; data.source "
                             f"'{ctx.recipe.data.source}' gave {d.num_classes}")
        ctx.io = ModelIO("image", d.input_shape, d.num_classes, list(d.labels))
        if ctx.recipe.quantize.weight_bits != 8 and not ctx.target.backend.edgekd_int8:
            raise InputError(f"quantize.weight_bits = {ctx.recipe.quantize.weight_bits} applies to the INT8 ONNX models "
                             f"edgekd writes, not to target '{ctx.target.name}' (its own quantizer writes 8 bits); "
                             "remove it or build cpu-int8, cpu-int8-openvino or mobile-int8")

    # teacher ---------------------------------------------------------------------------------------
    def load_teacher(self, ctx: Context):
        from ..models import load_model
        from ..models.checks import check_fits

        built = load_model(ctx.recipe.teacher, ctx.io, base=ctx.base, seed=ctx.recipe.seed)
        check_fits(built.module, ctx.io, what=f"teacher '{ctx.recipe.teacher.model}'")
        return built

    def train_teacher(self, ctx: Context, teacher, checkpoint: Path):
        import torch.nn.functional as F

        from ..schedules import fit_spec
        from ..train import fit

        spec, d = ctx.recipe.teacher, ctx.data
        bs = spec.batch_size
        fs = fit_spec(ctx, role="teacher", n_rows=len(d.x_train), desc="teacher")
        smoothing = spec.label_smoothing

        def step(forward, batch):
            x, y = batch
            return F.cross_entropy(forward(x), y, label_smoothing=smoothing)

        return fit(teacher, fs, batches=self._batches(ctx, d.x_train, d.y_train, bs, augment=True), step=step,
                   validate=lambda m: self.validate(ctx, m), checkpoint=checkpoint, log=ctx.log, device=ctx.device)

    def validate(self, ctx: Context, model) -> float:
        from ..train import accuracy, predict

        model.eval()
        return accuracy(predict(model, ctx.data.x_val), ctx.data.y_val)

    def _batches(self, ctx: Context, x, y, batch_size: int, *, augment: bool, soft=None):
        """batches(epoch, generator) over x (N, C, H, W), or cached views (V, N, C, H, W) where epoch e
        uses view e mod V together with the teacher's logits `soft` (V, N, K) for that view."""
        import torch

        from ..data.augment import augment as apply

        policy = ctx.data.augment if augment else "none"
        yt = torch.from_numpy(y)

        def batches(epoch: int, g):
            multi = x.ndim == 5
            view = epoch % x.shape[0] if multi else None
            xe = torch.from_numpy(np.array(x[view] if multi else x))  # a private copy: x may be memory-mapped
            se = torch.from_numpy(np.array(soft[view])) if soft is not None else None
            order = torch.randperm(len(xe), generator=g)
            for i in range(0, len(xe), batch_size):
                idx = order[i:i + batch_size]
                xb = xe[idx]
                if not multi and policy != "none":
                    xb = apply(policy, xb, g)  # every rank draws the same numbers: generators stay in step
                yield (xb, yt[idx]) if se is None else (xb, yt[idx], se[idx])

        return batches

    def teacher_targets(self, ctx: Context, teacher, folder: Path) -> dict:
        """`views` augmented copies of the training images (view 0 clean) and the teacher's logits on
        exactly those copies: views_x (V, N, C, H, W), views_logits (V, N, K). On CUDA, and where
        distill.precision resolves to bf16, the teacher runs under bf16 autocast (logits stored in float32)."""
        import torch

        from ..data.augment import augment as apply
        from ..shard import split_rows
        from ..train import accuracy, predict

        d, ds = ctx.data, ctx.recipe.distill
        views = max(1, min(ds.views, _VIEWS_BYTES // max(d.x_train.nbytes, 1)))
        if views < ds.views:
            ctx.log(f"[soft-labels] {views} views instead of {ds.views}: the cache of views is kept under 2 GB")
        g = torch.Generator().manual_seed(ctx.recipe.seed + 1)
        teacher.to(ctx.device).eval()
        xs = np.lib.format.open_memmap(folder / "views_x.npy", "w+", np.float32, (views, *d.x_train.shape))
        ts = None
        try:
            for v in range(views):
                xv = torch.from_numpy(d.x_train)
                if v > 0 and d.augment != "none":
                    xv = torch.cat([apply(d.augment, xv[i:i + 512], g) for i in range(0, len(xv), 512)])
                xs[v] = xv.numpy()
                bf16 = ctx.device.startswith("cuda") or ctx.extra.get("precision") == "bf16"
                # under torchrun each rank runs the teacher on its share of the rows (edgekd.shard)
                logits = split_rows(len(xs[v]), lambda idx: predict(teacher, xs[v][idx], bf16=bf16))
                if ts is None:
                    ts = np.lib.format.open_memmap(folder / "views_logits.npy", "w+", np.float32, (views, *logits.shape))
                ts[v] = logits
        finally:
            teacher.to("cpu")
        xs.flush()
        ts.flush()
        return {"views": views, "teacher_train_accuracy_view0": accuracy(np.asarray(ts[0]), d.y_train)}

    def load_targets(self, ctx: Context, folder: Path) -> None:
        # memory-mapped: an epoch reads one view, so the cache can outgrow memory
        ctx.extra["views_x"] = np.load(folder / "views_x.npy", mmap_mode="r")
        ctx.extra["views_logits"] = np.load(folder / "views_logits.npy", mmap_mode="r")

    # students --------------------------------------------------------------------------------------
    def new_student(self, ctx: Context, teacher, *, spec=None):
        from ..models import load_model
        from ..models.checks import check_fits

        spec = spec or ctx.recipe.student
        from ..schedules import student_seed

        built = load_model(spec, ctx.io, base=ctx.base, teacher=teacher, seed=student_seed(ctx.recipe))
        check_fits(built.module, ctx.io, what=f"student '{spec.model}'")
        return built.module

    def train_student(self, ctx: Context, student, teacher, *, distill: bool, checkpoint: Path, qat: bool = False,
                      mentor=None):
        import torch
        import torch.nn.functional as F

        from ..features import capture
        from ..losses import get as get_loss
        from ..quantize import qat_eval_mode, qat_train_mode
        from ..recipe import parse_layer_map
        from ..schedules import fit_spec
        from ..train import fit

        ds, d = ctx.recipe.distill, ctx.data
        xs, ts = ctx.extra["views_x"], ctx.extra["views_logits"]
        fs = fit_spec(ctx, role="student", n_rows=xs.shape[1], qat=qat,
                      desc="qat" if qat else ("distill" if distill else "baseline"))
        T, alpha = ds.temperature, ds.alpha
        terms = [(get_loss(k), w) for k, w in ctx.recipe.loss_weights().items()] if distill else []
        if qat:  # the QAT student is a captured graph with no submodules to hook: the response alone
            terms = [(loss, w) for loss, w in terms if loss.reads == "logits"]
        reads = {loss.reads for loss, _ in terms}
        shape = ctx.io.input_shape
        extra, s_pts, t_pts, info = {}, {}, {}, {}
        if "feature_maps" in reads:
            from ..features import Hints

            torch.manual_seed(ctx.recipe.seed)
            hints = extra["hints"] = Hints(student, teacher, shape, parse_layer_map(ds.layer_map) if ds.layer_map else None)
            s_pts, t_pts = hints.student_points(), hints.teacher_points()
            info["feature_pairs"] = hints.describe()
        if "embedding" in reads:  # relation losses, on the penultimate embeddings
            from ..features import classifier_input

            s_pts["embedding"] = (classifier_input(student, shape)[0], "input")
            t_pts["embedding"] = (classifier_input(teacher, shape)[0], "input")
            info["relation_inputs"] = {"student": s_pts["embedding"][0], "teacher": t_pts["embedding"][0]}
        mentor = mentor if distill else None
        cached = distill and mentor is None  # the teacher's logits on these very views are in the cache
        for m in ((teacher,) if t_pts else ()) + ((mentor,) if mentor is not None else ()):
            m.to(ctx.device).eval()

        def step(forward, batch):
            if not distill:
                x, y = batch
                return F.cross_entropy(forward(x).float(), y)
            x, y, *soft = batch
            logits = forward(x)  # (B, K); the student's hooks fill f_s
            if t_pts:
                with torch.no_grad():
                    teacher(x)  # its hooks fill f_t
            if mentor is not None:
                with torch.no_grad():
                    soft = [mentor(x)]
            s, t = {"logits": logits}, {"logits": soft[0]}
            if "feature_maps" in reads:
                pairs = extra["hints"].pairs(f_s, f_t)  # P x ((B, C_t, H, W) regressed student map, teacher map)
                s["feature_maps"], t["feature_maps"] = [p for p, _ in pairs], [q for _, q in pairs]
            if "embedding" in reads:
                s["embedding"], t["embedding"] = f_s["embedding"].float(), f_t["embedding"].float()
            loss = 0.0
            for term, w in terms:
                loss = loss + w * term.fn(s, t, None, labels=y, temperature=T, alpha=alpha)
            return loss

        try:
            with capture(student, s_pts) as f_s, capture(teacher, t_pts) as f_t:
                r = fit(student, fs, batches=self._batches(ctx, xs, d.y_train, ds.batch_size, augment=False,
                                                           soft=ts if cached else None),
                        step=step, validate=lambda m: self._val_mode(ctx, m), extra=extra, checkpoint=checkpoint,
                        log=ctx.log, device=ctx.device, train_mode=qat_train_mode if qat else None,
                        eval_mode=qat_eval_mode if qat else None)
        finally:
            teacher.to("cpu")
            if mentor is not None:
                mentor.to("cpu")
        r.info.update(info)
        return r

    def _val_mode(self, ctx: Context, model) -> float:
        """Validation accuracy without touching the model's mode (the loop set eval or QAT-eval)."""
        from ..train import accuracy, predict

        return accuracy(predict(model, ctx.data.x_val), ctx.data.y_val)

    def new_qat(self, ctx: Context, student):
        from ..quantize import QuantizeSpec, calibrate, prepare

        spec = QuantizeSpec(reduce_range=ctx.extra["reduce_range"], runtime=ctx.extra["qat_runtime"],
                            weight_bits=ctx.recipe.quantize.weight_bits)
        q = prepare(student, spec, input_shape=ctx.io.input_shape)
        calibrate(q, ctx.data.x_train[: ctx.recipe.quantize.calibration])
        return q

    # deliverables ----------------------------------------------------------------------------------
    def export(self, ctx: Context, models: dict, folder: Path) -> dict:
        """ONNX for every model (INT8 QDQ for the quantized student, with the ranges QAT learned), the
        target's form (OpenVINO IR, .ort, ExecuTorch .pte), each checked against its PyTorch model.
        transformers models go through optimum's exporter (pixel_values -> logits, as optimum names them;
        the INT8 graph of such a student keeps those names); an .onnx deliverable of a transformers student
        also gets hf/, the folder optimum and transformers.pipeline load (edgekd.export_hf)."""
        from .. import backends
        from ..export import check_integer_kernels, check_parity, export_onnx
        from ..export_hf import PIXELS, export_image, write_image_folder
        from ..models.hf_image import ImageClassifier
        from ..quantize import export_int8_onnx
        from ..train import predict

        es, d, target = ctx.recipe.export, ctx.data, ctx.target
        xp = np.ascontiguousarray(d.x_val[: es.parity_samples])
        calib = d.x_train[: ctx.recipe.quantize.calibration]
        hf_student = isinstance(models["student-fp32"], ImageClassifier)
        int8_input = PIXELS if hf_student else "input"  # the INT8 graph is named as its FP32 student's
        meta: dict = {"parity": {}, "reduce_range": ctx.extra["reduce_range"], "exporters": {}}
        for name, model in models.items():
            int8 = name == "student-int8"
            if int8 and ctx.recipe.quantize.max_accuracy_drop:
                model, meta["accuracy_budget"] = self._fit_budget(ctx, model, folder, calib, input_name=int8_input)
            if int8 and ctx.recipe.quantize.int8_layers == "auto" and target.backend.edgekd_int8:
                # after the budget: `model` already leaves the budget's layers float
                model, meta["int8_payoff"] = self._pay_off(ctx, model, folder, calib, input_name=int8_input)
            if int8 and (meta.get("int8_payoff") or {}).get("ship_fp32"):
                # INT8 is slower than float on this runtime whichever layers stay float: ship the FP32 student
                import shutil

                shutil.copy2(folder / "student-fp32.onnx", folder / "student-int8.onnx")
                model = models["student-fp32"]
                meta["exporters"][name] = {**meta["exporters"]["student-fp32"], "exporter": "the FP32 student's graph",
                                           "why": "INT8 did not pay on the target's runtime (edgekd.payoff)"}
                ms = meta["int8_payoff"]["p50_ms"]
                meta["int8_shipped_fp32"] = {"int8_ms": ms["chosen"], "fp32_ms": ms["fp32"], "at": "batch 1"}
            elif int8:
                # the QAT graph itself (edgekd.quantize): optimum would export a float model, not these ranges
                meta["int8_export"] = export_int8_onnx(model, folder / "student-int8.onnx", input_shape=ctx.io.input_shape,
                                                       opset=es.opset, calib_x=calib, reduce_range=ctx.extra["reduce_range"],
                                                       input_name=int8_input)
                meta["int8_ops"] = check_integer_kernels(folder / "student-int8.onnx")
                meta["exporters"][name] = {"exporter": "torch.onnx", "why": "edgekd's QAT graph, QDQ with the trained ranges",
                                           "input": int8_input, "output": "logits"}
            elif isinstance(model, ImageClassifier):
                meta["exporters"][name] = export_image(model, folder / f"{name}.onnx", opset=es.opset,
                                                       input_shape=ctx.io.input_shape)
            else:
                export_onnx(model, folder / f"{name}.onnx", ctx.io.input_shape, opset=es.opset)
                meta["exporters"][name] = {"exporter": "torch.onnx", "why": "not a transformers model",
                                           "input": "input", "output": "logits"}
            if name == "student-fp32" and hf_student and target.format == "onnx":
                meta["hf"] = write_image_folder(model, folder / "hf", preprocessing=d.preprocessing)
            ref = predict(model, xp)
            # a format made from the PyTorch model quantizes the QAT-tuned float weights with its own
            # quantizer (the scheme its runtime's kernels run)
            files, made = backends.make_files(folder, name, target, model=model, int8=int8,
                                              calib_x=calib if int8 else None, input_shape=ctx.io.input_shape)
            if made:
                meta.setdefault("made", {})[files[-1]] = made
            if int8 and not target.backend.edgekd_int8 and ctx.recipe.quantize.int8_layers == "auto":
                model, ref = self._program_pays(ctx, folder, files, meta, models, model, ref, xp)
            for fname in files:
                out = backends.load(folder / fname, threads=1)(xp)
                meta["parity"][fname] = check_parity(
                    fname, out, ref, min_agreement=es.int8_min_agreement if int8 else es.fp32_min_agreement,
                    max_abs_diff=None if int8 else es.fp32_max_abs_diff).to_dict()
        return meta

    def _program_pays(self, ctx: Context, folder: Path, files: list[str], meta: dict, models: dict, model, ref, xp):
        """A runtime that quantizes with its own quantizer (edgekd.payoff.program_pays): where its INT8
        program is slower than its FP32 one, the target ships the FP32 student's files as student-int8,
        as for the runtimes edgekd quantizes. Returns the model and outputs the files are checked against."""
        import shutil

        from ..payoff import program_pays
        from ..train import predict

        ext = ctx.target.backend.extension
        pay = program_pays(folder / f"student-fp32{ext}", folder / files[-1], threads=ctx.target.threads, x=xp[:1])
        meta["int8_program_payoff"] = pay
        if not pay["ship_fp32"]:
            return model, ref
        ctx.log(f"[export] INT8 {pay['p50_ms']['int8']:.3f} ms vs FP32 {pay['p50_ms']['fp32']:.3f} ms at batch 1 on "
                f"{ctx.target.runtime}: INT8 does not pay here, the target ships the FP32 student")
        for fname in files:  # student-int8.onnx and the runtime's program
            shutil.copy2(folder / fname.replace("student-int8", "student-fp32"), folder / fname)
        if f"student-fp32{ext}" in meta.get("made", {}):
            meta["made"][files[-1]] = meta["made"][f"student-fp32{ext}"]
        meta["int8_shipped_fp32"] = {"int8_ms": pay["p50_ms"]["int8"], "fp32_ms": pay["p50_ms"]["fp32"], "at": "batch 1"}
        meta["int8_ops"] = {}
        model = models["student-fp32"]
        return model, predict(model, xp)

    def _fit_budget(self, ctx: Context, q, folder: Path, calib, *, input_name: str = "input"):
        """quantize.max_accuracy_drop (edgekd.budget): the layers that stay float, measured on the target's
        runtime against the FP32 export in `folder`; returns (the QAT model leaving them float, report)."""
        from ..budget import FallbackSpace, fit_budget
        from ..quantize import export_int8_onnx, int8_layers, leave_float

        d, opset, rr = ctx.data, ctx.recipe.export.opset, ctx.extra["reduce_range"]

        def write(layers: list[str], path: Path) -> None:
            export_int8_onnx(leave_float(q, layers), path, input_shape=ctx.io.input_shape, opset=opset, calib_x=calib,
                             reduce_range=rr, input_name=input_name)

        space = FallbackSpace(int8_layers(q), write, d.x_val, lambda out: float((out.argmax(1) == d.y_val).mean()))
        r = fit_budget(space, max_drop=ctx.recipe.quantize.max_accuracy_drop, fp32=folder / "student-fp32.onnx",
                       runtime=ctx.target.runtime, threads=ctx.target.threads, time_input=d.x_val[:1], log=ctx.log)
        return leave_float(q, r["float_layers"]), r

    def _pay_off(self, ctx: Context, q, folder: Path, calib, *, input_name: str):
        """edgekd.payoff: kinds of layer that run faster in float on the target's runtime stay float
        (with the accuracy budget's layers); returns (the QAT model leaving them float, report)."""
        import tempfile

        from ..payoff import choose_float_kinds
        from ..quantize import export_int8_onnx, int8_layers, leave_float

        def write(layers: list[str], path: Path) -> None:
            export_int8_onnx(leave_float(q, layers), path, input_shape=ctx.io.input_shape, opset=ctx.recipe.export.opset,
                             calib_x=calib, reduce_range=ctx.extra["reduce_range"], input_name=input_name)

        with tempfile.TemporaryDirectory(dir=folder) as d:
            r = choose_float_kinds(int8_layers(q), write, folder / "student-fp32.onnx", runtime=ctx.target.runtime,
                                   threads=ctx.target.threads, x=ctx.data.x_val, folder=Path(d), log=ctx.log)
        return (leave_float(q, r["float_layers"]) if r["float_layers"] else q), r

    def timing_graph(self, ctx: Context, model, folder: Path, *, int8: bool):
        from ..export import export_onnx
        from ..export_hf import export_image
        from ..models.hf_image import ImageClassifier

        path, opset, x = folder / "fp32.onnx", ctx.recipe.export.opset, np.ascontiguousarray(ctx.data.x_val[:1])
        hf = isinstance(model, ImageClassifier)
        if hf:
            export_image(model, path, opset=opset, input_shape=ctx.io.input_shape)
        else:
            export_onnx(model, path, ctx.io.input_shape, opset=opset)
        if not int8:
            return path, x
        from ..quantize import quantize_onnx

        # onnxruntime's static QDQ after its pre-processing, which folds BatchNorm and TF-style zero Pads into
        # the convolutions as edgekd's own INT8 graph has them: without it every Pad breaks the integer chain
        # and a MobileNetV2 with TF padding timed twice as slow as the graph the build ships
        calib = ctx.data.x_train[: min(32, ctx.recipe.quantize.calibration)]
        quantize_onnx(path, folder / "int8.onnx", calib, reduce_range=ctx.extra["reduce_range"])
        return folder / "int8.onnx", x

    def bench_inputs(self, ctx: Context):
        from ..bench import BenchInputs, rows_in_batches

        x = ctx.data.x_test
        return BenchInputs(eval=rows_in_batches(x), cases={"1": {"x": np.ascontiguousarray(x[:1])}})

    def scores(self, ctx: Context, outputs, teacher_outputs) -> dict:
        y = ctx.data.y_test
        return {"accuracy": float((outputs.argmax(1) == y).mean()),
                "agreement": float((outputs.argmax(1) == teacher_outputs.argmax(1)).mean())}

    def item_scores(self, ctx: Context, outputs, teacher_outputs):
        return outputs.argmax(1) == ctx.data.y_test  # (N,) bool: each test image right or wrong

    def manifest(self, ctx: Context, export_meta: dict) -> dict:
        from ..artifacts import deliverable

        batch = ctx.target.backend.fixed_batch or "batch"  # a program compiled for one batch size says so
        names = (export_meta.get("exporters") or {}).get(deliverable(ctx.target), {})
        return {
            "inputs": [{"name": names.get("input", "input"), "shape": [batch, *ctx.io.input_shape], "dtype": "float32"}],
            "output": {"name": names.get("output", "logits"), "shape": [batch, ctx.io.num_classes], "dtype": "float32",
                       "meaning": "unnormalized class scores; argmax is the predicted label"},
            "preprocessing": ctx.data.preprocessing,
            "labels": list(ctx.data.labels),
            # the FP32 student shipped where INT8 did not pay (edgekd.payoff): the app reads what it runs
            **({"precision": "fp32"} if export_meta.get("int8_shipped_fp32") else {}),
        }

    def report_extra(self, ctx: Context) -> dict:
        return {"data_origin": ctx.data.origin, "augment": ctx.data.augment}

    def arm_inputs(self, ctx: Context):
        return ctx.data.x_test, ctx.data.y_test

    # report (edgekd.report places these among its generic sections) --------------------------------------
    def quality_points(self, value: float) -> float:
        return 100 * value  # accuracy: a share of the test split

    def quality_phrase(self, r: dict, x: dict) -> str:
        from ._report import quality_phrase

        return quality_phrase(self, r, x)

    def quality_short(self) -> str:
        return "acc"

    def model_labels(self) -> dict[str, str]:
        from ..report import LABELS

        return LABELS

    def distillation_check(self, gain: float) -> str:
        from ._report import distillation_check

        return distillation_check(gain)

    def distillation_verdict(self, r: dict) -> list[str]:
        from ._report import distillation_verdict

        return distillation_verdict(self, r)

    def report_parts(self, r: dict):
        from ..report.markdown import (difference, exporter_lines, format_size, kernel_time_lines, ops_line,
                                       reduce_range_note, size_words, speed_words)
        from . import ReportParts
        from ._report import parity_table, pct_ci, val_cell

        tp, m, labels = r["target_profile"], r["models"], self.model_labels()
        pct = lambda v: f"{100 * v:.2f}%"  # noqa: E731 - a share of the test split
        table = [f"Recipe `{r['recipe']}`, runtime **{tp['runtime']}**, {tp['threads']} thread(s), batch 1, "
                 f"{tp['iterations']} timed runs after {tp['warmup']} warm-up, each model in a fresh process. "
                 f"Accuracy on {r['test_samples']} held-out test images ({r.get('data_origin', '')}), computed from "
                 "the runtime's outputs" + ("; in brackets its 95% interval (Wilson)." if r.get("comparisons") else "."),
                 "", "| model | params | accuracy | agreement w/ teacher | p50 ms | p90 ms | p99 ms | speedup vs teacher "
                 "| size | size ratio | peak RSS |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for name, x in m.items():
            lat = x["latency_ms"]
            table.append(f"| {labels.get(name, name)} | {x['params']:,} | {pct_ci(self, x)} | {pct(x['agreement'])} "
                         f"| {lat['p50']:.3f} | {lat['p90']:.3f} | {lat['p99']:.3f} | {x['speedup_vs_teacher']:.1f}x "
                         f"| {format_size(x['size_bytes'])} | {x['size_ratio_vs_teacher']:.3f} | {x['peak_rss_mb']:.0f} MB |")
        s8, s32, t = m["student-int8"], m["student-fp32"], m["teacher"]
        gains = ["", "## What distillation and INT8 bought", "",
                 f"- Distillation vs the same student on hard labels (same data, views and epochs): "
                 f"**{difference(r, 'student-fp32', 'student-baseline', self.quality_points(s32['accuracy'] - m['student-baseline']['accuracy']))}** "
                 f"({pct(s32['accuracy'])} vs {pct(m['student-baseline']['accuracy'])}).",
                 f"- INT8 vs teacher: {difference(r, 'student-int8', 'teacher', self.quality_points(s8['accuracy'] - t['accuracy']))}"
                 f"; {speed_words(s8['speedup_vs_teacher'])} at p50, {size_words(s8['size_ratio_vs_teacher'])}."]
        ratio = s32["latency_ms"]["p50"] / s8["latency_ms"]["p50"]
        if ratio >= 1:
            gains.append(f"- INT8 vs FP32 student on this CPU: {ratio:.2f}x faster at p50.")
        else:
            gains.append(f"- **INT8 is not faster than FP32 here** ({s8['latency_ms']['p50']:.3f} vs "
                         f"{s32['latency_ms']['p50']:.3f} ms): at this size, per-op and quantize/dequantize overhead "
                         "outweighs the cheaper integer arithmetic. Where the time goes is below.")
        int8 = [f"- Weights per-channel symmetric INT8{reduce_range_note(r)}, activations per-tensor UINT8.", ops_line(r)]
        if r["int8"].get("openvino_precisions"):
            int8.append(f"- OpenVINO runtime precision of conv/matmul layers: {r['int8']['openvino_precisions']}.")
        training = ["", "## Training", "", "| stage | val accuracy | chosen epoch (best on validation) |", "|---|---:|---:|"]
        for n, t_ in r["training"].items():
            if t_.get("val_score") is not None:
                training.append(f"| {n} | {val_cell(self, r, t_['val_score'])} | {t_.get('chosen_epoch', '-')} |")
        qat = r["training"].get("qat", {})
        if qat.get("method") == "qat" and qat.get("chosen_epoch") == 0:
            training.append("\nQuantization-aware fine-tuning did not beat its calibrated starting point on validation, "
                            "so the calibrated weights (epoch 0) were kept: at this model size post-training "
                            "calibration is already close to lossless.")
        return ReportParts(
            title=f"# edgekd build: {r['target']}", table=table, gains=gains + kernel_time_lines(r), int8=int8,
            parity=["", "## Parity of every export against its PyTorch model (held-out inputs)", "", *exporter_lines(r),
                    *parity_table(r)],
            training=training)


tasks.register(ImageClassification.name)(ImageClassification())
