"""Target profiles (`targets/<device>-<precision>[-<runtime>].toml`): the runtime, format, precision and
measurement settings a build benchmarks on. The runtime is left out of a name when it is ONNX Runtime;
the names of earlier releases stay accepted (ALIASES)."""

from __future__ import annotations

import os
import sys
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path

from .errors import TargetError
from .registry import closest

PRECISIONS = ("fp32", "int8", "int4")  # int4: weight-only, language models (task text-generation)
# earlier names -> the `<device>-<precision>[-<runtime>]` name
ALIASES = {"openvino-int8": "cpu-int8-openvino", "mobile-xnnpack-int8": "mobile-int8-executorch"}


def targets_dir() -> Path:
    """targets/ beside the package (source checkout, editable install) or under sys.prefix (wheel)."""
    env = os.environ.get("EDGEKD_TARGETS")
    candidates = [Path(env)] if env else []
    candidates += [Path(__file__).resolve().parent.parent / "targets", Path(sys.prefix) / "share" / "edgekd" / "targets"]
    for c in candidates:
        if c.is_dir():
            return c
    raise TargetError("no targets/ folder found; set EDGEKD_TARGETS to a folder of target TOML files")


@dataclass(frozen=True)
class Target:
    name: str
    description: str
    runtime: str
    precision: str
    threads: int = 1
    batch_sizes: list[int] = field(default_factory=lambda: [1, 32])
    warmup: int = 200
    iterations: int = 2000
    format: str = ""  # a registered backend's format (edgekd.backends); "" = the runtime's own format
    threads_sweep: list[int] = field(default_factory=list)  # more thread counts to time (host timings)
    pin_cores: bool = False  # pin each timed process to its first `threads` cores
    memory_budget_mb: float = 0.0  # peak RSS the deliverable model may use; 0 = no budget

    def __post_init__(self):
        def bad(key, want, got):
            raise TargetError(f"target '{self.name}': {key} must be {want}, got {got!r}")

        from . import backends

        if self.runtime not in backends.runtime_names():
            bad("runtime", " or ".join(backends.runtime_names()), self.runtime)
        if not self.format:
            object.__setattr__(self, "format", backends.for_runtime(self.runtime).format)
        if self.format not in backends.names() or backends.get(self.format).runtime != self.runtime:
            ok = [n for n in backends.names() if backends.get(n).runtime == self.runtime]
            bad("format", f"one that runtime {self.runtime} runs ({', '.join(ok)})", self.format)
        if self.precision not in PRECISIONS:
            bad("precision", " or ".join(PRECISIONS), self.precision)
        if not isinstance(self.threads, int) or self.threads < 1:
            bad("threads", "an integer >= 1", self.threads)
        if not self.batch_sizes or any(not isinstance(b, int) or b < 1 for b in self.batch_sizes):
            bad("batch_sizes", "a list of integers >= 1", self.batch_sizes)
        if self.batch_sizes[0] != 1:
            bad("batch_sizes", "a list starting with 1 (latency is measured at batch 1)", self.batch_sizes)
        if self.warmup < 0 or self.iterations < 10:
            bad("warmup/iterations", ">= 0 / >= 10", (self.warmup, self.iterations))
        if any(not isinstance(t, int) or t < 1 for t in self.threads_sweep):
            bad("threads_sweep", "a list of integers >= 1", self.threads_sweep)
        if not isinstance(self.memory_budget_mb, (int, float)) or self.memory_budget_mb < 0:
            bad("memory_budget_mb", "a number >= 0", self.memory_budget_mb)

    @property
    def backend(self):
        from . import backends

        return backends.get(self.format)

def target_names() -> list[str]:
    return sorted(p.stem for p in targets_dir().glob("*.toml"))


def load_target(name: str) -> Target:
    names = target_names()
    name = ALIASES.get(name, name)
    if name not in names:
        raise TargetError(f"target '{name}' is unknown{closest(name, names + list(ALIASES))} ({', '.join(names)})")
    path = targets_dir() / f"{name}.toml"
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as e:
        raise TargetError(f"target file '{path}' is not valid TOML ({e})") from None
    known = {f.name for f in fields(Target)} - {"name"}
    for key in data:
        if key not in known:
            raise TargetError(f"target '{name}': unknown key '{key}'{closest(key, known)}")
    return Target(name=name, **data)


def override_target(target: Target, overrides: list[str]) -> Target:
    """Apply `target.KEY=VALUE` settings (e.g. target.iterations=200), typed like the profile's field."""
    import dataclasses
    import typing

    from .overrides import coerce, parse_override

    hints = typing.get_type_hints(Target)
    kwargs = {}
    for text in overrides:
        key, value = parse_override(text)
        key = key.removeprefix("target.")
        known = [f.name for f in fields(Target) if f.name != "name"]
        if key not in known:
            raise TargetError(f"unknown target key 'target.{key}'{closest(key, known)}")
        kwargs[key] = coerce(f"target.{key}", hints[key], value, from_text=True, error=TargetError)
    return dataclasses.replace(target, **kwargs) if kwargs else target
