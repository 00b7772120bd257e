"""Task text-generation's report.json and report.md: the verdict per model against the teacher
(decode and prefill speed, perplexity, size, peak memory), the llama-bench table, the answers to
held-out prompts, the generated data and its filter, the quantization choice, parity and training."""

from __future__ import annotations

from dataclasses import asdict

LABELS = {"teacher": "teacher", "student-baseline": "student (cross-entropy)", "student-fp32": "student FP32",
          "student-int4": "student INT4", "student-int8": "student INT8"}


def assemble(task, ctx, done: list, data_seconds: float, params: dict) -> dict:
    from ..report.assembly import environment
    from ..report.stats import interval, paired

    recipe, target = ctx.recipe, ctx.target
    by = {s.name: s for s in done}
    bench, export, targets = by["benchmark"].meta, by["export"].meta, by["soft-labels"].meta
    names = export["model_names"]
    t = bench["teacher"]
    first = str(min(int(k) for k in t["prefill_tok_s"])) if t.get("prefill_tok_s") else None
    models, items = {}, {}
    for n in names:
        b = dict(bench[n])
        items[n] = b.pop("rouge_l_items", None)
        m = {**b, "params": params.get(n), "size_bytes": export["sizes"][n], "file": f"{n}/model.onnx",
             "runtime": target.runtime, "precision": n.rsplit("-", 1)[-1] if n.startswith("student-int") else "fp32"}
        m["decode_speedup_vs_teacher"] = b["decode_tok_s"]["mean"] / t["decode_tok_s"]["mean"]
        if first and first in b.get("prefill_tok_s", {}):
            m["prefill_speedup_vs_teacher"] = b["prefill_tok_s"][first]["mean"] / t["prefill_tok_s"][first]["mean"]
        m["size_ratio_vs_teacher"] = m["size_bytes"] / export["sizes"]["teacher"]
        if b.get("perplexity") and t.get("perplexity"):
            m["perplexity_ratio_vs_teacher"] = b["perplexity"] / t["perplexity"]
        if items[n]:
            m["rouge_l_interval"] = interval(items[n])
        models[n] = m
    comparisons = {}
    for a, b in (("student-fp32", "student-baseline"), (names[-1], "student-fp32"), ("student-fp32", "teacher")):
        if items.get(a) and items.get(b):
            comparisons[f"{a} vs {b}"] = {"metric": "rouge_l", **paired(items[a], items[b])}
    training = {n: {k: v for k, v in by[n].meta.items() if k != "history"} for n in ("teacher", "baseline", "distill", "qat")}
    stage_times = {"data": {"seconds": data_seconds, "cached": False}}
    stage_times.update({s.name: {"seconds": s.seconds, "cached": s.cached, "cache": s.dir.name} for s in done})
    extra = {}
    if "openvino" in export:  # an export stage from before OpenVINO was part of the build has none
        from ._lm_openvino import assemble as openvino

        extra["runtimes"] = {"openvino": openvino(bench, export, models)}
    return {
        **extra, "target": target.name, "target_profile": asdict(target), "recipe": recipe.name, "task": recipe.task,
        "kind": task.kind, "quality_metric": "perplexity", "quality_label": "perplexity",
        "deliverable": export["deliverable"], "models": models, "comparisons": comparisons, "training": training,
        "teacher_data": targets, "parity": export["parity"], "quantization": export["quantization"],
        "exports": export["exports"], "data": {"origin": ctx.data.origin, "mode": ctx.extra["mode"],
                                               "truncated": ctx.extra.get("truncated", 0),
                                               "test_sequences": len(ctx.extra["seqs"]["test"])},
        "loss_weights": recipe.loss_weights(), "stages": stage_times,
        **({"layer_choice": next(iter(ctx.extra["layer_choice"].values()))} if ctx.extra.get("layer_choice") else {}),
        **({"width": ctx.extra["width_info"]} if ctx.extra.get("width_info") else {}),
        **({"vocab": {**ctx.extra["vocab_info"], "floor": export["exports"]["student-fp32"].get("vocab", {}).get("floor")}}
           if ctx.extra.get("vocab_info") else {}),
        "environment": environment(target, recipe.seed),
    }


def _f(v, fmt: str = "{:.1f}") -> str:
    return "-" if v is None else fmt.format(v)


def _mb(b: float) -> str:
    return f"{b / 1e6:.1f} MB"


def headline(r: dict, n: str) -> str:
    m, t = r["models"][n], r["models"]["teacher"]
    ppl = f"perplexity {_f(m.get('perplexity'), '{:.2f}')} vs {_f(t.get('perplexity'), '{:.2f}')}"
    return (f"**{LABELS.get(n, n)}**: {m['decode_speedup_vs_teacher']:.1f}x the teacher's decode speed "
            f"({m['decode_tok_s']['mean']:.1f} vs {t['decode_tok_s']['mean']:.1f} tokens/s at {r['target_profile']['threads']} "
            f"thread(s)), {ppl}, {100 * m['size_ratio_vs_teacher']:.0f}% of the size ({_mb(m['size_bytes'])}), "
            f"{m['peak_rss_mb']:.0f} MB peak RSS")


def verdict(r: dict) -> list[str]:
    from ._lm_export import WHAT

    out = [f"- {headline(r, r['deliverable'])} (the deliverable)"]
    for n in r["models"]:
        if n not in ("teacher", r["deliverable"]):
            out.append(f"- {headline(r, n)}")
    ms = r["models"]
    d, b = ms["student-fp32"], ms["student-baseline"]
    if d.get("perplexity") and b.get("perplexity"):
        word = "below" if d["perplexity"] < b["perplexity"] else "NOT below"
        out.append(f"- Distillation: the distilled student's perplexity {d['perplexity']:.2f} is {word} the "
                   f"cross-entropy baseline's {b['perplexity']:.2f} (same sequences, same budget)"
                   + ("" if word == "below" else " ⚠ the teacher's distributions did not help here"))
    c = r["comparisons"].get("student-fp32 vs student-baseline")
    if c:
        out.append(f"- ROUGE-L of the answers, distilled - baseline: {c['diff']:+.3f} [{c['low']:+.3f}, {c['high']:+.3f}] "
                   f"(paired bootstrap, {c['n']} prompts{', within noise' if c['within_noise'] else ''})")
    q = r["quantization"]
    p = r["parity"].get(r["models"] and list(r["models"])[-1], {})
    if p:
        passed = " that passed parity" if any(c.get("parity_refused") for c in q["candidates"].values()) else ""
        out.append(f"- Quantization: {WHAT[q['chosen']]} shipped (the lowest validation NLL of "
                   f"{len(q['candidates'])}{passed}); next-token top-1 agreement with its PyTorch model {p['top1_agreement']:.3f}, "
                   f"greedy answers identical on {p['greedy_exact']} of {p['prompts']} held-out prompts")
    return out


def render(r: dict) -> str:
    ms = r["models"]
    first = r["models"]["teacher"].get("prefill_tok_s") or {}
    lengths = sorted(first, key=int)
    lines = [f"# edgekd text-generation: {r['recipe']} on {r['target']}", "", "## Verdict", "", *verdict(r), "",
             "## Speed and quality", "",
             f"Each model in its own fresh onnxruntime process at {r['target_profile']['threads']} thread(s)"
             + (", the models' repeats in alternation (one of each per round, so a slower spell of the machine slows "
                "all alike)" if ms["teacher"].get("timing") == "alternating" else "") + ", as llama-bench "
             "reports: prefill tokens/s at each prompt length (pp), decode tokens/s over "
             f"{_f(ms['teacher'].get('new_tokens'), '{:.0f}')} greedy new tokens (tg), time to first token, per-token "
             "latency; perplexity on every token of the held-out sequences (prompts and responses alike); top-1 agreement and KL(teacher || model) "
             "over the teacher's top-64 tokens at every held-out position; ROUGE-L of the greedy answers to held-out "
             f"prompts against {ms['teacher'].get('answers_against') or 'the references'}.", "",
             "| model | params | size | " + " | ".join(f"pp{n} tok/s" for n in lengths)
             + " | tg tok/s | TTFT ms | token p50/p90 ms | peak RSS | perplexity | top-1 agree | KL | ROUGE-L | exact |",
             "|---|---:|---:|" + "---:|" * len(lengths) + "---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for n, m in ms.items():
        pp = " | ".join(f"{m['prefill_tok_s'][k]['mean']:.0f} ± {m['prefill_tok_s'][k]['std']:.0f}"
                        if k in m.get("prefill_tok_s", {}) else "-" for k in lengths)
        ttft = m.get("ttft_ms", {}).get(lengths[0], {}).get("mean") if lengths else None
        lines.append(
            f"| {LABELS.get(n, n)} | {_f(m.get('params'), '{:,}')} | {_mb(m['size_bytes'])} | {pp} | "
            f"{m['decode_tok_s']['mean']:.1f} ± {m['decode_tok_s']['std']:.1f} | {_f(ttft)} | "
            f"{m['per_token_ms']['p50']:.1f} / {m['per_token_ms']['p90']:.1f} | {m['peak_rss_mb']:.0f} MB | "
            f"{_f(m.get('perplexity'), '{:.2f}')} | {_f(m.get('top1_agreement'), '{:.3f}')} | "
            f"{_f(m.get('kl_teacher'), '{:.3f}')} | {_f(m.get('rouge_l'), '{:.3f}')} | {_f(m.get('exact_match'), '{:.2f}')} |")
    if lengths:
        lines += ["", f"TTFT is at {lengths[0]} prompt tokens."]
    lines += [f"{LABELS.get(n, n)}: speed and memory are {LABELS.get(m['timed_as'], m['timed_as'])}'s, the same "
              "architecture timed once." for n, m in ms.items() if m.get("timed_as")]
    lines += _attention_lines(r)
    from ._lm_openvino import lines as openvino_lines

    lines += openvino_lines(r, LABELS)
    lines += ["", "## Teacher's data", ""] + _data_lines(r)
    q = r["quantization"]
    lines += ["", "## Quantization", "",
              f"Weight-only {q['bits']}-bit, blocks of {q['block_size']} weights (onnxruntime MatMulNBits; "
              f"the embedding quantized too, the LM head at {q.get('head_bits', q['bits'])} bits). Candidates on the "
              "validation split (mean NLL per token, "
              "onnxruntime):", ""]
    from ._lm_export import WHAT

    for k, c in q["candidates"].items():
        mark = " **(shipped)**" if k == q["chosen"] else (f"; refused by parity ({c['parity_refused']})"
                                                           if c.get("parity_refused") else "")
        g = c.get("gptq")
        how = f" ({g['sequences']} sequences, {g['tokens']:,} tokens, {g['seconds']:.0f} s)" if g else ""
        lines.append(f"- {WHAT.get(k, k)}{how}: NLL {c['val_nll']:.4f}, {_mb(c.get('size_after', 0) or 0)}{mark}")
    if q.get("gptq_skipped"):
        lines.append(f"- GPTQ was skipped: {q['gptq_skipped']}")
    lines += ["", "## Parity (onnxruntime against PyTorch, held-out prompts)", ""]
    for n, p in r["parity"].items():
        lines.append(f"- {LABELS.get(n, n)}: logits max |diff| {p['max_abs_diff']:.2g}, next-token top-1 agreement "
                     f"{p['top1_agreement']:.3f} over {p['positions']} prompt positions; greedy {p['new_tokens']} tokens "
                     f"identical on {p['greedy_exact']} of {p['prompts']} prompts ({100 * p['greedy_token_agreement']:.0f}% "
                     "of tokens)")
    lines += ["", "## Training", ""]
    if r.get("layer_choice"):
        lines += [f"The student keeps teacher layers {r['layer_choice']['keep']}: those that change the hidden state "
                  "most on the training sequences (block influence, ShortGPT), the first and last always.", ""]
    lines += ["| stage | sequences | chosen epoch | val perplexity | lr |", "|---|---:|---:|---:|---:|"]
    for n, t in r["training"].items():
        vp = t.get("val_perplexity") or (_exp(t.get("val_score")))
        lines.append(f"| {n} | {t.get('sequences', '-')} | {t.get('chosen_epoch', '-')} | {_f(vp, '{:.2f}')} | "
                     f"{_f(t.get('lr'), '{:g}')} |")
    lines += ["", f"Losses: {', '.join(f'{k} {v:g}' for k, v in r['loss_weights'].items())}.", "", "## Stages", ""]
    lines += [f"- {k}: {v['seconds']:.1f} s{' (cached)' if v.get('cached') else ''}" for k, v in r["stages"].items()]
    env = r["environment"]
    lines += ["", f"Environment: {env.get('cpu', '')}, {env.get('logical_cpus')} CPUs, python {env.get('python')}, "
              + ", ".join(f"{k} {v}" for k, v in env.get("versions", {}).items())]
    return "\n".join(lines) + "\n"


def _attention_lines(r: dict) -> list[str]:
    """How the ONNX graphs compute attention (edgekd.lm_fuse), from the export's meta."""
    att = {n: e["attention"] for n, e in r.get("exports", {}).items() if e.get("attention")}
    if not att:
        return []
    if all(a["fused"] for a in att.values()):
        return ["", "Attention is one onnxruntime GroupQueryAttention node per layer in every ONNX graph here (rotary "
                "embedding, cache append and grouped attention in one kernel; the inputs and outputs optimum exports; "
                "export.fuse_attention)."]
    return [""] + [f"{LABELS.get(n, n)}: attention as optimum exported it ({a.get('why', 'not fused')})."
                   for n, a in att.items() if not a["fused"]]


def summary(r: dict) -> list[str]:
    out = [f"{'model':18s} {'decode tok/s':>12s} {'vs teacher':>10s} {'perplexity':>10s} {'size':>10s} {'peak RSS':>9s}"]
    for n, m in r["models"].items():
        out.append(f"{n:18s} {m['decode_tok_s']['mean']:12.1f} {m['decode_speedup_vs_teacher']:9.2f}x "
                   f"{_f(m.get('perplexity'), '{:10.2f}'):>10s} {_mb(m['size_bytes']):>10s} {m['peak_rss_mb']:6.0f} MB")
    for n, m in ((r.get("runtimes") or {}).get("openvino") or {}).get("models", {}).items():
        vs = m.get("decode_speedup_vs_teacher")  # the OpenVINO teacher's
        out.append(f"{n + ' openvino':18s} {m['decode_tok_s']['mean']:12.1f} {_f(vs, '{:9.2f}x'):>10s} "
                   f"{_f(m.get('perplexity'), '{:10.2f}'):>10s} {_mb(m['size_bytes']):>10s} {m['peak_rss_mb']:6.0f} MB")
    return out


def _exp(v):
    import math

    return None if v is None else math.exp(-v)


def _data_lines(r: dict) -> list[str]:
    g, d = r["teacher_data"].get("generation"), r["data"]
    out = [f"Data: {d['origin'] or 'the recipe data'} ({d['mode']}); {r['teacher_data'].get('train_sequences')} training "
           f"sequences, {r['teacher_data'].get('train_tokens')} scored tokens; {d['test_sequences']} held-out sequences"
           + (f"; {d['truncated']} truncated to data.max_length" if d.get("truncated") else "") + "."]
    if g:
        dropped = ", ".join(f"{k}: {v}" for k, v in g["dropped"].items()) or "none"
        out.append(f"The teacher wrote {g['per_prompt']} response(s) to each of {g['prompts']} training prompts: "
                   f"{g['kept']} of {g['generated']} kept; dropped: {dropped}. Mean teacher log-probability per token "
                   f"{_f(g.get('mean_teacher_logprob'), '{:.2f}')}.")
    w = r.get("width")
    if w:
        out.append(f"Each of the students' MLPs keeps {w['kept']:,} of the teacher's {w['of']:,} channels "
                   "(student.keep_intermediate: those adding most to the layer's output on the training sequences, "
                   f"{min(w['score_kept']):.0%}-{max(w['score_kept']):.0%} of that score per layer).")
    v = r.get("vocab")
    if v:
        out.append(f"The students' LM head keeps {v['kept']:,} of {v['vocab']:,} tokens (lm.vocab: the training sequences "
                   f"use {v['used']:,}; the kept ones are {100 * v['coverage']:.1f}% of their tokens and "
                   f"{_f(v.get('test_coverage'), '{:.1%}')} of the held-out tokens); every other token shares one logit"
                   + (f" (after training: {v['floor']:.2f})" if v.get("floor") is not None else "")
                   + ", so it stays possible, not likely.")
    if r["teacher_data"].get("top_k_mass") is not None:
        out.append(f"The cached top-k holds {100 * r['teacher_data']['top_k_mass']:.1f}% of the teacher's probability "
                   "mass per validation token on average.")
    return out
