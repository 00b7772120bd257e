"""The one registry idiom for everything pluggable (architectures, data sources, teacher sources,
runtimes, exporters). An unknown name lists the choices and the closest one."""

from __future__ import annotations

import difflib
from typing import Callable, Generic, TypeVar

from .errors import EdgeKDError

T = TypeVar("T")


def closest(name: str, choices) -> str:
    """' did you mean X?' for the closest choice, or ''."""
    hit = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.5)
    return f"; did you mean '{hit[0]}'?" if hit else ""


class Registry(Generic[T]):
    def __init__(self, kind: str, *, error: type[EdgeKDError] = EdgeKDError):
        self.kind = kind
        self._error = error
        self._items: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def add(obj: T) -> T:
            if name in self._items:
                raise ValueError(f"{self.kind} '{name}' is registered twice")
            self._items[name] = obj
            return obj

        return add

    def get(self, name: str) -> T:
        try:
            return self._items[name]
        except KeyError:
            raise self._error(
                f"{self.kind} '{name}' is unknown{closest(name, self._items)} ({', '.join(self.names())})"
            ) from None

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: str) -> bool:
        return name in self._items
