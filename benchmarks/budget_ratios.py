"""PTQ vs accuracy-budgeted PTQ vs quantization-aware distillation, side by side in one run.

    python benchmarks/budget_ratios.py [--recipe PATH] [--budget 0.5] [--out build-budget] [extra key=value ...]

Three `edgekd build target=cpu-int8` runs of one recipe into one output folder, so that they share the
teacher, soft-label, baseline and distillation stages (only quantization, export and benchmark run
three times; each build folder is kept as <out>/<method>):

1. quantize.method=ptq                                 calibration only, every layer INT8;
2. quantize.method=ptq quantize.max_accuracy_drop=B    the same, with the accuracy budget (edgekd.budget);
3. quantize.method=qat                                 quantization-aware distillation.

Each build benchmarks its models on onnxruntime in fresh processes (edgekd's harness). One table:
test accuracy of the FP32 student and of each INT8 model, the validation drop the budget was judged
on, the layers left float, p50 at batch 1, file size. The machine's load average is recorded: on this
shared 2-core host p50 moves by up to ~30% between runs, so latency gaps smaller than that are noise.
Results go to benchmarks/results/budget.json.

The default recipe is examples/budget/edgekd.toml (see its comments for why that student)."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from _goals import print_goals, write_results

ROOT = Path(__file__).resolve().parent.parent
RECIPE = ROOT / "examples" / "budget" / "edgekd.toml"
VARIANTS = {"ptq": ["quantize.method=ptq", "quantize.max_accuracy_drop=0"], "ptq-budget": ["quantize.method=ptq"],
            "qat": ["quantize.method=qat", "quantize.max_accuracy_drop=0"]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--recipe", default=str(RECIPE))
    ap.add_argument("--budget", type=float, default=0.5, help="quantize.max_accuracy_drop, points (default %(default)s)")
    ap.add_argument("--out", default="build-budget")
    ap.add_argument("--keep", action="store_true", help="reuse cached stages instead of building from scratch")
    args, extra = ap.parse_known_args()
    load = {"start": os.getloadavg()}
    reports, seconds = {}, {}
    t_all = time.perf_counter()
    for k, (name, keys) in enumerate(VARIANTS.items()):
        budget = [f"quantize.max_accuracy_drop={args.budget}"] if name == "ptq-budget" else []
        # --force on the first build only: the later ones reuse its teacher and distillation stages
        force = ["--force"] if k == 0 and not args.keep else []
        cmd = [sys.executable, "-m", "edgekd", "build", f"recipe={Path(args.recipe).resolve()}", "target=cpu-int8",
               "--out", args.out, *force, *keys, *budget, *extra]
        t = time.perf_counter()
        print(f"[{name}] {' '.join(cmd[3:])}", flush=True)
        subprocess.run(cmd, check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
        seconds[name] = time.perf_counter() - t
        # the next build replaces <out>/cpu-int8: keep each one's folder
        shutil.rmtree(ROOT / args.out / name, ignore_errors=True)
        shutil.copytree(ROOT / args.out / "cpu-int8", ROOT / args.out / name)
        reports[name] = json.loads((ROOT / args.out / name / "report.json").read_text())
    total = time.perf_counter() - t_all
    load["end"] = os.getloadavg()

    fp32 = reports["ptq"]["models"]["student-fp32"]
    rows, table = [], []
    for name, r in reports.items():
        s8 = r["models"]["student-int8"]
        ab = r["int8"].get("accuracy_budget") or {}
        table.append({"method": name, "test_accuracy": s8["accuracy"], "test_drop_pts": 100 * (fp32["accuracy"] - s8["accuracy"]),
                      "val_drop_pts": ab.get("chosen_drop_pts"), "float_layers": ab.get("float_layers"),
                      "p50_ms": s8["latency_ms"]["p50"], "size_bytes": s8["size_bytes"],
                      "integer_ops": r["int8"]["export"].get("integer_ops") if r["int8"].get("export") else None,
                      "build_s": seconds[name]})
    by = {t["method"]: t for t in table}
    ab = reports["ptq-budget"]["int8"]["accuracy_budget"]
    rows += [
        ("FP32 student test accuracy (%)", 100 * fp32["accuracy"], "(info)", True),
        ("PTQ test drop vs FP32 (pts)", by["ptq"]["test_drop_pts"], "> 1", by["ptq"]["test_drop_pts"] > 1),
        ("PTQ validation drop vs FP32 (pts)", ab["int8_drop_pts"], "(info)", True),
        ("budgeted PTQ validation drop (pts)", ab["chosen_drop_pts"], f"<= {args.budget:g}", ab["met"]),
        ("budgeted PTQ test drop vs FP32 (pts)", by["ptq-budget"]["test_drop_pts"], "(info)", True),
        ("QAT test drop vs FP32 (pts)", by["qat"]["test_drop_pts"], "(info)", True),
        ("budgeted PTQ p50 / PTQ p50", by["ptq-budget"]["p50_ms"] / by["ptq"]["p50_ms"], "(info)", True),
        ("QAT p50 / PTQ p50", by["qat"]["p50_ms"] / by["ptq"]["p50_ms"], "(info)", True),
        ("three builds, end to end (s)", total, "<= 600", total <= 600),
    ]
    env = {**reports["ptq"]["environment"], "loadavg_1min_start_end": [round(load["start"][0], 2), round(load["end"][0], 2)]}
    print_goals(f"PTQ vs accuracy-budgeted PTQ vs QAT, cpu-int8: {env.get('cpu')}, load "
                f"{env['loadavg_1min_start_end'][0]} -> {env['loadavg_1min_start_end'][1]}", rows)
    print(f"\n{'method':12s} {'test acc':>9s} {'test drop':>10s} {'val drop':>9s} {'p50 ms':>7s} {'size kB':>8s}  float layers")
    print(f"{'FP32':12s} {100 * fp32['accuracy']:8.2f}% {'':>10s} {'':>9s} {fp32['latency_ms']['p50']:7.3f} "
          f"{fp32['size_bytes'] / 1e3:8.1f}")
    for t in table:
        vd = f"{t['val_drop_pts']:.2f}" if t["val_drop_pts"] is not None else ""
        fl = ", ".join(t["float_layers"]) if t["float_layers"] is not None else "-"
        print(f"{t['method']:12s} {100 * t['test_accuracy']:8.2f}% {t['test_drop_pts']:10.2f} {vd:>9s} "
              f"{t['p50_ms']:7.3f} {t['size_bytes'] / 1e3:8.1f}  {fl or 'none'}")
    print(f"\nbudget search: {len(ab['tried'])} configurations tried by {ab['tuner']['name']} "
          f"{ab['tuner']['version']}, {ab['layers']} layers' sensitivity measured, {ab['seconds']:.1f} s")
    out = write_results("budget", rows, budget_pts=args.budget, fp32=fp32, methods=table, accuracy_budget=ab,
                        builds_s=seconds, environment=env, recipe=str(Path(args.recipe).resolve().relative_to(ROOT))
                        if Path(args.recipe).resolve().is_relative_to(ROOT) else args.recipe)
    print(f"written to {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
