"""Loading a state_dict file into a built model without ever running code from the file: torch.load
with weights_only=True (a file holding pickled objects besides tensors is refused), or safetensors."""

from __future__ import annotations

import re
from pathlib import Path

from ..errors import InputError
from .checks import first_line

# The wrappers a training script leaves around a state_dict: {"state_dict": ...}, {"model": ...}.
_WRAPPERS = ("state_dict", "model")
_FIX = "save it with torch.save(model.state_dict(), path)"


def load_weights(module, path: Path, *, what: str) -> None:
    """Load the state_dict in `path` (.pt/.pth/.bin via torch.save, or .safetensors) into `module`
    (strict: every key present, every shape equal)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"weights file '{path}' for {what} does not exist; fix the weights path in the recipe")
    state = _read(path, what)
    state = _align_prefix(state, list(module.state_dict()))
    _check_fit(module, state, path, what)
    module.load_state_dict(state, strict=True)


def _read(path: Path, what: str) -> dict:
    import torch

    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device="cpu")
        except Exception as e:  # noqa: BLE001 - safetensors raises its own error type and OSError
            raise InputError(f"weights file '{path}' for {what} is not a readable safetensors file "
                             f"({first_line(e)}); re-save it with safetensors.torch.save_file") from None
    try:
        # weights_only: tensors and plain containers are rebuilt, nothing in the file is executed
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch raises several types for refused, truncated or foreign files
        refused = re.search(r"GLOBAL ([\w.]+)", str(e))
        if refused:
            raise InputError(f"weights file '{path}' for {what} holds pickled Python objects ({refused.group(1)}), "
                             f"not only tensors, and was refused; save model.state_dict() instead") from None
        raise InputError(f"weights file '{path}' for {what} cannot be read (corrupt, truncated or not a torch "
                         f"file); {_FIX}") from None
    for key in _WRAPPERS:
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
            break
    if not isinstance(state, dict) or not state or not all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()):
        raise InputError(f"weights file '{path}' for {what} holds {_describe(state)}, not a state_dict "
                         f"(a dict of tensors); {_FIX}")
    return state


def _align_prefix(state: dict, wanted: list[str]) -> dict:
    """Accept the prefixes that differ between a saved model and the built one: 'module.' (saved from
    DataParallel / DistributedDataParallel) and a wrapper's attribute (weights of a transformers model
    loaded into the module wrapping it as `.hf`)."""
    keys, wanted_set = list(state), set(wanted)
    if set(keys) == wanted_set:
        return state
    if all(k.startswith("module.") for k in keys):
        state = {k[len("module."):]: v for k, v in state.items()}
        keys = list(state)
    heads = {w.split(".", 1)[0] for w in wanted}
    if len(heads) == 1 and "." in wanted[0]:
        prefix = f"{heads.pop()}."
        if not any(k.startswith(prefix) for k in keys):
            state = {prefix + k: v for k, v in state.items()}
    return state


def _check_fit(module, state: dict, path: Path, what: str) -> None:
    """One line naming a key that does not fit, instead of torch's list of every one."""
    own = module.state_dict()
    for key, value in state.items():
        if key in own and tuple(own[key].shape) != tuple(value.shape):
            raise InputError(f"weights file '{path}' does not fit {what}: '{key}' has shape {tuple(value.shape)} "
                             f"in the file but {tuple(own[key].shape)} in the model; the weights were saved from "
                             "another architecture or for another input/class count")
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"{len(missing)} model key(s) missing from the file, e.g. '{missing[0]}'")
        if unexpected:
            parts.append(f"{len(unexpected)} file key(s) the model does not have, e.g. '{unexpected[0]}'")
        raise InputError(f"weights file '{path}' does not fit {what}: {'; '.join(parts)}; "
                         "the weights were saved from another architecture")


def _describe(obj) -> str:
    if isinstance(obj, dict):
        kinds = sorted({type(v).__name__ for v in obj.values()})
        return f"a dict of {', '.join(kinds)}" if obj else "an empty dict"
    return f"a {type(obj).__name__}"
