"""Every format made from the PyTorch model (edgekd.backends with source "torch": ExecuTorch .pte,
LiteRT .tflite), tested alike: FP32 and INT8 exports of a student that has learned real digits, the
INT8 file smaller and in agreement, the runner looping a fixed-batch program, the fresh-process
benchmark, and a broken file refused in one line. A backend not installed here is skipped, saying what
to install."""
import numpy as np
import pytest
import torch

from edgekd import backends
from edgekd.bench import BenchInputs, benchmark, rows_in_batches

FORMATS = [n for n in backends.names() if backends.get(n).source == "torch"]


@pytest.fixture(scope="module", params=FORMATS)
def made(request, digits, tmp_path_factory):
    b = backends.get(request.param)
    if b.missing():
        pytest.skip(b.missing())
    s, model, _ = digits
    d = tmp_path_factory.mktemp(request.param)
    paths = {p: d / f"student-{p}{b.extension}" for p in ("fp32", "int8")}
    info = {p: b.make(model, paths[p], int8=p == "int8", calib_x=s.x_train[:256] if p == "int8" else None,
                      input_shape=s.input_shape) for p in paths}
    return b, paths, info


def test_fp32_matches_torch(digits, made):
    s, _, ref = digits
    b, paths, _ = made
    run = backends.load(paths["fp32"], threads=1)
    out = run(s.x_test)  # 300 rows through a batch-1 program: the runner loops
    assert out.shape == ref.shape and out.dtype == np.float32
    assert np.abs(out - ref).max() < 1e-3 and (out.argmax(1) == ref.argmax(1)).mean() >= 0.99
    assert np.array_equal(run(s.x_test[:1]), out[:1])


def test_int8_is_smaller_and_agrees(digits, made):
    s, _, ref = digits
    b, paths, _ = made
    assert paths["int8"].stat().st_size < 0.5 * paths["fp32"].stat().st_size
    out = backends.load(paths["int8"], threads=1)(s.x_test)
    assert out.dtype == np.float32 and (out.argmax(1) == ref.argmax(1)).mean() >= 0.95


def test_int8_tflite_runs_integer_kernels(made):
    b, paths, info = made
    if b.format != "tflite":
        pytest.skip("the .pte's delegate coverage is tested in test_executorch.py")
    ops = info["int8"]["op_types"]
    weighted = {k: v for k, v in ops.items() if k.split()[0] in ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED")}
    assert weighted and all(k.endswith("INT8") for k in weighted), ops
    assert all(not k.endswith("INT8") for k in info["fp32"]["op_types"])


def test_benchmark_in_a_fresh_process(digits, made):
    s, _, _ = digits
    b, paths, _ = made
    inputs = BenchInputs(eval=rows_in_batches(s.x_test[:150]), cases={"1": {"x": s.x_test[:1]}})
    res, out = benchmark(paths["int8"], inputs=inputs, threads=1, warmup=5, iterations=50, batch_sizes=[1, 8], pin=True)
    lat = res["latency_ms"]
    assert 0 < lat["min"] <= lat["p50"] <= lat["p90"] <= lat["p99"]
    assert res["throughput_per_s"]["8"] > 0 and res["peak_rss_mb"] >= res["rss_after_import_mb"] > 10
    here = backends.load(paths["int8"], threads=1)(s.x_test[:150])
    assert out.shape == (150, 10) and np.allclose(out, here, atol=1e-5)


class _TFPadded(torch.nn.Module):
    """transformers' TF-style "SAME" padding in small: a symmetric Pad, an empty Pad whose input also
    feeds a residual add (litert-torch's layout pass stopped on that one), an asymmetric one at stride 2."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.a, self.b = torch.nn.Conv2d(1, 8, 3), torch.nn.Conv2d(8, 8, 1)
        self.c, self.fc = torch.nn.Conv2d(8, 8, 3, stride=2), torch.nn.Linear(8, 10)

    def forward(self, x):
        F = torch.nn.functional
        h = F.relu(self.a(F.pad(x, (1, 1, 1, 1))))
        h = h + F.relu(self.b(F.pad(h, (0, 0, 0, 0))))
        h = F.relu(self.c(F.pad(h, (0, 1, 0, 1))))
        return self.fc(h.mean((2, 3)))


@pytest.mark.parametrize("fmt", FORMATS)
def test_int8_of_a_tf_padded_model(fmt, digits, tmp_path):
    """The QAT model's float graph reaches the runtime's quantizer with its Pads folded into the
    convolutions (edgekd.quantize._graph._fold_pads_graph): it converts, and agrees with PyTorch."""
    from edgekd.quantize.graph_qat import calibrate, prepare_qat

    b = backends.get(fmt)
    if b.missing():
        pytest.skip(b.missing())
    s, _, _ = digits
    x = s.x_train[:64]
    model = _TFPadded().eval()
    q = prepare_qat(model, input_shape=s.input_shape, reduce_range=False)
    calibrate(q, x)
    pads = [n for n in q.float_model().graph.nodes if n.target in (torch.ops.aten.pad.default,)]
    assert len(pads) == 1 and list(pads[0].args[1]) == [0, 1, 0, 1]  # only the asymmetric one is left
    path = tmp_path / f"int8{b.extension}"
    b.make(q, path, int8=True, calib_x=x, input_shape=s.input_shape)
    with torch.no_grad():
        ref = model(torch.from_numpy(s.x_test[:100])).numpy()
    out = backends.load(path, threads=1)(s.x_test[:100])
    scale = np.abs(ref).max()
    assert out.shape == ref.shape and np.abs(out - ref).max() < 0.1 * scale


@pytest.mark.parametrize("fmt", FORMATS)
def test_missing_package_is_one_clean_line(fmt, monkeypatch, tmp_path):
    import sys

    from edgekd.errors import EdgeKDError

    b = backends.get(fmt)
    for mod in ("executorch", "litert_torch", "ai_edge_litert"):
        monkeypatch.setitem(sys.modules, mod, None)  # find_spec -> None, as when not installed
    missing = b.missing()
    assert missing.startswith(f"a {b.extension} needs") and "pip install 'edgekd[" in missing and "\n" not in missing
    with pytest.raises(EdgeKDError, match="pip install 'edgekd"):
        b.make(object(), tmp_path / f"m{b.extension}", int8=False, calib_x=None, input_shape=(1, 28, 28))
