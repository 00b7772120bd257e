"""manifest.json: the versioned contract between a build and the apps that run it. Its JSON Schema ships
in the package (edgekd/schemas/manifest-<version>.schema.json); `edgekd build` validates what it writes
and `edgekd.runtime` validates what it reads, so an app never runs a model on a manifest it misreads.

Light: json and, when validating, jsonschema; apps import it through edgekd.runtime."""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

from .errors import InputError

SCHEMA_VERSION = 1
SCHEMA_VERSIONS = (1,)  # the versions this edgekd reads


def schema_path(version: int = SCHEMA_VERSION) -> Path:
    return Path(__file__).resolve().parent / "schemas" / f"manifest-{version}.schema.json"


@lru_cache(maxsize=None)
def _validator(version: int):
    import jsonschema

    schema = json.loads(schema_path(version).read_text())
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema)


def validate_manifest(manifest, *, where: str) -> None:
    """Raise InputError (one line: where, what, how to fix) unless `manifest` is a manifest of a schema
    version this edgekd reads that matches its schema."""
    if not isinstance(manifest, dict):
        raise InputError(f"{where} is not a JSON object; is it a manifest.json written by edgekd build?")
    version = manifest.get("schema_version")
    if version is None:
        raise InputError(f"{where} has no schema_version: it was written by an edgekd older than its schema "
                         f"(version {manifest.get('edgekd', 'unknown')}); rebuild with edgekd build")
    if version not in SCHEMA_VERSIONS:
        known = ", ".join(map(str, SCHEMA_VERSIONS))
        raise InputError(f"{where} has schema_version {version!r}, which this edgekd ({_version()}) does not read "
                         f"(it reads {known}); upgrade edgekd (pip install -U edgekd) or rebuild with this version")
    from jsonschema.exceptions import best_match

    err = best_match(_validator(version).iter_errors(manifest))
    if err is not None:
        at = "/".join(str(p) for p in err.absolute_path) or "the top level"
        msg = " ".join(err.message.split())
        raise InputError(f"{where} does not match manifest schema {version} at {at}: "
                         f"{msg[:200]}; rebuild with edgekd build")


def check_fragment(value, definition: str, *, where: str) -> None:
    """InputError (one line: where, the field, what the schema wants) unless `value` matches the schema's
    $defs/`definition`: a data source's preprocessing is checked when it returns, not when the manifest
    is written at the end of a build."""
    from jsonschema.exceptions import best_match

    version = SCHEMA_VERSIONS[-1]
    v = _validator(version)
    sub = v.evolve(schema={"$ref": f"#/$defs/{definition}", "$defs": v.schema["$defs"]})
    err = best_match(sub.iter_errors(value))
    if err is not None:
        at = "/".join(str(p) for p in err.absolute_path) or "the top level"
        raise InputError(f"{where} does not match manifest schema {version}'s {definition} at {at}: "
                         f"{' '.join(err.message.split())[:200]}; describe the steps as edgekd.data._images builds them")


def read_manifest(path: Path) -> dict:
    """The validated manifest at `path` (a build folder or its manifest.json)."""
    path = Path(path)
    file = path / "manifest.json" if path.is_dir() else path
    try:
        manifest = json.loads(file.read_text())
    except FileNotFoundError:
        raise InputError(f"'{file}' does not exist; give a build folder (e.g. build/cpu-int8) or its "
                         "manifest.json") from None
    except (ValueError, OSError) as e:
        raise InputError(f"'{file}' is not readable JSON ({str(e).splitlines()[0][:120]}); rebuild with "
                         "edgekd build") from None
    validate_manifest(manifest, where=f"'{file}'")
    return manifest


def _version() -> str:
    from . import __version__

    return __version__
