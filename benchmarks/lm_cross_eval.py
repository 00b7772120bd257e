"""Two language-model builds' teachers and deliverables, each on both builds' held-out sequences: the
comparison across builds whose data settings changed the test split (a larger data.n_train draws other
held-out functions from the source's one seeded stream).

    python benchmarks/lm_cross_eval.py OUT REPORT_A REPORT_B [--name NAME]

OUT is the builds' output folder (its .cache holds each build's sequences and exported models);
REPORT_A / REPORT_B are their report.json files (lm_frontier.py keeps a copy of each in OUT/reports).
Perplexity as the report computes it (edgekd.lm_bench, every token after the first, onnxruntime), at 2
threads. Writes the table into benchmarks/results/lm-frontier.json under "cross_test_sets"."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

RESULTS = Path(__file__).parent / "results" / "lm-frontier.json"


def main() -> None:
    import numpy as np

    from edgekd.lm_bench import bench_lm
    from edgekd.tasks._lm_data import Seqs

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out")
    ap.add_argument("reports", nargs=2)
    ap.add_argument("--name", default="")
    a = ap.parse_args()
    cache = Path(a.out) / ".cache"
    builds = {}
    for label, path in zip("AB", a.reports):
        r = json.loads(Path(path).read_text())
        builds[label] = {"config": Path(path).stem, "tests": cache / r["stages"]["soft-labels"]["cache"] / "test.json",
                         "models": {n: cache / r["stages"]["export"]["cache"] / n for n in ("teacher", r["deliverable"])}}
    table = {}
    for t in "AB":
        ids = [np.asarray(x) for x in Seqs.load(builds[t]["tests"]).ids]
        for m in "AB":
            for name, folder in builds[m]["models"].items():
                ppl = bench_lm(folder, threads=2, prompt_lengths=(8,), new_tokens=2, repeats=1, eval_ids=ids)["perplexity"]
                table[f"{name} of {m} on the test set of {t}"] = ppl
                print(f"{name} of {m} ({builds[m]['config']}) on the test set of {t}: {ppl:.3f}", flush=True)
    saved = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    saved.setdefault("cross_test_sets", {})[a.name or " vs ".join(b["config"] for b in builds.values())] = {
        "A": builds["A"]["config"], "B": builds["B"]["config"], "perplexity": table}
    RESULTS.write_text(json.dumps(saved, indent=2))


if __name__ == "__main__":
    main()
