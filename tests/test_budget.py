"""The INT8 accuracy budget (quantize.max_accuracy_drop, edgekd.budget): bad values are refused in one
line; on a tiny student whose INT8 model loses accuracy, neural-compressor's search leaves the most
sensitive layers float and the report lists them, every configuration tried and the latency cost;
the image task's hook writes and checks exactly the model the search chose."""

from types import SimpleNamespace

import numpy as np
import pytest

from edgekd.errors import EdgeKDError, InputError, RecipeError

torch = pytest.importorskip("torch")
pytest.importorskip("neural_compressor")
nn = torch.nn

SHAPE = (1, 12, 12)


@pytest.mark.parametrize("value", ["-0.5", "nan", "inf", "101", "abc", "0.5%"])
def test_bad_budget_is_one_line(value):
    from edgekd.recipe import apply_overrides, load_recipe

    with pytest.raises(RecipeError) as e:
        apply_overrides(load_recipe(), [f"quantize.max_accuracy_drop={value}"])
    assert "quantize.max_accuracy_drop" in str(e.value) and "\n" not in str(e.value)


def test_budget_refused_where_edgekd_does_not_write_the_int8_model():
    from edgekd.budget import check_target
    from edgekd.targets import load_target

    check_target(load_target("cpu-int8"))  # fine
    with pytest.raises(InputError) as e:
        check_target(load_target("mobile-int8-executorch"))
    assert "max_accuracy_drop" in str(e.value) and "\n" not in str(e.value)


class Tiny(nn.Module):
    """Four weighted layers, no BatchNorm: a few hundred parameters whose INT8 model flips predictions."""

    def __init__(self):
        super().__init__()
        self.c1, self.c2, self.c3 = nn.Conv2d(1, 6, 3, 2, 1), nn.Conv2d(6, 8, 3, 2, 1), nn.Conv2d(8, 8, 3, 1, 1)
        self.fc = nn.Linear(8 * 3 * 3, 10)

    def forward(self, x):
        x = torch.relu(self.c3(torch.relu(self.c2(torch.relu(self.c1(x))))))
        return self.fc(x.flatten(1))  # (B, 72): every position counts, so predictions vary


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    """A random tiny student; the validation labels are its own FP32 predictions (FP32 accuracy 100%),
    so every prediction that INT8 flips costs accuracy; one calibration input with outlier values
    widens every activation range (coarse UINT8 steps), so INT8 does flip some."""
    from edgekd.export import export_onnx
    from edgekd.quantize import calibrate, prepare_qat, qat_eval_mode

    torch.manual_seed(0)
    torch.set_num_threads(1)
    student = Tiny().eval()
    rng = np.random.default_rng(0)
    x_val = rng.standard_normal((300, *SHAPE)).astype(np.float32)
    calib = rng.standard_normal((64, *SHAPE)).astype(np.float32)
    calib[0] *= 10
    with torch.no_grad():
        y_val = student(torch.from_numpy(x_val)).argmax(1).numpy()
    q = prepare_qat(student, input_shape=SHAPE, reduce_range=True)
    calibrate(q, calib)
    qat_eval_mode(q)
    folder = tmp_path_factory.mktemp("budget")
    export_onnx(student, folder / "student-fp32.onnx", SHAPE, opset=17)
    return SimpleNamespace(q=q, x_val=x_val, y_val=y_val, calib=calib, folder=folder)


def _space(case):
    from edgekd.budget import FallbackSpace
    from edgekd.quantize import export_int8_onnx, int8_layers, leave_float

    def write(layers, path):
        export_int8_onnx(leave_float(case.q, layers), path, input_shape=SHAPE, opset=17, calib_x=case.calib,
                         reduce_range=True)

    return FallbackSpace(int8_layers(case.q), write, case.x_val, lambda out: float((out.argmax(1) == case.y_val).mean()))


def test_no_budget_loss_means_no_search(case):
    from edgekd.budget import fit_budget

    r = fit_budget(_space(case), max_drop=100, fp32=case.folder / "student-fp32.onnx", runtime="onnxruntime",
                   log=lambda *_: None)
    assert r["met"] and r["float_layers"] == [] and r["sensitivity"] == []
    assert [t["float_layers"] for t in r["tried"]] == [[]]  # all INT8, within budget: the tuner stops there


def test_forced_budget_falls_back_most_sensitive_layers_first_and_reports(case):
    from edgekd.budget import fit_budget
    from edgekd.report import accuracy_budget_lines

    space = _space(case)
    r = fit_budget(space, max_drop=0.01, fp32=case.folder / "student-fp32.onnx", runtime="onnxruntime",
                   time_input=case.x_val[:1], log=lambda *_: None)
    assert r["fp32_val_score"] == 1.0 and r["int8_drop_pts"] > 0.01, "the case must lose accuracy in INT8"
    assert r["float_layers"], "a budget of 0.01 points must leave layers float"
    order = [s["layer"] for s in r["sensitivity"]]
    assert sorted(order) == sorted(space.layers)
    assert r["float_layers"] == [name for name in space.layers if name in order[:len(r["float_layers"])]]
    tried = [t["float_layers"] for t in r["tried"]]
    assert tried[0] == [] and len(tried) >= 2  # all INT8 first, then the variants, smallest first
    assert [len(t) for t in tried] == sorted(len(t) for t in tried)
    assert r["chosen_drop_pts"] < r["int8_drop_pts"]
    if r["met"]:  # the tuner stopped at the first variant within the budget
        assert tried[-1] == r["float_layers"] and not any(t["within_budget"] for t in r["tried"][:-1])
    else:  # none met it: the most accurate one is kept, with the numbers
        assert r["chosen_val_score"] == max(t["val_score"] for t in r["tried"])
    assert set(r["latency"]["p50_ms"]) == {"fp32", "int8", "chosen"}
    text = "\n".join(accuracy_budget_lines({"int8": {"accuracy_budget": r}}))
    assert "INT8 accuracy budget" in text and "Latency cost of the fallback" in text
    assert all(name in text for name in r["float_layers"])


def test_image_task_exports_the_chosen_model(case, tmp_path):
    """The task hook returns the QAT model leaving the chosen layers float; its export runs float kernels
    there and matches that model (the parity check's reference)."""
    from edgekd.quantize import export_int8_onnx, optimized_op_types
    from edgekd import backends
    from edgekd.tasks.image import ImageClassification

    ctx = SimpleNamespace(
        data=SimpleNamespace(x_val=case.x_val, y_val=case.y_val), io=SimpleNamespace(input_shape=SHAPE),
        recipe=SimpleNamespace(export=SimpleNamespace(opset=17), quantize=SimpleNamespace(max_accuracy_drop=0.01)),
        extra={"reduce_range": True}, target=SimpleNamespace(runtime="onnxruntime", threads=1), log=lambda *_: None)
    model, r = ImageClassification()._fit_budget(ctx, case.q, case.folder, case.calib)
    export_int8_onnx(model, tmp_path / "int8.onnx", input_shape=SHAPE, opset=17, calib_x=case.calib, reduce_range=True)
    out = backends.load(tmp_path / "int8.onnx")(case.x_val)
    assert float((out.argmax(1) == case.y_val).mean()) == pytest.approx(r["chosen_val_score"])
    with torch.no_grad():
        ref = model(torch.from_numpy(case.x_val)).numpy()
    assert float((out.argmax(1) == ref.argmax(1)).mean()) >= 0.99
    ops = optimized_op_types(tmp_path / "int8.onnx")
    assert ops.get("Conv", 0) + ops.get("FusedConv", 0) + ops.get("Gemm", 0) + ops.get("FusedGemm", 0) >= 1


def test_unknown_float_layer_is_one_line(case):
    from edgekd.quantize import leave_float

    with pytest.raises(EdgeKDError) as e:
        leave_float(case.q, ["c9"])
    assert "c9" in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("value", ["1", "9", "x"])
def test_bad_weight_bits_is_one_line(value):
    from edgekd.recipe import apply_overrides, load_recipe

    with pytest.raises(RecipeError) as e:
        apply_overrides(load_recipe(), [f"quantize.weight_bits={value}"])
    assert "quantize.weight_bits" in str(e.value) and "\n" not in str(e.value)


def test_weight_bits_refused_for_text_students():
    from pathlib import Path

    from edgekd.recipe import apply_overrides, load_recipe

    recipe = load_recipe(Path(__file__).resolve().parent.parent / "examples" / "minilm-embed" / "edgekd.toml")
    with pytest.raises(RecipeError, match="weight_bits must be 8"):
        apply_overrides(recipe, ["quantize.weight_bits=4"])


def test_four_bit_weights_are_exported_on_their_grid(case, tmp_path):
    """weight_bits=4: every exported weight integer is in [-7, 7], stored INT8, and onnxruntime's integer
    kernels agree with the fake-quant model."""
    import onnx
    from onnx import numpy_helper

    from edgekd.quantize import calibrate, export_int8_onnx, prepare_qat, qat_eval_mode
    from edgekd import backends

    q = prepare_qat(Tiny().eval(), input_shape=SHAPE, reduce_range=False, weight_bits=4)
    calibrate(q, case.calib)
    qat_eval_mode(q)
    export_int8_onnx(q, tmp_path / "w4.onnx", input_shape=SHAPE, opset=17, calib_x=case.calib, reduce_range=False)
    ints = [numpy_helper.to_array(i) for i in onnx.load(str(tmp_path / "w4.onnx")).graph.initializer
            if i.data_type == onnx.TensorProto.INT8]
    assert len(ints) == 4 and max(int(abs(w).max()) for w in ints) == 7
    out = backends.load(tmp_path / "w4.onnx")(case.x_val)
    with torch.no_grad():
        ref = q(torch.from_numpy(case.x_val)).numpy()
    assert float((out.argmax(1) == ref.argmax(1)).mean()) >= 0.99


def test_text_linears_left_float_run_float_matmuls(tmp_path):
    """Text students: linear_layers names the fake-quant Linears the exported graph runs; quantize_onnx(
    float_layers=) leaves their MatMuls float (onnxruntime's nodes_to_exclude) and matches the reference
    leave_linears_float builds."""
    pytest.importorskip("transformers")
    from transformers import BertConfig, BertModel

    from edgekd.export import export_text_onnx
    from edgekd.quantize import (fake_quant_linears, leave_linears_float, linear_layers, optimized_op_types,
                                 quantize_onnx, set_observe, strip_fake_quant)
    from edgekd import backends

    class Pooled(nn.Module):
        def __init__(self):
            super().__init__()
            cfg = BertConfig(vocab_size=8000, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                             intermediate_size=64, max_position_embeddings=32)
            self.bert = BertModel(cfg, add_pooling_layer=False)
            self.proj = nn.Linear(32, 16)

        def forward(self, ids, mask):
            h = self.bert(input_ids=ids, attention_mask=mask).last_hidden_state  # (B, S, H)
            return self.proj(h[:, 0])  # (B, 16)

    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    feeds = [{"input_ids": rng.integers(1, 8000, (1, n)).astype(np.int64), "attention_mask": np.ones((1, n), np.int64)}
             for n in rng.integers(4, 16, 30)]
    q = fake_quant_linears(Pooled().eval(), reduce_range=False).eval()
    set_observe(q, True)
    with torch.no_grad():
        for f in feeds:
            q(torch.from_numpy(f["input_ids"]), torch.from_numpy(f["attention_mask"]))
    set_observe(q, False)
    export_text_onnx(strip_fake_quant(q), tmp_path / "f.onnx", opset=17, output="embedding")
    layers = linear_layers(tmp_path / "f.onnx", q)
    assert len(layers) == 7 and "proj" in layers  # q, k, v, attention output, two FFN linears, projection
    keep_float = ["proj", next(n for n in layers if n.endswith("intermediate.dense"))]
    info = quantize_onnx(tmp_path / "f.onnx", tmp_path / "q.onnx", feeds, reduce_range=False, linear_only=True,
                         qat_model=q, float_layers=keep_float)
    assert info["float_layers"] == keep_float
    ops = optimized_op_types(tmp_path / "q.onnx")
    assert ops.get("MatMulIntegerToFloat", 0) + ops.get("DynamicQuantizeMatMul", 0) == 5
    ref_model = leave_linears_float(q, keep_float)
    run = backends.load(tmp_path / "q.onnx")
    with torch.no_grad():
        ref = np.concatenate([ref_model(torch.from_numpy(f["input_ids"]), torch.from_numpy(f["attention_mask"])).numpy()
                              for f in feeds])
    out = np.concatenate([run(f) for f in feeds])
    cos = (out * ref).sum(1) / np.linalg.norm(out, axis=1) / np.linalg.norm(ref, axis=1)
    assert cos.mean() > 0.999
    with pytest.raises(EdgeKDError, match="no quantized layer"):
        quantize_onnx(tmp_path / "f.onnx", tmp_path / "x.onnx", feeds, reduce_range=False, linear_only=True,
                      qat_model=q, float_layers=["nope"])
