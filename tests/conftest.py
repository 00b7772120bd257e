import json
from pathlib import Path

import pytest

# Tiny mode: real data, real models and runtimes, a few steps each.
TINY = ["teacher.epochs=5", "distill.epochs=2", "quantize.epochs=1", "distill.views=2",
        "data.n_train=600", "data.n_val=200", "data.n_test=200", "export.int8_min_agreement=0.9"]
TINY_TARGET = ["target.iterations=50", "target.warmup=10"]


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


def read_report(build_dir: Path) -> dict:
    return json.loads((build_dir / "report.json").read_text())
