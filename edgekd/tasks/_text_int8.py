"""The text tasks' INT8 choices, measured on the target's runtime: the activation scheme (static ranges
learned by QAT, dynamic per call, or NNCF's on OpenVINO: edgekd.payoff.choose_activations) and the accuracy budget's float
layers (edgekd.budget). Both score the validation split, one text at a time as an app feeds them."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from . import Context


def lengths(max_length: int, seq_lens) -> list[int]:
    """The sequence lengths timed: the task's, cut at the build's max_length (which is timed itself)."""
    return [s for s in seq_lens if s < max_length] + [max_length] if max_length <= max(seq_lens) else list(seq_lens)


def length_feeds(tok, texts: list[str], lens: list[int], *, error) -> dict[str, dict]:
    """{str(S): one row of exactly S real tokens}: the texts joined until they fill S."""
    joined = " ".join(texts)
    out = {}
    for s in lens:
        enc = tok([joined], truncation=True, max_length=s, return_tensors="np")["input_ids"].astype(np.int64)
        if enc.shape[1] < s:
            raise error(s)
        out[str(s)] = {"input_ids": enc, "attention_mask": np.ones_like(enc)}
    return out


def _writer(ctx: Context, q, fp32_graph: Path, calib: list[dict]):
    from ..quantize import quantize_gather_tables, quantize_onnx

    es, rr = ctx.recipe.export, ctx.extra["reduce_range"]

    def write(layers: list[str], path: Path, activations: str) -> None:
        quantize_onnx(fp32_graph, path, calib, reduce_range=rr, linear_only=True, qat_model=q, float_layers=layers,
                      activations=activations)
        if es.int8_embeddings:
            quantize_gather_tables(path)

    return write


def _item_scorer(task, ctx: Context):
    from .text import row_cosines

    if task.classify:
        y = ctx.data.y_val
        return lambda out: (out.argmax(1) == y).astype(float)
    t = ctx.extra["targets"]["val"]
    return lambda out: row_cosines(out, t)


def activations(task, ctx: Context, q, fp32_graph: Path, folder: Path, calib: list[dict], feeds: list[dict],
                seq_lens) -> dict:
    """quantize.activations: the recipe's scheme, or with "auto" the one edgekd.payoff measures better,
    with "ship_fp32" when neither is faster than the FP32 student (quantize.int8_layers = "all" keeps INT8)."""
    setting = ctx.recipe.quantize.activations
    if setting != "auto":
        return {"chosen": setting, "why": "quantize.activations in the recipe"}
    from ..errors import InputError
    from ..payoff import choose_activations

    write = _writer(ctx, q, fp32_graph, calib)
    cases = length_feeds(ctx.extra["tokenizer"], list(ctx.data.x_val), lengths(ctx.extra["max_length"], seq_lens),
                         error=lambda s: InputError(f"the validation texts hold fewer than {s} tokens; raise data.n_val"))
    return choose_activations(lambda scheme, path: write([], path, scheme), runtime=ctx.target.runtime,
                              threads=ctx.target.threads, folder=folder / ".activations", cases=cases,
                              val_feeds=feeds, item_scores=_item_scorer(task, ctx), log=ctx.log,
                              fp32=folder / "student-fp32.onnx", schemes=schemes(ctx.target.runtime))


def schemes(runtime: str) -> tuple[str, ...]:
    """The activation schemes "auto" measures on `runtime`. NNCF's on OpenVINO only: OpenVINO's own
    quantizer, whose SmoothQuant scales (a Mul node before each smoothed linear) OpenVINO folds into the
    op before them and onnxruntime runs as they are; there the per-call ranges of dynamic activations
    already follow the outliers SmoothQuant moves."""
    return ("static", "dynamic", "nncf") if runtime == "openvino" else ("static", "dynamic")


def fit_budget(task, ctx: Context, q, fp32_graph: Path, folder: Path, calib: list[dict], feeds: list[dict],
               scheme: str) -> dict:
    """quantize.max_accuracy_drop (edgekd.budget): which Linears' MatMuls stay float, measured on the
    target's runtime on validation texts (fed one at a time) against the FP32 export in `folder`."""
    from ..budget import FallbackSpace, fit_budget as fit
    from ..quantize import linear_layers

    write = _writer(ctx, q, fp32_graph, calib)
    score = _item_scorer(task, ctx)
    space = FallbackSpace(linear_layers(fp32_graph, q), lambda layers, path: write(layers, path, scheme), feeds,
                          lambda out: float(score(out).mean()), metric=task.quality)
    return fit(space, max_drop=ctx.recipe.quantize.max_accuracy_drop, fp32=folder / "student-fp32.onnx",
               runtime=ctx.target.runtime, threads=ctx.target.threads, time_input=feeds[0], log=ctx.log)
