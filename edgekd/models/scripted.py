"""Models the user already has as code or a compiled graph: "torchscript:FILE" and
"factory:package.module:function". Both are taken as ready (trained for this data): the caller
measures them on the data before trusting them."""

from __future__ import annotations

import importlib
import inspect
import sys
from pathlib import Path

from ..errors import InputError, RecipeError
from . import Built, ModelIO, _path, count_params, sources
from .checks import first_line


@sources.register("torchscript")
def from_torchscript(spec, io: ModelIO, *, base: Path, teacher=None) -> Built:
    """A TorchScript archive (torch.jit.save), loaded on the CPU."""
    import torch

    path = _path(spec.ref, base)
    if not path.is_file():
        raise InputError(f"TorchScript file '{path}' does not exist; fix the path after 'torchscript:' in the recipe")
    try:
        module = torch.jit.load(str(path), map_location="cpu")
    except Exception as e:  # noqa: BLE001 - a non-TorchScript file fails with several error types
        raise InputError(f"'{path}' cannot be loaded as TorchScript ({type(e).__name__}); save the model with "
                         "torch.jit.save(torch.jit.script(model), path), or give a state_dict as weights of "
                         "an architecture") from None
    return Built(module, ready=True, note=f"TorchScript {path.name} ({count_params(module):,} parameters)")


@sources.register("factory")
def from_factory(spec, io: ModelIO, *, base: Path, teacher=None) -> Built:
    """`package.module:function` called with whichever of input_shape, in_channels, num_classes,
    image_size and labels it accepts (all of them when it takes **kwargs); the recipe's folder is
    importable while the module is imported, so a model file beside the recipe works."""
    import torch

    fn = _import(spec.ref, base)
    offered = {"num_classes": io.num_classes, "labels": list(io.labels)}
    if len(io.input_shape) == 3:
        c, h, _ = io.input_shape
        offered |= {"input_shape": tuple(io.input_shape), "in_channels": c, "image_size": h}
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):  # a builtin or C function without a signature: call it bare
        params = []
    if any(p.kind is p.VAR_KEYWORD for p in params):
        kwargs = offered
    else:
        kwargs = {p.name: offered[p.name] for p in params
                  if p.name in offered and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
        needed = [p.name for p in params if p.default is p.empty and p.name not in kwargs
                  and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
        if needed:
            raise InputError(f"factory '{spec.ref}' requires parameter '{needed[0]}', which edgekd does not supply "
                             f"(it passes any of {', '.join(offered)}); give it a default")
    try:
        module = fn(**kwargs)
    except Exception as e:  # noqa: BLE001 - the user's code may raise anything; say where it came from
        raise InputError(f"factory '{spec.ref}' raised {type(e).__name__}: {first_line(e)} "
                         f"(called with {', '.join(f'{k}={v!r}' for k, v in kwargs.items()) or 'no arguments'})") from None
    if not isinstance(module, torch.nn.Module):
        raise InputError(f"factory '{spec.ref}' returned a {type(module).__name__}, not a torch.nn.Module; "
                         "return the model itself")
    return Built(module, ready=True, note=f"factory {spec.ref} ({count_params(module):,} parameters)")


def _import(ref: str, base: Path):
    mod_name, sep, fn_name = ref.partition(":")
    if not sep or not mod_name or not fn_name:
        raise RecipeError(f"model 'factory:{ref}' must be factory:package.module:function")
    sys.path.insert(0, str(base))
    try:
        module = importlib.import_module(mod_name)
    except ImportError as e:
        raise InputError(f"factory module '{mod_name}' cannot be imported ({first_line(e)}); put it beside the "
                         "recipe or on PYTHONPATH") from None
    except Exception as e:  # noqa: BLE001 - the module's own top-level code failed
        raise InputError(f"factory module '{mod_name}' failed while importing ({type(e).__name__}: "
                         f"{first_line(e)})") from None
    finally:
        sys.path.remove(str(base))
    fn = getattr(module, fn_name, None)
    if not callable(fn):
        raise InputError(f"factory module '{mod_name}' has no function '{fn_name}'")
    return fn
