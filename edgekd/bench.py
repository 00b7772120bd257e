"""Benchmark harness: each model runs in its own fresh process on the target's runtime."""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import EdgeKDError


@dataclass
class BenchInputs:
    """What a task gives the benchmark, as data: evaluation feeds (their outputs are stitched back into
    row order by `order`, the row of each output) and named batch-1 timing cases, the last being the
    headline latency. A feed is {input name: array}; a one-input feed goes to the model positionally."""
    eval: list[dict]
    cases: dict[str, dict]
    order: np.ndarray | None = None
    case_key: str = ""  # report.json key of the per-case latencies ("" when there is one case)
    seconds_per_case: float | None = None  # a slow model stops a case after this long (once it has 100 runs)
    throughput: bool = True  # time the target's larger batch sizes too

    def save(self, path: Path) -> dict:
        """Arrays to `path` (.npz); returns the worker's part of the config."""
        arrays = {f"eval{i}.{k}": v for i, f in enumerate(self.eval) for k, v in f.items()}
        arrays.update({f"case{i}.{k}": v for i, f in enumerate(self.cases.values()) for k, v in f.items()})
        if self.order is not None:
            arrays["order"] = np.asarray(self.order)
        np.savez(path, **arrays)
        return {"inputs": str(path), "cases": list(self.cases), "eval_batches": len(self.eval),
                "seconds_per_case": self.seconds_per_case}


def rows_in_batches(x: np.ndarray, size: int = 100) -> list[dict]:
    """Evaluation feeds of a one-input model: `x` in batches of `size` rows."""
    return [{"x": np.ascontiguousarray(x[i:i + size])} for i in range(0, len(x), size)]


def benchmark(model_path: Path, *, inputs: BenchInputs, threads: int, warmup: int, iterations: int,
              batch_sizes: list[int], profile: bool = False, pin: bool = False) -> tuple[dict, np.ndarray]:
    """Latency/throughput/peak-RSS summary and the model's outputs on `inputs.eval`, measured in a
    fresh process on the runtime of the file's format."""
    with tempfile.TemporaryDirectory() as d:
        cfg = {"model": str(model_path), "threads": threads, "warmup": warmup, "iterations": iterations,
               "batch_sizes": batch_sizes if inputs.throughput else [1], "outputs": str(Path(d) / "out.npy"),
               "profile": profile, "pin": pin, **inputs.save(Path(d) / "in.npz")}
        cfg_path, res_path = Path(d) / "cfg.json", Path(d) / "res.json"
        cfg_path.write_text(json.dumps(cfg))
        proc = subprocess.run([sys.executable, "-m", "edgekd._bench_worker", str(cfg_path), str(res_path)],
                              capture_output=True, text=True)
        if proc.returncode != 0 or not res_path.exists():
            tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
            raise EdgeKDError(f"benchmarking '{Path(model_path).name}' failed: {tail}")
        res = json.loads(res_path.read_text())
        if inputs.case_key:
            res[inputs.case_key] = res["latency_by_case"]
        return res, np.load(cfg["outputs"])


@dataclass(frozen=True)
class BenchSettings:
    """`edgekd bench` settings (key=value); empty or negative values take the target profile's."""
    target: str = "cpu-int8"
    threads: list[int] = field(default_factory=list)
    iterations: int = 0
    warmup: int = -1
    batch_sizes: list[int] = field(default_factory=list)
    seq_lens: list[int] = field(default_factory=lambda: [16, 64, 128])  # text models

    def __post_init__(self):
        from .errors import RecipeError

        for k in ("threads", "batch_sizes", "seq_lens"):
            if any(v < 1 for v in getattr(self, k)):
                raise RecipeError(f"{k} must be positive, got {getattr(self, k)}")


def bench_settings(texts: list[str]) -> BenchSettings:
    import typing
    from dataclasses import fields

    from .errors import RecipeError
    from .overrides import coerce, parse_override
    from .registry import closest

    hints, known = typing.get_type_hints(BenchSettings), [f.name for f in fields(BenchSettings)]
    kwargs = {}
    for text in texts:
        key, value = parse_override(text)
        if key not in known:
            raise RecipeError(f"unknown bench setting '{key}'{closest(key, known)} ({', '.join(known)})")
        kwargs[key] = coerce(key, hints[key], value, from_text=True)
    return BenchSettings(**kwargs)


def check_model_file(path: Path):
    """The backend of an exported model file, after checking it is there and loads as a model."""
    from . import backends
    from .errors import InputError

    if not path.is_file():
        raise InputError(f"model file '{path}' does not exist")
    b = backends.for_file(path)
    if b.check is not None:
        b.check(path)
    return b


def input_spec(path: Path) -> list[dict]:
    """[{name, shape, dtype}] of a model's inputs: from manifest.json beside it, else its signature."""
    from . import backends
    from .errors import InputError

    manifest = path.parent / "manifest.json"
    if manifest.is_file():
        return json.loads(manifest.read_text())["inputs"]
    b = backends.for_file(path)
    if b.signature is None:
        raise InputError(f"'{path}' has no manifest.json beside it; edgekd bench reads a {b.extension} file's inputs "
                         "from the manifest its build wrote")
    return b.signature(path)


def synthetic_inputs(spec: list[dict], seq_lens, *, seed: int = 0, rows: int = 16) -> BenchInputs:
    """Inputs from a spec alone: float inputs standard normal; integer inputs all ones (a valid token id,
    attention mask and segment id alike: latency does not depend on the values). A symbolic axis past
    the batch is timed at each of `seq_lens`; the evaluation rows use the longest."""
    rng = np.random.default_rng(seed)
    variable = any(not isinstance(d, int) for i in spec for d in i["shape"][1:])
    lens = sorted(seq_lens) if variable else [0]

    def feed(n: int, s: int) -> dict:
        out = {}
        for i in spec:
            shape = [n] + [d if isinstance(d, int) else s for d in i["shape"][1:]]
            dtype = np.dtype(i.get("dtype", "float32"))
            out[i["name"]] = (rng.standard_normal(shape).astype(dtype) if dtype.kind == "f"
                              else np.ones(shape, dtype))
        return out

    fixed = next((i["shape"][0] for i in spec if isinstance(i["shape"][0], int)), 0)
    cases = {str(s) if variable else "1": feed(1, s) for s in lens}
    return BenchInputs(eval=[feed(fixed or rows, max(lens))], cases=cases, throughput=not variable)


def compare(models: list[Path], *, threads: list[int], warmup: int, iterations: int, batch_sizes: list[int],
            baseline: Path | None = None, seed: int = 0, seq_lens: list[int] = (16, 64, 128)) -> list[dict]:
    """Benchmark every model at every thread count, each run in a fresh process, models interleaved
    (round-robin) so machine drift hits them alike; speedups are against `baseline` (default: the first)."""
    from .backends import file_size

    found = {m: check_model_file(m) for m in models}
    base = baseline or models[0]
    if base not in found:
        found[base] = check_model_file(base)
    order = [base] + [m for m in models if m != base]
    inputs = {m: synthetic_inputs(input_spec(m), seq_lens, seed=seed) for m in order}
    rows = []
    for t in threads:
        for m in order:
            res, _ = benchmark(m, inputs=inputs[m], threads=t, warmup=warmup, iterations=iterations,
                               batch_sizes=batch_sizes)
            rows.append({"model": str(m), "runtime": found[m].runtime, "threads": t, "size_bytes": file_size(m), **res})
    for r in rows:
        ref = next(x for x in rows if x["model"] == str(base) and x["threads"] == r["threads"])
        r["speedup_vs_baseline"] = ref["latency_ms"]["p50"] / r["latency_ms"]["p50"]
    return rows


def bench_models(d: Path, export_dir: Path, target, inputs: BenchInputs) -> dict:
    """Every model in its own fresh process at each thread count (models interleaved within a count);
    saves each model's outputs on the evaluation inputs as <name>.outputs.npy."""
    from tqdm import tqdm

    from .artifacts import MODEL_NAMES, model_file

    results = {}
    files = {n: model_file(n, target) for n in MODEL_NAMES}
    counts = [target.threads] + [t for t in target.threads_sweep if t != target.threads]
    runs = [(t, n) for t in counts for n in MODEL_NAMES]  # models interleaved within each thread count
    for threads, name in tqdm(runs, desc="benchmark", leave=False, disable=None):
        primary = threads == target.threads
        res, outs = benchmark(export_dir / files[name], inputs=inputs, threads=threads, warmup=target.warmup,
                              iterations=target.iterations, batch_sizes=target.batch_sizes, pin=target.pin_cores,
                              profile=primary and name.startswith("student-"))
        if primary:
            np.save(d / f"{name}.outputs.npy", outs)
            results[name] = res
        results[name].setdefault("latency_by_threads", {})[str(threads)] = res["latency_ms"]
    return results
