"""Registered architectures (scheme "arch": a bare name in the recipe), built for the data's channels
and classes. Each is a plain nn.Sequential so it traces with torch.fx (BatchNorm folding before
quantization) and exports to ONNX without surprises."""

from __future__ import annotations

from pathlib import Path

from ..errors import RecipeError
from . import Built, ModelIO, architectures, count_params, sources


def _cnn(blocks, *, in_channels: int, num_classes: int):
    """Conv3x3-BN-ReLU blocks, global average pool, linear head.
    blocks: (out_channels, stride, then_maxpool) per convolution."""
    import torch.nn as nn

    layers, c = [], in_channels
    for out, stride, pool in blocks:
        layers += [nn.Conv2d(c, out, 3, stride, 1, bias=False), nn.BatchNorm2d(out), nn.ReLU(inplace=True)]
        if pool:
            layers.append(nn.MaxPool2d(2))
        c = out
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c, num_classes)]  # (B, c, 1, 1) -> (B, K)
    return nn.Sequential(*layers)


@architectures.register("mnist-teacher")
def mnist_teacher(*, in_channels: int = 1, num_classes: int = 10):
    """VGG-style pairs at full, 1/2 and 1/4 resolution with max-pooling between (strided convolutions
    instead of pooling trained to a lower accuracy on MNIST)."""
    return _cnn([(32, 1, False), (32, 1, True), (64, 1, False), (64, 1, True), (128, 1, False), (320, 1, False)],
                in_channels=in_channels, num_classes=num_classes)


@architectures.register("mnist-student")
def mnist_student(*, in_channels: int = 1, num_classes: int = 10):
    """About a tenth of the teacher's parameters. Downsampling in the first convolution keeps every
    layer's matrix products large relative to per-op overhead, which is where INT8 kernels beat FP32 on
    CPU; full-resolution layers with few channels run slower in INT8 than in FP32."""
    return _cnn([(24, 2, False), (48, 2, False), (88, 1, False)], in_channels=in_channels, num_classes=num_classes)


@architectures.register("mnist-assistant")
def mnist_assistant(*, in_channels: int = 1, num_classes: int = 10):
    """Between mnist-teacher and mnist-student in size (about a third of the teacher's parameters, four
    times the student's): the teacher assistant of distill.method = "progressive" (Mirzadeh et al. 2020)."""
    return _cnn([(32, 1, True), (64, 1, True), (96, 1, False), (128, 1, False)], in_channels=in_channels,
                num_classes=num_classes)


@architectures.register("mnist-student-tiny")
def mnist_student_tiny(*, in_channels: int = 1, num_classes: int = 10):
    """About half of mnist-student."""
    return _cnn([(16, 2, False), (32, 2, False), (64, 1, False)], in_channels=in_channels, num_classes=num_classes)


@sources.register("arch")
def from_arch(spec, io: ModelIO, *, base: Path, teacher=None) -> Built:
    """A registered architecture with random weights (load_model loads `spec.weights` into it)."""
    if io.kind != "image" or len(io.input_shape) != 3:
        raise RecipeError(f"architecture '{spec.ref}' is an image model, but the data is {io.kind}; "
                          "use a text model source (hf:, layer-subset, narrow)")
    build = architectures.get(spec.ref)
    module = build(in_channels=io.input_shape[0], num_classes=io.num_classes)
    return Built(module, ready=False,
                 note=f"architecture {spec.ref} ({count_params(module):,} parameters, random init)")
