"""What the report says of every mobile deliverable: named-device latency estimates (edgekd.estimate)."""

from __future__ import annotations

from pathlib import Path


def device_estimates(folder: Path, target) -> dict:
    """MACs of the FP32 student's ONNX graph (the QDQ graph would count its Q/DQ work) and the bounds
    they give on named phone cores."""
    from ..estimate import count_macs, estimate_latency

    macs = count_macs(folder / "student-fp32.onnx")
    return {"device_estimates": {"macs": macs, "estimates": estimate_latency(macs, precision=target.precision)}}
