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
    # (executorch.runtime loads libtorch, the runtime library and ExecuTorch's exporter with it)
    __import__({"onnxruntime": "onnxruntime", "openvino": "openvino",
                "executorch": "executorch.runtime"}[cfg["runtime"]])
    rss_import = _rss_mb()
    data = np.load(cfg["inputs"])
    if "input_ids" in data:
        return _main_text(cfg, data, factory, rss_import, pinned, out_path)
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


def _summary(lat: np.ndarray) -> dict:
    return {"p50": float(np.percentile(lat, 50)), "p90": float(np.percentile(lat, 90)),
            "p99": float(np.percentile(lat, 99)), "mean": float(lat.mean()), "std": float(lat.std()),
            "min": float(lat.min()), "n": int(len(lat))}


def _main_text(cfg, data, factory, rss_import, pinned, out_path) -> None:
    """Text models: batch-1 latency at each sequence length in `seq_lens` (inputs `lat_S`: real text
    filling exactly S tokens), then outputs for the evaluation texts. A slow model stops timing a
    length after `seconds_per_length` once it has 100 runs, so a 40 ms teacher does not take minutes."""
    run = factory(cfg["model"], threads=cfg["threads"])
    by_seq, pcts = {}, None
    budget = cfg.get("seconds_per_length", 6.0)
    for s in cfg["seq_lens"]:
        ids = np.ascontiguousarray(data[f"lat_{s}"][:1])
        feed = {"input_ids": ids, "attention_mask": np.ones_like(ids)}
        run(feed)
        t_end = time.perf_counter() + budget / 4
        for i in range(cfg["warmup"]):
            run(feed)
            if time.perf_counter() > t_end and i >= 5:
                break
        lat = []
        t_end = time.perf_counter() + budget
        for i in range(cfg["iterations"]):
            t = time.perf_counter_ns()
            run(feed)
            lat.append((time.perf_counter_ns() - t) / 1e6)
            if i >= 100 and time.perf_counter() > t_end:
                break
        lat = np.array(lat)
        by_seq[str(s)] = _summary(lat)
        pcts = [float(v) for v in np.percentile(lat, np.arange(101))]  # the longest length's distribution
    longest = str(cfg["seq_lens"][-1])
    peak = _rss_mb()
    ids, mask = data["input_ids"], data["attention_mask"]
    order = np.argsort(mask.sum(1), kind="stable")
    outs = None
    for i in range(0, len(ids), 32):  # batches of similar length, trimmed to their longest text
        idx = order[i:i + 32]
        s = max(1, int(mask[idx].sum(1).max()))
        y = run({"input_ids": np.ascontiguousarray(ids[idx, :s]), "attention_mask": np.ascontiguousarray(mask[idx, :s])})
        if outs is None:
            outs = np.zeros((len(ids), y.shape[1]), np.float32)
        outs[idx] = y
    np.save(cfg["outputs"], outs)
    result = {"latency_ms": by_seq[longest], "latency_by_seq": by_seq, "latency_percentiles_ms": pcts,
              "sequence_length": int(longest), "iterations": cfg["iterations"], "warmup": cfg["warmup"],
              "threads": cfg["threads"], "pinned_cores": pinned, "throughput_per_s": {},
              "peak_rss_mb": peak, "rss_after_import_mb": rss_import, "rss_increase_mb": peak - rss_import}
    if cfg.get("profile") and cfg["runtime"] == "onnxruntime":
        ids = np.ascontiguousarray(data[f"lat_{longest}"][:1])
        result["op_profile"] = _profile_ort(cfg, {"input_ids": ids, "attention_mask": np.ones_like(ids)}, runs=30)
    with open(out_path, "w") as f:
        json.dump(result, f)


def _profile_ort(cfg, one, runs: int = 300) -> dict:
    """Share of kernel time per op type, from onnxruntime's profiler (batch 1)."""
    import os
    import tempfile

    from edgekd.runtimes import onnxruntime_runner

    with tempfile.TemporaryDirectory() as d:
        run = onnxruntime_runner(cfg["model"], threads=cfg["threads"], profile_prefix=os.path.join(d, "p"))
        for _ in range(runs):
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
