"""The MiniLM example's goals, measured in one run on this machine (not asserted in unit tests).

    python benchmarks/minilm_ratios.py [--out build-minilm] [--report PATH/report.json] [extra key=value ...]

Runs `edgekd build recipe=examples/minilm-embed/edgekd.toml target=cpu-int8` from scratch (--force),
timing it end to end, then prints the ratios the goals are stated in: student INT8 at least 4x faster
than the teacher FP32 at 128 tokens (1 thread, batch 1), mean cosine fidelity >= 0.95, top-10
neighbour overlap >= 0.80 on held-out text, the build within 15 minutes, and a file of at most 25 MB
with no latency cost: the deliverable (INT8 embedding tables) and the same graph with FP32 tables are
timed against each other in one run, interleaved over rounds, each in a fresh process. With
--report, reads an existing build's report instead of building. Results go to
benchmarks/results/minilm-embed.json."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from _goals import interleaved_p50_128, print_goals, write_results

ROOT = Path(__file__).resolve().parent.parent
RECIPE = ROOT / "examples" / "minilm-embed" / "edgekd.toml"


def embedding_tables_cost(build: Path, *, rounds: int) -> dict:
    """p50 at 128 tokens of the deliverable INT8 student with INT8 embedding tables and of the same graph
    with FP32 tables (whichever of the two the build did not write is made from it here: FP32 tables
    are restored from the FP32 student's export), interleaved over rounds in fresh processes."""
    import shutil
    import tempfile

    import numpy as np
    import onnx

    from edgekd.quantize import quantize_gather_tables

    deliverable = build / "student-int8.onnx"
    graph = onnx.load(str(deliverable))
    int8_tables = any(i.name.endswith("_int8") for i in graph.graph.initializer)
    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        if int8_tables:  # the FP32 tables come back from the FP32 export, where they were never touched
            fp32 = {i.name: i for i in onnx.load(str(build / "student-fp32.onnx")).graph.initializer}
            other = d / "fp32-tables.onnx"
            _restore_tables(graph, fp32)
            onnx.save(graph, str(other))
            paths = {"int8": deliverable, "fp32": other}
        else:
            other = d / "int8-tables.onnx"
            shutil.copy(deliverable, other)
            quantize_gather_tables(other)
            paths = {"int8": other, "fp32": deliverable}
        times = interleaved_p50_128(paths, rounds=rounds, iterations=300)
        sizes = {k: p.stat().st_size / 1e6 for k, p in paths.items()}
    ratio = float(np.median(times["int8"]) / np.median(times["fp32"]))
    return {"ratio": ratio, "int8_tables_ms": [round(t, 3) for t in times["int8"]],
            "fp32_tables_ms": [round(t, 3) for t in times["fp32"]], "size_mb": sizes, "deliverable_has_int8_tables": int8_tables}


def _restore_tables(graph, fp32: dict) -> None:
    """Undo quantize_gather_tables in `graph` (in place): each Gather(q) -> Cast -> Mul(Gather(scale))
    chain that computes `out` becomes one Gather of the FP32 table of the same name."""
    from onnx import helper

    g = graph.graph
    inits = {i.name: i for i in g.initializer}
    for node in list(g.node):
        if node.op_type != "Gather" or not node.input[0].endswith("_int8"):
            continue
        name, out = node.input[0][: -len("_int8")], node.output[0][: -len("_q")]
        chain = [n for n in g.node if set(n.output) & {f"{out}_q", f"{out}_s", f"{out}_f", out}]
        at = min(list(g.node).index(n) for n in chain)
        for n in chain:
            g.node.remove(n)
        g.node.insert(at, helper.make_node("Gather", [name, node.input[1]], [out], name=f"{name}_gather", axis=0))
        g.initializer.remove(inits[f"{name}_int8"])
        g.initializer.remove(inits[f"{name}_scale"])
        g.initializer.append(fp32[name])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="build-minilm")
    ap.add_argument("--report", default=None, help="an existing build's report.json (skips the build)")
    ap.add_argument("--rounds", type=int, default=5, help="rounds of the embedding-table timing")
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
    tables = embedding_tables_cost(report.parent, rounds=args.rounds)
    rows = [
        ("teacher FP32 p50 / student INT8 p50 @128", p50(t) / p50(s8), ">= 4", p50(t) / p50(s8) >= 4),
        ("student INT8 cosine fidelity", s8["fidelity_cosine"], ">= 0.95", s8["fidelity_cosine"] >= 0.95),
        ("student INT8 neighbour overlap @10", s8["neighbour_overlap_at_10"], ">= 0.80", s8["neighbour_overlap_at_10"] >= 0.80),
        ("student INT8 file (MB)", s8["size_bytes"] / 1e6, "<= 25", s8["size_bytes"] / 1e6 <= 25),
        ("p50 @128, INT8 tables / FP32 tables (same graph, one run)", tables["ratio"], "<= 1.05", tables["ratio"] <= 1.05),
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
    print(f"\nembedding tables, p50 @128 per round (ms): INT8 {tables['int8_tables_ms']}, FP32 {tables['fp32_tables_ms']}")
    out = write_results("minilm-embed", rows, build_s=seconds, models=m, training=r["training"], stages=r["stages"],
                        environment=env, embedding_tables=tables)
    print(f"\nwritten to {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
