"""report.json: what a build measured, assembled from its stages' results; the one source every report
page is rendered from."""

from __future__ import annotations

from dataclasses import asdict


def assemble(task, ctx, done: list, data_seconds: float, params: dict) -> dict:
    """report.json from the stages' results; every model's quality fields come from its runtime's
    outputs on the test split (task.scores), the headline one named by task.quality."""
    import numpy as np

    from ..artifacts import MODEL_NAMES, model_file
    from ..backends import file_size

    recipe, target = ctx.recipe, ctx.target
    quality = task.quality
    by = {s.name: s for s in done}
    bench = by["benchmark"].meta
    export = by["export"].meta
    files = {n: model_file(n, target) for n in MODEL_NAMES}
    outs = {n: np.load(by["benchmark"].dir / f"{n}.outputs.npy") for n in MODEL_NAMES}
    models = {}
    for name in MODEL_NAMES:
        path = by["export"].dir / files[name]
        size = file_size(path)
        b = bench[name]
        models[name] = {
            **task.scores(ctx, outs[name], outs["teacher"]),
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
        for key in ("latency_by_seq", "op_profile", "op_profile_detail"):
            if key in b:
                models[name][key] = b[key]
    comparisons = _statistics(task, ctx, models, outs)
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
    # the INT8 student trains quantize.epochs more than the FP32 one it starts from: the verdict says so
    training["qat"].setdefault("epochs", recipe.quantize.epochs)
    teacher_val = by["teacher"].meta.get("val_score")
    baseline_val = by["baseline"].meta.get("val_score")
    return {
        "target": target.name,
        "target_profile": asdict(target),
        "recipe": recipe.name,
        "task": recipe.task,
        "kind": task.kind,
        "quality_metric": quality,
        "quality_label": task.quality_label,
        "models": models,
        "training": training,
        "distillation_gain_pts": task.quality_points(models["student-fp32"][quality] - models["student-baseline"][quality]),
        "comparisons": comparisons,
        "teacher_check": {"val_score": teacher_val, "baseline_val_score": baseline_val,
                          "below_baseline": _below(teacher_val, baseline_val, len(ctx.data.x_val))},
        **task.report_extra(ctx),
        "parity": export["parity"],
        "exporters": export.get("exporters") or export.get("exporter"),
        "hf_folder": export.get("hf"),
        "int8": {"reduce_range": export["reduce_range"], "onnxruntime_ops": export.get("int8_ops", {}),
                 "export": export.get("int8_export"),
                 "openvino_precisions": export.get("openvino_int8_precisions"),
                 "embedding_tables": export.get("int8_embeddings"),
                 "accuracy_budget": export.get("accuracy_budget"), "payoff": export.get("int8_payoff"),
                 "activations": export.get("int8_activations"), "shipped_fp32": export.get("int8_shipped_fp32"),
                 # why an INT8 model slower than its FP32 twin can ship: the recipe pinned it, or the runtime's
                 # own quantizer placed INT8 (edgekd times layers only in the graphs it writes)
                 "layers": recipe.quantize.int8_layers, "placed_by_runtime": not target.backend.edgekd_int8},
        "mobile": export.get("mobile"),
        "student_choice": by["student-choice"].meta if "student-choice" in by else None,
        "stages": stage_times,
        "test_samples": int(len(ctx.data.y_test) if ctx.data.y_test is not None else len(ctx.data.x_test)),
        "validation_samples": int(len(ctx.data.y_val) if ctx.data.y_val is not None else len(ctx.data.x_val)),
        "environment": environment(target, recipe.seed),
    }


def _below(teacher: float | None, baseline: float | None, n: int) -> bool:
    """The teacher below the hard-label student on validation by more than noise: their Wilson intervals
    on the n validation items do not overlap (validation scores in [0, 1])."""
    from .stats import wilson

    if teacher is None or baseline is None or teacher >= baseline:
        return False
    if not (0 <= teacher <= 1 and 0 <= baseline <= 1 and n):
        return True
    return wilson(round(teacher * n), n)[1] < wilson(round(baseline * n), n)[0]


def _statistics(task, ctx, models: dict, outs: dict) -> dict:
    """Each model's quality interval (into models[name]["quality_interval"]) and the paired tests of the
    differences a verdict states, from the task's per-item scores; {} for a task without them."""
    from .stats import judge

    items = {n: task.item_scores(ctx, o, outs["teacher"]) for n, o in outs.items()}
    if any(v is None for v in items.values()):
        return {}
    intervals, comparisons = judge(items, points=task.quality_points)
    for n, q in intervals.items():
        models[n]["quality_interval"] = q
    return comparisons


def cpu_info() -> dict:
    """{"cpu": model name, "isa": {flag: present}} for the instruction sets that move INT8 / INT4 / bf16 speed."""
    import platform
    from pathlib import Path

    try:
        cpuinfo = Path("/proc/cpuinfo").read_text()
    except OSError:
        return {"cpu": platform.processor()}
    model = next((line.split(":", 1)[1].strip() for line in cpuinfo.splitlines() if line.startswith("model name")), "")
    flags = next((line.split(":", 1)[1].split() for line in cpuinfo.splitlines() if line.startswith("flags")), [])
    return {"cpu": model, "isa": {k: k in flags for k in ("avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8")}}


def environment(target, seed: int) -> dict:
    import os
    import platform
    import subprocess
    from importlib import metadata
    from pathlib import Path

    from .. import __version__

    info: dict = {"python": platform.python_version(), "machine": platform.machine(), "seed": seed,
                  "edgekd": __version__, "threads": target.threads, "logical_cpus": os.cpu_count()}
    info.update(cpu_info())
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


def check_budget(report: dict, target) -> None:
    """The deliverable's measured peak RSS (fresh process, VmHWM) against the target's budget."""
    from ..errors import BudgetError

    if not target.memory_budget_mb:
        return
    from ..artifacts import deliverable

    name = deliverable(target)
    m = report["models"][name]
    key = target.backend.memory_measure
    what = {"rss_increase_mb": "RSS increase over the imported runtime"}.get(key, "peak RSS")
    used = m[key]
    report["memory_budget"] = {"budget_mb": target.memory_budget_mb, "model": m["file"], "peak_rss_mb": m["peak_rss_mb"],
                               "measured": what, "measured_mb": used, "fits": used <= target.memory_budget_mb}
    if used > target.memory_budget_mb:
        raise BudgetError(f"{m['file']} does not fit target '{target.name}': {what} {used:.1f} MB "
                          f"(measured in a fresh process) > memory_budget_mb {target.memory_budget_mb:g}; "
                          "choose a smaller student or raise the budget (target.memory_budget_mb=...)")
