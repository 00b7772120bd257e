"""Named-device latency estimates: a phone's CPU cannot be timed from an x86 host, only bounded.

A model's multiply-accumulates (MACs) divided by a core's published peak MAC rate gives a lower
bound on its latency on that core; a stated utilisation turns it into a rough figure. Both are
estimates from datasheet numbers, never measurements: memory traffic, per-op overhead, im2col /
packing, requantization and the runtime's kernel choice are all outside this model.

Counting convention: one MAC per multiply-add of Conv, ConvTranspose, Gemm and MatMul (and their
integer forms); bias adds, activations, pooling, normalisation and Q/DQ are not counted. Counters
disagree by convention (MobileNetV2: 301-343 M across tools), and some count DequantizeLinear as
work on QDQ graphs, so count on the FP32 graph.
"""

from __future__ import annotations

from math import prod
from pathlib import Path

from .errors import InputError

# Peak MACs per cycle of ONE core, from Arm's Software Optimization Guides (SWOG): instruction
# throughput per cycle x lanes per 128-bit instruction. FP32: FMLA Vd.4S = 4 MACs. INT8: SDOT/UDOT
# Vd.4S, Vn.16B, Vm.16B = 16 MACs (the Armv8.2 dot-product extension; I8MM's SMMLA, where present,
# is not assumed). Clocks are one shipping SoC's published maximum for that core.
DEVICES: dict[str, dict] = {
    "Cortex-A55 @ 1.8 GHz": {
        # Arm Cortex-A55 SWOG (EPM128372) s4.15/4.16: FMLA and SDOT/UDOT Q-form throughput 1/cycle
        # (D-form 2/cycle): 4 FP32 / 16 INT8 MACs. Clock: Snapdragon 855's A55 cluster, 1.78 GHz.
        "ghz": 1.8, "fp32_macs_per_cycle": 4, "int8_macs_per_cycle": 16,
    },
    "Cortex-A76 @ 2.4 GHz": {
        # Arm Cortex-A76 SWOG (PJDOC-466751330-7215, v8.0) s2.1/3.x: two 128-bit FP/ASIMD pipes
        # (V0, V1), FMLA and SDOT/UDOT throughput 2/cycle: 8 FP32 / 32 INT8 MACs.
        # Clock: Raspberry Pi 5 (BCM2712, 4x Cortex-A76 at 2.4 GHz).
        "ghz": 2.4, "fp32_macs_per_cycle": 8, "int8_macs_per_cycle": 32,
    },
    "Cortex-A720 @ 3.0 GHz": {
        # Arm Cortex-A720 Core SWOG (109720, issue 7.0) s3.x: FMLA throughput 2, SDOT/UDOT
        # throughput 2 (pipes V0/V1): 8 FP32 / 32 INT8 MACs. Clock: Snapdragon 8 Gen 3's
        # 3.0 GHz A720 pair.
        "ghz": 3.0, "fp32_macs_per_cycle": 8, "int8_macs_per_cycle": 32,
    },
    "Cortex-X3 @ 3.2 GHz": {
        # Four 128-bit FP/ASIMD pipes. Arm Neoverse V2 SWOG (109898, issue 3.0; the server core
        # derived from Cortex-X3) s3: FMLA throughput 4, SDOT/UDOT throughput 4: 16 FP32 / 64 INT8
        # MACs. Clock: Snapdragon 8 Gen 2's X3 prime core, 3.2 GHz.
        "ghz": 3.2, "fp32_macs_per_cycle": 16, "int8_macs_per_cycle": 64,
    },
}

# An ASSUMPTION, not a measurement: the fraction of peak that a batch-1 inference of a small CNN
# reaches on one core. Small layers leave the SIMD pipes idle for packing, requantization, memory
# stalls and per-op dispatch; 20-30% is a common figure for such models. Peak (100%) is the bound.
UTILISATION_ASSUMED = 0.25

# op -> index of the weight input (Conv) or of input A (MatMul), integer forms included.
_CONV = {"Conv": 1, "ConvInteger": 1, "QLinearConv": 3}
_MATMUL = {"MatMul": 0, "MatMulInteger": 0, "QLinearMatMul": 0}


def _shapes(model, length: int | None = None) -> dict[str, list]:
    """Static shapes of every tensor at batch 1: a symbolic first dim of a graph input is set to 1
    before onnx shape inference, so that the counts are per image (or per text: its other symbolic dims
    set to `length`)."""
    import onnx

    model = onnx.ModelProto.FromString(model.SerializeToString())  # never modify the caller's model
    inits = {i.name for i in model.graph.initializer}
    for inp in model.graph.input:
        if inp.name in inits or not inp.type.tensor_type.HasField("shape"):
            continue
        dims = inp.type.tensor_type.shape.dim
        for i, d in enumerate(dims):
            if not d.dim_value and (i == 0 or length):
                d.ClearField("dim_param")
                d.dim_value = 1 if i == 0 else length
    try:
        inferred = onnx.shape_inference.infer_shapes(model, data_prop=True)
    except Exception as e:  # noqa: BLE001 - onnx raises several types for a malformed graph
        raise InputError(f"ONNX shape inference failed ({type(e).__name__}: {str(e).splitlines()[0][:150]})") from None
    if any(not d.HasField("dim_value") for vi in inferred.graph.value_info for d in vi.type.tensor_type.shape.dim):
        # shape arithmetic onnx leaves open (TF-style padding computes each Pad from Shape ops): onnxruntime's
        # symbolic inference folds it
        try:
            from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference

            inferred = SymbolicShapeInference.infer_shapes(model, auto_merge=True)
        except Exception:  # noqa: BLE001 - keep onnx's answer; a node it left open says so when counted
            pass
    model = inferred
    shapes = {i.name: list(i.dims) for i in model.graph.initializer}
    for vi in (*model.graph.input, *model.graph.value_info, *model.graph.output):
        t = vi.type.tensor_type
        if t.HasField("shape"):
            dims = [d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim]
            shapes.setdefault(vi.name, dims)
    return shapes


def _node_macs(node, shapes: dict[str, list]) -> int:
    def shape(i: int) -> list:
        s = shapes.get(node.input[i]) if i < len(node.input) else None
        if s is None or any(d is None or d < 0 for d in s):
            raise InputError(f"{node.op_type} node '{node.name}': shape of input '{node.input[i] if i < len(node.input) else i}' "
                             f"is not static after shape inference at batch 1; count on a model with fixed shapes")
        return s

    def output() -> list:
        y = shapes.get(node.output[0])
        if y is None or any(d is None or d < 0 for d in y):
            raise InputError(f"{node.op_type} node '{node.name}': output shape is not static after shape inference at batch 1")
        return y

    op = node.op_type
    if op in _CONV:  # Y [N, Cout, *out], W [Cout, Cin/groups, *kernel]
        return prod(output()) * prod(shape(_CONV[op])[1:])
    if op == "ConvTranspose":  # X [N, Cin, *in], W [Cin, Cout/groups, *kernel]: each input pixel scatters
        return prod(shape(0)) * prod(shape(1)[1:])
    if op in _MATMUL:  # numpy semantics: every output element is a K-long dot product
        return prod(output()) * shape(_MATMUL[op])[-1]
    if op == "Gemm":
        a, b = shape(0), shape(1)
        attrs = {at.name: at.i for at in node.attribute}
        m, k = (a[1], a[0]) if attrs.get("transA", 0) else (a[0], a[1])
        n = b[0] if attrs.get("transB", 0) else b[1]
        return m * n * k
    return 0


def count_macs(model, *, length: int | None = None) -> int:
    """Multiply-accumulates of one inference at batch 1: Conv, ConvTranspose, Gemm and MatMul (and
    their integer forms). `model`: a path to an .onnx file or an onnx.ModelProto. length: the size given
    to the inputs' other symbolic dimensions (a text model's sequence length); None refuses them."""
    import onnx

    if isinstance(model, (str, Path)):
        if not Path(model).is_file():
            raise InputError(f"ONNX model '{model}' does not exist")
        model = onnx.load(str(model))
    shapes = _shapes(model, length)
    return sum(_node_macs(n, shapes) for n in model.graph.node)


def estimate_latency(macs: int, *, precision: str, utilisation: float = UTILISATION_ASSUMED,
                     devices: dict[str, dict] | None = None) -> list[dict]:
    """Single-core, compute-bound latency of `macs` on each named device: a lower bound at 100% of
    peak, and a rough figure at an assumed utilisation (default UTILISATION_ASSUMED)."""
    if precision not in ("fp32", "int8"):
        raise ValueError(f"precision must be 'fp32' or 'int8', not {precision!r}")
    if not 0 < utilisation <= 1:
        raise ValueError(f"utilisation must be in (0, 1], not {utilisation}")
    rows = []
    for name, d in (devices or DEVICES).items():
        per_cycle = d[f"{precision}_macs_per_cycle"]
        peak_gmacs = per_cycle * d["ghz"]
        at_peak = macs / (peak_gmacs * 1e9) * 1e3
        rows.append({
            "device": name, "precision": precision, "macs": int(macs), "peak_gmacs": peak_gmacs,
            "estimate_ms_at_peak": at_peak, "estimate_ms_assumed": at_peak / utilisation,
            "utilisation_assumed": utilisation,
            "method": (f"MACs / ({per_cycle} {precision.upper()} MACs/cycle x {d['ghz']} GHz) on one core, "
                       f"then / {utilisation:.0%} assumed utilisation; compute-bound estimate, not a measurement"),
        })
    return rows
