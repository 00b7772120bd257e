"""INT8 that pays: which kinds of layer run INT8 is decided by timing them on the target's runtime.

Integer kernels are not faster everywhere. On x86, onnxruntime's FP32 depthwise and small convolutions
run in a blocked (NCHWc) layout with AVX-512 that its QLinearConv does not match, so a MobileNet on small
images can be slower in INT8 than in FP32, while its pointwise convolutions gain. The search times, on the
target's runtime and one input, the FP32 student, the all-INT8 student and the all-INT8 student with one
kind of layer left float (depthwise convolutions, grouped convolutions, other convolutions, linear
layers), greedily keeping each kind float when that is faster beyond the timing's spread. Every model is
timed in this process, interleaved over rounds, so that machine drift hits them alike. The INT8 model
shipped is the fastest found; when even that is slower than FP32, the report says so (build the FP32
target instead). `quantize.int8_layers = "all"` skips the search."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

import numpy as np

# a kind stays float only when that is at least this much faster: smaller differences are timing noise
MIN_GAIN = 0.03


def choose_float_kinds(layers: dict[str, str], write: Callable[[list[str], Path], None], fp32: Path, *,
                       runtime: str, threads: int, x: np.ndarray, folder: Path, fixed: list[str] = (),
                       log=None) -> dict:
    """layers: {layer: kind} of the INT8 layers (edgekd.quantize.int8_layers); write(float_layers, path)
    writes the INT8 ONNX with those layers float; fixed: layers that stay float anyway (the accuracy
    budget's). -> {"float_layers", "float_kinds", "p50_ms": {candidate: ms}, "int8_vs_fp32", "method"}."""
    from .backends import for_runtime, load

    backend = for_runtime(runtime)

    def runner(onnx_path: Path):
        path = onnx_path
        if backend.make is not None:  # the runtime's own format (OpenVINO IR)
            path = onnx_path.with_suffix(backend.extension)
            backend.make(onnx_path, path)
        return load(path, threads=threads)

    kinds: dict[str, list[str]] = {}
    for name, kind in layers.items():
        if name not in fixed:
            kinds.setdefault(_family(kind), []).append(name)
    folder.mkdir(parents=True, exist_ok=True)

    def model(float_kinds: tuple[str, ...]) -> Path:
        path = folder / f"int8-{'-'.join(float_kinds) or 'all'}.onnx"
        write([*fixed, *(n for k in float_kinds for n in kinds[k])], path)
        return path

    runs = {"fp32": runner(fp32), (): runner(model(()))}
    best: tuple[str, ...] = ()
    tried = {}
    for kind in sorted(kinds, key=lambda k: -len(kinds[k])):
        trial = tuple(sorted((*best, kind)))
        if len(trial) == len(kinds):  # every layer float: that is the FP32 student with extra nodes
            continue
        runs[trial] = runner(model(trial))
        p50 = _p50({k: runs[k] for k in ("fp32", best, trial)}, x)
        tried[" + ".join(trial) + " float"] = {"ms": p50[trial], "vs": " + ".join(best) + " float" if best else "all INT8",
                                               "vs_ms": p50[best], "fp32_ms": p50["fp32"]}
        if p50[trial] < (1 - MIN_GAIN) * p50[best]:
            best = trial
    p50 = _p50({k: runs[k] for k in dict.fromkeys(("fp32", (), best))}, x)
    chosen = [*fixed, *(n for k in best for n in kinds[k])]
    if log:
        log(f"[export] INT8 {p50[best]:.3f} ms vs FP32 {p50['fp32']:.3f} ms at batch 1"
            + (f" with {', '.join(best)} layers float (all INT8: {p50[()]:.3f} ms)" if best else ""))
    return {"float_layers": chosen, "float_kinds": list(best),
            "p50_ms": {"fp32": p50["fp32"], "all_int8": p50[()], "chosen": p50[best]},
            "int8_vs_fp32": p50["fp32"] / p50[best], "tried": tried,
            "method": f"in-process, batch 1, {threads} thread(s) on {runtime}, interleaved rounds; a kind stays "
                      f"float when {100 * MIN_GAIN:.0f}% faster"}


def _family(kind: str) -> str:
    """'Conv2d depthwise' -> 'depthwise', 'Conv2d 4 groups' -> 'grouped', 'Conv2d' -> 'conv', 'Linear' -> 'linear'."""
    if kind.endswith("depthwise"):
        return "depthwise"
    if kind.endswith("groups"):
        return "grouped"
    return "linear" if "linear" in kind.lower() else "conv"


def _p50(runs: dict, x: np.ndarray, *, rounds: int = 3, seconds: float = 0.05) -> dict:
    """p50 ms at batch 1 of each runner on x, interleaved over `rounds`, about `seconds` a runner a round."""
    one = np.ascontiguousarray(x[:1])
    for run in runs.values():
        for _ in range(20):  # warm-up
            run(one)
    times: dict = {k: [] for k in runs}
    for _ in range(rounds):
        for k, run in runs.items():
            end = time.perf_counter() + seconds
            while True:
                t = time.perf_counter()
                run(one)
                times[k].append(time.perf_counter() - t)
                if t > end and len(times[k]) >= 20:
                    break
    return {k: 1000 * float(np.median(v)) for k, v in times.items()}
