"""The provider registry: every place a job can run, each in its own module, registered once.

A backend module defines a `Backend` subclass with its cloud name and what it cannot do (a
mapping from capability to the provider's own message), and registers it with `@register`.
Everything else asks this registry, never a list of names: the spec's allowed clouds (through
`load_spec(clouds=names())`), the CLI's `--cloud` check and `launcher clouds`, `get_backend`,
`down --idle` and sync. Adding a provider is adding one module here: see README.md in this folder.

Discovery imports every module of this package (they are cheap: none imports SkyPilot, docker or
torch at module level), so nothing here has to be edited when a provider is added.
"""
from __future__ import annotations

import difflib
import importlib
import pkgutil
from typing import TYPE_CHECKING

from launcher.errors import BackendError

if TYPE_CHECKING:
    from launcher.backends.base import Backend

_REGISTRY: dict[str, "Backend"] = {}
_discovered = False


def register(cls: type["Backend"]) -> type["Backend"]:
    """Class decorator: make `cls` (one instance of it) the backend of `cls.name`."""
    if cls.name in _REGISTRY and type(_REGISTRY[cls.name]) is not cls:
        raise RuntimeError(f"two backends call themselves {cls.name!r}: {type(_REGISTRY[cls.name]).__name__}, {cls.__name__}")
    _REGISTRY[cls.name] = cls()
    return cls


def _discover() -> None:
    global _discovered
    if not _discovered:
        for mod in pkgutil.iter_modules(__path__):
            if not mod.name.startswith("_"):
                importlib.import_module(f"{__name__}.{mod.name}")
        _discovered = True


def names() -> tuple[str, ...]:
    """Every registered cloud, `local` first."""
    _discover()
    return tuple(sorted(_REGISTRY, key=lambda n: (n != "local", n)))


def all_backends() -> list["Backend"]:
    return [_REGISTRY[n] for n in names()]


def get_backend(cloud: str) -> "Backend":
    """The backend of a cloud name, or a one-line error with the choices and a did-you-mean."""
    known = names()
    if cloud not in _REGISTRY:
        hint = difflib.get_close_matches(cloud, known, n=1)
        raise BackendError(f"unknown cloud {cloud!r}; choose one of {', '.join(known)}"
                           + (f" (did you mean {hint[0]}?)" if hint else ""))
    return _REGISTRY[cloud]
