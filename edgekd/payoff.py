"""INT8 that pays: which kinds of layer run INT8 is decided by timing them on the target's runtime.

Integer kernels are not faster everywhere. On x86, onnxruntime's FP32 depthwise and small convolutions
run in a blocked (NCHWc) layout with AVX-512 that its QLinearConv does not match, so a MobileNet on small
images can be slower in INT8 than in FP32, while its pointwise convolutions gain. The search times, on the
target's runtime and one input, the FP32 student, the all-INT8 student and the all-INT8 student with one
kind of layer left float (depthwise convolutions, grouped convolutions, other convolutions, linear
layers), greedily keeping each kind float when that is faster beyond the timing's spread. Every model is
timed in this process, interleaved over rounds, so that machine drift hits them alike. The INT8 model
shipped is the fastest found; when even that is slower than the FP32 student beyond the spread, the target
ships the FP32 student instead (an INT8 deliverable slower than its float twin is what users complain of
most), and the report says so and why. `quantize.int8_layers = "all"` skips the search and ships INT8.

Transformer students choose their activation scheme the same way (choose_activations): static ranges
(learned by quantization-aware training, fixed in the graph), dynamic ones (each call measures its
input's range: DynamicQuantizeLinear + MatMulInteger) and, on OpenVINO, NNCF's post-training pipeline
(its placement, SmoothQuant, bias correction), timed on the target at each benchmarked sequence length
and scored on the validation split. Which wins depends on the CPU and the length: at short inputs
the static graph's Q/DQ pairs cost more than they save, at long ones a per-call range costs little."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

import numpy as np

from .errors import EdgeKDError

# a kind stays float only when that is at least this much faster: smaller differences are timing noise
MIN_GAIN = 0.03
# a quality difference (accuracy or cosine, in [0, 1]) smaller than this does not outweigh speed: 0.1 point
QUALITY_TOL = 1e-3


def choose_float_kinds(layers: dict[str, str], write: Callable[[list[str], Path], None], fp32: Path, *,
                       runtime: str, threads: int, x: np.ndarray, folder: Path, fixed: list[str] = (),
                       log=None) -> dict:
    """layers: {layer: kind} of the INT8 layers (edgekd.quantize.int8_layers); write(float_layers, path)
    writes the INT8 ONNX with those layers float; fixed: layers that stay float anyway (the accuracy
    budget's). -> {"float_layers", "float_kinds", "p50_ms": {candidate: ms}, "int8_vs_fp32", "method"}."""
    runner = _runner_for(runtime, threads)
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
    # the decision that can change the deliverable gets a longer timing than the search's steps
    p50 = _p50({k: runs[k] for k in dict.fromkeys(("fp32", (), best))}, x, rounds=5, seconds=0.1)
    chosen = [*fixed, *(n for k in best for n in kinds[k])]
    ship_fp32 = p50[best] > (1 + MIN_GAIN) * p50["fp32"]
    if log:
        log(f"[export] INT8 {p50[best]:.3f} ms vs FP32 {p50['fp32']:.3f} ms at batch 1"
            + (f" with {', '.join(best)} layers float (all INT8: {p50[()]:.3f} ms)" if best else "")
            + ("; INT8 does not pay here: the target ships the FP32 student (quantize.int8_layers = 'all' ships "
               "INT8 anyway)" if ship_fp32 else ""))
    return {"float_layers": chosen, "float_kinds": list(best), "ship_fp32": ship_fp32,
            "p50_ms": {"fp32": p50["fp32"], "all_int8": p50[()], "chosen": p50[best]},
            "int8_vs_fp32": p50["fp32"] / p50[best], "tried": tried,
            "method": f"in-process, batch 1, {threads} thread(s) on {runtime}, interleaved rounds; a kind stays "
                      f"float when {100 * MIN_GAIN:.0f}% faster"}


def program_pays(fp32: Path, int8: Path, *, threads: int, x: np.ndarray) -> dict:
    """Where the runtime's own quantizer places INT8 (ExecuTorch's XNNPACK, LiteRT: no layer of it is
    edgekd's to leave float), the choice is all or nothing: its INT8 program against its FP32 one, timed in
    this process, interleaved. -> {"p50_ms": {"fp32", "int8"}, "int8_vs_fp32", "ship_fp32", "method"}."""
    from .backends import load

    p50 = _p50({"fp32": load(fp32, threads=threads), "int8": load(int8, threads=threads)}, x)
    vs = p50["fp32"] / p50["int8"]
    return {"p50_ms": p50, "int8_vs_fp32": vs, "ship_fp32": vs < 1 - MIN_GAIN,
            "method": f"in-process, batch 1, {threads} thread(s), interleaved rounds; FP32 ships when INT8 is "
                      f"{100 * MIN_GAIN:.0f}% slower"}


def choose_activations(write: Callable[[str, Path], None], *, runtime: str, threads: int, folder: Path,
                       cases: dict[str, dict], val_feeds: list[dict], item_scores: Callable[[np.ndarray], np.ndarray],
                       fp32: Path | None = None, log=None, schemes: tuple[str, ...] = ("static", "dynamic")) -> dict:
    """write(scheme, path): the INT8 ONNX with that activation scheme ("static", "dynamic", "nncf").
    cases: {label: feed}, one batch-1 input per benchmarked sequence length; val_feeds: validation inputs
    one at a time; item_scores(outputs) -> (N,) per-item quality (1/0 right, or cosine to the teacher).

    Rule: the most faithful scheme (highest mean score), unless another one is as faithful (the paired
    difference of the items' scores within both twice its standard error and QUALITY_TOL: not real, or
    too small to matter) and faster (the geometric mean of its p50 ratios over the lengths, by MIN_GAIN);
    then the fastest of those. So a runtime that runs one scheme's integer ops in float (OpenVINO and
    DynamicQuantizeLinear) does not get it for a 0.0008 cosine gain. A scheme that cannot be written or
    that the runtime cannot load is dropped with one line. fp32: the FP32 student, timed beside them;
    "ship_fp32" when the chosen scheme is slower than it beyond MIN_GAIN (the geometric mean over the lengths).
    -> {"chosen", "why", "candidates": {scheme: {"quality", "p50_ms"}}, "ship_fp32", ...}."""
    runner = _runner_for(runtime, threads)
    folder.mkdir(parents=True, exist_ok=True)
    runs, scores, failed = {}, {}, {}
    for scheme in schemes:
        path = folder / f"int8-{scheme}.onnx"
        try:
            write(scheme, path)
            runs[scheme] = runner(path)
        except Exception as e:  # noqa: BLE001 - a runtime without this scheme's ops keeps the others
            from .backends import first_line

            failed[scheme] = first_line(e)
            if log:
                log(f"[export] INT8 {scheme} activations do not run on {runtime}: {failed[scheme]}")
            continue
        scores[scheme] = np.asarray(item_scores(np.concatenate([runs[scheme](f) for f in val_feeds])), dtype=float)
    if not runs:
        raise EdgeKDError(f"INT8: no activation scheme runs on {runtime}: "
                          + "; ".join(f"{k}: {v}" for k, v in failed.items()))
    timed = {**runs, **({"fp32": runner(fp32)} if fp32 is not None else {})}
    p50 = {label: _p50(timed, None, feed=feed) for label, feed in cases.items()}
    out = {"candidates": {k: {"quality": float(scores[k].mean()), "p50_ms": {c: p50[c][k] for c in cases}} for k in runs},
           "failed": failed, "cases": list(cases)}
    if len(runs) == 1:
        out["chosen"], out["why"] = next(iter(runs)), "the only scheme the runtime runs"
    else:
        best = max(runs, key=lambda k: float(scores[k].mean()))  # the most faithful (first listed on a tie)
        # against the most faithful: the paired quality gap (>= 0), its margin, and the speed-up (>1: faster)
        gap, margin, speed = {}, {}, {}
        for k in runs:
            d = scores[best] - scores[k]
            se = float(d.std(ddof=1) / np.sqrt(len(d))) if len(d) > 1 else 0.0
            gap[k], margin[k] = float(d.mean()), max(2 * se, QUALITY_TOL)
            speed[k] = float(np.exp(np.mean([np.log(p50[c][best] / p50[c][k]) for c in cases])))
        out.update(quality_gap=gap, quality_margin=margin, speedup_vs_most_faithful=speed, most_faithful=best)
        close = [k for k in runs if k != best and gap[k] <= margin[k] and speed[k] > 1 + MIN_GAIN]
        slower = [k for k in runs if k != best and speed[k] > 1 + MIN_GAIN]  # faster than best, but less faithful
        if close:
            out["chosen"] = max(close, key=lambda k: speed[k])
            k = out["chosen"]
            out["why"] = f"as faithful as {best} within {margin[k]:.4f}, {speed[k]:.2f}x faster over the lengths timed"
        else:
            out["chosen"] = best
            rivals = [k for k in runs if k != best]
            out["why"] = ("the most faithful on validation: " + ", ".join(
                f"{gap[k]:.4f} above {k} (" + (f"beyond {margin[k]:.4f})" if gap[k] > margin[k] else
                                               f"within {margin[k]:.4f}, and {k} is not faster)") for k in rivals)
                + (f"; though {max(1 / speed[k] for k in slower):.2f}x slower than " + ", ".join(slower) if slower else ""))
    if fp32 is not None:
        vs = float(np.exp(np.mean([np.log(p50[c]["fp32"] / p50[c][out["chosen"]]) for c in cases])))  # >1: INT8 faster
        out.update(fp32_p50_ms={c: p50[c]["fp32"] for c in cases}, int8_vs_fp32=vs, ship_fp32=vs < 1 - MIN_GAIN)
    out["method"] = (f"in-process, batch 1, {threads} thread(s) on {runtime}, interleaved rounds; quality on "
                     f"{len(val_feeds)} validation inputs")
    if log:
        c = out["candidates"]
        log(f"[export] INT8 activations: {out['chosen']} ({out['why']}); "
            + "; ".join(f"{k}: quality {v['quality']:.4f}, p50 " + ", ".join(f"{m:.2f}" for m in v["p50_ms"].values())
                        + f" ms at {', '.join(out['cases'])}" for k, v in c.items())
            + ("; INT8 does not pay here: the target ships the FP32 student" if out.get("ship_fp32") else ""))
    return out


def _runner_for(runtime: str, threads: int) -> Callable[[Path], Callable]:
    """onnx path -> a runner on `runtime` (converted to its own format where it has one)."""
    from .backends import for_runtime, load

    backend = for_runtime(runtime)

    def runner(onnx_path: Path):
        path = onnx_path
        if backend.make is not None:  # the runtime's own format (OpenVINO IR)
            path = onnx_path.with_suffix(backend.extension)
            backend.make(onnx_path, path)
        return load(path, threads=threads)

    return runner


def _family(kind: str) -> str:
    """'Conv2d depthwise' -> 'depthwise', 'Conv2d 4 groups' -> 'grouped', 'Conv2d' -> 'conv', 'Linear' -> 'linear'."""
    if kind.endswith("depthwise"):
        return "depthwise"
    if kind.endswith("groups"):
        return "grouped"
    return "linear" if "linear" in kind.lower() else "conv"


def _p50(runs: dict, x: np.ndarray | None, *, feed: dict | None = None, rounds: int = 3, seconds: float = 0.05) -> dict:
    """p50 ms at batch 1 of each runner on x (or one ready feed), interleaved over `rounds`, about
    `seconds` a runner a round."""
    one = feed if feed is not None else np.ascontiguousarray(x[:1])
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
