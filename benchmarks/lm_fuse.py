"""Attention as one GroupQueryAttention node (edgekd.lm_fuse) against optimum's graph, on the same
weights: two export folders of one build, one written with export.fuse_attention = true and one with
false, their models timed in alternation (A, B, A, B, ... each in a fresh process, edgekd.lm_bench), so
a machine that slows down for a while slows both sides.

    python benchmarks/lm_fuse.py FUSED_EXPORT_DIR PLAIN_EXPORT_DIR [--models teacher,student-int4] [--rounds 3]

An export dir is a build cache's export stage folder (.cache/export-<key>), holding one folder per model.
Writes benchmarks/results/lm-fuse.json: decode and prefill tokens/s per round and side, and the INT4
student's decode ratio to the teacher's on each side within each round."""

from __future__ import annotations

import argparse
import json
import os
import platform
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results" / "lm-fuse.json"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("fused", type=Path)
    ap.add_argument("plain", type=Path)
    ap.add_argument("--models", default="teacher,student-int4")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--prompt", type=int, default=128)
    ap.add_argument("--new-tokens", type=int, default=128)
    a = ap.parse_args()

    import onnx

    from edgekd.lm_bench import bench_lm

    names = a.models.split(",")
    for side in (a.fused, a.plain):
        for n in names:
            ops = {x.op_type for x in onnx.load(str(side / n / "model.onnx"), load_external_data=False).graph.node}
            if ("GroupQueryAttention" in ops) != (side == a.fused):
                raise SystemExit(f"{side / n}: expected {'a fused' if side == a.fused else 'an unfused'} graph")
    rounds = []
    for r in range(a.rounds):
        row = {}
        for side, folder in (("fused", a.fused), ("plain", a.plain)):
            for n in names:
                m = bench_lm(folder / n, prompt_lengths=(a.prompt,), new_tokens=a.new_tokens, repeats=3)
                row[f"{side}/{n}"] = {"decode_tok_s": m["decode_tok_s"]["mean"],
                                      "prefill_tok_s": m["prefill_tok_s"][str(a.prompt)]["mean"],
                                      "peak_rss_mb": m["peak_rss_mb"]}
                print(f"round {r} {side:5s} {n:14s} decode {m['decode_tok_s']['mean']:6.1f} tok/s  "
                      f"prefill {m['prefill_tok_s'][str(a.prompt)]['mean']:6.0f} tok/s", flush=True)
        if "teacher" in names and len(names) > 1:
            for side in ("fused", "plain"):
                row[f"{side}/ratio"] = {n: row[f"{side}/{n}"]["decode_tok_s"] / row[f"{side}/teacher"]["decode_tok_s"]
                                        for n in names if n != "teacher"}
        rounds.append(row)

    def med(key, field):
        return float(np.median([r[key][field] for r in rounds]))

    summary = {f"{s}/{n}": {f: med(f"{s}/{n}", f) for f in ("decode_tok_s", "prefill_tok_s", "peak_rss_mb")}
               for s in ("fused", "plain") for n in names}
    if "teacher" in names:
        for s in ("fused", "plain"):
            summary[f"{s}/ratio"] = {n: float(np.median([r[f"{s}/ratio"][n] for r in rounds]))
                                     for n in names if n != "teacher"}
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({"machine": _cpu(), "threads": 1,
                                   "prompt_tokens": a.prompt, "new_tokens": a.new_tokens, "models": names,
                                   "fused": str(a.fused), "plain": str(a.plain), "median": summary,
                                   "rounds": rounds}, indent=2))
    for k, v in summary.items():
        print(k, {f: round(x, 2) for f, x in v.items()})


def _cpu() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            name = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "")
    except OSError:
        name = ""
    return f"{name or platform.machine()}, {os.cpu_count()} cores"


if __name__ == "__main__":
    main()
