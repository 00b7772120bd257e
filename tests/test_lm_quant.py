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


def test_prepared_weights_train_through_the_rounding_and_bake_to_plain_weights():
    from torch.nn.utils import parametrize

    from edgekd.quantize.weight_only import bake, fake_quant_blocks, prepare_weights

    class Tiny(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = torch.nn.Embedding(10, 32)
            self.mid = torch.nn.Linear(32, 32)
            self.head = torch.nn.Linear(32, 10, bias=False)
            self.head.weight = self.emb.weight  # tied

        def get_output_embeddings(self):
            return self.head

        def forward(self, x):
            return self.head(self.mid(self.emb(x)))

    q = prepare_weights(Tiny(), bits=4, block_size=16)
    assert parametrize.is_parametrized(q.mid, "weight") and not parametrize.is_parametrized(q.head, "weight")
    q(torch.tensor([1, 2])).sum().backward()
    assert q.mid.parametrizations.weight.original.grad is not None  # straight-through
    b = bake(q)
    assert not parametrize.is_parametrized(b.mid, "weight")
    assert torch.equal(b.mid.weight, fake_quant_blocks(q.mid.parametrizations.weight.original.detach(), bits=4,
                                                       block_size=16))
