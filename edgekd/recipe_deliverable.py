"""The recipe's [quantize] and [export] sections: how the distilled student becomes the deliverable
(quantization-aware distillation or calibration, weight grids, the accuracy budget) and what its
exported graph must agree with before it ships (parity)."""

from __future__ import annotations

from dataclasses import dataclass

from .quantize._spec import ACTIVATIONS
from .recipe_parse import check as _check


@dataclass(frozen=True)
class QuantizeSpec:
    method: str = "qat"  # "qat": quantization-aware distillation; "ptq": calibration only
    epochs: int = 3  # quantization-aware fine-tuning epochs, from the distilled student (0: calibration only)
    # quantization-aware fine-tuning's rate; 0: the family's (edgekd.schedules): 5e-4 for image and text
    # students (small: BatchNorm folded before fake-quant leaves the network scale-sensitive), the
    # distillation's own rate for a causal LM
    lr: float = 0.0
    calibration: int = 256  # inputs used to calibrate activation ranges
    # text tasks: QAT fine-tunes on this many training texts (a random subset; 0 = all): it starts
    # from the distilled student and needs far fewer steps than distillation
    train_texts: int = 0
    reduce_range: str = "auto"  # 7-bit weights: "auto" = on x86 CPUs without VNNI, "true", "false"
    # Accuracy budget in ABSOLUTE POINTS of the task's quality metric on the validation split (0.5 =
    # half a point of accuracy; text-embedding: of cosine fidelity x 100), not a relative fraction. When
    # the INT8 student, run on the target's runtime, loses more than this against the FP32 student, its
    # most sensitive layers stay float, smallest set first, until it holds (edgekd.budget). 0 = no budget.
    max_accuracy_drop: float = 0.0
    # Image students: weights on a b-bit symmetric grid, +-(2^(b-1) - 1), stored and run as INT8 (no
    # smaller, no faster here): what an accelerator with b-bit weights would compute. 8 = INT8.
    weight_bits: int = 8
    # text-generation: weight-only quantization in blocks of block_size weights (one scale each), symmetric
    block_size: int = 32
    # "auto": kinds of layer where INT8 is slower than float on the target's runtime stay float (edgekd.payoff)
    int8_layers: str = "auto"
    # transformer students: INT8 activation ranges "static" (QAT's), "dynamic" (each call's), "nncf" (NNCF's
    # PTQ pipeline) or "auto" (timed on the target at the benchmark's lengths, scored on validation; edgekd.payoff)
    activations: str = "auto"

    def __post_init__(self):
        _check(self.method in ("qat", "ptq"), "quantize.method", "'qat' or 'ptq'", self.method)
        _check(self.int8_layers in ("auto", "all"), "quantize.int8_layers", "'auto' or 'all'", self.int8_layers)
        _check(self.activations in ACTIVATIONS, "quantize.activations", " or ".join(map(repr, ACTIVATIONS)), self.activations)
        _check(self.epochs >= 0, "quantize.epochs", ">= 0", self.epochs)
        _check(self.lr >= 0, "quantize.lr", ">= 0 (0: the model family's default)", self.lr)
        _check(self.calibration > 0, "quantize.calibration", "> 0", self.calibration)
        _check(self.train_texts >= 0, "quantize.train_texts", ">= 0 (0 = all)", self.train_texts)
        _check(self.reduce_range in ("auto", "true", "false"), "quantize.reduce_range",
               "'auto', 'true' or 'false'", self.reduce_range)
        _check(2 <= self.weight_bits <= 8, "quantize.weight_bits", "in [2, 8] (8 = INT8)", self.weight_bits)
        _check(self.block_size >= 16 and self.block_size & (self.block_size - 1) == 0, "quantize.block_size",
               "a power of 2 >= 16", self.block_size)
        # not (0 <= x <= 100) is also true for NaN
        _check(0 <= self.max_accuracy_drop <= 100, "quantize.max_accuracy_drop",
               "in [0, 100] absolute points of the quality metric (0.5 = half a point of accuracy; 0 = no budget)",
               self.max_accuracy_drop)


@dataclass(frozen=True)
class ExportSpec:
    opset: int = 17
    parity_samples: int = 500
    fp32_max_abs_diff: float = 1e-3  # per unit of the largest |output| (at least 1): float32 rounding scales
    fp32_min_agreement: float = 0.99
    int8_min_agreement: float = 0.97
    # text INT8 student: word and position embedding tables INT8, one scale per row (a smaller file and peak
    # RSS, slower calls: benchmarks/README.md), so off unless size or memory matter more than latency
    int8_embeddings: bool = False
    # text-generation: each layer's attention as one onnxruntime GroupQueryAttention node (rotary, cache
    # append and grouped attention in one kernel; the same inputs and outputs) where the layout allows
    # (edgekd.lm_fuse); false keeps optimum's graph node for node, for a runtime without that operator
    fuse_attention: bool = True

    def __post_init__(self):
        _check(13 <= self.opset <= 21, "export.opset", "in [13, 21]", self.opset)
        _check(self.parity_samples > 0, "export.parity_samples", "> 0", self.parity_samples)
        _check(self.fp32_max_abs_diff > 0, "export.fp32_max_abs_diff", "> 0", self.fp32_max_abs_diff)
        for k in ("fp32_min_agreement", "int8_min_agreement"):
            _check(0 <= getattr(self, k) <= 1, f"export.{k}", "in [0, 1]", getattr(self, k))
