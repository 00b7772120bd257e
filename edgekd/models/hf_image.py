"""transformers image classifiers (ResNet, MobileNetV2, EfficientNet, ConvNeXt, ViT, ...): a trained
model from a folder, an installed package or the hub (`from_pretrained`), or a fresh one from a model
type or config.json (`from_config`). Either comes wrapped as pixels (B, C, H, W) -> logits (B, K)."""

from __future__ import annotations

from pathlib import Path

import torch

from ..errors import InputError, RecipeError
from ..registry import closest
from . import Built, ModelIO, _path, count_params
from .checks import first_line
from .hf import resolve_ref

# Set from the data; a config override of them would build a model that does not fit it.
_FROM_DATA = ("num_channels", "image_size", "num_labels", "id2label", "label2id")


class ImageClassifier(torch.nn.Module):
    """A transformers image classifier as a plain tensor function, so one training loop, torch.onnx and
    torch.export treat it like any other module. The transformers model stays as `.hf`, its config
    labelled with the data's classes, for save_pretrained and optimum's exporter."""

    def __init__(self, hf):
        super().__init__()
        self.hf = hf

    def forward(self, x):  # (B, C, H, W) -> (B, K)
        return self.hf(pixel_values=x, return_dict=True).logits


def from_pretrained(spec, io: ModelIO, *, base: Path) -> Built:
    """A trained classifier: a folder (relative to `base`), "package:NAME/SUBDIR" inside an installed
    package, or a hub id. Ready when its labels are the data's (reordered if need be); otherwise its head
    is replaced for the data's classes and it is not ready."""
    from transformers import AutoConfig, AutoModelForImageClassification

    c, _, _ = _image_shape(spec, io)
    where = resolve_ref(spec.ref, base)
    trust = bool(spec.trust_remote_code)  # an explicit False: transformers would otherwise ask on stdin
    try:
        config = AutoConfig.from_pretrained(where, trust_remote_code=trust)
    except Exception as e:  # noqa: BLE001 - missing config.json, unreachable hub, remote code refused ...
        raise _load_error(spec, where, e) from None
    channels = getattr(_vision(config), "num_channels", c)
    if channels != c:
        raise InputError(f"model '{spec.model}' takes {channels}-channel images but the data has {c} channel(s); "
                         f"set data.color = \"{'rgb' if channels == 3 else 'grayscale'}\" or use a model for "
                         f"{c}-channel input")
    theirs = [str(config.id2label[i]) for i in range(config.num_labels)]
    ours = _names(io)
    _label(config, ours)
    try:
        # ignore_mismatched_sizes: a head for another class count is left out and initialized afresh
        hf = AutoModelForImageClassification.from_pretrained(where, config=config, ignore_mismatched_sizes=True,
                                                             trust_remote_code=trust)
    except Exception as e:  # noqa: BLE001
        raise _load_error(spec, where, e) from None
    hf.eval()
    heads = _heads(hf, len(ours))
    same = bool(ours) and len(theirs) == len(ours) and set(theirs) == set(ours)
    if same and theirs != ours and not heads:
        same = False  # no linear head to reorder: train a new one rather than guess
    if same and theirs != ours:
        order = [theirs.index(name) for name in ours]  # data class j = model output order[j]
        with torch.no_grad():
            for lin in heads:
                lin.weight.copy_(lin.weight[order])  # (K, D) rows in the data's order
                if lin.bias is not None:
                    lin.bias.copy_(lin.bias[order])
    elif not same and len(theirs) == len(ours):
        for lin in heads:  # same count, other classes: a head that pretends to know them would mislead
            lin.reset_parameters()
    module = ImageClassifier(hf)
    if same:
        labels = f"its {len(ours)} labels{' reordered to the data' if theirs != ours else ''}"
    else:
        such = f" such as {theirs[0]!r}" if theirs else ""
        labels = f"head replaced: {len(theirs)} labels{such} -> the data's {len(ours)}"
    note = f"{config.model_type} from {spec.ref} ({count_params(module):,} parameters; {labels})"
    return Built(module, ready=same, note=note)


def from_config(spec, io: ModelIO, *, base: Path) -> Built:
    """A fresh classifier: "hf-config:MODEL_TYPE" or a config.json path (relative to `base`), with
    spec.config's JSON overrides; channels, image size and labels from the data; random init."""
    from transformers import AutoConfig, AutoModelForImageClassification
    from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES as KNOWN

    _image_shape(spec, io)
    overrides = spec.config_overrides() if spec.config else {}
    for key in overrides:
        if key in _FROM_DATA:
            raise RecipeError(f"config override '{key}' of '{spec.model}' is set from the data; remove it")
    trust = bool(spec.trust_remote_code)
    ref = spec.ref
    if ref.endswith(".json") or "/" in ref or "\\" in ref:
        path = _path(ref, base)
        if not path.exists():
            raise InputError(f"config file '{path}' does not exist; fix the path after 'hf-config:'")
        try:
            config = AutoConfig.from_pretrained(str(path), trust_remote_code=trust)
        except Exception as e:  # noqa: BLE001
            raise InputError(f"config '{path}' cannot be read by transformers ({type(e).__name__}: "
                             f"{first_line(e)[:160]})") from None
        _check_keys(spec, config, overrides)
        for key, value in overrides.items():
            setattr(config, key, value)
    else:
        if ref not in KNOWN:
            raise RecipeError(f"hf-config model type '{ref}' is not an image classifier transformers knows"
                              f"{closest(ref, KNOWN)} ({', '.join(sorted(KNOWN))})")
        _check_keys(spec, AutoConfig.for_model(ref), overrides)
        # overrides go to the constructor, so the values it derives from them (stage counts ...) follow
        config = AutoConfig.for_model(ref, **overrides)
    _fit(config, io)
    capped = _cap_head_dropout(config, overrides)
    try:
        hf = AutoModelForImageClassification.from_config(config, trust_remote_code=trust)
    except ValueError as e:
        raise RecipeError(f"'{spec.model}' is a {config.model_type} config, not an image classifier "
                          f"({first_line(e)[:160]})") from None
    except Exception as e:  # noqa: BLE001 - inconsistent overrides fail inside the model's constructor
        raise RecipeError(f"'{spec.model}' with config {spec.config or '{}'} cannot be built "
                          f"({type(e).__name__}: {first_line(e)[:160]}); fix the config overrides") from None
    module = ImageClassifier(hf)
    return Built(module, ready=False,
                 note=f"{config.model_type} from config ({count_params(module):,} parameters, random init{capped})")


# Head dropout above this fights distillation: the student must match soft targets through a layer that
# zeroes most of its features (MobileNetV2's library default is 0.8, MobileNetV1's 0.999, chosen for
# ImageNet from scratch); HEAD_DROPOUT is what a config left at such a default gets instead.
MAX_HEAD_DROPOUT, HEAD_DROPOUT = 0.5, 0.2
_HEAD_DROPOUT_KEYS = ("classifier_dropout_prob", "dropout_rate", "classifier_dropout")


def _cap_head_dropout(config, overrides: dict) -> str:
    """Cap a library's head-dropout default (never a value the recipe set); -> the note's words."""
    for key in _HEAD_DROPOUT_KEYS:
        value = getattr(config, key, None)
        if isinstance(value, float) and value > MAX_HEAD_DROPOUT and key not in overrides:
            setattr(config, key, HEAD_DROPOUT)
            return f"; {key} {value:g} -> {HEAD_DROPOUT:g}: the library's default fights distillation"
    return ""


def _image_shape(spec, io: ModelIO) -> tuple[int, int, int]:
    if io.kind != "image" or len(io.input_shape) != 3:
        raise RecipeError(f"model '{spec.model}' was read as an image classifier, but the data is {io.kind}")
    return io.input_shape


def _load_error(spec, where: str, e: Exception) -> InputError:
    text = str(e)
    if "trust_remote_code" in text:
        return InputError(f"model '{spec.ref}' ships its own Python code; set trust_remote_code = true for it "
                          "in the recipe only if you trust that code")
    if "Unrecognized configuration class" in text:
        return InputError(f"model '{spec.ref}' is not an image classifier transformers knows "
                          f"({first_line(e)[:160]}); give an image classification model")
    if not Path(where).exists():
        return InputError(f"'{spec.ref}' is not a folder here, and the hub did not serve it ({type(e).__name__}: "
                          f"{first_line(e)[:160]}); download the model to a folder and give its path")
    return InputError(f"model folder '{where}' cannot be loaded by transformers ({type(e).__name__}: "
                      f"{first_line(e)[:160]}); it needs config.json and the weights save_pretrained writes")


def _vision(config):
    """The config that describes the image input (CLIP-like models nest it)."""
    return getattr(config, "vision_config", None) or config


def _names(io: ModelIO) -> list[str]:
    return list(io.labels) or [str(i) for i in range(io.num_classes)]


def _label(config, labels: list[str]) -> None:
    config.id2label = dict(enumerate(labels))
    config.label2id = {name: i for i, name in enumerate(labels)}


def _fit(config, io: ModelIO) -> None:
    c, h, w = io.input_shape
    vision = _vision(config)
    if hasattr(vision, "num_channels"):
        vision.num_channels = c
    if hasattr(vision, "image_size"):
        vision.image_size = h if h == w else [h, w]  # ViT-like patch grids take (H, W)
    _label(config, _names(io))


def _check_keys(spec, config, overrides: dict) -> None:
    """Unknown keys are refused: a config would store them silently and build the default model."""
    known = config.to_dict()
    for key in overrides:
        if key not in known:
            raise RecipeError(f"config override '{key}' is not a {config.model_type} setting"
                              f"{closest(key, known)}")


def _heads(hf, n: int) -> list:
    """The linear layers outside the backbone that produce the n logits (DeiT-like models average two)."""
    body = getattr(hf, "base_model_prefix", "")
    return [m for name, m in hf.named_modules()
            if isinstance(m, torch.nn.Linear) and m.out_features == n
            and not (body and (name == body or name.startswith(body + ".")))]
