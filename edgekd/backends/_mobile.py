"""What the report says of every mobile deliverable: named-device latency estimates (edgekd.estimate)."""

from __future__ import annotations

from pathlib import Path

TEXT_TOKENS = 128  # the length a text model's estimate is counted at


def device_estimates(folder: Path, target) -> dict:
    """MACs of the FP32 student's ONNX graph (the QDQ graph would count its Q/DQ work) and the bounds
    they give on named phone cores."""
    from ..estimate import count_macs, estimate_latency

    import onnx

    model = onnx.load(str(folder / "student-fp32.onnx"))  # read once: inspected here, counted below
    # a text model's sequence length is symbolic: counted at a typical on-device length, and said so
    textual = any(not d.dim_value for i in model.graph.input for d in i.type.tensor_type.shape.dim[1:])
    macs = count_macs(model, length=TEXT_TOKENS if textual else None)
    return {"device_estimates": {"macs": macs, "estimates": estimate_latency(macs, precision=target.precision),
                                 "per": f"text of {TEXT_TOKENS} tokens" if textual else "input"}}
