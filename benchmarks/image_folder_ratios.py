"""The image-folder example's goals, measured in one run on this machine (not asserted in unit tests).

    python benchmarks/image_folder_ratios.py [--folder DIR] [--out build-image-folder] [--report PATH/report.json]
                                             [extra key=value ...]

Writes the example's image folder with examples/image-folder/make_folder.py into a temporary folder
(or reuses --folder when it exists), runs `edgekd build recipe=examples/image-folder/edgekd.toml
target=cpu-int8` on it from scratch (--force), timing it end to end, then prints the ratios the goals
are stated in: the INT8 student at least 4x faster than the FP32 teacher (ResNet), at
most 2 points less accurate, at most a tenth of its size, the build within 15 minutes. The machine's
load average is recorded with the results: training time depends on it. With --report, reads an
existing build's report instead of building. Results go to benchmarks/results/image-folder.json."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _goals import print_goals, write_results

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "image-folder"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--folder", default=None, help="the image folder (written there when missing)")
    ap.add_argument("--out", default="build-image-folder")
    ap.add_argument("--report", default=None, help="an existing build's report.json (skips the build)")
    args, extra = ap.parse_known_args()
    seconds, load = None, {"start": os.getloadavg()}
    if args.report:
        report = Path(args.report)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(args.folder or Path(tmp) / "digits-rgb")
            if not folder.exists():
                subprocess.run([sys.executable, str(EXAMPLE / "make_folder.py"), str(folder)], check=True)
            t = time.perf_counter()
            subprocess.run([sys.executable, "-m", "edgekd", "build", f"recipe={EXAMPLE / 'edgekd.toml'}", "target=cpu-int8",
                            "--out", args.out, "--force", f"data.path={folder.resolve()}", *extra],
                           check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
            seconds = time.perf_counter() - t
        report = ROOT / args.out / "cpu-int8" / "report.json"
    load["end"] = os.getloadavg()
    r = json.loads(report.read_text())
    m = r["models"]
    t, s32, s8, base = m["teacher"], m["student-fp32"], m["student-int8"], m["student-baseline"]
    p50 = lambda x: x["latency_ms"]["p50"]  # noqa: E731
    gap = 100 * (t["accuracy"] - s8["accuracy"])
    rows = [
        ("teacher FP32 p50 / student INT8 p50", p50(t) / p50(s8), ">= 4", p50(t) / p50(s8) >= 4),
        ("teacher acc - student INT8 acc (pts)", gap, "<= 2.0", gap <= 2.0 + 1e-9),
        ("student INT8 / teacher file size", s8["size_bytes"] / t["size_bytes"], "<= 0.10",
         s8["size_bytes"] / t["size_bytes"] <= 0.10),
        ("student INT8 / teacher peak RSS", s8["peak_rss_mb"] / t["peak_rss_mb"], "<= 1", s8["peak_rss_mb"] <= t["peak_rss_mb"]),
        ("student INT8 peak RSS (MB)", s8["peak_rss_mb"], "(info)", True),
        # the INT8 bar of "good results on data nobody tuned for": >= 3x the teacher within 1 point of it
        ("teacher p50 / INT8 p50, within 1 point", p50(t) / p50(s8), ">= 3 at <= 1.0 pt",
         p50(t) / p50(s8) >= 3 and gap <= 1.0 + 1e-9),
        # the deliverable is never slower than its FP32 twin: INT8 that pays, or the FP32 graph shipped (edgekd.payoff)
        ("student FP32 p50 / student INT8 p50", p50(s32) / p50(s8), ">= 1 or FP32 shipped",
         p50(s32) / p50(s8) >= 0.97 or bool((r.get("int8") or {}).get("shipped_fp32"))),
        ("student FP32 acc - baseline acc (pts)", 100 * (s32["accuracy"] - base["accuracy"]), "(info)", True),
        ("teacher accuracy (%)", 100 * t["accuracy"], ">= 98", t["accuracy"] >= 0.98),
    ]
    if seconds is not None:
        rows.append(("build, end to end (s)", seconds, "<= 900", seconds <= 900))
    env = r["environment"]
    env = {**env, "loadavg_1min_start_end": [round(load["start"][0], 2), round(load["end"][0], 2)],
           "torch_threads_env": os.environ.get("OMP_NUM_THREADS", "")}
    print_goals(f"edgekd build image-folder cpu-int8: {env.get('cpu')}, {env['threads']} thread(s), "
                f"load {env['loadavg_1min_start_end'][0]} -> {env['loadavg_1min_start_end'][1]}", rows)
    print("\nper model: accuracy, p50/p90/p99 ms, peak RSS MB, size kB, parameters")
    for name, x in m.items():
        lat = x["latency_ms"]
        print(f"  {name:18s} {100 * x['accuracy']:6.2f}%  {lat['p50']:.3f}/{lat['p90']:.3f}/{lat['p99']:.3f}  "
              f"{x['peak_rss_mb']:5.0f}  {x['size_bytes'] / 1e3:8.1f}  {x['params']:,}")
    out = write_results("image-folder", rows, build_s=seconds, models=m, training=r["training"], stages=r["stages"],
                        data_origin=r.get("data_origin"), environment=env)
    print(f"\nwritten to {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
