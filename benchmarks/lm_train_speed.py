"""How fast task text-generation's training step runs on this machine's devices: the distilled
student's step (forward KL against the teacher's cached top-64, AdamW) and the teacher's top-k pass, on
models of the SmolLM2 example's shapes (teacher: SmolLM2-135M's config, random weights; student: 12 of
its layers), at batch 8 x 256 tokens. CPU float32, and bfloat16 autocast where the CPU computes it natively
(AVX512-BF16 or AMX); CUDA float32 and bfloat16 autocast when a GPU is there.

    python benchmarks/lm_train_speed.py [--steps 5] [--out results/lm-train-speed.json]

Writes {device/precision: {"student_step_s", "teacher_topk_s", "tokens_per_s"}} and prints the ratios.
With --trimmed K: the 16-layer student with a K-token head (lm.vocab), every token scored, its step on
(N, V) logits against its step on the head's compact (N, K + 1) logits, interleaved (key
"cpu-fp32-trimmed-head", added to the file)."""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

SMOLLM2 = dict(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
               num_key_value_heads=3, max_position_embeddings=8192, tie_word_embeddings=True, rms_norm_eps=1e-5,
               rope_theta=100000.0)


def models(student_layers: int = 12):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    teacher = LlamaForCausalLM(LlamaConfig(**SMOLLM2)).eval()
    keep = [round(i * 29 / (student_layers - 1)) for i in range(student_layers)]
    student = LlamaForCausalLM(LlamaConfig(**{**SMOLLM2, "num_hidden_layers": student_layers}))
    sd = teacher.state_dict()
    own = {}
    for k in student.state_dict():
        if ".layers." in k:
            i = int(k.split(".layers.")[1].split(".")[0])
            own[k] = sd[k.replace(f".layers.{i}.", f".layers.{keep[i]}.", 1)]
        else:
            own[k] = sd[k]
    student.load_state_dict(own)
    return teacher, student


def measure(device: str, precision: str, *, steps: int, batch: int = 8, length: int = 256) -> dict:
    import numpy as np
    import torch

    from edgekd import losses
    from edgekd.report.assembly import cpu_info
    from edgekd.tasks._lm_data import Seqs, collate, labels_at, token_logits

    teacher, student = models()
    g = np.random.default_rng(0)
    seqs = Seqs([g.integers(3, 49152, length) for _ in range(batch)], np.full(batch, 64), ["x"] * batch, list(range(batch)))
    ids, mask, sel = (t.to(device) for t in collate(seqs, list(range(batch)), 0))
    teacher.to(device)
    student.to(device).train()
    opt = torch.optim.AdamW(student.parameters(), lr=2e-4)
    cast = torch.autocast(torch.device(device).type, dtype=torch.bfloat16) if precision == "bf16" else contextlib.nullcontext()

    def sync():
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    def topk():
        with torch.no_grad(), cast:
            lp = torch.log_softmax(token_logits(teacher, ids, mask, sel).float(), -1)
            return lp.topk(64, -1)

    def step(v, i):
        with cast:
            s = token_logits(student, ids, mask, sel)
            loss = losses.forward_kl({"token_logits": s}, {"topk_ids": i, "topk_logprobs": v}, None,
                                     labels=labels_at(ids, sel), temperature=1.0, alpha=1.0)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    v, i = topk()
    step(v, i)  # warm-up (kernels, allocator)
    sync()
    t0 = time.perf_counter()
    for _ in range(steps):
        topk()
    sync()
    t1 = time.perf_counter()
    for _ in range(steps):
        step(v, i)
    sync()
    t2 = time.perf_counter()
    return {"student_step_s": (t2 - t1) / steps, "teacher_topk_s": (t1 - t0) / steps,
            "tokens_per_s": batch * length * steps / (t2 - t1), "batch": batch, "length": length, "steps": steps,
            "device_name": torch.cuda.get_device_name() if device.startswith("cuda") else cpu_info()["cpu"],
            "threads": torch.get_num_threads()}


def measure_trimmed(*, steps: int, layers: int = 16, kept: int = 16384, batch: int = 8, length: int = 256) -> dict:
    """The distilled student's step with a trimmed LM head (lm.vocab = kept), every token scored (the
    SmolLM2 example's recipe), on its (N, V) logits and on its (N, K + 1) compact ones, interleaved step
    by step on the CPU: what the compact form saves."""
    import numpy as np
    import torch

    from edgekd import losses
    from edgekd.models import lm_vocab
    from edgekd.tasks._lm_data import labels_at

    _, student = models(layers)
    lm_vocab.trim(student, np.arange(0, 49152, 49152 // kept)[:kept], floor=-5.0)
    head = lm_vocab.trimmed(student)
    student.train()
    opt = torch.optim.AdamW(student.parameters(), lr=2e-4)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, 49152, (batch, length), generator=g)
    mask, sel = torch.ones_like(ids), torch.ones_like(ids, dtype=torch.bool)
    sel[:, -1] = False
    n = int(sel.sum())
    t = {"topk_logprobs": torch.log_softmax(torch.randn(n, 64, generator=g), -1).sort(-1, descending=True).values,
         "topk_ids": torch.randint(0, 49152, (n, 64), generator=g)}
    base = student.model

    def step(compact: bool):
        h = base(input_ids=ids, attention_mask=mask).last_hidden_state[sel]
        s = ({"compact_logits": head.compact(h), "columns": head.columns, "log_trimmed": head.log_trimmed}
             if compact else {"token_logits": head(h)})
        loss = losses.forward_kl(s, t, None, labels=labels_at(ids, sel), temperature=1.0, alpha=0.9)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    step(True), step(False)  # warm-up
    took = {True: [], False: []}
    for _ in range(steps):
        for compact in (False, True):
            t0 = time.perf_counter()
            step(compact)
            took[compact].append(time.perf_counter() - t0)
    full, comp = float(np.median(took[False])), float(np.median(took[True]))
    return {"full_logits_step_s": full, "compact_logits_step_s": comp, "speedup": full / comp, "layers": layers,
            "kept": kept, "batch": batch, "length": length, "steps": steps, "scored_tokens": n}


def main() -> None:
    import torch

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--cpu-steps", type=int, default=2)
    ap.add_argument("--no-cpu", action="store_true")
    ap.add_argument("--trimmed", type=int, default=0, metavar="K",
                    help="only the trimmed-head student's step (lm.vocab = K), full against compact logits")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "lm-train-speed.json"))
    a = ap.parse_args()
    if a.trimmed:
        r = measure_trimmed(steps=a.cpu_steps, kept=a.trimmed)
        print(f"trimmed head (K = {a.trimmed}): step {r['full_logits_step_s']:.2f} s on (N, V) logits, "
              f"{r['compact_logits_step_s']:.2f} s on compact ones ({r['speedup']:.2f}x)", flush=True)
        out = json.loads(Path(a.out).read_text()) if Path(a.out).is_file() else {}
        out["cpu-fp32-trimmed-head"] = r
        Path(a.out).write_text(json.dumps(out, indent=2))
        return
    from edgekd.train import resolve_precision

    runs = [] if a.no_cpu else [("cpu", "fp32", a.cpu_steps)]
    if not a.no_cpu and resolve_precision("auto", "cpu") == "bf16":  # AVX512-BF16 / AMX: what "auto" picks
        runs += [("cpu", "bf16", a.cpu_steps)]
    if torch.cuda.is_available():
        runs += [("cuda", "fp32", a.steps), ("cuda", "bf16", a.steps)]
    # other machines' rows stay: each run replaces only the keys it measured
    out = json.loads(Path(a.out).read_text()) if Path(a.out).is_file() else {}
    for device, precision, steps in runs:
        out[f"{device}-{precision}"] = r = measure(device, precision, steps=steps)
        print(f"{device}-{precision}: student step {r['student_step_s'] * 1e3:.1f} ms ({r['tokens_per_s']:.0f} tokens/s), "
              f"teacher top-k pass {r['teacher_topk_s'] * 1e3:.1f} ms", flush=True)
    out["torch" if torch.cuda.is_available() else "torch_cpu"] = torch.__version__
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
