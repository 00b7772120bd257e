"""Benchmark harness: each model runs in its own fresh process on the target's runtime."""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from .errors import EdgeKDError


def benchmark(model_path: Path, *, runtime: str, inputs: Path, threads: int, warmup: int, iterations: int,
              batch_sizes: list[int], profile: bool = False) -> tuple[dict, np.ndarray]:
    """Latency/throughput/peak-RSS summary and the model's outputs on `inputs` (an .npz with `x`)."""
    with tempfile.TemporaryDirectory() as d:
        cfg = {"model": str(model_path), "runtime": runtime, "inputs": str(inputs), "threads": threads,
               "warmup": warmup, "iterations": iterations, "batch_sizes": batch_sizes,
               "outputs": str(Path(d) / "out.npy"), "profile": profile}
        cfg_path, res_path = Path(d) / "cfg.json", Path(d) / "res.json"
        cfg_path.write_text(json.dumps(cfg))
        proc = subprocess.run([sys.executable, "-m", "edgekd._bench_worker", str(cfg_path), str(res_path)],
                              capture_output=True, text=True)
        if proc.returncode != 0 or not res_path.exists():
            tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
            raise EdgeKDError(f"benchmarking '{model_path.name}' on {runtime} failed: {tail}")
        return json.loads(res_path.read_text()), np.load(cfg["outputs"])
