"""Exporters and the parity check every exported model must pass."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import ParityError


def export_onnx(model, path: Path, input_shape, *, opset: int) -> None:
    """FP32 ONNX with a dynamic batch axis and weights inline (one self-contained file).

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
            input_names=["input"], output_names=["logits"],
            dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
        )


def to_openvino(onnx_path: Path, xml_path: Path) -> None:
    """OpenVINO IR from ONNX. QDQ pairs become FakeQuantize layers that run in INT8.
    compress_to_fp16=False: keep FP32 weights FP32 (OpenVINO compresses to FP16 by default)."""
    import openvino as ov

    ov.save_model(ov.convert_model(str(onnx_path)), str(xml_path), compress_to_fp16=False)


@dataclass
class Parity:
    model: str
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
    p = Parity(name, agree, diff, len(torch_logits))
    if agree < min_agreement or (max_abs_diff is not None and diff > max_abs_diff):
        bound = f", max |diff| {diff:.4g} (allowed {max_abs_diff:g})" if max_abs_diff is not None else f", max |diff| {diff:.4g}"
        raise ParityError(
            f"exported model '{name}' does not match its PyTorch model on {len(torch_logits)} held-out inputs: "
            f"top-1 agreement {agree:.4f} (needed {min_agreement:g}){bound}; "
            "for INT8 try quantize.reduce_range=true, or loosen export.* bounds knowingly")
    return p
