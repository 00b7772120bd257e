"""What the ratio scripts share: the goal table every one prints and writes (rows of measure, value,
goal, met), and text models timed against each other."""

from __future__ import annotations

import json
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def cpu_of(report: dict) -> str:
    """'MODEL (avx512f, avx512_vnni, amx_int8), N cores' from a report's environment: results measured on
    different CPUs are kept apart by it, as INT8 / INT4 speed ratios move with these instruction sets."""
    env = report.get("environment") or {}
    isa = [k for k in ("avx512f", "avx512_vnni", "amx_int8") if (env.get("isa") or {}).get(k)]
    return f"{env.get('cpu') or 'cpu'} ({', '.join(isa) or 'AVX2'}), {env.get('logical_cpus')} cores"


def print_goals(title: str, rows: list[tuple]) -> None:
    width = max(len(r[0]) for r in rows) + 2
    print(title)
    print(f"{'measure':{width}s} {'value':>9s}  {'goal':8s} met")
    for name, value, goal, ok in rows:
        print(f"{name:{width}s} {value:9.3f}  {goal:8s} {'yes' if ok else 'NO'}")


def write_results(name: str, rows: list[tuple], **extra) -> Path:
    """benchmarks/results/NAME.json: the rows, then `extra` (models, stages, environment, ...)."""
    out = RESULTS / f"{name}.json"
    out.write_text(json.dumps({"rows": [{"measure": n, "value": v, "goal": g, "met": bool(ok)} for n, v, g, ok in rows],
                               **extra}, indent=2))
    return out


def interleaved_p50_128(paths: dict[str, Path], *, rounds: int, iterations: int) -> dict[str, list[float]]:
    """{name: p50 ms per round} at 128 tokens (onnxruntime, 1 thread, batch 1) of text models timed
    against each other: interleaved within each round, each run in a fresh process, so that the
    machine's drift lands on all of them alike."""
    import numpy as np

    from edgekd.bench import BenchInputs, benchmark

    times: dict[str, list[float]] = {k: [] for k in paths}
    ids = np.random.default_rng(0).integers(1000, 20000, (1, 128)).astype(np.int64)
    feed = {"input_ids": ids, "attention_mask": np.ones_like(ids)}
    inputs = BenchInputs(eval=[feed], cases={"128": feed}, seconds_per_case=6.0, throughput=False)
    for _ in range(rounds):
        for k, p in paths.items():
            res, _ = benchmark(p, inputs=inputs, threads=1, warmup=20, iterations=iterations, batch_sizes=[1])
            times[k].append(res["latency_by_case"]["128"]["p50"])
    return times
