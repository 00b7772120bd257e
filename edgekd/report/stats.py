"""The statistics behind every number a report states about quality: an interval for each model's score
and a paired test for each difference a verdict states, computed on the same test items, so "within
noise" comes from the data and never from a constant.

A task gives per-item scores (Task.item_scores): booleans (item right or wrong: accuracy) or floats (a
per-item score such as the cosine to the teacher). Booleans get Wilson's score interval (Wilson 1927)
and the exact McNemar test (McNemar 1947: the two-sided binomial test on the items only one model gets
right); floats get a percentile interval from a bootstrap of the items and a paired test of the mean
difference from its standard error. The size that would separate two models is the sample size of a
two-sided test at the 5% level with 80% power for the observed difference (Connor 1987 for McNemar)."""

from __future__ import annotations

import math

import numpy as np

LEVEL = 0.95
Z = 1.959963984540054  # two-sided 95%
Z_POWER = 0.8416212335729143  # 80% power
BOOTSTRAP = 2000  # resamples; the percentile bounds move by well under a tenth of their width between seeds
SEED = 0  # the same items give the same interval on every run


# the differences a verdict states, each "a vs b" as a - b on the same test items
COMPARED = (("student-fp32", "student-baseline"), ("student-int8", "student-fp32"), ("student-fp32", "teacher"),
            ("student-int8", "teacher"))


def judge(items: dict, *, points) -> tuple[dict, dict]:
    """({model: interval}, {"a vs b": paired test}) from each model's per-item scores on the test split;
    `points` turns a quality difference into the task's points (the "_pts" fields)."""
    intervals = {n: interval(v) for n, v in items.items()}
    comparisons = {}
    for a, b in COMPARED:
        c = paired(items[a], items[b])
        c.update({f"{k}_pts": points(c[k]) for k in ("diff", "low", "high")})
        comparisons[f"{a} vs {b}"] = c
    return intervals, comparisons


def interval(items) -> dict:
    """{"n", "mean", "low", "high", "method"}: the 95% interval of the mean of per-item scores."""
    x = np.asarray(items)
    n = len(x)
    if x.dtype == bool:
        low, high = wilson(int(x.sum()), n)
        method = "Wilson score interval"
    else:
        low, high = _bootstrap(x.astype(np.float64))
        method = "bootstrap percentile interval"
    return {"n": n, "mean": float(x.mean()) if n else float("nan"), "low": low, "high": high, "method": method}


def wilson(k: int, n: int, z: float = Z) -> tuple[float, float]:
    """Wilson's score interval of a proportion k/n: it stays inside [0, 1] and keeps its coverage near 0 and 1
    and on small n, where the normal interval does not."""
    if n == 0:
        return 0.0, 1.0
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def paired(a, b) -> dict:
    """a - b on the same items: {"n", "diff", "low", "high", "p", "method", "within_noise", "n_needed"}
    (+ "a_only", "b_only" for right/wrong items). `within_noise`: p >= 0.05. `n_needed`: the test items a
    difference of this size needs to be told from noise, None when there is no difference to detect."""
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape:
        raise ValueError(f"paired scores need the same items, got {a.shape} and {b.shape}")
    n = len(a)
    if a.dtype == bool and b.dtype == bool:
        a_only, b_only = int((a & ~b).sum()), int((b & ~a).sum())
        diff = (a_only - b_only) / n if n else 0.0
        low, high = _bootstrap_counts(a_only, b_only, n)
        disc = (a_only + b_only) / n if n else 0.0
        out = {"method": "exact McNemar test", "p": mcnemar(a_only, b_only), "a_only": a_only, "b_only": b_only,
               "n_needed": _n_mcnemar(diff, disc)}
    else:
        d = a.astype(np.float64) - b.astype(np.float64)
        diff = float(d.mean()) if n else 0.0
        low, high = _bootstrap(d)
        sd = float(d.std(ddof=1)) if n > 1 else 0.0
        se = sd / math.sqrt(n) if n else 0.0
        p = 1.0 if se == 0 and diff == 0 else 0.0 if se == 0 else math.erfc(abs(diff) / se / math.sqrt(2))
        out = {"method": "paired bootstrap (mean difference / its standard error)", "p": p,
               "n_needed": math.ceil(((Z + Z_POWER) * sd / abs(diff)) ** 2) if diff and sd else None}
    return {"n": n, "diff": diff, "low": low, "high": high, **out, "within_noise": out["p"] >= 1 - LEVEL}


def mcnemar(a_only: int, b_only: int) -> float:
    """Exact two-sided McNemar p-value: under "the two models are equally good" each of the a_only + b_only
    discordant items is a fair coin."""
    m, k = a_only + b_only, min(a_only, b_only)
    if m == 0:
        return 1.0
    # log-space binomial terms: m may be in the thousands
    logs = [math.lgamma(m + 1) - math.lgamma(i + 1) - math.lgamma(m - i + 1) - m * math.log(2) for i in range(k + 1)]
    top = max(logs)
    return min(1.0, 2 * math.exp(top) * sum(math.exp(v - top) for v in logs))


def _n_mcnemar(diff: float, disc: float) -> int | None:
    """Connor (1987): items for a two-sided McNemar test at 5% with 80% power, given the discordant share
    and the difference observed here."""
    if not diff or disc <= diff * diff:
        return None
    return math.ceil((Z * math.sqrt(disc) + Z_POWER * math.sqrt(disc - diff * diff)) ** 2 / (diff * diff))


def _bootstrap(x: np.ndarray) -> tuple[float, float]:
    """Percentile interval of the mean of x over BOOTSTRAP resamples of its items."""
    n = len(x)
    if n == 0:
        return float("nan"), float("nan")
    rng = np.random.default_rng(SEED)
    means = np.empty(BOOTSTRAP)
    step = max(1, 2_000_000 // n)  # resamples per chunk: at most ~2M indices in memory
    for i in range(0, BOOTSTRAP, step):
        k = min(step, BOOTSTRAP - i)
        means[i:i + k] = x[rng.integers(0, n, size=(k, n))].mean(axis=1)
    lo, hi = np.quantile(means, [(1 - LEVEL) / 2, (1 + LEVEL) / 2])
    return float(lo), float(hi)


def _bootstrap_counts(a_only: int, b_only: int, n: int) -> tuple[float, float]:
    """The paired bootstrap of a difference of right/wrong items: resampling n items draws the counts of
    (a right only, b right only, the rest) from a multinomial, so it costs nothing for any n."""
    if n == 0:
        return float("nan"), float("nan")
    rng = np.random.default_rng(SEED)
    c = rng.multinomial(n, [a_only / n, b_only / n, max(0.0, 1 - (a_only + b_only) / n)], size=BOOTSTRAP)
    d = (c[:, 0] - c[:, 1]) / n
    lo, hi = np.quantile(d, [(1 - LEVEL) / 2, (1 + LEVEL) / 2])
    return float(lo), float(hi)
