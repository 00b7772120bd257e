import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgekd.errors import InputError
from edgekd.estimate import DEVICES, UTILISATION_ASSUMED, count_macs, estimate_latency


def _model(nodes, inputs, outputs, inits=()):
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializer=list(inits))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _w(name, shape):
    return numpy_helper.from_array(np.ones(shape, np.float32), name)


def _vi(name, shape):
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


def test_conv_macs_cout_hout_wout_cin_k2():
    # 3->16 channels, 3x3, stride 1, pad 1 on 32x32: Cout*Hout*Wout*Cin*k*k
    conv = helper.make_node("Conv", ["x", "w"], ["y"], kernel_shape=[3, 3], pads=[1, 1, 1, 1])
    m = _model([conv], [_vi("x", [1, 3, 32, 32])], [_vi("y", None)], [_w("w", [16, 3, 3, 3])])
    assert count_macs(m) == 16 * 32 * 32 * 3 * 3 * 3


def test_grouped_strided_conv_with_symbolic_batch():
    # depthwise (groups=8), stride 2 on 28x28 -> 14x14; a symbolic batch counts as 1
    conv = helper.make_node("Conv", ["x", "w"], ["y"], kernel_shape=[3, 3], pads=[1, 1, 1, 1], strides=[2, 2], group=8)
    m = _model([conv], [_vi("x", ["batch", 8, 28, 28])], [_vi("y", None)], [_w("w", [8, 1, 3, 3])])
    assert count_macs(m) == 8 * 14 * 14 * (8 // 8) * 3 * 3


def test_gemm_and_transposes():
    gemm = helper.make_node("Gemm", ["a", "b", "c"], ["y"], transB=1)  # [1,88] x [10,88]^T
    m = _model([gemm], [_vi("a", [1, 88])], [_vi("y", None)], [_w("b", [10, 88]), _w("c", [10])])
    assert count_macs(m) == 1 * 10 * 88
    gemm_t = helper.make_node("Gemm", ["a", "b"], ["y"], transA=1)  # [64,4]^T x [64,5]
    m = _model([gemm_t], [_vi("a", [64, 4])], [_vi("y", None)], [_w("b", [64, 5])])
    assert count_macs(m) == 4 * 5 * 64


def test_matmul_broadcast_and_conv_transpose():
    mm = helper.make_node("MatMul", ["a", "b"], ["y"])  # [2,4,8] x [8,5]: 2*4*5 outputs, 8 MACs each
    m = _model([mm], [_vi("a", [2, 4, 8])], [_vi("y", None)], [_w("b", [8, 5])])
    assert count_macs(m) == 2 * 4 * 5 * 8
    ct = helper.make_node("ConvTranspose", ["x", "w"], ["y"], kernel_shape=[3, 3], strides=[2, 2])
    m = _model([ct], [_vi("x", [1, 4, 5, 5])], [_vi("y", None)], [_w("w", [4, 2, 3, 3])])
    assert count_macs(m) == 4 * 5 * 5 * 2 * 3 * 3


def test_chain_uses_inferred_shapes_and_ignores_other_ops(tmp_path):
    # Conv -> Relu -> GlobalAveragePool -> Flatten -> Gemm, saved to a file: shapes between nodes
    # come from shape inference; only Conv and Gemm count.
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["r"]), helper.make_node("GlobalAveragePool", ["r"], ["p"]),
             helper.make_node("Flatten", ["p"], ["f"]), helper.make_node("Gemm", ["f", "g", "gb"], ["y"], transB=1)]
    m = _model(nodes, [_vi("x", ["N", 1, 28, 28])], [_vi("y", None)],
               [_w("w", [24, 1, 3, 3]), _w("g", [10, 24]), _w("gb", [10])])
    path = tmp_path / "m.onnx"
    path.write_bytes(m.SerializeToString())
    assert count_macs(path) == 24 * 14 * 14 * 1 * 9 + 24 * 10


def test_qdq_graph_counts_like_fp32():
    # DequantizeLinear on weights and activations is not work here (some counters count it).
    i8 = numpy_helper.from_array(np.ones((16, 3, 3, 3), np.int8), "wq")
    scale, zp = numpy_helper.from_array(np.float32(0.1), "s"), numpy_helper.from_array(np.uint8(0), "zp")
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "zp"], ["xq"]),
             helper.make_node("DequantizeLinear", ["xq", "s", "zp"], ["xd"]),
             helper.make_node("DequantizeLinear", ["wq", "s"], ["wd"]),
             helper.make_node("Conv", ["xd", "wd"], ["y"], kernel_shape=[3, 3])]
    m = _model(nodes, [_vi("x", [1, 3, 10, 10])], [_vi("y", None)], [i8, scale, zp])
    assert count_macs(m) == 16 * 8 * 8 * 3 * 9


def test_pads_computed_in_the_graph_are_folded():
    """A Pad whose pads the graph computes (torch's F.pad export: constants reshaped, transposed, sliced;
    TF-style padding in transformers' MobileNetV2) leaves onnx's inference without the Conv's output
    shape; onnxruntime's symbolic inference folds it."""
    pads = np.array([[0, 0], [0, 0], [1, 1], [1, 1]], dtype=np.int64).T  # (2, 4): begins, ends per axis
    nodes = [helper.make_node("Constant", [], ["pc"], value=numpy_helper.from_array(pads.copy(), "pc")),
             helper.make_node("Transpose", ["pc"], ["pt"], perm=[1, 0]),
             helper.make_node("Transpose", ["pt"], ["pu"], perm=[1, 0]),
             helper.make_node("Reshape", ["pu", "flat"], ["pads"]),
             helper.make_node("Pad", ["x", "pads"], ["xp"]),
             helper.make_node("Conv", ["xp", "w"], ["y"], kernel_shape=[3, 3], strides=[2, 2])]
    m = _model(nodes, [_vi("x", ["batch", 3, 9, 9])], [_vi("y", None)],
               [_w("w", [4, 3, 3, 3]), numpy_helper.from_array(np.array([8], np.int64), "flat")])
    assert count_macs(m) == 4 * 5 * 5 * 3 * 3 * 3  # 9 + 2 padded, 3x3 stride 2: 5x5


def test_non_static_shape_is_refused():
    mm = helper.make_node("MatMul", ["a", "b"], ["y"])
    m = _model([mm], [_vi("a", [1, "seq", 8])], [_vi("y", None)], [_w("b", [8, 5])])
    with pytest.raises(InputError, match="not static"):
        count_macs(m)
    assert count_macs(m, length=16) == 16 * 8 * 5  # a text model counted at 16 tokens
    with pytest.raises(InputError, match="does not exist"):
        count_macs("no/such/model.onnx")


def test_exported_student_matches_module_count(tmp_path):
    import torch

    from edgekd.export import export_onnx
    from edgekd.models import build_arch

    model = build_arch("mnist-student-tiny", in_channels=1, num_classes=10).eval()
    expected = []

    def hook(mod, inp, out):
        if isinstance(mod, torch.nn.Conv2d):
            expected.append(out.numel() * mod.weight[0].numel())
        elif isinstance(mod, torch.nn.Linear):
            expected.append(out.numel() * mod.in_features)

    handles = [mod.register_forward_hook(hook) for mod in model.modules()]
    with torch.no_grad():
        model(torch.zeros(1, 1, 28, 28))
    for h in handles:
        h.remove()
    export_onnx(model, tmp_path / "s.onnx", (1, 28, 28), opset=17)
    assert count_macs(tmp_path / "s.onnx") == sum(expected)


def test_estimate_latency_formula():
    rows = estimate_latency(10**9, precision="fp32")
    assert [r["device"] for r in rows] == list(DEVICES)
    for r in rows:
        d = DEVICES[r["device"]]
        assert r["peak_gmacs"] == pytest.approx(d["fp32_macs_per_cycle"] * d["ghz"])
        assert r["estimate_ms_at_peak"] == pytest.approx(1e3 / r["peak_gmacs"])
        assert r["estimate_ms_assumed"] == pytest.approx(r["estimate_ms_at_peak"] / UTILISATION_ASSUMED)
        assert r["utilisation_assumed"] == UTILISATION_ASSUMED and r["macs"] == 10**9 and "MACs/cycle" in r["method"]
    a76 = {r["device"]: r for r in estimate_latency(2_400_000, precision="int8", utilisation=0.5)}["Cortex-A76 @ 2.4 GHz"]
    assert a76["peak_gmacs"] == pytest.approx(32 * 2.4)  # 2 SDOT/cycle x 16 MACs
    assert a76["estimate_ms_at_peak"] == pytest.approx(2.4e6 / 76.8e9 * 1e3)
    assert a76["estimate_ms_assumed"] == pytest.approx(2 * a76["estimate_ms_at_peak"])
    # INT8 dot product is 4x the FP32 FMA rate on every listed core
    for f, i in zip(estimate_latency(10**6, precision="fp32"), estimate_latency(10**6, precision="int8")):
        assert f["estimate_ms_at_peak"] == pytest.approx(4 * i["estimate_ms_at_peak"])
    with pytest.raises(ValueError):
        estimate_latency(1, precision="fp16")
    with pytest.raises(ValueError):
        estimate_latency(1, precision="int8", utilisation=0)


def test_a_text_model_on_a_mobile_target_is_estimated_at_a_stated_length(tmp_path):
    """A text model's sequence length is symbolic: the mobile targets' device estimates count it at 128
    tokens and say so (they stopped text builds before)."""
    import onnx

    from edgekd.backends._mobile import TEXT_TOKENS, device_estimates
    from edgekd.targets import load_target

    mm = helper.make_node("MatMul", ["a", "b"], ["y"])
    onnx.save(_model([mm], [_vi("a", ["batch", "sequence", 8])], [_vi("y", None)], [_w("b", [8, 5])]),
              str(tmp_path / "student-fp32.onnx"))
    est = device_estimates(tmp_path, load_target("mobile-int8"))["device_estimates"]
    assert est["macs"] == TEXT_TOKENS * 8 * 5 and est["per"] == f"text of {TEXT_TOKENS} tokens"
