"""Parsers of the recipe's compound values (a layer map, a normalization), shared by the recipe's
validation and the stages that read them, and the sections' one-line check."""

from __future__ import annotations

from .errors import RecipeError


def check(cond: bool, key: str, want: str, got) -> None:
    """A recipe value's validation: `key must be WANT, got GOT` when `cond` fails."""
    if not cond:
        raise RecipeError(f"{key} must be {want}, got {got!r}")


def parse_mean_std(text: str) -> tuple[list[float], list[float]]:
    """"0.5,0.5,0.5/0.25,0.25,0.25" -> ([mean...], [std...])."""
    try:
        m, s = text.split("/")
        mean, std = [float(v) for v in m.split(",")], [float(v) for v in s.split(",")]
    except ValueError:
        raise RecipeError(f"data.normalize must be 'auto', 'imagenet', 'none' or 'MEAN,.../STD,...' "
                          f"(e.g. '0.5,0.5,0.5/0.25,0.25,0.25'), got {text!r}") from None
    if len(mean) != len(std) or min(std) <= 0:
        raise RecipeError(f"data.normalize {text!r}: as many means as stds, every std > 0")
    return mean, std


def parse_layer_map(text: str) -> dict[int, int]:
    """"1:2,2:4,3:6" -> {1: 2, 2: 4, 3: 6}: student layer -> teacher layer, both 1-based."""
    out = {}
    try:
        for pair in text.split(","):
            s, t = pair.split(":")
            out[int(s)] = int(t)
    except ValueError:
        raise RecipeError(f"distill.layer_map must look like '1:2,2:4,3:6' (student:teacher, 1-based), got {text!r}") from None
    if not out or min(out) < 1 or min(out.values()) < 1:
        raise RecipeError(f"distill.layer_map layers are 1-based, got {text!r}")
    return out
