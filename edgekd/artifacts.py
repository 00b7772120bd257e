"""The one table of deliverable formats: file extension and the runtime that executes it. Every place
that names a model file, picks a runtime for a file, or writes `format` into manifest.json reads it."""

from __future__ import annotations

import hashlib
from pathlib import Path

# format -> (extension, runtime that runs it)
FORMATS = {
    "onnx": (".onnx", "onnxruntime"),
    "ort": (".ort", "onnxruntime"),  # ONNX Runtime's mobile format
    "openvino-ir": (".xml", "openvino"),  # + a .bin of weights beside it
    "pte": (".pte", "executorch"),  # an ExecuTorch program
}
MODEL_NAMES = ("teacher", "student-baseline", "student-fp32", "student-int8")


def target_format(target) -> str:
    """The format of a target's deliverable: OpenVINO targets run IR; the others say it in `format`."""
    return "openvino-ir" if target.runtime == "openvino" else target.format


def model_file(name: str, target) -> str:
    return name + FORMATS[target_format(target)][0]


def deliverable(target) -> str:
    """Which of MODEL_NAMES the target ships."""
    return "student-int8" if target.precision == "int8" else "student-fp32"


def runtime_for(path) -> str:
    suffix = Path(path).suffix
    for ext, runtime in FORMATS.values():
        if ext == suffix:
            return runtime
    return "onnxruntime"


def format_for(path) -> str:
    suffix = Path(path).suffix
    return next((f for f, (ext, _) in FORMATS.items() if ext == suffix), "onnx")


def companion_files(path: Path) -> list[Path]:
    """Files a model file needs beside it (OpenVINO's weights)."""
    return [path.with_suffix(".bin")] if path.suffix == ".xml" else []


def file_size(path: Path) -> int:
    return sum(p.stat().st_size for p in (path, *companion_files(path)))


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
