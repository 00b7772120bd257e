"""student.max_latency_ms: candidate students are timed untrained on the target's runtime before any
training, the one with the most parameters under the budget is distilled, and no candidate under it is
one line (exit 2) before the teacher trains. What fits on this machine is a timing, so the budgets here
are ones every candidate meets or none can."""
import json

import pytest

from conftest import TINY, TINY_TARGET

CANDIDATES = ["student.candidates=model=mnist-student-tiny,model=mnist-student"]


def _build(tmp_path, *args, cache=None, target="cpu-int8"):
    from click.testing import CliRunner

    from edgekd.cli import main

    if cache is not None:  # the session's tiny builds' stage cache: their teacher is this one's
        cache.mkdir(parents=True, exist_ok=True)
        (tmp_path / ".cache").symlink_to(cache)
    return CliRunner().invoke(main, ["build", f"target={target}", "--out", str(tmp_path), *TINY, *TINY_TARGET,
                                     "distill.epochs=1", *CANDIDATES, *args])


@pytest.mark.parametrize("budget", ["student.max_latency_ms=0.0001", "student.min_speedup=100000"])
def test_no_candidate_under_the_budget_is_one_line_before_training(tmp_path, budget):
    res = _build(tmp_path, budget)
    assert res.exit_code == 2, res.output
    last = res.output.strip().splitlines()[-1]
    assert f"no candidate student runs within {budget.replace('=', ' = ')}" in last and "loosen the budget" in last
    assert "[teacher] running" not in res.output  # nothing trained
    assert not (tmp_path / "cpu-int8").exists()


def test_the_most_capable_candidate_under_the_budget_is_distilled(tmp_path, build_root):
    from edgekd.recipe import load_recipe

    # the FP32 target: candidates timed in FP32, and no quantization-aware stage to wait for; both budgets,
    # the relative one timing the teacher beside the candidates (the tighter one holds)
    res = _build(tmp_path, "student.max_latency_ms=1000", "student.min_speedup=0.001", cache=build_root / ".cache",
                 target="cpu-fp32")
    assert res.exit_code == 0, res.output
    r = json.loads((tmp_path / "cpu-fp32" / "report.json").read_text())
    c = r["student_choice"]
    assert [x["candidate"] for x in c["candidates"]] == ["model=mnist-student-tiny", "model=mnist-student"]
    assert all(x["fits"] and x["p50_ms"] > 0 for x in c["candidates"])
    big = max(c["candidates"], key=lambda x: x["params"])
    assert c["chosen"] == big["candidate"] == "model=mnist-student"
    assert r["models"]["student-fp32"]["params"] == big["params"]  # the chosen one was trained
    assert c["precision"] == "fp32" and c["teacher_p50_ms"] > 0
    assert c["budget_ms"] == pytest.approx(min(1000, c["teacher_p50_ms"] / 0.001))
    assert [x["candidate"] for x in c["candidates"]] == ["model=mnist-student-tiny", "model=mnist-student"]  # no teacher row
    assert "## The student that fits the budget" in (tmp_path / "cpu-fp32" / "report.md").read_text()
    assert load_recipe(tmp_path / "cpu-fp32" / "recipe.lock.toml").student.model == "mnist-student"


@pytest.mark.parametrize("item", ["layers", "=3", "max_latency_ms=2"])
def test_a_malformed_candidate_is_one_line(tmp_path, item):
    res = _build(tmp_path, "student.max_latency_ms=5", f"student.candidates={item}")
    assert res.exit_code == 2 and "student.candidates item" in res.output.strip().splitlines()[-1], res.output


def test_candidates_come_from_the_recipe_or_a_layer_subsets_layer_counts():
    from edgekd.recipe import apply_overrides, load_recipe
    from edgekd.student_budget import candidates

    r = apply_overrides(load_recipe(), ["student.model=layer-subset", "student.max_latency_ms=5"])
    assert candidates(r, 6) == [(f"layers={n}", {"layers": n, "keep_layers": ""}) for n in range(1, 6)]
    r = apply_overrides(load_recipe(), ['student.candidates=config={"depth_multiplier": 0.35}', "student.max_latency_ms=5"])
    assert candidates(r, None) == [('config={"depth_multiplier": 0.35}', {"config": '{"depth_multiplier": 0.35}'})]


def test_an_int8_candidate_is_timed_as_the_build_would_ship_it(tmp_path):
    """A transformers MobileNetV2 writes an explicit Pad before each convolution (TF-style padding); the INT8
    graph a candidate is timed on has them folded into the convolutions, as the shipped graph has, so no
    float Pad breaks its integer chain."""
    pytest.importorskip("transformers")
    from types import SimpleNamespace

    import numpy as np
    import onnx
    from transformers import AutoConfig, AutoModelForImageClassification

    from edgekd.models.hf_image import ImageClassifier
    from edgekd.tasks import get

    cfg = AutoConfig.for_model("mobilenet_v2", num_labels=4, image_size=32, depth_multiplier=0.35)
    assert cfg.tf_padding  # the library's default
    model = ImageClassifier(AutoModelForImageClassification.from_config(cfg)).eval()
    x = np.random.default_rng(0).random((8, 3, 32, 32), dtype=np.float32)
    ctx = SimpleNamespace(recipe=SimpleNamespace(export=SimpleNamespace(opset=17), quantize=SimpleNamespace(calibration=8)),
                          data=SimpleNamespace(x_val=x, x_train=x), io=SimpleNamespace(input_shape=(3, 32, 32)),
                          extra={"reduce_range": False})
    fp32, _ = get("image-classification").timing_graph(ctx, model, tmp_path, int8=False)
    int8, _ = get("image-classification").timing_graph(ctx, model, tmp_path, int8=True)
    assert any(n.op_type == "Pad" for n in onnx.load(str(fp32)).graph.node)
    ops = [n.op_type for n in onnx.load(str(int8)).graph.node]
    assert "Pad" not in ops and ops.count("QuantizeLinear") > 10
