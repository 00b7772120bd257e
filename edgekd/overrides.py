"""The one `key=value` override parser: recipes (`distill.temperature=2`), target profiles
(`target.iterations=200`) and `edgekd bench` settings are all typed by the field they set."""

from __future__ import annotations

import tomllib
import typing

from .errors import RecipeError


def parse_override(text: str) -> tuple[str, str]:
    if "=" not in text:
        raise RecipeError(f"'{text}' is not a key=value override (e.g. distill.temperature=2)")
    key, value = text.split("=", 1)
    key = key.strip()
    if not key:
        raise RecipeError(f"'{text}' has no key before '='")
    return key, value


def coerce(key: str, typ, value, *, from_text: bool, error=RecipeError):
    """Check (TOML) or parse (`key=value` text) one value against the field's type."""
    if typing.get_origin(typ) is list:  # list[int]: "1,32" as text, [1, 32] in TOML
        (item,) = typing.get_args(typ)
        values = [v for v in value.split(",") if v.strip()] if from_text else value
        if not isinstance(values, list):
            raise error(f"{key} must be a list, got {value!r}")
        return [coerce(key, item, v, from_text=from_text, error=error) for v in values]
    if typing.get_origin(typ) is dict:  # {name: number}: a TOML table; as text "{a = 1, b = 2}" or entries
        if from_text and isinstance(value, str):
            try:
                value, from_text = tomllib.loads(f"v = {value}")["v"], False
            except tomllib.TOMLDecodeError:
                pass
        if not isinstance(value, dict):
            raise error(f"{key} must be a table such as {{name = 1.0, other = 2.0}}, got {value!r}")
        _, item = typing.get_args(typ)
        return {k: coerce(f"{key}.{k}", item, v, from_text=from_text, error=error) for k, v in value.items()}
    if from_text:
        text = value.strip()
        if typ is bool:
            low = text.lower()
            if low in ("true", "1", "yes", "on"):
                return True
            if low in ("false", "0", "no", "off"):
                return False
            raise error(f"{key} must be true or false, got {text!r}")
        if typ is int:
            try:
                return int(text)
            except ValueError:
                raise error(f"{key} must be an integer, got {text!r}") from None
        if typ is float:
            try:
                return float(text)
            except ValueError:
                raise error(f"{key} must be a number, got {text!r}") from None
        return text
    if typ is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if typ is str and isinstance(value, bool):  # reduce_range = true in TOML means "true"
        return "true" if value else "false"
    if not isinstance(value, typ) or (typ is int and isinstance(value, bool)):
        want = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}[typ]
        raise error(f"{key} must be {want}, got {value!r}")
    return value
