"""Model sources: one signature, `source(spec: ModelSpec, io: ModelIO, *, base: Path, teacher=None) -> Built`,
registered in `sources` under the scheme a recipe's `teacher.model` / `student.model` starts with
(`torchscript:`, `factory:`, `hf:` ...; a bare name is a registered architecture, scheme "arch").
Every source is told the data's input shape and class count, and builds the model for them."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..errors import RecipeError
from ..registry import Registry

sources: Registry = Registry("model source", error=RecipeError)
architectures: Registry = Registry("architecture", error=RecipeError)


@dataclass(frozen=True)
class ModelIO:
    """What the data asks of a model."""
    kind: str  # "image", "text" or "lm" (causal language models)
    input_shape: tuple[int, ...]  # (C, H, W) for images, () for text
    num_classes: int  # 0: no classes (embedding)
    labels: list[str] = field(default_factory=list)


@dataclass
class Built:
    module: object  # torch.nn.Module: images (B, C, H, W) -> logits (B, K); text: edgekd's text wrapper
    # True when its outputs already mean this data's classes (trained weights and a matching head);
    # a teacher that is not ready is trained first when its fine_tune is "auto"
    ready: bool
    note: str = ""  # one line for the report: what was built and from where


def load_model(spec, io: ModelIO, *, base: Path, teacher=None, seed: int = 0) -> Built:
    """Build `spec.model` for `io` (random initialisation seeded with `seed`), then load `spec.weights`
    into it when given. A bare name is a registered architecture, or a source that needs no reference
    (a text student: layer-subset, narrow)."""
    import torch

    _register_builtin()
    scheme = spec.scheme
    if scheme == "arch" and spec.model in sources and spec.model not in architectures:
        scheme = spec.model
    torch.manual_seed(seed)
    built = sources.get(scheme)(spec, io, base=Path(base), teacher=teacher)
    if spec.weights:
        from .weights import load_weights

        load_weights(built.module, _path(spec.weights, base), what=spec.model)
        built.ready = True
    return built


def build_arch(name: str, *, in_channels: int, num_classes: int):
    """A registered architecture with random weights, for `in_channels` x H x W inputs and `num_classes`."""
    _register_builtin()
    return architectures.get(name)(in_channels=in_channels, num_classes=num_classes)


def architecture_names() -> list[str]:
    _register_builtin()
    return architectures.names()


def _path(value: str, base: Path) -> Path:
    p = Path(value).expanduser()
    return p if p.is_absolute() else Path(base) / p


def count_params(module) -> int:
    from torch.nn.parameter import is_lazy

    # a lazy layer (nn.LazyLinear ...) has no size until its first forward
    return sum(p.numel() for p in module.parameters() if not is_lazy(p))


def _register_builtin() -> None:
    # Importing a source module registers it; heavy libraries are imported inside its functions.
    from . import archs, hf, hf_image, hf_text, library, scripted  # noqa: F401
