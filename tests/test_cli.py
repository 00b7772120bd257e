"""Bad input: one line saying what and how to fix, exit code 2, no traceback, nothing written."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import TINY, TINY_TARGET


def edgekd(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "edgekd", *args], capture_output=True, text=True, cwd=cwd,
                          env={**os.environ, "PYTHONPATH": str(Path(__file__).parent)})


def assert_clean_failure(res, fragment, out: Path):
    assert res.returncode == 2, res.stderr
    lines = [l for l in res.stderr.splitlines() if l.strip() and not l.startswith("[")]
    assert len(lines) == 1, res.stderr
    assert "Traceback" not in res.stderr and fragment in lines[0]
    assert not out.exists() or not any(p.is_file() for p in out.rglob("*")), list(out.rglob("*"))


class FiveClasses(torch.nn.Module):
    def forward(self, x):
        return x.flatten(1)[:, :5]


def five_class_teacher():
    return FiveClasses()


@pytest.mark.parametrize("args, fragment", [
    (["distill.temprature=2"], "did you mean 'distill.temperature'"),
    (["distill.epochs=ten"], "distill.epochs must be an integer"),
    (["distill.alpha=1.5"], "distill.alpha must be in [0, 1]"),
    (["target=cpu-imt8"], "did you mean 'cpu-int8'"),
    (["recipe=/nonexistent/edgekd.toml"], "does not exist"),
    (["teacher.weights=/nonexistent/teacher.pt"], "does not exist"),
    (["teacher.model=hf-confg:resnet"], "did you mean 'hf-config'"),
    (["teacher.fine_tune=sometimes"], "teacher.fine_tune must be"),
])
def test_bad_input_is_one_line(tmp_path, args, fragment):
    out = tmp_path / "out"
    assert_clean_failure(edgekd("build", "--out", str(out), *args), fragment, out)


@pytest.mark.parametrize("args, fragment", [
    (["student.model=hf-config:mobilenet_v3"], "did you mean"),  # a model type transformers does not know
    (["student.model=hf-config:mobilenet_v2", 'student.config={"depth_multiplierr": 0.35}'],
     "config override 'depth_multiplierr' is not a mobilenet_v2 setting"),
    (["distill.method=progressive", "distill.assistants=hf-config:resnett"], "did you mean"),
])
def test_model_spec_mistakes_fail_before_the_teacher_trains(tmp_path, args, fragment):
    """Every model is built against the data before the teacher stage: a typo costs seconds, not the
    teacher's training."""
    pytest.importorskip("transformers")
    out = tmp_path / "out"
    res = edgekd("build", "--out", str(out), *TINY, *args)
    assert "[teacher] running" not in res.stderr
    assert_clean_failure(res, fragment, out)


def test_corrupt_checkpoint(tmp_path):
    ck = tmp_path / "teacher.pt"
    torch.save(torch.nn.Linear(2, 2).state_dict(), ck)
    ck.write_bytes(ck.read_bytes()[:100])  # truncated
    out = tmp_path / "out"
    assert_clean_failure(edgekd("build", "--out", str(out), f"teacher.weights={ck}", *TINY, *TINY_TARGET),
                         "cannot be read", out)


def test_checkpoint_that_would_run_code_is_refused(tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    ck = tmp_path / "evil.pt"
    torch.save({"weight": Evil()}, ck)
    out = tmp_path / "out"
    res = edgekd("build", "--out", str(out), f"teacher.weights={ck}", *TINY, *TINY_TARGET)
    assert_clean_failure(res, "state_dict", out)
    assert not marker.exists()
    # an edge toolkit never suggests running untrusted code
    assert "weights_only=False" not in res.stderr and "likely succeed" not in res.stderr


def test_checkpoint_of_another_architecture(tmp_path):
    from edgekd.models import build_arch

    ck = tmp_path / "student.pt"
    torch.save(build_arch("mnist-student", in_channels=1, num_classes=10).state_dict(), ck)
    out = tmp_path / "out"
    assert_clean_failure(edgekd("build", "--out", str(out), f"teacher.weights={ck}", *TINY, *TINY_TARGET),
                         "mnist-teacher", out)


def untrained_teacher(num_classes):
    from edgekd.models import build_arch

    return build_arch("mnist-teacher", in_channels=1, num_classes=num_classes)


def flat_input_teacher():
    return torch.nn.Linear(10, 10)  # expects (B, 10), the data is (B, 1, 28, 28)


@pytest.mark.parametrize("factory, fragment", [
    ("five_class_teacher", "the data has 10 classes"),
    ("flat_input_teacher", "(2, 1, 28, 28)"),
    ("untrained_teacher", "near chance"),
])
def test_teacher_that_does_not_fit_the_data(tmp_path, factory, fragment):
    out = tmp_path / "out"
    assert_clean_failure(edgekd("build", "--out", str(out), f"teacher.model=factory:test_cli:{factory}", *TINY, *TINY_TARGET),
                         fragment, out)


def test_output_under_a_file(tmp_path):
    blocker = tmp_path / "afile"
    blocker.write_text("not a folder")
    assert_clean_failure(edgekd("build", "--out", str(blocker / "b"), *TINY), "not writable", blocker / "b")


def test_unwritable_output(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        if os.access(ro, os.W_OK):
            pytest.skip("running as a user that can write anywhere (root)")
        assert_clean_failure(edgekd("build", "--out", str(ro / "b"), *TINY), "not writable", ro / "b")
    finally:
        ro.chmod(0o700)


def test_debug_shows_the_traceback(tmp_path):
    res = edgekd("build", "--debug", "--out", str(tmp_path / "o"), "distill.alpha=2")
    assert res.returncode != 0 and "Traceback" in res.stderr


def test_targets_command_lists_every_target():
    from edgekd.targets import target_names

    res = edgekd("targets")
    assert res.returncode == 0
    assert [l.split()[0] for l in res.stdout.splitlines()] == target_names()


def test_target_all_keeps_the_targets_the_task_builds():
    """`target=all` builds every target this install runs for the recipe's task and says why it leaves
    the others out: an image recipe is not given the language models' INT4 target."""
    from edgekd.cli import _runnable
    from edgekd.recipe import apply_overrides, load_recipe
    from edgekd.targets import load_target, target_names

    keep, skipped = _runnable([load_target(n) for n in target_names()], load_recipe(None))  # MNIST
    assert "cpu-int8" in [t.name for t in keep] and "cpu-int4" not in [t.name for t in keep]
    assert "builds fp32 and int8 targets, not 'cpu-int4'" in skipped["cpu-int4"]
    # an INT8 budget is honoured only where edgekd writes the INT8 model: the runtimes that quantize
    # with their own quantizer are left out, saying so
    budget = apply_overrides(load_recipe(None), ["quantize.max_accuracy_drop=0.5"])
    keep, skipped = _runnable([load_target(n) for n in ("cpu-int8", "mobile-int8-litert")], budget)
    assert [t.name for t in keep] == ["cpu-int8"] and "max_accuracy_drop" in skipped["mobile-int8-litert"]


def test_a_target_whose_converter_fails_is_one_line_and_the_others_are_built(tiny_build, tmp_path, monkeypatch):
    """Several targets: one whose converter raises (an assertion deep in its passes) is named in one line
    with exit 2; the other targets are built, and the failed one leaves no folder."""
    import dataclasses
    import shutil

    from click.testing import CliRunner

    import edgekd.backends as backends
    from edgekd.cli import main

    shutil.copytree(tiny_build("cpu-int8").parent / ".cache", tmp_path / ".cache",  # the training stages only
                    ignore=shutil.ignore_patterns("export-*", "benchmark-*"))
    real = backends.get

    def get(fmt):
        b = real(fmt)
        if fmt != "openvino-ir":
            return b

        def make(*args, **kwargs):
            raise AssertionError("Attempting to convert non-NHWC compatible node")
        return dataclasses.replace(b, make=make)

    monkeypatch.setattr(backends, "get", get)
    res = CliRunner().invoke(main, ["build", "target=cpu-int8,cpu-int8-openvino", "--out", str(tmp_path), *TINY,
                                    *TINY_TARGET])
    assert res.exit_code == 2, res.output
    last = res.output.strip().splitlines()[-1]
    assert last.startswith("edgekd: error: 1 of 2 targets failed (cpu-int8-openvino: ") and "Traceback" not in res.output
    assert "the converter could not make teacher.xml (AssertionError: Attempting to convert" in last
    assert (tmp_path / "cpu-int8" / "report.md").exists() and not (tmp_path / "cpu-int8-openvino").exists()


def test_trained_teacher_checkpoint_loads_as_teacher(tiny_build, tmp_path):
    """A state_dict written by a build is accepted as teacher.weights (weights_only loading), and the
    teacher is then ready: it is not trained again."""
    from edgekd.models import ModelIO, load_model
    from edgekd.recipe import Recipe, apply_overrides

    d = tiny_build("cpu-int8")
    [tdir] = [p for p in (d.parent / ".cache").iterdir() if p.name.startswith("teacher-")]
    r = apply_overrides(Recipe(), [f"teacher.weights={tdir / 'model.pt'}"])
    built = load_model(r.teacher, ModelIO("image", (1, 28, 28), 10), base=tmp_path)
    assert built.ready and sum(p.numel() for p in built.module.parameters()) > 5e5


def test_recipe_that_is_not_toml(tmp_path):
    bad = tmp_path / "edgekd.toml"
    bad.write_text("[distill\ntemperature: 2\n")
    out = tmp_path / "out"
    assert_clean_failure(edgekd("build", "--out", str(out), f"recipe={bad}"), "is not valid TOML", out)


def test_cuda_requested_without_a_gpu(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    out = tmp_path / "out"
    assert_clean_failure(edgekd("build", "--out", str(out), "device=cuda", *TINY), "no CUDA GPU is visible", out)


def test_diverging_loss_stops_with_step_and_cause(tmp_path):
    out = tmp_path / "out"
    res = edgekd("build", "--out", str(out), "teacher.optimizer=sgd", "teacher.lr=1e12", *TINY, *TINY_TARGET)
    assert res.returncode == 2 and "Traceback" not in res.stderr
    last = res.stderr.strip().splitlines()[-1]
    assert "teacher: loss became" in last and "at epoch 1, step" in last and "learning rate" in last
    assert not (out / "cpu-int8").exists()


def test_ctrl_c_stops_cleanly_and_says_how_to_resume(tmp_path):
    import signal
    import time

    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-m", "edgekd", "build", "--out", str(out), *TINY, "teacher.epochs=50"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(Path(__file__).parent)},
                            # a runner started in the background ignores SIGINT, and a child inherits that
                            # (Python then never raises KeyboardInterrupt): give the build the default back
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + 120
    while time.time() < deadline and not list(out.glob(".cache/.teacher-*.ckpt")):
        time.sleep(0.1)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130
    assert err.strip().splitlines()[-1].startswith("edgekd: interrupted; run the same command again to resume")
    assert "Traceback" not in err
    assert list(out.glob(".cache/.teacher-*.ckpt")), "the epoch checkpoint to resume from is kept"


def test_library_notices_stay_off_the_terminal():
    """torchao's notices about optional kernels this CPU cannot load are not the user's concern: the CLI
    silences them (and --debug keeps them)."""
    pytest.importorskip("torchao")
    code = "from edgekd.cli import quiet_libraries; {}; import torchao, transformers"
    loud = subprocess.run([sys.executable, "-c", code.format("pass")], capture_output=True, text=True)
    quiet = subprocess.run([sys.executable, "-c", code.format("quiet_libraries()")], capture_output=True, text=True)
    assert quiet.returncode == 0 and "Failed to load" not in quiet.stderr, quiet.stderr
    if "Failed to load" not in loud.stderr:
        pytest.skip("torchao loads all its kernels here: nothing to silence")
