"""One model, one fresh process: latency, throughput, peak RSS and outputs on the runtime.
Run as `python -m edgekd._bench_worker CONFIG.json RESULT.json`; imports no torch."""

from __future__ import annotations

import json
import os
import resource
import sys
import time

import numpy as np


def _rss_mb() -> float:
    """Peak RSS of this process so far. VmHWM, not getrusage's ru_maxrss: Linux carries ru_maxrss
    across exec, so a child of a large parent would report the parent's peak."""
    try:
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def main(cfg_path: str, out_path: str) -> None:
    cfg = json.loads(open(cfg_path).read())
    pinned = None
    if cfg.get("pin") and hasattr(os, "sched_setaffinity"):
        # the first `threads` cores this process may use, so runs are comparable and not migrated
        pinned = sorted(os.sched_getaffinity(0))[: cfg["threads"]]
        os.sched_setaffinity(0, pinned)
    from edgekd.runtimes import runtimes

    factory = runtimes.get(cfg["runtime"])
    # import the runtime library itself before measuring the baseline
    __import__({"onnxruntime": "onnxruntime", "openvino": "openvino"}[cfg["runtime"]])
    rss_import = _rss_mb()
    data = np.load(cfg["inputs"])
    x = data["x"]
    one = np.ascontiguousarray(x[:1])
    run = factory(cfg["model"], threads=cfg["threads"])
    run(one)
    for _ in range(cfg["warmup"]):
        run(one)
    lat = np.empty(cfg["iterations"])
    for i in range(cfg["iterations"]):
        t = time.perf_counter_ns()
        run(one)
        lat[i] = time.perf_counter_ns() - t
    lat /= 1e6
    throughput = {}
    for bs in cfg["batch_sizes"][1:]:
        xb = np.ascontiguousarray(np.resize(x, (bs, *x.shape[1:])))
        run(xb)
        reps = max(5, cfg["iterations"] // (4 * bs))
        t = time.perf_counter()
        for _ in range(reps):
            run(xb)
        throughput[str(bs)] = bs * reps / (time.perf_counter() - t)
    peak = _rss_mb()
    result = {
        "latency_ms": {"p50": float(np.percentile(lat, 50)), "p90": float(np.percentile(lat, 90)),
                       "p99": float(np.percentile(lat, 99)), "mean": float(lat.mean()),
                       "std": float(lat.std()), "min": float(lat.min())},
        # the whole distribution, as its 0..100th percentiles (for the report's distribution plot)
        "latency_percentiles_ms": [float(v) for v in np.percentile(lat, np.arange(101))],
        "iterations": cfg["iterations"], "warmup": cfg["warmup"], "threads": cfg["threads"], "pinned_cores": pinned,
        "throughput_per_s": throughput,
        "peak_rss_mb": peak, "rss_after_import_mb": rss_import, "rss_increase_mb": peak - rss_import,
    }
    outs = [run(np.ascontiguousarray(x[i:i + 100])) for i in range(0, len(x), 100)]
    np.save(cfg["outputs"], np.concatenate(outs).astype(np.float32))
    if cfg.get("profile") and cfg["runtime"] == "onnxruntime":
        result["op_profile"] = _profile_ort(cfg, one)
    with open(out_path, "w") as f:
        json.dump(result, f)


def _profile_ort(cfg, one) -> dict:
    """Share of kernel time per op type, from onnxruntime's profiler (batch 1)."""
    import os
    import tempfile

    from edgekd.runtimes import onnxruntime_runner

    with tempfile.TemporaryDirectory() as d:
        run = onnxruntime_runner(cfg["model"], threads=cfg["threads"], profile_prefix=os.path.join(d, "p"))
        for _ in range(300):
            run(one)
        events = json.loads(open(run.session.end_profiling()).read())
    by_op: dict[str, float] = {}
    for e in events:
        if e.get("cat") == "Node" and e.get("name", "").endswith("_kernel_time"):
            op = e.get("args", {}).get("op_name", "?")
            by_op[op] = by_op.get(op, 0.0) + e.get("dur", 0)
    total = sum(by_op.values()) or 1.0
    return {op: round(us / total, 4) for op, us in sorted(by_op.items(), key=lambda kv: -kv[1])}


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
