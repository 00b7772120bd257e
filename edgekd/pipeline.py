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
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from . import __version__
from .errors import EdgeKDError, InputError
from .recipe import Recipe
from .targets import Target

# Bump when a stage's code changes what it produces, so old cache entries are not reused.
STAGE_VERSION = 2
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
            lambda d, _: _bench_all(d, st_export, data, target))
        report = _assemble(recipe, target, data, stages.done, data_seconds,
                           {n: count_params(m) for n, m in torch_models.items()})
        _check_budget(report, target)
        build_dir = _write_build(out_dir, target, recipe, report, st_export, data)
    except BaseException:
        if created_out and out_dir.exists() and not any(p for p in out_dir.rglob("*") if p.is_file()):
            shutil.rmtree(out_dir, ignore_errors=True)
        raise
    return BuildResult(build_dir, report, stages.done)


def _check_budget(report: dict, target: Target) -> None:
    """The deliverable's measured peak RSS (fresh process, VmHWM) against the target's budget."""
    from .errors import BudgetError

    if not target.memory_budget_mb:
        return
    name = "student-int8" if target.precision == "int8" else "student-fp32"
    m = report["models"][name]
    report["memory_budget"] = {"budget_mb": target.memory_budget_mb, "model": m["file"], "peak_rss_mb": m["peak_rss_mb"],
                               "fits": m["peak_rss_mb"] <= target.memory_budget_mb}
    if m["peak_rss_mb"] > target.memory_budget_mb:
        raise BudgetError(f"{m['file']} does not fit target '{target.name}': peak RSS {m['peak_rss_mb']:.1f} MB "
                          f"(measured in a fresh process) > memory_budget_mb {target.memory_budget_mb:g}; "
                          "choose a smaller student or raise the budget (target.memory_budget_mb=...)")


def _check_writable(out_dir: Path) -> None:
    probe = out_dir
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir() or not os.access(probe, os.W_OK | os.X_OK):
        raise InputError(f"output folder '{out_dir}' is not writable; pass --out to a folder you can write")


def _model_files(target: Target) -> dict[str, str]:
    ext = ".xml" if target.runtime == "openvino" else ".ort" if target.format == "ort" else ".onnx"
    return {n: f"{n}{ext}" for n in MODEL_NAMES}


def _export_all(d: Path, torch_models: dict, data, recipe: Recipe, target: Target, reduce_range: bool) -> dict:
    """ONNX for every model (INT8 QDQ for the quantized student), OpenVINO IR for openvino targets,
    each checked against its PyTorch model on held-out inputs."""
    from .export import check_parity, export_onnx, mobile_usability, op_types, to_openvino, to_ort
    from .quantize import INTEGER_OPS, optimized_op_types, quantize_onnx
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
            ops = optimized_op_types(d / "student-int8.onnx")
            meta["int8_ops"] = ops
            if not any(op in ops for op in INTEGER_OPS):
                raise EdgeKDError(f"student-int8.onnx runs no integer kernels in onnxruntime (ops: {sorted(ops)}); "
                                  "the INT8 graph would be emulated in float")
        else:
            export_onnx(model, d / f"{name}.onnx", data.input_shape, opset=es.opset)
        ref = predict(model, xp)
        int8 = name == "student-int8"
        files = [(f"{name}.onnx", "onnxruntime")]
        if target.runtime == "openvino":
            to_openvino(d / f"{name}.onnx", d / f"{name}.xml")
            files.append((f"{name}.xml", "openvino"))
        if target.format == "ort":
            to_ort(d / f"{name}.onnx", d / f"{name}.ort")
            files.append((f"{name}.ort", "onnxruntime"))
        for fname, rt in files:
            out = runtimes.get(rt)(str(d / fname), threads=1)(np.ascontiguousarray(xp))
            p = check_parity(fname, out, ref,
                             min_agreement=es.int8_min_agreement if int8 else es.fp32_min_agreement,
                             max_abs_diff=None if int8 else es.fp32_max_abs_diff)
            meta["parity"][fname] = p.to_dict()
    if target.runtime == "openvino":
        meta["openvino_int8_precisions"] = _ov_runtime_precisions(d / "student-int8.xml")
    if target.format == "ort":
        deliverable = "student-int8" if target.precision == "int8" else "student-fp32"
        meta["mobile"] = {"model": f"{deliverable}.ort", "usability_check": mobile_usability(d / f"{deliverable}.onnx"),
                          "op_types": op_types(d / f"{deliverable}.onnx")}
    return meta


def _ov_runtime_precisions(xml: Path) -> dict[str, int]:
    """How many executed layers run in each precision (OpenVINO may run FakeQuantize in f32)."""
    import openvino as ov

    compiled = ov.Core().compile_model(str(xml), "CPU")
    counts: dict[str, int] = {}
    for op in compiled.get_runtime_model().get_ordered_ops():
        rt = op.get_rt_info()
        prec = rt["runtimePrecision"].astype(str) if "runtimePrecision" in rt else "?"
        layer = rt["layerType"].astype(str) if "layerType" in rt else op.get_type_name()
        if layer in ("Convolution", "FullyConnected", "MatMul"):
            counts[prec] = counts.get(prec, 0) + 1
    return counts


def _bench_all(d: Path, st_export: StageOut, data, target: Target) -> dict:
    from .bench import benchmark

    inputs = d / "inputs.npz"
    np.savez(inputs, x=data.x_test)
    results = {}
    files = _model_files(target)
    from tqdm import tqdm

    counts = [target.threads] + [t for t in target.threads_sweep if t != target.threads]
    runs = [(t, n) for t in counts for n in MODEL_NAMES]  # models interleaved within each thread count
    for threads, name in tqdm(runs, desc="benchmark", leave=False, disable=None):
        primary = threads == target.threads
        res, logits = benchmark(st_export.dir / files[name], runtime=target.runtime, inputs=inputs,
                                threads=threads, warmup=target.warmup, iterations=target.iterations,
                                batch_sizes=target.batch_sizes, pin=target.pin_cores,
                                profile=primary and target.runtime == "onnxruntime" and name.startswith("student-"))
        if primary:
            np.save(d / f"{name}.logits.npy", logits)
            results[name] = res
        results[name].setdefault("latency_by_threads", {})[str(threads)] = res["latency_ms"]
    inputs.unlink()
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
    for pkg in ("torch", "onnx", "onnxruntime", "openvino", "numpy"):
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


def _assemble(recipe: Recipe, target: Target, data, done: list[StageOut], data_seconds: float, params: dict) -> dict:
    by = {s.name: s for s in done}
    bench = by["benchmark"].meta
    export = by["export"].meta
    files = _model_files(target)
    teacher_logits = np.load(by["benchmark"].dir / "teacher.logits.npy")
    models = {}
    for name in MODEL_NAMES:
        logits = np.load(by["benchmark"].dir / f"{name}.logits.npy")
        path = by["export"].dir / files[name]
        size = path.stat().st_size + (path.with_suffix(".bin").stat().st_size if path.suffix == ".xml" else 0)
        b = bench[name]
        models[name] = {
            "accuracy": float((logits.argmax(1) == data.y_test).mean()),
            "agreement": float((logits.argmax(1) == teacher_logits.argmax(1)).mean()),
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
        if "op_profile" in b:
            models[name]["op_profile"] = b["op_profile"]
    teacher = models["teacher"]
    for m in models.values():
        m["speedup_vs_teacher"] = teacher["latency_ms"]["p50"] / m["latency_ms"]["p50"]
        m["size_ratio_vs_teacher"] = m["size_bytes"] / teacher["size_bytes"]
    stage_times = {"data": {"seconds": data_seconds, "cached": False}}
    stage_times.update({s.name: {"seconds": s.seconds, "cached": s.cached, "cache": s.dir.name} for s in done})
    training = {n: {k: v for k, v in by[n].meta.items() if k != "history"} for n in ("teacher", "baseline", "distill", "qat")}
    return {
        "target": target.name,
        "target_profile": asdict(target),
        "recipe": recipe.name,
        "models": models,
        "training": training,
        "distillation_gain_pts": 100 * (models["student-fp32"]["accuracy"] - models["student-baseline"]["accuracy"]),
        "parity": export["parity"],
        "int8": {"reduce_range": export["reduce_range"], "onnxruntime_ops": export.get("int8_ops", {}),
                 "openvino_precisions": export.get("openvino_int8_precisions")},
        "mobile": export.get("mobile"),
        "stages": stage_times,
        "test_samples": int(len(data.y_test)),
        "environment": _environment(target, recipe.seed),
    }


def _write_build(out_dir: Path, target: Target, recipe: Recipe, report: dict, st_export: StageOut, data) -> Path:
    """Assemble build/<target>/ in a temporary folder, then swap it into place."""
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
        deliverable = "student-int8" if target.precision == "int8" else "student-fp32"
        manifest = {
            "model": files[deliverable],
            "sha256": sha256_file(tmp / files[deliverable]),
            "runtime": target.runtime,
            "format": {".xml": "openvino-ir", ".ort": "ort"}.get(Path(files[deliverable]).suffix, "onnx"),
            "precision": target.precision,
            "input": {"name": "input", "shape": ["batch", *data.input_shape], "dtype": "float32"},
            "output": {"name": "logits", "shape": ["batch", len(data.labels)], "dtype": "float32",
                       "meaning": "unnormalized class scores; argmax is the predicted label"},
            "preprocessing": data.preprocessing,
            "labels": data.labels,
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
