"""Exporters and the parity check every exported model must pass."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import ParityError


def export_onnx(model, path: Path, input_shape, *, opset: int, input_name: str = "input") -> None:
    """FP32 ONNX with a dynamic batch axis and weights inline (one self-contained file); one input
    `input_name` ("pixel_values" for transformers image models, as optimum names it), output "logits".

    The TorchScript-based exporter (dynamo=False) is used on purpose for these plain CNNs: it writes
    weights inline, where torch 2.13's dynamo exporter writes an external `.onnx.data` file that
    onnxruntime's quantization pre-processing rejects."""
    import warnings

    import torch

    model.eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter's deprecation notice, not the user's concern
        torch.onnx.export(
            model, (torch.zeros((1, *input_shape)),), str(path), dynamo=False, opset_version=opset,
            input_names=[input_name], output_names=["logits"],
            dynamic_axes={input_name: {0: "batch"}, "logits": {0: "batch"}},
        )


def export_text_onnx(model, path: Path, *, opset: int, output: str) -> None:
    """FP32 ONNX of a text model called as model(input_ids, attention_mask): both int64, batch x
    sequence, both axes dynamic; output `output`; weights inline. The TorchScript exporter, where
    optimum has no configuration for an architecture (edgekd.export_hf)."""
    import warnings

    import torch

    model.eval()
    ids = torch.tensor([[101, 7592, 2088, 2003, 1037, 3231, 102], [101, 2023, 102, 0, 0, 0, 0]])
    if hasattr(model, "input_embeddings"):  # a small vocabulary: keep the example ids inside it
        ids = ids.clamp(max=model.input_embeddings().num_embeddings - 1)
    mask = (ids != 0).long()
    axes = {"batch": 0, "sequence": 1}
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model, (ids, mask), str(path), dynamo=False, opset_version=opset,
            input_names=["input_ids", "attention_mask"], output_names=[output],
            dynamic_axes={"input_ids": {v: k for k, v in axes.items()}, "attention_mask": {v: k for k, v in axes.items()},
                          output: {0: "batch"}},
        )


def op_types(onnx_path: Path) -> dict[str, int]:
    import onnx

    counts: dict[str, int] = {}
    for node in onnx.load(str(onnx_path), load_external_data=False).graph.node:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return counts


@dataclass
class Parity:
    agreement: float
    max_abs_diff: float
    samples: int

    def to_dict(self) -> dict:
        return {"agreement": self.agreement, "max_abs_diff": self.max_abs_diff, "samples": self.samples}


def check_parity(name: str, runtime_logits: np.ndarray, torch_logits: np.ndarray, *,
                 min_agreement: float, max_abs_diff: float | None) -> Parity:
    """Top-1 agreement and max |logit difference| of an exported model against its PyTorch model on
    held-out inputs; raises ParityError (failing the build) when either bound is broken."""
    agree = float((runtime_logits.argmax(1) == torch_logits.argmax(1)).mean())
    diff = float(np.abs(runtime_logits - torch_logits).max())
    p = Parity(agree, diff, len(torch_logits))
    # float32 rounding grows with the outputs' magnitude: the bound is per unit of the largest |logit|
    # (at least 1), so a well-trained model with logits in the tens is held to the same relative error
    allowed = None if max_abs_diff is None else max_abs_diff * max(1.0, float(np.abs(torch_logits).max()))
    if agree < min_agreement or (allowed is not None and diff > allowed):
        bound = f", max |diff| {diff:.4g} (allowed {allowed:.3g})" if allowed is not None else f", max |diff| {diff:.4g}"
        raise ParityError(
            f"exported model '{name}' does not match its PyTorch model on {len(torch_logits)} held-out inputs: "
            f"top-1 agreement {agree:.4f} (needed {min_agreement:g}){bound}; "
            "for INT8 try quantize.reduce_range=true, or loosen export.* bounds knowingly")
    return p


def embedding_parity(name: str, out: np.ndarray, ref: np.ndarray, *, min_cosine: float) -> dict:
    """Cosine of each exported embedding with its PyTorch embedding; the mean must reach min_cosine."""
    a = out / np.linalg.norm(out, axis=1, keepdims=True).clip(1e-12)
    b = ref / np.linalg.norm(ref, axis=1, keepdims=True).clip(1e-12)
    cos = (a * b).sum(1)
    p = {"mean_cosine": float(cos.mean()), "min_cosine": float(cos.min()),
         "max_abs_diff": float(np.abs(out - ref).max()), "samples": int(len(out))}
    if p["mean_cosine"] < min_cosine:
        raise ParityError(f"exported model '{name}' does not match its PyTorch model on {len(out)} held-out inputs: "
                          f"mean cosine {p['mean_cosine']:.4f} (needed {min_cosine:g}); for INT8 try "
                          "quantize.method=qat or quantize.reduce_range=true, or loosen export.* bounds knowingly")
    return p


def check_integer_kernels(path: Path) -> dict[str, int]:
    """The op types onnxruntime runs for an INT8 model; fails the build when none is an integer kernel."""
    from .errors import EdgeKDError
    from .onnx_ops import INTEGER_OPS, optimized_op_types

    ops = optimized_op_types(path)
    if not any(op in ops for op in INTEGER_OPS):
        raise EdgeKDError(f"{path.name} runs no integer kernels in onnxruntime (ops: {sorted(ops)}); "
                          "the INT8 graph would be emulated in float")
    return ops
