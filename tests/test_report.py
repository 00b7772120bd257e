"""report.md and report.html as a reader meets them: the verdict first (one line per student against the
teacher, flagged where something went wrong), then the table, then the figures; log axes whose tick labels
never overlap; no empty table column; the accuracy-speed frontier from plain points. Unit tests render
report dicts written here; the last test opens the pages of real tiny builds in headless Chromium and keeps
their screenshots in build/test-output/."""
import base64
import itertools
import re
from pathlib import Path

import numpy as np
import pytest

from conftest import chromium, read_report
from edgekd.report.html import drop_empty_columns, markdown_to_html
from edgekd.report import plots, render_combined, render_markdown, verdict_lines

ROOT = Path(__file__).resolve().parent.parent
OUTPUT = ROOT / "build" / "test-output"  # kept after the run (build/ is not tracked)
NAMES = ("teacher", "student-baseline", "student-fp32", "student-int8")


def _model(p50: float, accuracy: float, size: int, teacher_p50: float, teacher_size: int) -> dict:
    return {"accuracy": accuracy, "agreement": 0.99, "params": size // 4, "size_bytes": size, "peak_rss_mb": 65.0,
            "rss_increase_mb": 5.0, "runtime": "onnxruntime", "precision": "fp32", "file": "",
            "latency_ms": {"p50": p50, "p90": 1.1 * p50, "p99": 1.3 * p50},
            "latency_percentiles_ms": list(np.linspace(0.9 * p50, 1.4 * p50, 101)),
            "speedup_vs_teacher": teacher_p50 / p50, "size_ratio_vs_teacher": size / teacher_size}


def image_report(p50: dict | None = None, accuracy: dict | None = None, **extra) -> dict:
    """A report.json of an image build (the keys render_markdown reads), INT8 3.5 MB smaller than FP32."""
    p50 = p50 or {"teacher": 12.0, "student-baseline": 1.1, "student-fp32": 1.0, "student-int8": 0.6}
    accuracy = accuracy or {"teacher": 0.990, "student-baseline": 0.975, "student-fp32": 0.985, "student-int8": 0.984}
    sizes = {"teacher": 90_000_000, "student-baseline": 4_000_000, "student-fp32": 4_000_000, "student-int8": 1_100_000}
    models = {n: _model(p50[n], accuracy[n], sizes[n], p50["teacher"], sizes["teacher"]) for n in NAMES}
    for n, m in models.items():
        m["file"] = f"{n}.onnx"
    r = {"target": "cpu-int8", "recipe": "mnist", "task": "image-classification", "kind": "image",
         "target_profile": {"name": "cpu-int8", "runtime": "onnxruntime", "precision": "int8", "threads": 1,
                            "iterations": 50, "warmup": 10, "pin_cores": False},
         "quality_metric": "accuracy", "quality_label": "test accuracy", "models": models,
         "training": {"teacher": {"val_score": 0.99, "chosen_epoch": 5}, "baseline": {"val_score": 0.97},
                      "distill": {"val_score": 0.98, "chosen_epoch": 2}, "qat": {"val_score": 0.98, "chosen_epoch": 1}},
         "distillation_gain_pts": 100 * (accuracy["student-fp32"] - accuracy["student-baseline"]),
         "teacher_check": {"val_score": 0.99, "baseline_val_score": 0.97, "below_baseline": False},
         "data_origin": "digits", "test_samples": 1000, "mobile": None,
         "parity": {f"{n}.onnx": {"agreement": 1.0, "max_abs_diff": 1e-6, "samples": 200} for n in NAMES},
         "int8": {"reduce_range": False, "onnxruntime_ops": {"QLinearConv": 3}, "accuracy_budget": None},
         "stages": {"data": {"seconds": 1.0, "cached": False}, "teacher": {"seconds": 20.0, "cached": False}},
         "environment": {"cpu": "x86", "isa": {"avx2": True}, "logical_cpus": 2, "threads": 1, "versions": {},
                         "python": "3.11", "edgekd": "0", "seed": 0}}
    r.update(extra)
    return r


def text_report() -> dict:
    """An embedding build's report.json: cosine fidelity, timed at 16 and 48 tokens."""
    r = image_report(accuracy={"teacher": 1.0, "student-baseline": 0.80, "student-fp32": 0.93, "student-int8": 0.92})
    r.update(task="text-embedding", quality_metric="fidelity_cosine", quality_label="cosine fidelity to teacher",
             sequence_lengths=[16, 48], int8={"reduce_range": False, "onnxruntime_ops": {}, "embedding_tables": []})
    for m in r["models"].values():
        m["fidelity_cosine"], m["neighbour_overlap_at_10"] = m.pop("accuracy"), 0.7
        m["latency_by_seq"] = {"16": m["latency_ms"], "48": m["latency_ms"]}
        m["speedup_vs_teacher_by_seq"] = {"16": m["speedup_vs_teacher"], "48": m["speedup_vs_teacher"]}
    for p in r["parity"].values():
        p.update(mean_cosine=0.999, min_cosine=0.99)
    return r


def _verdict(md: str) -> list[str]:
    """The verdict: the paragraphs right after the title that open with a model's name (flagged or not)."""
    title, *rest = md.splitlines()
    assert title.startswith("# ")
    return list(itertools.takewhile(lambda line: line.startswith(("**", "⚠ ")), (x for x in rest if x.strip())))


# ---------------------------------------------------------------- verdict

def test_verdict_opens_the_report_one_line_per_student():
    lines = _verdict(render_markdown(image_report()))
    assert len(lines) == 2
    assert lines[0] == ("**student INT8** (onnxruntime, the deliverable): 20.0x faster than the teacher at p50, "
                        "-0.60 points test accuracy (98.40%), 82x smaller file, 65 MB peak RSS.")
    assert lines[1].startswith("**student FP32** (onnxruntime): 12.0x faster") and "22x smaller file" in lines[1]
    # an FP32 target ships the FP32 student: it comes first
    r = image_report()
    r["target_profile"]["precision"] = "fp32"
    assert _verdict(render_markdown(r))[0].startswith("**student FP32** (onnxruntime, the deliverable)")


def test_verdict_flags_what_went_wrong():
    r = image_report(accuracy={"teacher": 0.99, "student-baseline": 0.97, "student-fp32": 0.96, "student-int8": 0.94})
    r["models"]["student-int8"]["speedup_vs_teacher"] = 0.5  # slower than the teacher
    r["memory_budget"] = {"budget_mb": 50, "model": "student-int8.onnx", "peak_rss_mb": 65.0,
                          "measured": "peak RSS", "measured_mb": 65.0, "fits": False}
    del r["parity"]["student-int8.onnx"]
    int8, fp32 = _verdict(render_markdown(r))
    assert int8.startswith("⚠ **student INT8**") and "2.0x slower than the teacher" in int8
    for flag in ("distillation below the hard-label baseline (-1.00 points)",
                 "INT8 loses 2.00 points against the FP32 student on the test split (more than 1; no "
                 "quantize.max_accuracy_drop set)", "peak RSS 65 MB is over the target's 50 MB budget",
                 "student-int8.onnx was not checked against its PyTorch model"):
        assert flag in int8
    assert fp32.startswith("⚠ **student FP32**") and "distillation below" in fp32 and "INT8 loses" not in fp32

    # the accuracy budget of report.json: a fallback to float layers, a budget missed
    r = image_report()
    r["int8"]["accuracy_budget"] = {
        "met": False, "float_layers": ["conv1", "fc"], "layers": 5, "max_accuracy_drop_pts": 0.05,
        "chosen_drop_pts": 0.2, "int8_drop_pts": 0.5, "runtime": "onnxruntime", "float_layer_types": {}}
    line = verdict_lines(r)[0]
    assert line.startswith("⚠") and "fallback: 2 of 5 layers left float" in line
    assert "INT8 accuracy budget missed on validation (0.20 points lost, budget 0.05)" in line
    assert "INT8 loses 0.10 points against the FP32 student on the test split (more than the budget of 0.05)" in line
    # nothing wrong: no flag anywhere
    assert "⚠" not in render_markdown(image_report()) and "Check:" not in render_markdown(image_report())


@pytest.mark.parametrize("int8, why", [
    ({"layers": "all"}, 'kept because the recipe asks for INT8 everywhere (quantize.int8_layers = "all"'),
    ({"layers": "auto", "placed_by_runtime": True}, "this runtime's own quantizer placed INT8"),
    ({"layers": "auto"}, "see 'INT8 graph': where integer kernels do not pay")])
def test_int8_slower_than_fp32_says_why_it_shipped(int8, why):
    r = image_report(p50={"teacher": 12.0, "student-baseline": 1.1, "student-fp32": 1.0, "student-int8": 1.2})
    r["int8"].update(int8)
    line = _verdict(render_markdown(r))[0]
    assert line.startswith("⚠ **student INT8**") and f"INT8 is 1.20x the FP32 student's latency on this runtime ({why}" in line
    # within a fresh-process p50's spread: no flag
    r["models"]["student-int8"]["latency_ms"]["p50"] = 1.04
    assert "the FP32 student's latency" not in render_markdown(r)


def test_text_verdict_uses_the_tasks_metric_and_sequence_length():
    md = render_markdown(text_report())
    lines = _verdict(md)
    assert lines[0].startswith("**student INT8** (onnxruntime, the deliverable): 20.0x faster than the teacher at "
                               "p50 (48 tokens), cosine fidelity 0.9200 to the teacher")
    assert "cosine fidelity 0.9300" in lines[1] and "⚠" not in md


def test_combined_report_opens_with_each_targets_deliverable():
    a, b = image_report(), image_report()
    b["target"], b["target_profile"]["precision"] = "cpu-fp32", "fp32"
    b["models"]["student-fp32"]["accuracy"] = 0.96  # below its baseline: flagged
    lines = _verdict(render_combined({"cpu-int8": a, "cpu-fp32": b}))
    assert len(lines) == 2 and lines[0].startswith("**cpu-int8: student INT8** (onnxruntime): 20.0x faster than the teacher")
    assert lines[1].startswith("⚠ **cpu-fp32: student FP32**") and "distillation below" in lines[1]


# ---------------------------------------------------------------- statistics

def test_intervals_and_paired_tests_match_known_values():
    from edgekd.report.stats import interval, mcnemar, paired, wilson

    lo, hi = wilson(98, 100)  # Wilson (1927); Newcombe (1998) table I: 0.9300-0.9945
    assert (round(lo, 4), round(hi, 4)) == (0.93, 0.9945)
    assert wilson(0, 10)[0] == 0 and wilson(10, 10)[1] == pytest.approx(1)  # never outside [0, 1]
    assert mcnemar(1, 9) == pytest.approx(0.021484375)  # 2 * P(X <= 1), X ~ Bin(10, 1/2) = 2 * 11 / 1024
    assert mcnemar(5, 5) == 1 and mcnemar(0, 0) == 1
    a = np.array([True] * 90 + [False] * 10)
    b = np.array([True] * 80 + [False] * 20)
    c = paired(a, b)  # a right on 10 items b gets wrong, never the reverse
    assert (c["a_only"], c["b_only"], c["diff"]) == (10, 0, 0.1) and c["p"] < 0.01 and not c["within_noise"]
    assert c["low"] > 0
    same = paired(a, a[::-1])
    assert same["within_noise"] and same["n_needed"] is None  # no difference: nothing to size a test for
    # floats (a per-item score such as the cosine to the teacher): a bootstrap interval and a paired test
    rng = np.random.default_rng(0)
    x = rng.normal(0.9, 0.05, 400)
    q = interval(x)
    assert q["low"] < x.mean() < q["high"] and q["high"] - q["low"] == pytest.approx(2 * 1.96 * 0.05 / 20, rel=0.15)
    d = paired(x + 0.002 + rng.normal(0, 0.02, 400), x)
    assert d["within_noise"] and d["n_needed"] > 400  # a 0.002 shift in noise of 0.02 needs ~800 items


def _judged(r: dict, n: int, right: dict) -> dict:
    """report.json's statistics for per-item results on n test items: right[name] = items right."""
    from edgekd.report.stats import judge

    items = {name: np.arange(n) < k for name, k in right.items()}
    intervals, r["comparisons"] = judge(items, points=lambda v: 100 * v)
    for name, q in intervals.items():
        r["models"][name]["accuracy"] = q["mean"]
        r["models"][name]["quality_interval"] = q
    r["test_samples"] = n
    return r


def test_small_test_split_report_says_within_noise_and_the_size_that_would_separate():
    r = _judged(image_report(), 180, {"teacher": 170, "student-baseline": 160, "student-fp32": 161, "student-int8": 163})
    r["training"]["qat"]["epochs"] = 3
    md = render_markdown(r)
    assert "One test image" not in md and "within noise" in md
    assert "**Distillation did not measurably change the hard-label baseline**" in md
    assert re.search(r"too small to separate.*distilled from baseline: a difference of 0\.56 points needs about "
                     r"[\d,]+ test items", md)
    # INT8 ahead of FP32 is said to come from quantize.epochs more training, not from quantization
    assert "INT8 is not more accurate because of quantization" in md and "3 epoch(s) more" in md
    # every accuracy in the models table carries its interval
    rows = [line for line in md.splitlines() if line.startswith(("| student,", "| teacher |")) and " MB |" in line]
    assert len(rows) == 4 and all(re.search(r"\d+\.\d\d% \(\d+\.\d\d–\d+\.\d\d\)", row) for row in rows), rows
    assert "95% CI" in _verdict(md)[0]
    # a large split separates the same shares
    big = render_markdown(_judged(image_report(), 18000, {"teacher": 17000, "student-baseline": 16000,
                                                          "student-fp32": 16100, "student-int8": 16300}))
    assert "too small" not in big and "**Distillation beat the hard-label baseline**" in big


def test_student_larger_or_slower_than_its_teacher_is_flagged_first():
    r = image_report(p50={"teacher": 1.0, "student-baseline": 3.0, "student-fp32": 3.0, "student-int8": 2.0})
    for m in r["models"].values():
        m["params"] = 300_000
    r["models"]["teacher"]["params"] = 80_000
    int8, fp32 = _verdict(render_markdown(r))
    assert int8.startswith("⚠ **student INT8**") and "2.0x slower than the teacher" in int8
    assert "the student has 3.8x the teacher's parameters (300,000 vs 80,000)" in int8
    assert "the student is slower than its teacher" in fp32
    gains = render_markdown(r).split("## What distillation and INT8 bought")[1]
    assert "2.0x slower at p50" in gains and "0.5x faster" not in gains


def test_kernel_time_names_its_profiler_and_openvinos_precision_split():
    """An onnxruntime profile (report.json from before op_profile_detail too) renders one line; an OpenVINO
    one adds where the time ran: INT8, FP32, and the layer types left to reference kernels."""
    r = image_report()
    r["models"]["student-fp32"]["op_profile"] = {"Conv": 0.7, "Gemm": 0.3}
    r["models"]["student-int8"].update(op_profile={"Convolution": 0.62, "FakeQuantize": 0.3, "Gather": 0.08},
                                       op_profile_detail={
        "profiler": "OpenVINO performance counters", "reference_kernels": {"Gather": 0.08},
        "by_precision": {"INT8": {"Convolution": 0.62}, "FP32": {"FakeQuantize": 0.3, "Gather": 0.08}}})
    gains = render_markdown(r).split("## What distillation and INT8 bought")[1]
    assert "- Kernel time by op type, student-fp32 (onnxruntime profiler): Conv 70%, Gemm 30%" in gains
    assert "- Kernel time by op type, student-int8 (OpenVINO performance counters): Convolution 62%," in gains
    assert ("- Kernel time by execution precision, student-int8: INT8 62% (Convolution 62%); FP32 38% "
            "(FakeQuantize 30%, Gather 8%); reference (ref_*) kernels: Gather 8%.") in gains
    assert "execution precision, student-fp32" not in gains


# ---------------------------------------------------------------- tables

def test_empty_columns_are_dropped():
    md = "\n".join(["# t", "", "| a | b | c | d |", "|---|---:|---|---|", "| x | 1 | — |  |", "| y | 2 | - | None |",
                    "", "| only | header |", "|---|---|", "", "```", "| a | |", "```"])
    out = drop_empty_columns(md).splitlines()
    assert out[2:6] == ["| a | b |", "| --- | ---: |", "| x | 1 |", "| y | 2 |"]
    assert out[7:] == md.splitlines()[7:]  # a table without rows and a code block are left as they are

    # the stage-time table: its cache column only where a stage came from the cache
    r = image_report()
    assert "| stage | seconds |\n" in render_markdown(r)
    r["stages"]["teacher"]["cached"] = True
    assert "| stage | seconds | from cache |" in render_markdown(r)


def test_html_puts_verdict_table_then_figures():
    page = markdown_to_html(render_markdown(image_report()), {"frontier": "data:image/png;base64,AA"}, title="t")
    body = page.split("<body>", 1)[1]
    assert re.match(r"<h1>edgekd build: cpu-int8</h1><p class='verdict'><strong>student INT8</strong>", body)
    assert body.index("<p class='verdict'>") < body.index("<table>") < body.index("<figure>")
    assert body.index("<figure>") < body.index("<table>", body.index("<table>") + 1)
    assert "<ul><li>" in body and "<code>mnist</code>" in body and "**" not in body
    assert "<td>teacher</td>" in body and "<td class='r'>20.0x</td>" in body  # "---:" columns align right
    r = text_report()
    r["models"]["student-fp32"]["fidelity_cosine"] = 0.7  # below its starting weights: flagged
    assert "<p class='verdict check'>⚠ <strong>student INT8</strong>" in markdown_to_html(render_markdown(r), {}, title="t")


# ---------------------------------------------------------------- figures

def _figures(r: dict, monkeypatch) -> dict:
    """plots(r)'s matplotlib figures, drawn, before they become PNGs."""
    import edgekd.report.figures as rp

    figs = []
    monkeypatch.setattr(rp, "png_data_url", lambda fig: figs.append(fig) or "")
    names = list(plots(r))
    for fig in figs:
        fig.canvas.draw()
    return dict(zip(names, figs))


def _tick_labels(axis) -> list:
    """The labels drawn on an axis, major and minor (matplotlib labels minor ticks of a narrow log span)."""
    lo, hi = sorted(axis.get_view_interval())
    return [t for minor in (False, True) for t, v in zip(axis.get_ticklabels(minor=minor), axis.get_ticklocs(minor=minor))
            if t.get_visible() and t.get_text() and lo <= v <= hi]


@pytest.mark.parametrize("lo, hi", [(0.05, 40.0), (0.031, 0.68), (0.31, 0.35), (2.6, 12.5), (0.001, 5000.0), (7.0, 7.0)])
def test_log_axes_tick_labels_never_overlap(lo, hi, monkeypatch):
    """Every axis of every figure, latencies spanning six decades down to none: at least two plain
    labels on each log axis, no two of them overlapping once drawn."""
    import matplotlib.pyplot as plt

    p50 = dict(zip(NAMES, np.geomspace(hi, lo, 4)))
    figs = _figures(image_report(p50=p50), monkeypatch)
    assert list(figs) == ["frontier", "latency", "sizes"]
    for name, fig in figs.items():
        renderer = fig.canvas.get_renderer()
        for ax in fig.axes:
            for axis in (ax.xaxis, ax.yaxis):
                labels = _tick_labels(axis)
                boxes = [t.get_window_extent(renderer) for t in labels]
                overlapping = [(a.get_text(), b.get_text()) for i, a in enumerate(labels) for b in labels[i + 1:]
                               if boxes[labels.index(a)].overlaps(boxes[labels.index(b)])]
                assert not overlapping, (name, overlapping)
                if axis.get_scale() == "log":
                    assert len(labels) >= 2, (name, [t.get_text() for t in labels])
                    assert all(re.fullmatch(r"[\d.]+ (ms|B|kB|MB|GB)", t.get_text()) for t in labels), \
                        [t.get_text() for t in labels]
        plt.close(fig)


def test_frontier_from_plain_points(tmp_path):
    """A sweep's points (label, latency, quality, group): the Pareto-optimal ones joined and labelled."""
    import matplotlib.pyplot as plt
    from PIL import Image

    from edgekd.report.figures import frontier_figure, save_frontier

    pts = [("teacher", 20.0, 99.0, "teacher"), ("L2 x128", 1.0, 96.0, "FP32"), ("L4 x128", 2.0, 98.0, "FP32"),
           ("L4 x256", 4.0, 97.5, "FP32"), ("L2 x128 INT8", 0.5, 95.5, "INT8"), ("L4 x128 INT8", 1.2, 97.9, "INT8")]
    fig = frontier_figure(pts, quality_label="accuracy, %", title="sweep")
    ax = fig.axes[0]
    line = next(l for l in ax.lines if l.get_label() == "Pareto front")
    assert list(zip(line.get_xdata(), line.get_ydata())) == [(0.5, 95.5), (1.0, 96.0), (1.2, 97.9), (2.0, 98.0),
                                                             (20.0, 99.0)]
    shown = {t.get_text() for t in ax.texts}
    assert {"teacher", "L2 x128", "L4 x128", "L2 x128 INT8", "L4 x128 INT8"} <= shown  # every frontier point
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["teacher", "FP32", "INT8", "Pareto front"]
    fig.canvas.draw()
    boxes = [t.get_window_extent() for t in ax.texts]
    assert not any(a.overlaps(b) for i, a in enumerate(boxes) for b in boxes[i + 1:])
    plt.close(fig)
    png = np.asarray(Image.open(save_frontier(tmp_path / "f.png", pts, quality_label="accuracy, %")).convert("L"))
    assert png.std() > 10


# ---------------------------------------------------------------- the page in a browser

_PAGE = """
const h1 = document.querySelector("h1"), first = h1.nextElementSibling;
const top = (e) => e.getBoundingClientRect().top + window.scrollY;
const tables = [...document.querySelectorAll("table")], imgs = [...document.querySelectorAll("img")];
const empty = new Set(["", "-", "\u2014", "None", "n/a"]);
return {
  first: first.tagName + ": " + first.textContent,
  verdictTop: top(first), tableTop: top(tables[0]), imgTop: Math.min(...imgs.map(top)),
  images: imgs.map((i) => [i.alt, i.complete, i.naturalWidth]),
  emptyColumns: tables.flatMap((t, k) => {
    const rows = [...t.rows].slice(1).map((r) => [...r.cells].map((c) => c.textContent.trim()));
    return [...t.rows[0].cells].map((c, j) => rows.length && rows.every((r) => empty.has(r[j] ?? "")) ? `table ${k}: ${c.textContent}` : null)
      .filter((x) => x);
  }),
  width: document.documentElement.scrollWidth, height: document.documentElement.scrollHeight,
};
"""


@pytest.mark.parametrize("build", ["tiny_build", "tiny_text_build"])
def test_report_page_in_chromium(build, request, capsys):
    """report.html of a real tiny build as a reader sees it: the verdict is the first paragraph and sits
    above the first table and figure, every figure loaded, no empty column; the full page is kept as a
    screenshot (build/test-output/report-<task>.png)."""
    from PIL import Image

    d = request.getfixturevalue(build)
    d = d("cpu-int8") if callable(d) else d
    task = read_report(d)["task"]
    shot = OUTPUT / f"report-{task}.png"
    with chromium(width=1200, height=900) as browser:
        browser.get((d / "report.html").resolve().as_uri())
        page = browser.execute_script(_PAGE)
        assert page["first"].startswith("P: ") and "teacher" in page["first"], page["first"]
        assert "faster" in page["first"] or "slower" in page["first"], page["first"]
        assert page["verdictTop"] < page["tableTop"] < page["imgTop"], page
        assert [i[0] for i in page["images"]] == ["frontier", "latency", "sizes"]
        assert all(ok and width > 0 for _, ok, width in page["images"]), page["images"]
        assert page["emptyColumns"] == []
        # the whole page, beyond the window (DevTools protocol: selenium's own screenshot is the window alone)
        png = browser.execute_cdp_cmd("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True, "clip": {
            "x": 0, "y": 0, "width": page["width"], "height": page["height"], "scale": 1}})["data"]
    OUTPUT.mkdir(parents=True, exist_ok=True)
    shot.write_bytes(base64.b64decode(png))
    pixels = np.asarray(Image.open(shot).convert("L"), dtype=np.float32)
    assert pixels.shape[0] >= page["height"] and pixels.std() > 20  # the whole page, not a blank
    with capsys.disabled():
        print(f"\nreport page screenshot: {shot}")
