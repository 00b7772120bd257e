"""`torchrun --nproc-per-node 2 -m edgekd build ...` on CPU (gloo): a valid build, rank 0 writes it."""
import json
import subprocess
import sys

from conftest import TINY, TINY_TARGET

# A small teacher and enough steps that accuracies mean something, in well under a minute per build.
# INT8 everywhere: edgekd.payoff's timed choice (which layers run INT8, or the FP32 student shipped) must
# not differ between the two builds being compared
SETTINGS = [*TINY, "data.n_train=1500", "teacher.model=mnist-student", "teacher.epochs=4", "distill.epochs=4",
            "quantize.int8_layers=all", *TINY_TARGET]


def test_two_process_build_matches_single_process(tmp_path):
    out = tmp_path / "ddp"
    res = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                          "-m", "edgekd", "build", "target=cpu-int8", "--out", str(out), *SETTINGS],
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout.strip().endswith("report.md")  # only rank 0 reports
    ddp = json.loads((out / "cpu-int8" / "report.json").read_text())
    assert not list(out.glob(".cache/.*tmp*")), "a rank left a temporary folder behind"

    single = tmp_path / "single"
    res1 = subprocess.run([sys.executable, "-m", "edgekd", "build", "target=cpu-int8", "--out", str(single), *SETTINGS],
                          capture_output=True, text=True, timeout=600)
    assert res1.returncode == 0, res1.stderr[-3000:]
    one = json.loads((single / "cpu-int8" / "report.json").read_text())
    assert ddp["models"]["teacher"]["accuracy"] > 0.5  # it learned: chance is 0.1
    for name in ("teacher", "student-fp32", "student-int8"):
        a, b = ddp["models"][name]["accuracy"], one["models"][name]["accuracy"]
        assert a > 0.2 and abs(a - b) <= 0.08, (name, a, b)


def test_two_process_lm_build_splits_the_teachers_work(tmp_path):
    """text-generation under torchrun: the teacher's generated responses and top-k log-probabilities are
    computed a share per rank and gathered (greedy, they equal one process's exactly), and the ranks end
    training with equal weights (edgekd.train stops the build otherwise)."""
    import numpy as np
    import pytest

    pytest.importorskip("optimum.exporters.onnx")
    import lm_tiny

    recipe = lm_tiny.recipe(tmp_path, "llama")
    settings = [f"recipe={recipe}", "target=cpu-int4", *lm_tiny.TINY_LM, "lm.temperature=0", "distill.epochs=2"]
    ddp = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                          "-m", "edgekd", "build", "--out", str(tmp_path / "ddp"), *settings],
                         capture_output=True, text=True, timeout=600)
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    assert "split between 2 processes" in ddp.stderr
    one = subprocess.run([sys.executable, "-m", "edgekd", "build", "--out", str(tmp_path / "one"), *settings],
                         capture_output=True, text=True, timeout=600)
    assert one.returncode == 0, one.stderr[-3000:]
    (a,), (b,) = ((tmp_path / w / ".cache").glob("soft-labels-*") for w in ("ddp", "one"))
    for split in ("train", "val"):
        assert (a / f"{split}.json").read_text() == (b / f"{split}.json").read_text()
        x, y = np.load(a / f"{split}-topk.npz"), np.load(b / f"{split}-topk.npz")
        assert len(x["ids"]) > 0 and np.array_equal(x["ids"], y["ids"]) and np.array_equal(x["offsets"], y["offsets"])
        np.testing.assert_allclose(x["logprobs"].astype(float), y["logprobs"].astype(float), atol=2e-3)
    assert json.loads((tmp_path / "ddp" / "cpu-int4" / "report.json").read_text())["models"]["student-int4"]
