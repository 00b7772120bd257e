"""edgekd: distill, quantize (INT8 quantization-aware distillation), export and benchmark.

`import edgekd` stays light: torch and the runtimes are imported by the functions that use them."""

__version__ = "0.1.0"


def build(recipe=None, target="cpu-int8", *, overrides=(), out_dir="build", force=False, log=print):
    """Build `target` from a Recipe (or a recipe path; None = the embedded MNIST example)."""
    from .pipeline import build as _build
    from .recipe import Recipe, apply_overrides, load_recipe
    from .targets import load_target

    r = recipe if isinstance(recipe, Recipe) else load_recipe(recipe)
    r = apply_overrides(r, list(overrides))
    return _build(r, load_target(target), out_dir=out_dir, force=force, log=log)


def __getattr__(name):
    if name in ("Recipe", "load_recipe"):
        from . import recipe

        return getattr(recipe, name)
    if name == "load_target":
        from .targets import load_target

        return load_target
    if name == "EdgeKDError":
        from .errors import EdgeKDError

        return EdgeKDError
    raise AttributeError(name)


__all__ = ["build", "Recipe", "load_recipe", "load_target", "EdgeKDError", "__version__"]
