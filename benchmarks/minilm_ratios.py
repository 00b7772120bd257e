"""The MiniLM example's goals, measured in one run on this machine (not asserted in unit tests).

    python benchmarks/minilm_ratios.py [--out build-minilm] [--report PATH/report.json] [extra key=value ...]

Runs `edgekd build recipe=examples/minilm-embed/edgekd.toml target=cpu-int8` from scratch (--force),
timing it end to end, then prints the ratios the goals are stated in: student INT8 at least 3x faster
than the teacher FP32 at 128 tokens (1 thread, batch 1), mean cosine fidelity >= 0.90, top-10
neighbour overlap >= 0.70, the build within 15 minutes. With --report, reads an existing build's
report instead of building. Results go to benchmarks/results/minilm-embed.json."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from _goals import print_goals, write_results

ROOT = Path(__file__).resolve().parent.parent
RECIPE = ROOT / "examples" / "minilm-embed" / "edgekd.toml"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="build-minilm")
    ap.add_argument("--report", default=None, help="an existing build's report.json (skips the build)")
    args, extra = ap.parse_known_args()
    seconds = None
    if args.report:
        report = Path(args.report)
    else:
        t = time.perf_counter()
        subprocess.run([sys.executable, "-m", "edgekd", "build", f"recipe={RECIPE}", "target=cpu-int8", "--out", args.out,
                        "--force", *extra], check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
        seconds = time.perf_counter() - t
        report = ROOT / args.out / "cpu-int8" / "report.json"
    r = json.loads(report.read_text())
    m = r["models"]
    t, s32, s8, base = m["teacher"], m["student-fp32"], m["student-int8"], m["student-baseline"]
    p50 = lambda x, s="128": x["latency_by_seq"][s]["p50"]  # noqa: E731
    rows = [
        ("teacher FP32 p50 / student INT8 p50 @128", p50(t) / p50(s8), ">= 3", p50(t) / p50(s8) >= 3),
        ("student INT8 cosine fidelity", s8["fidelity_cosine"], ">= 0.90", s8["fidelity_cosine"] >= 0.90),
        ("student INT8 neighbour overlap @10", s8["neighbour_overlap_at_10"], ">= 0.70", s8["neighbour_overlap_at_10"] >= 0.70),
        ("student FP32 p50 / student INT8 p50 @128", p50(s32) / p50(s8), ">= 1", p50(s32) / p50(s8) >= 1),
        ("student INT8 / teacher parameters", s8["params"] / t["params"], "(info)", True),
        ("fidelity gain of distillation", s32["fidelity_cosine"] - base["fidelity_cosine"], "> 0",
         s32["fidelity_cosine"] > base["fidelity_cosine"]),
    ]
    if seconds is not None:
        rows.append(("build, end to end (s)", seconds, "<= 900", seconds <= 900))
    env = r["environment"]
    print_goals(f"edgekd build minilm-embed cpu-int8: {env.get('cpu')}, {env['threads']} thread(s)", rows)
    print("\nper model: cosine fidelity, neighbour overlap @10, p50 ms at 16/64/128 tokens, p99 @128, peak RSS MB, size MB")
    for name, x in m.items():
        by = x["latency_by_seq"]
        print(f"  {name:18s} {x['fidelity_cosine']:.4f}  {x['neighbour_overlap_at_10']:.3f}  "
              f"{by['16']['p50']:.2f}/{by['64']['p50']:.2f}/{by['128']['p50']:.2f}  {by['128']['p99']:.2f}  "
              f"{x['peak_rss_mb']:5.0f}  {x['size_bytes'] / 1e6:6.1f}")
    out = write_results("minilm-embed", rows, build_s=seconds, models=m, training=r["training"], stages=r["stages"],
                        environment=env)
    print(f"\nwritten to {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
