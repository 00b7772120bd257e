"""report.md: what a person reads, rendered from report.json alone."""

from __future__ import annotations

LABELS = {"teacher": "teacher", "student-baseline": "student, hard labels (baseline)",
          "student-fp32": "student, distilled FP32", "student-int8": "student, distilled + QAT INT8"}


def _mb(b: float) -> str:
    return f"{b / 1e6:.2f} MB" if b >= 1e5 else f"{b / 1e3:.1f} kB"


def render_markdown(r: dict) -> str:
    env = r["environment"]
    m = r["models"]
    lines = [
        f"# edgekd build: {r['target']}",
        "",
        f"Recipe `{r['recipe']}`, runtime **{r['target_profile']['runtime']}**, "
        f"{r['target_profile']['threads']} thread(s), batch 1, {r['target_profile']['iterations']} timed runs "
        f"after {r['target_profile']['warmup']} warm-up, each model in a fresh process. "
        f"Accuracy on {r['test_samples']} held-out test images, computed from the runtime's outputs.",
        "",
        "| model | params | accuracy | agreement w/ teacher | p50 ms | p90 ms | p99 ms | speedup vs teacher | size | size ratio | peak RSS |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, x in m.items():
        lat = x["latency_ms"]
        lines.append(
            f"| {LABELS.get(name, name)} | {x['params']:,} | {100 * x['accuracy']:.2f}% | {100 * x['agreement']:.2f}% "
            f"| {lat['p50']:.3f} | {lat['p90']:.3f} | {lat['p99']:.3f} | {x['speedup_vs_teacher']:.1f}x "
            f"| {_mb(x['size_bytes'])} | {x['size_ratio_vs_teacher']:.3f} | {x['peak_rss_mb']:.0f} MB |")
    gain = r["distillation_gain_pts"]
    s8, s32, t = m["student-int8"], m["student-fp32"], m["teacher"]
    lines += [
        "",
        "## What distillation and INT8 bought",
        "",
        f"- Distillation vs the same student on hard labels (same data, views and epochs): "
        f"**{gain:+.2f} points** ({100 * s32['accuracy']:.2f}% vs {100 * m['student-baseline']['accuracy']:.2f}%). "
        f"One test image is 0.1 point; differences under ~0.5 point are within noise at this test size.",
        f"- INT8 vs teacher: {100 * (s8['accuracy'] - t['accuracy']):+.2f} points, "
        f"{s8['speedup_vs_teacher']:.1f}x faster at p50, {1 / s8['size_ratio_vs_teacher']:.0f}x smaller.",
    ]
    ratio = s32["latency_ms"]["p50"] / s8["latency_ms"]["p50"]
    if ratio >= 1:
        lines.append(f"- INT8 vs FP32 student on this CPU: {ratio:.2f}x faster at p50.")
    else:
        lines.append(f"- **INT8 is not faster than FP32 here** ({s8['latency_ms']['p50']:.3f} vs "
                     f"{s32['latency_ms']['p50']:.3f} ms): at this size, per-op and quantize/dequantize overhead "
                     "outweighs the cheaper integer arithmetic. Where the time goes is below.")
    for name in ("student-fp32", "student-int8"):
        prof = m[name].get("op_profile")
        if prof:
            top = ", ".join(f"{op} {100 * share:.0f}%" for op, share in list(prof.items())[:8])
            lines.append(f"- Kernel time by op type, {name} (onnxruntime profiler): {top}")
    i8 = r["int8"]
    ops = i8.get("onnxruntime_ops") or {}
    lines += ["", "## INT8 graph", "",
              f"- Weights per-channel symmetric INT8{' (7-bit, reduce_range: x86 CPU without VNNI)' if i8['reduce_range'] else ''}, "
              "activations per-tensor UINT8.",
              f"- Ops onnxruntime runs after optimization: {', '.join(f'{k} x{v}' for k, v in sorted(ops.items()))}."]
    if i8.get("openvino_precisions"):
        lines.append(f"- OpenVINO runtime precision of conv/matmul layers: {i8['openvino_precisions']}.")
    lines += ["", "## Parity of every export against its PyTorch model (held-out inputs)", "",
              "| file | top-1 agreement | max abs logit diff |", "|---|---:|---:|"]
    for f, p in r["parity"].items():
        lines.append(f"| {f} | {100 * p['agreement']:.2f}% | {p['max_abs_diff']:.3g} |")
    lines += ["", "## Training", "", "| stage | val accuracy | chosen epoch (best on validation) |", "|---|---:|---:|"]
    for n, t_ in r["training"].items():
        if "val_accuracy" in t_:
            lines.append(f"| {n} | {100 * t_['val_accuracy']:.2f}% | {t_.get('chosen_epoch', '-')} |")
    qat = r["training"].get("qat", {})
    if qat.get("method") == "qat" and qat.get("chosen_epoch") == 0:
        lines.append("\nQuantization-aware fine-tuning did not beat its calibrated starting point on validation, "
                     "so the calibrated weights (epoch 0) were kept: at this model size post-training "
                     "calibration is already close to lossless.")
    lines += ["", "## Stage times", "", "| stage | seconds | |", "|---|---:|---|"]
    for n, s in r["stages"].items():
        lines.append(f"| {n} | {s['seconds']:.1f} | {'reused from cache (time of the run that made it)' if s['cached'] else ''} |")
    isa = ", ".join(k for k, v in (env.get("isa") or {}).items() if v) or "unknown"
    vers = ", ".join(f"{k} {v}" for k, v in env.get("versions", {}).items())
    lines += ["", "## Environment", "",
              f"CPU {env.get('cpu', '?')} ({isa}); {env.get('logical_cpus')} logical CPUs, {env['threads']} used; "
              f"{vers}; Python {env['python']}; edgekd {env['edgekd']}"
              f"{', commit ' + env['git_commit'] if env.get('git_commit') else ''}; seed {env['seed']}.", ""]
    return "\n".join(lines)
