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


def benchmark(model_path: Path, *, runtime: str, inputs: Path, threads: int, warmup: int, iterations: int,
              batch_sizes: list[int], profile: bool = False, pin: bool = False,
              seq_lens: list[int] | None = None) -> tuple[dict, np.ndarray]:
    """Latency/throughput/peak-RSS summary and the model's outputs on `inputs`: an .npz with `x`, or
    for text models `input_ids`/`attention_mask` (evaluation) and `lat_S` (S tokens, per seq_lens)."""
    with tempfile.TemporaryDirectory() as d:
        cfg = {"model": str(model_path), "runtime": runtime, "inputs": str(inputs), "threads": threads,
               "warmup": warmup, "iterations": iterations, "batch_sizes": batch_sizes,
               "outputs": str(Path(d) / "out.npy"), "profile": profile, "pin": pin, "seq_lens": seq_lens or []}
        cfg_path, res_path = Path(d) / "cfg.json", Path(d) / "res.json"
        cfg_path.write_text(json.dumps(cfg))
        proc = subprocess.run([sys.executable, "-m", "edgekd._bench_worker", str(cfg_path), str(res_path)],
                              capture_output=True, text=True)
        if proc.returncode != 0 or not res_path.exists():
            tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
            raise EdgeKDError(f"benchmarking '{model_path.name}' on {runtime} failed: {tail}")
        return json.loads(res_path.read_text()), np.load(cfg["outputs"])


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


def check_model_file(path: Path) -> str:
    """The runtime for an exported model file, after checking it is there and loads as a model."""
    from .errors import InputError
    from .artifacts import runtime_for

    if not path.is_file():
        raise InputError(f"model file '{path}' does not exist")
    if path.suffix not in (".onnx", ".ort", ".xml", ".pte"):
        raise InputError(f"'{path}' is not a model edgekd can benchmark; give an .onnx, .ort, OpenVINO .xml "
                         "or ExecuTorch .pte file")
    if path.suffix == ".onnx":
        import onnx

        try:
            onnx.checker.check_model(onnx.load(str(path)))
        except Exception as e:  # noqa: BLE001 - protobuf decode errors and checker errors alike
            first = (str(e).strip().splitlines() or [type(e).__name__])[0][:160]
            raise InputError(f"'{path}' is not a valid ONNX model ({first}); re-export it") from None
    return runtime_for(str(path))


def is_text_model(path: Path) -> bool:
    """A text model takes input_ids (and attention_mask) instead of one float tensor."""
    manifest = path.parent / "manifest.json"
    if manifest.is_file():
        return any(i["name"] == "input_ids" for i in json.loads(manifest.read_text()).get("inputs", []))
    if path.suffix == ".xml":
        import openvino as ov

        return any("input_ids" in i.get_names() for i in ov.Core().read_model(str(path)).inputs)
    if path.suffix == ".pte":
        return False
    import onnxruntime as ort

    return any(i.name == "input_ids" for i in ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).get_inputs())


def input_spec(path: Path) -> tuple[list[int], str]:
    """(shape with batch 1, dtype) from manifest.json beside the model, else the model's signature."""
    from .errors import InputError

    manifest = path.parent / "manifest.json"
    if manifest.is_file():
        first = json.loads(manifest.read_text())["inputs"][0]
        shape = [1 if not isinstance(d, int) else d for d in first["shape"]]
        return shape, first.get("dtype", "float32")
    if path.suffix == ".pte":
        raise InputError(f"'{path}' has no manifest.json beside it; edgekd bench reads a .pte's input shape from the "
                         "manifest its build wrote")
    if path.suffix == ".xml":
        import openvino as ov

        ps = ov.Core().read_model(str(path)).inputs[0].get_partial_shape()
        return [d.get_length() if d.is_static else 1 for d in ps], "float32"
    import onnxruntime as ort

    inp = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).get_inputs()[0]
    dtype = {"tensor(float)": "float32", "tensor(float16)": "float16", "tensor(int64)": "int64"}.get(inp.type, "float32")
    return [d if isinstance(d, int) else 1 for d in inp.shape], dtype


def compare(models: list[Path], *, threads: list[int], warmup: int, iterations: int, batch_sizes: list[int],
            baseline: Path | None = None, seed: int = 0, seq_lens: list[int] = (16, 64, 128)) -> list[dict]:
    """Benchmark every model at every thread count, each run in a fresh process, models interleaved
    (round-robin) so machine drift hits them alike; speedups are against `baseline` (default: the first)."""
    runtimes_ = {m: check_model_file(m) for m in models}
    base = baseline or models[0]
    if base not in runtimes_:
        runtimes_[base] = check_model_file(base)
    order = [base] + [m for m in models if m != base]
    rows = []
    with tempfile.TemporaryDirectory() as d:
        inputs, text = {}, {}
        for m in order:
            rng = np.random.default_rng(seed)
            inputs[m] = Path(d) / f"in{len(inputs)}.npz"
            text[m] = is_text_model(m)
            if text[m]:  # token ids from the middle of a BERT-sized vocabulary; every length in seq_lens
                ids = rng.integers(1000, 2000, (16, max(seq_lens))).astype(np.int64)
                np.savez(inputs[m], input_ids=ids, attention_mask=np.ones_like(ids),
                         **{f"lat_{s}": ids[:1, :s] for s in seq_lens})
                continue
            shape, dtype = input_spec(m)
            x = rng.standard_normal((16, *shape[1:])).astype(dtype) if dtype.startswith("float") \
                else rng.integers(0, 100, (16, *shape[1:])).astype(dtype)
            np.savez(inputs[m], x=x)
        for t in threads:
            for m in order:
                res, _ = benchmark(m, runtime=runtimes_[m], inputs=inputs[m], threads=t, warmup=warmup,
                                   iterations=iterations, batch_sizes=batch_sizes,
                                   seq_lens=sorted(seq_lens) if text[m] else None)
                size = m.stat().st_size + (m.with_suffix(".bin").stat().st_size if m.suffix == ".xml" else 0)
                rows.append({"model": str(m), "runtime": runtimes_[m], "threads": t, "size_bytes": size, **res})
    for r in rows:
        ref = next(x for x in rows if x["model"] == str(base) and x["threads"] == r["threads"])
        r["speedup_vs_baseline"] = ref["latency_ms"]["p50"] / r["latency_ms"]["p50"]
    return rows


def bench_models(d: Path, export_dir: Path, target, inputs: dict[str, np.ndarray], *,
               seq_lens: list[int] | None = None) -> dict:
    """Every model in its own fresh process at each thread count (models interleaved within a count);
    saves each model's outputs on the evaluation inputs as <name>.outputs.npy."""
    from tqdm import tqdm

    from .artifacts import MODEL_NAMES, model_file

    from .bench import benchmark

    path = d / "inputs.npz"
    np.savez(path, **inputs)
    results = {}
    files = {n: model_file(n, target) for n in MODEL_NAMES}
    counts = [target.threads] + [t for t in target.threads_sweep if t != target.threads]
    runs = [(t, n) for t in counts for n in MODEL_NAMES]  # models interleaved within each thread count
    for threads, name in tqdm(runs, desc="benchmark", leave=False, disable=None):
        primary = threads == target.threads
        res, outs = benchmark(export_dir / files[name], runtime=target.runtime, inputs=path, threads=threads,
                              warmup=target.warmup, iterations=target.iterations,
                              batch_sizes=[1] if seq_lens else target.batch_sizes, pin=target.pin_cores,
                              profile=primary and target.runtime == "onnxruntime" and name.startswith("student-"),
                              seq_lens=seq_lens)
        if primary:
            np.save(d / f"{name}.outputs.npy", outs)
            results[name] = res
        results[name].setdefault("latency_by_threads", {})[str(threads)] = res["latency_ms"]
    path.unlink()
    return results
