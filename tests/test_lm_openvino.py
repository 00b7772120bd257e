"""edgekd.openvino_lm on tiny random-weight Llama- and Qwen2-class exports: the stateful IR runs the
same greedy tokens and perplexity as onnxruntime on the ONNX folder it came from (FP32, the INT4
MatMulNBits folder read as it is, and NNCF's INT4 from the FP32 IR), its cache carries across steps,
and edgekd.lm_bench measures it in a fresh process."""

from __future__ import annotations

import lm_tiny
import numpy as np
import pytest

pytest.importorskip("openvino")
pytest.importorskip("optimum.exporters.onnx")

BLOCK = 32  # divides the tiny models' hidden size (64) and MLP width (128)
# INT4 weights on two runtimes: onnxruntime's kernels quantize activations to 8 bits (accuracy
# level 4), OpenVINO's keep them float, so a near tie between two tokens of a random-weight model can
# go either way; a broken graph agrees at chance (1/400)
INT4_MIN_AGREEMENT = 0.8


@pytest.fixture(scope="module", params=lm_tiny.FAMILIES)
def folders(request, tmp_path_factory):
    """{"fp32", "int4"}: the ONNX folders, and the same with "-ov" their OpenVINO conversions."""
    from optimum.exporters.onnx import main_export

    from edgekd.export_lm import quantize_weights
    from edgekd.openvino_lm import convert_lm

    root = tmp_path_factory.mktemp(f"ov-{request.param}")
    hf = lm_tiny.tiny_lm(root / "hf", request.param)
    main_export(str(hf), output=root / "fp32", task="text-generation-with-past", do_validation=False)
    quantize_weights(root / "fp32", root / "int4", bits=4, block_size=BLOCK)
    out = {"fp32": root / "fp32", "int4": root / "int4", "meta": {}}
    for name in ("fp32", "int4"):
        out["meta"][name] = convert_lm(root / name, root / f"{name}-ov")
        out[f"{name}-ov"] = root / f"{name}-ov"
    return out


def prompts(lm) -> list[np.ndarray]:
    return [lm.encode(f"{code}\n# {summary}\n") for code, summary in lm_tiny.CORPUS[:4]]


def test_conversion_is_stateful_with_fused_attention(folders):
    import openvino as ov

    meta = folders["meta"]["fp32"]
    assert meta["stateful"] and meta["layers"] == 4 and meta["attention_fused"] == 4
    model = ov.Core().read_model(str(folders["fp32-ov"] / "openvino_model.xml"))
    names = {n for i in model.inputs for n in i.get_names()}
    assert names == {"input_ids", "attention_mask", "position_ids", "beam_idx"}
    assert [o.get_any_name() for o in model.outputs] == ["logits"]
    assert sum(op.get_type_name() == "ReadValue" for op in model.get_ops()) == 8  # a key and a value per layer
    for f in ("config.json", "generation_config.json", "tokenizer.json"):
        assert (folders["fp32-ov"] / f).is_file()
    assert not list(folders["fp32-ov"].glob("model.onnx*"))
    # the INT4 folder keeps its 4-bit weights (with a scale per block of 32): under a fifth of FP32's
    size = {n: (folders[f"{n}-ov"] / "openvino_model.bin").stat().st_size for n in ("fp32", "int4")}
    assert size["int4"] < 0.2 * size["fp32"]


def test_fp32_greedy_tokens_and_logits_equal_onnxruntime(folders):
    from edgekd.lm_runtime import CausalLM
    from edgekd.openvino_lm import OpenVINOLM

    ov_lm, ort_lm = OpenVINOLM(folders["fp32-ov"]), CausalLM(folders["fp32"])
    assert (ov_lm.vocab_size, ov_lm.context, ov_lm.eos_ids, ov_lm.num_layers) == \
        (ort_lm.vocab_size, ort_lm.context, ort_lm.eos_ids, 4)
    for ids in prompts(ort_lm):
        np.testing.assert_allclose(ov_lm.logits(ids), ort_lm.logits(ids), atol=1e-4)
        assert ov_lm.generate(ids, max_new_tokens=16, stop_ids=()) == ort_lm.generate(ids, max_new_tokens=16, stop_ids=())
    assert ov_lm.decode(ov_lm.encode("def add(a, b):")) == "def add(a, b):"


def test_the_cache_carries_across_steps(folders):
    from edgekd.errors import InputError
    from edgekd.lm_runtime import CausalLM
    from edgekd.openvino_lm import OpenVINOLM

    ov_lm, ort_lm = OpenVINOLM(folders["fp32-ov"]), CausalLM(folders["fp32"])
    ids = prompts(ort_lm)[0]
    a, ca = ov_lm.prefill(ids)
    b, cb = ort_lm.prefill(ids)
    first = ca
    token = int(np.argmax(a[-1]))
    for _ in range(8):  # step by step: each step's logits are the full sequence's last row
        a, ca = ov_lm.step(token, ca)
        b, cb = ort_lm.step(token, cb)
        np.testing.assert_allclose(a, b, atol=1e-4)
        token = int(np.argmax(a))
    assert ca.length == len(ids) + 8
    seq = np.concatenate([ids, [t for t in ov_lm.generate(ids, max_new_tokens=8, stop_ids=())]])
    np.testing.assert_allclose(ov_lm.logits(seq)[-1], ort_lm.logits(seq)[-1], atol=1e-4)
    with pytest.raises(InputError, match="latest state"):  # the request moved on from it
        ov_lm.step(token, first)


def test_int4_folders_agree_with_onnxruntime_int4(folders):
    """The MatMulNBits folder read as it is, and NNCF's INT4 of the FP32 IR (the same symmetric
    round-to-nearest grid in blocks of 32): next-token agreement with onnxruntime's INT4 at every
    prompt position and in 8 greedy tokens."""
    from edgekd.openvino_lm import OpenVINOLM, check_parity, convert_lm

    pytest.importorskip("nncf")
    nncf_dir = folders["fp32-ov"].parent / "int4-nncf-ov"
    meta = convert_lm(folders["fp32"], nncf_dir, compress="int4", group_size=BLOCK)
    assert meta["weights"] == f"nncf int4_sym group {BLOCK}"
    lm = OpenVINOLM(folders["int4-ov"])
    for folder in (folders["int4-ov"], nncf_dir):
        p = check_parity(folder, folders["int4"], prompts(lm), new_tokens=8)
        assert p["top1_agreement"] >= INT4_MIN_AGREEMENT, p
        assert p["greedy_token_agreement"] >= INT4_MIN_AGREEMENT, p
        assert p["positions"] > 40 and p["prompts"] == 4


def test_perplexity_and_bench_match_onnxruntime(folders, tmp_path):
    from edgekd.lm_bench import bench_lm
    from edgekd.lm_runtime import CausalLM
    from edgekd.openvino_lm import OpenVINOLM

    ort_lm, ov_lm = CausalLM(folders["fp32"]), OpenVINOLM(folders["fp32-ov"])
    evals = prompts(ort_lm)
    for ids in evals:
        want, n = ort_lm.nll(ids, window=16, stride=8)
        got, m = ov_lm.nll(ids, window=16, stride=8)
        assert m == n and got == pytest.approx(want, rel=1e-4)
    ref = tmp_path / "ref.npz"
    tiny = {"prompt_lengths": (16, 32), "new_tokens": 8, "repeats": 1, "eval_ids": evals}
    ort = bench_lm(folders["fp32"], **tiny, write_reference=ref)
    ov = bench_lm(folders["fp32-ov"], **tiny, reference=ref, runtime="openvino")
    assert ov["runtime"] == "openvino" and ort["runtime"] == "onnxruntime"
    assert ov["perplexity"] == pytest.approx(ort["perplexity"], rel=1e-4)
    assert ov["top1_agreement"] == 1.0 and ov["kl_teacher"] == pytest.approx(0, abs=1e-4)
    assert ov["decode_tok_s"]["mean"] > 0 and ov["ttft_ms"]["16"]["mean"] > 0 and ov["peak_rss_mb"] > 10
    assert ov["size_bytes"] == sum(p.stat().st_size for p in folders["fp32-ov"].glob("openvino_model.*"))


def test_bad_folders_are_refused_in_one_line(folders, tmp_path):
    from edgekd.errors import InputError
    from edgekd.lm_bench import bench_lm
    from edgekd.openvino_lm import OpenVINOLM, convert_lm

    with pytest.raises(InputError, match="has no openvino_model.xml"):
        OpenVINOLM(tmp_path)
    with pytest.raises(InputError, match="has no model.onnx"):
        convert_lm(tmp_path, tmp_path / "out")
    with pytest.raises(InputError, match="compress must be"):
        convert_lm(folders["fp32"], tmp_path / "out", compress="int3")
    with pytest.raises(InputError, match="has no openvino_model.xml"):
        bench_lm(folders["fp32"], runtime="openvino")


def test_a_model_openvino_cannot_take_is_one_line_and_the_rest_goes_on(folders, tmp_path):
    """The task's export step: the deliverable converts and passes parity; a teacher whose graph
    OpenVINO cannot read is removed and named in one line; the report says both."""
    import shutil
    from types import SimpleNamespace

    from edgekd.openvino_lm import OpenVINOLM
    from edgekd.tasks import _lm_openvino

    shutil.copytree(folders["int4"], tmp_path / "student-int4")
    shutil.copytree(folders["fp32"], tmp_path / "teacher")
    (tmp_path / "teacher" / "model.onnx").write_bytes(b"not a graph")
    lm = OpenVINOLM(folders["int4-ov"])
    logs = []
    ctx = SimpleNamespace(log=logs.append, extra={"tokenizer": lambda text: {"input_ids": lm.encode(text).tolist()}})
    meta = _lm_openvino.export(ctx, tmp_path, {"deliverable": "student-int4"}, ["def add(a, b):"],
                               {"student-int4": (None, 0.6), "teacher": (2e-2, 0.0)})
    assert list(meta["models"]) == ["student-int4"] and meta["folders"] == ["student-int4-openvino"]
    assert list(meta["failed"]) == ["teacher"] and "\n" not in meta["failed"]["teacher"]
    assert "cannot convert" in meta["failed"]["teacher"] and not (tmp_path / "teacher-openvino").exists()
    assert any("teacher is not on OpenVINO" in line for line in logs)
    r = {"target_profile": {"threads": 1}, "runtimes": {"openvino": {"models": {}, "failed": meta["failed"]}}}
    text = "\n".join(_lm_openvino.lines(r, {"teacher": "teacher"}))
    assert "## On OpenVINO" in text and "- teacher: not on OpenVINO: OpenVINO cannot convert" in text
    r["runtimes"]["openvino"] = {"skipped": "openvino is not installed (pip install openvino)"}
    assert "Not measured: openvino is not installed" in "\n".join(_lm_openvino.lines(r, {}))
