"""End-to-end builds in tiny mode, one per target in targets/ (training stages shared via the cache)."""
import hashlib
import json
import time

import numpy as np
import pytest

from conftest import TINY, TINY_TARGET, read_report
from edgekd.quantize import INTEGER_OPS, optimized_op_types
from edgekd.recipe import load_recipe
from edgekd.targets import load_target, target_names

MODEL_KEYS = {"accuracy", "agreement", "latency_ms", "size_bytes", "peak_rss_mb", "params", "runtime", "precision"}


def _needs(target):
    if load_target(target).runtime == "executorch":
        pytest.importorskip("executorch", reason="ExecuTorch targets need pip install 'edgekd[executorch]'")


# the image task's targets (cpu-int4 is a language model's: tests/test_lm_task.py builds it)
@pytest.mark.parametrize("target", [t for t in target_names() if load_target(t).precision != "int4"])
def test_tiny_build_writes_a_complete_report(tiny_build, target):
    _needs(target)
    d = tiny_build(target)
    r = read_report(d)
    assert r["target"] == target
    assert set(r["models"]) == {"teacher", "student-baseline", "student-fp32", "student-int8"}
    for name, m in r["models"].items():
        assert MODEL_KEYS <= set(m), name
        assert 0 <= m["accuracy"] <= 1 and 0 <= m["agreement"] <= 1
        lat = m["latency_ms"]
        assert 0 < lat["p50"] <= lat["p90"] <= lat["p99"]
        assert m["size_bytes"] > 0 and m["peak_rss_mb"] > 10 and m["params"] > 0
        assert m["runtime"] == r["target_profile"]["runtime"]
        assert (d / m["file"]).is_file()
    assert r["models"]["teacher"]["agreement"] == 1.0
    # an FP32 student shipped as the INT8 target's deliverable (INT8 did not pay on this CPU) is said so
    assert r["models"]["student-int8"]["precision"] == "int8" or r["int8"]["shipped_fp32"]
    # the teacher is bigger than the student, and the INT8 file smaller than the FP32 one, unless INT8
    # did not pay on this CPU's runtime (no VNNI, say): then the FP32 student ships and the report says so
    assert r["models"]["teacher"]["params"] > 10 * r["models"]["student-fp32"]["params"]
    # every export was checked against PyTorch
    assert all(p["samples"] > 0 for p in r["parity"].values())
    md = (d / "report.md").read_text()
    if r["int8"]["shipped_fp32"]:
        assert r["models"]["student-int8"]["size_bytes"] == r["models"]["student-fp32"]["size_bytes"]
        assert "ships the FP32 student" in md
    else:
        assert r["models"]["student-int8"]["size_bytes"] < r["models"]["student-fp32"]["size_bytes"]
    for word in ("teacher", "p50", "speedup", "peak RSS", "Stage times", "Parity"):
        assert word in md
    manifest = json.loads((d / "manifest.json").read_text())
    assert manifest["sha256"] == hashlib.sha256((d / manifest["model"]).read_bytes()).hexdigest()
    batch = load_target(target).backend.fixed_batch or "batch"  # .pte and .tflite programs are batch-1
    assert manifest["inputs"][0]["shape"] == [batch, 1, 28, 28] and len(manifest["labels"]) == 10
    assert manifest["precision"] == ("fp32" if r["int8"]["shipped_fp32"] else r["target_profile"]["precision"])
    # the lock file is a loadable recipe holding the tiny overrides
    lock = load_recipe(d / "recipe.lock.toml")
    assert lock.distill.epochs == 2 and lock.quantize.reduce_range in ("true", "false")


def test_int8_onnx_runs_integer_kernels(tiny_build):
    d = tiny_build("cpu-int8")
    ops = optimized_op_types(d / "student-int8.onnx")
    if read_report(d)["int8"]["shipped_fp32"]:  # INT8 did not pay on this CPU (no VNNI): FP32 ships, no integer op
        assert not any(op in ops for op in INTEGER_OPS), ops
    else:
        assert any(op in ops for op in INTEGER_OPS), ops
        assert "QLinearConv" in ops
    import onnxruntime as ort

    out = ort.InferenceSession(str(d / "student-int8.onnx")).run(None, {"input": np.zeros((3, 1, 28, 28), np.float32)})[0]
    assert out.shape == (3, 10) and np.isfinite(out).all()
    assert "op_profile" in read_report(d)["models"]["student-int8"]


def test_openvino_ir_runs_int8(tiny_build):
    d = tiny_build("cpu-int8-openvino")
    r = read_report(d)
    precisions = r["int8"]["openvino_precisions"]
    if r["int8"]["shipped_fp32"]:  # INT8 did not pay on this CPU: the FP32 student ships, with no integer op
        assert not any(k.lower() in ("i8", "u8") for k in precisions), precisions
    else:
        assert any(k.lower() in ("i8", "u8") for k in precisions), precisions
    assert (d / "student-int8.xml").is_file() and (d / "student-int8.bin").is_file()


def test_second_build_reuses_every_stage(tiny_build, build_root):
    from click.testing import CliRunner

    from edgekd.cli import main

    first = read_report(tiny_build("cpu-int8"))
    t = time.perf_counter()
    res = CliRunner().invoke(main, ["build", "target=cpu-int8", "--out", str(build_root), *TINY, *TINY_TARGET])
    took = time.perf_counter() - t
    assert res.exit_code == 0, res.output
    again = read_report(build_root / "cpu-int8")
    assert all(s["cached"] for n, s in again["stages"].items() if n != "data")
    assert again["models"]["student-int8"]["accuracy"] == first["models"]["student-int8"]["accuracy"]
    first_total = sum(s["seconds"] for s in first["stages"].values())
    assert took < first_total  # the 10% goal is measured by benchmarks/, not asserted on a shared machine


def test_tampered_cache_is_rebuilt(tiny_build, build_root):
    from click.testing import CliRunner

    from edgekd.cli import main

    d = tiny_build("cpu-int8")
    qat_dir = build_root / ".cache" / read_report(d)["stages"]["qat"]["cache"]
    (qat_dir / "model.pt").write_bytes(b"tampered")
    res = CliRunner().invoke(main, ["build", "target=cpu-int8", "--out", str(build_root), *TINY, *TINY_TARGET])
    assert res.exit_code == 0, res.output
    r = read_report(build_root / "cpu-int8")
    assert r["stages"]["qat"]["cached"] is False and r["stages"]["distill"]["cached"] is True


def test_html_report_is_self_contained_with_plots(tiny_build, tmp_path):
    import shutil
    import subprocess
    import sys

    from edgekd.report import pareto_front

    d = tiny_build("cpu-int8")
    page = (d / "report.html").read_text()
    assert page.count("<img") == 3 and page.count("data:image/png;base64,") == 3
    assert 'src="http' not in page and "<table>" in page and 'alt="frontier"' in page
    # `edgekd report` re-renders from report.json alone
    copy = tmp_path / "copy"
    copy.mkdir()
    shutil.copy(d / "report.json", copy / "report.json")
    res = subprocess.run([sys.executable, "-m", "edgekd", "report", str(copy)], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert (copy / "report.md").read_text() == (d / "report.md").read_text()
    assert (copy / "report.html").stat().st_size > 10_000
    assert pareto_front({"a": (1.0, 90.0), "b": (2.0, 95.0), "c": (3.0, 94.0)}) == {"a", "b"}
    bad = subprocess.run([sys.executable, "-m", "edgekd", "report", str(tmp_path / "none")], capture_output=True, text=True)
    assert bad.returncode == 2 and "does not exist" in bad.stderr and "Traceback" not in bad.stderr


def test_several_targets_in_one_build_share_training_and_one_report(tiny_build, build_root):
    from click.testing import CliRunner

    from edgekd.cli import main

    tiny_build("cpu-int8")
    tiny_build("cpu-fp32")
    res = CliRunner().invoke(main, ["build", "target=cpu-int8,cpu-fp32", "--out", str(build_root), *TINY, *TINY_TARGET])
    assert res.exit_code == 0, res.output
    combined = json.loads((build_root / "report.json").read_text())
    assert list(combined["targets"]) == ["cpu-int8", "cpu-fp32"]
    md = (build_root / "report.md").read_text()
    assert md.count("| cpu-int8 |") == 4 and md.count("| cpu-fp32 |") == 4
    assert "data:image/png;base64," in (build_root / "report.html").read_text()
    fp32 = read_report(build_root / "cpu-fp32")
    assert all(s["cached"] for n, s in fp32["stages"].items() if n in ("teacher", "distill", "qat"))


@pytest.mark.parametrize("target", [t for t in target_names() if load_target(t).format == "ort"])
def test_mobile_targets_report_host_timings_threads_and_usability(tiny_build, target):
    d = tiny_build(target)
    r = read_report(d)
    assert r["mobile"]["model"].endswith(".ort") and (d / r["mobile"]["model"]).is_file()
    assert "NNAPI" in r["mobile"]["usability_check"] and "CoreML" in r["mobile"]["usability_check"]
    for m in r["models"].values():
        assert set(m["latency_by_threads"]) == {"1", "2"}
    assert r["memory_budget"]["fits"] is True
    md = (d / "report.md").read_text()
    assert "host timings" in md and "No phone was measured" in md and "Latency by thread count" in md
    est = r["mobile"]["device_estimates"]  # a phone's latency only as an estimate, its method written down
    assert est["macs"] > 10**6 and "estimates, not measurements" in md
    assert all(e["estimate_ms_assumed"] > e["estimate_ms_at_peak"] > 0 and "not a measurement" in e["method"]
               for e in est["estimates"])
    arm = r.get("arm_verification")  # INT8 only: run where the emulator is installed, a how-to otherwise
    assert (arm is None) == (r["target_profile"]["precision"] == "fp32")
    if arm is None:
        pass
    elif "skipped" in arm:
        assert "apt-get install qemu-user-static debootstrap" in arm["skipped"] and "Not run" in md
    else:
        assert arm["top1_agreement_x86_arm"] >= 0.97 and abs(arm["arm_accuracy"] - arm["x86_accuracy"]) <= 0.02
        assert "INT8 on ARM kernels" in md and "timing under emulation" in md
    import onnxruntime as ort  # the .ort file loads and runs in onnxruntime

    sess = ort.InferenceSession(str(d / r["mobile"]["model"]))
    assert sess.run(None, {"input": np.zeros((1, 1, 28, 28), np.float32)})[0].shape == (1, 10)


@pytest.mark.parametrize("target", [t for t in target_names() if load_target(t).format == "pte"])
def test_executorch_targets_report_delegation_and_run(tiny_build, target):
    _needs(target)
    d = tiny_build(target)
    r = read_report(d)
    cov = r["mobile"]["delegation"]
    assert r["mobile"]["model"].endswith(".pte") and (d / r["mobile"]["model"]).is_file()
    assert cov["delegated_ops"] > 0 and 0 < cov["delegated_share"] <= 1 and "XnnpackBackend" in cov["backends"]
    assert r["memory_budget"]["measured"].startswith("RSS increase")
    for m in r["models"].values():
        assert set(m["latency_by_threads"]) == {"1", "2"}
    md = (d / "report.md").read_text()
    assert "Delegate coverage" in md and "host timings" in md and "No phone was measured" in md
    from edgekd import backends

    out = backends.load(d / r["mobile"]["model"])(np.zeros((2, 1, 28, 28), np.float32))
    assert out.shape == (2, 10)


def test_a_runtime_quantized_program_slower_than_fp32_ships_the_fp32_student(tiny_build, tmp_path, monkeypatch):
    """ExecuTorch and LiteRT quantize with their own quantizers, so no layer is edgekd's to leave float:
    where their INT8 program times slower than their FP32 one (edgekd.payoff.program_pays), the target
    ships the FP32 student's files, and the verdict says so."""
    import filecmp
    import shutil

    from click.testing import CliRunner

    import edgekd.payoff as payoff
    from edgekd.cli import main

    target = next(t for t in target_names() if load_target(t).format == "pte")
    _needs(target)
    shutil.copytree(tiny_build("cpu-int8").parent / ".cache", tmp_path / ".cache",  # the training stages only
                    ignore=shutil.ignore_patterns("export-*", "benchmark-*"))
    timed = {}

    def slower(fp32, int8, **kw):
        timed.update(fp32=fp32.name, int8=int8.name)
        return {"p50_ms": {"fp32": 0.05, "int8": 0.08}, "int8_vs_fp32": 0.625, "ship_fp32": True, "method": "test"}

    monkeypatch.setattr(payoff, "program_pays", slower)
    res = CliRunner().invoke(main, ["build", f"target={target}", "--out", str(tmp_path), *TINY, *TINY_TARGET])
    assert res.exit_code == 0, res.output
    d = tmp_path / target
    assert timed == {"fp32": "student-fp32.pte", "int8": "student-int8.pte"}
    assert filecmp.cmp(d / "student-int8.pte", d / "student-fp32.pte", shallow=False)
    r = read_report(d)
    assert r["int8"]["shipped_fp32"] == {"int8_ms": 0.08, "fp32_ms": 0.05, "at": "batch 1"}
    assert "This INT8 target ships the FP32 student" in (d / "report.md").read_text()


def test_memory_budget_stops_a_model_that_does_not_fit(tiny_build, build_root):
    from click.testing import CliRunner

    from edgekd.cli import main

    d = tiny_build("mobile-int8")
    before = (d / "report.json").read_text()
    res = CliRunner().invoke(main, ["build", "target=mobile-int8", "--out", str(build_root), *TINY, *TINY_TARGET,
                                    "target.memory_budget_mb=10"])
    assert res.exit_code == 2
    assert "student-int8.ort does not fit target 'mobile-int8': peak RSS" in res.output and "> memory_budget_mb 10" in res.output
    assert (d / "report.json").read_text() == before  # the earlier build is left as it was
