"""One causal LM, one fresh process, on onnxruntime or OpenVINO: prefill and decode speed, time to
first token, memory and quality. Run as `python -m edgekd._lm_bench_worker CONFIG.json RESULT.json`
(edgekd.lm_bench writes both); imports no torch. An edgekd error ends the process with its one-line
message as the last line of stderr."""

from __future__ import annotations

import json
import sys
import time

import numpy as np

from .errors import EdgeKDError, InputError


def _status_mb(field: str) -> float:
    """A memory line of /proc/self/status in MB: VmHWM is the peak RSS of this process alone (getrusage's
    ru_maxrss carries the parent's peak across exec), VmRSS the current one."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _stats(x) -> dict:
    x = np.asarray(x, np.float64)
    return {"mean": float(x.mean()), "std": float(x.std())}


def _prefill(lm, ids: np.ndarray) -> float:
    """Seconds from the prompt to its first new token (the argmax of the last position's logits)."""
    t = time.perf_counter()
    logits, _ = lm.prefill(ids)
    int(np.argmax(logits[-1]))
    return time.perf_counter() - t


def _decode(lm, ids: np.ndarray, new_tokens: int) -> np.ndarray:
    """Seconds of each of `new_tokens` greedy steps after the prompt `ids` (new_tokens,). Eos does not
    stop it: every model decodes the same number of tokens."""
    logits, cache = lm.prefill(ids)
    token = int(np.argmax(logits[-1]))
    out = np.empty(new_tokens)
    for i in range(new_tokens):
        t = time.perf_counter()
        logits, cache = lm.step(token, cache)
        token = int(np.argmax(logits))
        out[i] = time.perf_counter() - t
    return out


class Speed:
    """Prefill at each prompt length that fits the context, then decode after the first, one repeat per
    `run()` after one warm-up of each at construction; `summary()` the measures over the repeats run."""

    def __init__(self, lm, prompt: np.ndarray, cfg: dict):
        self.lm, self.prompt, self.new = lm, prompt, cfg["new_tokens"]
        limit = lm.context - self.new if lm.context is not None else None
        self.lengths = [n for n in cfg["prompt_lengths"] if limit is None or n <= limit]
        self.skipped = {str(n): f"{n} prompt + {self.new} new tokens exceed the context of {lm.context}"
                        for n in cfg["prompt_lengths"] if n not in self.lengths}
        if not self.lengths:
            raise InputError(f"no prompt length of {cfg['prompt_lengths']} leaves room for {self.new} new tokens in "
                             f"the model's context of {lm.context}; use prompt_lengths of at most {limit}")
        for n in self.lengths:
            _prefill(lm, prompt[:n])
        _decode(lm, prompt[:self.lengths[0]], self.new)
        self.prefill: dict[int, list] = {n: [] for n in self.lengths}
        self.steps: list[np.ndarray] = []

    def run(self) -> None:
        for n in self.lengths:
            self.prefill[n].append(_prefill(self.lm, self.prompt[:n]))
        self.steps.append(_decode(self.lm, self.prompt[:self.lengths[0]], self.new))

    def summary(self) -> dict:
        steps = np.stack(self.steps)  # (repeats, new)
        prefill_tok_s, ttft_ms = {}, {}
        for n, secs in self.prefill.items():
            secs = np.array(secs)  # (repeats,)
            prefill_tok_s[str(n)], ttft_ms[str(n)] = _stats(n / secs), _stats(secs * 1e3)
        return {"prompt_lengths": self.lengths, "skipped": self.skipped, "prefill_tok_s": prefill_tok_s,
                "ttft_ms": ttft_ms, "decode_prompt_length": self.lengths[0],
                "decode_tok_s": _stats(self.new / steps.sum(axis=1)),
                "per_token_ms": {"p50": float(np.percentile(steps * 1e3, 50)),
                                 "p90": float(np.percentile(steps * 1e3, 90))}}


def speed(lm, prompt: np.ndarray, cfg: dict) -> dict:
    """Speed's measures over cfg["repeats"] repeats in a row."""
    s = Speed(lm, prompt, cfg)
    for _ in range(cfg["repeats"]):
        s.run()
    return s.summary()


def kl_topk(teacher_logp: np.ndarray, student_logp: np.ndarray) -> np.ndarray:
    """KL(teacher || student) per position over the teacher's top-k tokens, (N, k) log-probs -> (N,).

    Both distributions are renormalized over those k ids, p_i = exp(t_i) / sum_j exp(t_j) and likewise
    q from the student, and KL = sum_i p_i (log p_i - log q_i). The reference file keeps k ids per
    position instead of the whole vocabulary; the tail outside the teacher's top-k is left out, so
    this is the divergence on the tokens the teacher considers, not the full-vocabulary KL (it is 0
    exactly when the student ranks and weighs those tokens as the teacher does)."""
    def renorm(lp):
        m = lp.max(axis=-1, keepdims=True)
        return lp - (m + np.log(np.exp(lp - m).sum(axis=-1, keepdims=True)))

    lp, lq = renorm(teacher_logp.astype(np.float64)), renorm(student_logp.astype(np.float64))  # (N, k)
    return (np.exp(lp) * (lp - lq)).sum(axis=-1)


def quality(lm, seqs: list[np.ndarray], cfg: dict) -> dict:
    """Perplexity over `seqs`, each cut to the window (min(context, 512) tokens) so every token after the
    first is scored with full context from the sequence start: CausalLM.nll's strided evaluation with
    window = min(context, 512), stride = window // 2 is then one pass per sequence, computed here from
    the same log-probs that give the teacher comparison. With a reference, the sequences are cut to the
    reference's lengths, so teacher and student score the same positions."""
    from .lm_runtime import log_softmax

    window = min(lm.context or 512, 512)
    ref = dict(np.load(cfg["reference"])) if cfg["reference"] else None
    if ref is None:
        lengths = [min(len(s), window) for s in seqs]
    else:
        lengths = [int(n) for n in ref["lengths"]]
        if len(lengths) != len(seqs) or not np.array_equal(
                ref["tokens"], np.concatenate([s[:n] for s, n in zip(seqs, lengths)] or [np.zeros(0, np.int64)])):
            raise InputError(f"reference '{cfg['reference']}' was written on other token sequences; write it again "
                             "from the teacher on these eval_ids")
        if lm.context is not None and max(lengths, default=0) > lm.context:
            raise InputError(f"the reference scores sequences of {max(lengths)} tokens, over this model's context of "
                             f"{lm.context}; write the reference on sequences of at most {lm.context} tokens")
        if int(ref["ids"].max(initial=0)) >= lm.vocab_size:
            raise InputError(f"the reference names token ids beyond this model's vocabulary of {lm.vocab_size}; "
                             "teacher and student must share a tokenizer")
    total, count, agree, kls = 0.0, 0, 0, []
    top_ids, top_logp, top1 = [], [], []
    k = min(cfg["top_k"], lm.vocab_size)
    start = 0  # row of the current sequence's first scored position in the reference
    for s, n in zip(seqs, lengths):
        if n < 2:  # nothing to score: the first token has no context
            continue
        s = s[:n]
        lp = log_softmax(lm.logits(s))[:-1]  # (n-1, V): position t predicts token t+1
        rows = np.arange(n - 1)
        total -= float(lp[rows, s[1:]].astype(np.float64).sum())
        count += n - 1
        if cfg["write_reference"]:
            ids = np.argpartition(-lp, k - 1, axis=-1)[:, :k]  # (n-1, k) unordered
            ids = np.take_along_axis(ids, np.argsort(-np.take_along_axis(lp, ids, -1), axis=-1), -1)
            top_ids.append(ids.astype(np.int32))
            top_logp.append(np.take_along_axis(lp, ids, -1).astype(np.float16))
            top1.append(ids[:, 0].astype(np.int32))
        if ref is not None:
            r = slice(start, start + n - 1)
            agree += int((lp.argmax(axis=-1) == ref["top1"][r]).sum())
            ids = ref["ids"][r].astype(np.int64)  # (n-1, k)
            kls.append(kl_topk(ref["logp"][r], np.take_along_axis(lp, ids, -1)))
            start += n - 1
    out = {"perplexity": float(np.exp(total / count)) if count else None, "nll_tokens": count, "eval_window": window,
           "top1_agreement": agree / count if ref is not None and count else None,
           "kl_teacher": float(np.concatenate(kls).mean()) if kls else None}
    if cfg["write_reference"]:
        def cat(parts, shape, dtype):
            return np.concatenate(parts) if parts else np.zeros(shape, dtype)

        tokens = cat([s[:n] for s, n in zip(seqs, lengths)], (0,), np.int64)
        with open(cfg["write_reference"], "wb") as f:  # a handle: np.savez would append .npz to a path
            np.savez(f, lengths=np.array(lengths, np.int32), tokens=tokens, ids=cat(top_ids, (0, k), np.int32),
                     logp=cat(top_logp, (0, k), np.float16), top1=cat(top1, (0,), np.int32))
    return out


def main(cfg_path: str, out_path: str, serve: bool = False) -> None:
    """Measure the model of `cfg_path` into `out_path`. With `serve`, the repeats are the parent's to
    pace (edgekd.lm_bench.bench_lms): after loading and warming up the worker prints "ready", then runs
    one repeat for each "run" line on stdin (answering "done") and finishes at "finish"."""
    with open(cfg_path) as f:
        cfg = json.load(f)
    if cfg.get("runtime", "onnxruntime") == "openvino":
        import openvino  # noqa: F401 - the runtime library is part of the baseline, before the model loads

        from .openvino_lm import OpenVINOLM as Runner
    else:
        import onnxruntime  # noqa: F401

        from .lm_runtime import CausalLM as Runner

    lm = Runner(cfg["folder"], threads=cfg["threads"])
    load_rss = _status_mb("VmRSS")
    data = np.load(cfg["inputs"])
    result = {"runtime": cfg.get("runtime", "onnxruntime"), "threads": cfg["threads"], "new_tokens": cfg["new_tokens"],
              "repeats": cfg["repeats"], "context": lm.context, "load_rss_mb": load_rss}
    if cfg.get("speed", True):
        if serve:
            s = Speed(lm, data["prompt"], cfg)
            print("ready", flush=True)
            for line in sys.stdin:
                if line.strip() != "run":
                    break
                s.run()
                print("done", flush=True)
            result.update(s.summary(), repeats=len(s.steps), timing="alternating")
        else:
            result.update(speed(lm, data["prompt"], cfg))
        # peak before the quality pass: scoring holds (T, vocab) log-probs that generation never does
        result["peak_rss_mb"] = _status_mb("VmHWM")
    seqs = [data[f"eval{i}"] for i in range(cfg["eval_count"])]
    result.update(quality(lm, seqs, cfg) if seqs else
                  {"perplexity": None, "nll_tokens": 0, "top1_agreement": None, "kl_teacher": None})
    with open(out_path, "w") as f:
        json.dump(result, f)


if __name__ == "__main__":
    try:
        main(sys.argv[1], sys.argv[2], serve="--serve" in sys.argv[3:])
    except EdgeKDError as e:
        print(f"{type(e).__name__}: {e}", file=sys.stderr)
        sys.exit(2)
