"""Text tasks on Hugging Face encoders: text-classification (texts -> class logits) and text-embedding
(texts -> sentence embeddings; the teacher's embeddings of unlabeled text are the targets).

A student learns from the teacher's outputs computed once per text, plus the losses of its method's
family (edgekd.losses, each with its formula and paper) that read both models' hidden states, attention
or pooled embeddings (then the teacher runs in the step):

    L = alpha * KD(s, t; T) + (1 - alpha) * CE(s, y)          (classification)
      + sum_k w_k * L_k(features_s, features_t)                (k: Recipe.loss_weights())

With a mentor other than the teacher (an assistant, the born-again baseline), t is the mentor's
output, computed in the step.
"""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np

from ..errors import EdgeKDError, InputError, RecipeError
from . import Context, Task, _text_int8, _text_report, tasks

SEQ_LENS = (16, 64, 128)


class _TextTask(Task):
    kind = "text"
    classify = False

    def check_recipe(self, recipe) -> None:
        t = recipe.teacher
        if t.scheme != "hf":
            raise RecipeError(f"task {self.name} needs a Hugging Face teacher: teacher.model = 'hf:FOLDER_OR_HUB_ID' "
                              f"(got {t.model!r})")
        if recipe.quantize.weight_bits != 8:
            raise RecipeError(f"quantize.weight_bits must be 8 for task {self.name} (its linears are quantized by "
                              f"onnxruntime's INT8 quantizer), got {recipe.quantize.weight_bits}")
        if recipe.student.scheme in ("arch",) and recipe.student.model.startswith("mnist"):
            raise RecipeError(f"task {self.name} needs a text student: student.model = 'layer-subset', 'narrow', "
                              f"or 'hf:...' (got {recipe.student.model!r})")
        counts = [v for v in recipe.distill.assistant_list() if v.isdigit()]
        if counts and recipe.student.model not in ("layer-subset", "narrow"):
            raise RecipeError(f"distill.assistants item '{counts[0]}' is a layer count, which needs a student built from "
                              f"the teacher (student.model = 'layer-subset' or 'narrow'); give assistants as models "
                              f"('hf:...') for student.model = {recipe.student.model!r}")

    def prepare(self, ctx: Context) -> None:
        from ..models import ModelIO
        from ..models.hf import resolve_ref
        from ..models.hf_text import load_tokenizer, token_limit

        d = ctx.data
        if d.kind != "text":
            raise InputError(f"task {self.name} needs text, but data.source '{ctx.recipe.data.source}' gives {d.kind}; "
                             "use a text source (csv, jsonl, text-lines, hf-dataset with a text column)")
        if self.classify and (d.y_train is None or d.num_classes < 2):
            raise InputError(f"task {self.name} needs labelled texts in at least two classes; data.source "
                             f"'{ctx.recipe.data.source}' gave no '{ctx.recipe.data.label_field}' labels "
                             "(set data.label_field to the label column)")
        ctx.io = ModelIO("text", (), d.num_classes if self.classify else 0, list(d.labels) if self.classify else [])
        spec = ctx.recipe.teacher
        ref = resolve_ref(spec.ref, ctx.base)
        tok = load_tokenizer(ref, trust_remote_code=spec.trust_remote_code)
        n = ctx.recipe.data.max_length
        limit = token_limit(ref, tok, trust_remote_code=spec.trust_remote_code)
        if limit and limit < n:  # longer inputs would index past the model's positions
            ctx.log(f"[data] texts cut to {limit} tokens (data.max_length {n}): the teacher takes at most {limit}")
            n = limit
        ctx.extra["max_length"] = n
        ctx.extra["tokenizer"] = tok
        ctx.extra["tokens"] = {s: _tokenize(tok, getattr(d, f"x_{s}"), max_length=n) for s in ("train", "val", "test")}

    def fingerprint(self, ctx: Context) -> dict:
        return {"vocab": len(ctx.extra["tokenizer"]), "max_length": ctx.extra["max_length"]}

    # teacher ---------------------------------------------------------------------------------------
    def load_teacher(self, ctx: Context):
        from ..models import load_model

        return load_model(ctx.recipe.teacher, ctx.io, base=ctx.base, seed=ctx.recipe.seed)

    def train_teacher(self, ctx: Context, teacher, checkpoint: Path):
        """Fine-tune the whole teacher on the labels (the usual schedule for an encoder: AdamW, 10%
        warm-up, linear decay), or with teacher.fine_tune = "probe" only a linear head on its frozen
        embeddings. Fine-tuning first, then distilling, is what practitioners find works best."""
        import torch.nn.functional as F

        from ..schedules import fit_spec
        from ..train import fit

        spec, toks, d = ctx.recipe.teacher, ctx.extra["tokens"], ctx.data
        if not self.classify:
            raise RecipeError(f"task {self.name} has no labels to fine-tune the teacher on; set teacher.fine_tune = 'never'")
        probe = spec.fine_tune == "probe"
        if probe:  # the encoder stays frozen; its head (and projection) learn
            for p in teacher.base.parameters():
                p.requires_grad_(False)
        bs = spec.batch_size
        fs = fit_spec(ctx, role="teacher", n_rows=len(d.y_train), desc="teacher")
        y = d.y_train
        import torch

        yt = torch.from_numpy(y)

        def step(forward, batch):
            ids, mask, idx = batch
            return F.cross_entropy(forward(ids, mask), yt[idx.cpu()].to(ids.device),
                                   label_smoothing=spec.label_smoothing)

        try:
            return fit(teacher, fs, batches=_length_batches(toks["train"], bs, ctx.recipe.seed),
                       step=step, validate=lambda m: self.validate(ctx, m), checkpoint=checkpoint, log=ctx.log,
                       device=ctx.device)
        finally:
            for p in teacher.parameters():
                p.requires_grad_(True)

    def validate(self, ctx: Context, model) -> float | None:
        if not self.classify:
            return None
        out = encode(model, ctx.extra["tokens"]["val"], device=ctx.device)
        return float((out.argmax(1) == ctx.data.y_val).mean())

    def teacher_targets(self, ctx: Context, teacher, folder: Path) -> dict:
        from ..shard import split_rows

        meta, bf16 = {}, ctx.extra.get("precision") == "bf16"
        for split in ("train", "val", "test"):
            tokens = ctx.extra["tokens"][split]
            # under torchrun each rank encodes its share of the rows (edgekd.shard)
            np.save(folder / f"{split}.npy", split_rows(len(tokens["input_ids"]), lambda idx: encode(
                teacher, {k: v[idx] for k, v in tokens.items()}, device=ctx.device, bf16=bf16)))
        if self.classify:
            meta["teacher_train_accuracy"] = float((np.load(folder / "train.npy").argmax(1) == ctx.data.y_train).mean())
        return meta

    def load_targets(self, ctx: Context, folder: Path) -> None:
        out = {s: np.load(folder / f"{s}.npy") for s in ("train", "val", "test")}
        ctx.extra["targets"] = out
        ds, d = ctx.recipe.distill, ctx.data
        keep = np.arange(len(d.x_train))
        ctx.extra["filtering"] = None
        if self.classify and (ds.drop_teacher_wrong or ds.min_teacher_confidence > 0):
            z = out["train"] - out["train"].max(1, keepdims=True)
            p = np.exp(z) / np.exp(z).sum(1, keepdims=True)  # (N, K)
            ok = p.max(1) >= ds.min_teacher_confidence
            if ds.drop_teacher_wrong:
                ok &= out["train"].argmax(1) == d.y_train
            keep = np.flatnonzero(ok)
            ctx.extra["filtering"] = {"kept": int(len(keep)), "dropped": int(len(d.x_train) - len(keep)),
                                      "drop_teacher_wrong": ds.drop_teacher_wrong,
                                      "min_teacher_confidence": ds.min_teacher_confidence}
            ctx.log(f"[filter] kept {len(keep)} of {len(d.x_train)} training texts (teacher wrong or unsure: dropped)")
            if len(keep) == 0:
                raise EdgeKDError("teacher-output filtering dropped every training text; lower distill.min_teacher_confidence")
        ctx.extra["keep"] = keep

    # students --------------------------------------------------------------------------------------
    def new_student(self, ctx: Context, teacher, *, spec=None):
        from ..models import load_model

        from ..schedules import student_seed

        return load_model(spec or ctx.recipe.student, ctx.io, base=ctx.base, teacher=teacher,
                          seed=student_seed(ctx.recipe)).module

    def _layer_map(self, ctx: Context, student, teacher) -> dict[int, int]:
        from ..recipe import parse_layer_map

        ds = ctx.recipe.distill
        lt, ls = teacher.num_layers, student.num_layers
        if ds.layer_map:
            m = parse_layer_map(ds.layer_map)
        elif getattr(student, "kept_layers", None):
            m = {i + 1: k + 1 for i, k in enumerate(student.kept_layers)}  # each copied layer learns its origin
        else:
            m = {i: round(i * lt / ls) for i in range(1, ls + 1)}  # TinyBERT's uniform map
        if max(m) > ls or max(m.values()) > lt:
            raise RecipeError(f"distill.layer_map {ds.layer_map!r} names layers beyond the student's {ls} or the teacher's {lt}")
        return m

    def train_student(self, ctx: Context, student, teacher, *, distill: bool, checkpoint: Path, qat: bool = False,
                      mentor=None):
        import torch

        from ..losses import get as get_loss
        from ..quantize import qat_eval_mode, qat_train_mode
        from ..schedules import fit_spec
        from ..train import fit

        ds, qs, d = ctx.recipe.distill, ctx.recipe.quantize, ctx.data
        keep = ctx.extra["keep"]
        if qat and 0 < qs.train_texts < len(keep):  # QAT starts from the distilled student: a subset suffices
            keep = np.sort(np.random.default_rng(ctx.recipe.seed + 3).choice(keep, qs.train_texts, replace=False))
        tokens = {k: v[keep] for k, v in ctx.extra["tokens"]["train"].items()}
        target = torch.from_numpy(np.ascontiguousarray(ctx.extra["targets"]["train"][keep]))
        y = torch.from_numpy(d.y_train[keep]) if self.classify else None
        # the classifier's baseline: kd at alpha 0, the labels' cross-entropy alone
        weights = ctx.recipe.loss_weights() if distill else {"kd": 1.0} if self.classify else {}
        alpha = ds.alpha if distill else 0.0
        terms = [(get_loss(k), w) for k, w in weights.items()]
        reads = {loss.reads for loss, _ in terms}
        response = self.response  # what the cached targets hold; any other feature needs the teacher online
        online = any(loss.online or loss.reads != response for loss, _ in terms)
        mentor = mentor if distill else None
        attention = "attention" in reads
        layer_map = self._layer_map(ctx, student, teacher)
        extra = {}
        if "hidden" in reads and student.hidden_size != teacher.hidden_size:
            torch.manual_seed(ctx.recipe.seed)
            extra["proj"] = torch.nn.Linear(student.hidden_size, teacher.hidden_size)  # TinyBERT's W_h
        if online:
            teacher.to(ctx.device).eval()
        if mentor is not None:
            mentor.to(ctx.device).eval()
        # word embeddings stay frozen: most of the parameters, and the vocabulary is the teacher's anyway
        student.input_embeddings().weight.requires_grad_(False)
        # an embedding baseline has no labels to learn from: it is the student as initialised
        fs = fit_spec(ctx, role="student", n_rows=len(keep), qat=qat, epochs=None if (qat or distill or self.classify) else 0,
                      desc="qat" if qat else ("distill" if distill else "baseline"))

        def step(forward, batch):
            ids, mask, idx = batch
            fs_ = _as_float(student.features(ids, mask, attention=attention))  # under bf16 autocast: losses in fp32
            ft = {}
            if online:
                with torch.no_grad():
                    ft = _as_float(teacher.features(ids, mask, attention=attention))
            tgt = target[idx.cpu()].to(ids.device)
            if mentor is not None:  # the response comes from the mentor (no family term reads the teacher then)
                with torch.no_grad():
                    tgt = mentor.features(ids, mask)[response].float()
            ft[response] = tgt
            labels = y[idx.cpu()].to(ids.device) if self.classify else None
            loss = fs_["embedding"].new_zeros(())
            for term, w in terms:
                loss = loss + w * term.fn(fs_, ft, mask, labels=labels, temperature=ds.temperature, alpha=alpha,
                                          layer_map=layer_map, proj=extra.get("proj"))
            return loss

        val_tokens, val_target = ctx.extra["tokens"]["val"], ctx.extra["targets"]["val"]

        def validate(model) -> float:
            out = encode(model, val_tokens, device=ctx.device)
            if self.classify:
                return float((out.argmax(1) == d.y_val).mean())
            return mean_cosine(out, val_target)

        try:
            r = fit(student, fs, batches=_length_batches(tokens, ds.batch_size, ctx.recipe.seed), step=step,
                    validate=validate, extra=extra, checkpoint=checkpoint, log=ctx.log, device=ctx.device,
                    train_mode=qat_train_mode if qat else None, eval_mode=qat_eval_mode if qat else None)
        finally:
            teacher.to("cpu")
            if mentor is not None:
                mentor.to("cpu")
        r.info.update({"layer_map": layer_map, "keep_layers": getattr(student, "kept_layers", None), "train_texts": len(keep)})
        return r

    def new_qat(self, ctx: Context, student):
        from ..quantize import QuantizeSpec, prepare, set_observe

        q = prepare(student, QuantizeSpec(reduce_range=ctx.extra["reduce_range"]))  # the Linear route, in eval mode
        set_observe(q, True)
        n = ctx.recipe.quantize.calibration
        encode(q, {k: v[:n] for k, v in ctx.extra["tokens"]["train"].items()})  # one pass: ranges from data
        set_observe(q, False)
        return q

    # deliverables ----------------------------------------------------------------------------------
    def export(self, ctx: Context, models: dict, folder: Path) -> dict:
        """optimum's ONNX export of every model (dynamic batch and sequence), INT8 QDQ linears with the
        ranges QAT learned for the quantized student, the target's form; each checked against PyTorch
        on held-out texts fed one at a time at their own length, as an app runs them."""
        import shutil

        from .. import backends
        from ..export import check_integer_kernels, check_parity, embedding_parity
        from ..export_hf import export_text
        from ..quantize import quantize_onnx, strip_fake_quant

        es = ctx.recipe.export
        # the saved tokenizer truncates where the build did, so an app calling it with truncation=True
        # (transformers.pipeline does) feeds the model what it was trained and checked on
        tok = copy.copy(ctx.extra["tokenizer"])
        tok.model_max_length = ctx.extra["max_length"]
        xp = {k: v[: es.parity_samples] for k, v in ctx.extra["tokens"]["val"].items()}
        feeds = _row_feeds(xp)
        calib = _row_feeds({k: v[: ctx.recipe.quantize.calibration] for k, v in ctx.extra["tokens"]["train"].items()})
        meta: dict = {"parity": {}, "reduce_range": ctx.extra["reduce_range"], "exporters": {}}
        for name, model in models.items():
            int8 = name == "student-int8"
            sub = folder / f".{name}"
            info = export_text(strip_fake_quant(model) if int8 else model, sub, opset=es.opset, tokenizer=tok)
            meta["exporters"][name] = info
            if int8:
                from ..backends import complete_feed

                feeds_in = [complete_feed(f, info["inputs"]) for f in calib]
                val = [complete_feed(f, info["inputs"]) for f in _row_feeds(ctx.extra["tokens"]["val"])]
                act = _text_int8.activations(self, ctx, model, sub / "model.onnx", folder, feeds_in, val, SEQ_LENS)
                meta["int8_activations"] = act
                float_layers: list[str] = []
                if ctx.recipe.quantize.max_accuracy_drop:
                    meta["accuracy_budget"] = _text_int8.fit_budget(self, ctx, model, sub / "model.onnx", folder,
                                                                    feeds_in, val, act["chosen"])
                    float_layers = meta["accuracy_budget"]["float_layers"]
                quantize_onnx(sub / "model.onnx", folder / "student-int8.onnx", feeds_in,
                              reduce_range=ctx.extra["reduce_range"], linear_only=True, qat_model=model,
                              float_layers=float_layers, activations=act["chosen"])
                if es.int8_embeddings:
                    from ..quantize import quantize_gather_tables

                    meta["int8_embeddings"] = quantize_gather_tables(folder / "student-int8.onnx")
                meta["int8_ops"] = check_integer_kernels(folder / "student-int8.onnx")
                if act["chosen"] != "static":  # no learned ranges in the graph: its reference is the float model
                    model = strip_fake_quant(model)
                if float_layers:  # the PyTorch reference of the parity check: the same layers float
                    from ..quantize import leave_linears_float

                    model = leave_linears_float(model, float_layers) if act["chosen"] == "static" else model
                if act.get("ship_fp32") and ctx.recipe.quantize.int8_layers == "auto":
                    # neither INT8 scheme beats float on this runtime: the target ships the FP32 student
                    shutil.copy2(folder / "student-fp32.onnx", folder / "student-int8.onnx")
                    model, meta["int8_ops"] = models["student-fp32"], {}
                    c = act["cases"][-1]
                    meta["int8_shipped_fp32"] = {"int8_ms": act["candidates"][act["chosen"]]["p50_ms"][c],
                                                 "fp32_ms": act["fp32_p50_ms"][c], "at": f"{c} tokens"}
            else:
                shutil.move(str(sub / "model.onnx"), folder / f"{name}.onnx")
            if name == "student-fp32":  # the deliverable's config and tokenizer files
                shutil.rmtree(folder / "hf", ignore_errors=True)
                (sub / "model.onnx").unlink(missing_ok=True)
                shutil.copytree(sub, folder / "hf")
            shutil.rmtree(sub, ignore_errors=True)
            ref = encode(model, xp)
            for fname in backends.make_files(folder, name, ctx.target)[0]:
                run = backends.load(folder / fname, threads=1)
                out = np.concatenate([run(f) for f in feeds])
                lo = es.int8_min_agreement if int8 else es.fp32_min_agreement
                if self.classify:
                    meta["parity"][fname] = check_parity(fname, out, ref, min_agreement=lo,
                                                         max_abs_diff=None if int8 else es.fp32_max_abs_diff).to_dict()
                else:
                    meta["parity"][fname] = embedding_parity(fname, out, ref, min_cosine=lo)
        return meta

    def timing_graph(self, ctx: Context, model, folder: Path, *, int8: bool):
        from ..backends import complete_feed
        from ..export_hf import export_text
        from ..quantize import quantize_onnx

        names = export_text(model, folder, opset=ctx.recipe.export.opset, tokenizer=ctx.extra["tokenizer"])["inputs"]
        n = _text_int8.lengths(ctx.extra["max_length"], SEQ_LENS)[-1]  # the headline length
        feed = _text_int8.length_feeds(ctx.extra["tokenizer"], list(ctx.data.x_val), [n], error=lambda s: InputError(
            f"the validation texts hold fewer than {s} tokens; raise data.n_val"))[str(n)]
        if not int8:
            return folder / "model.onnx", feed
        # a timing proxy (the ranges do not matter): dynamic activations need no calibration, but OpenVINO
        # runs them in float (edgekd.payoff.choose_activations), so there static ones, calibrated on `feed`
        static = ctx.target.runtime == "openvino"
        calib = [complete_feed(feed, names)] if static else None
        quantize_onnx(folder / "model.onnx", folder / "int8.onnx", calib,
                      reduce_range=ctx.extra["reduce_range"], linear_only=True, activations="static" if static else "dynamic")
        return folder / "int8.onnx", feed

    def bench_inputs(self, ctx: Context):
        from ..bench import BenchInputs

        # lengths a deployed model never sees are not measured
        lengths = _text_int8.lengths(ctx.extra["max_length"], SEQ_LENS)
        lat = _text_int8.length_feeds(ctx.extra["tokenizer"], list(ctx.data.x_test), lengths, error=lambda s: InputError(
            f"the test texts hold fewer than {s} tokens; raise data.n_test"))
        ctx.extra["sequence_lengths"] = lengths
        ids, mask = ctx.extra["tokens"]["test"]["input_ids"], ctx.extra["tokens"]["test"]["attention_mask"]
        order = np.argsort(mask.sum(1), kind="stable")
        feeds = []
        for i in range(0, len(ids), 32):  # batches of similar length, trimmed to their longest text
            idx = order[i:i + 32]
            n_tok = max(1, int(mask[idx].sum(1).max()))
            feeds.append({"input_ids": ids[idx, :n_tok], "attention_mask": mask[idx, :n_tok]})
        return BenchInputs(eval=feeds, cases=lat, order=order, case_key="latency_by_seq", seconds_per_case=6.0,
                           throughput=False)

    def manifest(self, ctx: Context, export_meta: dict) -> dict:
        info, tok = export_meta["exporters"]["student-fp32"], ctx.extra["tokenizer"]
        width = ctx.extra["targets"]["test"].shape[1]
        pool = info.get("pooling", {})
        return {
            "inputs": [{"name": n, "shape": ["batch", "sequence"], "dtype": "int64"} for n in info["inputs"]],
            "output": {"name": info["output"], "shape": ["batch", width], "dtype": "float32",
                       "meaning": "unnormalized class scores; argmax is the predicted label" if self.classify else
                       "sentence embedding, pooled inside the graph; compare with cosine"},
            # the calls transformers' fast tokenizer made at build time, as data (edgekd.runtime repeats them
            # with `tokenizers` on hf/tokenizer.json)
            "preprocessing": {**ctx.data.preprocessing, "steps": [{
                "op": "tokenize", "folder": "hf", "file": "tokenizer.json" if tok.is_fast else None,
                "max_length": ctx.extra["max_length"], "padding": "longest", "truncation": True,
                "add_special_tokens": True, "pad_id": int(tok.pad_token_id), "pad_token": str(tok.pad_token),
                "padding_side": tok.padding_side, "truncation_side": tok.truncation_side, "feeds": info["inputs"]}]},
            "pooling": pool,
            "labels": list(ctx.io.labels),
            **({"precision": "fp32"} if export_meta.get("int8_shipped_fp32") else {}),  # what the app runs
        }

    def report_extra(self, ctx: Context) -> dict:
        return {"teacher_filtering": ctx.extra.get("filtering"), "data_origin": ctx.data.origin,
                "sequence_lengths": ctx.extra.get("sequence_lengths", list(SEQ_LENS))}

    # report: the sections and phrases of edgekd.tasks._text_report ------------------------------------------
    def quality_points(self, value: float) -> float:
        return 100 * value  # accuracy and cosine fidelity: in [0, 1]

    def quality_phrase(self, r: dict, x: dict) -> str:
        return _text_report.quality_phrase(self, r, x)

    def quality_short(self) -> str:
        return "acc" if self.classify else "cosine"

    def model_labels(self) -> dict[str, str]:
        return _text_report.LABELS

    def latency_input(self, r: dict) -> str:
        return f"{r['sequence_lengths'][-1]} tokens"  # the longest length timed: the headline latency

    def distillation_check(self, gain: float) -> str:
        return _text_report.distillation_check(self, gain)

    def distillation_verdict(self, r: dict) -> list[str]:
        return _text_report.distillation_verdict(self, r)

    def report_parts(self, r: dict):
        return _text_report.report_parts(self, r)


class TextClassification(_TextTask):
    name = "text-classification"
    response = "logits"
    quality = "accuracy"
    quality_label = "test accuracy"
    classify = True

    def scores(self, ctx: Context, outputs, teacher_outputs) -> dict:
        y = ctx.data.y_test
        return {"accuracy": float((outputs.argmax(1) == y).mean()),
                "agreement": float((outputs.argmax(1) == teacher_outputs.argmax(1)).mean())}

    def item_scores(self, ctx: Context, outputs, teacher_outputs):
        return outputs.argmax(1) == ctx.data.y_test  # (N,) bool: each test text right or wrong


class TextEmbedding(_TextTask):
    name = "text-embedding"
    response = "embedding"
    quality = "fidelity_cosine"
    quality_label = "cosine fidelity to teacher"

    def check_recipe(self, recipe) -> None:
        super().check_recipe(recipe)
        d = recipe.distill
        if d.resolved_method == "self":
            raise RecipeError("distill.method = 'self' needs labels to train the first generation on, and task = "
                              "'text-embedding' has none; use 'response', 'feature', 'relation' or 'progressive'")
        if recipe.teacher.fine_tune in ("always", "probe"):
            raise RecipeError("teacher.fine_tune must be 'auto' or 'never' for task = 'text-embedding' (no labels to "
                              f"fine-tune on), got {recipe.teacher.fine_tune!r}")

    def scores(self, ctx: Context, outputs, teacher_outputs) -> dict:
        # fidelity as the app sees it: both models' runtime outputs
        return {"fidelity_cosine": mean_cosine(outputs, teacher_outputs),
                "neighbour_overlap_at_10": neighbour_overlap(outputs, teacher_outputs, k=10)}

    def item_scores(self, ctx: Context, outputs, teacher_outputs):
        return row_cosines(outputs, teacher_outputs)  # (N,) float: each test text's cosine to the teacher


tasks.register(TextClassification.name)(TextClassification())
tasks.register(TextEmbedding.name)(TextEmbedding())


# helpers -------------------------------------------------------------------------------------------

def _tokenize(tokenizer, texts: list[str], *, max_length: int) -> dict[str, np.ndarray]:
    """input_ids / attention_mask (N, max_length) int64, padded; batches are trimmed to their longest
    text at use, so padding costs nothing in training."""
    enc = tokenizer(list(texts), padding="max_length", truncation=True, max_length=max_length, return_tensors="np")
    return {"input_ids": enc["input_ids"].astype(np.int64), "attention_mask": enc["attention_mask"].astype(np.int64)}


def _order(mask: np.ndarray, batch_size: int, rng: np.random.Generator | None) -> list[np.ndarray]:
    """Index batches of texts of similar length (shuffled in chunks of 50 batches, then sorted by length
    inside each chunk), so trimming a batch to its longest text wastes little on padding.
    rng None: in length order (evaluation)."""
    n, lengths = len(mask), mask.sum(1)
    if rng is None:
        order = np.argsort(lengths, kind="stable")
        return [order[i:i + batch_size] for i in range(0, n, batch_size)]
    order, out, chunk = rng.permutation(n), [], batch_size * 50
    for c in range(0, n, chunk):
        part = order[c:c + chunk]
        part = part[np.argsort(lengths[part], kind="stable")]
        out += [part[i:i + batch_size] for i in range(0, len(part), batch_size)]
    return [out[i] for i in rng.permutation(len(out))]


def _feed(tokens: dict, idx):
    import torch

    mask = tokens["attention_mask"][idx]
    s = max(1, int(mask.sum(1).max()))  # trim padding to the longest text of the batch
    return (torch.from_numpy(np.ascontiguousarray(tokens["input_ids"][idx, :s])),
            torch.from_numpy(np.ascontiguousarray(mask[:, :s])))


def _length_batches(tokens: dict, batch_size: int, seed: int):
    """batches(epoch, generator) -> (input_ids, attention_mask, row indices): the epoch's order comes from
    (seed, epoch), so a resumed run sees the same batches."""
    import torch

    def batches(epoch: int, g):
        for idx in _order(tokens["attention_mask"], batch_size, np.random.default_rng([seed, epoch])):
            ids, mask = _feed(tokens, idx)
            yield ids, mask, torch.from_numpy(idx)

    return batches


def encode(model, tokens: dict, *, batch_size: int = 64, device: str = "cpu", bf16: bool = False) -> np.ndarray:
    """The model's output (embedding or logits) for every text, float32, in input order; leaves the
    model's train/eval flags as they are. bf16: under bfloat16 autocast (and inference mode, where
    autocast's casts of the weights are cheap)."""
    import contextlib

    import torch

    model.to(device)
    out = None
    mode = (torch.autocast(torch.device(device).type, dtype=torch.bfloat16), torch.inference_mode()) if bf16 else \
        (contextlib.nullcontext(), torch.no_grad())
    with mode[0], mode[1]:
        for idx in _order(tokens["attention_mask"], batch_size, None):
            ids, mask = _feed(tokens, idx)
            y = model(ids.to(device), mask.to(device)).float().cpu().numpy()
            if out is None:
                out = np.zeros((len(tokens["input_ids"]), y.shape[1]), np.float32)
            out[idx] = y
    model.to("cpu")
    return out


def _as_float(features: dict) -> dict:
    """Floating tensors (and lists of them) of a features dict as float32."""
    def f(v):
        if isinstance(v, (list, tuple)):
            return [f(x) for x in v]
        return v.float() if hasattr(v, "is_floating_point") and v.is_floating_point() else v

    return {k: f(v) for k, v in features.items()}


def _row_feeds(tokens: dict) -> list[dict]:
    """One batch-1 feed per text, cut to its own length (no padding), as an app would run it."""
    lengths = np.maximum(tokens["attention_mask"].sum(1), 1)
    return [{k: v[i:i + 1, : int(lengths[i])] for k, v in tokens.items()} for i in range(len(lengths))]


def row_cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine similarity of matching rows of a and b, both (N, D) -> (N,)."""
    a = a / np.linalg.norm(a, axis=1, keepdims=True).clip(1e-12)
    b = b / np.linalg.norm(b, axis=1, keepdims=True).clip(1e-12)
    return (a * b).sum(1)


def mean_cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(row_cosines(a, b).mean())


def neighbour_overlap(a: np.ndarray, b: np.ndarray, *, k: int = 10) -> float:
    """Mean overlap of the k nearest neighbours (cosine, self excluded) of each row under embeddings
    a (N, D) and b (N, D'): |kNN_a(i) & kNN_b(i)| / k, averaged over i."""
    def knn(e):
        e = e / np.linalg.norm(e, axis=1, keepdims=True).clip(1e-12)
        sim = e @ e.T  # (N, N)
        np.fill_diagonal(sim, -np.inf)
        return np.argpartition(-sim, k, axis=1)[:, :k]

    na, nb = knn(a.astype(np.float64)), knn(b.astype(np.float64))
    return float(np.mean([len(set(x) & set(y)) / k for x, y in zip(na, nb)]))
