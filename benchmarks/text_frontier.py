"""The accuracy-speed frontier of text students (layers x width x INT8), measured in one run, and the
default picked from it.

    python benchmarks/text_frontier.py [--out build-frontier] [--configs "layers=2;layers=3;layers=4"]
                                       [extra key=value ...]

Builds examples/minilm-embed for target cpu-int8 once per student configuration (each `;`-separated
entry of --configs is a list of space-separated recipe overrides), all into one output folder so
that the teacher and its targets are computed once and shared. Each build's FP32 and INT8 students
become points (p50 at 128 tokens, 1 thread, batch 1, fresh process; cosine fidelity to the teacher on
held-out text), the teacher one more. Writes benchmarks/results/text-frontier.json,
benchmarks/results/text-frontier.png and <out>/frontier.html (the table and the plot), and prints
which configuration is the fastest meeting the fidelity goal."""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RECIPE = ROOT / "examples" / "minilm-embed" / "edgekd.toml"
RESULTS = ROOT / "benchmarks" / "results"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="build-frontier")
    ap.add_argument("--configs", default="student.layers=2;student.layers=3;student.layers=4",
                    help="';'-separated student configurations, each space-separated key=value overrides")
    ap.add_argument("--goal", type=float, default=0.95, help="the cosine fidelity a default must keep")
    args, extra = ap.parse_known_args()
    from edgekd.report_plots import Point, save_frontier

    out = ROOT / args.out
    configs = [c.split() for c in args.configs.split(";") if c.strip()]
    rows, points = [], []
    for overrides in configs:
        name = " ".join(overrides)
        t = time.perf_counter()
        subprocess.run([sys.executable, "-m", "edgekd", "build", f"recipe={RECIPE}", "target=cpu-int8", "--out",
                        str(out), *extra, *overrides], check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
        seconds = time.perf_counter() - t
        r = json.loads((out / "cpu-int8" / "report.json").read_text())
        shutil.copy(out / "cpu-int8" / "report.json", out / f"report-{len(rows)}.json")
        m = r["models"]
        if not points:
            t128 = m["teacher"]["latency_by_seq"]["128"]["p50"]
            points.append(Point("teacher", t128, 100.0, "teacher FP32"))
        for model, group in (("student-fp32", "student FP32"), ("student-int8", "student INT8")):
            x = m[model]
            p50 = x["latency_by_seq"]["128"]["p50"]
            rows.append({"config": name, "model": model, "p50_ms_128": p50,
                         "speedup_vs_teacher": m["teacher"]["latency_by_seq"]["128"]["p50"] / p50,
                         "fidelity_cosine": x["fidelity_cosine"], "neighbour_overlap_at_10": x["neighbour_overlap_at_10"],
                         "size_mb": x["size_bytes"] / 1e6, "params": x["params"], "build_s": round(seconds)})
            points.append(Point(f"{name} {'INT8' if model.endswith('int8') else 'FP32'}", p50,
                                100 * x["fidelity_cosine"], group))
    RESULTS.mkdir(exist_ok=True)
    png = save_frontier(RESULTS / "text-frontier.png", points, quality_label="cosine fidelity to teacher, %",
                        latency_label="p50 at 128 tokens (onnxruntime, 1 thread)",
                        title="text students: fidelity vs latency")
    meeting = [r for r in rows if r["fidelity_cosine"] >= args.goal]
    pick = min(meeting, key=lambda r: r["p50_ms_128"]) if meeting else max(rows, key=lambda r: r["fidelity_cosine"])
    print(f"\n{'config':28s} {'model':13s} {'cosine':>7s} {'overlap':>7s} {'p50@128':>8s} {'speed-up':>8s} {'MB':>6s}")
    for r in rows:
        print(f"{r['config']:28s} {r['model']:13s} {r['fidelity_cosine']:7.4f} {r['neighbour_overlap_at_10']:7.3f} "
              f"{r['p50_ms_128']:8.2f} {r['speedup_vs_teacher']:7.2f}x {r['size_mb']:6.1f}")
    why = (f"the fastest with cosine >= {args.goal}" if meeting else
           f"none reaches cosine {args.goal}: the most faithful")
    print(f"\ndefault: {pick['config']} {pick['model']} ({why})")
    env = json.loads((out / "cpu-int8" / "report.json").read_text())["environment"]
    (RESULTS / "text-frontier.json").write_text(json.dumps(
        {"rows": rows, "pick": pick, "pick_rule": why, "extra_overrides": extra, "environment": env}, indent=2))
    from edgekd._markdown import markdown_to_html
    from edgekd.report_plots import png_data_url, frontier_figure

    md = "\n".join([f"Default: **{pick['config']} {pick['model']}** ({why}).", "",
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
