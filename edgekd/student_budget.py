"""The student that fits a latency budget (`student.max_latency_ms`, and/or `student.min_speedup` over the
teacher, timed in the same run: it holds on any machine, where an absolute budget does not): candidate
students are built untrained, exported, quantized as the target ships them (INT8 targets: onnxruntime's post-training
INT8, a proxy for the quantization-aware graph, whose kernels are the same), and timed at batch 1 on
the target's runtime, interleaved in one process so that machine drift hits them alike. Timing needs no
training, so every candidate costs seconds; the most capable one under the budget (the most parameters)
is distilled, and the report shows every candidate's latency and size beside the budget.

Candidates: `student.candidates`, each `KEY=VALUE` of one student setting (`layers=4`,
`model=mnist-student-tiny`, `config={"depth_multiplier": 0.35}`); for a student cut from the teacher's
layers (layer-subset) with none given, every layer count from 1 to one less than the teacher's. Formats
made from the PyTorch model (.pte, .tflite) are timed as ONNX on onnxruntime, and the report says so.
The choice is a cached stage, so a rebuild does not re-time and flip between near-equal candidates."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

from .errors import InputError, RecipeError

TEACHER = "(teacher)"  # the teacher's row among the timed graphs (a candidate is KEY=VALUE, never this)


def wanted(recipe) -> bool:
    return recipe.student.max_latency_ms > 0 or recipe.student.min_speedup > 0


def describe(max_latency_ms: float, min_speedup: float) -> str:
    """'student.max_latency_ms = 2' / 'student.min_speedup = 3' / both joined by 'and'."""
    return " and ".join(f"student.{k} = {v:g}" for k, v in (("max_latency_ms", max_latency_ms),
                                                            ("min_speedup", min_speedup)) if v)


def candidates(recipe, teacher_layers: int | None) -> list[tuple[str, dict]]:
    """[(label, {student field: value})] from student.candidates, or the layer counts of a layer-subset."""
    s = recipe.student
    if s.candidates:
        from .recipe import ModelSpec, _build

        out = []
        for text in s.candidates:
            key, _, value = text.partition("=")
            key = key.strip().removeprefix("student.")
            if not key or not value or key in ("candidates", "max_latency_ms"):
                raise RecipeError(f"student.candidates item {text!r} must be KEY=VALUE of one student setting, e.g. "
                                  "'layers=4' or 'config={\"depth_multiplier\": 0.35}'")
            spec = _build(ModelSpec, {key: value}, "student.", from_text=True, base=s)  # typed and checked
            out.append((text.strip(), {key: getattr(spec, key)}))
        return out
    if s.model == "layer-subset" and teacher_layers:
        return [(f"layers={n}", {"layers": n, "keep_layers": ""}) for n in range(1, teacher_layers)]
    raise RecipeError("student.max_latency_ms needs student.candidates for this student (e.g. candidates = "
                      "['config={\"depth_multiplier\": 0.35}', 'config={\"depth_multiplier\": 0.5}']); only a "
                      "layer-subset student gets its layer counts by default")


def choose(task, ctx, teacher, folder: Path) -> dict:
    """Times every candidate; -> {"chosen", "fields", "budget_ms", "runtime", "candidates": [...]} (also
    written to folder/choice.json). No candidate under the budget is one line (InputError)."""
    import numpy as np

    from .models import count_params
    from .payoff import _p50, _runner_for

    r, target = ctx.recipe, ctx.target
    asked = describe(r.student.max_latency_ms, r.student.min_speedup)
    own = target.backend.source == "onnx"
    runtime = target.runtime if own else "onnxruntime"
    int8 = target.precision == "int8"
    runner = _runner_for(runtime, target.threads)
    rows, runs, feed = [], {}, None
    layers = getattr(getattr(teacher, "config", None), "num_hidden_layers", None)
    for label, fields in candidates(r, layers):
        spec = replace(r.student, **fields)
        model = task.new_student(ctx, teacher, spec=spec)
        sub = folder / f"c{len(rows)}"
        sub.mkdir(parents=True)
        path, feed = task.timing_graph(ctx, model.eval(), sub, int8=int8)
        runs[label] = runner(path)
        rows.append({"candidate": label, "fields": fields, "params": count_params(model)})
    if r.student.min_speedup:  # the teacher as the report times it (FP32), in the same interleaved rounds
        (folder / "teacher").mkdir(parents=True)
        runs[TEACHER] = runner(task.timing_graph(ctx, teacher.eval(), folder / "teacher", int8=False)[0])
    ctx.log(f"[student] timing {len(rows)} candidate students untrained, {'INT8' if int8 else 'FP32'} on {runtime}, "
            f"against {asked}")
    p50 = _p50(runs, None, feed=feed, rounds=5, seconds=0.1) if isinstance(feed, dict) else \
        _p50(runs, np.asarray(feed), rounds=5, seconds=0.1)
    teacher_ms = p50.pop(TEACHER, None)
    budgets = [r.student.max_latency_ms] if r.student.max_latency_ms else []
    if teacher_ms:
        budgets.append(teacher_ms / r.student.min_speedup)
    budget = min(budgets)  # both set: the tighter one
    for row in rows:
        row["p50_ms"] = p50[row["candidate"]]
        row["fits"] = row["p50_ms"] <= budget
    fitting = [x for x in rows if x["fits"]]
    if not fitting:
        fastest = min(rows, key=lambda x: x["p50_ms"])
        raise InputError(f"no candidate student runs within {asked} ({budget:.3g} ms) on {runtime} (the "
                         f"fastest, {fastest['candidate']}, took {fastest['p50_ms']:.3f} ms): loosen the budget or add "
                         "smaller candidates (student.candidates)")
    best = max(fitting, key=lambda x: (x["params"], -x["p50_ms"]))
    out = {"chosen": best["candidate"], "fields": best["fields"], "budget_ms": budget, "runtime": runtime,
           "max_latency_ms": r.student.max_latency_ms, "min_speedup": r.student.min_speedup, "teacher_p50_ms": teacher_ms,
           "precision": "int8" if int8 else "fp32", "threads": target.threads, "candidates": rows,
           "note": "" if own else f"{target.format} is made from the PyTorch model: timed as ONNX on onnxruntime"}
    for row in rows:
        ctx.log(f"[student]   {row['candidate']}: {row['params']:,} parameters, {row['p50_ms']:.3f} ms"
                + (" (chosen)" if row is best else "" if row["fits"] else " (over the budget)"))
    (folder / "choice.json").write_text(json.dumps(out, indent=1))
    for sub in [*folder.glob("c*"), folder / "teacher"]:  # the timing graphs are not needed once timed
        shutil.rmtree(sub, ignore_errors=True)
    return out


def apply(recipe, choice: dict):
    """The recipe with the chosen candidate's settings in its student spec."""
    return replace(recipe, student=replace(recipe.student, **choice["fields"]))


def lines(choice: dict | None) -> list[str]:
    """The report's section: each candidate's latency and size against the budget, the chosen one marked."""
    if not choice:
        return []
    out = ["", "## The student that fits the budget", "",
           # a choice made before min_speedup existed has budget_ms alone: it was max_latency_ms
           f"{describe(choice.get('max_latency_ms', choice['budget_ms']), choice.get('min_speedup', 0))}"
           + (f" (the teacher: {choice['teacher_p50_ms']:.3f} ms FP32, so {choice['budget_ms']:.3f} ms)"
              if choice.get("teacher_p50_ms") else "") + ": each candidate timed untrained at batch 1, "
           f"{choice['precision'].upper()}, {choice['threads']} thread(s) on {choice['runtime']}; the one with the most "
           "parameters under the budget was distilled." + (f" {choice['note']}." if choice.get("note") else ""), "",
           "| candidate | parameters | p50 ms (untrained) | fits |", "|---|---:|---:|---|"]
    for c in choice["candidates"]:
        mark = "**chosen**" if c["candidate"] == choice["chosen"] else ("yes" if c["fits"] else "no")
        out.append(f"| {c['candidate']} | {c['params']:,} | {c['p50_ms']:.3f} | {mark} |")
    return out
