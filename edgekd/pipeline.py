"""`build(recipe, target)`: the only place that orders the stages and knows about caching.

teacher -> soft labels -> baseline, distill -> quantization-aware distillation -> export (+ parity)
-> benchmark (fresh process per model, target runtime) -> report.

Each stage writes into a temporary folder under <out>/.cache and is renamed into place when it has
finished, with the sha256 of every file it wrote; a stage is reused when the hash of its inputs
matches and its files still match their recorded sha256."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from . import __version__
from .errors import EdgeKDError, InputError
from .recipe import Recipe
from .targets import Target

# Bump when a stage's code changes what it produces, so old cache entries are not reused.
STAGE_VERSION = 3
MODEL_NAMES = ("teacher", "student-baseline", "student-fp32", "student-int8")


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _key(*parts) -> str:
    text = json.dumps([STAGE_VERSION, __version__, *parts], sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass
class StageOut:
    name: str
    key: str
    dir: Path
    meta: dict
    seconds: float
    cached: bool


@dataclass
class BuildResult:
    build_dir: Path
    report: dict
    stages: list[StageOut] = field(default_factory=list)

    @property
    def report_md(self) -> Path:
        return self.build_dir / "report.md"


class _Stages:
    """Runs or reuses stages. Under torch.distributed every rank runs a training stage (DDP needs
    them all), rank 0 alone decides reuse and commits results; the others read rank 0's folder."""

    def __init__(self, cache: Path, *, force: bool, log, fresh: set | None = None):
        import torch.distributed as dist

        self.cache, self.force, self.log, self.done = cache, force, log, []
        # stage folders made in this invocation: reused even under --force (multi-target builds)
        self.fresh = fresh if fresh is not None else set()
        self.distributed = dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
        self.rank = dist.get_rank() if self.distributed else 0

    def _agree(self, value: bool) -> bool:
        if not self.distributed:
            return value
        import torch.distributed as dist

        box = [value]
        dist.broadcast_object_list(box, src=0)
        return bool(box[0])

    def _barrier(self) -> None:
        if self.distributed:
            import torch.distributed as dist

            dist.barrier()

    def run(self, name: str, key: str, fn) -> StageOut:
        """fn(folder, checkpoint) writes the stage's files into `folder`; `checkpoint` is where a
        training stage keeps its per-epoch state, so a killed build resumes there."""
        final = self.cache / f"{name}-{key}"
        ckpt = self.cache / f".{name}-{key}.ckpt"
        if self.force and final.name not in self.fresh:
            ckpt.unlink(missing_ok=True)  # --force: start this stage over, not from an old checkpoint
        t0 = time.perf_counter()
        reusable = not self.force or final.name in self.fresh
        if self._agree(reusable and self.rank == 0 and self._valid(final)):
            rec = json.loads((final / "stage.json").read_text())
            # seconds: what the stage cost when it ran; the reuse itself is near-instant
            out = StageOut(name, key, final, rec["meta"], rec.get("seconds", 0.0), True)
            self.log(f"[{name}] reused (cache {final.name})")
        else:
            self.log(f"[{name}] running")
            tmp = self.cache / f".{name}-{key}.tmp{os.getpid()}"
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
            try:
                meta = fn(tmp, ckpt) or {}
                seconds = time.perf_counter() - t0
                if self.rank == 0:
                    files = {p.name: sha256_file(p) for p in sorted(tmp.iterdir()) if p.is_file()}
                    _write_atomic(tmp / "stage.json", json.dumps({"meta": meta, "files": files, "seconds": seconds}, indent=1))
                    shutil.rmtree(final, ignore_errors=True)
                    os.replace(tmp, final)
                    ckpt.unlink(missing_ok=True)
                self.fresh.add(final.name)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
            self._barrier()
            out = StageOut(name, key, final, meta, seconds, False)
            self.log(f"[{name}] done in {seconds:.1f} s")
        self.done.append(out)
        return out

    @staticmethod
    def _valid(d: Path) -> bool:
        try:
            rec = json.loads((d / "stage.json").read_text())
            return all(sha256_file(d / n) == h for n, h in rec["files"].items() if n != "stage.json")
        except (OSError, ValueError, KeyError):
            return False


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def _save_state(module, path: Path) -> None:
    import torch

    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(module.state_dict(), tmp)
    os.replace(tmp, path)


def _load_state(module, path: Path):
    import torch

    module.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    return module.eval()


def resolve_device(setting: str) -> str:
    """'auto' -> CUDA when present, else CPU; under torchrun each rank takes its LOCAL_RANK's GPU."""
    import torch

    from .errors import RecipeError

    if setting == "auto":
        setting = "cuda" if torch.cuda.is_available() else "cpu"
    if setting.startswith("cuda"):
        if not torch.cuda.is_available():
            raise RecipeError(f"device = '{setting}' but no CUDA GPU is visible; use device=auto or device=cpu")
        if setting == "cuda":
            setting = f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
        torch.cuda.set_device(torch.device(setting))
    return setting


def build(recipe: Recipe, target: Target, *, out_dir: str | Path = "build", force: bool = False,
          log=print, fresh: set | None = None) -> BuildResult | None:
    """Teacher to benchmarked student(s) for one target; writes <out_dir>/<target.name>/.
    Returns None on torch.distributed ranks other than 0. `fresh`: a set shared by the builds of one
    invocation, so that --force rebuilds each stage once, not once per target."""
    import torch

    from .data import load_data
    from .models import build_arch, check_fits, count_params, load_teacher
    from .quantize import calibrate, prepare_qat, qat_eval_mode, qat_train_mode, resolve_reduce_range
    from .train import accuracy, fit, predict, teacher_views

    out_dir = Path(out_dir)
    _check_writable(out_dir)
    created_out = not out_dir.exists()
    torch.manual_seed(recipe.seed)
    device = resolve_device(recipe.device)
    log(f"[device] training on {device}")
    stages = _Stages(out_dir / ".cache", force=force, log=log, fresh=fresh)
    try:
        if recipe.task != "image-classification":
            return _build_text(recipe, target, stages=stages, device=device, out_dir=out_dir, log=log)
        t0 = time.perf_counter()
        data = load_data(recipe.data, seed=recipe.seed)
        data_seconds = time.perf_counter() - t0
        num_classes = len(data.labels)
        # the device is part of every training key: CUDA and CPU kernels round differently
        data_key = _key(asdict(recipe.data), recipe.seed, device.split(":")[0])
        spec_t = recipe.teacher
        teacher_file = {k: sha256_file(recipe.path(getattr(spec_t, k))) for k in ("checkpoint", "torchscript")
                        if getattr(spec_t, k) and recipe.path(getattr(spec_t, k)).is_file()}

        def teacher_module():
            m = load_teacher(spec_t, recipe)
            check_fits(m, data.input_shape, num_classes, what=f"teacher ({spec_t.source})")
            return m

        # 1. Teacher: load, or train when the recipe gives no weights.
        def run_teacher(d: Path, ckpt: Path):
            m = teacher_module()
            meta = {"source": spec_t.source, "params": count_params(m)}
            if spec_t.source == "train":
                r = fit(m, x=data.x_train, y=data.y_train, x_val=data.x_val, y_val=data.y_val,
                        epochs=spec_t.epochs, lr=spec_t.lr, batch_size=spec_t.batch_size, seed=recipe.seed,
                        augment_on=recipe.data.augment, desc="teacher", optimizer=spec_t.optimizer,
                        label_smoothing=spec_t.label_smoothing, checkpoint=ckpt, log=log, device=device)
                _save_state(m, d / "teacher.pt")
                meta.update(val_accuracy=r.val_accuracy, chosen_epoch=r.chosen_epoch, history=r.history)
            else:
                meta["val_accuracy"] = accuracy(predict(m, data.x_val), data.y_val)
            return meta

        st_teacher = stages.run("teacher", _key(data_key, asdict(spec_t), teacher_file), run_teacher)

        def get_teacher():
            if spec_t.source == "train":
                return _load_state(build_arch(spec_t.arch), st_teacher.dir / "teacher.pt")
            return teacher_module().eval()

        teacher = get_teacher()
        ds = recipe.distill

        # 2. Soft labels: the teacher's logits on `views` augmented copies (computed once).
        def run_views(d: Path, ckpt: Path):
            xs, ts = teacher_views(teacher, data.x_train, views=ds.views, seed=recipe.seed + 1,
                                   augment_on=recipe.data.augment, device=device)
            np.save(d / "views_x.npy", xs)
            np.save(d / "views_logits.npy", ts)
            return {"views": ds.views, "teacher_train_accuracy_view0": accuracy(ts[0], data.y_train)}

        st_views = stages.run("soft-labels", _key(st_teacher.key, ds.views, recipe.data.augment), run_views)
        # memory-mapped: an epoch reads one view, so the cache can outgrow memory
        xs = np.load(st_views.dir / "views_x.npy", mmap_mode="r")
        ts = np.load(st_views.dir / "views_logits.npy", mmap_mode="r")

        student_arch = recipe.student.arch

        def train_student(d: Path, ckpt: Path, *, distill: bool, fname: str):
            m = build_arch(student_arch, in_channels=data.input_shape[0], num_classes=num_classes)
            r = fit(m, x=xs, y=data.y_train, x_val=data.x_val, y_val=data.y_val, epochs=ds.epochs, lr=ds.lr,
                    batch_size=ds.batch_size, seed=recipe.seed, soft=ts if distill else None,
                    temperature=ds.temperature, alpha=ds.alpha, desc="distill" if distill else "baseline",
                    optimizer=ds.optimizer, checkpoint=ckpt, log=log, device=device)
            _save_state(m, d / fname)
            return {"params": count_params(m), "val_accuracy": r.val_accuracy, "chosen_epoch": r.chosen_epoch,
                    "history": r.history}

        # 3. Baseline (hard labels, same views and budget) and 4. distilled student.
        budget = {k: v for k, v in asdict(ds).items() if k not in ("temperature", "alpha")}
        st_base = stages.run("baseline", _key(st_views.key, student_arch, budget),
                             lambda d, ck: train_student(d, ck, distill=False, fname="baseline.pt"))
        st_dist = stages.run("distill", _key(st_views.key, student_arch, asdict(ds)),
                             lambda d, ck: train_student(d, ck, distill=True, fname="student.pt"))

        def student_module(path: Path):
            return _load_state(build_arch(student_arch, in_channels=data.input_shape[0], num_classes=num_classes), path)

        baseline, student = student_module(st_base.dir / "baseline.pt"), student_module(st_dist.dir / "student.pt")

        # 5. Quantization-aware distillation: fake-quant INT8 student, FP32 teacher, same KD loss.
        qs = recipe.quantize
        reduce_range = resolve_reduce_range(qs.reduce_range)

        def new_qat():
            return prepare_qat(student, reduce_range=reduce_range)

        def run_qat(d: Path, ckpt: Path):
            q = new_qat()
            calibrate(q, data.x_train[: qs.calibration])
            epochs = qs.epochs if qs.method == "qat" else 0
            r = fit(q, x=xs, y=data.y_train, x_val=data.x_val, y_val=data.y_val, epochs=epochs, lr=qs.lr,
                    batch_size=ds.batch_size, seed=recipe.seed + 2, soft=ts, temperature=ds.temperature,
                    alpha=ds.alpha, desc="qat", train_mode=qat_train_mode, eval_mode=qat_eval_mode,
                    weight_decay=0.0, checkpoint=ckpt, log=log, device=device)
            _save_state(q, d / "student_qat.pt")
            return {"method": qs.method, "reduce_range": reduce_range, "val_accuracy": r.val_accuracy,
                    "chosen_epoch": r.chosen_epoch, "history": r.history}

        st_qat = stages.run("qat", _key(st_dist.key, asdict(qs), reduce_range), run_qat)
        qat = _load_state(new_qat(), st_qat.dir / "student_qat.pt")
        qat_eval_mode(qat)

        if stages.rank != 0:  # export, benchmark and report are rank 0's alone
            return None
        stages.distributed = False  # no collective calls from here on: the other ranks have left
        torch_models = {"teacher": teacher, "student-baseline": baseline, "student-fp32": student, "student-int8": qat}
        st_export = stages.run(
            "export", _key(st_teacher.key, st_base.key, st_dist.key, st_qat.key, asdict(recipe.export), target.runtime,
                           target.format),
            lambda d, _: _export_all(d, torch_models, data, recipe, target, reduce_range))
        stages.run(
            "benchmark", _key(st_export.key, asdict(target)),
            lambda d, _: _bench_all(d, st_export, target, {"x": data.x_test}))
        report = _assemble(recipe, target, stages.done, data_seconds, {n: count_params(m) for n, m in torch_models.items()},
                           score=_classification_scores(data.y_test), quality="accuracy",
                           test_samples=int(len(data.y_test)))
        _check_budget(report, target)
        if target.format == "ort" and target.precision == "int8":
            report["arm_verification"] = _verify_on_arm(st_export.dir / _model_files(target)["student-int8"], data, log)
        build_dir = _write_build(out_dir, target, recipe, report, st_export, _image_manifest(target, data))
    except BaseException:
        if created_out and out_dir.exists() and not any(p for p in out_dir.rglob("*") if p.is_file()):
            shutil.rmtree(out_dir, ignore_errors=True)
        raise
    return BuildResult(build_dir, report, stages.done)


def _verify_on_arm(model: Path, data, log) -> dict:
    """The INT8 deliverable's test accuracy on aarch64 onnxruntime kernels under user-mode emulation
    (edgekd verify-arm), when the emulator is installed; a note saying how to get it otherwise."""
    from .verify_arm import arm_available, verify_arm

    if not arm_available():
        return {"skipped": "ARM verification needs qemu-user-static and debootstrap (apt-get install "
                           "qemu-user-static debootstrap); then run edgekd verify-arm BUILD_DIR"}
    log("[verify-arm] running the INT8 model on aarch64 onnxruntime (emulated cortex-a76; outputs only)")
    return verify_arm(model, data.x_test, data.y_test, log=log)


def _check_budget(report: dict, target: Target) -> None:
    """The deliverable's measured peak RSS (fresh process, VmHWM) against the target's budget."""
    from .errors import BudgetError

    if not target.memory_budget_mb:
        return
    name = "student-int8" if target.precision == "int8" else "student-fp32"
    m = report["models"][name]
    # ExecuTorch's Python runtime imports torch and its exporter (~350 MB) where an app links the small
    # C++ runtime: the model's own cost is the increase over that import, not the process's peak.
    key, what = (("rss_increase_mb", "RSS increase over the imported runtime") if target.runtime == "executorch"
                 else ("peak_rss_mb", "peak RSS"))
    used = m[key]
    report["memory_budget"] = {"budget_mb": target.memory_budget_mb, "model": m["file"], "peak_rss_mb": m["peak_rss_mb"],
                               "measured": what, "measured_mb": used, "fits": used <= target.memory_budget_mb}
    if used > target.memory_budget_mb:
        raise BudgetError(f"{m['file']} does not fit target '{target.name}': {what} {used:.1f} MB "
                          f"(measured in a fresh process) > memory_budget_mb {target.memory_budget_mb:g}; "
                          "choose a smaller student or raise the budget (target.memory_budget_mb=...)")


def _check_writable(out_dir: Path) -> None:
    probe = out_dir
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir() or not os.access(probe, os.W_OK | os.X_OK):
        raise InputError(f"output folder '{out_dir}' is not writable; pass --out to a folder you can write")


def _model_files(target: Target) -> dict[str, str]:
    ext = {"openvino": ".xml", "executorch": ".pte"}.get(target.runtime, ".ort" if target.format == "ort" else ".onnx")
    return {n: f"{n}{ext}" for n in MODEL_NAMES}


def _export_all(d: Path, torch_models: dict, data, recipe: Recipe, target: Target, reduce_range: bool) -> dict:
    """ONNX for every model (INT8 QDQ for the quantized student), OpenVINO IR for openvino targets,
    each checked against its PyTorch model on held-out inputs."""
    from .export import check_parity, export_onnx
    from .quantize import quantize_onnx
    from .runtimes import runtimes
    from .train import predict

    es = recipe.export
    xp = data.x_val[: es.parity_samples]
    meta: dict = {"parity": {}, "reduce_range": reduce_range}
    for name, model in torch_models.items():
        if name == "student-int8":
            export_onnx(model.float_model(), d / "student-int8.fp32.onnx", data.input_shape, opset=es.opset)
            quantize_onnx(d / "student-int8.fp32.onnx", d / "student-int8.onnx",
                          data.x_train[: recipe.quantize.calibration], reduce_range=reduce_range)
            (d / "student-int8.fp32.onnx").unlink()
            meta["int8_ops"] = _check_integer_kernels(d / "student-int8.onnx")
        else:
            export_onnx(model, d / f"{name}.onnx", data.input_shape, opset=es.opset)
        ref = predict(model, xp)
        int8 = name == "student-int8"
        files = _convert_for_target(d, name, target)
        if target.format == "pte":
            from .export_pte import export_pte

            # the QAT-tuned float weights, quantized by ExecuTorch's own XNNPACK quantizer (PT2E): its
            # scheme (signed INT8 activations, 8-bit weights) is what the XNNPACK delegate runs
            cov = export_pte(model.float_model() if int8 else model, d / f"{name}.pte", data.input_shape, int8=int8,
                             calib_x=data.x_train[: recipe.quantize.calibration] if int8 else None)
            meta.setdefault("delegation", {})[f"{name}.pte"] = cov
            files.append((f"{name}.pte", "executorch"))
        for fname, rt in files:
            out = runtimes.get(rt)(str(d / fname), threads=1)(np.ascontiguousarray(xp))
            p = check_parity(fname, out, ref,
                             min_agreement=es.int8_min_agreement if int8 else es.fp32_min_agreement,
                             max_abs_diff=None if int8 else es.fp32_max_abs_diff)
            meta["parity"][fname] = p.to_dict()
    _target_meta(d, target, meta)
    if target.format == "pte":
        deliverable = "student-int8" if target.precision == "int8" else "student-fp32"
        meta["mobile"] = {"model": f"{deliverable}.pte", "delegation": meta["delegation"][f"{deliverable}.pte"]}
    if meta.get("mobile"):
        meta["mobile"]["device_estimates"] = _device_estimates(d / "student-fp32.onnx", target.precision)
    return meta


def _check_integer_kernels(path: Path) -> dict[str, int]:
    """The op types onnxruntime runs for an INT8 model; fails the build when none is an integer kernel."""
    from .quantize import INTEGER_OPS, optimized_op_types

    ops = optimized_op_types(path)
    if not any(op in ops for op in INTEGER_OPS):
        raise EdgeKDError(f"{path.name} runs no integer kernels in onnxruntime (ops: {sorted(ops)}); "
                          "the INT8 graph would be emulated in float")
    return ops


def _convert_for_target(d: Path, name: str, target: Target) -> list[tuple[str, str]]:
    """(file, runtime) pairs to check for one exported ONNX model: the ONNX itself, plus the OpenVINO
    IR or the ARM .ort the target runs."""
    from .export import to_openvino, to_ort

    files = [(f"{name}.onnx", "onnxruntime")]
    if target.runtime == "openvino":
        to_openvino(d / f"{name}.onnx", d / f"{name}.xml")
        files.append((f"{name}.xml", "openvino"))
    if target.format == "ort":
        to_ort(d / f"{name}.onnx", d / f"{name}.ort")
        files.append((f"{name}.ort", "onnxruntime"))
    return files


def _target_meta(d: Path, target: Target, meta: dict) -> None:
    """What the report says about the target's form: OpenVINO layer precisions, the .ort's mobile
    usability check and op types."""
    from .export import mobile_usability, op_types

    if target.runtime == "openvino":
        meta["openvino_int8_precisions"] = _ov_runtime_precisions(d / "student-int8.xml")
    if target.format == "ort":
        deliverable = "student-int8" if target.precision == "int8" else "student-fp32"
        meta["mobile"] = {"model": f"{deliverable}.ort", "usability_check": mobile_usability(d / f"{deliverable}.onnx"),
                          "op_types": op_types(d / f"{deliverable}.onnx")}


def _device_estimates(fp32_onnx: Path, precision: str) -> dict:
    """Named-phone-core latencies as estimates (MACs over published peak rates), never measurements."""
    from .estimate import count_macs, estimate_latency

    macs = count_macs(fp32_onnx)
    return {"macs": macs, "estimates": estimate_latency(macs, precision=precision)}


def _ov_runtime_precisions(xml: Path) -> dict[str, int]:
    """How many executed layers run in each precision (OpenVINO may run FakeQuantize in f32)."""
    import openvino as ov

    compiled = ov.Core().compile_model(str(xml), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})  # as runtimes.py runs it
    counts: dict[str, int] = {}
    for op in compiled.get_runtime_model().get_ordered_ops():
        rt = op.get_rt_info()
        prec = rt["runtimePrecision"].astype(str) if "runtimePrecision" in rt else "?"
        layer = rt["layerType"].astype(str) if "layerType" in rt else op.get_type_name()
        if layer in ("Convolution", "FullyConnected", "MatMul"):
            counts[prec] = counts.get(prec, 0) + 1
    return counts


def _bench_all(d: Path, st_export: StageOut, target: Target, inputs: dict[str, np.ndarray], *,
               seq_lens: list[int] | None = None) -> dict:
    """Every model in its own fresh process at each thread count (models interleaved within a count);
    saves each model's outputs on the evaluation inputs as <name>.outputs.npy."""
    from tqdm import tqdm

    from .bench import benchmark

    path = d / "inputs.npz"
    np.savez(path, **inputs)
    results = {}
    files = _model_files(target)
    counts = [target.threads] + [t for t in target.threads_sweep if t != target.threads]
    runs = [(t, n) for t in counts for n in MODEL_NAMES]  # models interleaved within each thread count
    for threads, name in tqdm(runs, desc="benchmark", leave=False, disable=None):
        primary = threads == target.threads
        res, outs = benchmark(st_export.dir / files[name], runtime=target.runtime, inputs=path, threads=threads,
                              warmup=target.warmup, iterations=target.iterations,
                              batch_sizes=[1] if seq_lens else target.batch_sizes, pin=target.pin_cores,
                              profile=primary and target.runtime == "onnxruntime" and name.startswith("student-"),
                              seq_lens=seq_lens)
        if primary:
            np.save(d / f"{name}.outputs.npy", outs)
            results[name] = res
        results[name].setdefault("latency_by_threads", {})[str(threads)] = res["latency_ms"]
    path.unlink()
    return results


def _environment(target: Target, seed: int) -> dict:
    import platform
    import subprocess
    from importlib import metadata

    info: dict = {"python": platform.python_version(), "machine": platform.machine(), "seed": seed,
                  "edgekd": __version__, "threads": target.threads, "logical_cpus": os.cpu_count()}
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text()
        model = next((line.split(":", 1)[1].strip() for line in cpuinfo.splitlines() if line.startswith("model name")), "")
        flags = next((line.split(":", 1)[1].split() for line in cpuinfo.splitlines() if line.startswith("flags")), [])
        info["cpu"] = model
        info["isa"] = {k: k in flags for k in ("avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8")}
    except OSError:
        info["cpu"] = platform.processor()
    info["versions"] = {}
    for pkg in ("torch", "onnx", "onnxruntime", "openvino", "numpy", "transformers"):
        try:
            info["versions"][pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            pass
    try:
        info["git_commit"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                            cwd=Path(__file__).parent, timeout=5).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        info["git_commit"] = None
    return info


def _classification_scores(y_test: np.ndarray):
    """Accuracy on the labels and top-1 agreement with the teacher, from runtime outputs (N, K)."""
    def score(out: np.ndarray, teacher_out: np.ndarray) -> dict:
        return {"accuracy": float((out.argmax(1) == y_test).mean()),
                "agreement": float((out.argmax(1) == teacher_out.argmax(1)).mean())}
    return score


def _assemble(recipe: Recipe, target: Target, done: list[StageOut], data_seconds: float, params: dict, *, score,
              quality: str, test_samples: int, extra: dict | None = None) -> dict:
    """report.json from the stages' results. score(outputs, teacher_outputs) -> the model's quality
    fields (computed from the runtime's outputs); `quality` names the headline one."""
    by = {s.name: s for s in done}
    bench = by["benchmark"].meta
    export = by["export"].meta
    files = _model_files(target)
    outs = {n: np.load(by["benchmark"].dir / f"{n}.outputs.npy") for n in MODEL_NAMES}
    models = {}
    for name in MODEL_NAMES:
        path = by["export"].dir / files[name]
        size = path.stat().st_size + (path.with_suffix(".bin").stat().st_size if path.suffix == ".xml" else 0)
        b = bench[name]
        models[name] = {
            **score(outs[name], outs["teacher"]),
            "latency_ms": b["latency_ms"],
            "throughput_per_s": b["throughput_per_s"],
            "latency_percentiles_ms": b.get("latency_percentiles_ms"),
            "latency_by_threads": b.get("latency_by_threads"),
            "size_bytes": size,
            "peak_rss_mb": b["peak_rss_mb"],
            "rss_increase_mb": b["rss_increase_mb"],
            "params": params[name],
            "runtime": target.runtime,
            "precision": "int8" if name == "student-int8" else "fp32",
            "file": files[name],
        }
        for key in ("latency_by_seq", "op_profile"):
            if key in b:
                models[name][key] = b[key]
    teacher = models["teacher"]
    for m in models.values():
        m["speedup_vs_teacher"] = teacher["latency_ms"]["p50"] / m["latency_ms"]["p50"]
        m["size_ratio_vs_teacher"] = m["size_bytes"] / teacher["size_bytes"]
        if "latency_by_seq" in m:
            m["speedup_vs_teacher_by_seq"] = {s: teacher["latency_by_seq"][s]["p50"] / v["p50"]
                                              for s, v in m["latency_by_seq"].items()}
    stage_times = {"data": {"seconds": data_seconds, "cached": False}}
    stage_times.update({s.name: {"seconds": s.seconds, "cached": s.cached, "cache": s.dir.name} for s in done})
    training = {n: {k: v for k, v in by[n].meta.items() if k != "history"} for n in ("teacher", "baseline", "distill", "qat")}
    return {
        "target": target.name,
        "target_profile": asdict(target),
        "recipe": recipe.name,
        "task": recipe.task,
        "quality_metric": quality,
        "models": models,
        "training": training,
        "distillation_gain_pts": 100 * (models["student-fp32"][quality] - models["student-baseline"][quality]),
        **(extra or {}),
        "parity": export["parity"],
        "int8": {"reduce_range": export["reduce_range"], "onnxruntime_ops": export.get("int8_ops", {}),
                 "openvino_precisions": export.get("openvino_int8_precisions"),
                 "embedding_tables": export.get("int8_embeddings")},
        "mobile": export.get("mobile"),
        "stages": stage_times,
        "test_samples": test_samples,
        "environment": _environment(target, recipe.seed),
    }


def _image_manifest(target: Target, data) -> dict:
    return {
        # an ExecuTorch program is exported for batch 1 (mobile apps run one input at a time)
        "input": {"name": "input", "shape": [1 if target.format == "pte" else "batch", *data.input_shape],
                  "dtype": "float32"},
        "output": {"name": "logits", "shape": [1 if target.format == "pte" else "batch", len(data.labels)],
                   "dtype": "float32", "meaning": "unnormalized class scores; argmax is the predicted label"},
        "preprocessing": data.preprocessing,
        "labels": data.labels,
    }


def _write_build(out_dir: Path, target: Target, recipe: Recipe, report: dict, st_export: StageOut, manifest_io: dict,
                 *, folders: tuple[str, ...] = ()) -> Path:
    """Assemble build/<target>/ in a temporary folder, then swap it into place. `folders`: folders of
    the export stage copied along (the tokenizer of a text model)."""
    from .recipe import recipe_toml
    from .report import write_reports

    final = out_dir / target.name
    tmp = out_dir / f".{target.name}.tmp{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        files = _model_files(target)
        for name in MODEL_NAMES:
            src = st_export.dir / files[name]
            shutil.copy2(src, tmp / src.name)
            if src.suffix == ".xml":
                shutil.copy2(src.with_suffix(".bin"), tmp / src.with_suffix(".bin").name)
        for folder in folders:
            shutil.copytree(st_export.dir / folder, tmp / folder)
        deliverable = "student-int8" if target.precision == "int8" else "student-fp32"
        manifest = {
            "model": files[deliverable],
            "sha256": sha256_file(tmp / files[deliverable]),
            "runtime": target.runtime,
            "format": {".xml": "openvino-ir", ".ort": "ort"}.get(Path(files[deliverable]).suffix, "onnx"),
            "precision": target.precision,
            "task": recipe.task,
            **manifest_io,
            "threads": target.threads,
            "edgekd": __version__,
        }
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2))
        from dataclasses import replace

        lock = replace(recipe, quantize=replace(recipe.quantize,
                                                reduce_range="true" if report["int8"]["reduce_range"] else "false"))
        (tmp / "recipe.lock.toml").write_text(
            f"# edgekd {__version__}: the resolved recipe of build '{target.name}'.\n"
            f"# Reproduce: edgekd build recipe=recipe.lock.toml target={target.name}\n" + recipe_toml(lock))
        (tmp / "report.json").write_text(json.dumps(report, indent=2))
        write_reports(tmp, report)
        old = out_dir / f".{target.name}.old{os.getpid()}"
        if final.exists():
            os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


# ---------------------------------------------------------------------------------------------------
# Text tasks (embedding, classification): a Hugging Face teacher distilled into a smaller encoder.
# teacher (+ head) -> teacher outputs -> baseline, distill -> quantization-aware distillation
# -> export (+ parity, tokenizer) -> benchmark at several sequence lengths -> report.

SEQ_LENS = (16, 64, 128)


def _hf_fingerprint(ref: str) -> dict:
    """What identifies an HF teacher for the cache: its files' sha256 (local folder) or the hub id."""
    p = Path(ref)
    if not p.is_dir():
        return {"hub": ref}
    return {f.name: sha256_file(f) for f in sorted(p.iterdir()) if f.is_file() and f.suffix in
            (".json", ".txt", ".safetensors", ".bin", ".model")}


def _build_text(recipe: Recipe, target: Target, *, stages: "_Stages", device: str, out_dir: Path, log) -> BuildResult:
    import copy

    import torch

    from .hf import (default_keep, default_layer_map, layer_subset_student, load_hf_encoder, load_tokenizer,
                     narrow_student, resolve_hf, sentence_config, text_encoder)
    from .models import count_params
    from .quantize import fake_quant_linears, qat_eval_mode, qat_train_mode, resolve_reduce_range, set_observe
    from .recipe import parse_layer_map
    from .text import load_text, tokenize
    from .text_train import distill_text, encode, filter_by_teacher, fit_head

    if stages.distributed:
        raise EdgeKDError("text tasks train in one process; run edgekd build without torchrun")
    if target.format == "pte":
        raise EdgeKDError(f"target '{target.name}' (ExecuTorch .pte) is for image models; build a text model for "
                          "cpu-int8, cpu-fp32, openvino-int8 or mobile-int8")
    classify = recipe.task == "classification"
    spec_t, ds, ss, qs = recipe.teacher, recipe.distill, recipe.student, recipe.quantize
    t0 = time.perf_counter()
    ref = resolve_hf(spec_t.hf, Path(recipe.base_dir))
    tok = load_tokenizer(ref, trust_remote_code=spec_t.trust_remote_code)
    data = load_text(recipe.data, seed=recipe.seed, base=Path(recipe.base_dir))
    toks = {k: tokenize(tok, getattr(data, k), max_length=recipe.data.max_length) for k in ("train", "val", "test")}
    data_seconds = time.perf_counter() - t0
    sent = sentence_config(ref)
    num_labels = len(data.labels) if classify else 0
    data_key = _key(asdict(recipe.data), recipe.task, recipe.seed, device.split(":")[0], _hf_fingerprint(ref))

    def new_teacher():
        bert = load_hf_encoder(ref, trust_remote_code=spec_t.trust_remote_code)
        return text_encoder(bert, **sent, num_labels=num_labels).eval()

    # 1. Teacher: the pretrained encoder; a classification head is trained on its frozen embeddings.
    def run_teacher(d: Path, ckpt: Path):
        t = new_teacher()
        meta = {"source": "hf", "hf": spec_t.hf, "params": count_params(t), "layers": t.num_layers,
                "hidden": t.bert.config.hidden_size, **sent}
        if classify:
            meta.update(fit_head(t, toks["train"], data.y_train, toks["val"], data.y_val, epochs=spec_t.epochs,
                                 lr=spec_t.lr, seed=recipe.seed, device=device))
            torch.save(t.head.state_dict(), d / "head.pt")
        return meta

    st_teacher = stages.run("teacher", _key(data_key, asdict(spec_t)), run_teacher)
    teacher = new_teacher()
    if classify:
        teacher.head.load_state_dict(torch.load(st_teacher.dir / "head.pt", map_location="cpu", weights_only=True))

    # 2. The teacher's outputs (embeddings or logits) on every split, computed once.
    def run_outputs(d: Path, ckpt: Path):
        meta = {}
        for split in ("train", "val", "test"):
            np.save(d / f"{split}.npy", encode(teacher, toks[split], device=device))
        if classify:
            t_train = np.load(d / "train.npy")
            meta["teacher_train_accuracy"] = float((t_train.argmax(1) == data.y_train).mean())
        return meta

    st_out = stages.run("soft-labels", _key(st_teacher.key), run_outputs)
    target_out = {s: np.load(st_out.dir / f"{s}.npy") for s in ("train", "val", "test")}

    # Teacher-output filtering (classification): train only on texts the teacher gets right / is sure of.
    keep = np.arange(len(data.train))
    filtering = None
    if classify and (ds.drop_teacher_wrong or ds.min_teacher_confidence > 0):
        keep = filter_by_teacher(target_out["train"], data.y_train, drop_wrong=ds.drop_teacher_wrong,
                                 min_confidence=ds.min_teacher_confidence)
        filtering = {"kept": int(len(keep)), "dropped": int(len(data.train) - len(keep)),
                     "drop_teacher_wrong": ds.drop_teacher_wrong, "min_teacher_confidence": ds.min_teacher_confidence}
        log(f"[filter] kept {len(keep)} of {len(data.train)} training texts (teacher wrong or unsure: dropped)")
        if len(keep) == 0:
            raise EdgeKDError("teacher-output filtering dropped every training text; lower distill.min_teacher_confidence")
    train_tok = {k: v[keep] for k, v in toks["train"].items()}
    train_target = target_out["train"][keep]
    y_train = data.y_train[keep] if classify else None

    L_t = teacher.num_layers
    if ss.arch == "layer-subset":
        keep_layers = [int(v) for v in ss.keep_layers.split(",")] if ss.keep_layers else default_keep(L_t, ss.layers)

        def new_student():
            return layer_subset_student(teacher, keep_layers)
    else:
        keep_layers = None

        def new_student():
            return narrow_student(teacher, layers=ss.layers, hidden=ss.hidden, heads=ss.heads,
                                  intermediate=ss.intermediate, seed=recipe.seed)
    layer_map = parse_layer_map(ds.layer_map) if ds.layer_map else default_layer_map(L_t, ss.layers, keep_layers)
    if max(layer_map) > ss.layers or max(layer_map.values()) > L_t:
        raise EdgeKDError(f"distill.layer_map {ds.layer_map!r} names layers beyond the student's {ss.layers} "
                          f"or the teacher's {L_t}")

    def train(d: Path, ckpt: Path, *, spec, epochs: int, fname: str, desc: str):
        s = new_student()
        r = distill_text(s, teacher, tokens=train_tok, target=train_target, y=y_train, val_tokens=toks["val"],
                         val_target=target_out["val"], y_val=data.y_val, spec=spec, epochs=epochs, lr=ds.lr,
                         seed=recipe.seed, layer_map=layer_map, checkpoint=ckpt, log=log, device=device, desc=desc)
        torch.save(s.state_dict(), d / fname)
        return {"params": count_params(s), "val_score": r.val_score, "chosen_epoch": r.chosen_epoch,
                "history": r.history, "keep_layers": keep_layers, "layer_map": layer_map}

    # 3. Baseline: the same student without the teacher's signal: hard labels (classification), or
    #    its starting weights (embedding: no labels exist; for a layer subset, the copied layers).
    no_teacher = replace(ds, alpha=0.0, embedding_mse=0.0, embedding_cos=0.0, similarity_mse=0.0, hidden_mse=0.0,
                         attention_kl=0.0)
    skey = _key(st_out.key, asdict(ss), asdict(ds), filtering)
    st_base = stages.run("baseline", _key(skey, "baseline"), lambda d, ck: train(
        d, ck, spec=no_teacher, epochs=ds.epochs if classify else 0, fname="baseline.pt", desc="baseline"))
    st_dist = stages.run("distill", _key(skey, "distill"), lambda d, ck: train(
        d, ck, spec=ds, epochs=ds.epochs, fname="student.pt", desc="distill"))

    def load_student(path: Path):
        s = new_student()
        s.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        return s.eval()

    baseline, student = load_student(st_base.dir / "baseline.pt"), load_student(st_dist.dir / "student.pt")

    # 4. Quantization-aware distillation: fake-quant INT8 linears, same losses; "ptq" calibrates only.
    reduce_range = resolve_reduce_range(qs.reduce_range)
    calib_tok = {k: v[: qs.calibration] for k, v in train_tok.items()}

    def new_qat(weights: Path | None = None):
        q = fake_quant_linears(copy.deepcopy(student), reduce_range=reduce_range)
        if weights is not None:
            q.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
        return q

    def run_qat(d: Path, ckpt: Path):
        q = new_qat()
        q.eval()
        set_observe(q, True)
        encode(q, calib_tok)  # one pass: activation ranges from data
        set_observe(q, False)
        sub = np.arange(len(train_target))
        if 0 < qs.train_texts < len(sub):
            sub = np.sort(np.random.default_rng(recipe.seed + 3).choice(len(sub), qs.train_texts, replace=False))
        r = distill_text(q, teacher, tokens={k: v[sub] for k, v in train_tok.items()}, target=train_target[sub],
                         y=None if y_train is None else y_train[sub], val_tokens=toks["val"],
                         val_target=target_out["val"], y_val=data.y_val, spec=ds,
                         epochs=qs.epochs if qs.method == "qat" else 0, lr=qs.lr, seed=recipe.seed + 2,
                         layer_map=layer_map, train_mode=qat_train_mode, eval_mode=qat_eval_mode, checkpoint=ckpt,
                         log=log, device=device, desc="qat")
        torch.save(q.state_dict(), d / "student_qat.pt")
        return {"method": qs.method, "reduce_range": reduce_range, "train_texts": int(len(sub)),
                "val_score": r.val_score, "chosen_epoch": r.chosen_epoch, "history": r.history}

    st_qat = stages.run("qat", _key(st_dist.key, asdict(qs), reduce_range), run_qat)
    qat = new_qat(st_qat.dir / "student_qat.pt")
    qat_eval_mode(qat)

    torch_models = {"teacher": teacher, "student-baseline": baseline, "student-fp32": student, "student-int8": qat}
    st_export = stages.run(
        "export", _key(st_teacher.key, st_base.key, st_dist.key, st_qat.key, asdict(recipe.export), target.runtime,
                       target.format),
        lambda d, _: _export_text(d, torch_models, tok, toks, calib_tok, recipe, target, reduce_range))
    stages.run("benchmark", _key(st_export.key, asdict(target), SEQ_LENS),
               lambda d, _: _bench_all(d, st_export, target, {**toks["test"], **_latency_inputs(tok, data.test)},
                                       seq_lens=list(SEQ_LENS)))
    if classify:
        score, quality = _classification_scores(data.y_test), "accuracy"
    else:
        from .text import mean_cosine, neighbour_overlap

        def score(out, teacher_out):  # fidelity as the app sees it: both models' runtime outputs
            return {"fidelity_cosine": mean_cosine(out, teacher_out),
                    "neighbour_overlap_at_10": neighbour_overlap(out, teacher_out, k=10)}
        quality = "fidelity_cosine"
    report = _assemble(recipe, target, stages.done, data_seconds, {n: count_params(m) for n, m in torch_models.items()},
                       score=score, quality=quality, test_samples=int(len(data.test)),
                       extra={"teacher_filtering": filtering, "data_origin": data.origin,
                              "sequence_lengths": list(SEQ_LENS)})
    _check_budget(report, target)
    out_name = "logits" if classify else "embedding"
    width = target_out["test"].shape[1]
    manifest_io = {
        "inputs": [{"name": "input_ids", "shape": ["batch", "sequence"], "dtype": "int64"},
                   {"name": "attention_mask", "shape": ["batch", "sequence"], "dtype": "int64"}],
        "output": {"name": out_name, "shape": ["batch", width], "dtype": "float32",
                   "meaning": "unnormalized class scores; argmax is the predicted label" if classify else
                   f"sentence embedding: {sent['pooling']} pooling over attention_mask"
                   f"{', L2-normalized' if sent['normalize'] else ''}, inside the graph; compare with cosine"},
        "tokenizer": {"folder": "tokenizer", "max_length": recipe.data.max_length, "padding": "right, pad id 0",
                      "how": "AutoTokenizer.from_pretrained('tokenizer')(texts, padding=True, truncation=True, "
                             f"max_length={recipe.data.max_length}, return_tensors='np'); feed input_ids and "
                             "attention_mask as int64 (token_type_ids are not inputs: all zero)"},
        "pooling": {"mode": sent["pooling"], "normalize": sent["normalize"], "in_graph": True},
        "labels": data.labels,
    }
    build_dir = _write_build(out_dir, target, recipe, report, st_export, manifest_io, folders=("tokenizer",))
    return BuildResult(build_dir, report, stages.done)


def _export_text(d: Path, torch_models: dict, tok, toks: dict, calib_tok: dict, recipe: Recipe, target: Target,
                 reduce_range: bool) -> dict:
    """ONNX (dynamic batch and sequence) for every model, INT8 QDQ linears for the quantized student,
    OpenVINO IR / .ort where the target wants them; each checked against its PyTorch model."""
    from .export import check_parity, export_text_onnx
    from .quantize import quantize_onnx, strip_fake_quant
    from .runtimes import runtimes
    from .text_train import encode

    es = recipe.export
    classify = recipe.task == "classification"
    out_name = "logits" if classify else "embedding"
    xp = {k: v[: es.parity_samples] for k, v in toks["val"].items()}
    parity_feeds = _row_feeds(xp)
    meta: dict = {"parity": {}, "reduce_range": reduce_range}
    tok.save_pretrained(str(d / "tokenizer"))
    for name, model in torch_models.items():
        int8 = name == "student-int8"
        if int8:
            export_text_onnx(strip_fake_quant(model), d / "student-int8.fp32.onnx", opset=es.opset, output=out_name)
            quantize_onnx(d / "student-int8.fp32.onnx", d / "student-int8.onnx", _row_feeds(calib_tok),
                          reduce_range=reduce_range, linear_only=True)
            (d / "student-int8.fp32.onnx").unlink()
            if es.int8_embeddings:
                from .quantize import quantize_gather_tables

                meta["int8_embeddings"] = quantize_gather_tables(d / "student-int8.onnx")
            meta["int8_ops"] = _check_integer_kernels(d / "student-int8.onnx")
        else:
            export_text_onnx(model, d / f"{name}.onnx", opset=es.opset, output=out_name)
        ref = encode(model, xp)
        for fname, rt in _convert_for_target(d, name, target):
            run = runtimes.get(rt)(str(d / fname), threads=1)
            out = np.concatenate([run(feed) for feed in parity_feeds])
            if classify:
                p = check_parity(fname, out, ref, min_agreement=es.int8_min_agreement if int8 else es.fp32_min_agreement,
                                 max_abs_diff=None if int8 else es.fp32_max_abs_diff).to_dict()
            else:
                p = _embedding_parity(fname, out, ref, min_cosine=es.int8_min_agreement if int8 else es.fp32_min_agreement)
            meta["parity"][fname] = p
    _target_meta(d, target, meta)
    return meta


def _row_feeds(tokens: dict) -> list[dict]:
    """One batch-1 feed per text, cut to its own length (no padding), as an app would run it."""
    lengths = np.maximum(tokens["attention_mask"].sum(1), 1)
    return [{k: v[i:i + 1, : int(lengths[i])] for k, v in tokens.items()} for i in range(len(lengths))]


def _embedding_parity(name: str, out: np.ndarray, ref: np.ndarray, *, min_cosine: float) -> dict:
    """Cosine of each exported embedding with its PyTorch embedding; the mean must reach min_cosine."""
    from .errors import ParityError
    from .text import row_cosines

    cos = row_cosines(out, ref)
    p = {"mean_cosine": float(cos.mean()), "min_cosine": float(cos.min()),
         "max_abs_diff": float(np.abs(out - ref).max()), "samples": int(len(out))}
    if p["mean_cosine"] < min_cosine:
        raise ParityError(f"exported model '{name}' does not match its PyTorch model on {len(out)} held-out texts: "
                          f"mean cosine {p['mean_cosine']:.4f} (needed {min_cosine:g}); for INT8 try "
                          "quantize.method=qat or quantize.reduce_range=true, or loosen export.* bounds knowingly")
    return p


def _latency_inputs(tok, texts: list[str]) -> dict[str, np.ndarray]:
    """For each length S: one row of exactly S real tokens (test texts joined until they fill S)."""
    joined = " ".join(texts)
    out = {}
    for s in SEQ_LENS:
        enc = tok([joined], truncation=True, max_length=s, return_tensors="np")["input_ids"].astype(np.int64)
        if enc.shape[1] < s:
            raise EdgeKDError(f"the test texts hold fewer than {s} tokens; raise data.n_test")
        out[f"lat_{s}"] = enc
    return out
