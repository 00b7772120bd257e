"""The example's student: a depthwise-separable CNN in the style of the DS-CNN keyword-spotting models
for microcontrollers (Zhang et al. 2017, "Hello Edge"): a strided 3x3 convolution, then blocks of a 3x3
depthwise convolution and a 1x1 pointwise convolution, each followed by BatchNorm and ReLU, global
average pooling and a linear classifier: 3,562 parameters for 1-channel 28x28 digits."""

import torch.nn as nn


def _conv_bn_relu(cin: int, cout: int, k: int, stride: int = 1, groups: int = 1) -> list:
    return [nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]


def dscnn(*, in_channels: int, num_classes: int) -> nn.Sequential:
    """(B, C, H, W) -> (B, num_classes); 16 channels after the stem, 32 at the end, one stride-2 block."""
    layers, c = _conv_bn_relu(in_channels, 16, 3, stride=2), 16
    for width, stride in ((16, 1), (24, 2), (24, 1), (32, 1)):
        layers += _conv_bn_relu(c, c, 3, stride, groups=c) + _conv_bn_relu(c, width, 1)  # depthwise, pointwise
        c = width
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c, num_classes))
