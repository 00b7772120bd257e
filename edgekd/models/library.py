"""Thin adapters to the image-model libraries: "torchvision:NAME" and "timm:NAME". Built for the
data's classes (and channels), never downloaded: random init unless the recipe gives weights."""

from __future__ import annotations

import importlib
from pathlib import Path

from ..errors import InputError, RecipeError
from ..registry import closest
from . import Built, ModelIO, count_params, sources
from .checks import first_line

# What to use instead when a library cannot be imported: transformers' own image architectures.
_INSTEAD = "hf-config:resnet, hf-config:mobilenet_v2, hf-config:efficientnet, hf-config:convnext or hf-config:vit"


@sources.register("torchvision")
def from_torchvision(spec, io: ModelIO, *, base: Path, teacher=None) -> Built:
    """torchvision.models.get_model(NAME, weights=None, num_classes=K), first convolution adapted to C."""
    tv = _import("torchvision", spec)
    names = tv.models.list_models()
    if spec.ref not in names:
        raise RecipeError(f"torchvision has no model '{spec.ref}'{closest(spec.ref, names)}")
    c, _, _ = _image(io, spec)
    module = tv.models.get_model(spec.ref, weights=None, num_classes=io.num_classes)
    if c != 3:
        adapt_first_conv(module, c)
    return Built(module, ready=False, note=f"torchvision {spec.ref} ({count_params(module):,} parameters, random init)")


@sources.register("timm")
def from_timm(spec, io: ModelIO, *, base: Path, teacher=None) -> Built:
    """timm.create_model(NAME, pretrained=False, num_classes=K, in_chans=C)."""
    timm = _import("timm", spec)
    names = timm.list_models()
    if spec.ref not in names:
        raise RecipeError(f"timm has no model '{spec.ref}'{closest(spec.ref, names)}")
    c, _, _ = _image(io, spec)
    module = timm.create_model(spec.ref, pretrained=False, num_classes=io.num_classes, in_chans=c)
    return Built(module, ready=False, note=f"timm {spec.ref} ({count_params(module):,} parameters, random init)")


def adapt_first_conv(module, in_channels: int) -> None:
    """Replace the first nn.Conv2d by one taking `in_channels` (fresh weights, same geometry)."""
    import torch.nn as nn

    for name, conv in module.named_modules():
        if isinstance(conv, nn.Conv2d):
            new = nn.Conv2d(in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                            conv.dilation, bias=conv.bias is not None, padding_mode=conv.padding_mode)
            parent_name, _, attr = name.rpartition(".")
            setattr(module.get_submodule(parent_name) if parent_name else module, attr, new)
            return
    raise InputError(f"{type(module).__name__} has no convolution to adapt to {in_channels} input channels")


def _import(name: str, spec):
    try:
        return importlib.import_module(name)
    except Exception as e:  # noqa: BLE001 - torchvision's C++ ops fail to load with RuntimeError, not ImportError
        raise InputError(f"model '{spec.model}' needs {name}, which cannot be imported here ({type(e).__name__}: "
                         f"{first_line(e)[:120]}); install a {name} built for this torch, or use a transformers architecture: "
                         f"{_INSTEAD}") from None


def _image(io: ModelIO, spec) -> tuple[int, int, int]:
    if io.kind != "image" or len(io.input_shape) != 3:
        raise RecipeError(f"model '{spec.model}' is an image model, but the data is {io.kind}")
    return io.input_shape
