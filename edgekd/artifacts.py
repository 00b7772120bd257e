"""The models a build writes and their files: names, the deliverable, checksums. File formats and
runtimes are edgekd.backends' registry."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

MODEL_NAMES = ("teacher", "student-baseline", "student-fp32", "student-int8")


def model_file(name: str, target) -> str:
    """The file of model `name` in the target's format."""
    from . import backends

    return name + backends.get(target.format).extension


def deliverable(target) -> str:
    """Which model the target ships (student-int4: a language model's weight-only INT4)."""
    return "student-fp32" if target.precision == "fp32" else f"student-{target.precision}"


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def write_atomic(path: Path, data: str | bytes) -> None:
    """Write a file whole or not at all: a temporary file beside it, renamed into place (a killed write
    leaves the previous file, never half of one)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        tmp.write_bytes(data) if isinstance(data, bytes) else tmp.write_text(data, encoding="utf-8")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
