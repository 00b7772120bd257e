"""A build killed with SIGKILL in the middle of distillation resumes from its last epoch checkpoint
and ends with exactly the metrics of an uninterrupted build of the same seed."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from conftest import TINY, TINY_TARGET

# long enough to be killed mid-way; INT8 everywhere, so that the timed choice of edgekd.payoff (which layers
# run INT8, or the FP32 student shipped) cannot differ between the killed and the straight build
SETTINGS = [*TINY, "distill.epochs=20", "quantize.int8_layers=all", *TINY_TARGET]


def _cmd(out):
    return [sys.executable, "-m", "edgekd", "build", "target=cpu-int8", "--out", str(out), *SETTINGS]


def _accuracies(out):
    r = json.loads((out / "cpu-int8" / "report.json").read_text())
    return {n: (m["accuracy"], m["agreement"]) for n, m in r["models"].items()}, r["training"]


# three builds of a 20-epoch distillation: on a 2-core machine shared with other jobs they need more
# than the suite's 900 s per test, so this one gets twice that
@pytest.mark.timeout(1800)
def test_sigkill_during_distillation_resumes_to_the_same_result(tmp_path):
    killed = tmp_path / "killed"
    proc = subprocess.Popen(_cmd(killed), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 600
    ckpt = None
    while time.time() < deadline and proc.poll() is None:
        found = list((killed / ".cache").glob(".distill-*.ckpt")) if (killed / ".cache").exists() else []
        if found:
            ckpt = found[0]
            break
        time.sleep(0.05)
    assert ckpt is not None, "distillation never wrote an epoch checkpoint"
    time.sleep(0.3)  # a little further into distillation, well before its end
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (killed / "cpu-int8" / "report.json").exists()
    assert not any(p.name.startswith("distill-") for p in (killed / ".cache").iterdir()), "a killed stage looks complete"

    resumed = subprocess.run(_cmd(killed), capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    assert "[distill] resuming from epoch" in resumed.stderr

    # the straight build reuses the stages before distillation (teacher, its targets, the baseline): what
    # is compared is distillation and everything after it
    straight = tmp_path / "straight"
    (straight / ".cache").mkdir(parents=True)
    for stage in (killed / ".cache").glob("*"):
        if stage.name.split("-")[0] in ("teacher", "soft", "baseline"):
            shutil.copytree(stage, straight / ".cache" / stage.name)
    ok = subprocess.run(_cmd(straight), capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    assert _accuracies(killed) == _accuracies(straight)


def test_sigterm_stops_like_ctrl_c_and_leaves_nothing_half_written(tmp_path):
    """SIGTERM (a service manager, a CI timeout) is handled as Ctrl-C: one line, exit 143, and the stage
    that was running leaves no temporary folder; a stale one of a killed process is swept at the next start."""
    out = tmp_path / "term"
    stale = out / ".cache" / ".teacher-0123456789abcdef.tmp999999999"  # no such PID
    stale.mkdir(parents=True)
    proc = subprocess.Popen(_cmd(out), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if [p for p in (out / ".cache").glob(f".*.tmp{proc.pid}")]:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err[-500:]
    assert err.strip().splitlines()[-1].startswith("edgekd: stopped (SIGTERM); run the same command again")
    assert "Traceback" not in err
    assert not list(out.rglob(".*.tmp*")), list(out.rglob(".*.tmp*"))
