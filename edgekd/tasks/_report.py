"""Report parts the classification tasks share (image-classification, text-classification): quality is
top-1 accuracy on the test split, the baseline is the same student trained on the hard labels, and an
export's parity is its top-1 agreement with its PyTorch model."""

from __future__ import annotations


def quality_phrase(task, r: dict, x: dict) -> str:
    """"-0.60 points test accuracy (98.40%)": against the teacher, in points."""
    q = task.quality_points(x[task.quality])
    return f"{q - task.quality_points(r['models']['teacher'][task.quality]):+.2f} points {task.quality_label} ({q:.2f}%)"


def distillation_check(gain: float) -> str:
    return f"distillation below the hard-label baseline ({gain:+.2f} points)"


def distillation_verdict(task, r: dict) -> list[str]:
    """Did distillation beat the hard-label baseline, does the teacher beat the distilled student, and a
    teacher worse than the baseline on validation called out."""
    m = r["models"]
    q = lambda name: task.quality_points(m[name][task.quality])  # noqa: E731
    label = task.quality_label
    gain = q("student-fp32") - q("student-baseline")
    word = "beat" if gain > 0 else "did NOT beat"
    lines = [f"- **Distillation {word} the hard-label baseline**: {q('student-fp32'):.2f}% vs "
             f"{q('student-baseline'):.2f}% {label} ({gain:+.2f} points, same student, data and epochs)."]
    gap = q("teacher") - q("student-fp32")
    lines.append(f"- The teacher {'beats' if gap > 0 else 'does NOT beat'} the distilled student: "
                 f"{q('teacher'):.2f}% vs {q('student-fp32'):.2f}% ({gap:+.2f} points).")
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
