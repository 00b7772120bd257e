"""What only the mobile-int8-executorch target has: its profile, and XNNPACK delegate coverage of .pte
exports (FP32 and PT2E INT8). Skipped without ExecuTorch."""
import importlib.util

import pytest

from edgekd.errors import InputError
from edgekd import backends
from edgekd.targets import load_target

needs_executorch = pytest.mark.skipif(importlib.util.find_spec("executorch") is None,
                                      reason="ExecuTorch not installed (pip install 'edgekd[executorch]')")


def test_target_and_file_mapping():
    t = load_target("mobile-int8-executorch")
    assert (t.runtime, t.format, t.precision, t.threads, t.threads_sweep, t.pin_cores) == \
        ("executorch", "pte", "int8", 1, [2], True)
    assert "host timings" in t.description
    assert backends.for_file("build/student-int8.pte").runtime == "executorch" and "executorch" in backends.runtime_names()
    assert load_target("mobile-xnnpack-int8") == t  # the earlier name stays accepted


@pytest.fixture(scope="module")
def ptes(digits, tmp_path_factory):
    from edgekd.backends.executorch_pte import export_pte

    s, model, _ = digits
    d = tmp_path_factory.mktemp("pte")
    cov = {"fp32": export_pte(model, d / "student-fp32.pte", s.input_shape, int8=False, calib_x=None),
           "int8": export_pte(model, d / "student-int8.pte", s.input_shape, int8=True, calib_x=s.x_train[:256])}
    return d, cov


def _check_coverage(cov):
    assert cov["backends"] == ["XnnpackBackend"] and cov["delegated_subgraphs"] >= 1
    assert cov["delegated_ops"] > 0 and 0 < cov["delegated_share"] <= 1
    assert cov["delegated_ops"] == sum(v["delegated"] for v in cov["by_op"].values())
    assert cov["portable_ops"] == sum(v["portable"] for v in cov["by_op"].values())
    assert cov["by_op"]["aten_convolution_default"]["delegated"] == 3  # every convolution runs in XNNPACK


@needs_executorch
@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_every_convolution_runs_in_xnnpack(ptes, precision):
    """Parity, size and the fresh-process benchmark of .pte files: tests/test_torch_formats.py."""
    _, cov = ptes
    _check_coverage(cov[precision])
    if precision == "int8":
        assert any(op.startswith("quantized_decomposed_quantize") for op in cov["int8"]["by_op"])


@needs_executorch
def test_bad_pte_is_an_input_error(tmp_path):
    p = tmp_path / "broken.pte"
    p.write_bytes(b"not a flatbuffer program" * 4)
    with pytest.raises(InputError, match="ExecuTorch cannot load"):
        backends.load(p, threads=1)
