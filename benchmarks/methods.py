"""Which distillation method should I use here? Every family on the same student, budget and seeds.

    python benchmarks/methods.py [--quick] [--seeds 0,1,2] [--tasks image,text,text-ft,embedding] [--out build/methods]

For each task, one build (target cpu-int8) per (seed, method), all into <out>/<task>/ so that they share
the stage cache: per seed one teacher, one set of teacher targets and one hard-label baseline serve
every method, and each method trains its own student (and assistant) with the same budget:

- image: the MNIST example (examples/mnist) on a subset with fewer epochs;
- text: text-classification of docstring paragraphs of the standard library by package (six packages,
  written here as a labelled JSONL), the pretrained all-MiniLM-L6-v2 with a linear probe as teacher,
  its 2-layer subset as student (assistant: 4 layers); text-ft: the same with the whole teacher
  fine-tuned on the labels first (a stronger teacher);
- embedding: the MiniLM embedding example (examples/minilm-embed) with a smaller budget (assistant: 4
  layers between the 6-layer teacher and the 3-layer student).

A seed changes the split, the teacher and the student alike; methods are compared within a seed
(paired). The table gives mean +- std over seeds of the FP32 student's test quality, the INT8 student's
(run on onnxruntime from the exported file, as the build's benchmark measures it), and the training time
of the method (its distillation stage; plus the assistants for progressive, plus the first generation,
the baseline, for self) in CPU seconds of the build's process and in wall-clock seconds. "d vs response" is the paired difference to response distillation, marked *
when it exceeds the seed spread: |mean| > t(0.975, n-1) * std / sqrt(n), a paired t-test at 5%.
Training runs on one thread with passive OpenMP waits: with more threads on a shared machine, threads
spinning at barriers while others wait for a core inflated CPU seconds up to 8x between two builds of
the same stage; on one thread CPU seconds count the work done, while wall-clock seconds still stretch
with the other processes' load: compare methods by CPU seconds. Results go to
benchmarks/results/methods.json."""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # read when torch loads its OpenMP runtime

ROOT = Path(__file__).resolve().parent.parent
METHODS = ("baseline", "response", "feature", "relation", "self", "progressive")
# two-sided 95% quantiles of Student's t by degrees of freedom
T95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262}
PACKAGES = ("asyncio", "email", "http", "importlib", "logging", "xml")
FAST_TARGET = ["target.iterations=10", "target.warmup=2", "target.batch_sizes=1"]


def tasks(data: Path, quick: bool) -> dict:
    """{task: (recipe, overrides, assistant)}: the same student and budget for every method."""
    q = quick
    image = ["data.n_train=600" if q else "data.n_train=1500", "data.n_val=200" if q else "data.n_val=500",
             "data.n_test=300" if q else "data.n_test=1000", "teacher.epochs=5",
             f"distill.epochs={2 if q else 8}", "distill.views=2" if q else "distill.views=4", "quantize.epochs=1",
             "export.parity_samples=200"]
    text = ["task=text-classification", "data.source=jsonl", f"data.path={data / 'packages.jsonl'}",
            "data.n_train=160" if q else "data.n_train=800", "data.n_val=60" if q else "data.n_val=150",
            "data.n_test=80" if q else "data.n_test=300", "data.max_length=64", "data.train_comments=false",
            "data.train_packages=0", "teacher.fine_tune=probe", "teacher.epochs=8", "teacher.lr=0.01", "student.layers=2",
            "distill.losses.embedding_cos=0", f"distill.epochs={1 if q else 3}", "distill.lr=1e-3", "distill.batch_size=32",
            "quantize.epochs=1", "quantize.calibration=64", "quantize.train_texts=200", "export.parity_samples=32",
            "export.int8_min_agreement=0.8"]
    embedding = ["data.n_train=160" if q else "data.n_train=1200", "data.n_val=60" if q else "data.n_val=200",
                 "data.n_test=120" if q else "data.n_test=400", "data.max_length=64", "data.train_comments=false",
                 "data.train_packages=0", f"distill.epochs={1 if q else 2}", "quantize.epochs=1", "quantize.calibration=64",
                 "quantize.train_texts=100" if q else "quantize.train_texts=400", "export.parity_samples=32"]
    # the same with the whole teacher fine-tuned instead of a linear probe: 4 epochs of AdamW at 2e-4 (the
    # default 3 epochs at 5e-5 left it at 81%, below the 2-layer student's own fine-tune)
    probe = ("teacher.fine_tune=probe", "teacher.epochs=8", "teacher.lr=0.01")
    text_ft = [v for v in text if v not in probe] + ["teacher.fine_tune=always", "teacher.epochs=4", "teacher.lr=2e-4"]
    minilm = ROOT / "examples" / "minilm-embed" / "edgekd.toml"
    return {"image": (ROOT / "examples" / "mnist" / "edgekd.toml", image, "mnist-assistant"),
            "text": (minilm, text, "4"), "text-ft": (minilm, text_ft, "4"), "embedding": (minilm, embedding, "4")}


def write_packages(path: Path, per_package: int) -> None:
    """Docstring paragraphs of six standard-library packages, labelled with their package."""
    from edgekd.data.text import stdlib_documents

    docs, rows = stdlib_documents(), []
    for pkg in PACKAGES:
        paras = [p for mod in sorted(docs) if mod == pkg or mod.startswith(pkg + ".") for p in docs[mod]]
        rows += [{"text": p, "label": pkg} for p in paras[:per_package]]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def run(task: str, recipe_path: Path, overrides: list[str], method: str, seed: int, out: Path, assistant: str) -> dict:
    from edgekd.errors import RecipeError
    from edgekd.pipeline import build
    from edgekd.recipe import apply_overrides, load_recipe
    from edgekd.targets import load_target, override_target

    m = "response" if method == "baseline" else method  # the baseline comes with every build
    extra = [f"distill.method={m}"] + ([f"distill.assistants={assistant}"] if m == "progressive" else [])
    try:
        recipe = apply_overrides(load_recipe(recipe_path), [*overrides, f"seed={seed}", *extra])
    except RecipeError as e:  # a method this task refuses (self for text-embedding): reported as such
        return {"refused": str(e)}
    target = override_target(load_target("cpu-int8"), FAST_TARGET)
    r = build(recipe, target, out_dir=out / task, log=lambda *a: None).report
    q, st, models = r["quality_metric"], r["stages"], r["models"]

    def cost(names: list[str]) -> tuple[float, float]:
        """(wall, CPU) seconds of these stages, as recorded when they ran (a reused stage: its first run)."""
        recs = [json.loads((out / task / ".cache" / st[n]["cache"] / "stage.json").read_text()) for n in names]
        return sum(x["seconds"] for x in recs), sum(x.get("cpu_seconds", float("nan")) for x in recs)

    if method == "baseline":
        fp32, int8, stages = models["student-baseline"][q], None, ["baseline"]
        kept = r["training"]["baseline"].get("chosen_epoch")
    else:
        kept = r["training"]["distill"].get("chosen_epoch")
        fp32, int8 = models["student-fp32"][q], models["student-int8"][q]
        stages = ["distill"] + [k for k in st if k.startswith("assistant-")] + (["baseline"] if method == "self" else [])
    wall, cpu = cost(stages)
    return {"fp32": fp32, "int8": int8, "train_s": wall, "train_cpu_s": cpu, "kept_epoch": kept,
            "qat_s": st["qat"]["seconds"],
            "teacher": models["teacher"][q], "metric": q, "environment": r["environment"], "distill": {k: v for k, v in r["training"]["distill"].items()
                                                                        if k != "history"}}


def stats(v: list[float]) -> tuple[float, float]:
    m = sum(v) / len(v)
    return m, (math.sqrt(sum((x - m) ** 2 for x in v) / (len(v) - 1)) if len(v) > 1 else 0.0)


def paired(a: list[float], b: list[float]) -> dict:
    d = [x - y for x, y in zip(a, b)]
    m, s = stats(d)
    n = len(d)
    real = n > 1 and abs(m) > T95.get(n - 1, 1.96) * s / math.sqrt(n)
    return {"mean": m, "std": s, "real": bool(real)}


def table(task: str, rows: dict, seeds: list[int]) -> tuple[list[str], dict]:
    scale = 100.0  # accuracy and cosine both printed x100 (points)
    base = rows["response"]
    lines = [f"| method | FP32 {rows['response'][seeds[0]]['metric']} x100 | d vs response | INT8 x100 | "
             f"d INT8 vs response | training CPU s | training wall s | epoch kept |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    summary = {}
    for method, by_seed in rows.items():
        if any("refused" in v for v in by_seed.values()):
            lines.append(f"| {method} | refused: {next(iter(by_seed.values()))['refused']} | | | | | | |")
            summary[method] = {"refused": next(iter(by_seed.values()))["refused"]}
            continue
        fp = [by_seed[s]["fp32"] * scale for s in seeds]
        tr = [by_seed[s]["train_s"] for s in seeds]
        cpu = [by_seed[s]["train_cpu_s"] for s in seeds]
        s = {"fp32": stats(fp), "train_s": stats(tr), "train_cpu_s": stats(cpu)}
        cells = [f"{s['fp32'][0]:.2f} ± {s['fp32'][1]:.2f}"]
        d = paired(fp, [base[x]["fp32"] * scale for x in seeds])
        s["d_fp32"] = d
        cells.append("" if method == "response" else f"{d['mean']:+.2f} ± {d['std']:.2f}{' *' if d['real'] else ''}")
        if by_seed[seeds[0]]["int8"] is None:
            cells += ["", ""]
        else:
            i8 = [by_seed[x]["int8"] * scale for x in seeds]
            s["int8"] = stats(i8)
            d8 = paired(i8, [base[x]["int8"] * scale for x in seeds])
            s["d_int8"] = d8
            cells += [f"{s['int8'][0]:.2f} ± {s['int8'][1]:.2f}",
                      "" if method == "response" else f"{d8['mean']:+.2f} ± {d8['std']:.2f}{' *' if d8['real'] else ''}"]
        cells.append(f"{s['train_cpu_s'][0]:.0f} ± {s['train_cpu_s'][1]:.0f}")
        cells.append(f"{s['train_s'][0]:.0f} ± {s['train_s'][1]:.0f}")
        # 0: no epoch beat the starting weights on validation (a text student starts as the teacher's copy)
        cells.append(",".join(str(by_seed[x]["kept_epoch"]) for x in seeds))
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
        summary[method] = s
    return lines, summary


def main() -> None:
    import torch

    torch.set_num_threads(1)  # see the module docstring: CPU seconds that measure work, not spinning
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="one seed, tiny budgets: checks the script runs")
    ap.add_argument("--seeds", default=None, help="comma-separated (default 0,1,2; --quick: 0)")
    ap.add_argument("--tasks", default="image,text,text-ft,embedding")
    ap.add_argument("--out", default="build/methods")
    args = ap.parse_args()
    seeds = [int(s) for s in (args.seeds or ("0" if args.quick else "0,1,2")).split(",")]
    out = (ROOT / args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    write_packages(out / "packages.jsonl", 60 if args.quick else 210)
    load = {"start": os.getloadavg()}
    results, t_all, seconds = {}, time.perf_counter(), {}
    for task in args.tasks.split(","):
        recipe, overrides, assistant = tasks(out, args.quick)[task]
        t0, load0 = time.perf_counter(), os.getloadavg()[0]
        rows: dict = {m: {} for m in METHODS}
        for seed in seeds:
            for method in METHODS:
                t = time.perf_counter()
                rows[method][seed] = run(task, recipe, overrides, method, seed, out, assistant)
                v = rows[method][seed]
                print(f"[{task} seed {seed}] {method:12s} "
                      + ("refused" if "refused" in v else f"fp32 {v['fp32']:.4f} int8 {v['int8'] if v['int8'] is None else round(v['int8'], 4)} "
                         f"epoch {v['kept_epoch']} train {v['train_cpu_s']:.0f} CPU s, {v['train_s']:.0f} s "
                         f"(build {time.perf_counter() - t:.0f} s)"),
                      flush=True)
        seconds[task] = time.perf_counter() - t0
        lines, summary = table(task, rows, seeds)
        teacher = stats([rows["response"][s]["teacher"] * 100 for s in seeds])
        print(f"\n{task}: teacher {teacher[0]:.2f} ± {teacher[1]:.2f}, {len(seeds)} seed(s), {seconds[task]:.0f} s")
        print("\n".join(lines) + "\n", flush=True)
        results[task] = {"table": lines, "summary": summary, "teacher": teacher, "runs": rows, "overrides": overrides,
                         "recipe": str(recipe.relative_to(ROOT)), "assistant": assistant, "seconds": seconds[task],
                         "loadavg_1min_start_end": [round(load0, 2), round(os.getloadavg()[0], 2)]}
    load["end"] = os.getloadavg()
    total = time.perf_counter() - t_all
    print(f"all: {total:.0f} s, load average {load['start'][0]:.2f} -> {load['end'][0]:.2f}")
    if not args.quick:
        path = ROOT / "benchmarks" / "results" / "methods.json"
        # a run of some tasks replaces theirs and keeps the others' (whose builds' environments were folded)
        old = json.loads(path.read_text()) if path.exists() else {"tasks": {}}
        kept = {k: v for k, v in old["tasks"].items() if k not in results}
        for v in kept.values():  # files written before the load was recorded per task
            v.setdefault("loadavg_1min_start_end", old.get("loadavg_1min_start_end"))
        env = next((v["environment"] for t in results.values() for v in t["runs"]["response"].values()
                    if "environment" in v), old.get("environment"))
        results = {**kept, **results}
        for t in results.values():  # one copy of the environment, not one per build
            for by_seed in t["runs"].values():
                for v in by_seed.values():
                    v.pop("environment", None)
        path.write_text(json.dumps({"seeds": seeds, "total_s": sum(t["seconds"] for t in results.values()),
                                    "tasks": results, "environment": env}, indent=1, default=str))
        print(f"written to {path.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
