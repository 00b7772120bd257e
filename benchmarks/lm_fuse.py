"""Attention as one GroupQueryAttention node (edgekd.lm_fuse) against optimum's graph, on the same
weights: two export folders of one build, one written with export.fuse_attention = true and one with
false, every model's repeats in alternation (edgekd.lm_bench.bench_lms: one warm process per model, one
repeat of each per round), so a machine that slows down for a while slows both sides alike.

    python benchmarks/lm_fuse.py FUSED_EXPORT_DIR PLAIN_EXPORT_DIR [--models teacher,student-int4] [--repeats 5]

An export dir is a build cache's export stage folder (.cache/export-<key>), holding one folder per model.
Writes benchmarks/results/lm-fuse.json (lm-fuse-openvino.json with --runtime openvino: the IR folders
converted from each side's graphs): decode and prefill tokens/s and peak RSS per model and side,
and each student's decode ratio to the teacher's on each side."""

from __future__ import annotations

import argparse
import json
import os
import platform
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results" / "lm-fuse{}.json"  # "-openvino" for that runtime


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("fused", type=Path)
    ap.add_argument("plain", type=Path)
    ap.add_argument("--models", default="teacher,student-int4")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--runtime", default="onnxruntime", choices=("onnxruntime", "openvino"),
                    help="openvino: the <model>-openvino IR folders converted from each side's graphs")
    ap.add_argument("--prompt", type=int, default=128)
    ap.add_argument("--new-tokens", type=int, default=128)
    a = ap.parse_args()

    import onnx

    from edgekd.lm_bench import bench_lms

    names = a.models.split(",")
    suffix = "-openvino" if a.runtime == "openvino" else ""
    for side in (a.fused, a.plain):
        for n in names:  # the side's ONNX graphs (the IR is converted from them)
            ops = {x.op_type for x in onnx.load(str(side / n / "model.onnx"), load_external_data=False).graph.node}
            if ("GroupQueryAttention" in ops) != (side == a.fused):
                raise SystemExit(f"{side / n}: expected {'a fused' if side == a.fused else 'an unfused'} graph")
    folders = {f"{side}/{n}": path / f"{n}{suffix}" for side, path in (("fused", a.fused), ("plain", a.plain))
               for n in names}
    res = bench_lms(folders, repeats=a.repeats, prompt_lengths=(a.prompt,), new_tokens=a.new_tokens, runtime=a.runtime)
    summary = {k: {"decode_tok_s": r["decode_tok_s"], "prefill_tok_s": r["prefill_tok_s"][str(a.prompt)],
                   "per_token_ms": r["per_token_ms"], "peak_rss_mb": r["peak_rss_mb"]} for k, r in res.items()}
    ratios = {side: {n: res[f"{side}/{n}"]["decode_tok_s"]["mean"] / res[f"{side}/teacher"]["decode_tok_s"]["mean"]
                     for n in names if n != "teacher"} for side in ("fused", "plain") if "teacher" in names}
    out = Path(str(RESULTS).format(suffix))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"machine": _cpu(), "runtime": a.runtime, "threads": 1, "prompt_tokens": a.prompt,
                                   "new_tokens": a.new_tokens, "repeats": a.repeats, "timing": "alternating",
                                   "fused": str(a.fused), "plain": str(a.plain), "models": summary,
                                   "decode_vs_teacher": ratios}, indent=2))
    for k, v in summary.items():
        print(f"{k:24s} decode {v['decode_tok_s']['mean']:6.1f} ± {v['decode_tok_s']['std']:4.1f} tok/s  prefill "
              f"{v['prefill_tok_s']['mean']:6.0f} tok/s  peak {v['peak_rss_mb']:5.0f} MB")
    for side, r in ratios.items():
        print(side, {n: round(x, 2) for n, x in r.items()})


def _cpu() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            name = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "")
    except OSError:
        name = ""
    return f"{name or platform.machine()}, {os.cpu_count()} cores"


if __name__ == "__main__":
    main()
