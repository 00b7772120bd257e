"""What to quantize to (QuantizeSpec) and the hardware probe behind reduce_range. No torch here, so that
`import edgekd.quantize` stays cheap."""

from __future__ import annotations

import platform
from dataclasses import dataclass
from pathlib import Path

from ..errors import RecipeError
from ..registry import closest

# whose INT8 kernels the fake-quant graph reproduces exactly (graph_qat._place_fake_quant)
RUNTIMES = ("onnxruntime", "openvino")
# quantize.activations of transformer students: "static" ranges (learned by QAT), "dynamic" (each
# call's own) or "nncf" (NNCF's post-training placement, SmoothQuant and bias correction on the QAT-tuned
# weights); "auto" times the candidates on the target and scores them on validation (edgekd.payoff)
ACTIVATIONS = ("auto", "static", "dynamic", "nncf")


def check_runtime(runtime: str) -> None:
    if runtime not in RUNTIMES:
        raise RecipeError(f"INT8 runtime must be one of {', '.join(RUNTIMES)}, got '{runtime}'"
                          f"{closest(runtime, RUNTIMES)}")


@dataclass(frozen=True, kw_only=True)
class QuantizeSpec:
    """How `prepare` fake-quantizes a student.

    reduce_range: 7-bit weights (resolve_reduce_range decides for this host); runtime: whose INT8 kernels
    the graph route reproduces (the Linear route runs onnxruntime's quantizer whatever the target);
    weight_bits < 8: weights on a coarser symmetric grid in the same INT8 storage (graph route only)."""

    reduce_range: bool
    runtime: str = "onnxruntime"
    weight_bits: int = 8

    def __post_init__(self):
        check_runtime(self.runtime)
        if not 2 <= self.weight_bits <= 8:
            raise RecipeError(f"quantize.weight_bits must be in [2, 8] (8 = INT8), got {self.weight_bits}")


def has_vnni() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return any(f in flags for f in ("avx512_vnni", "avx_vnni", "amx_int8"))


def resolve_reduce_range(setting: str) -> bool:
    """'auto': 7-bit weights on x86 without VNNI, where u8s8 kernels can saturate (ARM never does)."""
    if setting != "auto":
        return setting == "true"
    return platform.machine().lower() in ("x86_64", "amd64") and not has_vnni()
