"""The build pipeline's goals, measured in one run on this machine (not asserted in unit tests).

    python benchmarks/build_ratios.py [--target cpu-int8] [--out build] [extra key=value ...]

Runs `edgekd build` from scratch (--force), then again (cache reuse), and prints the ratios the
goals are stated in. Results go to benchmarks/results/build_ratios-<target>.json."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from _goals import print_goals, write_results

ROOT = Path(__file__).resolve().parent.parent


def run_build(target: str, out: str, extra: list[str], *, force: bool) -> float:
    cmd = [sys.executable, "-m", "edgekd", "build", f"target={target}", "--out", out, *extra] + (["--force"] if force else [])
    t = time.perf_counter()
    subprocess.run(cmd, check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--target", default="cpu-int8")
    ap.add_argument("--out", default="build")
    args, extra = ap.parse_known_args()
    first = run_build(args.target, args.out, extra, force=True)
    second = run_build(args.target, args.out, extra, force=False)
    r = json.loads((ROOT / args.out / args.target / "report.json").read_text())
    m = r["models"]
    t, s32, s8, base = m["teacher"], m["student-fp32"], m["student-int8"], m["student-baseline"]
    p50 = lambda x: x["latency_ms"]["p50"]  # noqa: E731
    rows = [
        ("teacher FP32 p50 / student INT8 p50", p50(t) / p50(s8), ">= 10", p50(t) / p50(s8) >= 10),
        ("student FP32 p50 / student INT8 p50", p50(s32) / p50(s8), ">= 1", p50(s32) / p50(s8) >= 1),
        ("teacher acc - student INT8 acc (pts)", 100 * (t["accuracy"] - s8["accuracy"]), "<= 1.0", t["accuracy"] - s8["accuracy"] <= 0.010001),
        ("student FP32 acc - baseline acc (pts)", 100 * (s32["accuracy"] - base["accuracy"]), ">= 0", s32["accuracy"] >= base["accuracy"]),
        ("teacher accuracy (%)", 100 * t["accuracy"], ">= 98", t["accuracy"] >= 0.98),
        ("first build, end to end (s)", first, "<= 360", first <= 360),
        ("second build / first build", second / first, "<= 0.10", second / first <= 0.10),
    ]
    print_goals(f"edgekd build {args.target}: {r['environment'].get('cpu')}, {r['environment']['threads']} thread(s)", rows)
    print("\nper model: accuracy, p50/p90/p99 ms, peak RSS MB, size kB")
    for name, x in m.items():
        lat = x["latency_ms"]
        print(f"  {name:18s} {100 * x['accuracy']:6.2f}%  {lat['p50']:.3f}/{lat['p90']:.3f}/{lat['p99']:.3f}  "
              f"{x['peak_rss_mb']:5.0f}  {x['size_bytes'] / 1e3:8.1f}")
    out = write_results(f"build_ratios-{args.target}", rows, first_build_s=first, second_build_s=second, models=m,
                        stages=r["stages"], environment=r["environment"])
    print(f"\nwritten to {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
