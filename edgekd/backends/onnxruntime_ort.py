"""ONNX Runtime's mobile format (`.ort`), converted for ARM by onnxruntime's own tool: the mobile-*
targets. Its INT8 deliverable is verified on aarch64 kernels under emulation (edgekd.verify_arm), and
the report carries onnxruntime's NNAPI/CoreML usability check and named-device latency estimates."""

from __future__ import annotations

from pathlib import Path

from . import Backend, register
from .onnxruntime_onnx import OPTIONS, load, profile, signature


def make(onnx_path: Path, ort_path: Path) -> None:
    """onnxruntime's converter (tools.convert_onnx_models_to_ort: ARM, fixed optimizations), called in this
    process (a subprocess per model cost seconds of imports each); its printed progress is kept off the
    terminal and its last line is the error when it fails."""
    import contextlib
    import io
    import shutil
    import tempfile

    from onnxruntime.tools.convert_onnx_models_to_ort import OptimizationStyle, convert_onnx_models_to_ort

    from ..errors import EdgeKDError

    with tempfile.TemporaryDirectory() as d:
        src = Path(d) / onnx_path.name
        shutil.copy2(onnx_path, src)
        said = io.StringIO()
        try:
            with contextlib.redirect_stdout(said), contextlib.redirect_stderr(said):
                convert_onnx_models_to_ort(src, output_dir=Path(d) / "out", target_platform="arm",
                                           optimization_styles=[OptimizationStyle.Fixed])
        except Exception as e:  # noqa: BLE001  (the converter raises whatever onnxruntime raised)
            said.write(f"\n{type(e).__name__}: {e}")
        made = list((Path(d) / "out").glob("*.ort"))
        if len(made) != 1:
            tail = (said.getvalue().strip().splitlines() or ["no output"])[-1]
            raise EdgeKDError(f"converting {onnx_path.name} to .ort failed: {tail}")
        shutil.move(str(made[0]), ort_path)


def mobile_usability(onnx_path: Path) -> str:
    """onnxruntime's own verdict on NNAPI and CoreML coverage (ops, partitions), as text: what its
    tools.check_onnx_model_mobile_usability prints, run in this process through its logger."""
    import contextlib
    import io
    import logging

    from onnxruntime.tools.mobile_helpers import usability_checker

    said = io.StringIO()
    log = logging.getLogger("edgekd.mobile_usability")
    log.propagate, log.level = False, logging.INFO
    handler = logging.StreamHandler(said)
    handler.setFormatter(logging.Formatter("%(message)s"))
    log.addHandler(handler)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            try_eps = usability_checker.analyze_model(onnx_path, skip_optimize=False, logger=log)
    except Exception as e:  # noqa: BLE001  (the checker raises whatever onnxruntime raised)
        return f"(the check failed: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})"
    finally:
        log.removeHandler(handler)
    # the checker's own closing advice (the tool's command-line entry point logs it)
    log_end = ("As NNAPI or CoreML may provide benefits with this model it is recommended to compare the performance "
               "of the model using the NNAPI EP on Android, and the CoreML EP on iOS, against the performance using "
               "the CPU EP." if try_eps else "For optimal performance the model should be used with the CPU EP.")
    text = (said.getvalue().strip() + "\n" + log_end).replace(str(onnx_path), onnx_path.name)
    return "\n".join(line.rstrip() for line in text.splitlines())


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
