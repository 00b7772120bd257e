"""edgekd.lm_runtime reproduces transformers on an optimum export without torch; edgekd.lm_bench
measures it in a fresh process and compares a student with a teacher's reference."""
import json
import subprocess
import sys

import numpy as np
import pytest

import lm_tiny

pytest.importorskip("optimum.exporters.onnx")
pytest.importorskip("transformers")


@pytest.fixture(scope="module", params=lm_tiny.FAMILIES)
def exported(request, tmp_path_factory):
    """(Hugging Face folder, optimum text-generation-with-past export of it) for one family."""
    from optimum.exporters.onnx import main_export

    root = tmp_path_factory.mktemp(request.param)
    hf = lm_tiny.tiny_lm(root / "hf", request.param)
    main_export(str(hf), output=root / "onnx", task="text-generation-with-past", do_validation=False)
    return hf, root / "onnx"


@pytest.fixture(scope="module")
def torch_lm(exported):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(exported[0]).eval()


def prompt(lm, i=0):
    code, summary = lm_tiny.CORPUS[i]
    return lm.encode(f"{code}\n# {summary}\n")


def test_greedy_generate_matches_transformers(exported, torch_lm):
    import torch

    from edgekd.lm_runtime import CausalLM

    lm = CausalLM(exported[1])
    ids = prompt(lm)
    with torch.no_grad():
        want = torch_lm.generate(torch.tensor(ids)[None], max_new_tokens=16, min_new_tokens=16, do_sample=False,
                                 pad_token_id=torch_lm.config.pad_token_id)[0, len(ids):].tolist()
    assert lm.generate(ids, max_new_tokens=16, stop_ids=()) == want
    assert list(lm.stream(ids, max_new_tokens=16, stop_ids=())) == want
    # a stop id ends generation after it is emitted, as transformers' eos does
    assert lm.generate(ids, max_new_tokens=16, stop_ids=(want[3],)) == want[:want.index(want[3]) + 1]
    # sampling is repeatable by seed and stays in the vocabulary
    a = lm.generate(ids, max_new_tokens=8, temperature=0.8, top_k=20, top_p=0.9, seed=1, stop_ids=())
    assert a == lm.generate(ids, max_new_tokens=8, temperature=0.8, top_k=20, top_p=0.9, seed=1, stop_ids=())
    assert all(0 <= t < lm.vocab_size for t in a)


def test_logits_and_cache_match_torch(exported, torch_lm):
    import torch

    from edgekd.lm_runtime import CausalLM

    lm = CausalLM(exported[1])
    ids = np.concatenate([prompt(lm, 0), prompt(lm, 1)])
    with torch.no_grad():
        want = torch_lm(torch.tensor(ids)[None]).logits[0].numpy()  # (T, V)
    np.testing.assert_allclose(lm.logits(ids), want, atol=1e-4)
    # the prompt in two parts through the cache gives the same last logits as one pass
    _, cache = lm.prefill(ids[:-1])
    assert cache.length == len(ids) - 1
    np.testing.assert_allclose(lm.step(int(ids[-1]), cache)[0], want[-1], atol=1e-4)


def test_nll_matches_torch_cross_entropy(exported, torch_lm):
    import torch
    import torch.nn.functional as F

    from edgekd.lm_runtime import CausalLM

    lm = CausalLM(exported[1])
    ids = np.concatenate([prompt(lm, i) for i in range(6)])
    t = torch.tensor(ids)
    with torch.no_grad():
        full = F.cross_entropy(torch_lm(t[None]).logits[0, :-1], t[1:], reduction="sum").item()
    nll, n = lm.nll(ids, window=len(ids), stride=len(ids) // 2)  # one window: every token with full context
    assert n == len(ids) - 1 and nll == pytest.approx(full, rel=1e-5)
    # strided: Hugging Face's perplexity recipe, each window scoring only the tokens not yet scored
    window, stride = 48, 16
    total, prev_end = 0.0, 0
    for begin in range(0, len(ids), stride):
        end = min(begin + window, len(ids))
        labels = t[begin:end].clone()
        labels[:-(end - prev_end)] = -100
        with torch.no_grad():
            logits = torch_lm(t[None, begin:end]).logits[0]
        total += F.cross_entropy(logits[:-1], labels[1:], ignore_index=-100, reduction="sum").item()
        prev_end = end
        if end == len(ids):
            break
    nll, n = lm.nll(ids, window=window, stride=stride)
    assert n == len(ids) - 1 and nll == pytest.approx(total, rel=1e-5)


def test_runtime_imports_no_torch(exported):
    code = ("import sys, edgekd.lm_runtime, edgekd.lm_bench\n"
            f"lm = edgekd.lm_runtime.CausalLM({str(exported[1])!r})\n"
            "new = lm.generate(lm.encode('def add(a, b):'), max_new_tokens=4)\n"
            "lm.nll(lm.encode('def square(x):'), window=8, stride=4); lm.decode(new)\n"
            "assert 'torch' not in sys.modules and 'transformers' not in sys.modules, 'heavy import'\n")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr


def test_bench_lm_speed_memory_and_teacher_agreement(exported, tmp_path):
    from edgekd.lm_bench import bench_lm, timing_ids
    from edgekd.lm_runtime import CausalLM

    folder = exported[1]
    lm = CausalLM(folder)
    evals = [prompt(lm, i) for i in range(4)]
    ref = tmp_path / "teacher.topk"
    tiny = {"prompt_lengths": (16, 32, 1000), "new_tokens": 8, "repeats": 2, "eval_ids": evals}
    teacher = bench_lm(folder, **tiny, write_reference=ref)
    assert json.loads(json.dumps(teacher)) == teacher
    assert teacher["prompt_lengths"] == [16, 32] and list(teacher["skipped"]) == ["1000"]
    for n in ("16", "32"):
        assert teacher["prefill_tok_s"][n]["mean"] > 0 and teacher["ttft_ms"][n]["mean"] > 0
    assert teacher["decode_tok_s"]["mean"] > 0 and 0 < teacher["per_token_ms"]["p50"] <= teacher["per_token_ms"]["p90"]
    assert teacher["peak_rss_mb"] >= teacher["load_rss_mb"] > 10 and teacher["threads"] == 1
    assert teacher["size_bytes"] == (folder / "model.onnx").stat().st_size
    # perplexity is CausalLM.nll's over the same tokens
    scores = [lm.nll(s, window=teacher["eval_window"], stride=teacher["eval_window"] // 2) for s in evals]
    assert teacher["nll_tokens"] == sum(n for _, n in scores)
    assert teacher["perplexity"] == pytest.approx(np.exp(sum(v for v, _ in scores) / teacher["nll_tokens"]), rel=1e-5)
    assert teacher["top1_agreement"] is None and teacher["kl_teacher"] is None
    # the same model against its own reference: full agreement, no divergence (up to float16 storage)
    student = bench_lm(folder, **tiny, reference=ref)
    assert student["top1_agreement"] == 1.0 and student["kl_teacher"] == pytest.approx(0, abs=1e-4)
    assert student["perplexity"] == pytest.approx(teacher["perplexity"], rel=1e-6)
    # quality alone, for a graph another run of the same shapes timed
    scored = bench_lm(folder, eval_ids=evals, speed=False)
    assert not {"decode_tok_s", "prefill_tok_s", "peak_rss_mb"} & set(scored)
    assert scored["perplexity"] == pytest.approx(teacher["perplexity"], rel=1e-6)
    # timing prompts: ordinary tokens, the same for every model of a build
    ids = timing_ids(folder, 64, seed=3)
    special = {0, 1, 2}  # the tiny tokenizer's pad, bos and eos
    assert np.array_equal(ids, timing_ids(folder, 64, seed=3)) and not set(ids) & special


def test_bench_lms_times_models_in_alternation(exported, tmp_path):
    """bench_lms: every model's repeats in alternation, each with bench_lm's speed and memory keys; a
    model whose worker fails names itself in one line and stops the others; quality is not its job."""
    import shutil

    from edgekd.errors import EdgeKDError, RecipeError
    from edgekd.lm_bench import bench_lms

    folder = exported[1]
    shutil.copytree(folder, tmp_path / "copy")
    timing = {"prompt_lengths": (16, 1000), "new_tokens": 8}
    out = bench_lms({"a": folder, "b": tmp_path / "copy"}, repeats=3, **timing)
    assert list(out) == ["a", "b"]
    for r in out.values():
        assert r["timing"] == "alternating" and r["repeats"] == 3 and r["prompt_lengths"] == [16]
        assert r["decode_tok_s"]["mean"] > 0 and r["prefill_tok_s"]["16"]["mean"] > 0
        assert r["peak_rss_mb"] >= r["load_rss_mb"] > 10 and r["perplexity"] is None
        assert r["size_bytes"] == (folder / "model.onnx").stat().st_size
    (tmp_path / "copy" / "model.onnx").write_bytes(b"not a graph")
    with pytest.raises(EdgeKDError, match="benchmarking 'b' failed: InputError: onnxruntime cannot load"):
        bench_lms({"a": folder, "b": tmp_path / "copy"}, repeats=1, **timing)
    with pytest.raises(RecipeError, match="speed only.*eval_ids"):
        bench_lms({"a": folder}, eval_ids=[[1, 2, 3]])


def test_bench_lm_reports_worker_failure(exported, tmp_path):
    from edgekd.errors import EdgeKDError, InputError
    from edgekd.lm_bench import bench_lm
    from edgekd.lm_runtime import CausalLM

    with pytest.raises(EdgeKDError, match="no prompt length of \\[1000\\] leaves room for 8 new tokens"):
        bench_lm(exported[1], prompt_lengths=(1000,), new_tokens=8, repeats=1)
    with pytest.raises(InputError, match="has no model.onnx"):
        CausalLM(tmp_path)
    with pytest.raises(InputError, match="exceeds the model's context"):
        CausalLM(exported[1]).generate([5, 6], max_new_tokens=1000)
