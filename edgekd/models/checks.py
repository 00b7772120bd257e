"""Fail early, with both shapes and the fix, when a model cannot take the data's input or predict its
classes: before any training, not in the middle of it."""

from __future__ import annotations

from ..errors import InputError
from . import ModelIO


def check_fits(module, io: ModelIO, *, what: str) -> None:
    """Run a batch of 2 zero inputs of `io.input_shape`; the output must be a (2, K) tensor."""
    import torch

    x = torch.zeros((2, *io.input_shape))
    was_training = module.training
    module.eval()  # BatchNorm in training mode would need more than one value per channel
    try:
        with torch.no_grad():
            y = module(x)
    except Exception as e:  # noqa: BLE001 - any failure here means "does not fit"
        raise InputError(f"{what} does not accept the data's inputs of shape {tuple(x.shape)} "
                         f"({type(e).__name__}: {first_line(e)}); the data and the model must agree on the "
                         "input shape (data.color, data.resize, data.crop)") from None
    finally:
        module.train(was_training)
    if not isinstance(y, torch.Tensor) or tuple(y.shape) != (2, io.num_classes):
        got = f"shape {tuple(y.shape)}" if isinstance(y, torch.Tensor) else f"a {type(y).__name__}"
        raise InputError(f"{what} outputs {got} for a batch of 2 inputs of shape {tuple(io.input_shape)}, but the "
                         f"data has {io.num_classes} classes: expected a logits tensor of shape (2, {io.num_classes})")


def first_line(e: BaseException) -> str:
    """An exception's first line, for one-line messages."""
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__
