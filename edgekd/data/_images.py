"""The one path from raw images to the model's input, shared by every image source: color conversion,
resize (shorter side, bilinear) and center crop, scale to 0-1, normalization, NCHW. It also writes those
steps as data (`Splits.preprocessing`) so an app can repeat them with no other knowledge.

The exact arithmetic an app repeats: color conversion is Pillow's `convert("L")` / `convert("RGB")`;
resize is Pillow's `Image.resize(size, BILINEAR)` (which filters when shrinking) to the shorter side R,
the longer side floor(long * R / short) (the step's "longer_side": "floor"; manifests written before that
key existed rounded it, and say nothing); the center crop starts at floor((size - crop) / 2)."""

from __future__ import annotations

import numpy as np

from ..errors import InputError, RecipeError

IMAGENET = ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
# Pillow modes with one intensity channel (alpha dropped): "auto" color keeps these grayscale.
GRAY_MODES = ("1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "F")


def prepare_images(splits: dict, spec, *, raw: str, where: str) -> tuple[dict[str, np.ndarray], dict]:
    """splits: {"train": ..., "val": ..., "test": ...}, each a (N, H, W, C) uint8 or float array or a
    list of images (PIL images, (H, W) or (H, W, C) arrays). Returns ({name: float32 (N, C, H, W)},
    preprocessing). Normalization statistics ("auto") come from the training split only. `raw` says in
    one line what a raw input is; `where` (the data's path) names the data in errors."""
    color = _resolve_color(splits, spec.color, where)
    out = {name: _to_array(images, color, spec, where) for name, images in splits.items()}
    shapes = {a.shape[1:] for a in out.values() if len(a)}
    if len(shapes) > 1:  # each split is one size already; the splits must agree too
        a, b = sorted(shapes)[:2]
        raise InputError(f"images in {where} differ in size ({_hw(a)} and {_hw(b)}); set data.resize and "
                         "data.crop (e.g. data.resize=64 data.crop=64) to give them one size")
    uint8 = all(a.dtype == np.uint8 for a in out.values())
    # x / 255.0 in float64, then float32 (the arrays the MNIST source always produced), as a table of
    # the 256 values, so no float64 copy of the data is made
    table = (np.arange(256) / 255.0).astype(np.float32)
    for name, a in out.items():
        a = table[a] if uint8 else a.astype(np.float32)
        out[name] = np.ascontiguousarray(a.transpose(0, 3, 1, 2))  # (N, H, W, C) -> (N, C, H, W)
    c, h, w = out["train"].shape[1:]
    mean, std = _stats(out["train"], spec.normalize)
    m, s = mean.reshape(1, c, 1, 1), std.reshape(1, c, 1, 1)  # float32, so the arithmetic stays float32
    for name in out:
        out[name] = (out[name] - m) / s
    steps = []
    if spec.resize:
        steps.append({"op": "resize", "shorter_side": spec.resize, "interpolation": "bilinear", "longer_side": "floor"})
    if spec.crop:
        steps.append({"op": "center_crop", "size": [spec.crop, spec.crop]})
    if uint8:
        steps.append({"op": "scale", "factor": 1 / 255.0})
    steps.append({"op": "normalize", "mean": [float(v) for v in mean], "std": [float(v) for v in std]})
    steps.append({"op": "layout", "order": "NCHW"})
    pre = {"kind": "image", "raw": raw, "color": {1: "grayscale", 3: "rgb"}.get(c, "stored"),
           "steps": steps, "input_shape": [int(c), int(h), int(w)]}
    return out, pre


def _hw(shape) -> str:
    return f"{shape[1]}x{shape[0]}" if len(shape) >= 2 else str(shape)  # W x H, as image viewers say


def _channels(im) -> int:
    if hasattr(im, "mode"):  # a PIL image
        return 1 if im.mode in GRAY_MODES else 3
    return 1 if im.ndim == 2 else im.shape[-1]


def _resolve_color(splits: dict, color: str, where: str) -> str:
    """"grayscale", "rgb" or "stored" (arrays of one channel count other than 1 and 3, kept as they are)."""
    if color != "auto":
        return color
    counts, pil = set(), False
    for images in splits.values():
        if isinstance(images, np.ndarray):
            counts.add(images.shape[-1])
        else:
            counts.update(_channels(im) for im in images)
            pil = pil or any(hasattr(im, "mode") for im in images)
    if counts <= {1}:
        return "grayscale"
    if len(counts) == 1 and not pil:
        return "rgb" if counts == {3} else "stored"
    if counts <= {1, 3, 4}:
        return "rgb"  # mixed grayscale and color images all become RGB; RGBA drops alpha
    raise InputError(f"images in {where} have different channel counts {sorted(counts)}; store them with one, "
                     "or set data.color = 'rgb' or 'grayscale'")


def _convert(a: np.ndarray, color: str, where: str) -> np.ndarray:
    """(..., H, W, C) array -> the color's channels: gray -> RGB repeats the channel, RGB(A) -> gray uses
    Pillow's luma (ITU-R 601-2: 0.299 R + 0.587 G + 0.114 B, integer-rounded for uint8 as Pillow does)."""
    c = a.shape[-1]
    if color == "stored" or (color == "grayscale" and c == 1) or (color == "rgb" and c == 3):
        return a
    if color == "rgb" and c == 1:
        return np.repeat(a, 3, axis=-1)
    if color == "rgb" and c == 4:
        return a[..., :3]
    if color == "grayscale" and c in (3, 4):
        r, g, b = (a[..., i] for i in range(3))
        if a.dtype == np.uint8:
            y = (r.astype(np.uint32) * 19595 + g.astype(np.uint32) * 38470 + b.astype(np.uint32) * 7471 + 0x8000) >> 16
            return y.astype(np.uint8)[..., None]
        return (0.299 * r + 0.587 * g + 0.114 * b)[..., None].astype(a.dtype)
    raise RecipeError(f"data.color = {color!r} cannot convert the {c}-channel images of {where}; "
                      "set data.color = 'auto' to keep their channels")


def _image(im, color: str, where: str) -> np.ndarray:
    """One image as an (H, W, C) array in the requested color."""
    if hasattr(im, "mode"):  # PIL: let Pillow convert its own modes (palette, CMYK, 16-bit...)
        a = np.asarray(im.convert("L" if color == "grayscale" else "RGB"))
        return a[..., None] if a.ndim == 2 else a
    a = np.asarray(im)
    return _convert(a[..., None] if a.ndim == 2 else a, color, where)


def _resize(a: np.ndarray, shorter: int, *, longer: str = "floor") -> np.ndarray:
    """(H, W, C) -> shorter side `shorter`, the other side int(long * shorter / short) (truncated, as
    torchvision's Resize and transformers' image processors size it, so a model trained with either
    sees the same pixels); Pillow bilinear, per channel (mode "L" for uint8, "F" for float), which
    equals resizing the whole L/RGB image. longer="round": floor(long * shorter / short + 0.5), what
    manifests without a "longer_side" key were built with."""
    from PIL import Image

    h, w = a.shape[:2]
    half = 0.5 if longer == "round" else 0.0
    size = (shorter, max(1, int(h * shorter / w + half))) if w <= h else (max(1, int(w * shorter / h + half)), shorter)
    if (w, h) == size:
        return a
    chans = [np.asarray(Image.fromarray(a[..., i] if a.dtype == np.uint8 else a[..., i].astype(np.float32))
                        .resize(size, Image.BILINEAR)) for i in range(a.shape[-1])]
    return np.stack(chans, -1).astype(a.dtype, copy=False)


def _crop(a: np.ndarray, size: int, where: str) -> np.ndarray:
    h, w = a.shape[:2]
    if size > h or size > w:
        raise RecipeError(f"data.crop = {size} is larger than an image of {where} ({w}x{h} after resizing); "
                          "lower data.crop or raise data.resize")
    top, left = (h - size) // 2, (w - size) // 2
    return a[top:top + size, left:left + size]


def _to_array(images, color: str, spec, where: str) -> np.ndarray:
    """One split -> (N, H, W, C), uint8 or float, in the requested color, resized and cropped."""
    if isinstance(images, np.ndarray) and not spec.resize and not spec.crop:
        return _convert(images, color, where)  # the fast path: already one size
    out = []
    for im in images:
        a = _image(im, color, where)
        if spec.resize:
            a = _resize(a, spec.resize)
        if spec.crop:
            a = _crop(a, spec.crop, where)
        if out and a.shape != out[0].shape:
            hint = "data.crop" if spec.resize else "data.resize and data.crop"
            raise InputError(f"images in {where} differ in size ({_hw(out[0].shape)} and {_hw(a.shape)}); set "
                             f"{hint} (e.g. data.resize=64 data.crop=64) to give them one size")
        out.append(a)
    if not out:
        return np.zeros((0, 1, 1, 1), np.uint8)
    return np.stack(out)


def _stats(x: np.ndarray, normalize: str) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel (mean, std) float32 for x (N, C, H, W) of the training split."""
    from ..recipe import parse_mean_std

    c = x.shape[1]
    if normalize == "auto":
        # float32 reductions over each channel, as the MNIST source has always computed them
        mean = np.array([x[:, i].mean() for i in range(c)], np.float32)
        std = np.array([x[:, i].std() for i in range(c)], np.float32)
        return mean, np.where(std > 0, std, np.float32(1))  # a constant channel is only centred
    if normalize == "none":
        return np.zeros(c, np.float32), np.ones(c, np.float32)
    mean, std = IMAGENET if normalize == "imagenet" else parse_mean_std(normalize)
    if len(mean) == 1:
        mean, std = mean * c, std * c
    if len(mean) != c:
        raise RecipeError(f"data.normalize = {normalize!r} gives {len(mean)} channels but the images have {c}; "
                          f"give {c} means and stds, or 'auto'")
    return np.array(mean, np.float32), np.array(std, np.float32)
