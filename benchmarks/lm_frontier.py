"""The SmolLM2 example's frontier: student layers x output vocabulary (lm.vocab) x INT4 / INT8 weights,
against the goals that pull apart (decode >= 4x the teacher's tokens/s, file <= 15% of the teacher's,
perplexity <= 1.3x the teacher's on held-out text of the domain, the build's stages within 30 minutes from
nothing), and the default picked from it.

    python benchmarks/lm_frontier.py [--out build-lm-frontier] [--targets cpu-int4[,cpu-int8]]
        [--configs "student.layers=12;student.layers=12 lm.vocab=8192;student.layers=18 lm.vocab=8192"]
        [--report-only] [extra key=value ...]

Each `;`-separated entry of --configs is one student (space-separated recipe overrides), built for each
target into one output folder, so the teacher, its generated data and its top-k are computed once and
shared (lm.vocab and the student's layers are not inputs of the teacher's stages). Every point is the
deliverable of one build: its decode tokens/s at 1 thread against the teacher FP32 of the same build, in
fresh onnxruntime processes, its file size and its held-out perplexity. Points measured before with the
same extra overrides are kept, so the grid can be filled over several runs; each CPU's points are a
frontier of their own (speed ratios move with the CPU). Writes
benchmarks/results/lm-frontier.json and prints the table and the pick: the lowest perplexity among the
points meeting every goal, else among those meeting the speed and size goals, else the fastest."""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

from _goals import cpu_of

ROOT = Path(__file__).resolve().parent.parent
RECIPE = ROOT / "examples" / "smollm-distill" / "edgekd.toml"
RESULTS = Path(__file__).parent / "results" / "lm-frontier.json"
GOALS = {"decode_speedup": 4.0, "size_ratio": 0.15, "perplexity_ratio": 1.3, "build_minutes": 30.0}
DEFAULT_CONFIGS = "student.layers=12;student.layers=12 lm.vocab=8192;student.layers=18 lm.vocab=8192"


def build(config: list[str], target: str, out: Path, extra: list[str]) -> dict:
    t0 = time.perf_counter()
    cmd = [sys.executable, "-m", "edgekd", "build", f"recipe={RECIPE}", f"target={target}", "--out", str(out),
           *config, *extra]
    subprocess.run(cmd, check=True)
    r = json.loads((out / target / "report.json").read_text())
    keep = out / "reports" / f"{target}-{'_'.join(config) or 'recipe'}.json"
    keep.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(out / target / "report.json", keep)  # the next build of the target overwrites its folder
    r["wall_seconds"] = time.perf_counter() - t0
    return r


def point(config: list[str], target: str, r: dict) -> dict:
    q = r["models"][r["deliverable"]]
    v = r.get("vocab") or {}
    return {"config": " ".join(config) or "(the recipe)", "target": target, "deliverable": r["deliverable"],
            "cpu": cpu_of(r),
            "params": q.get("params"), "vocab_kept": v.get("kept"), "vocab_test_coverage": v.get("test_coverage"),
            "decode_tok_s": q["decode_tok_s"]["mean"], "teacher_decode_tok_s": r["models"]["teacher"]["decode_tok_s"]["mean"],
            "decode_speedup": q["decode_speedup_vs_teacher"], "size_mb": q["size_bytes"] / 1e6,
            "size_ratio": q["size_ratio_vs_teacher"], "perplexity": q["perplexity"],
            "teacher_perplexity": r["models"]["teacher"]["perplexity"], "perplexity_ratio": q["perplexity_ratio_vs_teacher"],
            "fp32_perplexity": r["models"]["student-fp32"]["perplexity"],
            "baseline_perplexity": r["models"]["student-baseline"]["perplexity"],
            "stage_seconds": {k: round(s["seconds"], 1) for k, s in r["stages"].items() if not s.get("cached")},
            # from nothing: every stage's own time, a cached one's as measured when it ran
            "build_minutes": round(sum(s["seconds"] for s in r["stages"].values()) / 60, 1),
            "wall_seconds": round(r["wall_seconds"], 1)}


def meets(p: dict) -> dict[str, bool]:
    return {"decode_speedup": p["decode_speedup"] >= GOALS["decode_speedup"],
            "size_ratio": p["size_ratio"] <= GOALS["size_ratio"],
            "perplexity_ratio": p["perplexity_ratio"] <= GOALS["perplexity_ratio"],
            "build_minutes": p.get("build_minutes") is not None and p["build_minutes"] <= GOALS["build_minutes"]}


def where(p: dict) -> str:
    return p.get("cpu", "CPU not recorded")


def pick(points: list[dict]) -> tuple[dict, str]:
    every = [p for p in points if all(meets(p).values())]
    if every:
        return min(every, key=lambda p: p["perplexity"]), "the lowest perplexity meeting every goal"
    fit = [p for p in points if meets(p)["decode_speedup"] and meets(p)["size_ratio"]]
    if fit:
        return min(fit, key=lambda p: p["perplexity"]), "the lowest perplexity meeting the speed and size goals"
    return max(points, key=lambda p: p["decode_speedup"]), "none meets the speed and size goals: the fastest"


def table(points: list[dict]) -> list[str]:
    out = ["| student | target | head tokens (held-out coverage) | decode tok/s (vs teacher) | size (vs teacher) | "
           "perplexity (vs teacher) | FP32 / baseline perplexity | build min |", "|---|---|---:|---:|---:|---:|---:|---:|"]
    for p in points:
        cov = f" ({100 * p['vocab_test_coverage']:.1f}%)" if p.get("vocab_test_coverage") is not None else ""
        out.append(f"| {p['config']} | {p['target']} | {p['vocab_kept'] or 'all'}{cov} | "
                   f"{p['decode_tok_s']:.1f} ({p['decode_speedup']:.2f}x) | {p['size_mb']:.1f} MB "
                   f"({100 * p['size_ratio']:.1f}%) | {p['perplexity']:.2f} ({p['perplexity_ratio']:.2f}x) | "
                   f"{p['fp32_perplexity']:.2f} / {p['baseline_perplexity']:.2f} | {p.get('build_minutes') or '-'} |")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(ROOT / "build-lm-frontier"))
    ap.add_argument("--targets", default="cpu-int4")
    ap.add_argument("--configs", default=DEFAULT_CONFIGS)
    ap.add_argument("--report-only", action="store_true")
    ap.add_argument("extra", nargs="*", help="recipe overrides passed to every build")
    a = ap.parse_args()
    saved = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    # a point is (student, target, CPU): speed ratios move with the CPU (AVX-512 and AMX against AVX2),
    # so each CPU's points form their own frontier and their own pick
    points = {(p["config"], p["target"], where(p)): p for p in saved.get("points", [])} if saved.get("extra") == a.extra else {}
    if not a.report_only:
        for config in [c.split() for c in a.configs.split(";")]:
            for target in a.targets.split(","):
                p = point(config, target, build(config, target, Path(a.out), a.extra))
                points[(p["config"], p["target"], where(p))] = p
                RESULTS.parent.mkdir(parents=True, exist_ok=True)
                RESULTS.write_text(json.dumps({**saved, "recipe": str(RECIPE.relative_to(ROOT)), "extra": a.extra,
                                               "goals": GOALS, "points": list(points.values())}, indent=2))
    if not points:
        sys.exit("no points measured yet: run without --report-only")
    for cpu in dict.fromkeys(where(p) for p in points.values()):
        rows = [p for p in points.values() if where(p) == cpu]
        print(f"\n{cpu}\n" + "\n".join(table(rows)))
        best, why = pick(rows)
        print(f"\npick ({why}): {best['config']} on {best['target']}; "
              + ", ".join(f"{k} {'met' if ok else 'NOT met'}" for k, ok in meets(best).items()))


if __name__ == "__main__":
    main()
