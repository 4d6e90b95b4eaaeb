"""Lazy package exports: ``from facefoundry.faces import get_embedder`` works, but
importing a package runs none of its submodules (so loading a recipe's settings never
pays for torch or OpenCV)."""

from __future__ import annotations

import importlib
import sys
import types
from collections.abc import Callable
from typing import Any


def lazy_exports(
    package: str, exports: dict[str, str]
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """``__getattr__`` and ``__dir__`` for ``package``; ``exports`` maps a public name to
    ``"submodule"`` or ``"submodule:attribute"`` (for a renamed export)."""

    def __getattr__(name: str) -> Any:
        target = exports.get(name)
        if target is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        module, _, attribute = target.partition(":")
        value = getattr(importlib.import_module(f"{package}.{module}"), attribute or name)
        setattr(sys.modules[package], name, value)
        return value

    def __dir__() -> list[str]:
        return sorted(exports)

    # An export named like its own submodule (shards' ``finalize`` in ``finalize.py``):
    # importing that submodule by any route sets the package attribute to the module,
    # after which ``from package import finalize`` would return the module. Such a
    # package keeps the export instead.
    shadowed = {name for name, target in exports.items() if target.partition(":")[0] == name}
    if shadowed:
        sys.modules[package].__class__ = _keeps_exports(shadowed)
    return __getattr__, __dir__


def _keeps_exports(names: set[str]) -> type:
    class ExportsFirst(types.ModuleType):
        def __setattr__(self, name: str, value: Any) -> None:
            if name in names and isinstance(value, types.ModuleType):
                return  # the submodule stays reachable in sys.modules
            super().__setattr__(name, value)

    return ExportsFirst
