import pytest
from hypothesis import given, settings, strategies as st

from edgekd.errors import EdgeKDError, RecipeError
from edgekd.recipe import DEFAULT_RECIPE, DataSpec, ModelSpec, Recipe, apply_overrides, load_recipe, recipe_keys, recipe_toml


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
    ("distill.temperature=-1", "distill.temperature must be > 0"),
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


# ---------------------------------------------------------------- distill.losses

TEXT = ["task=text-embedding", "teacher.model=hf:x", "student.model=layer-subset"]


def test_losses_table_in_toml_and_overrides(tmp_path):
    p = tmp_path / "r.toml"
    p.write_text("[distill]\nlosses = {kd = 1, rkd_angle = 2.0}\n")
    r = load_recipe(p)
    assert r.distill.losses == {"kd": 1.0, "rkd_angle": 2.0} and r.distill.resolved_method == "relation"
    assert r.loss_weights() == {"kd": 1.0, "rkd_angle": 2.0}  # named: no family defaults
    one = apply_overrides(r, ["distill.losses.rkd_distance=0.5", "distill.losses.kd=0.5"])  # entry by entry: merged
    assert one.distill.losses == {"kd": 0.5, "rkd_angle": 2.0, "rkd_distance": 0.5}
    whole = apply_overrides(r, ["distill.losses={rkd_distance = 3}"])  # the whole table: replaced
    assert whole.distill.losses == {"rkd_distance": 3.0} and whole.loss_weights() == {"kd": 1.0, "rkd_distance": 3.0}
    lock = tmp_path / "lock.toml"
    lock.write_text(recipe_toml(one))
    assert load_recipe(lock) == one


def test_loss_weights_defaults():
    r = Recipe()
    assert r.loss_weights() == {"kd": 1.0}  # a classifier always learns the teacher's logits ...
    assert apply_overrides(r, ["distill.losses.kd=2"]).loss_weights() == {"kd": 2.0}  # ... at the weight it is given
    assert apply_overrides(r, ["distill.method=feature"]).loss_weights() == {"kd": 1.0, "fitnets_hint": 1.0}
    assert apply_overrides(r, ["distill.method=relation"]).loss_weights() == {"kd": 1.0, "rkd_angle": 2.0, "rkd_distance": 1.0}
    text = apply_overrides(r, [*TEXT, "distill.method=feature", "distill.losses.embedding_cos=1"])
    assert text.loss_weights() == {"embedding_cos": 1.0, "tinybert_hidden": 1.0}  # no logits: no kd


@pytest.mark.parametrize("overrides, message", [
    (["distill.losses.rkd_angel=1"], "distill.losses.rkd_angel is not a registered loss; did you mean 'rkd_angle'? "
                                     "(attention_kl, embedding_cos"),
    (["distill.losses={kd = -1}"], "distill.losses.kd must be a weight >= 0 (0 turns it off), got -1.0"),
    (["distill.losses.kd=nan"], "distill.losses.kd must be a weight >= 0"),
    (["distill.losses.kd=x"], "distill.losses.kd must be a number, got 'x'"),
    (["distill.losses={kd = 1"], "distill.losses must be a table such as {name = 1.0, other = 2.0}, got '{kd = 1'"),
    (["distill.losses.embedding_cos=1"], "distill.losses.embedding_cos applies to text tasks, not task "
                                         "'image-classification'; remove it (the losses for this task: fitnets_hint, kd,"),
    ([*TEXT, "distill.losses.embedding_cos=1", "distill.losses.fitnets_hint=1"], "fitnets_hint applies to image tasks"),
    ([*TEXT, "distill.losses.kd=1"], "distill.losses.kd reads logits, and the students of task 'text-embedding' answer "
                                     "with embeddings"),
    (TEXT, "distill.losses turns no loss on for task 'text-embedding'; give at least one loss a weight > 0, e.g. "
           "distill.losses = {embedding_cos = 1.0}"),
    (["distill.losses.kd=0"], "distill.losses.kd = 0 leaves quantization-aware training nothing to learn"),
    (["distill.losses={kd = 1}", "distill.losses.kd=2"], "set it whole or entry by entry"),
])
def test_losses_table_errors_are_one_line(overrides, message):
    with pytest.raises(RecipeError) as e:
        apply_overrides(Recipe(), overrides)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_deprecated_loss_fields_fill_the_table_with_one_line(caplog, tmp_path):
    p = tmp_path / "old.toml"
    p.write_text("[distill]\nhidden_mse = 2.0\nrkd_angle = 0.0\n")
    with caplog.at_level("WARNING", logger="edgekd.recipe"):
        r = load_recipe(p)
    lines = [rec.getMessage() for rec in caplog.records if rec.name == "edgekd.recipe"]
    assert lines == ["distill.hidden_mse, distill.rkd_angle are deprecated; write distill.losses = {hidden_mse = 2.0, "
                     "rkd_angle = 0.0} with hidden_mse renamed fitnets_hint (images) or tinybert_hidden (text)"]
    # hidden_mse means the data's own hidden-state loss: FitNets' hints here, TinyBERT's for text
    assert r.distill.losses == {"fitnets_hint": 2.0, "rkd_angle": 0.0} and r.distill.hidden_mse is None
    assert r.distill.resolved_method == "feature" and r.loss_weights() == {"kd": 1.0, "fitnets_hint": 2.0}
    text = apply_overrides(r, [*TEXT, "distill.losses={hidden_mse = 2}", "distill.embedding_cos=1"])
    assert text.distill.losses == {"tinybert_hidden": 2.0, "embedding_cos": 1.0}
    off = apply_overrides(text, ["distill.embedding_cos=0", "distill.embedding_mse=1"])  # an alias set to 0 turns it off
    assert off.loss_weights() == {"tinybert_hidden": 2.0, "embedding_mse": 1.0}
    assert "hidden_mse" not in recipe_toml(off) and "embedding_cos = 0.0" in recipe_toml(off)  # the lock: the table


def test_the_baseline_key_reads_no_signal_setting():
    from dataclasses import fields

    from edgekd.pipeline import _distill_in
    from edgekd.recipe import DistillSpec

    base = DistillSpec()
    changed = {"method": "relation", "assistants": "", "temperature": 2.0, "alpha": 0.5, "layer_map": "1:2",
               "losses": {"rkd_angle": 1.0}, "embedding_mse": 1.0, "embedding_cos": 1.0, "hidden_mse": 1.0,
               "attention_kl": 1.0, "rkd_distance": 1.0, "rkd_angle": 1.0, "similarity_mse": 1.0}  # aliases: deprecated
    signal = [f.name for f in fields(DistillSpec) if f.metadata.get("signal")]
    assert sorted(signal) == sorted(changed)  # a new signal setting: add it here
    key = _distill_in(base, baseline=True)
    for name, value in changed.items():
        spec = DistillSpec(**{name: value, **({"method": "progressive", "assistants": "a"} if name == "assistants" else {})})
        assert _distill_in(spec, baseline=True) == key, name
    assert _distill_in(DistillSpec(epochs=3), baseline=True) != key  # what the baseline reads still counts
    assert _distill_in(DistillSpec(losses={"rkd_angle": 1.0})) != _distill_in(base)  # ... and the distilled student's key


def test_automatic_epochs_go_on_while_validation_improves():
    """A teacher whose epochs are the family's guess may extend on a still-rising validation score (stop
    on a plateau); a count the recipe gives is trained exactly. Students extend only when distill.extend
    asks, and never in QAT or a caller's own count."""
    from types import SimpleNamespace

    from edgekd.schedules import EXTEND, fit_spec, resolve

    base = Recipe(task="image-classification", teacher=ModelSpec(model="hf-config:resnet"),
                  student=ModelSpec(model="hf-config:mobilenet_v2"))
    auto = resolve(base, kind="image", n_train=1600)
    assert auto.teacher.extend == EXTEND and auto.distill.extend == 0
    given = resolve(apply_overrides(base, ["distill.epochs=7", "teacher.epochs=5"]), kind="image", n_train=1600)
    assert given.teacher.extend == 0 and given.distill.epochs == 7
    ctx = SimpleNamespace(recipe=auto, io=SimpleNamespace(kind="image"), extra={})
    assert fit_spec(ctx, role="student", n_rows=1600, desc="distill").extend == 0
    ctx.recipe = resolve(apply_overrides(base, ["distill.extend=2"]), kind="image", n_train=1600)
    assert fit_spec(ctx, role="student", n_rows=1600, desc="distill").extend == 2
    assert fit_spec(ctx, role="student", n_rows=1600, desc="qat", qat=True).extend == 0
    assert fit_spec(ctx, role="student", n_rows=1600, desc="trial", epochs=1).extend == 0
    with pytest.raises(RecipeError, match="distill.extend"):
        apply_overrides(base, ["distill.extend=-1"])


@pytest.mark.parametrize("task, kind, want", [("image-classification", "image", 5e-4), ("text-classification", "text", 5e-4),
                                              ("text-generation", "lm", "distill")])
def test_qat_rate_follows_the_family(task, kind, want):
    """quantize.lr 0: image and text students keep the rate their fake-quant ranges were tuned at; a
    causal LM's QAT continues its distillation at the distillation's rate, its own or the recipe's; a
    given rate is kept."""
    from types import SimpleNamespace

    from edgekd.schedules import fit_spec, resolve

    base = Recipe(task=task, teacher=ModelSpec(model="hf:x"), data=DataSpec(source="mnist" if kind == "image" else "jsonl"),
                  student=ModelSpec(model="layer-subset" if kind != "image" else "hf-config:y"))
    for over, distill_lr in (([], None), (["distill.lr=3e-5"], 3e-5)):
        r = resolve(apply_overrides(base, over), kind=kind, n_train=320)
        expected = r.distill.lr if want == "distill" else want
        assert r.quantize.lr == pytest.approx(expected) and (distill_lr is None or r.distill.lr == distill_lr)
        ctx = SimpleNamespace(recipe=r, io=SimpleNamespace(kind=kind), extra={})
        assert fit_spec(ctx, role="student", n_rows=320, desc="qat", qat=True).lr == pytest.approx(expected)
    assert resolve(apply_overrides(base, ["quantize.lr=1e-3"]), kind=kind, n_train=320).quantize.lr == 1e-3
    with pytest.raises(RecipeError, match="quantize.lr"):
        apply_overrides(base, ["quantize.lr=-1"])
