"""Task text-generation's export and benchmark stages: every model to an ONNX folder with its KV cache
(loadable by optimum's ORTModelForCausalLM), the quantized student chosen between post-training and
quantization-aware rounding by the validation split, parity against PyTorch, then the llama-bench
measures of each model in a fresh process and its greedy answers to held-out prompts. The deliverable
and the teacher also go to OpenVINO where it is installed (edgekd.tasks._lm_openvino)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np

# ONNX Runtime's fused attention and matmul order differ from PyTorch's; logits of a 30-layer model
# differ by more than a classifier's 1e-3 while greedy tokens stay equal (the parity test's other half)
LM_FP32_MAX_ABS_DIFF = 2e-2


WHAT = {"ptq": "post-training, round to nearest", "ptq-hqq": "post-training, HQQ (asymmetric, fitted zero points)",
        "ptq-gptq": "post-training, GPTQ (neural-compressor, Hessians on training sequences)",
        "qat": "quantization-aware distillation, weights trained on the grid"}


def quantized_name(target) -> str:
    return "student-int8" if target.precision == "int8" else "student-int4"


def model_names(target) -> list[str]:
    return ["teacher", "student-baseline", "student-fp32", quantized_name(target)]


def _parity_prompts(ctx) -> list[str]:
    """Held-out prompts (or the openings of held-out texts) the exports are compared on."""
    tok, seqs = ctx.extra["tokenizer"], ctx.extra["seqs"]["test"]
    n = min(ctx.recipe.export.parity_samples, 8, len(seqs))
    if ctx.extra["mode"] == "text":
        return [tok.decode(x[:16], skip_special_tokens=True) for x in seqs.ids[:n]]
    return [ctx.data.x_test[i] for i in seqs.prompt[:n]]


def _prompt_text(ctx, prompt: str) -> str:
    """What check_parity tokenizes: the prompt as the model reads it."""
    from ._lm_data import prompt_ids

    if ctx.extra["mode"] == "text":
        return prompt
    tok = ctx.extra["tokenizer"]
    return tok.decode(prompt_ids(tok, prompt, ctx.recipe.lm), skip_special_tokens=False)


def export_all(task, ctx, models: dict, folder: Path) -> dict:
    from ..errors import EdgeKDError, ParityError
    from ..export_lm import check_parity, export_causal_lm, quantize_weights
    from ..quantize.weight_only import bake
    from .text_generation import _head_bits  # the head's bits, one rule for QAT and export

    r, tok = ctx.recipe, ctx.extra["tokenizer"]
    fuse = r.export.fuse_attention
    prompts = [_prompt_text(ctx, p) for p in _parity_prompts(ctx)]
    names = model_names(ctx.target)
    q = names[-1]
    meta: dict = {"parity": {}, "exports": {}, "model_names": names, "deliverable": q if ctx.target.precision != "fp32"
                  else "student-fp32"}
    for name in names[:3]:
        ctx.log(f"[export] {name}")
        meta["exports"][name] = export_causal_lm(models[name], tok, folder / name, opset=0, fuse=fuse)
        meta["parity"][name] = check_parity(models[name], tok, folder / name, prompts, quantized=False,
                                            max_abs_diff=max(r.export.fp32_max_abs_diff, LM_FP32_MAX_ABS_DIFF))
    bits = 8 if q == "student-int8" else 4
    qs = r.quantize
    how = dict(bits=bits, block_size=qs.block_size, symmetric=True, accuracy_level=4, embeddings=True,
               head_bits=_head_bits(ctx))
    candidates = {"ptq": (models["student-fp32"], folder / "student-fp32")}
    if qs.method == "qat" and qs.epochs > 0:
        baked = bake(models[q])
        export_causal_lm(baked, tok, folder / ".qat-fp32", opset=0, fuse=fuse)
        candidates["qat"] = (baked, folder / ".qat-fp32")
    # HQQ's fitted zero points keep more of a model whose weights passed a 4-bit grid before, by weight error;
    # offered where the build has no QAT stage, whose weights are on the grid already (benchmarks/README.md
    # says how it fared by the model's own loss)
    if bits == 4 and "qat" not in candidates:
        candidates["ptq-hqq"] = candidates["ptq"]
    grids, gptq_meta, skipped = None, None, None
    if r.lm.gptq == "true" or (r.lm.gptq == "auto" and "qat" not in candidates):
        ctx.log(f"[export] {q}: GPTQ on {r.lm.gptq_sequences} training sequences")
        try:
            rounded, grids, gptq_meta = _gptq(ctx, models["student-fp32"], bits, qs.block_size)
        except Exception as e:  # an optional candidate: "auto" goes on without it and says why
            if r.lm.gptq == "true":
                raise EdgeKDError(f"GPTQ could not round the student ({type(e).__name__}: {e}); set lm.gptq = "
                                  "\"auto\" to go on without it") from e
            skipped = f"{type(e).__name__}: {e}"[:300]
            ctx.log(f"[export] {q}: GPTQ skipped ({skipped})")
        else:
            export_causal_lm(rounded, tok, folder / ".gptq-fp32", opset=0, fuse=fuse)
            candidates["ptq-gptq"] = (rounded, folder / ".gptq-fp32")
    found = {}
    for how_name, (_, src) in candidates.items():
        ctx.log(f"[export] {q}: {bits}-bit weights ({WHAT[how_name]})")
        kw = ({**how, "symmetric": False, "algorithm": "hqq"} if how_name == "ptq-hqq"
              else {**how, "grids": grids} if how_name == "ptq-gptq" else how)
        found[how_name] = quantize_weights(src, folder / f".{how_name}", **kw)
        if how_name == "ptq-gptq":
            found[how_name]["gptq"] = gptq_meta
        found[how_name]["val_nll"] = _val_nll(folder / f".{how_name}", ctx)
    # the lowest validation NLL among the candidates whose graph passes parity against its PyTorch model
    # (a weak student's near-ties flip under 4-bit rounding: the next candidate may keep them)
    floor = r.lm.int8_min_agreement if bits == 8 else r.lm.int4_min_agreement
    chosen, refused = None, None
    for k in sorted(found, key=lambda k: found[k]["val_nll"]):
        try:
            meta["parity"][q] = check_parity(candidates[k][0], tok, folder / f".{k}", prompts, quantized=True,
                                             min_agreement=floor)
        except ParityError as e:
            m = e.measured
            found[k]["parity_refused"] = (f"agrees with its PyTorch model on {m['top1_agreement']:.3f} of next tokens "
                                          f"(minimum {m['min_agreement']:g})" if "top1_agreement" in m else str(e))
            refused = refused or e
            ctx.log(f"[export] {q}: {WHAT[k]} refused by parity ({found[k]['parity_refused']})")
            continue
        chosen = k
        break
    if chosen is None:
        tried = "; ".join(f"{WHAT[k]}: {c['parity_refused']}" for k, c in found.items())
        hint = "" if bits == 8 else "try target=cpu-int8" + ("" if "qat" in found else " or quantize.method=qat") + "; "
        raise ParityError(f"no {bits}-bit rounding of the student passed parity ({tried}); {hint}if that agreement "
                          f"is enough for you, lower lm.int{bits}_min_agreement", refused.measured)
    (folder / f".{chosen}").rename(folder / q)
    for k in found:
        shutil.rmtree(folder / f".{k}", ignore_errors=True)
    for k in (".qat-fp32", ".gptq-fp32"):
        shutil.rmtree(folder / k, ignore_errors=True)
    meta["quantization"] = {"chosen": chosen, "candidates": found, "bits": bits, "block_size": qs.block_size,
                            "head_bits": found[chosen]["head_bits"], **({"gptq_skipped": skipped} if skipped else {}),
                            "min_agreement": floor}
    meta["inputs"] = _inputs(folder / meta["deliverable"] / "model.onnx")
    meta["sizes"] = {n: _folder_bytes(folder / n) for n in names}
    from . import _lm_openvino

    fp32_diff = max(r.export.fp32_max_abs_diff, LM_FP32_MAX_ABS_DIFF)
    floors = {n: (None, floor) if n == q else (fp32_diff, 0.0) for n in names}
    meta["openvino"] = _lm_openvino.export(ctx, folder, meta, prompts, floors)
    meta["folders"] = meta["openvino"].get("folders", [])  # shipped in the build folder with the models
    return meta


def _gptq(ctx, student, bits: int, block_size: int):
    """GPTQ's rounding of the student's decoder Linears (edgekd.quantize.gptq) on a seeded draw of
    lm.gptq_sequences training sequences."""
    from ..quantize.gptq import gptq_round

    ids = ctx.extra["seqs"]["train"].ids
    n = min(ctx.recipe.lm.gptq_sequences, len(ids))
    pick = np.random.default_rng(ctx.recipe.seed + 5).choice(len(ids), size=n, replace=False)
    return gptq_round(student, [ids[i] for i in sorted(pick)], bits=bits, block_size=block_size)


def _val_nll(folder: Path, ctx, *, limit: int = 64) -> float:
    """Mean NLL per scored token of the validation sequences, on onnxruntime."""
    import os

    from ..lm_runtime import CausalLM, log_softmax

    m = CausalLM(folder, threads=os.cpu_count() or 1)
    seqs = ctx.extra["seqs"]["val"]
    total, count = 0.0, 0
    for x, start in zip(seqs.ids[:limit], seqs.start[:limit]):
        lp = log_softmax(m.logits(x))  # (L, V)
        pos = np.arange(int(start) - 1, len(x) - 1)
        total -= float(lp[pos, x[pos + 1]].sum())
        count += len(pos)
    return total / max(count, 1)


def _inputs(model: Path) -> list[dict]:
    from ..backends.onnxruntime_onnx import signature

    return signature(model)


def _folder_bytes(folder: Path) -> int:
    """The model's files on disk (graph and external weights; not the tokenizer and configs)."""
    return sum(f.stat().st_size for f in folder.iterdir() if f.name.startswith("model.onnx"))


def benchmark_all(task, ctx, export_dir: Path, folder: Path) -> dict:
    """Each model in a fresh process (edgekd.lm_bench), the teacher first (its top-k is every student's
    reference), then each model's greedy answers to held-out prompts, scored against the references (or
    the teacher's answers where the data has none)."""
    from ..lm_bench import bench_lm, bench_lms

    lm, target = ctx.recipe.lm, ctx.target
    names = model_names(target)
    seqs = ctx.extra["seqs"]["test"]
    eval_ids = [np.asarray(x) for x in seqs.ids]
    ref = folder / "teacher-topk.npz"
    # the baseline is the distilled student's architecture, graph for graph: its speed and memory are that
    # graph's, timed once; its quality is its own
    timed_as = {"student-baseline": "student-fp32"}
    timing = {"threads": target.threads, "prompt_lengths": tuple(lm.bench_prompt_tokens),
              "new_tokens": lm.bench_new_tokens, "seed": ctx.recipe.seed}
    timed = [n for n in names if n not in timed_as]
    ctx.log(f"[benchmark] speed of {', '.join(timed)}, in alternation")
    speed = bench_lms({n: export_dir / n for n in timed}, repeats=lm.bench_repeats, **timing)
    out = {}
    for name in names:
        ctx.log(f"[benchmark] {name}: quality")
        out[name] = with_quality(speed.get(name), bench_lm(
            export_dir / name, repeats=1, eval_ids=eval_ids, speed=False, **timing,
            **({"write_reference": ref} if name == "teacher" else {"reference": ref})))
    for name, like in timed_as.items():
        out[name].update({k: v for k, v in out[like].items() if k not in out[name]}, timed_as=like)
    answers = _answers(ctx, export_dir, names)
    for name in names:
        out[name].update(answers[name]["scores"])
    (folder / "answers.json").write_text(json.dumps(answers, indent=1))
    from . import _lm_openvino

    out["openvino"] = _lm_openvino.benchmark(ctx, export_dir, names, ref, timing, repeats=lm.bench_repeats,
                                             eval_ids=eval_ids)
    return out


def with_quality(speed: dict | None, quality: dict) -> dict:
    """One model's result: the alternating run's speed and memory (None: timed as another model) with the
    quality run's perplexity and agreement."""
    out = dict(speed or {})
    out.update({k: v for k, v in quality.items() if out.get(k) is None})
    return out


def _answers(ctx, export_dir: Path, names: list[str]) -> dict:
    """Greedy answers of every exported model to the held-out prompts, with exact match and ROUGE-L
    against the references."""
    import os

    from ..lm_runtime import CausalLM
    from ._lm_data import prompt_ids, rouge_l

    tok, lm, seqs = ctx.extra["tokenizer"], ctx.recipe.lm, ctx.extra["seqs"]["test"]
    if ctx.extra["mode"] == "text":
        return {n: {"scores": {}, "answers": []} for n in names}
    n = len(seqs) if not lm.eval_prompts else min(lm.eval_prompts, len(seqs))
    prompts = [ctx.data.x_test[i] for i in seqs.prompt[:n]]
    refs = [tok.decode(x[s:], skip_special_tokens=True).strip() for x, s in zip(seqs.ids[:n], seqs.start[:n])]
    against = "references" if seqs.source and seqs.source[0] == "reference" else "the teacher's greedy answers"
    out = {}
    for name in names:
        m = CausalLM(export_dir / name, threads=os.cpu_count() or 1)
        texts = []
        for p in prompts:
            ids = np.array(prompt_ids(tok, p, lm), dtype=np.int64)
            texts.append(tok.decode(m.generate(ids, max_new_tokens=lm.max_new_tokens), skip_special_tokens=True).strip())
        exact = [float(a == b) for a, b in zip(texts, refs)]
        rl = [rouge_l(a, b) for a, b in zip(texts, refs)]
        out[name] = {"scores": {"exact_match": float(np.mean(exact)) if exact else None,
                                "rouge_l": float(np.mean(rl)) if rl else None, "rouge_l_items": rl,
                                "answers_against": against, "answered": len(texts)},
                     "answers": [{"prompt": p[:400], "reference": ref, "answer": a} for p, ref, a in
                                 zip(prompts[:8], refs[:8], texts[:8])]}
    return out
