"""Training-time augmentation policies, registered in `policies`. A policy is
`fn(x (B, C, H, W) normalized float tensor, generator: torch.Generator) -> tensor of the same shape`.
Every random draw comes from `generator` (on the CPU, whatever the device of x), so a seed gives the
same views on every machine; shifts are fractions of the image size, so no policy knows a dataset.
Both geometric policies are one batched affine_grid + grid_sample: a per-image 2x3 matrix maps output
coordinates to input coordinates in [-1, 1]."""

from __future__ import annotations

import math

from ..errors import RecipeError
from ..registry import Registry

policies: Registry = Registry("augmentation policy", error=RecipeError)


def _warp(x, theta):
    """x (B, C, H, W) resampled through theta (B, 2, 3); border padding keeps the edge value."""
    import torch.nn.functional as F

    theta = theta.to(device=x.device, dtype=x.dtype)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)  # (B, H, W, 2)
    return F.grid_sample(x, grid, padding_mode="border", align_corners=False)


@policies.register("digits")
def digits(x, generator):
    """Small affine jitter for centred glyphs: rotation +-10 deg, scale 0.9-1.1, shift +-1/14 of the
    size (2 px of 28) on each axis."""
    import torch

    b = x.shape[0]
    angle = (torch.rand(b, generator=generator) * 2 - 1) * math.radians(10)
    scale = 1 + (torch.rand(b, generator=generator) * 2 - 1) * 0.1
    # 2/28 of the size is 2 * 2/28 = 2/14 in [-1, 1] coordinates, whose span is 2
    shift = (torch.rand(b, 2, generator=generator) * 2 - 1) * (2 * 2 / 28)  # (B, 2): x, y
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1)
    return _warp(x, theta)


@policies.register("natural")
def natural(x, generator):
    """Random resized crop (0.35-1 of the area, aspect 3/4-4/3, log-uniform), resampled back to H x W
    (bilinear), then a horizontal flip with p = 0.5: the usual policy for photographs."""
    import torch

    b = x.shape[0]
    area = 0.35 + torch.rand(b, generator=generator) * (1 - 0.35)
    log_r = math.log(3 / 4) + torch.rand(b, generator=generator) * (math.log(4 / 3) - math.log(3 / 4))
    aspect = torch.exp(log_r)  # crop width / height, relative to the image's own aspect
    # crop sides as fractions of W and H, clamped so the crop stays inside the image
    sw = torch.sqrt(area * aspect).clamp(max=1.0)
    sh = torch.sqrt(area / aspect).clamp(max=1.0)
    # crop centre anywhere that keeps the crop inside: |t| <= 1 - s in [-1, 1] coordinates
    tx = (torch.rand(b, generator=generator) * 2 - 1) * (1 - sw)
    ty = (torch.rand(b, generator=generator) * 2 - 1) * (1 - sh)
    flip = torch.where(torch.rand(b, generator=generator) < 0.5, -1.0, 1.0)  # mirror x_out -> -x_out
    zero = torch.zeros(b)
    theta = torch.stack([torch.stack([sw * flip, zero, tx], 1), torch.stack([zero, sh, ty], 1)], 1)  # (B, 2, 3)
    return _warp(x, theta)


@policies.register("none")
def none(x, generator):
    """No augmentation."""
    return x


def resolve_policy(setting: str, *, kind: str, input_shape) -> str:
    """The policy a recipe's data.augment means for this data: "auto" is "digits" for 1-channel images
    of at most 32 x 32, "natural" for other images, "none" for text."""
    if kind != "image":
        if setting not in ("auto", "none"):
            raise RecipeError(f"data.augment = {setting!r} applies to images; set data.augment = 'none' "
                              f"(or 'auto') for {kind} data")
        return "none"
    if setting == "auto":
        c, h, w = input_shape
        return "digits" if c == 1 and h <= 32 and w <= 32 else "natural"
    policies.get(setting)  # an unknown name lists the choices
    return setting


def augment(policy: str, x, generator):
    """x (B, C, H, W) under the named policy, drawing from `generator`."""
    return policies.get(policy)(x, generator)
