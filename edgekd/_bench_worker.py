"""One model, one fresh process: latency, throughput, peak RSS and outputs on the runtime.
Run as `python -m edgekd._bench_worker CONFIG.json RESULT.json`; imports no torch.

The inputs are an explicit spec (edgekd.bench.BenchInputs, saved as .npz): evaluation feeds, whose
outputs are stitched back into row order, and named batch-1 timing cases, the last of which is the
headline latency. Nothing here looks at what the inputs mean."""

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


def _summary(lat: np.ndarray) -> dict:
    return {"p50": float(np.percentile(lat, 50)), "p90": float(np.percentile(lat, 90)),
            "p99": float(np.percentile(lat, 99)), "mean": float(lat.mean()), "std": float(lat.std()),
            "min": float(lat.min()), "n": int(len(lat))}


def _feeds(data, prefix: str, count: int) -> list[dict]:
    """Feeds saved as '<prefix><i>.<input name>' keys."""
    out: list[dict] = [{} for _ in range(count)]
    for key in data.files:
        head, _, name = key.partition(".")
        if head.startswith(prefix) and head[len(prefix):].isdigit():
            out[int(head[len(prefix):])][name] = data[key]
    return out


def _arg(feed: dict):
    """A one-input feed goes in positionally (its name is the model's business), several by name."""
    return next(iter(feed.values())) if len(feed) == 1 else feed


def _time(run, feed, cfg) -> np.ndarray:
    """Batch-1 latencies (ms) after warm-up; with `seconds_per_case`, a slow model stops a case once it
    has 100 runs and spent that long, so a 40 ms teacher does not take minutes."""
    x = _arg(feed)
    budget = cfg.get("seconds_per_case")
    run(x)
    t_end = time.perf_counter() + budget / 4 if budget else None
    for i in range(cfg["warmup"]):
        run(x)
        if t_end and time.perf_counter() > t_end and i >= 5:
            break
    lat = []
    t_end = time.perf_counter() + budget if budget else None
    for i in range(cfg["iterations"]):
        t = time.perf_counter_ns()
        run(x)
        lat.append((time.perf_counter_ns() - t) / 1e6)
        if t_end and i >= 100 and time.perf_counter() > t_end:
            break
    return np.array(lat)


def main(cfg_path: str, out_path: str) -> None:
    cfg = json.loads(open(cfg_path).read())
    pinned = None
    if cfg.get("pin") and hasattr(os, "sched_setaffinity"):
        # the first `threads` cores this process may use, so runs are comparable and not migrated
        pinned = sorted(os.sched_getaffinity(0))[: cfg["threads"]]
        os.sched_setaffinity(0, pinned)
    from edgekd import backends

    backend = backends.for_file(cfg["model"])
    if backend.runtime_only is not None:
        backend.runtime_only()
    # import the runtime library itself before measuring the baseline
    # (executorch.runtime loads libtorch and the runtime library with it)
    __import__(backend.package)
    rss_import = _rss_mb()
    data = np.load(cfg["inputs"])
    cases = dict(zip(cfg["cases"], _feeds(data, "case", len(cfg["cases"]))))
    evals = _feeds(data, "eval", cfg["eval_batches"])
    run = backend.load(cfg["model"], threads=cfg["threads"])
    by_case, lat = {}, None
    for label, feed in cases.items():
        lat = _time(run, feed, cfg)
        by_case[label] = _summary(lat)
    headline = cfg["cases"][-1]
    throughput = {}
    for bs in cfg["batch_sizes"][1:]:
        xb = {k: np.ascontiguousarray(np.resize(v, (bs, *v.shape[1:]))) for k, v in evals[0].items()}
        run(_arg(xb))
        reps = max(5, cfg["iterations"] // (4 * bs))
        t = time.perf_counter()
        for _ in range(reps):
            run(_arg(xb))
        throughput[str(bs)] = bs * reps / (time.perf_counter() - t)
    peak = _rss_mb()
    outs = np.concatenate([run(_arg({k: np.ascontiguousarray(v) for k, v in f.items()})) for f in evals])
    if "order" in data.files:  # rows were evaluated in another order (e.g. batches of similar length)
        back = np.empty_like(outs)
        back[data["order"]] = outs
        outs = back
    np.save(cfg["outputs"], outs.astype(np.float32))
    result = {
        "latency_ms": by_case[headline],
        # the whole distribution of the headline case, as its 0..100th percentiles (the report's plot)
        "latency_percentiles_ms": [float(v) for v in np.percentile(lat, np.arange(101))],
        "latency_by_case": by_case,
        "iterations": cfg["iterations"], "warmup": cfg["warmup"], "threads": cfg["threads"], "pinned_cores": pinned,
        "throughput_per_s": throughput,
        "peak_rss_mb": peak, "rss_after_import_mb": rss_import, "rss_increase_mb": peak - rss_import,
    }
    if cfg.get("profile") and backend.profiles:
        result.update(_profile(backend, cfg, _arg(cases[headline])))
    with open(out_path, "w") as f:
        json.dump(result, f)


def _profile(backend, cfg, one, *, runs: int = 300, seconds: float = 3.0) -> dict:
    """Report fields from the runtime's own per-kernel timing (batch 1; up to `runs` runs or `seconds`,
    at least 30): `op_profile`, the share of kernel time per op type, and `op_profile_detail`, what else
    the profiler tells (its name; OpenVINO: time by execution precision, reference kernels)."""
    run, collect = backend.profile(cfg["model"], threads=cfg["threads"])
    t_end = time.perf_counter() + seconds
    for i in range(runs):
        run(one)
        if i >= 30 and time.perf_counter() > t_end:
            break
    detail = collect()
    return {"op_profile": detail.pop("by_op"), "op_profile_detail": detail}


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
