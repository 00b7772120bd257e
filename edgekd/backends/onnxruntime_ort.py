"""ONNX Runtime's mobile format (`.ort`), converted for ARM by onnxruntime's own tool: the mobile-*
targets. Its INT8 deliverable is verified on aarch64 kernels under emulation (edgekd.verify_arm), and
the report carries onnxruntime's NNAPI/CoreML usability check and named-device latency estimates."""

from __future__ import annotations

from pathlib import Path

from . import Backend, register
from .onnxruntime_onnx import OPTIONS, load, profile, signature


def make(onnx_path: Path, ort_path: Path) -> None:
    import shutil
    import subprocess
    import sys
    import tempfile

    from ..errors import EdgeKDError

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


def describe(folder: Path, name: str, meta: dict, target) -> dict:
    from ..export import op_types
    from ._mobile import device_estimates

    return {"mobile": {"model": f"{name}.ort", "usability_check": mobile_usability(folder / f"{name}.onnx"),
                       "op_types": op_types(folder / f"{name}.onnx"), **device_estimates(folder, target)}}


def report_section(r: dict) -> list[str]:
    mob = r.get("mobile") or {}
    if "usability_check" not in mob:
        return []
    return ["", "## Mobile", "",
            f"- Deliverable: `{mob['model']}`, ONNX Runtime's mobile format converted for ARM "
            "(INT8 QDQ with per-channel weights where the target is INT8: the form XNNPACK/NNAPI/CoreML consume).",
            "- **All timings in this report are host timings on this x86 machine.** They say nothing about a "
            "phone's speed: ARM kernels and mobile execution providers behave differently (on an x86 AVX2 "
            "host, mobile INT8 kernels can even be slower than FP32). No phone was measured.",
            "- Op types of the final model: " + ", ".join(f"{k} x{v}" for k, v in sorted(mob["op_types"].items())) + ".",
            *[f"- {v.strip()}" for v in mob["usability_check"].splitlines() if v.startswith("Model should perform well with")],
            "- onnxruntime's mobile usability check in full (NNAPI and CoreML coverage; it does not cover XNNPACK):", "",
            "```", *mob["usability_check"].splitlines(), "```"]


BACKEND = register(Backend(
    format="ort", runtime="onnxruntime", extension=".ort", description="ONNX Runtime's mobile format, for ARM",
    load=load, package="onnxruntime", install="onnxruntime", make=make, describe=describe, options=OPTIONS,
    profile=profile, arm_check=True, signature=signature, report_section=report_section))
