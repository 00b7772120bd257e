"""edgekd.payoff: the layer kinds a student has are each tried float on the runtime, the chosen float
layers are a subset of the INT8 layers of the kinds kept float, and the models it writes run. Which kind
wins is a timing on this machine, measured in benchmarks (not asserted here)."""
import numpy as np
import torch
import torch.nn as nn

from edgekd.export import export_onnx
from edgekd.payoff import choose_float_kinds
from edgekd.quantize import QuantizeSpec, calibrate, export_int8_onnx, int8_layers, leave_float, prepare


class DepthwiseNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(1, 16, 3, padding=1)
        self.dw = nn.Conv2d(16, 16, 3, padding=1, groups=16)
        self.pw = nn.Conv2d(16, 32, 1)
        self.head = nn.Linear(32, 10)

    def forward(self, x):
        x = torch.relu(self.pw(torch.relu(self.dw(torch.relu(self.stem(x))))))
        return self.head(x.mean((2, 3)))


def test_every_kind_is_tried_and_the_choice_runs(tmp_path):
    torch.manual_seed(0)
    x = np.random.default_rng(0).standard_normal((32, 1, 16, 16)).astype(np.float32)
    model = DepthwiseNet().eval()
    q = prepare(model, QuantizeSpec(reduce_range=False), input_shape=(1, 16, 16))
    calibrate(q, x)
    export_onnx(model, tmp_path / "fp32.onnx", (1, 16, 16), opset=17)
    layers = int8_layers(q)
    assert sorted(layers.values()) == ["Conv2d", "Conv2d", "Conv2d depthwise", "Linear"]

    def write(float_layers, path):
        export_int8_onnx(leave_float(q, float_layers), path, input_shape=(1, 16, 16), opset=17, calib_x=x,
                         reduce_range=False)

    lines = []
    r = choose_float_kinds(layers, write, tmp_path / "fp32.onnx", runtime="onnxruntime", threads=1, x=x,
                           folder=tmp_path / "trials", log=lines.append)
    tried = {kind for k in r["tried"] for kind in k.removesuffix(" float").split(" + ")}
    # every kind is tried float (alone or with the kinds kept float so far), except one that would leave
    # every layer float: that is the FP32 student
    assert tried <= {"conv", "depthwise", "linear"} and len(tried) >= 2
    assert set(r["float_kinds"]) <= {"conv", "depthwise", "linear"} and len(r["float_kinds"]) < 3
    assert set(r["float_layers"]) == {n for n, k in layers.items() if
                                      {"Conv2d": "conv", "Conv2d depthwise": "depthwise", "Linear": "linear"}[k]
                                      in r["float_kinds"]}
    assert r["p50_ms"]["chosen"] > 0 and r["int8_vs_fp32"] == r["p50_ms"]["fp32"] / r["p50_ms"]["chosen"]
    assert r["ship_fp32"] == (r["p50_ms"]["chosen"] > 1.03 * r["p50_ms"]["fp32"])
    assert len(lines) == 1 and "vs FP32" in lines[0]


def test_an_int8_model_slower_than_fp32_is_not_shipped(tmp_path):
    """Every INT8 candidate written here carries 30 extra convolutions, so none can beat the FP32 model:
    the search says to ship the FP32 student, and its log line says why."""
    import onnx
    from onnx import helper, numpy_helper

    torch.manual_seed(0)
    x = np.random.default_rng(0).standard_normal((8, 1, 16, 16)).astype(np.float32)
    model = DepthwiseNet().eval()
    q = prepare(model, QuantizeSpec(reduce_range=False), input_shape=(1, 16, 16))
    calibrate(q, x)
    export_onnx(model, tmp_path / "fp32.onnx", (1, 16, 16), opset=17)

    def write(float_layers, path):
        m = onnx.load(str(tmp_path / "fp32.onnx"))
        g, w = m.graph, np.random.default_rng(1).standard_normal((1, 1, 3, 3)).astype(np.float32)
        g.initializer.append(numpy_helper.from_array(w, "slow_w"))
        src = g.input[0].name
        for i in range(30):  # a float chain on the side, feeding nothing the output needs but kept alive
            g.node.append(helper.make_node("Conv", [src if i == 0 else f"slow{i - 1}", "slow_w"], [f"slow{i}"], pads=[1] * 4))
        g.output.append(helper.make_tensor_value_info("slow29", onnx.TensorProto.FLOAT, None))
        onnx.save(m, str(path))

    lines = []
    r = choose_float_kinds(int8_layers(q), write, tmp_path / "fp32.onnx", runtime="onnxruntime", threads=1, x=x,
                           folder=tmp_path / "trials", log=lines.append)
    assert r["ship_fp32"] and r["int8_vs_fp32"] < 1
    assert "ships the FP32 student" in lines[0]


class Mlp(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(32, 64), nn.Linear(64, 8)

    def forward(self, x):
        return self.b(torch.relu(self.a(x)))


def test_activation_schemes_are_both_measured_and_each_writes_its_ops(tmp_path):
    """Static QDQ and dynamic MatMulInteger graphs of the same linears are timed per case and scored per
    item; the choice follows the rule (beyond 2 SE and 0.1 point: more faithful; within: faster; else the
    more faithful)."""
    import onnx

    from edgekd.payoff import choose_activations
    from edgekd.quantize import fake_quant_linears, quantize_onnx

    torch.manual_seed(0)
    model = Mlp().eval()
    x = np.random.default_rng(0).standard_normal((64, 32)).astype(np.float32)
    export_onnx(model, tmp_path / "fp32.onnx", (32,), opset=17)
    q = fake_quant_linears(Mlp().eval(), reduce_range=False)
    q.load_state_dict({k: v for k, v in model.state_dict().items()}, strict=False)
    ref = model(torch.from_numpy(x)).detach().numpy()
    ops = {}

    def write(scheme, path):
        quantize_onnx(tmp_path / "fp32.onnx", path, x, reduce_range=False, linear_only=True, activations=scheme)
        ops[scheme] = {n.op_type for n in onnx.load(str(path)).graph.node}

    lines = []
    r = choose_activations(write, runtime="onnxruntime", threads=1, folder=tmp_path / "act",
                           cases={"1": {"input": x[:1]}, "8": {"input": x[:8]}}, val_feeds=[x[i:i + 1] for i in range(64)],
                           item_scores=lambda out: -np.abs(out - ref).mean(1), log=lines.append)
    assert "QuantizeLinear" in ops["static"] and "MatMulInteger" in ops["dynamic"]
    c = r["candidates"]
    assert set(c) == {"static", "dynamic"} and set(c["static"]["p50_ms"]) == {"1", "8"}
    best, other = r["most_faithful"], ({"static", "dynamic"} - {r["most_faithful"]}).pop()
    assert c[best]["quality"] >= c[other]["quality"]
    gap, margin, speed = r["quality_gap"][other], r["quality_margin"][other], r["speedup_vs_most_faithful"][other]
    assert margin >= 1e-3 and r["chosen"] == (other if gap <= margin and speed > 1.03 else best)
    assert lines and r["chosen"] in lines[0]


def test_openvino_measures_nncf_beside_static_and_dynamic(tmp_path):
    """On OpenVINO the candidates include NNCF's post-training pipeline, written as QDQ ONNX that the
    runtime converts; the chosen scheme is the most faithful unless an as-faithful one is faster."""
    import onnx

    from edgekd.payoff import choose_activations
    from edgekd.quantize import fake_quant_linears, quantize_onnx

    torch.manual_seed(0)
    model = Mlp().eval()
    x = np.random.default_rng(0).standard_normal((64, 32)).astype(np.float32)
    export_onnx(model, tmp_path / "fp32.onnx", (32,), opset=17)
    q = fake_quant_linears(Mlp().eval(), reduce_range=False)
    q.load_state_dict(model.state_dict(), strict=False)
    ref = model(torch.from_numpy(x)).detach().numpy()
    feeds = [{"input": x[i:i + 1]} for i in range(64)]
    ops = {}

    def write(scheme, path):
        quantize_onnx(tmp_path / "fp32.onnx", path, feeds[:16], reduce_range=False, linear_only=True, activations=scheme)
        ops[scheme] = [n.op_type for n in onnx.load(str(path)).graph.node]

    r = choose_activations(write, runtime="openvino", threads=1, folder=tmp_path / "act", cases={"1": feeds[0]},
                           val_feeds=feeds, item_scores=lambda out: -np.abs(out - ref).mean(1),
                           schemes=("static", "dynamic", "nncf"))
    assert ops["nncf"].count("QuantizeLinear") >= 2, ops["nncf"]
    assert set(r["candidates"]) == {"static", "dynamic", "nncf"} and not r["failed"]
    best = r["most_faithful"]
    assert all(r["candidates"][best]["quality"] >= v["quality"] for v in r["candidates"].values())
    close = {k for k in r["candidates"] if k != best and r["quality_gap"][k] <= r["quality_margin"][k]
             and r["speedup_vs_most_faithful"][k] > 1.03}
    assert r["chosen"] == (max(close, key=r["speedup_vs_most_faithful"].get) if close else best)


def test_dynamic_activations_are_refused_for_image_students(tmp_path):
    import pytest

    from edgekd.errors import EdgeKDError
    from edgekd.quantize import quantize_onnx

    with pytest.raises(EdgeKDError, match="dynamic"):
        quantize_onnx(tmp_path / "none.onnx", tmp_path / "out.onnx", None, reduce_range=False, activations="dynamic")
