"""Benchmark an exported causal LM the way llama.cpp's llama-bench reports one: prefill tokens/s at
each prompt length, decode tokens/s and per-token latency, time to first token, peak memory, and the
model's quality on held-out token sequences (perplexity; agreement with and KL from a teacher).

Each model runs in a fresh process (edgekd._lm_bench_worker), so one model's allocations, thread pools
and warm caches do not flatter or burden the next. The same measures run on onnxruntime (an ONNX
folder) or OpenVINO (a stateful IR folder of edgekd.openvino_lm). Imports no torch."""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from .errors import EdgeKDError, InputError, RecipeError

__all__ = ["bench_lm", "bench_lms", "timing_ids"]

TOP_K = 64  # teacher tokens kept per position in a reference file (see _lm_bench_worker.kl_topk)
RUNTIMES = {"onnxruntime": "model.onnx", "openvino": "openvino_model.xml"}  # the file each runtime loads


def bench_lm(folder, *, threads: int = 1, prompt_lengths=(128, 512), new_tokens: int = 128, repeats: int = 5,
             eval_ids=None, reference=None, write_reference=None, seed: int = 0, timeout: float | None = None,
             runtime: str = "onnxruntime", speed: bool = True) -> dict:
    """Speed, memory and quality of the exported LM in `folder` (model.onnx of an optimum
    text-generation-with-past export on onnxruntime; with runtime="openvino", openvino_model.xml of
    edgekd.openvino_lm.convert_lm), measured in a fresh process with `threads` intra-op threads.

    Prefill is timed at each of `prompt_lengths` that leaves room for `new_tokens` in the model's
    context (the others are listed under "skipped"), decode over `new_tokens` greedy tokens after a
    prompt of the first length that fits; each `repeats` times after one warm-up. The prompts are
    `timing_ids(folder, ..., seed=seed)`.

    Quality, when `eval_ids` (1-D token id arrays) are given: perplexity over every token after the
    first of each sequence, cut to min(context, 512) tokens. `write_reference` saves this model's top
    tokens at every scored position (a teacher's run); `reference` reads such a file and adds
    top1_agreement and kl_teacher (a student's run). speed=False measures the quality alone (no prefill,
    decode or peak-memory keys): for a graph whose shapes another run has timed."""
    with tempfile.TemporaryDirectory() as d:
        cfg_path, res_path = _prepare(Path(d), folder, threads=threads, prompt_lengths=prompt_lengths,
                                      new_tokens=new_tokens, repeats=repeats, eval_ids=eval_ids, reference=reference,
                                      write_reference=write_reference, seed=seed, runtime=runtime, speed=speed)
        try:
            proc = subprocess.run([sys.executable, "-m", WORKER, str(cfg_path), str(res_path)],
                                  capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise EdgeKDError(f"benchmarking '{Path(folder).name}' took over {timeout} s; raise timeout or lower "
                              "repeats, new_tokens or prompt_lengths") from None
        return _result(Path(folder), runtime, proc.returncode, proc.stderr, res_path)


def bench_lms(folders: dict, *, repeats: int = 5, **kwargs) -> dict:
    """The speed and memory of bench_lm for several models at once, their repeats in alternation: every
    model loads and warms up in its own process, then each round times one repeat of each model in turn
    (prefill and decode; one process computes at a time, the others wait), so a machine that slows down
    for a while slows every model alike and the ratios between them hold. `folders`: {name: folder};
    `kwargs` as bench_lm's timing arguments (threads, prompt_lengths, new_tokens, seed, runtime); quality
    is bench_lm(speed=False)'s. Returns {name: result}, each with "timing": "alternating"."""
    if unknown := set(kwargs) - {"threads", "prompt_lengths", "new_tokens", "seed", "runtime"}:
        raise RecipeError(f"bench_lms times speed only; measure {', '.join(sorted(unknown))} with bench_lm(speed=False)")
    with tempfile.TemporaryDirectory() as d:
        procs, paths = {}, {}
        try:
            for i, (name, folder) in enumerate(folders.items()):
                sub = Path(d) / str(i)
                sub.mkdir()
                paths[name] = _prepare(sub, Path(folder), repeats=repeats, **kwargs)
                err = open(sub / "stderr", "w+")  # a file, not a pipe: a chatty library cannot block the worker
                procs[name] = (subprocess.Popen([sys.executable, "-m", WORKER, *map(str, paths[name]), "--serve"],
                                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err, text=True), err)
                _expect(procs[name], "ready", name)  # loaded and warmed up, one at a time
            for _ in range(repeats):
                for name, pe in procs.items():
                    pe[0].stdin.write("run\n")
                    pe[0].stdin.flush()
                    _expect(pe, "done", name)
            out = {}
            for name, (p, err) in procs.items():
                p.stdin.write("finish\n")
                p.stdin.close()
                p.wait()
                err.seek(0)
                out[name] = _result(Path(folders[name]), kwargs.get("runtime", "onnxruntime"), p.returncode, err.read(),
                                    paths[name][1])
            return out
        finally:
            for p, err in procs.values():
                if p.poll() is None:
                    p.kill()
                    p.wait()
                err.close()


WORKER = "edgekd._lm_bench_worker"


def _expect(pe, word: str, name: str) -> None:
    """Read the worker's stdout up to the line `word`; a worker that ended first fails with its last error line."""
    p, err = pe
    for line in p.stdout:
        if line.strip() == word:
            return
    p.wait()
    err.seek(0)
    tail = (err.read().strip().splitlines() or ["no output"])[-1]
    raise EdgeKDError(f"benchmarking '{name}' failed: {tail}")


def _prepare(d: Path, folder: Path, *, threads: int = 1, prompt_lengths=(128, 512), new_tokens: int = 128,
             repeats: int = 5, eval_ids=None, reference=None, write_reference=None, seed: int = 0,
             runtime: str = "onnxruntime", speed: bool = True) -> tuple[Path, Path]:
    """Check the arguments, write the worker's inputs and config into `d`: (config path, result path)."""
    folder = Path(folder)
    lengths = [int(n) for n in prompt_lengths]
    if not lengths or min(lengths) < 1:
        raise RecipeError(f"prompt_lengths must be positive token counts, got {list(prompt_lengths)}")
    for name, value in (("threads", threads), ("new_tokens", new_tokens), ("repeats", repeats)):
        if value < 1:
            raise RecipeError(f"{name} must be at least 1, got {value}")
    if runtime not in RUNTIMES:
        raise RecipeError(f"runtime must be one of {', '.join(RUNTIMES)}, got {runtime!r}")
    if not (folder / RUNTIMES[runtime]).is_file():
        raise InputError(f"'{folder}' has no {RUNTIMES[runtime]}; give the folder of a text-generation-with-past "
                         + ("export" if runtime == "onnxruntime" else "export converted by edgekd.openvino_lm"))
    if (reference or write_reference) and not eval_ids:
        raise InputError("a teacher reference is written and read on eval_ids; pass the held-out token sequences")
    if reference and not Path(reference).is_file():
        raise InputError(f"reference '{reference}' does not exist; write it first: bench_lm(teacher, "
                         "write_reference=...)")
    arrays = {"prompt": timing_ids(folder, max(lengths), seed=seed)}
    arrays.update({f"eval{i}": np.asarray(s, np.int64).ravel() for i, s in enumerate(eval_ids or [])})
    np.savez(d / "in.npz", **arrays)
    cfg = {"folder": str(folder), "runtime": runtime, "threads": threads, "speed": speed, "prompt_lengths": lengths,
           "new_tokens": new_tokens, "repeats": repeats, "inputs": str(d / "in.npz"), "eval_count": len(eval_ids or []),
           "reference": str(reference) if reference else None,
           "write_reference": str(write_reference) if write_reference else None, "top_k": TOP_K}
    (d / "cfg.json").write_text(json.dumps(cfg))
    return d / "cfg.json", d / "res.json"


def _result(folder: Path, runtime: str, returncode: int, stderr: str, res_path: Path) -> dict:
    if returncode != 0 or not res_path.exists():
        tail = (stderr.strip().splitlines() or ["no output"])[-1]
        raise EdgeKDError(f"benchmarking '{folder.name}' failed: {tail}")
    result = json.loads(res_path.read_text())
    files = "model.onnx*" if runtime == "onnxruntime" else "openvino_model.*"  # with model.onnx_data, the .bin
    result["size_bytes"] = sum(p.stat().st_size for p in folder.glob(files))
    return result


def timing_ids(folder, n: int, *, seed: int = 0) -> np.ndarray:
    """`n` token ids (n,) int64 drawn uniformly from the vocabulary of the folder's tokenizer less its
    special tokens. Random ids time like text: a dense transformer does the same arithmetic whatever
    the tokens (its cost depends on the sequence length alone; a mixture-of-experts model would not).
    Special ids are left out so no control token (end of text, chat markers) is in the prompt. The
    draw depends only on the tokenizer and `seed`, so every model of one build, which share a
    tokenizer, is timed on the same ids."""
    folder = Path(folder)
    size, special = _vocabulary(folder)
    allowed = np.setdiff1d(np.arange(size), np.array(sorted(special), np.int64))  # (size - special,)
    if len(allowed) == 0:
        raise InputError(f"'{folder}' has no ordinary tokens to build a timing prompt from; check its tokenizer.json")
    return np.random.default_rng(seed).choice(allowed, size=n).astype(np.int64)


def _vocabulary(folder: Path) -> tuple[int, set[int]]:
    """(number of token ids, special ids): from tokenizer.json where the folder has one, capped by
    config.json's vocab_size (a model may pad its embedding past the tokenizer, not the reverse)."""
    def read(name: str) -> dict:
        p = folder / name
        try:
            return json.loads(p.read_text()) if p.is_file() else {}
        except ValueError as e:
            raise InputError(f"'{p}' is not valid JSON ({e}); re-export the model") from None

    cfg, tok = read("config.json"), read("tokenizer.json")
    special: set[int] = set()
    for key in ("bos_token_id", "eos_token_id", "pad_token_id", "unk_token_id"):
        v = cfg.get(key)
        special.update(v if isinstance(v, list) else [] if v is None else [v])
    size = 0
    if tok:
        vocab = tok.get("model", {}).get("vocab") or {}
        size = len(vocab) if isinstance(vocab, list) else max(vocab.values(), default=-1) + 1
        for t in tok.get("added_tokens", []):
            size = max(size, t["id"] + 1)
            if t.get("special"):
                special.add(t["id"])
    if isinstance(cfg.get("vocab_size"), int):
        size = min(size, cfg["vocab_size"]) if size else cfg["vocab_size"]
    if not size:
        raise InputError(f"'{folder}' has neither tokenizer.json nor a vocab_size in config.json; copy the export's "
                         "tokenizer beside model.onnx")
    return size, special
