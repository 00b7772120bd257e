"""`edgekd check BUILD --max-drop 1 --min-speedup 3`: a build's deliverable against limits a CI job sets,
read from report.json alone: ACCEPT or REGRESSION with every reason."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from ..errors import InputError


@dataclass(frozen=True)
class GateSpec:
    """Limits on the deliverable against its teacher; None: not checked."""
    max_drop: float | None = None  # quality points the deliverable may lose against the teacher
    min_speedup: float | None = None  # p50 speedup over the teacher it must reach
    max_size_mb: float | None = None  # its file, in MB

    def __post_init__(self):
        if all(v is None for v in (self.max_drop, self.min_speedup, self.max_size_mb)):
            raise InputError("give at least one limit: --max-drop POINTS, --min-speedup X or --max-size-mb MB")
        for name, v in (("--max-drop", self.max_drop), ("--min-speedup", self.min_speedup),
                        ("--max-size-mb", self.max_size_mb)):
            if v is not None and v < 0:
                raise InputError(f"{name} must be >= 0, got {v:g}")


def read_report(build_dir: Path) -> dict:
    src = Path(build_dir) / "report.json"
    try:
        r = json.loads(src.read_text())
    except FileNotFoundError:
        raise InputError(f"'{src}' does not exist; give a build folder such as build/cpu-int8") from None
    except (ValueError, OSError) as e:
        raise InputError(f"'{src}' cannot be read as JSON ({e}); rebuild with edgekd build") from None
    if not isinstance(r, dict) or "models" not in r or "task" not in r:
        raise InputError(f"'{src}' is not a build's report (a combined report? give one target's folder, "
                         "such as build/cpu-int8)")
    return r


def check(r: dict, spec: GateSpec) -> tuple[bool, list[str]]:
    """(accepted, one line per limit: what was measured against what was allowed)."""
    from .markdown import deliverable_name, quality, speed_words

    name = deliverable_name(r)
    m, t = r["models"][name], r["models"]["teacher"]
    (q, label), qt = quality(r, m), quality(r, t)[0]
    lines, ok = [], True
    if spec.max_drop is not None:
        drop = qt - q
        c = (r.get("comparisons") or {}).get(f"{name} vs teacher")
        ci = f", 95% CI of the difference {c['low_pts']:+.2f} to {c['high_pts']:+.2f}" if c else ""
        good = drop <= spec.max_drop
        ok &= good
        lines.append(f"{'ok' if good else 'FAIL'}: {label} {q:.2f} vs teacher {qt:.2f}: {drop:.2f} points lost "
                     f"(limit {spec.max_drop:g}{ci})")
    if spec.min_speedup is not None:
        s = m["speedup_vs_teacher"]
        good = s >= spec.min_speedup
        ok &= good
        lines.append(f"{'ok' if good else 'FAIL'}: p50 {m['latency_ms']['p50']:.3f} ms vs teacher "
                     f"{t['latency_ms']['p50']:.3f} ms: {speed_words(s)} (limit {spec.min_speedup:g}x faster)")
    if spec.max_size_mb is not None:
        mb = m["size_bytes"] / 1e6
        good = mb <= spec.max_size_mb
        ok &= good
        lines.append(f"{'ok' if good else 'FAIL'}: {m['file']} is {mb:.2f} MB (limit {spec.max_size_mb:g} MB)")
    return ok, [f"{r['target']} {name} ({m['file']})", *lines]
