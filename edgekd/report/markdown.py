"""report.md from report.json alone: the generic sections (the verdict, the INT8 graph, the accuracy and
memory budgets, the target's sections, stage times, the environment) around the parts the build's task
writes (edgekd.tasks: Task.report_parts and the quality hooks)."""

from __future__ import annotations

from .html import drop_empty_columns

# the models' names where builds of several tasks share one table; a task names them in its own report
# (Task.model_labels)
LABELS = {"teacher": "teacher", "student-baseline": "student, hard labels (baseline)",
          "student-fp32": "student, distilled FP32", "student-int8": "student, distilled + QAT INT8"}

# the names in verdict lines and on figures
SHORT = {"teacher": "teacher", "student-baseline": "baseline", "student-fp32": "student FP32",
         "student-int8": "student INT8"}

# Without quantize.max_accuracy_drop the verdict still flags an INT8 loss a reader would notice: one point
# of the task's metric against the FP32 student on the test split.
INT8_DROP_FLAG_PTS = 1.0


def task_of(r: dict):
    """The edgekd.tasks.Task that wrote report.json `r` (its "task" field)."""
    from ..tasks import get

    return get(r["task"])


def quality(r: dict, x: dict) -> tuple[float, str]:
    """The model's headline quality as (value in points, name), as the build's task names it."""
    task = task_of(r)
    return task.quality_points(x[task.quality]), task.quality_label


def latency_note(r: dict, form: str) -> str:
    """`form` filled with the input the headline latency was timed on ("48 tokens"), or "" for a task
    that times one fixed input."""
    at = task_of(r).latency_input(r)
    return form.format(at) if at else ""


def format_size(b: float) -> str:
    return f"{b / 1e9:.2f} GB" if b >= 1e9 else f"{b / 1e6:.2f} MB" if b >= 1e5 else f"{b / 1e3:.1f} kB"


# statistics (edgekd.report.stats, computed at assembly; a report.json from before them renders without) --

def interval(x: dict, fmt) -> str:
    """", 95% CI 97.59-98.96%": a model's quality interval in `fmt`, the task's format of a quality value;
    "" when report.json has none."""
    q = x.get("quality_interval")
    return f", 95% CI {fmt(q['low'])}–{fmt(q['high'])}" if q else ""


def comparison(r: dict, a: str, b: str) -> dict | None:
    """The paired test of a - b on the same test items, or None."""
    return (r.get("comparisons") or {}).get(f"{a} vs {b}")


def difference(r: dict, a: str, b: str, diff_pts: float) -> str:
    """"+0.56 points (95% CI -0.30 to +1.40; exact McNemar test p = 0.25: within noise)"."""
    c = comparison(r, a, b)
    text = f"{diff_pts:+.2f} points"
    if not c:
        return text
    judged = "within noise" if c["within_noise"] else "a real difference"
    return (f"{text} (95% CI {c['low_pts']:+.2f} to {c['high_pts']:+.2f}; {c['method']} on the same "
            f"{c['n']:,} test items, p = {c['p']:.2g}: {judged})")


def within_noise(r: dict, a: str, b: str) -> bool:
    c = comparison(r, a, b)
    return bool(c and c["within_noise"])


def too_small_lines(r: dict) -> list[str]:
    """One warning when the test split cannot separate the models a verdict compares, with the size that
    would (for the difference seen here)."""
    words = {"student-fp32 vs student-baseline": "distilled from baseline", "student-int8 vs student-fp32":
             "INT8 from FP32", "student-fp32 vs teacher": "student from teacher"}
    short = [(w, c) for k, w in words.items() if (c := (r.get("comparisons") or {}).get(k))
             and c["within_noise"] and c["n_needed"] and c["n_needed"] > c["n"]]
    if not short:
        return []
    n = short[0][1]["n"]
    need = "; ".join(f"{w}: a difference of {abs(c['diff_pts']):.2f} points needs about {c['n_needed']:,} test items"
                     for w, c in short)
    return [f"- **Warning: the test split ({n:,} items) is too small to separate** what this build compares ({need}, "
            "for a two-sided test at the 5% level with 80% power). Give more test data (data.n_test, "
            "data.test_fraction) before reading these differences as results."]


def reduce_range_note(r: dict) -> str:
    """What the INT8 weights' width says about this CPU (empty on a CPU with VNNI)."""
    return " (7-bit, reduce_range: x86 CPU without VNNI)" if r["int8"]["reduce_range"] else ""


def ops_line(r: dict) -> str:
    """The INT8 graph's bullet of the op types onnxruntime runs."""
    ops = r["int8"].get("onnxruntime_ops") or {}
    return f"- Ops onnxruntime runs after optimization: {', '.join(f'{k} x{v}' for k, v in sorted(ops.items()))}."


def kernel_time_lines(r: dict) -> list[str]:
    """Each student's kernel time by op type (its runtime's profiler), where the benchmark profiled it, and,
    where the profiler says so (OpenVINO), the precision the time ran in and any reference-kernel fallbacks."""
    at = latency_note(r, " at {}")
    lines = []
    for name in ("student-fp32", "student-int8"):
        m = r["models"][name]
        prof, detail = m.get("op_profile"), m.get("op_profile_detail") or {}
        if not prof:
            continue
        by = detail.get("profiler", "onnxruntime profiler")
        top = ", ".join(f"{op} {100 * share:.0f}%" for op, share in list(prof.items())[:8])
        lines.append(f"- Kernel time by op type{at}, {name} ({by}): {top}")
        if "by_precision" in detail:
            lines.append(f"- Kernel time by execution precision, {name}: {precision_split(detail)}.")
    return lines


def precision_split(detail: dict) -> str:
    """'INT8 96% (Convolution 62%, ...); FP32 4% (...); reference (ref_*) kernels: none'."""
    def pct(v: float) -> str:
        return f"{100 * v:.1f}%" if v < 0.01 or 0.99 < v < 1 else f"{100 * v:.0f}%"

    parts = []
    for prec, ops in detail["by_precision"].items():
        shown = [f"{op} {pct(v)}" for op, v in list(ops.items())[:4]]
        more = f", {len(ops) - 4} more" if len(ops) > 4 else ""
        parts.append(f"{prec} {pct(sum(ops.values()))} ({', '.join(shown)}{more})")
    ref = detail.get("reference_kernels") or {}
    return "; ".join(parts) + f"; reference (ref_*) kernels: {', '.join(f'{op} {pct(v)}' for op, v in ref.items()) or 'none'}"


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


def payoff_lines(r: dict) -> list[str]:
    """Why the INT8 model is (not) faster: edgekd.payoff's timings of the layer kinds left float."""
    p = (r.get("int8") or {}).get("payoff")
    if not p:
        return []
    ms = p["p50_ms"]
    head = (f"- Which layers run INT8 was timed on the target's runtime ({p['method']}): FP32 {ms['fp32']:.3f} ms, "
            f"all INT8 {ms['all_int8']:.3f} ms" + (f", with {', '.join(p['float_kinds'])} layers float "
                                                   f"{ms['chosen']:.3f} ms (shipped)" if p["float_kinds"] else " (shipped)") + ".")
    tried = [f"{k} {v['ms']:.3f} ms (vs {v['vs']} {v['vs_ms']:.3f} ms)" for k, v in (p.get("tried") or {}).items()]
    lines = [head[:-1] + (f"; tried {'; '.join(tried)}." if tried else ".")]
    if p.get("ship_fp32"):
        lines.append(f"- ⚠ INT8 does not pay for this model on this CPU: the fastest INT8 model was "
                     f"{1 / p['int8_vs_fp32']:.2f}x the FP32 student's latency, whichever kinds of layer stay float "
                     "(small convolutions, where float kernels are as fast, and the quantize/dequantize work around "
                     "them), so the target ships the FP32 student (its file is the INT8 target's deliverable). "
                     "`quantize.int8_layers = \"all\"` ships INT8 anyway, for the smaller file.")
    elif p["int8_vs_fp32"] < 1:
        lines.append(f"- ⚠ INT8 does not pay for this model on this CPU: the shipped INT8 model is "
                     f"{1 / p['int8_vs_fp32']:.2f}x the FP32 student's latency, whichever kinds of layer stay float "
                     "(small convolutions, where float kernels are as fast, and the quantize/dequantize work around "
                     "them). It is still the smaller file; for the fastest model, build the FP32 target.")
    return lines


def render_markdown(r: dict) -> str:
    """report.md: the verdict, the task's table and sections, the INT8 graph and the budgets, the target's
    sections, parity, training, stage times and the environment."""
    own = task_of(r).render_markdown(r)
    if own is not None:
        return own
    parts = task_of(r).report_parts(r)
    lines = [parts.title, "", *verdict_lines(r), *parts.table, *parts.gains, "", "## INT8 graph", "", *parts.int8,
             *payoff_lines(r), *accuracy_budget_lines(r)]
    if parts.target_sections:
        lines += _thread_lines(r)
    lines += _memory_lines(r)
    if parts.target_sections:
        lines += _backend_lines(r) + _arm_lines(r)
    from ..student_budget import lines as budget_lines

    return drop_empty_columns("\n".join(lines + parts.parity + parts.training + _retry_lines(r)
                                        + budget_lines(r.get("student_choice")) + _stages_and_environment(r)))


def _retry_lines(r: dict) -> list[str]:
    """Training runs the loop repeated at a lower learning rate, or extended while still improving
    (edgekd.train.fit), and why."""
    out = []
    for stage, t in (r.get("training") or {}).items():
        first = t.get("first_run")
        if first:
            out.append(f"- {stage}: {first['why']} at lr {first['lr']:g}, so it was trained again from the start at "
                       f"lr {t.get('lr', 0):g}" + (" (its best epoch again came early: set a learning rate and epochs "
                                                   "for this model in the recipe)" if t.get("peaked_early") else "") + ".")
        for k, more in enumerate(t.get("extended") or []):
            out.append(f"- {stage}: still improving at its last epoch, so it trained {more['epochs']} more epochs at lr "
                       f"{more['lr']:g} from its best weights (round {k + 1}, teacher.extend): "
                       + ("diverged; the best weights before it were kept" if more.get("diverged") else
                          f"validation {more['best']:.4f}, " + ("better" if more["improved"] else "no better: a plateau")) + ".")
    return ["", *out] if out else []


# the verdict ---------------------------------------------------------------------------------------------

def deliverable_name(r: dict) -> str:
    """Which model the build's target ships (artifacts.deliverable, from report.json alone)."""
    return "student-int8" if r["target_profile"]["precision"] == "int8" else "student-fp32"


def headline(r: dict, name: str, *, target: str = "") -> str:
    """One line: a model against the teacher (p50 speed, quality, file size, peak RSS); led by ⚠ and
    ending in what to check when something went wrong."""
    x = r["models"][name]
    speed, size = speed_words(x["speedup_vs_teacher"]), size_words(x["size_ratio_vs_teacher"])
    who = f"{target}: " if target else ""
    ships = ", the deliverable" if name == deliverable_name(r) and not target else ""
    line = (f"**{who}{SHORT.get(name, name)}** ({x['runtime']}{ships}): {speed} than the teacher at p50"
            f"{latency_note(r, ' ({})')}, {task_of(r).quality_phrase(r, x)}, {size}, {x['peak_rss_mb']:.0f} MB peak RSS")
    checks = _checks(r, name)
    return f"⚠ {line}. **Check:** {'; '.join(checks)}." if checks else f"{line}."


def speed_words(speedup: float) -> str:
    """"3.0x faster" or "3.0x slower": never "0.3x faster"."""
    return f"{speedup:.1f}x faster" if speedup >= 1 else f"{1 / speedup:.1f}x slower"


def size_words(ratio: float) -> str:
    """A file `ratio` times the teacher's: "82x smaller file", "1.6x larger file"."""
    k = 1 / ratio
    return f"{k:.0f}x smaller file" if k >= 10 else f"{k:.1f}x smaller file" if k >= 1 else f"{1 / k:.1f}x larger file"


def _checks(r: dict, name: str) -> list[str]:
    """What went wrong for one student: not smaller or not faster than its teacher, distillation below its
    baseline (beyond noise), INT8 losing more than the budget, float fallback layers, the memory budget
    missed, an export never checked against PyTorch."""
    m, x = r["models"], r["models"][name]
    t = m["teacher"]
    out = []
    if x.get("params") and t.get("params") and x["params"] >= t["params"]:
        out.append(f"the student has {x['params'] / t['params']:.1f}x the teacher's parameters ({x['params']:,} vs "
                   f"{t['params']:,}): choose a smaller student (student.model)")
    if x["speedup_vs_teacher"] < 1:
        out.append("the student is slower than its teacher on this runtime")
    if x["size_ratio_vs_teacher"] > 1:
        out.append("the student's file is larger than its teacher's")
    gain = quality(r, m["student-fp32"])[0] - quality(r, m["student-baseline"])[0]
    if gain < 0 and not within_noise(r, "student-fp32", "student-baseline"):
        out.append(task_of(r).distillation_check(gain))
    stage = {"student-fp32": "distill", "student-baseline": "baseline"}.get(name)
    if stage and ((r.get("training") or {}).get(stage) or {}).get("peaked_early"):
        out.append(f"its training ({stage}) peaked in its first epochs even after a retry at a lower learning rate: "
                   "set distill.lr and distill.epochs for this model")
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
        slower = x["latency_ms"]["p50"] / m["student-fp32"]["latency_ms"]["p50"]
        if slower > 1.05:  # beyond a fresh-process p50's run-to-run spread
            i8 = r.get("int8") or {}
            why = ("kept because the recipe asks for INT8 everywhere (quantize.int8_layers = \"all\"; \"auto\" ships "
                   "the FP32 student where INT8 does not pay)" if i8.get("layers") == "all" else
                   "this runtime's own quantizer placed INT8, where edgekd does not time layers"
                   if i8.get("placed_by_runtime") else "see 'INT8 graph': where integer kernels do not pay")
            out.append(f"INT8 is {slower:.2f}x the FP32 student's latency on this runtime ({why}); for speed, build "
                       "the FP32 target")
    mem = r.get("memory_budget")
    if mem and not mem["fits"] and name == deliverable_name(r):
        out.append(f"{mem.get('measured', 'peak RSS')} {mem.get('measured_mb', mem['peak_rss_mb']):.0f} MB is over "
                   f"the target's {mem['budget_mb']:g} MB budget")
    if x.get("file") and "parity" in r and x["file"] not in r["parity"]:
        out.append(f"{x['file']} was not checked against its PyTorch model")
    return out


def verdict_lines(r: dict) -> list[str]:
    """The first lines a reader needs: each student against the teacher (the deliverable first), flagged
    where something went wrong; then the task's word on distillation and the teacher (did distillation
    beat its baseline, does the teacher beat the student), then the INT8 accuracy budget."""
    first = deliverable_name(r)
    lines = []
    for name in (first, *(n for n in ("student-int8", "student-fp32") if n != first)):
        lines += [headline(r, name), ""]
    lines += task_of(r).distillation_verdict(r)
    lines += _shipped_fp32(r) + _int8_vs_fp32(r) + _teacher_line(r) + too_small_lines(r)
    ab = (r.get("int8") or {}).get("accuracy_budget")
    if ab:
        lines.append(f"- {budget_verdict(ab)}")
    return lines + [""]


def _shipped_fp32(r: dict) -> list[str]:
    """The INT8 target shipping the FP32 student (edgekd.payoff: no INT8 model was faster), said first."""
    s = (r.get("int8") or {}).get("shipped_fp32")
    if not s:
        return []
    return [f"- **This INT8 target ships the FP32 student**: INT8 did not pay on this runtime (fastest INT8 "
            f"{s['int8_ms']:.3f} ms vs FP32 {s['fp32_ms']:.3f} ms at {s['at']}), so student-int8 is the FP32 student's "
            "graph; `quantize.int8_layers = \"all\"` ships INT8 anyway, for the smaller file."]


def _int8_vs_fp32(r: dict) -> list[str]:
    """INT8 against the FP32 student it starts from, attributed plainly: quantization-aware training is
    quantize.epochs more epochs of distillation, so an INT8 student ahead of FP32 learned it there."""
    m = r["models"]
    if "student-int8 vs student-fp32" not in (r.get("comparisons") or {}):
        return []
    d = quality(r, m["student-int8"])[0] - quality(r, m["student-fp32"])[0]
    line = f"- INT8 vs the FP32 student: {difference(r, 'student-int8', 'student-fp32', d)}."
    qat = (r.get("training") or {}).get("qat") or {}
    if d > 0 and qat.get("epochs"):
        line += (f" **INT8 is not more accurate because of quantization**: quantization-aware distillation trained it "
                 f"{qat['epochs']} epoch(s) more (quantize.epochs), starting from the FP32 student; the gain is that "
                 "extra training, which an FP32 student given the same epochs would also get.")
    return [line]


def _teacher_line(r: dict) -> list[str]:
    """A teacher edgekd trained or fine-tuned on this data (a new head, untrained weights) is said here."""
    t = (r.get("training") or {}).get("teacher") or {}
    if not t.get("trained_here"):
        return []
    note = f" ({t['note']})" if t.get("note") else ""
    return [f"- The teacher was trained here on this data before distillation{note}: teacher.fine_tune trains a "
            "teacher that is not ready for this data (random weights, a new head); `never` uses it as given."]


# budgets -------------------------------------------------------------------------------------------------

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
    pts = lambda v: f"{100 * v:.2f}"  # noqa: E731 - a validation score in [0, 1] in the budget's points (edgekd.budget)
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


def _memory_lines(r: dict) -> list[str]:
    budget = r.get("memory_budget")
    if not budget:
        return []
    return ["", f"Memory budget: {budget['model']}: {budget.get('measured', 'peak RSS')} "
                f"{budget.get('measured_mb', budget['peak_rss_mb']):.1f} MB in a fresh process (peak RSS "
                f"{budget['peak_rss_mb']:.1f} MB); the target allows {budget['budget_mb']:g} MB: "
                f"{'fits' if budget['fits'] else 'does NOT fit'}."]


# the target's sections -----------------------------------------------------------------------------------

def _thread_lines(r: dict) -> list[str]:
    """Host latency at every thread count the target sweeps (none when it times one)."""
    m, labels = r["models"], task_of(r).model_labels()
    by_threads = {n: x.get("latency_by_threads") or {} for n, x in m.items()}
    counts = sorted({t for v in by_threads.values() for t in v}, key=int)
    if len(counts) <= 1:
        return []
    pinned = " (each process pinned to its first N cores)" if r["target_profile"].get("pin_cores") else ""
    lines = ["", "## Latency by thread count", "",
             f"Host timings on {r['environment'].get('cpu', 'this CPU')}{pinned}: p50 / p99 ms at batch 1.", "",
             "| model | " + " | ".join(f"{t} thread(s)" for t in counts) + " |",
             "|---|" + "---:|" * len(counts)]
    for n, v in by_threads.items():
        lines.append(f"| {labels.get(n, n)} | " + " | ".join(
            f"{v[t]['p50']:.3f} / {v[t]['p99']:.3f}" if t in v else "-" for t in counts) + " |")
    return lines


def _backend_lines(r: dict) -> list[str]:
    """The deliverable's format says what is worth knowing about it (edgekd.backends: delegate coverage,
    mobile usability, integer kernels), then named-device latency estimates for mobile targets."""
    from .. import backends

    fmt = backends.for_file(r["models"][deliverable_name(r)]["file"]).format
    b = backends.get(fmt)
    lines = b.report_section(r) if b.report_section else []
    est = (r.get("mobile") or {}).get("device_estimates")
    if est:
        e0 = est["estimates"][0]
        lines += ["", "## Named-device latency: estimates, not measurements", "",
                  f"{est['macs']:,} multiply-accumulates per {est.get('per', 'input')} (counted on the FP32 graph). Method: "
                  f"{e0['method']}", "",
                  "| core | precision | peak GMAC/s | at peak (lower bound), ms | at the assumed utilisation, ms |",
                  "|---|---|---:|---:|---:|"]
        for e in est["estimates"]:
            lines.append(f"| {e['device']} | {e['precision']} | {e['peak_gmacs']:.1f} | {e['estimate_ms_at_peak']:.4f} "
                         f"| {e['estimate_ms_assumed']:.4f} ({100 * e['utilisation_assumed']:.0f}%) |")
    return lines


def _arm_lines(r: dict) -> list[str]:
    """The INT8 deliverable on aarch64 kernels under emulation (edgekd.verify_arm)."""
    arm, lines = r.get("arm_verification"), []
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
    return lines


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


# several targets -----------------------------------------------------------------------------------------

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
            ci = x.get("quality_interval")
            pts = task_of(r).quality_points
            ci = f" ({pts(ci['low']):.2f}–{pts(ci['high']):.2f})" if ci else ""
            lines.append(f"| {t} | {x['runtime']} | {LABELS.get(name, name)} | {qname} {q:.2f}%{ci} "
                         f"| {x['latency_ms']['p50']:.3f} | {x['latency_ms']['p99']:.3f} | {x['speedup_vs_teacher']:.1f}x "
                         f"| {format_size(x['size_bytes'])} | {x['peak_rss_mb']:.0f} MB |")
    return drop_empty_columns("\n".join(lines)) + "\n"
