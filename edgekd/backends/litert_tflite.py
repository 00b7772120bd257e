"""LiteRT (`.tflite`, Android's own runtime): the mobile-int8-litert and mobile-fp32-litert targets.

Made from the PyTorch model with litert-torch (`litert_torch.convert`); INT8 is full-integer (INT8
weights per channel and INT8 activations, calibrated on training inputs) through litert-torch's PT2E
quantizer, and run with ai-edge-litert's interpreter. The program has a fixed batch of 1, as a phone app
classifies one input at a time; the runner loops over larger batches. Both packages are the optional
extra `pip install 'edgekd[litert]'`."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from . import Backend, first_line, register
from ..errors import EdgeKDError, InputError

NEEDS = "a .tflite needs LiteRT: pip install 'edgekd[litert]'"


def _available() -> str:
    import importlib.util

    missing = [m for m in ("litert_torch", "ai_edge_litert") if importlib.util.find_spec(m) is None]
    return f"{NEEDS} ({', '.join(missing)} not installed)" if missing else ""


def load(path: str, *, threads: int = 1, profile_prefix: str | None = None):
    """A runner in float: a full-integer program takes and returns INT8, so inputs are quantized and
    outputs dequantized with the program's own scales and zero points (what an app does too)."""
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        raise InputError("running a .tflite needs ai-edge-litert: pip install 'edgekd[litert]'") from None
    try:
        with _quiet_fd2():  # "INFO: Created TensorFlow Lite XNNPACK delegate for CPU." from C++
            it = Interpreter(model_path=str(path), num_threads=threads)
            it.allocate_tensors()
    except Exception as e:  # noqa: BLE001 - the interpreter raises untyped errors for bad files
        raise InputError(f"LiteRT cannot load '{path}': {first_line(e)}; is it a complete .tflite file?") from None
    inp, out = it.get_input_details()[0], it.get_output_details()[0]
    fixed = int(inp["shape"][0])
    s_in, z_in = inp["quantization"]
    s_out, z_out = out["quantization"]
    info = np.iinfo(inp["dtype"]) if np.issubdtype(inp["dtype"], np.integer) else None

    def one(x: np.ndarray) -> np.ndarray:
        if info is not None:  # x / scale + zero point, rounded and saturated to the input's integer type
            x = np.clip(np.round(x / s_in + z_in), info.min, info.max)
        it.set_tensor(inp["index"], np.ascontiguousarray(x, dtype=inp["dtype"]))
        it.invoke()
        y = it.get_tensor(out["index"])
        return (y.astype(np.float32) - z_out) * s_out if s_out else y.copy()

    def run(x: np.ndarray) -> np.ndarray:
        if len(x) == fixed:
            return one(x)
        # a program compiled for one batch size (LiteRT cannot resize these): one slice at a time
        return np.concatenate([one(x[i:i + fixed]) for i in range(0, len(x), fixed)])

    run.interpreter = it
    return run


class _quiet_fd2:
    """LiteRT's C++ logs to file descriptor 2 (delegate creation, op counts): diagnostics, not the
    user's concern. Silenced while loading and converting only."""

    def __enter__(self):
        import os
        import sys

        sys.stderr.flush()
        self.saved = os.dup(2)
        self.null = open(os.devnull, "w")
        os.dup2(self.null.fileno(), 2)

    def __exit__(self, *exc):
        import os

        os.dup2(self.saved, 2)
        os.close(self.saved)
        self.null.close()


def make(model, path: Path, *, int8: bool, calib_x, input_shape) -> dict:
    """The .tflite of a PyTorch model; for the INT8 student its QAT-tuned float model, quantized to full
    integer by litert-torch's PT2E quantizer (symmetric per-channel weights, per-tensor activations)."""
    import copy
    import os
    import warnings

    import torch

    if _available():
        raise EdgeKDError(_available())
    float_model = model.float_model() if int8 and hasattr(model, "float_model") else model
    float_model = copy.deepcopy(float_model).cpu().eval()
    example = (torch.zeros((1, *input_shape)),)
    os.environ.setdefault("LITERT_TORCH_SHOW_PROGRESS", "n")  # its progress lines go to stdout
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    with warnings.catch_warnings(), torch.no_grad(), _quiet_fd2(), _quiet_logs():
        warnings.simplefilter("ignore")
        import litert_torch

        if int8:
            from litert_torch.quantize.pt2e_quantizer import PT2EQuantizer, get_symmetric_quantization_config
            from litert_torch.quantize.quant_config import QuantConfig
            from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

            quantizer = PT2EQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True))
            prepared = prepare_pt2e(torch.export.export(float_model, example).module(), quantizer)
            x = np.ascontiguousarray(calib_x, dtype=np.float32)
            for i in range(len(x)):
                prepared(torch.from_numpy(x[i:i + 1]))
            converted = convert_pt2e(prepared, fold_quantize=False)  # litert-torch folds the Q/DQ pairs itself
            edge = litert_torch.convert(converted, example, quant_config=QuantConfig(pt2e_quantizer=quantizer))
        else:
            edge = litert_torch.convert(float_model, example)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        edge.export(str(tmp))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return {"op_types": op_types(path)}


def op_types(path: Path) -> dict[str, int]:
    """Operator counts of a .tflite read from its flatbuffer, as '<OP> <first input's type>'
    (CONV_2D INT8 runs an integer kernel, CONV_2D FLOAT32 a float one)."""
    from ai_edge_litert import schema_py_generated as schema

    model = schema.ModelT.InitFromPackedBuf(Path(path).read_bytes(), 0)
    op_names = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
    type_names = {v: k for k, v in vars(schema.TensorType).items() if not k.startswith("_")}
    counts: dict[str, int] = {}
    for g in model.subgraphs:
        for op in g.operators:
            code = model.operatorCodes[op.opcodeIndex]
            # builtinCode holds codes past 127; older files keep them in deprecatedBuiltinCode
            name = op_names.get(max(code.builtinCode, code.deprecatedBuiltinCode), "?")
            first = next((i for i in op.inputs if i >= 0), None)
            key = f"{name} {type_names.get(g.tensors[first].type, '?')}" if first is not None else name
            counts[key] = counts.get(key, 0) + 1
    return counts


class _quiet_logs:
    """torchao and torch's pytree log "Failed to load ..." and deprecation lines on first import."""

    NAMES = ("torchao", "torch.utils._pytree", "root")

    def __enter__(self):
        import logging

        self.saved = [(logging.getLogger(n if n != "root" else None), logging.getLogger(n if n != "root" else None).level)
                      for n in self.NAMES]
        for log, _ in self.saved:
            log.setLevel(logging.CRITICAL)

    def __exit__(self, *exc):
        for log, level in self.saved:
            log.setLevel(level)


def describe(folder: Path, name: str, meta: dict, target) -> dict:
    from ._mobile import device_estimates

    made = meta.get("made", {}).get(f"{name}.tflite", {})
    return {"mobile": {"model": f"{name}.tflite", "op_types": made.get("op_types"), **device_estimates(folder, target)}}


def report_section(r: dict) -> list[str]:
    mob = r.get("mobile") or {}
    ops = mob.get("op_types")
    if not ops:
        return []
    weighted = ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "BATCH_MATMUL")
    integer = sum(v for k, v in ops.items() if k.split()[0] in weighted and k.endswith("INT8"))
    total = sum(v for k, v in ops.items() if k.split()[0] in weighted)
    return ["", "## Mobile (LiteRT)", "",
            f"- Deliverable: `{mob['model']}`, a LiteRT flatbuffer converted by litert-torch"
            + (" (full-integer INT8 by litert-torch's PT2E quantizer, per-channel weights, from the QAT-tuned float "
               f"weights): {integer} of {total} convolution/matmul ops take INT8 inputs." if r["target_profile"].get(
                   "precision") == "int8" else "."),
            "- Ops of the program (with their first input's type): "
            + ", ".join(f"{k} x{v}" for k, v in sorted(ops.items())) + ".",
            "- **All timings in this report are host timings on this x86 machine**, through ai-edge-litert's "
            "interpreter (XNNPACK delegate). They say nothing about a phone's speed. No phone was measured."]


BACKEND = register(Backend(
    format="tflite", runtime="litert", extension=".tflite", source="torch", kinds=("image",), fixed_batch=1,
    description="LiteRT flatbuffer (Android's runtime)", load=load, package="ai_edge_litert.interpreter",
    install="'edgekd[litert]'", make=make, describe=describe, edgekd_int8=False, available=_available,
    report_section=report_section))
