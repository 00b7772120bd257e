import pytest
from hypothesis import given, settings, strategies as st

from edgekd.errors import EdgeKDError, RecipeError
from edgekd.recipe import DEFAULT_RECIPE, Recipe, apply_overrides, load_recipe, recipe_keys, recipe_toml


def test_embedded_example_is_the_default_recipe():
    r = load_recipe(None)
    assert DEFAULT_RECIPE.is_file() and r == load_recipe(DEFAULT_RECIPE)
    assert r.data.source == "mnist" and r.teacher.model == "mnist-teacher" and r.student.model == "mnist-student"


def test_teacher_and_student_sections_keep_their_own_defaults(tmp_path):
    p = tmp_path / "r.toml"
    p.write_text("[teacher]\nepochs = 3\n")
    r = load_recipe(p)
    assert r.teacher.model == "mnist-teacher" and r.teacher.epochs == 3 and r.student.model == "mnist-student"


def test_old_task_names_are_aliases():
    assert apply_overrides(Recipe(), ["task=embedding", "teacher.model=hf:x", "student.model=layer-subset",
                                      "distill.embedding_cos=1"]).task == "text-embedding"


def test_overrides_are_typed():
    r = apply_overrides(Recipe(), ["distill.temperature=2", "distill.epochs=3", "data.augment=false", "seed=7"])
    assert r.distill.temperature == 2.0 and isinstance(r.distill.temperature, float)
    assert r.distill.epochs == 3 and r.data.augment == "none" and r.seed == 7


@pytest.mark.parametrize("text, message", [
    ("distill.temprature=2", "did you mean 'distill.temperature'"),
    ("distill.epochs=two", "distill.epochs must be an integer"),
    ("distill.alpha=1.5", "distill.alpha must be in [0, 1], got 1.5"),
    ("distill.temperature=0", "distill.temperature must be > 0"),
    ("teacher.epochs=-1", "teacher.epochs must be >= 0"),
    ("data.augment=maybe", "data.augment must be 'auto' or 'digits'"),
    ("task=segmentation", "task 'segmentation' is unknown"),
    ("teacher.config=[1]", "teacher.config must be a JSON object"),
    ("data.normalize=0.5/0", "data.normalize"),
    ("quantize.method=int4", "quantize.method must be 'qat' or 'ptq'"),
    ("nonsense", "is not a key=value override"),
])
def test_bad_overrides_say_what_and_how(text, message):
    with pytest.raises(RecipeError, match=message.replace("[", r"\[").replace("]", r"\]").replace("(", r"\(").replace(")", r"\)")):
        apply_overrides(Recipe(), [text])


def test_recipe_file_errors(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("this is = = not toml")
    with pytest.raises(RecipeError, match="not valid TOML"):
        load_recipe(bad)
    with pytest.raises(RecipeError, match="does not exist"):
        load_recipe(tmp_path / "missing.toml")
    unknown = tmp_path / "unknown.toml"
    unknown.write_text("[distill]\ntemperatur = 3\n")
    with pytest.raises(RecipeError, match="did you mean 'distill.temperature'"):
        load_recipe(unknown)
    wrong = tmp_path / "wrong.toml"
    wrong.write_text("[distill]\nepochs = 'ten'\n")
    with pytest.raises(RecipeError, match="distill.epochs must be an integer"):
        load_recipe(wrong)


def test_lock_round_trips(tmp_path):
    r = apply_overrides(Recipe(), ["distill.temperature=3.5", "student.model=mnist-student-tiny"])
    p = tmp_path / "lock.toml"
    p.write_text(recipe_toml(r))
    assert load_recipe(p) == r


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from(recipe_keys() + ["x", "distill", "data.nope", ""]), max_size=3), st.lists(st.text(max_size=8), max_size=3))
def test_override_parser_never_raises_anything_else(keys, values):
    overrides = [f"{k}={v}" for k, v in zip(keys, values)]
    try:
        r = apply_overrides(Recipe(), overrides)
    except EdgeKDError:
        return
    assert isinstance(r, Recipe)


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=200))
def test_recipe_loader_never_raises_anything_else(tmp_path_factory, text):
    p = tmp_path_factory.mktemp("r") / "r.toml"
    p.write_text(text)
    try:
        assert isinstance(load_recipe(p), Recipe)
    except EdgeKDError:
        pass
