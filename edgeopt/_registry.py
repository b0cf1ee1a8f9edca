"""One registry helper for every kind of plug-in: models, passes, backends, devices, meters, task metrics.

A `Registry` maps a name to an object (a class, a spec, a function). Entries register themselves at
import time with `reg.register(name)(obj)` or as a decorator. Where an entry lives in a module that is
costly or optional to import (a backend's runtime, a device's transport), the registry is told the module
up front (`lazy={"tvm": "edgeopt.runtimes.tvm"}`) and imports it on first `get`, so a board imports only
the runtime it uses. Unknown names fail with one line that lists the known ones and the closest match.

Standard library only: the device-side runner imports this.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from edgeopt._util import closest
from edgeopt.errors import EdgeoptError

T = TypeVar("T")


class Registry(Generic[T]):
    """Name -> entry, with lazy modules, aliases and 'did you mean' errors.

    `kind` names the registry in messages ("backend", "device type", ...); `error` is the EdgeoptError
    subclass raised for unknown names; `hint` is appended to the list of known names."""

    def __init__(
        self,
        kind: str,
        lazy: dict[str, str] | None = None,
        aliases: dict[str, str] | None = None,
        error: type[EdgeoptError] = EdgeoptError,
        hint: str = "",
    ) -> None:
        self.kind = kind
        self.lazy = dict(lazy or {})
        self.aliases = dict(aliases or {})
        self.error = error
        self.hint = hint
        self._entries: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator (or call) that adds `obj` under `name`; a second entry of one name is a bug."""

        def add(obj: T) -> T:
            if name in self._entries and self._entries[name] is not obj:
                raise ValueError(f"{self.kind} {name!r} registered twice")
            self._entries[name] = obj
            return obj

        return add

    def canonical(self, name: str) -> str:
        return self.aliases.get(name, name)

    def names(self) -> list[str]:
        """Every known name (registered or lazily importable), in registration/declaration order."""
        return list(dict.fromkeys([*self.lazy, *self._entries]))

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self.canonical(name) in (self._entries.keys() | self.lazy.keys())

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def loaded(self) -> dict[str, T]:
        """The entries registered so far (no imports): for registries filled by importing a package."""
        return dict(self._entries)

    def get(self, name: str) -> T:
        """The entry for `name`, importing its module first where it is lazy."""
        key = self.canonical(name)
        if key not in self._entries and key in self.lazy:
            try:
                importlib.import_module(self.lazy[key])
            except ModuleNotFoundError as e:
                if e.name and e.name.startswith("edgeopt"):
                    raise self.error(f"{self.kind} {key!r} is not part of this edgeopt build") from None
                raise
        if key not in self._entries:
            known = self.names() + list(self.aliases)
            near = closest(name, known)
            hint = f"known: {', '.join(self.names())}" + (f"; did you mean {near[0]}?" if near else "")
            raise self.error(f"unknown {self.kind} {name!r}", hint + (f"; {self.hint}" if self.hint else ""))
        return self._entries[key]
