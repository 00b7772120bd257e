"""The accuracy-speed frontier of text students (layers x width x INT8), measured in one run, and the
default picked from it.

    python benchmarks/text_frontier.py [--out build-frontier] [--configs "layers=2;layers=3;layers=4"]
                                       [extra key=value ...]

Builds examples/minilm-embed for target cpu-int8 once per student configuration (each `;`-separated
entry of --configs is a list of space-separated recipe overrides), all into one output folder so
that the teacher and its targets are computed once and shared. Each build's FP32 and INT8 students
become points (p50 at 128 tokens, 1 thread, batch 1, fresh process; cosine fidelity to the teacher on
held-out text), the teacher one more; all are timed again together at the end, interleaved over
rounds (a build's own benchmark ran minutes from the others'). Writes benchmarks/results/text-frontier.json,
benchmarks/results/text-frontier.png and <out>/frontier.html (the table and the plot), and prints
the default: the fastest configuration meeting the fidelity and speed goals, else the most faithful
one meeting the speed goal."""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

from _goals import interleaved_p50_128

ROOT = Path(__file__).resolve().parent.parent
RECIPE = ROOT / "examples" / "minilm-embed" / "edgekd.toml"
RESULTS = ROOT / "benchmarks" / "results"


def pick_default(rows: list[dict], *, fidelity: float, speedup: float) -> tuple[dict, str]:
    """The fastest point meeting both goals; else the most faithful meeting the speed goal; else the
    fastest."""
    both = [r for r in rows if r["fidelity_cosine"] >= fidelity and r["speedup_vs_teacher"] >= speedup]
    if both:
        return min(both, key=lambda r: r["p50_ms_128"]), f"the fastest with cosine >= {fidelity} and >= {speedup}x"
    fast = [r for r in rows if r["speedup_vs_teacher"] >= speedup]
    if fast:
        return (max(fast, key=lambda r: r["fidelity_cosine"]),
                f"none keeps cosine {fidelity} at >= {speedup}x: the most faithful of those >= {speedup}x")
    return min(rows, key=lambda r: r["p50_ms_128"]), f"none is >= {speedup}x faster: the fastest"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="build-frontier")
    ap.add_argument("--configs", default="student.layers=2;student.layers=3;student.layers=4",
                    help="';'-separated student configurations, each space-separated key=value overrides")
    ap.add_argument("--goal", type=float, default=0.95, help="the cosine fidelity a default must keep")
    ap.add_argument("--speedup", type=float, default=4.0, help="the speed-up over the teacher a default must reach")
    ap.add_argument("--rounds", type=int, default=3, help="rounds of the interleaved timing")
    ap.add_argument("--reuse", action="store_true", help="skip configurations whose build is in --out already")
    args, extra = ap.parse_known_args()
    import numpy as np

    from edgekd.report.figures import Point, save_frontier

    out = ROOT / args.out
    configs = [c.split() for c in args.configs.split(";") if c.strip()]
    reports, seconds = [], []
    for i, overrides in enumerate(configs):
        path = out / f"report-{i}.json"
        if not (args.reuse and path.exists()):
            t = time.perf_counter()
            subprocess.run([sys.executable, "-m", "edgekd", "build", f"recipe={RECIPE}", "target=cpu-int8", "--out",
                            str(out), *extra, *overrides], check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
            r = json.loads((out / "cpu-int8" / "report.json").read_text())
            r["frontier"] = {"overrides": overrides, "build_s": round(time.perf_counter() - t)}
            path.write_text(json.dumps(r))
        reports.append(json.loads(path.read_text()))
        if reports[-1].get("frontier", {}).get("overrides", overrides) != overrides:
            raise SystemExit(f"{path} was built for another configuration; run without --reuse")

    def onnx(r: dict, model: str) -> Path:
        return out / ".cache" / r["stages"]["export"]["cache"] / f"{model}.onnx"

    paths = {"teacher": onnx(reports[0], "teacher")}
    for i, r in enumerate(reports):
        paths.update({(i, m): onnx(r, m) for m in ("student-fp32", "student-int8")})
    # the builds' own benchmark stages ran minutes apart, under whatever else the machine was doing:
    # all models are timed again here, against each other
    p50 = {k: float(np.median(v)) for k, v in
           interleaved_p50_128({str(k): v for k, v in paths.items()}, rounds=args.rounds, iterations=200).items()}
    t128 = p50["teacher"]
    rows, points = [], [Point("teacher", t128, 100.0, "teacher FP32")]
    for i, (overrides, r) in enumerate(zip(configs, reports)):
        name = " ".join(overrides)
        for model, group in (("student-fp32", "student FP32"), ("student-int8", "student INT8")):
            x, ms = r["models"][model], p50[str((i, model))]
            rows.append({"config": name, "model": model, "p50_ms_128": ms, "speedup_vs_teacher": t128 / ms,
                         "fidelity_cosine": x["fidelity_cosine"], "neighbour_overlap_at_10": x["neighbour_overlap_at_10"],
                         "size_mb": x["size_bytes"] / 1e6, "params": x["params"],
                         "train_s": round(r["stages"]["distill"]["seconds"] + r["stages"]["qat"]["seconds"]),
                         "build_s": r.get("frontier", {}).get("build_s")})
            short = name.replace("student.", "").replace("model=", "")  # plot labels: "narrow layers=3 hidden=256"
            points.append(Point(f"{short} {'INT8' if model.endswith('int8') else 'FP32'}", ms,
                                100 * x["fidelity_cosine"], group))
    RESULTS.mkdir(exist_ok=True)
    png = save_frontier(RESULTS / "text-frontier.png", points, quality_label="cosine fidelity to teacher, %",
                        latency_label="p50 at 128 tokens (onnxruntime, 1 thread)",
                        title="text students: fidelity vs latency")
    pick, why = pick_default(rows, fidelity=args.goal, speedup=args.speedup)
    print(f"\nteacher p50 @128: {t128:.2f} ms (median of {args.rounds} interleaved rounds)")
    print(f"{'config':28s} {'model':13s} {'cosine':>7s} {'overlap':>7s} {'p50@128':>8s} {'speed-up':>8s} {'MB':>6s}")
    for r in rows:
        print(f"{r['config']:28s} {r['model']:13s} {r['fidelity_cosine']:7.4f} {r['neighbour_overlap_at_10']:7.3f} "
              f"{r['p50_ms_128']:8.2f} {r['speedup_vs_teacher']:7.2f}x {r['size_mb']:6.1f}")
    print(f"\ndefault: {pick['config']} {pick['model']} ({why})")
    env = reports[-1]["environment"]
    (RESULTS / "text-frontier.json").write_text(json.dumps(
        {"teacher_p50_ms_128": t128, "rounds": args.rounds, "rows": rows, "pick": pick, "pick_rule": why,
         "extra_overrides": extra, "environment": env}, indent=2))
    from edgekd.report.figures import frontier_figure, png_data_url
    from edgekd.report.html import markdown_to_html

    md = "\n".join([f"Default: **{pick['config']} {pick['model']}** ({why}). Teacher p50 at 128 tokens: {t128:.2f} ms.", "",
                    "| configuration | model | cosine | overlap@10 | p50 ms @128 | speed-up | MB |",
                    "|---|---|---:|---:|---:|---:|---:|",
                    *(f"| {r['config']} | {r['model']} | {r['fidelity_cosine']:.4f} | {r['neighbour_overlap_at_10']:.3f} | "
                      f"{r['p50_ms_128']:.2f} | {r['speedup_vs_teacher']:.2f}x | {r['size_mb']:.1f} |" for r in rows)])
    fig = frontier_figure(points, quality_label="cosine fidelity to teacher, %",
                          latency_label="p50 at 128 tokens (onnxruntime, 1 thread)", title="text students")
    (out / "frontier.html").write_text(markdown_to_html(md, {"frontier": png_data_url(fig)},
                                                        title="Text students: the accuracy-speed frontier"))
    print(f"written to {png.relative_to(ROOT)}, benchmarks/results/text-frontier.json and {args.out}/frontier.html")


if __name__ == "__main__":
    main()
