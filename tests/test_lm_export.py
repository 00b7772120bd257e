"""Export, weight-only quantization and parity of causal LMs (edgekd.export_lm) on tiny random-weight
Llama- and Qwen2-class models: the folders load with optimum and transformers alone, every weight of
the INT4/INT8 graphs is quantized (the tied LM head and the embedding table included), and a folder that
does not reproduce its model is refused."""

from __future__ import annotations

import shutil
from pathlib import Path

import lm_tiny
import pytest

from edgekd.errors import InputError, ParityError, RecipeError
from edgekd.export_lm import check_parity, export_causal_lm, quantize_weights

pytest.importorskip("optimum.onnxruntime")

PROMPTS = [code for code, _ in lm_tiny.CORPUS[:3]]
NEW_TOKENS = 8
BLOCK = 32  # divides the tiny models' hidden size (64) and MLP width (128)


@pytest.fixture(scope="module", params=lm_tiny.FAMILIES)
def lm(request, tmp_path_factory):
    """(family, model, tokenizer) of a tiny random-weight causal LM."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = lm_tiny.tiny_lm(tmp_path_factory.mktemp(f"hf-{request.param}"), request.param)
    return request.param, AutoModelForCausalLM.from_pretrained(folder).eval(), AutoTokenizer.from_pretrained(folder)


@pytest.fixture(scope="module")
def fp32(lm, tmp_path_factory):
    """The FP32 folder and its meta. The tokenizer saves a GGUF copy as 'tokenizer.model', as one read
    from a GGUF file does (the real teacher): the export must drop it."""
    family, model, tok = lm
    folder = tmp_path_factory.mktemp(f"fp32-{family}")
    save = tok.save_pretrained

    def save_with_gguf(path, *args, **kwargs):
        (Path(path) / "tokenizer.model").write_bytes(b"GGUF" + bytes(64))
        return save(path, *args, **kwargs)

    tok.save_pretrained = save_with_gguf
    try:
        return folder, export_causal_lm(model, tok, folder)
    finally:
        del tok.save_pretrained


@pytest.fixture(scope="module")
def int4(lm, fp32, tmp_path_factory):
    folder = tmp_path_factory.mktemp(f"int4-{lm[0]}")
    return folder, quantize_weights(fp32[0], folder, bits=4, block_size=BLOCK)


def _graph(folder):
    import onnx

    return onnx.load(str(folder / "model.onnx")).graph


def _weight_matmuls(graph) -> list[str]:
    """MatMul nodes whose second input is a constant: an initializer, or a Transpose of one."""
    inits = {i.name for i in graph.initializer}
    made = {o: n for n in graph.node for o in n.output}
    return [n.name for n in graph.node if n.op_type == "MatMul" and (
        n.input[1] in inits or (n.input[1] in made and made[n.input[1]].op_type == "Transpose"
                                and made[n.input[1]].input[0] in inits))]


def _attr(node, name):
    return next(a.i for a in node.attribute if a.name == name)


def test_fp32_folder_reproduces_pytorch(lm, fp32):
    _, model, tok = lm
    folder, meta = fp32
    layers = model.config.num_hidden_layers
    assert meta["inputs"] == ["input_ids", "attention_mask", "position_ids"]
    assert meta["n_inputs"] == 3 + 2 * layers and meta["outputs"] == ["logits"]
    assert {"config.json", "generation_config.json", "tokenizer.json", "model.onnx"} <= set(meta["files"])
    assert meta["removed_files"] == ["tokenizer.model"] and not (folder / "tokenizer.model").exists()
    assert meta["dedup"]["size_after"] == meta["size_bytes"] == (folder / "model.onnx").stat().st_size
    parity = check_parity(model, tok, folder, PROMPTS, new_tokens=NEW_TOKENS, quantized=False)
    assert parity["max_abs_diff"] <= 1e-3 and parity["greedy_exact"] == len(PROMPTS)
    assert parity["pipeline_text"]


def test_attention_is_one_node_per_layer(lm, fp32, int4):
    """Each layer's attention subgraph became one GroupQueryAttention node, in the FP32 folder and the
    INT4 graph quantized from it; the projections stay plain MatMuls for the quantizer."""
    _, model, _ = lm
    layers = model.config.num_hidden_layers
    assert fp32[1]["attention"] == {"fused": layers, "op": "com.microsoft.GroupQueryAttention"}
    for folder in (fp32[0], int4[0]):
        ops = [n.op_type for n in _graph(folder).node]
        assert ops.count("GroupQueryAttention") == layers and "Softmax" not in ops


def _padded_logits(folder, batch, mask):
    """Logits of `folder` on a left-padded batch (B, T) with optimum's position ids, then of one more
    token per row on the returned cache: ((B, T, V), (B, 1, V))."""
    import numpy as np
    import onnxruntime as ort

    sess = ort.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
    past = [i.name for i in sess.get_inputs() if i.name.startswith("past_key_values.")]
    shape = next(i.shape for i in sess.get_inputs() if i.name == past[0])
    feed = {n: np.zeros((len(batch), shape[1], 0, shape[3]), np.float32) for n in past}
    pos = np.maximum(mask.cumsum(-1) - 1, 0)  # optimum's position_ids of a left-padded batch
    out = sess.run(None, {"input_ids": batch, "attention_mask": mask, "position_ids": pos, **feed})
    nxt = out[0][:, -1].argmax(-1)[:, None]  # (B, 1)
    feed = {n.replace("present.", "past_key_values."): v for n, v in
            zip([o.name for o in sess.get_outputs()][1:], out[1:])}
    mask2 = np.concatenate([mask, np.ones_like(nxt)], -1)
    step = sess.run(None, {"input_ids": nxt, "attention_mask": mask2, "position_ids": pos[:, -1:] + 1, **feed})
    return out[0], step[0]


def test_fused_attention_equals_optimums_graph_on_a_padded_batch(lm, fp32, tmp_path):
    """The fused graph and optimum's own agree on every attended position of a left-padded batch and on
    the next step from its cache: padding, positions and the cache append keep their meaning."""
    import numpy as np

    _, model, tok = lm
    plain = export_causal_lm(model, tok, tmp_path / "plain", fuse=False)
    assert plain["attention"]["fused"] == 0
    rows = [tok(p)["input_ids"] for p in PROMPTS[:2]]
    width = max(map(len, rows))
    batch = np.array([[tok.pad_token_id] * (width - len(r)) + r for r in rows], np.int64)
    mask = np.array([[0] * (width - len(r)) + [1] * len(r) for r in rows], np.int64)
    assert mask.min() == 0  # the prompts differ in length: one row is padded
    (a, a_step), (b, b_step) = _padded_logits(fp32[0], batch, mask), _padded_logits(tmp_path / "plain", batch, mask)
    keep = mask.astype(bool)
    assert np.abs(a[keep] - b[keep]).max() < 1e-4 and np.abs(a_step - b_step).max() < 1e-4


@pytest.mark.parametrize("rope", [{"rope_type": "linear", "factor": 2.0},
                                  {"rope_type": "yarn", "factor": 2.0, "original_max_position_embeddings": 128}])
def test_fused_attention_reads_scaled_rotary_embeddings(lm, tmp_path, rope):
    """Rotary scaling (linear positions; YaRN's frequencies and attention factor) is the model's own in
    the fused graph: the same logits as optimum's graph."""
    import numpy as np
    from transformers import AutoConfig, AutoModelForCausalLM

    _, _, tok = lm
    config = AutoConfig.for_model("llama", vocab_size=len(tok), hidden_size=64, intermediate_size=128,
                                  num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                  max_position_embeddings=256, rope_scaling=rope)
    model = AutoModelForCausalLM.from_config(config).eval()
    fused = export_causal_lm(model, tok, tmp_path / "fused")
    export_causal_lm(model, tok, tmp_path / "plain", fuse=False)
    assert fused["attention"]["fused"] == 2
    rows = [tok(p)["input_ids"] for p in PROMPTS[:2]]
    width = max(map(len, rows))
    batch = np.array([[tok.pad_token_id] * (width - len(r)) + r for r in rows], np.int64)
    mask = np.array([[0] * (width - len(r)) + [1] * len(r) for r in rows], np.int64)
    (a, a_step), (b, b_step) = (_padded_logits(tmp_path / k, batch, mask) for k in ("fused", "plain"))
    keep = mask.astype(bool)
    assert np.abs(a[keep] - b[keep]).max() < 1e-4 and np.abs(a_step - b_step).max() < 1e-4


def test_unfused_attention_in_standard_operators_equals_the_fused_graph(lm, fp32, tmp_path):
    """lm_fuse.unfuse_attention (what OpenVINO converts) writes each GroupQueryAttention node back in
    standard operators with the same logits and cache, padded rows included."""
    import numpy as np
    import onnx

    from edgekd.lm_fuse import unfuse_attention

    _, model, tok = lm
    proto = onnx.load(str(fp32[0] / "model.onnx"))
    assert unfuse_attention(proto) == model.config.num_hidden_layers
    assert "GroupQueryAttention" not in [n.op_type for n in proto.graph.node]
    shutil.copytree(fp32[0], tmp_path / "std")
    onnx.save(proto, str(tmp_path / "std" / "model.onnx"))
    rows = [tok(p)["input_ids"] for p in PROMPTS[:2]]
    width = max(map(len, rows))
    batch = np.array([[tok.pad_token_id] * (width - len(r)) + r for r in rows], np.int64)
    mask = np.array([[0] * (width - len(r)) + [1] * len(r) for r in rows], np.int64)
    (a, a_step), (b, b_step) = _padded_logits(fp32[0], batch, mask), _padded_logits(tmp_path / "std", batch, mask)
    keep = mask.astype(bool)
    assert np.abs(a[keep] - b[keep]).max() < 1e-4 and np.abs(a_step - b_step).max() < 1e-4


def test_a_head_size_the_kernel_refuses_keeps_optimums_attention(tmp_path):
    """GroupQueryAttention's CPU kernel needs head_dim % 16 == 0: a model with 8 keeps its graph, and says why."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = lm_tiny.tiny_lm(tmp_path / "hf", "llama", layers=1, hidden=32)  # 4 heads of 8
    meta = export_causal_lm(AutoModelForCausalLM.from_pretrained(folder), AutoTokenizer.from_pretrained(folder),
                            tmp_path / "out")
    assert meta["attention"]["fused"] == 0 and "multiple of 16" in meta["attention"]["why"]
    assert "GroupQueryAttention" not in [n.op_type for n in _graph(tmp_path / "out").node]


def test_sliding_window_attention_keeps_optimums_graph(lm, tmp_path):
    """A Mistral-class model whose mask is a sliding window (the fused kernel would attend to everything
    cached) is exported as optimum writes it, and the meta says why."""
    from transformers import AutoConfig, AutoModelForCausalLM

    _, _, tok = lm
    config = AutoConfig.for_model("mistral", vocab_size=len(tok), hidden_size=64, intermediate_size=128,
                                  num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=2,
                                  max_position_embeddings=256, sliding_window=16)
    meta = export_causal_lm(AutoModelForCausalLM.from_config(config).eval(), tok, tmp_path / "out")
    assert meta["attention"] == {"fused": 0, "why": "sliding-window attention stays as optimum exports it"}
    assert "GroupQueryAttention" not in [n.op_type for n in _graph(tmp_path / "out").node]


def test_int4_quantizes_every_weight_with_head_and_embedding(fp32, int4):
    folder, meta = int4
    before = _weight_matmuls(_graph(fp32[0]))
    graph = _graph(folder)
    nodes = [n for n in graph.node if n.op_type == "MatMulNBits"]
    assert len(nodes) == len(before) == meta["matmul_nbits"]
    assert any("lm_head" in n.name for n in nodes) and meta["untied_heads"]
    assert all(_attr(n, "bits") == 4 and _attr(n, "block_size") == BLOCK for n in nodes)
    assert _weight_matmuls(graph) == [] and meta["float_matmuls_left"] == []
    gathers = [n for n in graph.node if n.op_type == "GatherBlockQuantized"]
    assert len(gathers) == meta["gather_block_quantized"] == 1 and meta["float_gathers_left"] == []
    assert meta["size_after"] < meta["size_before"] / 2


def test_int4_folder_generates_with_optimum_alone(int4):
    from optimum.onnxruntime import ORTModelForCausalLM
    from transformers import AutoTokenizer

    folder = int4[0]
    model = ORTModelForCausalLM.from_pretrained(folder)
    tok = AutoTokenizer.from_pretrained(folder)
    enc = tok(PROMPTS[0], return_tensors="pt", return_token_type_ids=False)
    out = model.generate(**enc, max_new_tokens=4, min_new_tokens=4, do_sample=False, pad_token_id=tok.pad_token_id)
    assert out.shape[1] == enc["input_ids"].shape[1] + 4
    assert isinstance(tok.decode(out[0]), str)


def test_int4_parity(lm, int4):
    _, model, tok = lm
    # random weights have near-ties everywhere; a trained model is held to the default 0.9
    parity = check_parity(model, tok, int4[0], PROMPTS, new_tokens=NEW_TOKENS, quantized=True, min_agreement=0.5)
    assert 0.5 <= parity["top1_agreement"] <= 1 and parity["max_abs_diff"] > 0


def test_int8_uses_8bit_kernels(lm, fp32, tmp_path):
    _, model, tok = lm
    meta = quantize_weights(fp32[0], tmp_path, bits=8, block_size=BLOCK)
    graph = _graph(tmp_path)
    ops = [n for n in graph.node if n.op_type in ("MatMulNBits", "GatherBlockQuantized")]
    assert ops and all(_attr(n, "bits") == 8 for n in ops)
    assert meta["gather_block_quantized"] == 1 and meta["float_matmuls_left"] == []
    parity = check_parity(model, tok, tmp_path, PROMPTS, new_tokens=NEW_TOKENS, quantized=True, min_agreement=0.5)
    assert parity["max_abs_diff"] < 0.1  # 8 bits stays close to FP32 even on random weights


@pytest.mark.parametrize("algorithm", ["rtn", "hqq"])
def test_the_head_gets_its_own_bits(lm, fp32, tmp_path, algorithm):
    """head_bits: the MatMul that writes the logits at 8 bits, every other weight at 4."""
    meta = quantize_weights(fp32[0], tmp_path, bits=4, block_size=BLOCK, head_bits=8, algorithm=algorithm,
                            symmetric=algorithm == "rtn")
    graph = _graph(tmp_path)
    made = {o: n for n in graph.node for o in n.output}
    head = made["logits"]
    assert head.op_type == "MatMulNBits" and _attr(head, "bits") == 8 and meta["head_bits"] == 8
    others = [n for n in graph.node if n.op_type == "MatMulNBits" and n is not head]
    assert others and all(_attr(n, "bits") == 4 for n in others) and meta["float_matmuls_left"] == []


def test_hqq_quantizes_every_weight(lm, fp32, tmp_path):
    _, model, tok = lm
    meta = quantize_weights(fp32[0], tmp_path, bits=4, block_size=BLOCK, algorithm="hqq", symmetric=False)
    assert meta["float_matmuls_left"] == [] and meta["gather_block_quantized"] == 1
    assert all(_attr(n, "accuracy_level") == 4 for n in _graph(tmp_path).node if n.op_type == "MatMulNBits")
    check_parity(model, tok, tmp_path, PROMPTS, new_tokens=NEW_TOKENS, quantized=True, min_agreement=0.5)


def test_edited_fp32_folder_is_refused(lm, fp32, tmp_path):
    import onnx
    from onnx import numpy_helper

    _, model, tok = lm
    shutil.copytree(fp32[0], tmp_path, dirs_exist_ok=True)
    proto = onnx.load(str(tmp_path / "model.onnx"))
    inits = {i.name: i for i in proto.graph.initializer}
    name = next(n.input[1] for n in proto.graph.node if n.name.endswith("q_proj/MatMul"))
    inits[name].CopyFrom(numpy_helper.from_array(numpy_helper.to_array(inits[name]) * 2, name))
    onnx.save(proto, str(tmp_path / "model.onnx"))
    with pytest.raises(ParityError, match="does not reproduce"):
        check_parity(model, tok, tmp_path, PROMPTS, new_tokens=NEW_TOKENS, quantized=False)


def test_unsupported_architecture_is_named(tmp_path):
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.for_model("biogpt", vocab_size=64, hidden_size=16, num_hidden_layers=1,
                                  num_attention_heads=2, intermediate_size=32)
    with pytest.raises(InputError, match="'biogpt'.*llama"):
        export_causal_lm(AutoModelForCausalLM.from_config(config), None, tmp_path / "out")


@pytest.mark.parametrize("options, message", [
    ({"algorithm": "rtm"}, "did you mean 'rtn'"),
    ({"bits": 3}, "bits must be 4 or 8"),
    ({"block_size": 24}, "power of two"),
    ({"algorithm": "hqq"}, "symmetric=False"),
])
def test_bad_quantize_options(tmp_path, options, message):
    with pytest.raises(RecipeError, match=message):
        quantize_weights(tmp_path, tmp_path / "q", **options)
