"""Backends: one module per deliverable format and the runtime that executes it, each registering one
`Backend` record. Every table of formats, runtimes, extensions, companion files, session options and
install hints in edgekd is derived from this registry (the manifest schema's enums are checked against
it by a test), so a new runtime is one module here plus its target file.

This module imports numpy alone: `edgekd.runtime` (the app loader, no torch) runs models through it,
and each backend imports its runtime library inside the function that needs it."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from ..errors import EdgeKDError, InputError
from ..registry import Registry

backends: Registry = Registry("format", error=InputError)

# A runner takes one array (single-input models) or {input name: array} (text models) and returns the
# first output as numpy.
Runner = Callable[[np.ndarray | dict], np.ndarray]


@dataclass(frozen=True)
class Backend:
    """One deliverable format and the runtime that runs it."""
    format: str  # the target's `format` and manifest.json's `format`
    runtime: str  # manifest.json's `runtime`; several formats may share one (onnx and ort)
    extension: str
    description: str
    load: Callable  # load(path, *, threads, profile_prefix=None) -> Runner
    package: str  # the module a process imports to run it (imported before the benchmark's memory baseline)
    install: str  # what `pip install` brings it
    # made from the exported ONNX file (make(onnx_path, out_path)), or from the PyTorch model
    # (make(model, out_path, *, int8, calib_x, input_shape) -> meta); None: the ONNX file is the format
    source: str = "onnx"
    make: Callable | None = None
    describe: Callable | None = None  # describe(folder, name, meta, target) -> report fields of the deliverable
    companions: tuple[str, ...] = ()  # suffixes of files that travel beside the model (OpenVINO's .bin)
    options: dict = field(default_factory=dict)  # session settings besides threads (manifest runtime_options)
    kinds: tuple[str, ...] = ("image", "text")  # the data kinds whose models it can carry
    fixed_batch: int = 0  # 0: any batch; n: a program compiled for batch n (the runner loops)
    # profile(path, *, threads) -> (runner, collect): a runner with the runtime's own per-kernel timing on, and
    # collect() -> {"by_op": {op type: share of kernel time}, "profiler": its name, ...what else it tells}
    # once the runner has run; None: the benchmark reports no kernel times
    profile: Callable | None = None
    arm_check: bool = False  # its INT8 deliverable is verified on aarch64 kernels (edgekd verify-arm)
    edgekd_int8: bool = True  # it runs the INT8 graph edgekd writes (the accuracy budget applies)
    available: Callable[[], str] | None = None  # -> "" when it can run here, else one line saying what is missing
    check: Callable | None = None  # check(path): raise InputError when the file is not a valid model
    signature: Callable | None = None  # signature(path) -> [{name, shape, dtype}] (None: read from manifest.json)
    report_section: Callable | None = None  # report_section(report.json) -> markdown lines about the deliverable
    # what a memory budget is held against: the process's peak RSS, or its increase over the imported runtime
    # where the Python runtime carries far more than an app links (ExecuTorch's imports torch)
    memory_measure: str = "peak_rss_mb"
    # called first in a fresh process that only runs models (the benchmark's): what the runtime's import
    # can leave out there
    runtime_only: Callable[[], None] | None = None

    @property
    def profiles(self) -> bool:
        return self.profile is not None

    def missing(self) -> str:
        """'' when this backend can run here; otherwise what to install, in one line."""
        import importlib.util

        if self.available is not None:
            return self.available()
        top = self.package.split(".")[0]
        return "" if importlib.util.find_spec(top) else f"format '{self.format}' needs {top}: pip install {self.install}"


def register(b: Backend) -> Backend:
    backends.register(b.format)(b)
    return b


def _builtin() -> Registry:
    from . import executorch_pte, litert_tflite, onnxruntime_onnx, onnxruntime_ort, openvino_ir  # noqa: F401

    return backends


def get(fmt: str) -> Backend:
    return _builtin().get(fmt)


def names() -> list[str]:
    return _builtin().names()


def runtime_names() -> list[str]:
    return sorted({get(n).runtime for n in names()})


def for_runtime(runtime: str) -> Backend:
    """The backend of a runtime's own format (the first registered for it: onnxruntime -> onnx)."""
    hits = [get(n) for n in names() if get(n).runtime == runtime]
    if not hits:
        from ..registry import closest

        raise InputError(f"runtime '{runtime}' is unknown{closest(runtime, runtime_names())} "
                         f"({', '.join(runtime_names())})")
    return next((b for b in hits if b.source == "onnx" and b.make is None), hits[0])


def for_file(path) -> Backend:
    suffix = Path(path).suffix
    for n in names():
        if get(n).extension == suffix:
            return get(n)
    exts = ", ".join(get(n).extension for n in names())
    raise InputError(f"'{path}' is not a model file edgekd runs; give one of: {exts}")


def load(path, *, threads: int = 1, profile_prefix: str | None = None) -> Runner:
    """A runner for a model file, on the runtime its extension names."""
    return for_file(path).load(str(path), threads=threads, profile_prefix=profile_prefix)


def companion_files(path: Path) -> list[Path]:
    """Files a model file needs beside it (OpenVINO's weights)."""
    path = Path(path)
    try:
        b = for_file(path)
    except InputError:
        return []
    return [path.with_suffix(s) for s in b.companions]


def file_size(path: Path) -> int:
    return sum(p.stat().st_size for p in (Path(path), *companion_files(path)))


def complete_feed(feed: dict, names: list[str]) -> dict:
    """A feed for a model's inputs: BERT-family exports also take token_type_ids, which are all zero
    for one segment of text (what edgekd's models are trained on), so a feed without them gets zeros."""
    if "token_type_ids" in names and "token_type_ids" not in feed and "input_ids" in feed:
        feed = {**feed, "token_type_ids": np.zeros_like(feed["input_ids"])}
    return {k: v for k, v in feed.items() if k in names}


def shares(totals: dict[str, float]) -> dict[str, float]:
    """{key: time} -> {key: share of the sum}, largest first (a profile's shape in report.json)."""
    total = sum(totals.values()) or 1.0
    return {k: round(v / total, 4) for k, v in sorted(totals.items(), key=lambda kv: -kv[1])}


def first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0][:200]


def check_target(target, *, kind: str) -> None:
    """Before any training: can this install run the target's format, and does it carry `kind` models?"""
    b = get(target.format)
    if kind not in b.kinds:
        raise InputError(f"target '{target.name}' ({b.description}) is for {' and '.join(b.kinds)} models; build this "
                         f"{kind} model for another target ({', '.join(n for n in _kind_formats(kind))} formats)")
    missing = b.missing()
    if missing:
        raise InputError(f"target '{target.name}': {missing}")


def _kind_formats(kind: str) -> list[str]:
    return [n for n in names() if kind in get(n).kinds]


def make_files(folder: Path, name: str, target, *, model=None, int8: bool = False, calib_x=None,
               input_shape=None) -> tuple[list[str], dict]:
    """The files of model `name` to check against its PyTorch model: `<name>.onnx` (already exported)
    and the target's format, made from that ONNX file or from `model` -> (file names, what making said)."""
    folder = Path(folder)
    b = get(target.format)
    files = [f"{name}.onnx"]
    made: dict = {}
    if b.make is not None:
        out = folder / f"{name}{b.extension}"
        try:
            if b.source == "onnx":
                b.make(folder / f"{name}.onnx", out)
            else:
                made = b.make(model, out, int8=int8, calib_x=calib_x, input_shape=input_shape) or {}
        except EdgeKDError:
            raise
        except Exception as e:  # noqa: BLE001 - converters raise anything (assertions in their passes): one line
            raise EdgeKDError(f"{b.description}: the converter could not make {out.name} ({type(e).__name__}: "
                              f"{first_line(e)}); this model is not supported there yet: build another target "
                              "(edgekd targets) or run with --debug for the converter's traceback") from e
        files.append(out.name)
    return files, made


def describe(folder: Path, target, meta: dict) -> dict:
    """What the report says about the target's form (layer precisions, mobile checks, estimates)."""
    from ..artifacts import deliverable

    b = get(target.format)
    return b.describe(Path(folder), deliverable(target), meta, target) if b.describe else {}
