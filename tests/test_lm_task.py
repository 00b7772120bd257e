"""Task text-generation end to end on tiny random-weight Llama- and Qwen2-class teachers (offline, seconds
of training): generation with its filter, baseline, distillation, quantization-aware INT4, export with
the KV cache, parity, the llama-bench measures and the report; and the one-line refusals."""

import json
import sys
from pathlib import Path

import pytest

pytest.importorskip("transformers")
pytest.importorskip("optimum.exporters.onnx")
sys.path.insert(0, str(Path(__file__).parent))
import lm_tiny  # noqa: E402

TINY_LM, _recipe = lm_tiny.TINY_LM, lm_tiny.recipe


@pytest.fixture(scope="module", params=lm_tiny.FAMILIES)
def lm_build(request, tiny_lm_build):
    return tiny_lm_build(request.param)


def test_a_tiny_lm_builds_end_to_end(lm_build):
    r = json.loads((lm_build / "report.json").read_text())
    assert set(r["models"]) == {"teacher", "student-baseline", "student-fp32", "student-int4"}
    for m in r["models"].values():
        assert m["decode_tok_s"]["mean"] > 0 and m["peak_rss_mb"] > 0 and m["size_bytes"] > 0
        assert m["perplexity"] > 1
    assert r["models"]["student-int4"]["size_bytes"] < r["models"]["student-fp32"]["size_bytes"]
    # the baseline's graph has the distilled student's shapes: timed once, its quality its own
    base, fp32 = r["models"]["student-baseline"], r["models"]["student-fp32"]
    assert base["timed_as"] == "student-fp32" and base["decode_tok_s"] == fp32["decode_tok_s"]
    assert "speed and memory are student FP32's" in (lm_build / "report.md").read_text()
    for n in ("student-baseline", "student-fp32", "student-int4"):  # against the teacher's top-64 on held-out text
        assert 0 <= r["models"][n]["top1_agreement"] <= 1 and r["models"][n]["kl_teacher"] >= 0
    g = r["teacher_data"]["generation"]
    assert g["generated"] == g["prompts"] * g["per_prompt"] == 16 and g["kept"] + sum(g["dropped"].values()) == g["generated"]
    q = r["quantization"]
    # HQQ is offered where there is no QAT stage (test_a_failing_gptq_is_skipped_when_it_was_only_offered)
    assert set(q["candidates"]) == {"ptq", "qat"} and q["chosen"] in q["candidates"]
    assert all(p for p in r["parity"].values())
    md = (lm_build / "report.md").read_text()
    assert "the teacher's decode speed" in md and "perplexity" in md and "## Quantization" in md
    assert "one onnxruntime GroupQueryAttention node per layer" in md
    m = json.loads((lm_build / "manifest.json").read_text())
    assert m["precision"] == "int4" and m["model"] == "student-int4/model.onnx"
    assert (lm_build / m["model"]).is_file() and (lm_build / "student-int4" / "tokenizer.json").is_file()


def test_the_deliverable_and_the_teacher_run_on_openvino(lm_build):
    pytest.importorskip("openvino")
    r = json.loads((lm_build / "report.json").read_text())
    ov = r["runtimes"]["openvino"]
    assert set(ov["models"]) == {"student-int4", "teacher"} and not ov["failed"]
    for n, m in ov["models"].items():
        assert m["decode_tok_s"]["mean"] > 0 and m["peak_rss_mb"] > 0 and m["decode_vs_onnxruntime"] > 0
        assert m["perplexity"] == pytest.approx(r["models"][n]["perplexity"], rel=0.05)
        assert m["parity"]["top1_agreement"] >= 0.6
    assert ov["models"]["teacher"]["parity"]["max_abs_diff"] < 1e-3
    assert ov["conversion"]["student-int4"]["attention_fused"] == 2  # the student's two layers
    md = (lm_build / "report.md").read_text()
    assert "## On OpenVINO" in md and "the OpenVINO teacher's decode speed" in md
    # the deliverable's OpenVINO folder ships beside the ONNX one (the teacher's stays in the cache)
    assert (lm_build / "student-int4-openvino" / "openvino_model.xml").is_file()
    assert not (lm_build / "teacher-openvino").exists()


def test_the_deliverable_folder_loads_with_optimum_and_transformers(lm_build):
    from optimum.onnxruntime import ORTModelForCausalLM
    from transformers import AutoTokenizer, pipeline

    folder = lm_build / "student-int4"
    gen = pipeline("text-generation", model=ORTModelForCausalLM.from_pretrained(folder),
                   tokenizer=AutoTokenizer.from_pretrained(folder))
    out = gen("def add(a, b):", max_new_tokens=4, do_sample=False)
    assert isinstance(out[0]["generated_text"], str)


def test_a_trimmed_vocabulary_keeps_the_data_tokens_and_a_floor(tiny_lm_build):
    """lm.vocab (the Qwen2 build): the exported head is a MatMul on the kept columns and the floor's
    (MatMulNBits in INT4), gathered over the vocabulary; every other token's logit is the floor, so the
    logits still span the tokenizer and perplexity is finite; onnxruntime agrees with PyTorch (parity
    passed)."""
    import numpy as np
    import onnx
    import onnxruntime as ort

    build = tiny_lm_build("qwen2")
    r = json.loads((build / "report.json").read_text())
    v = r["vocab"]
    assert v["kept"] < v["vocab"] and v["used"] > 80 and 80 <= v["kept"] <= 80 + 3  # + the special tokens
    assert 0.5 < v["coverage"] < 1 and 0 < v["test_coverage"] <= 1 and v["floor"] is not None
    assert "The students' LM head keeps" in (build / "report.md").read_text()
    for name, head_op in (("student-fp32", "MatMul"), ("student-int4", "MatMulNBits")):
        g = onnx.load(str(build / name / "model.onnx")).graph
        made = {o: n for n in g.node for o in n.output}
        spread = made["logits"]
        add = made[spread.input[0]]
        assert spread.op_type == "Gather" and add.op_type == "Add" and made[add.input[0]].op_type == head_op
        inits = {i.name: onnx.numpy_helper.to_array(i) for i in g.initializer}
        columns, floor = inits["lm_head.columns"], float(inits["lm_head.floor_bias"][-1])  # QAT trains the floor on
        kept = np.flatnonzero(columns < v["kept"])  # every other id reads the floor's column, K
        assert len(kept) == v["kept"] and len(columns) == v["vocab"] and (columns[kept] == np.arange(len(kept))).all()
        assert r["models"][name]["perplexity"] < 1e4
    sess = ort.InferenceSession(str(build / "student-int4" / "model.onnx"), providers=["CPUExecutionProvider"])
    feed = {}
    for i in sess.get_inputs():
        shape = [1 if d in ("batch_size",) or not isinstance(d, int) and "batch" in str(d) else
                 (0 if "past" in i.name and not isinstance(d, int) else (d if isinstance(d, int) else 3)) for d in i.shape]
        feed[i.name] = (np.arange(3, dtype=np.int64)[None] + 5 if i.name == "input_ids" else
                        np.ones(shape, np.int64) if i.name == "attention_mask" else
                        np.arange(3, dtype=np.int64)[None] if i.name == "position_ids" else np.zeros(shape, np.float32))
    logits = sess.run(["logits"], feed)[0]  # (1, 3, V)
    others = np.setdiff1d(np.arange(logits.shape[-1]), kept)
    assert logits.shape[-1] == v["vocab"] and np.allclose(logits[..., others], floor, atol=1e-6)


def test_a_width_pruned_student_exports_its_width(tiny_lm_build):
    """student.keep_intermediate (the Qwen2 build): every MLP of the students keeps 96 of 128 channels,
    in the exported graphs and their configs, and the report says so."""
    import onnx

    build = tiny_lm_build("qwen2")
    r = json.loads((build / "report.json").read_text())
    w = r["width"]
    assert (w["kept"], w["of"]) == (96, 128) and len(w["score_kept"]) == 2 and all(0.75 <= v < 1 for v in w["score_kept"])
    assert "keeps 96 of the teacher's 128 channels" in (build / "report.md").read_text()
    for name in ("student-fp32", "student-int4"):
        assert json.loads((build / name / "config.json").read_text())["intermediate_size"] == 96
    g = onnx.load(str(build / "student-fp32" / "model.onnx"))
    shapes = [tuple(i.dims) for i in g.graph.initializer if len(i.dims) == 2]  # (hidden 64: gate, up, down)
    assert shapes.count((64, 96)) == 4 and shapes.count((96, 64)) == 2 and not any(128 in s for s in shapes)


@pytest.mark.parametrize("setting, says", [("student.keep_intermediate=128", "keeps every MLP channel"),
                                           ("student.model=narrow", "sets its width with student.intermediate")])
def test_a_width_that_prunes_nothing_is_refused_before_training(tmp_path, setting, says):
    from click.testing import CliRunner

    from edgekd.cli import main

    recipe = _recipe(tmp_path, "llama")
    extra = ["student.keep_intermediate=64"] if setting.startswith("student.model") else []
    res = CliRunner().invoke(main, ["build", f"recipe={recipe}", "target=cpu-int4", "--out", str(tmp_path / "b"),
                                    *TINY_LM, setting, *extra])
    assert res.exit_code == 2, res.output
    assert says in res.output and "Traceback" not in res.output and "[teacher] running" not in res.output


def test_a_student_with_another_vocabulary_is_refused_in_one_line(tmp_path):
    from click.testing import CliRunner

    from edgekd.cli import main

    recipe = _recipe(tmp_path, "llama")
    other = lm_tiny.tiny_lm(tmp_path / "other", "qwen2")
    cfg = json.loads((other / "config.json").read_text())
    cfg["vocab_size"] += 7
    (other / "config.json").write_text(json.dumps(cfg))
    res = CliRunner().invoke(main, ["build", f"recipe={recipe}", "target=cpu-int4", "--out", str(tmp_path / "b"),
                                    f"student.model=hf-config:{other / 'config.json'}", *TINY_LM])
    assert res.exit_code == 2, res.output
    assert "vocabulary" in res.output and "Traceback" not in res.output


def test_a_prompt_longer_than_the_context_is_refused_in_one_line(tmp_path):
    from click.testing import CliRunner

    from edgekd.cli import main

    recipe = _recipe(tmp_path, "llama")
    res = CliRunner().invoke(main, ["build", f"recipe={recipe}", "target=cpu-int4", "--out", str(tmp_path / "b"),
                                    *TINY_LM, "data.max_length=8"])
    assert res.exit_code == 2, res.output
    assert "longer than the context" in res.output and "Traceback" not in res.output


def test_a_layer_subset_keeps_the_layers_that_change_the_stream_most(monkeypatch):
    """No student.keep_layers: the inner layers of highest block influence, the first and last always."""
    from types import SimpleNamespace

    import numpy as np

    from edgekd.recipe import ModelSpec
    from edgekd.tasks import _lm_data
    from edgekd.tasks.text_generation import TextGeneration

    monkeypatch.setattr(_lm_data, "block_influence", lambda *a, **k: np.array([0.9, 0.1, 0.5, 0.2, 0.4, 0.8]))
    ctx = SimpleNamespace(extra={"seqs": {"train": None}}, device="cpu", log=lambda m: None)
    spec = TextGeneration()._influential_layers(ctx, None, ModelSpec(model="layer-subset", layers=4))
    assert spec.keep_layers == "0,2,4,5" and spec.layers == 4
    assert ctx.extra["layer_choice"][4]["keep"] == [0, 2, 4, 5]


def test_a_vocabulary_that_trims_nothing_is_refused_before_training(tmp_path):
    from click.testing import CliRunner

    from edgekd.cli import main

    recipe = _recipe(tmp_path, "llama")
    res = CliRunner().invoke(main, ["build", f"recipe={recipe}", "target=cpu-int4", "--out", str(tmp_path / "b"),
                                    *TINY_LM, "lm.vocab=100000"])
    assert res.exit_code == 2, res.output
    assert "lm.vocab = 100000 keeps the whole vocabulary" in res.output and "Traceback" not in res.output
    assert "[teacher] running" not in res.output


def test_an_image_task_refuses_the_int4_target():
    from click.testing import CliRunner

    from edgekd.cli import main

    res = CliRunner().invoke(main, ["build", "target=cpu-int4", "--out", "/tmp/never"])
    assert res.exit_code == 2 and "int4" in res.output


def test_on_policy_gkd_and_reverse_kl_train_with_the_teacher_in_the_step(tmp_path):
    """GKD: generalized JSD with the teacher run in the step on half the batches' student samples; the
    report names the losses and the build completes."""
    from click.testing import CliRunner

    from edgekd.cli import main

    recipe = _recipe(tmp_path, "llama")
    res = CliRunner().invoke(main, ["build", f"recipe={recipe}", "target=cpu-int4", "--out", str(tmp_path / "b"), *TINY_LM,
                                    "distill.losses.forward_kl=0", "distill.losses.gkd_jsd=1", "distill.losses.reverse_kl=0.5",
                                    "lm.on_policy=0.5", "lm.score=response", "quantize.method=ptq"])
    assert res.exit_code == 0, res.output
    r = json.loads((tmp_path / "b" / "cpu-int4" / "report.json").read_text())
    assert r["loss_weights"] == {"gkd_jsd": 1.0, "reverse_kl": 0.5}
    assert set(r["quantization"]["candidates"]) == {"ptq", "ptq-hqq", "ptq-gptq"}


def test_on_policy_needs_a_loss_that_runs_the_teacher(tmp_path):
    from click.testing import CliRunner

    from edgekd.cli import main

    recipe = _recipe(tmp_path, "llama")
    res = CliRunner().invoke(main, ["build", f"recipe={recipe}", "target=cpu-int4", "--out", str(tmp_path / "b"),
                                    "lm.on_policy=0.5", "lm.score=response"])
    assert res.exit_code == 2 and "gkd_jsd" in res.output and "Traceback" not in res.output


def test_an_install_without_the_exporter_is_told_before_training(tmp_path):
    """optimum is what exports the model: without it the build stops in one line before the teacher trains."""
    import subprocess

    recipe = _recipe(tmp_path, "llama")
    code = "import sys; sys.modules['optimum'] = None; from edgekd.cli import main; main()"  # optimum cannot be imported
    res = subprocess.run([sys.executable, "-c", code, "build", f"recipe={recipe}", "target=cpu-int4", "--out",
                          str(tmp_path / "b"), *TINY_LM], capture_output=True, text=True)
    assert res.returncode == 2, res.stderr[-2000:]
    assert "Traceback" not in res.stderr and "[teacher] running" not in res.stderr
    assert res.stderr.strip().splitlines()[-1].endswith("pip install 'edgekd[lm]'"), res.stderr[-500:]


def test_a_quantized_candidate_refused_by_parity_gives_way_to_the_next(tmp_path, monkeypatch):
    """The shipped INT4 graph is the lowest validation NLL among the candidates that pass parity: a weak
    student's near-ties may flip under one rounding and not another. The report says which was refused."""
    from click.testing import CliRunner

    import edgekd.export_lm as el
    from edgekd.cli import main
    from edgekd.errors import ParityError

    real, refused = el.check_parity, []

    def first_quantized_fails(model, tok, folder, prompts, *, quantized=False, **kw):
        if quantized and not refused:
            refused.append(folder.name.lstrip("."))
            raise ParityError(f"quantized {folder} agrees with its PyTorch model on 0.100 of next tokens (minimum 0.6); "
                              "quantize with algorithm='hqq' (symmetric=False) or bits=8",
                              {"top1_agreement": 0.1, "min_agreement": 0.6})
        return real(model, tok, folder, prompts, quantized=quantized, **kw)

    monkeypatch.setattr(el, "check_parity", first_quantized_fails)
    recipe = _recipe(tmp_path, "llama")
    res = CliRunner().invoke(main, ["build", f"recipe={recipe}", "target=cpu-int4", "--out", str(tmp_path / "b"), *TINY_LM,
                                    "quantize.method=ptq"])
    assert res.exit_code == 0, res.output
    q = json.loads((tmp_path / "b" / "cpu-int4" / "report.json").read_text())["quantization"]
    assert [k for k, c in q["candidates"].items() if c.get("parity_refused")] == refused
    assert q["chosen"] != refused[0] and q["chosen"] in q["candidates"]
    md = (tmp_path / "b" / "cpu-int4" / "report.md").read_text()
    assert "refused by parity (agrees with its PyTorch model on 0.100 of next tokens (minimum 0.6))" in md
    assert "that passed parity" in md


def _rebuild(tiny_lm_build, tmp_path, target: str, *overrides: str):
    """The Llama tiny build's recipe built again for `target` into a folder of its own that starts from a
    copy of the session build's cache (the shared build stays as the other tests read it)."""
    import shutil

    from click.testing import CliRunner

    from edgekd.cli import main

    int4 = tiny_lm_build("llama")
    out = tmp_path / "b"
    shutil.copytree(int4.parent / ".cache", out / ".cache")
    res = CliRunner().invoke(main, ["build", f"recipe={int4.parent.parent / 'edgekd.toml'}", f"target={target}",
                                    "--out", str(out), *TINY_LM, *overrides])
    return res, out / target


def test_int8_target_trains_on_its_own_grid(tiny_lm_build, tmp_path):
    """cpu-int8 after cpu-int4 in one output folder: the students are shared, the quantization-aware stage
    is not (its fake-quant weights sit on the 4- or 8-bit grid the target ships), and the deliverable's
    MatMulNBits kernels are 8-bit."""
    import onnx

    res, build = _rebuild(tiny_lm_build, tmp_path, "cpu-int8")
    assert res.exit_code == 0, res.output
    r = json.loads((build / "report.json").read_text())
    assert r["deliverable"] in ("student-int8", "student-fp32")
    assert r["stages"]["distill"]["cached"] and r["stages"]["baseline"]["cached"]
    assert not r["stages"]["qat"]["cached"]
    bits = {a.i for n in onnx.load(str(build / "student-int8" / "model.onnx")).graph.node
            if n.op_type == "MatMulNBits" for a in n.attribute if a.name == "bits"}
    assert bits == {8}


def test_no_rounding_passing_parity_is_one_line(tiny_lm_build, tmp_path, monkeypatch):
    """Every candidate rounding refused by parity: exit 2, one line naming each candidate's agreement and
    the key that sets the floor, and no half-written target folder."""
    import edgekd.export_lm as el

    tiny_lm_build("llama")  # the session build first: it must pass parity before the check is patched
    real = el.check_parity

    def low(model, tok, folder, prompts, *, quantized=False, **kw):
        if not quantized:
            return real(model, tok, folder, prompts, quantized=quantized, **kw)
        raise el.ParityError("low", {"top1_agreement": 0.42, "min_agreement": kw["min_agreement"]})

    monkeypatch.setattr(el, "check_parity", low)
    res, build = _rebuild(tiny_lm_build, tmp_path, "cpu-int4", "lm.int4_min_agreement=0.7")
    assert res.exit_code == 2, res.output
    line = res.output.strip().splitlines()[-1]
    assert "no 4-bit rounding of the student passed parity" in line and line.count("0.420") >= 2
    assert "(minimum 0.7)" in line and "lower lm.int4_min_agreement" in line and "Traceback" not in res.output
    assert not build.exists()


def test_a_student_without_qat_is_also_rounded_by_gptq(tiny_lm_build, tmp_path):
    """Without quantization-aware training GPTQ (neural-compressor, on the PyTorch student) is one more
    candidate: every decoder Linear's integers go into the graph as GPTQ chose them (found by weight), the
    head and embedding by round to nearest; the report lists it beside the others with its NLL."""
    import onnx

    res, build = _rebuild(tiny_lm_build, tmp_path, "cpu-int4", "quantize.method=ptq", "lm.gptq_sequences=8")
    assert res.exit_code == 0, res.output
    r = json.loads((build / "report.json").read_text())
    c = r["quantization"]["candidates"]
    assert set(c) == {"ptq", "ptq-hqq", "ptq-gptq"}
    layers = json.loads((build / "student-fp32" / "config.json").read_text())["num_hidden_layers"]
    assert c["ptq-gptq"]["gptq"]["linears"] == c["ptq-gptq"]["given_integers"] == 7 * layers
    assert c["ptq-gptq"]["gptq"]["sequences"] == 8 and c["ptq-gptq"]["val_nll"] > 0
    assert "GPTQ" in (build / "report.md").read_text()


def test_a_failing_gptq_is_skipped_when_it_was_only_offered(tiny_lm_build, tmp_path, monkeypatch):
    """lm.gptq = "auto": GPTQ is an optional candidate; when it cannot run the build ships one of the
    others and the report says why GPTQ is missing. Asked for ("true"), its failure stops the build."""
    import edgekd.quantize.gptq as gq

    tiny_lm_build("llama")  # the session build first: the patch is not for it

    def broken(*a, **k):
        raise ValueError("no transformer blocks found")

    monkeypatch.setattr(gq, "gptq_round", broken)
    res, build = _rebuild(tiny_lm_build, tmp_path, "cpu-int4", "quantize.method=ptq")
    assert res.exit_code == 0, res.output
    q = json.loads((build / "report.json").read_text())["quantization"]
    assert set(q["candidates"]) == {"ptq", "ptq-hqq"} and "no transformer blocks found" in q["gptq_skipped"]
    assert "GPTQ was skipped: ValueError: no transformer blocks found" in (build / "report.md").read_text()
    res, build = _rebuild(tiny_lm_build, tmp_path / "asked", "cpu-int4", "quantize.method=ptq", "lm.gptq=true")
    assert res.exit_code == 2 and not build.exists() and "Traceback" not in res.output
    assert res.output.strip().splitlines()[-1].endswith('GPTQ could not round the student (ValueError: no transformer '
                                                        'blocks found); set lm.gptq = "auto" to go on without it')
