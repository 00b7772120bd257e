"""The report's figures: the accuracy-speed frontier (drawn from plain points, so a benchmark that sweeps
student configurations draws its own with the same code), file sizes and latency distributions; `plots`
and `combined_plot` draw them from report.json.

Log axes get their ticks here, not from matplotlib's defaults: those label every minor tick of a
narrow range ("3x10^-2 4x10^-2 ...") and overlap. A few round values (1-2-5, then 1-3, then 1 per decade)
in plain units are tried, densest first, and the first set whose labels do not overlap once drawn is kept.
matplotlib is imported inside the functions: `import edgekd.report` stays light."""

from __future__ import annotations

import math
from pathlib import Path
from typing import NamedTuple, Sequence

from .markdown import SHORT, latency_note, quality, task_of


class Point(NamedTuple):
    """One model on the frontier: quality in the caller's unit (the report uses %), group picks the marker."""
    label: str
    latency_ms: float
    quality: float
    group: str = ""


def pareto_front(points: dict[str, tuple[float, float]]) -> set[str]:
    """Names not dominated in (lower latency, higher quality)."""
    front = set()
    for n, (lat, acc) in points.items():
        if not any((l2 <= lat and a2 >= acc) and (l2 < lat or a2 > acc) for m, (l2, a2) in points.items() if m != n):
            front.add(n)
    return front


# ticks -----------------------------------------------------------------------------------------------

MAX_TICKS = 8  # more labels than this on one axis are read as a ruler, not as values


def _round_ticks(lo: float, hi: float) -> list[list[float]]:
    """Candidate tick sets inside [lo, hi], densest first. A span too narrow for two round log values
    gets evenly spaced ones (a log axis over less than a factor of two is nearly linear)."""
    from matplotlib.ticker import MaxNLocator

    decades = range(math.floor(math.log10(lo)) - 1, math.ceil(math.log10(hi)) + 1)
    sets = []
    sparse = max(2, math.ceil(len(decades) / MAX_TICKS))  # a decade every so many: any span fits
    for mantissas, every in (((1, 1.5, 2, 3, 5, 7), 1), ((1, 2, 5), 1), ((1, 3), 1), ((1,), 1), ((1,), sparse)):
        ticks = [float(f"{m}e{e}") for e in decades if e % every == 0 for m in mantissas]
        ticks = [t for t in ticks if lo <= t <= hi]
        if 2 <= len(ticks) <= MAX_TICKS and ticks not in sets:
            sets.append(ticks)
    if not sets:
        for n in (4, 3, 2):
            ticks = [float(f"{t:.6g}") for t in MaxNLocator(n, steps=[1, 2, 2.5, 5, 10]).tick_values(lo, hi)]
            sets.append([t for t in ticks if lo <= t <= hi])
    return [t for t in sets if len(t) >= 2] or [[lo, hi]]


def plain(v: float, unit: str) -> str:
    """0.05 ms, 1 ms, 40 ms; bytes as 50 kB, 2 MB (no powers of ten a reader must decode)."""
    if unit == "B":
        for scale, name in ((1e9, "GB"), (1e6, "MB"), (1e3, "kB")):
            if v >= scale:
                return f"{v / scale:g} {name}"
        return f"{v:g} B"
    return f"{v:g} {unit}"


def _labels_overlap(labels) -> bool:
    boxes = [t.get_window_extent() for t in labels if t.get_visible() and t.get_text()]
    return any(a.overlaps(b) for i, a in enumerate(boxes) for b in boxes[i + 1:])


def readable_log_axis(ax, which: str, lo: float, hi: float, *, unit: str) -> None:
    """A log axis over the data's [lo, hi] (with a margin) labelled with round values in `unit`, no minor
    labels, no two labels overlapping (checked on the drawn figure)."""
    from matplotlib.ticker import FixedLocator, NullFormatter, NullLocator

    axis = ax.xaxis if which == "x" else ax.yaxis
    pad = (hi / lo) ** 0.06 * 1.08  # a margin that stays visible on a wide span and a narrow one
    lo, hi = lo / pad, hi * pad
    (ax.set_xscale if which == "x" else ax.set_yscale)("log")
    (ax.set_xlim if which == "x" else ax.set_ylim)(lo, hi)
    axis.set_minor_locator(NullLocator())
    axis.set_minor_formatter(NullFormatter())
    sets = _round_ticks(lo, hi)
    for ticks in [*sets, [sets[-1][0], sets[-1][-1]]]:  # at worst, the two ends alone
        axis.set_major_locator(FixedLocator(ticks))
        axis.set_ticklabels([plain(t, unit) for t in ticks])
        ax.figure.canvas.draw()
        if not _labels_overlap(axis.get_ticklabels()):
            return


def _span(values) -> tuple[float, float]:
    values = [v for v in values if v and v > 0]
    return min(values), max(values)


# figures ---------------------------------------------------------------------------------------------

_MARKERS = "o*sD^vP"


def frontier_figure(points: Sequence[Point | tuple], *, quality_label: str, latency_label: str = "p50 latency",
                    title: str | None = None):
    """Quality against latency (log), one marker per point and group; the Pareto-optimal points (nothing
    both faster and better) joined by a line and labelled. Returns the matplotlib figure."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pts = [Point(*p) for p in points]
    front = pareto_front({i: (p.latency_ms, p.quality) for i, p in enumerate(pts)})
    groups = list(dict.fromkeys(p.group for p in pts))
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for k, g in enumerate(groups):
        mine = [p for p in pts if p.group == g]
        ax.scatter([p.latency_ms for p in mine], [p.quality for p in mine], s=70, marker=_MARKERS[k % len(_MARKERS)],
                   color=f"C{k}", label=g or None, zorder=3)
    on = sorted((pts[i] for i in front), key=lambda p: p.latency_ms)
    ax.plot([p.latency_ms for p in on], [p.quality for p in on], "k--", lw=1, zorder=2, label="Pareto front")
    readable_log_axis(ax, "x", *_span(p.latency_ms for p in pts), unit="ms")
    q_lo, q_hi = min(p.quality for p in pts), max(p.quality for p in pts)
    margin = max(0.12 * (q_hi - q_lo), 0.5)  # room above and below for the labels
    ax.set_ylim(q_lo - margin, q_hi + margin)
    ax.set_xlabel(f"{latency_label}, ms (log)")
    ax.set_ylabel(quality_label)
    ax.set_title(title or f"{quality_label} vs latency")
    ax.grid(True, which="major", color="#e5e5e5", lw=0.6, zorder=0)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1), frameon=False)
    # frontier labels first: they always get a place; the others only where they fit
    order = sorted(range(len(pts)), key=lambda i: i not in front)
    _place_labels(ax, [(pts[i], i in front) for i in order])
    return fig


def _place_labels(ax, items: list[tuple[Point, bool]]) -> None:
    """Each label at the first of a few offsets around its point where it overlaps no other label nor
    marker and stays inside the axes; a frontier label that fits nowhere keeps the first offset."""
    fig = ax.figure
    fig.canvas.draw()
    frame = ax.get_window_extent()
    from matplotlib.transforms import Bbox

    taken = []
    for p, _ in items:
        x, y = ax.transData.transform((p.latency_ms, p.quality))
        taken.append(Bbox.from_extents(x - 6, y - 6, x + 6, y + 6))
    offsets = [(6, 6, "left", "bottom"), (6, -6, "left", "top"), (-6, 6, "right", "bottom"),
               (-6, -6, "right", "top"), (0, 10, "center", "bottom"), (0, -10, "center", "top")]
    for p, on_front in items:
        style = dict(fontsize=8, fontweight="bold" if on_front else "normal", color="black" if on_front else "#555")
        for n, (dx, dy, ha, va) in enumerate(offsets):
            t = ax.annotate(p.label, (p.latency_ms, p.quality), xytext=(dx, dy), textcoords="offset points",
                            ha=ha, va=va, **style)
            box = t.get_window_extent()
            inside = frame.x0 <= box.x0 and box.x1 <= frame.x1 and frame.y0 <= box.y0 and box.y1 <= frame.y1
            if inside and not any(box.overlaps(b) for b in taken):
                taken.append(box)
                break
            t.remove()
        else:
            if on_front:
                dx, dy, ha, va = offsets[0]
                ax.annotate(p.label, (p.latency_ms, p.quality), xytext=(dx, dy), textcoords="offset points",
                            ha=ha, va=va, **style)


def save_frontier(path, points: Sequence[Point | tuple], **kwargs) -> Path:
    """frontier_figure(points, **kwargs) written as a PNG at `path`."""
    import matplotlib.pyplot as plt

    fig = frontier_figure(points, **kwargs)
    fig.savefig(path, dpi=130, bbox_inches="tight")
    plt.close(fig)
    return Path(path)


def sizes_figure(sizes: dict[str, float]):
    """File size per model (bytes), on a log axis: a teacher can be a hundred times its INT8 student."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 0.5 + 0.45 * len(sizes)))
    names = list(sizes)[::-1]  # the first model on top
    ax.barh(names, [sizes[n] for n in names], color="#4c72b0")
    lo, hi = _span(sizes.values())
    readable_log_axis(ax, "x", lo / 2, hi, unit="B")  # the shortest bar stays visible
    for i, n in enumerate(names):
        ax.annotate(plain(float(f"{sizes[n]:.3g}"), "B"), (sizes[n], i), xytext=(4, 0), textcoords="offset points",
                    va="center", fontsize=8)
    ax.set_xlabel("file size (log)")
    ax.set_title("model size")
    return fig


def latency_figure(percentiles: dict[str, list[float]], *, title: str):
    """Each model's latency percentiles (ms, 0..100) as a curve on a log latency axis."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.6))
    for n, q in percentiles.items():
        ax.plot(q, [100 * i / max(len(q) - 1, 1) for i in range(len(q))], label=n)
    if percentiles:
        readable_log_axis(ax, "x", *_span(v for q in percentiles.values() for v in q), unit="ms")
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1), frameon=False)
    ax.set_xlabel("latency, ms (log)")
    ax.set_ylabel("percentile")
    ax.set_title(title)
    ax.grid(True, which="major", color="#e5e5e5", lw=0.6)
    return fig


def png_data_url(fig) -> str:
    """The figure as an inline PNG (a data: URL), closed afterwards."""
    import base64
    import io

    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


# the report's figures -----------------------------------------------------------------------------------

def plots(r: dict) -> dict[str, str]:
    """The report's figures as data: URLs (PNG), in the order the page shows them: the accuracy-speed
    frontier, latency distributions, file sizes."""
    m, runtime = r["models"], r["target_profile"]["runtime"]
    labels = task_of(r).model_labels()
    qname = quality(r, next(iter(m.values())))[1]
    at = latency_note(r, ", {}")
    pts = [Point(SHORT.get(n, n), x["latency_ms"]["p50"], quality(r, x)[0], labels.get(n, n)) for n, x in m.items()]
    return {
        "frontier": png_data_url(frontier_figure(pts, quality_label=f"{qname}, %", title=f"{qname} vs latency",
                                                 latency_label=f"p50 latency ({runtime}, batch 1{at})")),
        "latency": png_data_url(latency_figure(
            {SHORT.get(n, n): x["latency_percentiles_ms"] for n, x in m.items() if x.get("latency_percentiles_ms")},
            title=f"latency distribution ({runtime}, batch 1{at})")),
        "sizes": png_data_url(sizes_figure({SHORT.get(n, n): x["size_bytes"] for n, x in m.items()})),
    }


def combined_plot(reports: dict[str, dict]) -> dict[str, str]:
    """The accuracy-speed frontier over every model of every target (one marker per target)."""
    pts = [Point(f"{SHORT.get(n, n)} ({t})", x["latency_ms"]["p50"], quality(r, x)[0], t)
           for t, r in reports.items() for n, x in r["models"].items()]
    names = {quality(r, x)[1] for r in reports.values() for x in r["models"].values()}
    qname = names.pop() if len(names) == 1 else "quality (accuracy or cosine fidelity)"
    return {"frontier": png_data_url(frontier_figure(pts, quality_label=f"{qname}, %",
                                                     latency_label="p50 latency (each target's runtime, batch 1)",
                                                     title=f"{qname} vs latency, every target"))}
