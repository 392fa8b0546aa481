"""A registry: things of one kind (codecs, engines, recognizers) found by name.

Adding a codec, an engine or a recognizer is one new module that registers its description here; the CLI
choices, wire ids, operating points and report titles are read back from the registry, so no other file keeps
a list of names. Registration order is kept: it is the order choices are shown in.
"""
from __future__ import annotations

from collections.abc import Iterator
from typing import Generic, TypeVar

from edgepipe.core.errors import EdgepipeError

T = TypeVar("T")


class Registry(Generic[T]):
    """Name -> description, in registration order. `kind` names the thing in messages ("codec")."""

    def __init__(self, kind: str):
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str, item: T) -> T:
        """Add `item` under `name` and return it; a name taken already is refused (two modules claiming one
        name would otherwise make the winner depend on import order)."""
        if not name or name != name.strip():
            raise EdgepipeError(f"a {self.kind} name must be non-empty without surrounding spaces, got {name!r}")
        if name in self._items:
            raise EdgepipeError(f"{self.kind} {name!r} is registered twice")
        self._items[name] = item
        return item

    def __getitem__(self, name: str) -> T:
        """The description, or a one-line error naming every known choice."""
        try:
            return self._items[name]
        except (KeyError, TypeError):  # TypeError: an unhashable name is as unknown as a misspelt one
            raise EdgepipeError(f"unknown {self.kind} {name!r}; choose one of {', '.join(self._items)}") from None

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def names(self) -> tuple[str, ...]:
        return tuple(self._items)

    def values(self) -> tuple[T, ...]:
        return tuple(self._items.values())
