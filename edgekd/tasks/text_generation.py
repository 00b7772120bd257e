"""Task text-generation: a small causal language model distilled from a larger one, quantized to
weight-only INT4 (or INT8), exported with its KV cache, and benchmarked against the teacher as
llama-bench reports (prefill and decode tokens/s, time to first token) with perplexity beside.

Data: prompts with reference responses (data.response_field), prompts alone, or plain text. The
teacher (a Hugging Face causal LM: folder, hub id, GGUF file) may be fine-tuned on the references first
(teacher.fine_tune = always), then writes lm.generate responses per training prompt; a filter keeps
those worth learning from (edgekd.tasks._lm_data). Students are the teacher's layer subset or a
narrower model of its family (same tokenizer: token-level losses compare distributions over one
vocabulary). The baseline learns the same sequences by next-token cross-entropy alone (on generated
responses that is sequence-level KD, Kim & Rush 2016); the distilled student adds the teacher's
per-token distributions (forward_kl from the cached top-k, or reverse_kl / gkd_jsd with the teacher in
the step). Quantization: the distilled student rounded to onnxruntime's MatMulNBits grid after training
(post-training, round-to-nearest) and a copy trained with its weights on that grid under the same
distillation loss (quantization-aware); both are measured on the validation split and the better one
ships."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from . import Context, Task, tasks
from ..errors import EdgeKDError, InputError, RecipeError

PRECISIONS = ("fp32", "int8", "int4")


class TextGeneration(Task):
    name = "text-generation"
    kind = "lm"
    response = "token_logits"
    quality = "perplexity"
    quality_label = "perplexity"

    def check_recipe(self, recipe) -> None:
        if recipe.data.source in ("mnist", "arrays", "image-folder"):
            raise RecipeError(f"task text-generation needs text data (jsonl, csv, text-lines, hf-dataset, "
                              f"python-functions), not data.source = '{recipe.data.source}'")
        online = [n for n in recipe.distill.losses if n in ("reverse_kl", "gkd_jsd") and recipe.distill.losses[n] > 0]
        if recipe.lm.on_policy and recipe.lm.score != "response":
            raise RecipeError("lm.on_policy > 0 samples responses to the prompts: set lm.score = 'response'")
        if recipe.lm.on_policy and not online:
            raise RecipeError("lm.on_policy > 0 needs a loss that runs the teacher in the step: "
                              "distill.losses = {gkd_jsd = 1.0} (or reverse_kl)")

    def quantized_name(self, target) -> str:
        from ._lm_export import quantized_name

        return quantized_name(target)

    def check_target(self, target) -> None:
        if target.precision not in PRECISIONS:
            raise InputError(f"task text-generation builds fp32, int8 or int4 targets, not '{target.name}'")

    def prepare(self, ctx: Context) -> None:
        from ..models import ModelIO
        from ..models.hf_lm import load_tokenizer
        from ._lm_data import check_prompts, pair_seqs, text_seqs

        r, d = ctx.recipe, ctx.data
        ctx.io = ModelIO(kind="lm", input_shape=(), num_classes=0)
        tok = ctx.extra["tokenizer"] = load_tokenizer(r.teacher, base=ctx.base)
        ctx.extra["pad_id"] = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        refs = getattr(d, "responses", None)
        ctx.extra["mode"] = mode = "pairs" if refs or r.lm.generate else "text"
        L = r.data.max_length
        seqs, cut = {}, 0
        for split, x in (("train", d.x_train), ("val", d.x_val), ("test", d.x_test)):
            if mode == "text":
                seqs[split] = text_seqs(tok, x, max_length=L)
                continue
            check_prompts(tok, x, r.lm, max_length=L, where=split)
            if refs:
                seqs[split], c = pair_seqs(tok, x, refs[split], r.lm, max_length=L, source="reference")
                cut += c
        if r.lm.score == "all":  # training and validation read every token after the first (held-out: responses)
            for split in ("train", "val"):
                if split in seqs:
                    seqs[split].start[:] = 1
        ctx.extra["references"] = seqs  # prompts with the data's own responses (or text); {} for prompts alone
        ctx.extra["truncated"] = cut
        if mode == "text" and not len(seqs["train"]):
            raise InputError("no training text of 2 tokens or more; check data.source and data.text_field")

    def fingerprint(self, ctx: Context) -> dict:
        tok, lm = ctx.extra["tokenizer"], ctx.recipe.lm
        # how prompts are written and which tokens are scored change what the teacher fine-tunes on
        return {"vocab": len(tok), "chat_template": getattr(tok, "chat_template", None) or "",
                "prompts": {"instruction": lm.instruction, "chat": lm.chat, "score": lm.score}}

    # teacher -------------------------------------------------------------------------------------------
    def load_teacher(self, ctx: Context):
        from ..export_lm import check_exportable
        from ..models import load_model

        built = load_model(ctx.recipe.teacher, ctx.io, base=ctx.base, seed=ctx.recipe.seed)
        check_exportable(built.module.config.model_type)  # before any training: every model is of its family
        return built

    def train_teacher(self, ctx: Context, teacher, checkpoint: Path):
        """Fine-tune the teacher on the references by next-token cross-entropy ("teacher correction",
        Minitron): a teacher that writes the domain's responses teaches them better."""
        seqs = ctx.extra["references"].get("train")
        if seqs is None or not len(seqs):
            raise RecipeError("teacher.fine_tune needs reference responses (data.response_field) or text to learn; "
                              "set teacher.fine_tune = 'never'")
        return self._fit(ctx, teacher, seqs, role="teacher", desc="teacher", checkpoint=checkpoint)

    def validate(self, ctx: Context, model) -> float | None:
        """Minus the mean NLL per token of the validation sequences (higher is better)."""
        from ._lm_data import mean_nll

        seqs = ctx.extra.get("val_seqs") or ctx.extra["references"].get("val")
        if seqs is None or not len(seqs):
            return None
        return -mean_nll(model, seqs, pad_id=ctx.extra["pad_id"])

    def targets_inputs(self, ctx: Context) -> dict:
        from dataclasses import asdict

        lm = asdict(ctx.recipe.lm)
        return {"lm": {k: v for k, v in lm.items()
                       if not k.startswith(("bench_", "eval_", "on_policy", "vocab", "head_bits", "gptq", "int8_min", "int4_min"))},
                "max_length": ctx.recipe.data.max_length}

    def qat_inputs(self, ctx: Context) -> dict:
        # the fake-quant weights train on the grid the target ships: INT4 for cpu-int4, INT8 otherwise (an
        # untied head on its own bits, a 4-bit build's embedding too); in the distillation's precision (_fit)
        return {"bits": _bits(ctx.target), "precision": ctx.extra.get("precision", "fp32"),
                "head_bits": _head_bits(ctx), "embedding": _bits(ctx.target) == 4}

    def export_inputs(self, ctx: Context) -> dict:
        lm = ctx.recipe.lm
        return {"lm": {"head_bits": lm.head_bits, "gptq": lm.gptq, "gptq_sequences": lm.gptq_sequences,
                       "int8_min_agreement": lm.int8_min_agreement,
                       "int4_min_agreement": lm.int4_min_agreement}}

    def student_inputs(self, ctx: Context) -> dict:
        # a layer subset's layers are chosen from the teacher and the data (upstream keys) by this rule
        return {"lm": {"on_policy": ctx.recipe.lm.on_policy, "vocab": ctx.recipe.lm.vocab},
                "layer_choice": "block-influence"}

    def teacher_targets(self, ctx: Context, teacher, folder: Path) -> dict:
        """The teacher's data, once: its responses to the training prompts (filtered), its greedy answers to
        the validation and test prompts where there are no references, and its top-k log-probabilities at
        every scored token of the training and validation sequences."""
        # shared_*: under torchrun each rank computes its share of the teacher's work and all receive it all
        from ._lm_data import Seqs, filter_reason, pair_seqs, prompt_ids, shared_generate, shared_topk, user_filter

        from ..shard import world

        r, d, lm = ctx.recipe, ctx.data, ctx.recipe.lm
        tok, refs = ctx.extra["tokenizer"], ctx.extra["references"]
        ranks = world()[1]
        if ranks > 1:
            ctx.log(f"[soft-labels] the teacher's generation and log-probabilities split between {ranks} processes")
        pad, bf16 = ctx.extra["pad_id"], ctx.extra.get("precision") == "bf16"
        meta: dict = {}
        splits = {"train": d.x_train, "val": d.x_val, "test": d.x_test}
        out = {}
        for split, prompts in splits.items():
            if ctx.extra["mode"] == "text":
                out[split] = refs[split]
                continue
            have = refs.get(split)
            if split == "train" and lm.generate:
                ids = [prompt_ids(tok, p, lm) for p in prompts]
                n = lm.generate if lm.temperature > 0 else 1
                ctx.log(f"[generate] the teacher writes {n} response(s) to each of {len(prompts)} training prompts")
                gen = shared_generate(teacher, tok, ids, n=n, temperature=lm.temperature, top_p=lm.top_p,
                               max_new_tokens=min(lm.max_new_tokens, r.data.max_length - min(map(len, ids))),
                               seed=r.seed, device=ctx.device, log=ctx.log if ranks == 1 else None)
                texts = [[tok.decode(g, skip_special_tokens=True).strip() for g in row] for row in gen]
                flat = [(i, t) for i, row in enumerate(texts) for t in row]
                gseqs, _ = pair_seqs(tok, [prompts[i] for i, _ in flat], [t for _, t in flat], lm,
                                     max_length=r.data.max_length, source="generated", prompt_index=[i for i, _ in flat])
                _, _, _, mean_lp = shared_topk(teacher, gseqs, k=1, pad_id=pad, device=ctx.device, bf16=bf16)
                user = user_filter(lm.filter) if lm.filter else None
                reasons = [filter_reason(prompts[i], t, tok(t, add_special_tokens=False)["input_ids"], float(lp), lm, user)
                           for (i, t), lp in zip(flat, mean_lp)]
                keep = [j for j, why in enumerate(reasons) if not why]
                dropped: dict[str, int] = {}
                for why in reasons:
                    if why:
                        dropped[why] = dropped.get(why, 0) + 1
                examples = [{"prompt": prompts[flat[j][0]][:300], "response": flat[j][1][:300], "dropped": reasons[j]}
                            for j in range(min(len(flat), 6))]
                meta["generation"] = {"prompts": len(prompts), "per_prompt": n, "generated": len(flat), "kept": len(keep),
                                      "dropped": dropped, "mean_teacher_logprob": float(np.mean(mean_lp)) if len(flat) else None,
                                      "examples": examples}
                ctx.log(f"[filter] kept {len(keep)} of {len(flat)} generated responses"
                        + (f" (dropped: {', '.join(f'{k} {v}' for k, v in dropped.items())})" if dropped else ""))
                gseqs = gseqs.subset(keep)
                parts = [s for s in (have, gseqs) if s is not None and len(s)]
                out[split] = Seqs([x for s in parts for x in s.ids], np.concatenate([s.start for s in parts]),
                                  [x for s in parts for x in s.source], [x for s in parts for x in s.prompt]) \
                    if parts else gseqs
                if not len(out[split]):
                    raise EdgeKDError("the filter dropped every generated response and there are no references; loosen "
                                      "lm.min_logprob / lm.max_repeat / lm.min_tokens or check lm.pattern")
            elif have is not None:
                out[split] = have
            elif split != "train":  # no references: the teacher's greedy answers are what students are held to
                ids = [prompt_ids(tok, p, lm) for p in prompts]
                gen = shared_generate(teacher, tok, ids, n=1, temperature=0.0, top_p=1.0, max_new_tokens=lm.max_new_tokens,
                               seed=r.seed, device=ctx.device)
                texts = [tok.decode(g[0], skip_special_tokens=True).strip() for g in gen]
                out[split], _ = pair_seqs(tok, prompts, texts, lm, max_length=r.data.max_length, source="teacher")
            else:
                raise RecipeError("no training responses: give references (data.response_field) or let the teacher "
                                  "write them (lm.generate >= 1)")
        if lm.score == "all":  # the training and validation losses read every token after the first
            for split in ("train", "val"):
                out[split].start[:] = 1
        for split, s in out.items():
            s.save(folder / f"{split}.json")
        for split in ("train", "val"):
            ids, lp, offsets, own = shared_topk(teacher, out[split], k=lm.top_k, pad_id=pad, device=ctx.device, bf16=bf16)
            np.savez(folder / f"{split}-topk.npz", ids=ids, logprobs=lp, offsets=offsets)
            meta[f"{split}_sequences"] = len(out[split])
            meta[f"{split}_tokens"] = int(offsets[-1])
            meta[f"teacher_{split}_nll"] = float(-(own * out[split].scored()).sum() / max(offsets[-1], 1))
        meta["top_k_mass"] = float(np.exp(lp.astype(np.float32)).sum(1).mean()) if len(lp) else None
        return meta

    def load_targets(self, ctx: Context, folder: Path) -> None:
        from ._lm_data import Seqs

        ctx.extra["seqs"] = {s: Seqs.load(folder / f"{s}.json") for s in ("train", "val", "test")}
        ctx.extra["val_seqs"] = ctx.extra["seqs"]["val"]
        ctx.extra["topk"] = {s: dict(np.load(folder / f"{s}-topk.npz")) for s in ("train", "val")}


    # students ------------------------------------------------------------------------------------------
    def new_student(self, ctx: Context, teacher, *, spec=None):
        from ..models import load_model

        from ..schedules import student_seed

        spec = spec or ctx.recipe.student
        if spec.model == "layer-subset" and not spec.keep_layers and "seqs" in ctx.extra:
            spec = self._influential_layers(ctx, teacher, spec)
        s = load_model(spec, ctx.io, base=ctx.base, teacher=teacher, seed=student_seed(ctx.recipe)).module
        tv, sv = teacher.get_input_embeddings().num_embeddings, s.get_input_embeddings().num_embeddings
        if tv != sv:
            raise RecipeError(f"the student's vocabulary ({sv} tokens) is not the teacher's ({tv}): token-level "
                              "distillation compares distributions over one tokenizer's tokens; build the student from "
                              "the teacher (student.model = 'layer-subset' or 'narrow'); a student with its own "
                              "tokenizer would learn the teacher's generated text alone (sequence-level KD), which "
                              "this task does not build yet")
        if spec.keep_intermediate:
            self._prune_width(ctx, s, spec)
        if ctx.recipe.lm.vocab >= sv:
            raise RecipeError(f"lm.vocab = {ctx.recipe.lm.vocab} keeps the whole vocabulary ({sv} tokens): set it "
                              "below that, or 0 to keep every token")
        if ctx.recipe.lm.vocab and "seqs" in ctx.extra:  # (before the teacher's data: the model check alone)
            self._trim_vocab(ctx, s, spec)
        return s

    def _influential_layers(self, ctx: Context, teacher, spec):
        """A layer subset with no keep_layers keeps the teacher layers that change its hidden state most on
        the training sequences, the first and the last always: ShortGPT's block influence (Men et al. 2024,
        BI_i = 1 - mean_t cos(h_i[t], h_i+1[t])); a causal LM's middle layers are the most redundant. Evenly
        spread layers (the encoders' default) leave such a student far from its teacher before training."""
        from dataclasses import replace

        from ._lm_data import block_influence

        done = ctx.extra.setdefault("layer_choice", {})
        if spec.layers not in done:
            bi = block_influence(teacher, ctx.extra["seqs"]["train"], device=ctx.device)  # (L,)
            n = len(bi)
            if spec.layers >= n:
                keep = list(range(n))
            else:
                inner = sorted(range(1, n - 1), key=lambda i: -bi[i])[:max(spec.layers - 2, 0)]
                keep = sorted({n - 1, *inner, *([0] if spec.layers > 1 else [])})
            done[spec.layers] = {"keep": keep, "block_influence": [round(float(b), 4) for b in bi]}
            ctx.log(f"[layers] the student keeps teacher layers {keep} of 0..{n - 1}: the {spec.layers} that change "
                    "the hidden state most on the training sequences (block influence), the first and last always")
        return replace(spec, keep_layers=",".join(map(str, done[spec.layers]["keep"])))

    def _prune_width(self, ctx: Context, student, spec) -> None:
        """student.keep_intermediate: each layer's MLP keeps the channels that add most to its output on the
        training sequences, scored on the depth-pruned student itself (what its layers now read); computed
        once per student spec (each stage rebuilds the student)."""
        from ..models import lm_width

        if spec.model != "layer-subset":
            raise RecipeError(f"student.keep_intermediate prunes a layer-subset student's MLPs; a {spec.model} student "
                              "sets its width with student.intermediate")
        width = lm_width.intermediate(student)
        if spec.keep_intermediate >= width:
            raise RecipeError(f"student.keep_intermediate = {spec.keep_intermediate} keeps every MLP channel (the "
                              f"teacher's layers have {width}): set it below that, or 0")
        if "seqs" not in ctx.extra:  # the model check before the data: the shape is what it checks
            lm_width.prune(student, lm_width.choose(lm_width.weight_scores(student), spec.keep_intermediate))
            return
        done = ctx.extra.setdefault("width", {})
        key = repr(spec)
        if key not in done:
            scores = lm_width.importance(student, ctx.extra["seqs"]["train"], device=ctx.device)
            kept = lm_width.choose(scores, spec.keep_intermediate)
            share = [float(s[k].sum() / s.sum()) for s, k in zip(scores, kept)]
            done[key] = (kept, {"kept": spec.keep_intermediate, "of": width, "score_kept": [round(v, 4) for v in share]})
            ctx.log(f"[width] each MLP keeps {spec.keep_intermediate:,} of {width:,} channels, those adding most to "
                    f"its output on the training sequences ({min(share):.1%}-{max(share):.1%} of the score per layer)")
        lm_width.prune(student, done[key][0])
        ctx.extra["width_info"] = done[key][1]

    def _trim_vocab(self, ctx: Context, student, spec) -> None:
        """lm.vocab: the student's head keeps the tokens its training sequences use, and the teacher expects
        there, most. The kept ids and the starting floor are computed once per student spec (each stage
        rebuilds the student)."""
        from ..models import lm_vocab

        done = ctx.extra.setdefault("vocab", {})
        key = repr(spec)
        if key not in done:
            tok, seqs = ctx.extra["tokenizer"], ctx.extra["seqs"]["train"]
            top = ctx.extra.get("topk", {}).get("train") or {}
            kept, info = lm_vocab.kept_tokens(seqs, tok, ctx.recipe.lm.vocab, topk_ids=top.get("ids"),
                                              topk_logprobs=top.get("logprobs"))
            floor = lm_vocab.mass_preserving_floor(student, kept, seqs)
            test = np.concatenate([np.asarray(x) for x in ctx.extra["seqs"]["test"].ids] or [np.zeros(0, np.int64)])
            done[key] = (kept, floor, {**info, "kept": len(kept), "vocab": student.get_output_embeddings().weight.shape[0],
                                       "test_coverage": float(np.isin(test, kept).mean()) if len(test) else None})
            i = done[key][2]
            ctx.log(f"[vocab] the student's LM head keeps {i['kept']:,} of {i['vocab']:,} tokens ({i['used']:,} used by "
                    f"the training sequences, {i['coverage']:.2%} of their tokens kept); the rest share one logit")
        kept, floor, info = done[key]
        lm_vocab.trim(student, kept, floor=floor)
        ctx.extra["vocab_info"] = info

    def train_student(self, ctx: Context, student, teacher, *, distill: bool, checkpoint: Path, qat: bool = False,
                      mentor=None):
        seqs = ctx.extra["seqs"]["train"]
        idx = np.arange(len(seqs))
        n = ctx.recipe.quantize.train_texts
        if qat and 0 < n < len(seqs):  # quantization-aware training starts from the distilled student
            idx = np.sort(np.random.default_rng(ctx.recipe.seed + 3).choice(len(seqs), n, replace=False))
        return self._fit(ctx, student, seqs, role="student", idx=idx, teacher=teacher if distill else None,
                         mentor=mentor if distill else None, qat=qat, checkpoint=checkpoint,
                         desc="qat" if qat else ("distill" if distill else "baseline"))

    def _fit(self, ctx: Context, model, seqs, *, role: str, desc: str, checkpoint: Path, idx=None, teacher=None,
             mentor=None, qat: bool = False):
        """One training run: cross-entropy alone (teacher fine-tune, baseline), or the recipe's losses
        against the teacher's cached top-k or the teacher (or mentor) run in the step."""
        import torch

        from ..losses import get as get_loss, lm_cross_entropy
        from ..models.lm_vocab import trimmed
        from ..schedules import fit_spec
        from ..train import fit
        from ._lm_data import labels_at, length_batches, selected_logits, token_logits

        r = ctx.recipe
        idx = np.arange(len(seqs)) if idx is None else idx
        sub = seqs.subset(idx)
        pad = ctx.extra["pad_id"]
        terms = [(get_loss(k), w) for k, w in r.loss_weights().items()] if teacher is not None else []
        online = any(t.online for t, _ in terms) or mentor is not None
        guide = mentor if mentor is not None else teacher
        top = ctx.extra.get("topk", {}).get("train")
        offsets = top["offsets"] if top is not None else None
        if online:
            guide.to(ctx.device).eval()
        fs = fit_spec(ctx, role=role, n_rows=len(sub), desc=desc, qat=qat)
        if qat:  # weight-only fake quant rounds the fp32 master weights; only the matmuls after it run in
            # bf16, as in distillation (fp32 QAT is for the classifiers' activation observers)
            from dataclasses import replace

            fs = replace(fs, precision=ctx.extra.get("precision", "fp32"))
        alpha = r.distill.alpha if terms else 0.0
        on_policy = r.lm.on_policy if online and teacher is not None else 0.0
        rng = np.random.default_rng(r.seed + 11)
        # a trimmed head trains on its (N, K + 1) compact logits unless a loss reads the full distribution
        head = trimmed(model)
        compact = head is not None and not online

        def step(forward, batch):
            ids, mask, sel, rows = batch
            if on_policy and rng.random() < on_policy:  # GKD: the student's own sample replaces the response
                ids, mask, sel = _own_samples(model, ids, mask, sel, pad, ctx.recipe.lm.max_new_tokens)
            logits = forward(ids, mask, sel, compact)  # (N, V), or (N, K + 1) compact
            labels = labels_at(ids, sel)
            s = ({"compact_logits": logits, "columns": head.columns, "log_trimmed": head.log_trimmed} if compact
                 else {"token_logits": logits})
            if not terms:
                return lm_cross_entropy(s, labels)
            t = {}
            if online:
                with torch.no_grad():
                    t["token_logits"] = token_logits(guide, ids, mask, sel).float()
            else:
                orig = idx[rows.cpu().numpy()]
                pieces = [np.arange(offsets[i], offsets[i + 1]) for i in orig]
                at = np.concatenate(pieces)
                t["topk_ids"] = torch.from_numpy(top["ids"][at]).to(ids.device)
                t["topk_logprobs"] = torch.from_numpy(top["logprobs"][at].astype(np.float32)).to(ids.device)
            loss = logits.new_zeros(())
            for term, w in terms:
                loss = loss + w * term.fn(s, t, None, labels=labels, temperature=r.distill.temperature, alpha=alpha)
            return loss

        try:
            # trained as selected_logits(model): the step's forward is DDP's under torchrun; model's own
            # weights are the ones trained (the wrapper holds it)
            res = fit(selected_logits(model), fs, batches=length_batches(sub, fs.batch_size, r.seed, pad), step=step,
                      validate=lambda m: self.validate(ctx, m.lm) or 0.0, checkpoint=checkpoint, log=ctx.log,
                      device=ctx.device)
        finally:
            if guide is not None:
                guide.to("cpu")
        res.info.update({"sequences": len(sub), "val_perplexity": float(np.exp(-res.val_score))})
        return res

    def new_qat(self, ctx: Context, student):
        from ..quantize.weight_only import prepare_weights

        return prepare_weights(student, bits=_bits(ctx.target), block_size=ctx.recipe.quantize.block_size,
                               head_bits=_head_bits(ctx))

    # deliverables -------------------------------------------------------------------------------------
    def export(self, ctx: Context, models: dict, folder: Path) -> dict:
        from ._lm_export import export_all

        return export_all(self, ctx, models, folder)

    def benchmark_key(self, ctx: Context) -> dict:
        lm = ctx.recipe.lm
        return {"prompt_tokens": lm.bench_prompt_tokens, "new_tokens": lm.bench_new_tokens, "repeats": lm.bench_repeats,
                "eval_prompts": lm.eval_prompts, "timing": "alternating"}

    def benchmark(self, ctx: Context, export_dir: Path, folder: Path) -> dict:
        from ._lm_export import benchmark_all

        return benchmark_all(self, ctx, export_dir, folder)

    def assemble(self, ctx: Context, done: list, data_seconds: float, params: dict) -> dict:
        from ._lm_report import assemble

        return assemble(self, ctx, done, data_seconds, params)

    def render_markdown(self, r: dict) -> str | None:
        from ._lm_report import render

        return render(r)

    def summary_lines(self, r: dict) -> list[str] | None:
        from ._lm_report import summary

        return summary(r)

    def manifest(self, ctx: Context, export_meta: dict) -> dict:
        tok = ctx.extra["tokenizer"]
        from ._lm_data import uses_chat

        name = export_meta["deliverable"]
        inputs = [{**i, "shape": [_axis(d) for d in i["shape"]]} for i in export_meta["inputs"]]
        return {"inputs": inputs,
                "output": {"name": "logits", "shape": ["batch", "sequence", len(tok)], "dtype": "float32",
                           "meaning": "next-token logits"},
                "preprocessing": {"kind": "causal-lm", "tokenizer": f"{name}/tokenizer.json",
                                  "chat_template": uses_chat(tok, ctx.recipe.lm), "instruction": ctx.recipe.lm.instruction,
                                  "eos_token_id": int(tok.eos_token_id), "max_length": ctx.recipe.data.max_length},
                "labels": []}

    def quality_points(self, value: float) -> float:
        return float(value)

    def quality_short(self) -> str:
        return "ppl"

    def model_labels(self) -> dict[str, str]:
        return {"teacher": "teacher", "student-baseline": "student (cross-entropy)", "student-fp32": "student FP32"}


tasks.register(TextGeneration.name)(TextGeneration())


def _axis(d):
    """onnxruntime's symbolic axis names of an optimum export, in the manifest's words."""
    if isinstance(d, int):
        return d
    d = str(d)
    return ("total_sequence" if "past" in d and "+" in d else "past_sequence" if "past" in d
            else "batch" if "batch" in d else "sequence")


def _bits(target) -> int:
    return 4 if target.precision == "int4" else 8


def _head_bits(ctx) -> int:
    """The LM head's bits in the quantized deliverable: lm.head_bits in a 4-bit build, 8 in an 8-bit one."""
    bits = _bits(ctx.target)
    return ctx.recipe.lm.head_bits if bits == 4 else bits


def _own_samples(model, ids, mask, sel, pad: int, max_new: int):
    """GKD's on-policy batch: each prompt of the batch (the tokens before its scored span) continued by the
    student's own sample; the sample becomes the scored span."""
    import torch

    from ._lm_data import Seqs, collate

    prompts = [ids[b, :int(sel[b].nonzero()[0]) + 1].tolist() if sel[b].any() else ids[b, :1].tolist()
               for b in range(len(ids))]
    was = model.training
    model.eval()
    out = []
    with torch.no_grad():
        for p in prompts:
            g = model.generate(input_ids=torch.tensor([p], device=ids.device), max_new_tokens=max_new, do_sample=True,
                               temperature=1.0, pad_token_id=pad)[0].tolist()
            out.append(np.array(g, dtype=np.int64))
    model.train(was)
    s = Seqs(out, np.array([len(p) for p in prompts], dtype=np.int64), ["student"] * len(out), list(range(len(out))))
    keep = [i for i, x in enumerate(s.ids) if len(x) > s.start[i]]
    s = s.subset(keep) if keep else s
    a, m, z = collate(s, list(range(len(s))), pad)
    return a.to(ids.device), m.to(ids.device), z.to(ids.device)
