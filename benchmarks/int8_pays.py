"""INT8 that pays, on every example and every target: is the artifact an INT8 target ships at least as
fast as the FP32 student it starts from, or does its verdict say why not?

    python benchmarks/int8_pays.py [--examples mnist,image-folder,minilm-embed,budget] [--out build-int8-pays]
                                   [--force] [--report-only]

Each example is built once with `edgekd build recipe=... target=all` (the training stages run once;
every target this install runs exports and benchmarks its own models, each model in a fresh process,
models interleaved within each thread count). Per target, from that run's report:

- the FP32 student's p50 over the deliverable's, at batch 1 and 1 thread (image models), or at each
  benchmarked sequence length (text models: the geometric mean over lengths, and the worst length); the
  ratio of their means beside it;
- the spread of that ratio: the deliverable's and the FP32 student's interquartile ranges relative to
  their medians, added (text lengths: each median's distance to the fastest call, as the report keeps no
  quartiles there);
- what shipped: INT8, or the FP32 student where INT8 did not pay (edgekd.payoff), with the reason;
- met: ratio >= 1 - spread; or the FP32 student shipped and the verdict says so; or INT8 slower and
  the report's check line says why (the recipe pinned `quantize.int8_layers = "all"`, or the runtime's
  own quantizer placed INT8 where edgekd does not time layers).

A target whose converter fails is recorded with the build's one-line error; the others are judged.
The image-folder example's data is written by its make_folder.py into OUT/. Results:
benchmarks/results/int8-pays.json."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from _goals import RESULTS, cpu_of, print_goals, write_results

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = {"mnist": "examples/mnist/edgekd.toml", "image-folder": "examples/image-folder/edgekd.toml",
            "minilm-embed": "examples/minilm-embed/edgekd.toml", "budget": "examples/budget/edgekd.toml"}


def build(example: str, out: Path, force: bool) -> tuple[float, str]:
    """-> (seconds, the build's error line: a target whose converter failed, the others built; "" if none)."""
    extra = []
    if example == "image-folder":
        folder = out.parent / "digits-rgb"
        if not folder.exists():
            subprocess.run([sys.executable, str(ROOT / "examples/image-folder/make_folder.py"), str(folder)],
                           check=True, cwd=ROOT)
        extra.append(f"data.path={folder}")
    t = time.perf_counter()
    res = subprocess.run([sys.executable, "-m", "edgekd", "build", f"recipe={ROOT / EXAMPLES[example]}", "target=all",
                          "--out", str(out), *extra, *(["--force"] if force else [])], cwd=ROOT,
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    error = next((line for line in reversed(res.stderr.splitlines()) if line.startswith("edgekd: error:")), "")
    if res.returncode not in (0, 2) or (res.returncode == 2 and "targets failed" not in error):
        raise SystemExit(f"{example}: the build failed (exit {res.returncode}): {error or res.stderr[-2000:]}")
    return time.perf_counter() - t, error


def _iqr(stats: dict, percentiles: list[float] | None) -> float:
    """(p75 - p25) / p50 of one timing from the 101 percentiles where the report has them, else
    (p50 - min) / p50 (text lengths keep p50, p90 and min; a loaded machine's tail makes p90 useless here)."""
    if percentiles and len(percentiles) == 101:
        return (percentiles[75] - percentiles[25]) / percentiles[50]
    return (stats["p50"] - stats["min"]) / stats["p50"]


def judge(r: dict) -> dict:
    """One target's report -> the deliverable against the FP32 student."""
    m, i8 = r["models"], r.get("int8") or {}
    f, d = m["student-fp32"], m["student-int8"]
    if "latency_by_seq" in d:  # text: every benchmarked length
        lens = list(d["latency_by_seq"])
        ratios = {s: f["latency_by_seq"][s]["p50"] / d["latency_by_seq"][s]["p50"] for s in lens}
        spread = max(_iqr(f["latency_by_seq"][s], None) + _iqr(d["latency_by_seq"][s], None) for s in lens)
        ratio, worst = float(np.exp(np.mean(np.log(list(ratios.values()))))), min(ratios.values())
    else:
        ratios = None
        ratio = worst = f["latency_ms"]["p50"] / d["latency_ms"]["p50"]
    # the means too: a runtime whose per-call times are bimodal (OpenVINO on a tiny model) moves its p50
    # between the modes from run to run
        spread = _iqr(f["latency_ms"], f.get("latency_percentiles_ms")) + _iqr(d["latency_ms"], d.get("latency_percentiles_ms"))
    shipped_fp32 = bool(i8.get("shipped_fp32"))
    md = r.get("_markdown", "")
    said = ("ships the FP32 student" in md) if shipped_fp32 else ("the FP32 student's latency" in md)
    if shipped_fp32:
        why, ok = "FP32 student shipped (INT8 did not pay)", said
    elif worst >= 1 - spread:
        why, ok = "INT8 at least as fast", True
    else:
        why, ok = "INT8 slower; " + ("the verdict says why" if said else "the verdict is silent"), said
    return {"ratio_fp32_over_deliverable": ratio, "worst_ratio": worst, "by_length": ratios, "spread": spread,
            "shipped": "fp32" if shipped_fp32 else "int8", "why": why, "met": ok,
            "fp32_p50_ms": f["latency_ms"]["p50"], "deliverable_p50_ms": d["latency_ms"]["p50"],
            "ratio_of_means": f["latency_ms"]["mean"] / d["latency_ms"]["mean"],
            "payoff_in_process": (i8.get("payoff") or i8.get("activations") or {}).get("int8_vs_fp32"),
            "runtime": (r.get("target_profile") or {}).get("runtime")}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--examples", default=",".join(EXAMPLES))
    ap.add_argument("--out", default="build-int8-pays")
    ap.add_argument("--force", action="store_true", help="rebuild every stage instead of reusing the cache")
    ap.add_argument("--report-only", action="store_true", help="summarize builds already in --out")
    ap.add_argument("--tag", default="", help="keep the results as EXAMPLE@TAG beside the saved ones (another CPU)")
    args = ap.parse_args()
    out = (ROOT / args.out).resolve()
    previous = RESULTS / "int8-pays.json"
    results = json.loads(previous.read_text()).get("examples", {}) if previous.exists() else {}
    for example in args.examples.split(","):
        where = out / example
        key = f"{example}@{args.tag}" if args.tag else example
        seconds, error = (None, (results.get(key) or {}).get("failed", "")) if args.report_only else \
            build(example, where, args.force)
        per_target, cpu = {}, None
        if args.report_only and not any(where.glob("*/report.json")):
            sys.exit(f"no build of {example} in {where}: run without --report-only, or pass --out to the builds")
        for rep in sorted(where.glob("*/report.json")):
            r = json.loads(rep.read_text())
            if r["target_profile"]["precision"] == "fp32":  # an FP32 target ships the FP32 student by definition
                continue
            md = rep.with_name("report.md")
            r["_markdown"] = md.read_text() if md.exists() else ""
            per_target[rep.parent.name] = judge(r)
            cpu = cpu_of(r)
        results[key] = {"build_s": seconds, "targets": per_target, "failed": error, "cpu": cpu}
        rows = [(f"{t} ({x['runtime']}): FP32 p50 / shipped p50, {x['shipped']}", x["ratio_fp32_over_deliverable"],
                 f">= {1 - x['spread']:.2f}" if x["shipped"] == "int8" else "(FP32)", x["met"])
                for t, x in per_target.items()]
        print_goals(f"\n{key}" + (f" (build {seconds:.0f} s)" if seconds else ""), rows)
        for t, x in per_target.items():
            print(f"  {t}: {x['why']}; ratio of means {x['ratio_of_means']:.2f}" + (f"; by length {', '.join(f'{s}: {v:.2f}' for s, v in x['by_length'].items())}"
                                          if x["by_length"] else ""))
        if error:
            print(f"  {error}")
        print(f"written to {write_results('int8-pays', [], examples=results).relative_to(ROOT)}")


if __name__ == "__main__":
    main()
