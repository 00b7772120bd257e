import math
import subprocess
import sys

import numpy as np
import pytest
import torch

from edgekd import backends
from edgekd.errors import ParityError, RecipeError, TargetError
from edgekd.export import check_parity, export_onnx
from edgekd.models import architecture_names, build_arch as _build_arch, count_params
from edgekd.quantize import fold_batchnorm
from edgekd.registry import Registry
from edgekd.targets import load_target, override_target, target_names


def build_arch(name):
    return _build_arch(name, in_channels=1, num_classes=10)


def test_import_is_light():
    code = ("import sys, edgekd, edgekd.backends, edgekd.runtime, edgekd.recipe, edgekd.targets, edgekd.tasks, edgekd.data, edgekd.models; "
            "edgekd.tasks.get('image-classification'); edgekd.recipe.Recipe(); "
            "print('torch' in sys.modules, 'onnxruntime' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["False", "False"]


def test_registry_suggests_closest():
    reg = Registry("exporter")
    for n in ("onnx", "openvino", "ort"):
        reg.register(n)(object())
    with pytest.raises(Exception, match=r"exporter 'onx' is unknown; did you mean 'onnx'\? \(onnx, openvino, ort\)"):
        reg.get("onx")


@pytest.mark.parametrize("name", target_names())
def test_every_target_loads(name):
    t = load_target(name)
    assert t.runtime in backends.runtime_names() and t.batch_sizes[0] == 1 and t.iterations >= 10


def test_target_errors():
    with pytest.raises(TargetError, match="did you mean 'cpu-int8'"):
        load_target("cpu-int".replace("int", "imt8"))
    with pytest.raises(TargetError, match="target.iterations must be an integer"):
        override_target(load_target("cpu-int8"), ["target.iterations=many"])
    with pytest.raises(TargetError, match="did you mean 'threads'"):
        override_target(load_target("cpu-int8"), ["target.thread=2"])


@pytest.mark.parametrize("name", architecture_names())
def test_architectures_build_and_fold(name):
    m = build_arch(name).eval()
    x = torch.randn(4, 1, 28, 28)
    with torch.no_grad():
        for mod in m.modules():  # non-trivial BN statistics so folding is really exercised
            if isinstance(mod, torch.nn.BatchNorm2d):
                mod.running_mean.uniform_(-0.5, 0.5)
                mod.running_var.uniform_(0.5, 2.0)
        y = m(x)
        folded = fold_batchnorm(m, input_shape=(1, 28, 28))
        assert not any(isinstance(mod, torch.nn.BatchNorm2d) for mod in folded.modules())
        assert torch.allclose(folded(x), y, atol=1e-5)
    assert y.shape == (4, 10)


def test_student_is_10_to_50x_smaller_than_teacher():
    ratio = count_params(build_arch("mnist-teacher")) / count_params(build_arch("mnist-student"))
    assert 10 <= ratio <= 50
    assert 0.5e6 <= count_params(build_arch("mnist-teacher")) <= 2e6


def test_parity_check_fails_on_a_perturbed_model(tmp_path):
    """A deliberately damaged export must fail the check, with the model's name and the numbers."""
    import onnx
    from onnx import numpy_helper

    from edgekd.backends.onnxruntime_onnx import load as onnxruntime_runner

    torch.manual_seed(0)
    m = build_arch("mnist-student-tiny").eval()
    p = tmp_path / "s.onnx"
    export_onnx(m, p, (1, 28, 28), opset=17)
    x = np.random.default_rng(1).standard_normal((64, 1, 28, 28)).astype(np.float32)
    with torch.no_grad():
        ref = m(torch.from_numpy(x)).numpy()
    ok = check_parity("s.onnx", onnxruntime_runner(str(p))(x), ref, min_agreement=0.99, max_abs_diff=1e-3)
    assert ok.agreement == 1.0 and ok.max_abs_diff < 1e-3
    model = onnx.load(str(p))
    for init in model.graph.initializer:
        a = numpy_helper.to_array(init)
        if a.ndim == 2:  # the classifier weight
            init.CopyFrom(numpy_helper.from_array(a + np.random.default_rng(2).standard_normal(a.shape).astype(np.float32), init.name))
    onnx.save(model, str(tmp_path / "bad.onnx"))
    with pytest.raises(ParityError, match=r"'bad.onnx' does not match .* top-1 agreement 0\.\d+"):
        check_parity("bad.onnx", onnxruntime_runner(str(tmp_path / "bad.onnx"))(x), ref, min_agreement=0.99, max_abs_diff=1e-3)


def test_fp32_parity_bound_scales_with_the_outputs_magnitude():
    """1e-3 per unit of the largest |logit|: 0.003 off on logits near 30 passes, on logits near 1 fails."""
    from edgekd.errors import ParityError
    from edgekd.export import check_parity

    ref = np.array([[30.0, -2.0], [1.0, 28.0]], dtype=np.float32)
    assert check_parity("m", ref + 0.003, ref, min_agreement=1.0, max_abs_diff=1e-3).max_abs_diff == pytest.approx(0.003, rel=1e-3)
    small = np.array([[1.0, -0.5], [0.2, 0.9]], dtype=np.float32)
    with pytest.raises(ParityError, match="allowed 0.001"):
        check_parity("m", small + 0.003, small, min_agreement=1.0, max_abs_diff=1e-3)
