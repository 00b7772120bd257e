"""Architectures (by name) and teacher sources (train, state_dict, TorchScript, factory)."""

from __future__ import annotations

import importlib
from pathlib import Path

from .errors import InputError, RecipeError
from .registry import Registry

architectures: Registry = Registry("architecture", error=RecipeError)
teacher_sources: Registry = Registry("teacher source", error=RecipeError)


def _cnn(blocks, *, in_channels: int = 1, num_classes: int = 10):
    """Conv3x3-BN-ReLU blocks, global average pool, linear head. Plain nn.Sequential so it traces with
    torch.fx (BatchNorm folding for quantization) and exports to ONNX without surprises.
    blocks: (out_channels, stride, then_maxpool) per convolution."""
    import torch.nn as nn

    layers, c = [], in_channels
    for out, stride, pool in blocks:
        layers += [nn.Conv2d(c, out, 3, stride, 1, bias=False), nn.BatchNorm2d(out), nn.ReLU(inplace=True)]
        if pool:
            layers.append(nn.MaxPool2d(2))
        c = out
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c, num_classes)]
    return nn.Sequential(*layers)


@architectures.register("mnist-teacher")
def mnist_teacher(**kw):
    """~512k params, ~40M MACs: VGG-style pairs at 28x28, 14x14 and 7x7 with max-pooling between
    (98.7% test accuracy after 8 epochs on the 3,500-image split; strided convolutions instead of
    pooling reached only ~98.0%)."""
    return _cnn([(32, 1, False), (32, 1, True), (64, 1, False), (64, 1, True), (128, 1, False), (320, 1, False)], **kw)


@architectures.register("mnist-student")
def mnist_student(**kw):
    """~50k params (10.3x fewer than the teacher), ~2.4M MACs. Downsampling in the first convolution
    keeps every layer's matrix products large relative to per-op overhead, which is where INT8 kernels
    beat FP32 on CPU; 28x28 layers with few channels run slower in INT8 than in FP32."""
    return _cnn([(24, 2, False), (48, 2, False), (88, 1, False)], **kw)


@architectures.register("mnist-student-tiny")
def mnist_student_tiny(**kw):
    """~24k params, ~1.2M MACs."""
    return _cnn([(16, 2, False), (32, 2, False), (64, 1, False)], **kw)


def build_arch(name: str, **kw):
    return architectures.get(name)(**kw)


def count_params(module) -> int:
    return sum(p.numel() for p in module.parameters())


@teacher_sources.register("train")
def _from_arch(spec, recipe):
    return build_arch(spec.arch)


@teacher_sources.register("checkpoint")
def _from_state_dict(spec, recipe):
    import pickle

    import torch

    path = _existing(recipe.path(spec.checkpoint), "teacher.checkpoint")
    try:
        # weights_only: a checkpoint holding pickled code is refused, never executed.
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise InputError(f"teacher checkpoint '{path}' holds more than weights and was refused "
                         f"(weights_only loading): {str(e).splitlines()[0]}; save model.state_dict() instead") from None
    except Exception as e:  # noqa: BLE001 - torch raises many types for a truncated/corrupt zip
        raise InputError(f"teacher checkpoint '{path}' cannot be read ({type(e).__name__}: "
                         f"{str(e).splitlines()[0] if str(e) else 'corrupt'}); re-save it with torch.save(model.state_dict(), path)") from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise InputError(f"teacher checkpoint '{path}' is not a state_dict (a dict of tensors); "
                         "save model.state_dict(), or use teacher.torchscript / teacher.factory")
    model = build_arch(spec.arch)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        first = str(e).splitlines()[1].strip() if len(str(e).splitlines()) > 1 else str(e)
        raise InputError(f"teacher checkpoint '{path}' does not fit architecture '{spec.arch}' ({first}); "
                         "set teacher.arch to the architecture it was saved from") from None
    return model


@teacher_sources.register("torchscript")
def _from_torchscript(spec, recipe):
    import torch

    path = _existing(recipe.path(spec.torchscript), "teacher.torchscript")
    try:
        return torch.jit.load(str(path), map_location="cpu")
    except Exception as e:  # noqa: BLE001
        raise InputError(f"teacher TorchScript '{path}' cannot be loaded ({type(e).__name__}); "
                         "save it with torch.jit.save(torch.jit.script(model), path)") from None


@teacher_sources.register("factory")
def _from_factory(spec, recipe):
    import torch

    mod_name, _, fn_name = spec.factory.partition(":")
    try:
        fn = getattr(importlib.import_module(mod_name), fn_name)
    except (ImportError, AttributeError) as e:
        raise InputError(f"teacher.factory '{spec.factory}' cannot be imported ({e}); "
                         "check the module is on PYTHONPATH and the function exists") from None
    model = fn()
    if not isinstance(model, torch.nn.Module):
        raise InputError(f"teacher.factory '{spec.factory}' returned {type(model).__name__}, not a torch.nn.Module")
    return model


def _existing(path: Path, key: str) -> Path:
    if not path.is_file():
        raise InputError(f"{key} file '{path}' does not exist; fix the path in the recipe")
    return path


def load_teacher(spec, recipe):
    """The teacher module, before any training."""
    return teacher_sources.get(spec.source)(spec, recipe)


def check_fits(model, input_shape, num_classes: int, *, what: str) -> None:
    """Fail early, with shapes, when a model cannot take the data's input or predict its classes."""
    import torch

    model.eval()
    x = torch.zeros((2, *input_shape))
    try:
        with torch.no_grad():
            y = model(x)
    except Exception as e:  # noqa: BLE001 - any failure here means "does not fit"
        raise InputError(f"{what} does not accept inputs of shape {tuple(x.shape)} "
                         f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); "
                         "the data and the model must agree on the input shape") from None
    if not isinstance(y, torch.Tensor) or tuple(y.shape) != (2, num_classes):
        got = tuple(y.shape) if isinstance(y, torch.Tensor) else type(y).__name__
        raise InputError(f"{what} outputs {got} for a batch of 2, but the data has {num_classes} classes; "
                         f"expected (2, {num_classes})")
