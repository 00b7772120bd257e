"""The text tasks' parts of report.md (edgekd.tasks.text): every model timed at several sequence lengths;
text-classification reads like image classification (accuracy, the hard-label baseline), text-embedding
measures a student by the cosine fidelity of its runtime outputs to the teacher's."""

from __future__ import annotations

from ..report.markdown import difference, exporter_lines, format_size, interval, kernel_time_lines, ops_line, reduce_range_note
from . import ReportParts, _report

LABELS = {"teacher": "teacher", "student-baseline": "student, no distillation (baseline)",
          "student-fp32": "student, distilled FP32", "student-int8": "student, distilled + QAT INT8"}


def quality_phrase(task, r: dict, x: dict) -> str:
    if task.classify:
        return _report.quality_phrase(task, r, x)
    ci = interval(x, lambda v: f"{v:.4f}").removeprefix(", ")
    return f"cosine fidelity {x[task.quality]:.4f} to the teacher" + (f" ({ci})" if ci else "")


def distillation_check(task, gain: float) -> str:
    if task.classify:
        return _report.distillation_check(gain)
    return f"distillation below the student's starting weights ({gain:+.2f} points of cosine fidelity)"


def distillation_verdict(task, r: dict) -> list[str]:
    if task.classify:
        return _report.distillation_verdict(task, r)
    m = r["models"]
    gain = task.quality_points(m["student-fp32"][task.quality]) - task.quality_points(m["student-baseline"][task.quality])
    return [f"- Distillation vs the student's starting weights: "
            f"{difference(r, 'student-fp32', 'student-baseline', gain)} of {task.quality_label}."]


def _format(task, v: float) -> str:
    """A quality value as the tables print it: accuracy in %, cosine fidelity as it is."""
    return f"{100 * v:.2f}%" if task.classify else f"{v:.4f}"


def _with_ci(task, x: dict) -> str:
    """A model's quality with its 95% interval in brackets, where report.json has one."""
    q = x.get("quality_interval")
    return _format(task, x[task.quality]) + (f" ({_format(task, q['low'])}–{_format(task, q['high'])})" if q else "")


def report_parts(task, r: dict) -> ReportParts:
    m, tp, emb = r["models"], r["target_profile"], not task.classify
    seqs = [str(s) for s in r["sequence_lengths"]]
    table = [f"Recipe `{r['recipe']}`, runtime **{tp['runtime']}**, {tp['threads']} thread(s), batch 1, each model in a "
             f"fresh process. Quality on {r['test_samples']} held-out texts ({r['data_origin']}), computed from the "
             "runtime's outputs" + (" against the teacher's runtime outputs" if emb else "")
             + ("; in brackets the 95% interval." if r.get("comparisons") else "."), ""]
    quality_columns = "cosine fidelity | top-10 neighbour overlap" if emb else "accuracy | agreement w/ teacher"
    table += [f"| model | params | {quality_columns} | " + " | ".join(f"p50 ms @{s}" for s in seqs)
              + f" | p90 / p99 ms @{seqs[-1]} | speedup @{seqs[-1]} | size | peak RSS |",
              "|---|---:|---:|---:|" + "---:|" * len(seqs) + "---:|---:|---:|---:|"]
    for name, x in m.items():
        q = (f"{_with_ci(task, x)} | {x['neighbour_overlap_at_10']:.3f}" if emb else
             f"{_with_ci(task, x)} | {100 * x['agreement']:.2f}%")
        by = x["latency_by_seq"]
        table.append(f"| {LABELS.get(name, name)} | {x['params']:,} | {q} | "
                     + " | ".join(f"{by[s]['p50']:.2f}" for s in seqs)
                     + f" | {by[seqs[-1]]['p90']:.2f} / {by[seqs[-1]]['p99']:.2f} | {x['speedup_vs_teacher']:.1f}x "
                     f"| {format_size(x['size_bytes'])} | {x['peak_rss_mb']:.0f} MB |")

    s8, s32, base = m["student-int8"], m["student-fp32"], m["student-baseline"]
    key = task.quality
    fmt = lambda v: _format(task, v)  # noqa: E731
    gains = ["", "## What distillation and INT8 bought", "",
             f"- Distillation: {fmt(base[key])} -> {fmt(s32[key])} "
             + ("cosine fidelity (the baseline is the student before training: its copied or fresh layers)."
                if emb else "accuracy (the baseline is the same student trained on the hard labels)."),
             f"- INT8 vs FP32 student: {fmt(s32[key])} -> {fmt(s8[key])} ("
             f"{difference(r, 'student-int8', 'student-fp32', task.quality_points(s8[key] - s32[key]))}); "
             + ", ".join(f"{s} tokens {s32['latency_by_seq'][s]['p50'] / s8['latency_by_seq'][s]['p50']:.2f}x"
                         for s in seqs) + " faster at p50.",
             "- INT8 student vs teacher: " + ", ".join(
                 f"{s} tokens {x_:.1f}x" for s, x_ in s8["speedup_vs_teacher_by_seq"].items())
             + f" faster at p50; {s8['params'] / m['teacher']['params']:.2f} of the parameters, "
             f"{1 / s8['size_ratio_vs_teacher']:.1f}x smaller file.",
             *kernel_time_lines(r)]
    filt = r.get("teacher_filtering")
    if filt:
        gains.append(f"- Teacher-output filtering dropped {filt['dropped']} of {filt['dropped'] + filt['kept']} "
                     f"training texts (teacher wrong: {'dropped' if filt['drop_teacher_wrong'] else 'kept'}; "
                     f"confidence below {filt['min_teacher_confidence']:g}: dropped).")

    i8 = r["int8"]
    act = i8.get("activations") or {"chosen": "static"}
    int8 = [f"- The MatMul/Gemm of every linear layer: weights per-channel symmetric INT8{reduce_range_note(r)}, inputs "
            + {"static": "per-tensor UINT8 with the ranges QAT learned",
               "nncf": "per-tensor 8-bit with ranges NNCF calibrated after SmoothQuant moved their outliers into the "
                       "weights, and NNCF's bias correction",
               }.get(act["chosen"], "per-tensor UINT8 with each call's own range (dynamic: a text's output depends "
                                    "slightly on the texts batched and padded with it; one text per call gives the "
                                    "same output every time)")
            + "; LayerNorm, Softmax, GELU and the attention products stay float.",
            *activation_lines(act), ops_line(r)]
    tables = i8.get("embedding_tables") or []
    described = [f"{t['table']} {t['shape'][0]}x{t['shape'][1]} INT8 with a scale per row (max abs error "
                 f"{t['max_abs_error']:.2g})" for t in tables]
    int8.append("- Embedding tables: " + ("; ".join(described) + ", dequantized per looked-up row" if tables
                                          else "FP32 (export.int8_embeddings = false)"))
    if i8.get("openvino_precisions"):
        int8.append(f"- OpenVINO runtime precision of matmul layers: {i8['openvino_precisions']}.")

    parity = ["", "## Parity of every export against its PyTorch model (held-out texts)", "", *exporter_lines(r)]
    if emb:
        parity += ["| file | mean cosine | min cosine | max abs diff |", "|---|---:|---:|---:|"]
        for f, p in r["parity"].items():
            parity.append(f"| {f} | {p['mean_cosine']:.6f} | {p['min_cosine']:.6f} | {p['max_abs_diff']:.3g} |")
    else:
        parity += _report.parity_table(r)
    training = ["", "## Training", "", "| stage | validation score | chosen epoch (best on validation) |", "|---|---:|---:|"]
    for n, t_ in r["training"].items():
        v = t_.get("val_score")
        if v is not None:
            training.append(f"| {n} | {_report.val_cell(task, r, v) if task.classify else f'{v:.4f}'} "
                            f"| {t_.get('chosen_epoch', '-')} |")
    return ReportParts(title=f"# edgekd build: {r['target']} ({r['task']})", table=table, gains=gains, int8=int8,
                       parity=parity, training=training, target_sections=False)


def activation_lines(act: dict) -> list[str]:
    """The measured choice of activation scheme (edgekd.payoff.choose_activations)."""
    c = act.get("candidates")
    if not c:
        return [f"- Activations: {act['chosen']} ({act.get('why', '')})."]
    cells = "; ".join(f"{k}: validation {v['quality']:.4f}, p50 " + ", ".join(
        f"{m:.2f} ms at {n} tokens" for n, m in v["p50_ms"].items()) for k, v in c.items())
    failed = "".join(f" {k} did not run: {w}." for k, w in (act.get("failed") or {}).items())
    return [f"- Activations chosen by measurement: {act['chosen']}, {act['why']} ({cells}; {act['method']}).{failed}"]
