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


def to_openvino(onnx_path: Path, xml_path: Path) -> None:
    """OpenVINO IR from ONNX. QDQ pairs become FakeQuantize layers that run in INT8.
    compress_to_fp16=False: keep FP32 weights FP32 (OpenVINO compresses to FP16 by default)."""
    import openvino as ov

    ov.save_model(ov.convert_model(str(onnx_path)), str(xml_path), compress_to_fp16=False)


def to_ort(onnx_path: Path, ort_path: Path) -> None:
    """ONNX Runtime's mobile format, optimized for ARM (onnxruntime's own converter)."""
    import shutil
    import subprocess
    import sys
    import tempfile

    from .errors import EdgeKDError

    with tempfile.TemporaryDirectory() as d:
        src = Path(d) / onnx_path.name
        shutil.copy2(onnx_path, src)
        proc = subprocess.run([sys.executable, "-m", "onnxruntime.tools.convert_onnx_models_to_ort",
                               "--target_platform", "arm", "--optimization_style", "Fixed",
                               "--output_dir", str(Path(d) / "out"), str(src)],
                              capture_output=True, text=True)
        made = list((Path(d) / "out").glob("*.ort"))
        if proc.returncode != 0 or len(made) != 1:
            tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
            raise EdgeKDError(f"converting {onnx_path.name} to .ort failed: {tail}")
        shutil.move(str(made[0]), ort_path)


def mobile_usability(onnx_path: Path) -> str:
    """onnxruntime's own verdict on NNAPI and CoreML coverage (ops, partitions), as text."""
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", "onnxruntime.tools.check_onnx_model_mobile_usability",
                           str(onnx_path)], capture_output=True, text=True)
    text = (proc.stdout + proc.stderr).strip().replace(str(onnx_path), onnx_path.name)
    if proc.returncode != 0:
        return f"(the check failed: {text.splitlines()[-1] if text else proc.returncode})"
    return "\n".join(line.removeprefix("INFO:  ").rstrip() for line in text.splitlines())


def op_types(onnx_path: Path) -> dict[str, int]:
    import onnx

    counts: dict[str, int] = {}
    for node in onnx.load(str(onnx_path), load_external_data=False).graph.node:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return counts


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


def convert_for_target(d: Path, name: str, target) -> list[tuple[str, str]]:
    """(file, runtime) pairs to check for one exported ONNX model `d/<name>.onnx`: the ONNX itself, plus
    the OpenVINO IR or the ARM .ort the target runs."""
    from .artifacts import target_format

    files = [(f"{name}.onnx", "onnxruntime")]
    fmt = target_format(target)
    if fmt == "openvino-ir":
        to_openvino(d / f"{name}.onnx", d / f"{name}.xml")
        files.append((f"{name}.xml", "openvino"))
    if fmt == "ort":
        to_ort(d / f"{name}.onnx", d / f"{name}.ort")
        files.append((f"{name}.ort", "onnxruntime"))
    return files


def check_integer_kernels(path: Path) -> dict[str, int]:
    """The op types onnxruntime runs for an INT8 model; fails the build when none is an integer kernel."""
    from .errors import EdgeKDError
    from .quantize import INTEGER_OPS, optimized_op_types

    ops = optimized_op_types(path)
    if not any(op in ops for op in INTEGER_OPS):
        raise EdgeKDError(f"{path.name} runs no integer kernels in onnxruntime (ops: {sorted(ops)}); "
                          "the INT8 graph would be emulated in float")
    return ops


def target_meta(d: Path, target, meta: dict) -> None:
    """What the report says about the target's form: OpenVINO layer precisions, the .ort's mobile
    usability check and op types, named-device estimates for mobile targets."""
    from .artifacts import deliverable, target_format

    fmt = target_format(target)
    if fmt == "openvino-ir":
        meta["openvino_int8_precisions"] = ov_runtime_precisions(d / "student-int8.xml")
    if fmt == "ort":
        name = deliverable(target)
        meta["mobile"] = {"model": f"{name}.ort", "usability_check": mobile_usability(d / f"{name}.onnx"),
                          "op_types": op_types(d / f"{name}.onnx")}
    if fmt == "pte":
        name = deliverable(target)
        meta["mobile"] = {"model": f"{name}.pte", "delegation": meta.get("delegation", {}).get(f"{name}.pte")}
    if meta.get("mobile"):
        from .estimate import count_macs, estimate_latency

        macs = count_macs(d / "student-fp32.onnx")
        meta["mobile"]["device_estimates"] = {"macs": macs, "estimates": estimate_latency(macs, precision=target.precision)}


def ov_runtime_precisions(xml: Path) -> dict[str, int]:
    """How many executed layers run in each precision (OpenVINO may run FakeQuantize in f32)."""
    import openvino as ov

    compiled = ov.Core().compile_model(str(xml), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})  # as runtimes.py runs it
    counts: dict[str, int] = {}
    for op in compiled.get_runtime_model().get_ordered_ops():
        rt = op.get_rt_info()
        prec = rt["runtimePrecision"].astype(str) if "runtimePrecision" in rt else "?"
        layer = rt["layerType"].astype(str) if "layerType" in rt else op.get_type_name()
        if layer in ("Convolution", "FullyConnected", "MatMul"):
            counts[prec] = counts.get(prec, 0) + 1
    return counts
