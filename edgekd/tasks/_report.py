"""Report parts the classification tasks share (image-classification, text-classification): quality is
top-1 accuracy on the test split, the baseline is the same student trained on the hard labels, and an
export's parity is its top-1 agreement with its PyTorch model."""

from __future__ import annotations


def pct(task, v: float) -> str:
    return f"{task.quality_points(v):.2f}%"


def pct_ci(task, x: dict) -> str:
    """"98.40% (97.59–98.96)": an accuracy with its 95% interval, where report.json has one."""
    q = x.get("quality_interval")
    ci = f" ({task.quality_points(q['low']):.2f}–{task.quality_points(q['high']):.2f})" if q else ""
    return pct(task, x[task.quality]) + ci


def val_cell(task, r: dict, v: float) -> str:
    """A validation accuracy with its Wilson interval on report.json's validation_samples, where known."""
    from ..report.stats import wilson

    n = r.get("validation_samples")
    if not n:
        return pct(task, v)
    lo, hi = wilson(round(v * n), n)
    return f"{pct(task, v)} ({task.quality_points(lo):.2f}–{task.quality_points(hi):.2f})"


def quality_phrase(task, r: dict, x: dict) -> str:
    """"-0.60 points test accuracy (98.40%, 95% CI 97.59–98.96%)": against the teacher, in points."""
    from ..report.markdown import interval

    q = task.quality_points(x[task.quality])
    return (f"{q - task.quality_points(r['models']['teacher'][task.quality]):+.2f} points {task.quality_label} "
            f"({q:.2f}%{interval(x, lambda v: pct(task, v))})")


def distillation_check(gain: float) -> str:
    return f"distillation below the hard-label baseline ({gain:+.2f} points)"


def distillation_verdict(task, r: dict) -> list[str]:
    """Did distillation beat the hard-label baseline, does the teacher beat the distilled student, and a
    teacher worse than the baseline on validation called out."""
    from ..report.markdown import difference, within_noise

    m = r["models"]
    q = lambda name: task.quality_points(m[name][task.quality])  # noqa: E731
    label = task.quality_label
    gain = q("student-fp32") - q("student-baseline")
    word = ("did not measurably change" if within_noise(r, "student-fp32", "student-baseline")
            else "beat" if gain > 0 else "did NOT beat")
    lines = [f"- **Distillation {word} the hard-label baseline**: {q('student-fp32'):.2f}% vs "
             f"{q('student-baseline'):.2f}% {label}, {difference(r, 'student-fp32', 'student-baseline', gain)}; "
             "same student, data and epochs."]
    gap = q("teacher") - q("student-fp32")
    word = ("is within noise of" if within_noise(r, "student-fp32", "teacher")
            else "beats" if gap > 0 else "does NOT beat")
    lines.append(f"- The teacher {word} the distilled student: {q('teacher'):.2f}% vs {q('student-fp32'):.2f}%, "
                 f"student {difference(r, 'student-fp32', 'teacher', -gap)}.")
    tc = r.get("teacher_check") or {}
    if tc.get("below_baseline"):
        lines.append(f"- **Warning: the teacher is worse than the student trained on hard labels alone** "
                     f"(validation {task.quality_points(tc['val_score']):.2f}% vs "
                     f"{task.quality_points(tc['baseline_val_score']):.2f}%): it has little to teach; fine-tune it on "
                     "this data (teacher.fine_tune = always) or choose a stronger one.")
    return lines


def parity_table(r: dict) -> list[str]:
    """Each export's top-1 agreement with its PyTorch model and the largest logit difference."""
    lines = ["| file | top-1 agreement | max abs logit diff |", "|---|---:|---:|"]
    for f, p in r["parity"].items():
        lines.append(f"| {f} | {100 * p['agreement']:.2f}% | {p['max_abs_diff']:.3g} |")
    return lines
