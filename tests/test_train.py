"""The training loop's guard against a learning rate too high for the model and data: a diverging or
early-peaking run is repeated once from the same start at a lower rate, and says so."""
import numpy as np
import pytest
import torch

from edgekd.errors import EdgeKDError
from edgekd.train import RETRY_LR_DIVISOR, FitSpec, fit, peaked_early


def _problem(seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(256, 8, generator=g)
    y = (x[:, 0] + 0.5 * x[:, 1] > 0).long()
    return x, y


def _run(lr, *, retry=True, epochs=12, tmp_path=None, log=None):
    x, y = _problem()
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 2))

    def batches(epoch, g):
        order = torch.randperm(len(x), generator=g)
        for i in range(0, len(x), 32):
            yield x[order[i:i + 32]], y[order[i:i + 32]]

    def step(forward, batch):
        return torch.nn.functional.cross_entropy(forward(batch[0]), batch[1])

    def validate(m):
        with torch.no_grad():
            return float((m(x).argmax(1) == y).float().mean())

    spec = FitSpec(epochs=epochs, lr=lr, batch_size=32, steps_per_epoch=8, optimizer="sgd", retry=retry)
    return fit(model, spec, batches=batches, step=step, validate=validate, log=log,
               checkpoint=None if tmp_path is None else tmp_path / "ck.pt")


@pytest.mark.parametrize("chosen,epochs,early", [(1, 40, True), (4, 40, True), (5, 40, False), (0, 3, True),
                                                 (1, 3, False), (0, 2, False), (30, 40, False)])
def test_peaked_early(chosen, epochs, early):
    assert peaked_early(chosen, epochs) is early


def test_a_sane_rate_trains_once():
    lines = []
    r = _run(0.05, log=lines.append)
    assert r.val_score > 0.9 and "first_run" not in r.info and not lines


def test_a_diverging_rate_is_retried_lower_and_said(tmp_path):
    lines = []
    r = _run(20.0, log=lines.append, tmp_path=tmp_path)
    assert len(lines) == 1 and "loss became" in lines[0] and "training again from the start at lr 4" in lines[0]
    assert r.info["first_run"]["lr"] == 20.0 and r.info["lr"] == 20.0 / RETRY_LR_DIVISOR
    assert np.isfinite(r.history[-1]["loss"])


def test_an_early_peak_is_retried_lower_and_does_better():
    lines = []
    r = _run(5.0, log=lines.append)
    assert len(lines) == 1 and "its best epoch was 1 of 12" in lines[0]
    assert r.info["first_run"]["chosen_epoch"] == 1 and r.val_score >= r.info["first_run"]["val_score"]


def test_diverging_twice_stops_with_one_line():
    with pytest.raises(EdgeKDError, match=r"set a lower learning rate") as e:
        _run(1e12)
    assert "\n" not in str(e.value)


def test_without_retry_divergence_is_one_line_at_once():
    with pytest.raises(EdgeKDError, match=r"loss became") as e:
        _run(1e12, retry=False)
    assert "\n" not in str(e.value)


def _counted(scores, *, extend, epochs=3, log=None):
    """A run whose validation scores are given in order (the first is the starting weights')."""
    x, y = _problem()
    torch.manual_seed(0)
    model = torch.nn.Linear(8, 2)
    it = iter(scores)

    def batches(epoch, g):
        yield x[:32], y[:32]

    spec = FitSpec(epochs=epochs, lr=0.01, batch_size=32, steps_per_epoch=1, optimizer="sgd", extend=extend)
    return fit(model, spec, batches=batches, step=lambda f, b: torch.nn.functional.cross_entropy(f(b[0]), b[1]),
               validate=lambda m: next(it), log=log)


def test_a_teacher_still_improving_at_its_end_trains_more_rounds_until_a_plateau():
    lines = []
    # 3 epochs improving; round 1 (2 epochs) improves; round 2's scores never beat it: a plateau
    r = _counted([0.1, 0.2, 0.3, 0.4, 0.4, 0.5, 0.6, 0.6, 0.6, 0.6], extend=2, log=lines.append)
    assert [m["improved"] for m in r.info["extended"]] == [True, False]
    assert r.chosen_epoch == 5 and r.val_score == 0.6 and len(r.history) == 7
    assert [m["lr"] for m in r.info["extended"]] == [0.005, 0.0025]
    assert len(lines) == 2 and "still improving at epoch 3" in lines[0]


def test_a_run_whose_best_epoch_is_not_its_last_is_not_extended():
    r = _counted([0.1, 0.3, 0.5, 0.4], extend=2)
    assert "extended" not in r.info and r.chosen_epoch == 2 and len(r.history) == 3
    r = _counted([0.1, 0.2, 0.3, 0.4], extend=0)  # extend 0: exactly `epochs`, improving or not
    assert "extended" not in r.info and r.chosen_epoch == 3
