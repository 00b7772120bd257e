"""The goal table every ratio script prints and writes: rows of (measure, value, goal, met)."""

from __future__ import annotations

import json
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def print_goals(title: str, rows: list[tuple]) -> None:
    width = max(len(r[0]) for r in rows) + 2
    print(title)
    print(f"{'measure':{width}s} {'value':>9s}  {'goal':8s} met")
    for name, value, goal, ok in rows:
        print(f"{name:{width}s} {value:9.3f}  {goal:8s} {'yes' if ok else 'NO'}")


def write_results(name: str, rows: list[tuple], **extra) -> Path:
    """benchmarks/results/NAME.json: the rows, then `extra` (models, stages, environment, ...)."""
    out = RESULTS / f"{name}.json"
    out.write_text(json.dumps({"rows": [{"measure": n, "value": v, "goal": g, "met": bool(ok)} for n, v, g, ok in rows],
                               **extra}, indent=2))
    return out
