"""An accuracy budget for INT8 (`quantize.max_accuracy_drop`, absolute points of the task's quality
metric on the validation split): when the INT8 student, run on the target's runtime, loses more than
the budget against the FP32 student, its most sensitive layers stay float, smallest set first, until
the budget holds; when no INT8 model meets it, the most accurate one is kept and the report says so,
with the numbers.

The search, in four steps, every score measured from the runtime's outputs on the validation split:
1. the FP32 student and the all-INT8 student; if the drop is within the budget, nothing else runs;
2. per-layer sensitivity: the INT8 model with that one layer float, scored by how much of the
   all-INT8 output error it removes, err = mean((y_int8 - y_fp32)^2) / mean(y_fp32^2) over the
   outputs (N, K) of the first 256 validation inputs: a continuous measure, so layers are ranked even
   where accuracy, a count of flipped predictions, would tie;
3. fallback variants: the k most sensitive layers float, k = 1, 2, 3, 4, then growing by half, up to
   all layers but one (an all-float model would be the FP32 one);
4. neural-compressor's `autotune` over [all INT8, variant 1, variant 2, ...]: it scores the FP32
   baseline, tries the variants in order, stops at the first whose score is within its
   `tolerable_loss` of the baseline and, when none is, returns the best one.

Why neural-compressor drives it this way. neural-compressor 3.x (`neural_compressor.torch`) has no
ONNX backend (the separate onnx-neural-compressor needs numpy<2), its `autotune` takes a *relative*
`tolerable_loss`, stops at the first passing configuration and has no automatic per-layer fallback:
variants must be listed, each made with `set_local` (so edgekd orders them by the sensitivity it
measures). Its torch quantizers would also give a torch model (PT2E or IPEX), which is not what edgekd
ships (the INT8 ONNX with the ranges QAT learned, run by onnxruntime or OpenVINO) and whose
`convert_pt2e` took 12-17 s per trial here. So edgekd registers one configuration class and one
algorithm with it (edgekd._inc_fallback): a trial's "quantization" only records which layers its
config sets to "fp32", and the eval_fn writes the real INT8 model with those layers float (the image
route's QAT graph with them left float, or onnxruntime's quantizer with nodes_to_exclude for a text
student's MatMuls) and scores it on the target's runtime. The absolute budget becomes
tolerable_loss = budget / 100 / baseline score. Each configuration is evaluated once (results are
cached by the set of float layers).

A float layer reads its input before the quantizer: onnxruntime's WeightBiasQuantization transformer
gives any Conv/Gemm whose input comes from a DequantizeLinear per-tensor INT8 weights at load time, so
a layer merely excluded from quantization would still run an integer kernel. Measured with onnxruntime
1.32: `quantize_static(..., nodes_to_exclude=[one Conv of the MNIST student])` still ran 3 of 3
convolutions as QLinearConv. (Text students' MatMuls are not rewritten that way: nodes_to_exclude
works there.)
"""

from __future__ import annotations

import contextlib
import math
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from .errors import EdgeKDError, InputError

# neural-compressor's torch frontend and what it imports without declaring it (its `peers`/`budget` extras)
_NEEDS = ("neural_compressor", "prettytable", "cpuinfo", "pydantic", "deprecated")
_SENSITIVITY_ROWS = 256


@dataclass
class FallbackSpace:
    """What a task gives the search: the layers that can stay float and how to write and score a model."""
    layers: dict[str, str]  # {layer: module type} of the INT8 layers, in graph order
    write: Callable[[list[str], Path], None]  # writes the INT8 ONNX with these layers float to the path
    inputs: object  # validation inputs: an array (N, ...) or a list of feeds, one per row
    score: Callable[[np.ndarray], float]  # the task's quality in [0, 1] from runtime outputs on `inputs`
    metric: str = "accuracy"


@dataclass
class _Trial:
    float_layers: list[str]
    score: float
    error: float
    path: Path


@dataclass
class _Search:
    space: FallbackSpace
    runtime: str
    threads: int
    folder: Path
    ref: np.ndarray | None = None
    trials: dict = field(default_factory=dict)  # frozenset(float layers) -> _Trial

    def outputs(self, onnx_path: Path, rows: int | None = None) -> np.ndarray:
        from .backends import load

        run = load(self.file_for(onnx_path), threads=self.threads)
        x = self.space.inputs[:rows]
        if isinstance(x, list):
            return np.concatenate([run(f) for f in x])
        return np.concatenate([run(np.ascontiguousarray(x[i:i + 256])) for i in range(0, len(x), 256)])

    def file_for(self, onnx_path: Path) -> Path:
        """The file the target's runtime loads: the ONNX itself, or its runtime's own format (OpenVINO IR)."""
        from .backends import for_runtime

        b = for_runtime(self.runtime)
        if b.make is None:
            return onnx_path
        out = onnx_path.with_suffix(b.extension)
        if not out.exists():
            b.make(onnx_path, out)
        return out

    def trial(self, float_layers) -> _Trial:
        """The model with these layers float, scored on the whole validation split (cached)."""
        key = frozenset(float_layers)
        if key not in self.trials:
            path = self.write(key)
            out = self.outputs(path)
            self.trials[key] = _Trial(self.ordered(key), float(self.space.score(out)), self.error(out, self.ref), path)
        return self.trials[key]

    def write(self, key: frozenset) -> Path:
        path = self.folder / f"model-{len(list(self.folder.glob('model-*.onnx')))}.onnx"
        self.space.write(self.ordered(key), path)
        return path

    def ordered(self, key) -> list[str]:
        return [name for name in self.space.layers if name in key]

    @staticmethod
    def error(out: np.ndarray, ref: np.ndarray) -> float:
        """Output error relative to the FP32 outputs: mean((y - y_fp32)^2) / mean(y_fp32^2) over (N, K)."""
        return float(np.mean((out - ref) ** 2) / max(float(np.mean(ref ** 2)), 1e-12))


def check_target(target) -> None:
    """Before any training: the budget needs neural-compressor, and an INT8 model that edgekd writes
    (ONNX, or OpenVINO IR from it); ExecuTorch's .pte is quantized by ExecuTorch's own quantizer."""
    import importlib.util

    if not target.backend.edgekd_int8:
        raise InputError(f"quantize.max_accuracy_drop applies to the INT8 ONNX and OpenVINO models edgekd writes, not to "
                         f"target '{target.name}' ({target.backend.description}, quantized by its own quantizer); remove "
                         "the key or build cpu-int8, cpu-int8-openvino or mobile-int8")
    missing = [m for m in _NEEDS if importlib.util.find_spec(m) is None]
    if missing:
        raise InputError(f"quantize.max_accuracy_drop needs neural-compressor's tuner ({', '.join(missing)} not "
                         "installed): pip install 'edgekd[budget]', or set quantize.max_accuracy_drop=0")


def fit_budget(space: FallbackSpace, *, max_drop: float, fp32: Path, runtime: str, threads: int = 1,
               time_input=None, log=print) -> dict:
    """Which layers must stay float for the INT8 model to lose at most `max_drop` points against the
    FP32 model `fp32` on the target's `runtime` (module docstring). Returns the report's section; its
    `float_layers` are what the task's final INT8 export leaves float. time_input: one input (batch 1)
    to time FP32, all-INT8 and the chosen model on, in this process, interleaved."""
    if not space.layers:
        raise EdgeKDError("the accuracy budget found no INT8 layer in the student to fall back to float")
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as d:
        s = _Search(space, runtime, threads, Path(d))
        s.ref = s.outputs(fp32)
        base = float(space.score(s.ref))
        if base <= 0:
            raise EdgeKDError(f"the FP32 student scores {base:g} {space.metric} on the validation split: an accuracy "
                              "budget relative to it means nothing; check the student before setting "
                              "quantize.max_accuracy_drop")
        full = s.trial([])
        drop = 100 * (base - full.score)
        log(f"[budget] FP32 {100 * base:.2f}, all INT8 {100 * full.score:.2f} on the validation split ({runtime}): "
            f"{drop:.2f} points lost, budget {max_drop:g}")
        sensitivity, variants = [], []
        if drop > max_drop + 1e-9:
            sensitivity = _sensitivity(s, full, log)
            order = [row["layer"] for row in sensitivity]
            variants = [order[:k] for k in _sizes(len(order))]
        history = _autotune(s, base, variants, max_drop)
        chosen = history["chosen"]
        kept = s.trial(chosen)
        met = 100 * (base - kept.score) <= max_drop + 1e-9
        timing = _time(s, fp32, full, kept, time_input) if time_input is not None else None
    result = {
        "max_accuracy_drop_pts": max_drop,
        "metric": space.metric,
        "split": "validation",
        "runtime": runtime,
        "fp32_val_score": base,
        "int8_val_score": full.score,
        "int8_drop_pts": drop,
        "met": met,
        "float_layers": chosen,
        "float_layer_types": {name: space.layers[name] for name in chosen},
        "layers": len(space.layers),
        "chosen_val_score": kept.score,
        "chosen_drop_pts": 100 * (base - kept.score),
        "tried": history["tried"],
        "sensitivity": sensitivity,
        "tuner": history["tuner"],
        "latency": timing,
        "seconds": time.perf_counter() - t0,
    }
    if not met:
        log(f"[budget] no INT8 model met the budget of {max_drop:g} points; kept the most accurate one tried: "
            f"{len(chosen)} of {len(space.layers)} layers float, {result['chosen_drop_pts']:.2f} points lost")
    elif chosen:
        log(f"[budget] met with {len(chosen)} of {len(space.layers)} layers float ({', '.join(chosen)}): "
            f"{result['chosen_drop_pts']:.2f} points lost")
    return result


def _sensitivity(s: _Search, full: _Trial, log, *, rows: int = _SENSITIVITY_ROWS) -> list[dict]:
    """Every layer alone float: how much of the all-INT8 output error that removes, most first (ties in
    graph order). Measured on the first `rows` validation inputs: a ranking needs fewer inputs than a
    score, and this step runs one model per layer."""
    n = len(s.space.inputs)
    log(f"[budget] measuring the sensitivity of {len(s.space.layers)} layers (each alone in float, on "
        f"{min(rows, n)} validation inputs)")
    ref = s.ref[:rows]
    int8_err = s.error(s.outputs(full.path, rows), ref) if rows < n else full.error
    out = []
    for k, (name, kind) in enumerate(s.space.layers.items()):
        err = s.error(s.outputs(s.write(frozenset([name])), rows), ref)
        out.append({"layer": name, "type": kind, "error_removed": int8_err - err, "output_error": err,
                    "rows": min(rows, n), "_order": k})
    out.sort(key=lambda r: (-r["error_removed"], r["_order"]))
    for r in out:
        del r["_order"]
    return out


def _sizes(n: int) -> list[int]:
    """How many of the n layers each variant leaves float: 1, 2, 3, 4, then growing by half, and
    n - 1 last (at least one layer stays INT8)."""
    out, k = [], 1
    while k < n:
        out.append(k)
        k = k + 1 if k < 4 else math.ceil(k * 1.5)
    if out and out[-1] != n - 1:
        out.append(n - 1)
    return out


@contextlib.contextmanager
def _quiet():
    """neural-compressor logs every trial at INFO (tables, configs) to its own handler; the build log
    has one line per step of its own."""
    import logging

    lg = logging.getLogger("neural_compressor")
    before = lg.disabled
    lg.disabled = True
    try:
        yield
    finally:
        lg.disabled = before


def _autotune(s: _Search, base: float, variants: list[list[str]], max_drop: float) -> dict:
    """neural-compressor's autotune over [all INT8, *variants]; returns the chosen float layers and each
    configuration it tried, in its order."""
    from importlib.metadata import version

    with _quiet():
        from neural_compressor.torch.quantization import TuningConfig, autotune

        from . import _inc_fallback as inc

        tried: list[dict] = []

        def evaluate(table) -> float:
            if table.float_layers is None:  # autotune's baseline: the model before quantization
                return base
            t = s.trial(table.float_layers)
            drop = 100 * (base - t.score)
            tried.append({"float_layers": t.float_layers, "val_score": t.score, "drop_pts": drop,
                          "within_budget": drop <= max_drop + 1e-9, "output_error": t.error})
            return t.score

        configs = [inc.variant([])] + [inc.variant(v) for v in variants]
        # its pass test is score >= baseline * (1 - tolerable_loss): the absolute budget, relative to the
        # baseline (a hair of slack so that a drop of exactly the budget passes despite float rounding)
        tol = max_drop / 100 / base + 1e-9
        best = autotune(inc.LayerTable(dict(s.space.layers)),
                        TuningConfig(config_set=configs, tolerable_loss=tol, max_trials=len(configs)),
                        eval_fn=evaluate)
    if best is None or best.float_layers is None:
        raise EdgeKDError("neural-compressor's autotune returned no model for the accuracy budget; "
                          "set quantize.max_accuracy_drop=0 to build without it")
    return {"chosen": list(best.float_layers), "tried": tried,
            "tuner": {"name": "neural-compressor autotune", "version": version("neural-compressor"),
                      "tolerable_loss": tol, "configs": len(configs), "trials": len(tried)}}


def _time(s: _Search, fp32: Path, full: _Trial, kept: _Trial, x, *, rounds: int = 5, calls: int = 200) -> dict:
    """p50 ms at batch 1 of FP32, all-INT8 and the chosen model on one input, in this process, models
    interleaved over rounds so that machine drift hits them alike: the fallback's latency cost next to
    the benchmark's fresh-process numbers of the delivered model."""
    from .backends import load

    paths = {"fp32": fp32, "int8": full.path, "chosen": kept.path}
    runs = {k: load(s.file_for(p), threads=s.threads) for k, p in paths.items()}
    times: dict[str, list[float]] = {k: [] for k in runs}
    for run in runs.values():
        for _ in range(20):  # warm-up
            run(x)
    for _ in range(rounds):
        for k, run in runs.items():
            for _ in range(calls):
                t = time.perf_counter()
                run(x)
                times[k].append(time.perf_counter() - t)
    p50 = {k: 1000 * float(np.median(v)) for k, v in times.items()}
    return {"p50_ms": p50, "fallback_cost": p50["chosen"] / p50["int8"] - 1,
            "method": f"in-process, batch 1, {s.threads} thread(s), {rounds} interleaved rounds of {calls} calls"}
