"""Quantization-aware training of causal LMs rounds weights to exactly the grid onnxruntime's MatMulNBits
stores, so the exported INT4/INT8 weights are the trained ones."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnxruntime")


def _matmul_nbits_weights(w: np.ndarray, *, bits: int, block_size: int) -> np.ndarray:
    """(in, out) float weights -> what onnxruntime computes with after round-to-nearest MatMulNBits:
    the graph x @ W run on the identity."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    k, n = w.shape
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [k, k])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [k, n])],
                              [numpy_helper.from_array(w.astype(np.float32), "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    q = MatMulNBitsQuantizer(model, bits=bits, block_size=block_size, is_symmetric=True)
    q.process()
    assert [n.op_type for n in q.model.model.graph.node] == ["MatMulNBits"]
    sess = ort.InferenceSession(q.model.model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {"x": np.eye(k, dtype=np.float32)})[0]


@pytest.mark.parametrize("bits", [4, 8])
def test_fake_quant_blocks_land_on_the_runtimes_grid(bits):
    from edgekd.quantize.weight_only import fake_quant_blocks

    g = torch.Generator().manual_seed(0)
    w = torch.randn(24, 64, generator=g)  # (out, in) as nn.Linear stores it; MatMul reads its transpose
    fq = fake_quant_blocks(w, bits=bits, block_size=16)
    assert not torch.equal(fq, w)
    assert len(torch.unique(fq[0, :16])) <= 2 ** bits
    ort_w = _matmul_nbits_weights(fq.T.numpy(), bits=bits, block_size=16)
    np.testing.assert_allclose(ort_w, fq.T.numpy(), rtol=0, atol=1e-6)


def _tiny_lm(*, tied: bool):
    """Embedding -> Linear -> head, the head tied to the embedding's table or its own tensor."""

    class TinyLM(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = torch.nn.Embedding(10, 32)
            self.mid = torch.nn.Linear(32, 32)
            self.head = torch.nn.Linear(32, 10, bias=False)
            if tied:
                self.head.weight = self.emb.weight

        def get_input_embeddings(self):
            return self.emb

        def get_output_embeddings(self):
            return self.head

        def forward(self, x):
            return self.head(self.mid(self.emb(x)))

    return TinyLM()


def test_prepared_weights_train_through_the_rounding_and_bake_to_plain_weights():
    from torch.nn.utils import parametrize

    from edgekd.quantize.weight_only import bake, fake_quant_blocks, prepare_weights

    q = prepare_weights(_tiny_lm(tied=True), bits=4, block_size=16, head_bits=4)
    assert parametrize.is_parametrized(q.mid, "weight") and not parametrize.is_parametrized(q.head, "weight")
    assert not parametrize.is_parametrized(q.emb, "weight")  # one table read by two ops stays tied, unrounded
    q(torch.tensor([1, 2])).sum().backward()
    assert q.mid.parametrizations.weight.original.grad is not None  # straight-through
    b = bake(q)
    assert not parametrize.is_parametrized(b.mid, "weight")
    assert torch.equal(b.mid.weight, fake_quant_blocks(q.mid.parametrizations.weight.original.detach(), bits=4,
                                                       block_size=16))


def _gather_block_quantized_table(table: np.ndarray, *, block_size: int) -> np.ndarray:
    """(V, H) float table -> what onnxruntime's 4-bit GatherBlockQuantized reads back for every id."""
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    v, h = table.shape
    graph = helper.make_graph([helper.make_node("Gather", ["table", "ids"], ["y"])], "g",
                              [helper.make_tensor_value_info("ids", TensorProto.INT64, [v])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [v, h])],
                              [numpy_helper.from_array(table.astype(np.float32), "table")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    q = MatMulNBitsQuantizer(model, bits=4, block_size=block_size, is_symmetric=True, op_types_to_quantize=("Gather",))
    q.process()
    assert [n.op_type for n in q.model.model.graph.node] == ["GatherBlockQuantized"]
    sess = ort.InferenceSession(q.model.model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {"ids": np.arange(v, dtype=np.int64)})[0]


def test_fake_quant_embedding_lands_on_the_gather_grid():
    """The 4-bit embedding table the QAT student trains with is what onnxruntime's GatherBlockQuantized
    reads back after export's round to nearest: blocks run along a row, as a Linear's run along its inputs."""
    from edgekd.quantize.weight_only import fake_quant_blocks

    table = torch.randn(40, 64, generator=torch.Generator().manual_seed(1))  # (V, H) as nn.Embedding stores it
    fq = fake_quant_blocks(table, bits=4, block_size=16)
    assert not torch.equal(fq, table)
    np.testing.assert_allclose(_gather_block_quantized_table(fq.numpy(), block_size=16), fq.numpy(), rtol=0, atol=1e-6)


@pytest.mark.parametrize("bits,head_bits", [(4, 8), (4, 4), (8, 8)])
def test_an_untied_head_and_the_embedding_train_on_their_export_grids(bits, head_bits):
    """A student whose head is its own tensor (a trimmed vocabulary) trains its head on the head's bits and,
    in a 4-bit build, its embedding on the 4-bit grid; a tied table stays unrounded (see the test above)."""
    from torch.nn.utils import parametrize

    from edgekd.quantize.weight_only import bake, fake_quant_blocks, prepare_weights

    m = _tiny_lm(tied=False)
    q = prepare_weights(m, bits=bits, block_size=16, head_bits=head_bits)
    assert parametrize.is_parametrized(q.head, "weight")
    assert parametrize.is_parametrized(q.emb, "weight") == (bits == 4)
    q(torch.tensor([1, 2])).sum().backward()
    assert q.head.parametrizations.weight.original.grad is not None
    b = bake(q)
    assert torch.equal(b.head.weight, fake_quant_blocks(m.head.weight, bits=head_bits, block_size=16))
    assert torch.equal(b.emb.weight, fake_quant_blocks(m.emb.weight, bits=4, block_size=16) if bits == 4
                       else m.emb.weight)
    assert len(torch.unique(b.head.weight[0, :16])) <= 2 ** head_bits


@pytest.mark.parametrize("bits", [4, 8])
def test_given_integers_are_written_into_matmul_nbits_unchanged(bits):
    """Integers another algorithm chose (GPTQ's: a zero point of 2^(bits-1), one scale per block) replace
    the rounding's in the graph exactly: onnxruntime computes with (q - 2^(bits-1)) * scale."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    from edgekd.export_lm import MODEL_FILE, quantize_weights
    from edgekd.quantize.gptq import fingerprint

    rng = np.random.default_rng(0)
    n, k, block = 24, 48, 16  # k pads to 3 blocks
    q = rng.integers(0, 2 ** bits, size=(n, k)).astype(np.uint8)
    scales = rng.uniform(0.01, 0.1, size=(n, k // block)).astype(np.float32)
    w = (q.astype(np.float32) - 2 ** (bits - 1)) * np.repeat(scales, block, axis=1)  # (out, in) as torch stores it
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [k, k])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [k, n])],
                              [numpy_helper.from_array(np.ascontiguousarray(w.T), "w")])
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as d:
        src, dst = Path(d) / "src", Path(d) / "dst"
        src.mkdir()
        onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)]), str(src / MODEL_FILE))
        meta = quantize_weights(src, dst, bits=bits, block_size=block, accuracy_level=0, embeddings=False,
                                grids={fingerprint(w): (q, scales)})
        assert meta["given_integers"] == 1 and meta["matmul_nbits"] == 1
        sess = ort.InferenceSession(str(dst / MODEL_FILE), providers=["CPUExecutionProvider"])
        got = sess.run(None, {"x": np.eye(k, dtype=np.float32)})[0]
    np.testing.assert_allclose(got, w.T, rtol=0, atol=1e-6)


def test_gptq_integers_are_neural_compressors_own(tmp_path, monkeypatch):
    """gptq_round's float weights are exactly what neural-compressor's own modules dequantize to, and its
    integers rebuild them: the graph gets GPTQ's rounding, not a second one. It leaves nothing in the
    working folder (neural-compressor's default workspace is ./nc_workspace)."""
    pytest.importorskip("neural_compressor")
    import copy
    import tempfile

    from transformers import LlamaConfig, LlamaForCausalLM

    from edgekd.quantize.gptq import fingerprint, gptq_round

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=96, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2)
    model = LlamaForCausalLM(cfg).eval()
    seqs = [np.random.default_rng(i).integers(0, 96, size=40) for i in range(4)]
    monkeypatch.chdir(tmp_path)
    rounded, grids, meta = gptq_round(model, seqs, bits=4, block_size=32)
    assert meta["linears"] == len(grids) == 2 * 7 and not any(tmp_path.iterdir())

    from neural_compressor.torch.quantization import GPTQConfig, convert, prepare

    with tempfile.TemporaryDirectory() as d, torch.no_grad():
        inc = prepare(copy.deepcopy(model), GPTQConfig(bits=4, use_sym=True, group_size=32, model_path=d,
                                                           use_mse_search=True))
        for s in seqs:
            inc(input_ids=torch.as_tensor(s).view(1, -1))
        inc = convert(inc)
    mine = dict(rounded.named_modules())
    for name, m in inc.named_modules():
        if hasattr(m, "recover") and name in mine:
            w = mine[name].weight.detach()
            # recover() multiplies in float16: its products are ours rounded to float16
            torch.testing.assert_close(w, m.recover().float(), rtol=1e-3, atol=1e-6)
            q, scales = grids[fingerprint(w.numpy())]
            rebuilt = (q.astype(np.float32) - 8) * np.repeat(scales, 32, axis=1)[:, :w.shape[1]]
            np.testing.assert_array_equal(rebuilt, w.numpy())
    assert not torch.equal(mine["model.layers.0.mlp.down_proj"].weight, model.model.layers[0].mlp.down_proj.weight)


def test_a_trimmed_head_under_qat_still_trains_on_its_compact_logits():
    """QAT's student is found to have its trimmed head after the head is parametrized, so its steps read the
    (N, K + 1) compact logits, as distillation's do, and never a (N, vocab) tensor; those logits use the
    head's rounded weight."""
    pytest.importorskip("transformers")
    from transformers import LlamaConfig, LlamaForCausalLM

    from edgekd.models.lm_vocab import trim, trimmed
    from edgekd.quantize.weight_only import fake_quant_blocks, prepare_weights

    torch.manual_seed(0)
    m = LlamaForCausalLM(LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                                     num_key_value_heads=1, vocab_size=50))
    trim(m, np.arange(0, 50, 2), floor=-3.0)
    q = prepare_weights(m, bits=4, block_size=16, head_bits=4)
    head = trimmed(q)
    assert head is not None and head is q.get_output_embeddings()
    h = torch.randn(3, 32)
    w = fake_quant_blocks(m.get_output_embeddings().weight.detach(), bits=4, block_size=16)
    torch.testing.assert_close(head.compact(h)[:, :-1], h @ w.T)
    assert head.compact(h).shape == (3, 26)
