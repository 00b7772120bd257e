"""The mobile-int8-executorch target's pieces: .pte export (FP32 and PT2E INT8) with XNNPACK delegate
coverage, the `executorch` runner, and the fresh-process benchmark. Skipped without ExecuTorch."""
import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

from edgekd.errors import EdgeKDError, InputError
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


def test_missing_executorch_is_one_clean_line(monkeypatch, tmp_path):
    from edgekd.backends.executorch_pte import export_pte

    monkeypatch.setitem(sys.modules, "executorch", None)  # find_spec -> None, as when not installed
    with pytest.raises(EdgeKDError, match=r"^a .pte needs ExecuTorch: "
                                          r"pip install 'edgekd\[executorch\]'$"):
        export_pte(object(), tmp_path / "m.pte", (1, 28, 28), int8=False, calib_x=None)


@pytest.fixture(scope="module")
def digits():
    """Real MNIST digits (normalized) and a tiny student trained on them for a few seconds, so that
    top-1 agreement is measured on a model that has learned something."""
    import torch

    from edgekd.data import load_data
    from edgekd.models import build_arch
    from edgekd.recipe import DataSpec

    s = load_data(DataSpec(n_train=1200, n_val=100, n_test=300), seed=0, base=".")
    torch.manual_seed(0)
    model = build_arch("mnist-student-tiny", in_channels=1, num_classes=10)
    opt = torch.optim.Adam(model.parameters(), 3e-3)
    x, y = torch.from_numpy(s.x_train), torch.from_numpy(s.y_train)
    model.train()
    for _ in range(3):
        for i in range(0, len(x), 64):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(x[i:i + 64]), y[i:i + 64]).backward()
            opt.step()
    model.eval()
    with torch.no_grad():
        ref = model(torch.from_numpy(s.x_test)).numpy()
    return s, model, ref


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
def test_fp32_pte_matches_torch(digits, ptes):
    s, _, ref = digits
    d, cov = ptes
    _check_coverage(cov["fp32"])
    run = backends.load(d / "student-fp32.pte", threads=1)
    out = run(s.x_test)  # a batch of 300 through a batch-1 program: the runner loops over rows
    assert out.shape == ref.shape and out.dtype == np.float32
    assert np.abs(out - ref).max() < 1e-3 and (out.argmax(1) == ref.argmax(1)).mean() >= 0.99
    assert np.array_equal(run(s.x_test[:1]), out[:1])


@needs_executorch
def test_int8_pte_is_quantized_and_agrees(digits, ptes):
    s, _, ref = digits
    d, cov = ptes
    _check_coverage(cov["int8"])
    assert any(op.startswith("quantized_decomposed_quantize") for op in cov["int8"]["by_op"])
    assert (d / "student-int8.pte").stat().st_size < 0.5 * (d / "student-fp32.pte").stat().st_size
    out = backends.load(d / "student-int8.pte", threads=1)(s.x_test)
    assert (ref.argmax(1) == s.y_test).mean() > 0.5  # the reference has learned digits (chance: 0.1)
    assert (out.argmax(1) == ref.argmax(1)).mean() >= 0.95


@needs_executorch
def test_benchmark_runs_pte_in_a_fresh_process(digits, ptes, tmp_path):
    from edgekd.bench import BenchInputs, benchmark, rows_in_batches

    s, _, _ = digits
    d, _ = ptes
    inputs = BenchInputs(eval=rows_in_batches(s.x_test[:150]), cases={"1": {"x": s.x_test[:1]}})
    res, out = benchmark(d / "student-int8.pte", inputs=inputs, threads=1, warmup=5, iterations=50,
                         batch_sizes=[1, 8], pin=True)
    lat = res["latency_ms"]
    assert 0 < lat["min"] <= lat["p50"] <= lat["p90"] <= lat["p99"]
    assert len(res["latency_percentiles_ms"]) == 101 and res["pinned_cores"] and res["throughput_per_s"]["8"] > 0
    assert res["peak_rss_mb"] >= res["rss_after_import_mb"] > 10
    here = backends.load(d / "student-int8.pte", threads=1)(s.x_test[:150])
    assert out.shape == (150, 10) and np.allclose(out, here, atol=1e-5)


@needs_executorch
def test_bad_pte_is_an_input_error(tmp_path):
    p = tmp_path / "broken.pte"
    p.write_bytes(b"not a flatbuffer program" * 4)
    with pytest.raises(InputError, match="ExecuTorch cannot load"):
        backends.load(p, threads=1)
