"""How build time grows with data size (1x, 2x, 4x of a base training set) and with 1 vs 2
processes (torchrun, gloo), and what one distillation epoch costs next to one hard-label epoch
when the teacher's logits are cached. One run, ratios printed; results in benchmarks/results/.

    python benchmarks/scaling.py [--base 875] [--epochs 5]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def build(n_train: int, procs: int, epochs: int, out: Path) -> tuple[float, dict]:
    settings = [f"data.n_train={n_train}", f"teacher.epochs={max(1, epochs // 2)}", f"distill.epochs={epochs}",
                "distill.views=2", "quantize.epochs=1", "target.iterations=100", "target.warmup=20"]
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={procs}"] if procs > 1 \
        else [sys.executable]
    cmd = [*launcher, "-m", "edgekd", "build", "target=cpu-int8", "--out", str(out), "--force", *settings]
    t = time.perf_counter()
    subprocess.run(cmd, check=True, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wall = time.perf_counter() - t
    return wall, json.loads((out / "cpu-int8" / "report.json").read_text())["stages"]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--base", type=int, default=875, help="1x training-set size (4x must fit in 3,500)")
    ap.add_argument("--epochs", type=int, default=6)
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as d:
        for procs in (1, 2):
            for mult in (1, 2, 4):
                wall, st = build(args.base * mult, procs, args.epochs, Path(d) / f"p{procs}x{mult}")
                train = sum(st[s]["seconds"] for s in ("teacher", "soft-labels", "baseline", "distill", "qat"))
                rows.append({"processes": procs, "data": f"{mult}x", "n_train": args.base * mult, "wall_s": wall,
                             "training_s": train, "distill_s": st["distill"]["seconds"],
                             "baseline_s": st["baseline"]["seconds"]})
                print(f"{procs} proc  {mult}x ({args.base * mult:5d} images): build {wall:6.1f} s, "
                      f"training stages {train:6.1f} s", flush=True)
    one = {r["data"]: r for r in rows if r["processes"] == 1}
    two = {r["data"]: r for r in rows if r["processes"] == 2}
    print("\nratios (same run)")
    for m in ("2x", "4x"):
        print(f"  training time {m} / 1x, 1 process: {one[m]['training_s'] / one['1x']['training_s']:.2f}")
    for m in ("1x", "2x", "4x"):
        print(f"  training time 2 processes / 1 process at {m}: {two[m]['training_s'] / one[m]['training_s']:.2f}")
    epoch_ratio = [r["distill_s"] / r["baseline_s"] for r in rows if r["processes"] == 1]
    print(f"  distillation epoch / hard-label epoch (cached teacher logits): "
          f"{', '.join(f'{x:.2f}' for x in epoch_ratio)} (goal <= 1.2)")
    out = ROOT / "benchmarks" / "results" / "scaling.json"
    out.write_text(json.dumps({"rows": rows, "distill_over_hard_label_epoch": epoch_ratio}, indent=2))
    print(f"written to {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
