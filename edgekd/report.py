"""report.md: what a person reads, rendered from report.json alone."""

from __future__ import annotations

from dataclasses import asdict

from ._markdown import drop_empty_columns, markdown_to_html  # noqa: F401 - markdown_to_html is public here
from .report_plots import pareto_front  # noqa: F401 - public here since the first report

LABELS = {"teacher": "teacher", "student-baseline": "student, hard labels (baseline)",
          "student-fp32": "student, distilled FP32", "student-int8": "student, distilled + QAT INT8"}


TEXT_LABELS = {"teacher": "teacher", "student-baseline": "student, no distillation (baseline)",
               "student-fp32": "student, distilled FP32", "student-int8": "student, distilled + QAT INT8"}


# the names in verdict lines and on figures
SHORT = {"teacher": "teacher", "student-baseline": "baseline", "student-fp32": "student FP32",
         "student-int8": "student INT8"}

# Without quantize.max_accuracy_drop the verdict still flags an INT8 loss a reader would notice: one point
# of the task's metric against the FP32 student on the test split.
INT8_DROP_FLAG_PTS = 1.0


def quality(r: dict, x: dict) -> tuple[float, str]:
    """The model's headline quality as (value in %, name), as report.json names it."""
    key = r.get("quality_metric", "accuracy")
    return 100 * x[key], r.get("quality_label", key)


def _mb(b: float) -> str:
    return f"{b / 1e6:.2f} MB" if b >= 1e5 else f"{b / 1e3:.1f} kB"


def exporter_lines(r: dict) -> list[str]:
    """Which exporter wrote each ONNX model, in one line, and what hf/ holds (followed by a blank line)."""
    ex = r.get("exporters")
    if not isinstance(ex, dict):  # a build before exporters were recorded per model
        return []
    by: dict = {}
    for name, info in ex.items():
        by.setdefault((info["exporter"], info.get("why")), []).append(name)
    lines = ["- Exported with " + "; ".join(f"{e} ({', '.join(names)}{': ' + why if why else ''})"
                                            for (e, why), names in by.items()) + "."]
    hf = r.get("hf_folder")
    if hf:
        lines.append(f"- `{hf['folder']}/`: model.onnx (the deliverable, hard-linked), {', '.join(hf['files'])}; loads with "
                     f"optimum's {hf['loads_with']} and transformers.pipeline. {hf['note']}.")
    return [*lines, ""]


def render_markdown(r: dict) -> str:
    if r.get("sequence_lengths"):  # timed at several sequence lengths: a text model
        return render_text_markdown(r)
    env = r["environment"]
    m = r["models"]
    lines = [
        f"# edgekd build: {r['target']}",
        "",
        *verdict_lines(r),
        f"Recipe `{r['recipe']}`, runtime **{r['target_profile']['runtime']}**, "
        f"{r['target_profile']['threads']} thread(s), batch 1, {r['target_profile']['iterations']} timed runs "
        f"after {r['target_profile']['warmup']} warm-up, each model in a fresh process. "
        f"Accuracy on {r['test_samples']} held-out test images ({r.get('data_origin', '')}), computed from the runtime's outputs.",
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
    lines += accuracy_budget_lines(r)
    by_threads = {n: x.get("latency_by_threads") or {} for n, x in m.items()}
    counts = sorted({t for v in by_threads.values() for t in v}, key=int)
    if len(counts) > 1:
        pinned = " (each process pinned to its first N cores)" if r["target_profile"].get("pin_cores") else ""
        lines += ["", "## Latency by thread count", "",
                  f"Host timings on {env.get('cpu', 'this CPU')}{pinned}: p50 / p99 ms at batch 1.", "",
                  "| model | " + " | ".join(f"{t} thread(s)" for t in counts) + " |",
                  "|---|" + "---:|" * len(counts)]
        for n, v in by_threads.items():
            lines.append(f"| {LABELS.get(n, n)} | " + " | ".join(
                f"{v[t]['p50']:.3f} / {v[t]['p99']:.3f}" if t in v else "-" for t in counts) + " |")
    lines += _budget_lines(r)
    mob = r.get("mobile")
    if mob and "delegation" in mob:
        cov = mob["delegation"]
        lines += ["", "## Mobile (ExecuTorch)", "",
                  f"- Deliverable: `{mob['model']}`, an ExecuTorch program lowered to the XNNPACK delegate (INT8 by "
                  "ExecuTorch's XNNPACK quantizer, PT2E, per-channel weights, from the QAT-tuned float weights).",
                  f"- Delegate coverage: {cov['delegated_ops']} of {cov['delegated_ops'] + cov['portable_ops']} ops "
                  f"({100 * cov['delegated_share']:.0f}%) in {cov['delegated_subgraphs']} XNNPACK subgraph(s); "
                  f"not delegated: {', '.join(k for k, v in cov['by_op'].items() if v['portable']) or 'none'}.",
                  "- **All timings in this report are host timings on this x86 machine**, through ExecuTorch's Python "
                  "runtime. They say nothing about a phone's speed. No phone was measured."]
    est = (mob or {}).get("device_estimates")
    if est:
        e0 = est["estimates"][0]
        lines += ["", "## Named-device latency: estimates, not measurements", "",
                  f"{est['macs']:,} multiply-accumulates per input (counted on the FP32 graph). Method: "
                  f"{e0['method']}", "",
                  "| core | precision | peak GMAC/s | at peak (lower bound), ms | at the assumed utilisation, ms |",
                  "|---|---|---:|---:|---:|"]
        for e in est["estimates"]:
            lines.append(f"| {e['device']} | {e['precision']} | {e['peak_gmacs']:.1f} | {e['estimate_ms_at_peak']:.4f} "
                         f"| {e['estimate_ms_assumed']:.4f} ({100 * e['utilisation_assumed']:.0f}%) |")
    arm = r.get("arm_verification")
    if arm:
        lines += ["", "## INT8 on ARM kernels (emulated)", ""]
        if "skipped" in arm:
            lines.append(f"- Not run: {arm['skipped']}.")
        else:
            acc = (f"test accuracy x86 {100 * arm['x86_accuracy']:.2f}% vs ARM {100 * arm['arm_accuracy']:.2f}%; "
                   if arm.get("arm_accuracy") is not None else "")
            lines.append(f"- {arm['samples']} test inputs on aarch64 onnxruntime {arm['onnxruntime']} under "
                         f"{arm['emulator']} -cpu {arm['cpu']}: {acc}top-1 agreement "
                         f"{100 * arm['top1_agreement_x86_arm']:.2f}%, max |x86 - ARM| {arm['max_abs_diff']:.3g}. "
                         "Outputs only: timing under emulation means nothing and is not reported.")
    if mob and "usability_check" in mob:
        lines += ["", "## Mobile", "",
                  f"- Deliverable: `{mob['model']}`, ONNX Runtime's mobile format converted for ARM "
                  "(INT8 QDQ with per-channel weights where the target is INT8: the form XNNPACK/NNAPI/CoreML consume).",
                  "- **All timings in this report are host timings on this x86 machine.** They say nothing about a "
                  "phone's speed: ARM kernels and mobile execution providers behave differently (on an x86 AVX2 "
                  "host, mobile INT8 kernels can even be slower than FP32). No phone was measured.",
                  "- Op types of the final model: " + ", ".join(f"{k} x{v}" for k, v in sorted(mob["op_types"].items())) + ".",
                  *[f"- {v.strip()}" for v in mob["usability_check"].splitlines() if v.startswith("Model should perform well with")],
                  "- onnxruntime's mobile usability check in full (NNAPI and CoreML coverage; it does not cover XNNPACK):", "",
                  "```", *mob["usability_check"].splitlines(), "```"]
    lines += ["", "## Parity of every export against its PyTorch model (held-out inputs)", "", *exporter_lines(r),
              "| file | top-1 agreement | max abs logit diff |", "|---|---:|---:|"]
    for f, p in r["parity"].items():
        lines.append(f"| {f} | {100 * p['agreement']:.2f}% | {p['max_abs_diff']:.3g} |")
    lines += ["", "## Training", "", "| stage | val accuracy | chosen epoch (best on validation) |", "|---|---:|---:|"]
    for n, t_ in r["training"].items():
        if t_.get("val_score") is not None:
            lines.append(f"| {n} | {100 * t_['val_score']:.2f}% | {t_.get('chosen_epoch', '-')} |")
    qat = r["training"].get("qat", {})
    if qat.get("method") == "qat" and qat.get("chosen_epoch") == 0:
        lines.append("\nQuantization-aware fine-tuning did not beat its calibrated starting point on validation, "
                     "so the calibrated weights (epoch 0) were kept: at this model size post-training "
                     "calibration is already close to lossless.")
    return drop_empty_columns("\n".join(lines + _stages_and_environment(r)))


def deliverable_name(r: dict) -> str:
    """Which model the build's target ships (artifacts.deliverable, from report.json alone)."""
    return "student-int8" if r["target_profile"]["precision"] == "int8" else "student-fp32"


def headline(r: dict, name: str, *, target: str = "") -> str:
    """One line: a model against the teacher (p50 speed, quality, file size, peak RSS); led by ⚠ and
    ending in what to check when something went wrong."""
    m, x = r["models"], r["models"][name]
    s = x["speedup_vs_teacher"]
    speed = f"{s:.1f}x faster" if s >= 1 else f"{1 / s:.1f}x slower"
    seq = f" ({r['sequence_lengths'][-1]} tokens)" if r.get("sequence_lengths") else ""
    q, qname = quality(r, x)
    if r["quality_metric"] == "fidelity_cosine":
        qual = f"cosine fidelity {x['fidelity_cosine']:.4f} to the teacher"
    else:
        qual = f"{q - quality(r, m['teacher'])[0]:+.2f} points {qname} ({q:.2f}%)"
    k = 1 / x["size_ratio_vs_teacher"]
    size = f"{k:.0f}x smaller file" if k >= 10 else f"{k:.1f}x smaller file" if k >= 1 else f"{1 / k:.1f}x larger file"
    who = f"{target}: " if target else ""
    ships = ", the deliverable" if name == deliverable_name(r) and not target else ""
    line = (f"**{who}{SHORT.get(name, name)}** ({x['runtime']}{ships}): {speed} than the teacher at p50{seq}, {qual}, "
            f"{size}, {x['peak_rss_mb']:.0f} MB peak RSS")
    checks = _checks(r, name)
    return f"⚠ {line}. **Check:** {'; '.join(checks)}." if checks else f"{line}."


def _checks(r: dict, name: str) -> list[str]:
    """What went wrong for one student: distillation below its baseline, INT8 losing more than the budget,
    float fallback layers, the memory budget missed, an export never checked against PyTorch."""
    m, x = r["models"], r["models"][name]
    out = []
    gain = quality(r, m["student-fp32"])[0] - quality(r, m["student-baseline"])[0]
    if gain < 0:
        out.append(f"distillation below the student's starting weights ({gain:+.2f} points of cosine fidelity)"
                   if r["quality_metric"] == "fidelity_cosine" else
                   f"distillation below the hard-label baseline ({gain:+.2f} points)")
    if (r.get("teacher_check") or {}).get("below_baseline"):
        out.append("the teacher is worse than the hard-label student on validation")
    ab = (r.get("int8") or {}).get("accuracy_budget")
    if name == "student-int8":
        budget = ab["max_accuracy_drop_pts"] if ab else INT8_DROP_FLAG_PTS
        drop = quality(r, m["student-fp32"])[0] - quality(r, x)[0]
        if drop > budget:
            out.append(f"INT8 loses {drop:.2f} points against the FP32 student on the test split (more than "
                       + (f"the budget of {budget:g})" if ab else f"{budget:g}; no quantize.max_accuracy_drop set)"))
        if ab and not ab["met"]:
            out.append(f"INT8 accuracy budget missed on validation ({ab['chosen_drop_pts']:.2f} points lost, "
                       f"budget {ab['max_accuracy_drop_pts']:g})")
        if ab and ab["float_layers"]:
            out.append(f"fallback: {len(ab['float_layers'])} of {ab['layers']} layers left float")
    mem = r.get("memory_budget")
    if mem and not mem["fits"] and name == deliverable_name(r):
        out.append(f"{mem.get('measured', 'peak RSS')} {mem.get('measured_mb', mem['peak_rss_mb']):.0f} MB is over "
                   f"the target's {mem['budget_mb']:g} MB budget")
    if x.get("file") and "parity" in r and x["file"] not in r["parity"]:
        out.append(f"{x['file']} was not checked against its PyTorch model")
    return out


def verdict_lines(r: dict) -> list[str]:
    """The first lines a reader needs: each student against the teacher (the deliverable first), flagged
    where something went wrong; then did distillation beat the hard-label baseline, does the teacher
    beat the student, and a teacher that is worse than the baseline called out."""
    first = deliverable_name(r)
    lines = []
    for name in (first, *(n for n in ("student-int8", "student-fp32") if n != first)):
        lines += [headline(r, name), ""]
    m = r["models"]
    q = lambda name: quality(r, m[name])[0]  # noqa: E731
    label = quality(r, m["teacher"])[1]
    gain = q("student-fp32") - q("student-baseline")
    if r["quality_metric"] != "fidelity_cosine":
        word = "beat" if gain > 0 else "did NOT beat"
        lines.append(f"- **Distillation {word} the hard-label baseline**: {q('student-fp32'):.2f}% vs "
                     f"{q('student-baseline'):.2f}% {label} ({gain:+.2f} points, same student, data and epochs).")
        gap = q("teacher") - q("student-fp32")
        lines.append(f"- The teacher {'beats' if gap > 0 else 'does NOT beat'} the distilled student: "
                     f"{q('teacher'):.2f}% vs {q('student-fp32'):.2f}% ({gap:+.2f} points).")
        tc = r.get("teacher_check") or {}
        if tc.get("below_baseline"):
            lines.append(f"- **Warning: the teacher is worse than the student trained on hard labels alone** "
                         f"(validation {100 * tc['val_score']:.2f}% vs {100 * tc['baseline_val_score']:.2f}%): it has "
                         "little to teach; fine-tune it on this data (teacher.fine_tune = always) or choose a stronger one.")
    else:
        lines.append(f"- Distillation vs the student's starting weights: {gain:+.2f} points of {label}.")
    ab = (r.get("int8") or {}).get("accuracy_budget")
    if ab:
        lines.append(f"- {budget_verdict(ab)}")
    return lines + [""]


def budget_verdict(ab: dict) -> str:
    """One line: did the INT8 student meet quantize.max_accuracy_drop, and at what price."""
    n, total = len(ab["float_layers"]), ab["layers"]
    where = f"on the validation split, {ab['runtime']}"
    if not ab["met"]:
        return (f"**No INT8 model met the accuracy budget** of {ab['max_accuracy_drop_pts']:g} points: all-INT8 lost "
                f"{ab['int8_drop_pts']:.2f}, and the most accurate variant tried, delivered here, keeps {n} of {total} "
                f"layers float and loses {ab['chosen_drop_pts']:.2f} points ({where}).")
    if not n:
        return (f"INT8 accuracy budget met without fallback: {ab['int8_drop_pts']:.2f} points lost against the FP32 "
                f"student, budget {ab['max_accuracy_drop_pts']:g} ({where}).")
    return (f"**INT8 accuracy budget met with {n} of {total} layers left float** ({', '.join(ab['float_layers'])}): "
            f"{ab['chosen_drop_pts']:.2f} points lost against the FP32 student instead of {ab['int8_drop_pts']:.2f} "
            f"all-INT8, budget {ab['max_accuracy_drop_pts']:g} ({where}).")


def accuracy_budget_lines(r: dict) -> list[str]:
    """The report section of quantize.max_accuracy_drop: the outcome, every configuration tried, the
    layers' sensitivity and what the fallback costs in latency."""
    ab = (r.get("int8") or {}).get("accuracy_budget")
    if not ab:
        return []
    pts = lambda v: f"{100 * v:.2f}"  # noqa: E731 - a score in [0, 1] as points
    metric = ab["metric"].replace("_", " ")
    lines = ["", "## INT8 accuracy budget", "",
             f"- Budget: at most {ab['max_accuracy_drop_pts']:g} absolute points of {metric} lost against the FP32 "
             f"student, measured on {ab['runtime']} on the validation split: FP32 {pts(ab['fp32_val_score'])}, all-INT8 "
             f"{pts(ab['int8_val_score'])} ({ab['int8_drop_pts']:.2f} points lost).",
             f"- {budget_verdict(ab)}"]
    if ab["float_layers"]:
        lines.append("- Layers left float: " + ", ".join(f"{k} ({v})" for k, v in ab["float_layer_types"].items())
                     + ". A float layer reads its input unquantized, so the layer feeding it alone may also lose its "
                     "integer kernel: the op counts above say which kernels run.")
    lat = ab.get("latency")
    if lat:
        p = lat["p50_ms"]
        lines.append(f"- Latency cost of the fallback ({lat['method']}): p50 FP32 {p['fp32']:.3f} ms, all-INT8 "
                     f"{p['int8']:.3f} ms, delivered {p['chosen']:.3f} ms ({100 * lat['fallback_cost']:+.0f}% over "
                     "all-INT8); the table at the top times the delivered model in a fresh process.")
    t = ab["tuner"]
    lines += ["", f"Configurations tried by {t['name']} {t['version']} (tolerable_loss {t['tolerable_loss']:.4g}, "
                  "relative; it stops at the first within the budget, or keeps the most accurate):", "",
              f"| float layers | validation {metric} | points lost | within budget |", "|---|---:|---:|---|"]
    for x in ab["tried"]:
        names = ", ".join(x["float_layers"]) or "none (all INT8)"
        lines.append(f"| {names} | {pts(x['val_score'])} | {x['drop_pts']:.2f} | {'yes' if x['within_budget'] else 'no'} |")
    if ab["sensitivity"]:
        sens = ab["sensitivity"]
        lines += ["", f"Sensitivity, each layer alone float, on {sens[0]['rows']} validation inputs (the share of the "
                      "all-INT8 output error it removes; most sensitive first, the order of the fallback):", "",
                  "| layer | type | output error removed |", "|---|---|---:|"]
        int8_err = max(sens[0]["error_removed"] + sens[0]["output_error"], 1e-30)
        for x in sens[:12]:
            lines.append(f"| {x['layer']} | {x['type']} | {100 * x['error_removed'] / int8_err:.1f}% |")
        if len(sens) > 12:
            lines.append(f"| ... {len(sens) - 12} more in report.json | | |")
    return lines


def _budget_lines(r: dict) -> list[str]:
    budget = r.get("memory_budget")
    if not budget:
        return []
    return ["", f"Memory budget: {budget['model']}: {budget.get('measured', 'peak RSS')} "
                f"{budget.get('measured_mb', budget['peak_rss_mb']):.1f} MB in a fresh process (peak RSS "
                f"{budget['peak_rss_mb']:.1f} MB); the target allows {budget['budget_mb']:g} MB: "
                f"{'fits' if budget['fits'] else 'does NOT fit'}."]


def _stages_and_environment(r: dict) -> list[str]:
    env = r["environment"]
    lines = ["", "## Stage times", "", "| stage | seconds | from cache |", "|---|---:|---|"]
    for n, s in r["stages"].items():
        lines.append(f"| {n} | {s['seconds']:.1f} | {'yes (the time of the run that made it)' if s['cached'] else ''} |")
    isa = ", ".join(k for k, v in (env.get("isa") or {}).items() if v) or "unknown"
    vers = ", ".join(f"{k} {v}" for k, v in env.get("versions", {}).items())
    return lines + ["", "## Environment", "",
                    f"CPU {env.get('cpu', '?')} ({isa}); {env.get('logical_cpus')} logical CPUs, {env['threads']} used; "
                    f"{vers}; Python {env['python']}; edgekd {env['edgekd']}"
                    f"{', commit ' + env['git_commit'] if env.get('git_commit') else ''}; seed {env['seed']}.", ""]


def render_text_markdown(r: dict) -> str:
    """report.md of a text build (embedding or classification)."""
    m, tp = r["models"], r["target_profile"]
    emb = r["quality_metric"] == "fidelity_cosine"
    seqs = [str(s) for s in r["sequence_lengths"]]
    lines = [
        f"# edgekd build: {r['target']} ({r['task']})",
        "",
        *verdict_lines(r),
        f"Recipe `{r['recipe']}`, runtime **{tp['runtime']}**, {tp['threads']} thread(s), batch 1, each model in a "
        f"fresh process. Quality on {r['test_samples']} held-out texts ({r['data_origin']}), computed from the "
        "runtime's outputs" + (" against the teacher's runtime outputs." if emb else "."),
        "",
    ]
    if emb:
        lines += ["| model | params | cosine fidelity | top-10 neighbour overlap | "
                  + " | ".join(f"p50 ms @{s}" for s in seqs) + f" | p90 / p99 ms @{seqs[-1]} | speedup @{seqs[-1]} "
                  "| size | peak RSS |", "|---|---:|---:|---:|" + "---:|" * len(seqs) + "---:|---:|---:|---:|"]
    else:
        lines += ["| model | params | accuracy | agreement w/ teacher | "
                  + " | ".join(f"p50 ms @{s}" for s in seqs) + f" | p90 / p99 ms @{seqs[-1]} | speedup @{seqs[-1]} "
                  "| size | peak RSS |", "|---|---:|---:|---:|" + "---:|" * len(seqs) + "---:|---:|---:|---:|"]
    for name, x in m.items():
        q = (f"{x['fidelity_cosine']:.4f} | {x['neighbour_overlap_at_10']:.3f}" if emb else
             f"{100 * x['accuracy']:.2f}% | {100 * x['agreement']:.2f}%")
        by = x["latency_by_seq"]
        lines.append(f"| {TEXT_LABELS.get(name, name)} | {x['params']:,} | {q} | "
                     + " | ".join(f"{by[s]['p50']:.2f}" for s in seqs)
                     + f" | {by[seqs[-1]]['p90']:.2f} / {by[seqs[-1]]['p99']:.2f} | {x['speedup_vs_teacher']:.1f}x "
                     f"| {_mb(x['size_bytes'])} | {x['peak_rss_mb']:.0f} MB |")
    s8, s32, base = m["student-int8"], m["student-fp32"], m["student-baseline"]
    key = "fidelity_cosine" if emb else "accuracy"
    fmt = (lambda v: f"{v:.4f}") if emb else (lambda v: f"{100 * v:.2f}%")
    lines += ["", "## What distillation and INT8 bought", ""]
    lines.append(f"- Distillation: {fmt(base[key])} -> {fmt(s32[key])} "
                 + ("cosine fidelity (the baseline is the student before training: its copied or fresh layers)."
                    if emb else "accuracy (the baseline is the same student trained on the hard labels)."))
    lines.append(f"- INT8 vs FP32 student: {fmt(s32[key])} -> {fmt(s8[key])}; "
                 + ", ".join(f"{s} tokens {s32['latency_by_seq'][s]['p50'] / s8['latency_by_seq'][s]['p50']:.2f}x"
                             for s in seqs) + " faster at p50.")
    lines.append("- INT8 student vs teacher: " + ", ".join(
        f"{s} tokens {x_:.1f}x" for s, x_ in s8["speedup_vs_teacher_by_seq"].items())
        + f" faster at p50; {s8['params'] / m['teacher']['params']:.2f} of the parameters, "
        f"{1 / s8['size_ratio_vs_teacher']:.1f}x smaller file.")
    for name in ("student-fp32", "student-int8"):
        prof = m[name].get("op_profile")
        if prof:
            top = ", ".join(f"{op} {100 * share:.0f}%" for op, share in list(prof.items())[:8])
            lines.append(f"- Kernel time by op type at {seqs[-1]} tokens, {name} (onnxruntime profiler): {top}")
    filt = r.get("teacher_filtering")
    if filt:
        lines.append(f"- Teacher-output filtering dropped {filt['dropped']} of {filt['dropped'] + filt['kept']} "
                     f"training texts (teacher wrong: {'dropped' if filt['drop_teacher_wrong'] else 'kept'}; "
                     f"confidence below {filt['min_teacher_confidence']:g}: dropped).")
    i8 = r["int8"]
    ops = i8.get("onnxruntime_ops") or {}
    lines += ["", "## INT8 graph", "",
              f"- The MatMul/Gemm of every linear layer: weights per-channel symmetric INT8"
              f"{' (7-bit, reduce_range: x86 CPU without VNNI)' if i8['reduce_range'] else ''}, inputs per-tensor "
              "UINT8; LayerNorm, Softmax, GELU and the attention products stay float.",
              f"- Ops onnxruntime runs after optimization: {', '.join(f'{k} x{v}' for k, v in sorted(ops.items()))}."]
    tables = i8.get("embedding_tables") or []
    described = [f"{t['table']} {t['shape'][0]}x{t['shape'][1]} INT8 with a scale per row (max abs error "
                 f"{t['max_abs_error']:.2g})" for t in tables]
    lines.append("- Embedding tables: " + ("; ".join(described) + ", dequantized per looked-up row" if tables
                                            else "FP32 (export.int8_embeddings = false)"))
    if i8.get("openvino_precisions"):
        lines.append(f"- OpenVINO runtime precision of matmul layers: {i8['openvino_precisions']}.")
    lines += accuracy_budget_lines(r)
    lines += _budget_lines(r)
    lines += ["", "## Parity of every export against its PyTorch model (held-out texts)", "", *exporter_lines(r)]
    if emb:
        lines += ["| file | mean cosine | min cosine | max abs diff |", "|---|---:|---:|---:|"]
        for f, p in r["parity"].items():
            lines.append(f"| {f} | {p['mean_cosine']:.6f} | {p['min_cosine']:.6f} | {p['max_abs_diff']:.3g} |")
    else:
        lines += ["| file | top-1 agreement | max abs logit diff |", "|---|---:|---:|"]
        for f, p in r["parity"].items():
            lines.append(f"| {f} | {100 * p['agreement']:.2f}% | {p['max_abs_diff']:.3g} |")
    lines += ["", "## Training", "", "| stage | validation score | chosen epoch (best on validation) |", "|---|---:|---:|"]
    for n, t_ in r["training"].items():
        v = t_.get("val_score")
        if v is not None:
            lines.append(f"| {n} | {v:.4f} | {t_.get('chosen_epoch', '-')} |")
    return drop_empty_columns("\n".join(lines + _stages_and_environment(r)))


def plots(r: dict) -> dict[str, str]:
    """The report's figures as data: URLs (PNG), in the order the page shows them: the accuracy-speed
    frontier, latency distributions, file sizes."""
    from .report_plots import Point, frontier_figure, latency_figure, png_data_url, sizes_figure

    m, runtime = r["models"], r["target_profile"]["runtime"]
    labels = TEXT_LABELS if r.get("sequence_lengths") else LABELS
    qname = quality(r, next(iter(m.values())))[1]
    seq = f", {r['sequence_lengths'][-1]} tokens" if r.get("sequence_lengths") else ""
    pts = [Point(SHORT.get(n, n), x["latency_ms"]["p50"], quality(r, x)[0], labels.get(n, n)) for n, x in m.items()]
    return {
        "frontier": png_data_url(frontier_figure(pts, quality_label=f"{qname}, %", title=f"{qname} vs latency",
                                                 latency_label=f"p50 latency ({runtime}, batch 1{seq})")),
        "latency": png_data_url(latency_figure(
            {SHORT.get(n, n): x["latency_percentiles_ms"] for n, x in m.items() if x.get("latency_percentiles_ms")},
            title=f"latency distribution ({runtime}, batch 1{seq})")),
        "sizes": png_data_url(sizes_figure({SHORT.get(n, n): x["size_bytes"] for n, x in m.items()})),
    }


def render_html(r: dict) -> str:
    """A self-contained page (figures embedded) with the tables of report.md."""
    return markdown_to_html(render_markdown(r), plots(r), title=f"edgekd {r['target']}")


def write_reports(build_dir, r: dict) -> None:
    """report.md and report.html from the report dict (report.json is the source of truth)."""
    from pathlib import Path

    d = Path(build_dir)
    (d / "report.md").write_text(render_markdown(r))
    (d / "report.html").write_text(render_html(r))


def render_combined(reports: dict[str, dict]) -> str:
    """The verdict of every target's deliverable, then one table across targets: every model on every
    target's runtime."""
    lines = ["# edgekd build: " + ", ".join(reports), ""]
    for t, r in reports.items():
        lines += [headline(r, deliverable_name(r), target=t), ""]
    lines += ["Each target's models benchmarked on that target's runtime (batch 1). Per-target details: "
              + ", ".join(f"`{t}/report.md`" for t in reports) + ".", "",
              "| target | runtime | model | quality | p50 ms | p99 ms | speedup vs teacher | size | peak RSS |",
              "|---|---|---|---:|---:|---:|---:|---:|---:|"]
    for t, r in reports.items():
        for name, x in r["models"].items():
            q, qname = quality(r, x)
            lines.append(f"| {t} | {x['runtime']} | {LABELS.get(name, name)} | {qname} {q:.2f}% "
                         f"| {x['latency_ms']['p50']:.3f} | {x['latency_ms']['p99']:.3f} | {x['speedup_vs_teacher']:.1f}x "
                         f"| {_mb(x['size_bytes'])} | {x['peak_rss_mb']:.0f} MB |")
    return drop_empty_columns("\n".join(lines)) + "\n"


def combined_plot(reports: dict[str, dict]) -> dict[str, str]:
    """The accuracy-speed frontier over every model of every target (one marker per target)."""
    from .report_plots import Point, frontier_figure, png_data_url

    pts = [Point(f"{SHORT.get(n, n)} ({t})", x["latency_ms"]["p50"], quality(r, x)[0], t)
           for t, r in reports.items() for n, x in r["models"].items()]
    names = {quality(r, x)[1] for r in reports.values() for x in r["models"].values()}
    qname = names.pop() if len(names) == 1 else "quality (accuracy or cosine fidelity)"
    return {"frontier": png_data_url(frontier_figure(pts, quality_label=f"{qname}, %",
                                                     latency_label="p50 latency (each target's runtime, batch 1)",
                                                     title=f"{qname} vs latency, every target"))}


def write_combined(out_dir, reports: dict[str, dict]) -> "Path":
    """<out>/report.{json,md,html} across targets; written aside, then renamed."""
    import json
    import os
    from pathlib import Path

    d = Path(out_dir)
    md = render_combined(reports)
    for name, text in (("report.json", json.dumps({"targets": reports}, indent=2)), ("report.md", md),
                       ("report.html", markdown_to_html(md, combined_plot(reports), title="edgekd builds"))):
        tmp = d / f".{name}.tmp{os.getpid()}"
        tmp.write_text(text)
        os.replace(tmp, d / name)
    return d / "report.md"


# report.json ----------------------------------------------------------------------------------------

def assemble(task, ctx, done: list, data_seconds: float, params: dict) -> dict:
    """report.json from the stages' results; every model's quality fields come from its runtime's
    outputs on the test split (task.scores), the headline one named by task.quality."""
    import numpy as np

    from .artifacts import MODEL_NAMES, file_size, model_file

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
        "distillation_gain_pts": 100 * (models["student-fp32"][quality] - models["student-baseline"][quality]),
        "teacher_check": {"val_score": teacher_val, "baseline_val_score": baseline_val,
                          "below_baseline": teacher_val is not None and baseline_val is not None
                          and teacher_val < baseline_val},
        **task.report_extra(ctx),
        "parity": export["parity"],
        "exporters": export.get("exporters") or export.get("exporter"),
        "hf_folder": export.get("hf"),
        "int8": {"reduce_range": export["reduce_range"], "onnxruntime_ops": export.get("int8_ops", {}),
                 "export": export.get("int8_export"),
                 "openvino_precisions": export.get("openvino_int8_precisions"),
                 "embedding_tables": export.get("int8_embeddings"),
                 "accuracy_budget": export.get("accuracy_budget")},
        "mobile": export.get("mobile"),
        "stages": stage_times,
        "test_samples": int(len(ctx.data.y_test) if ctx.data.y_test is not None else len(ctx.data.x_test)),
        "environment": environment(target, recipe.seed),
    }


def environment(target, seed: int) -> dict:
    import os
    import platform
    from pathlib import Path

    from . import __version__
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


def check_budget(report: dict, target) -> None:
    """The deliverable's measured peak RSS (fresh process, VmHWM) against the target's budget."""
    from .errors import BudgetError

    if not target.memory_budget_mb:
        return
    from .artifacts import deliverable

    name = deliverable(target)
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
