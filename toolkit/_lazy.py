"""Package namespaces that import a name's module only when the name is first used (PEP 562).

So ``import toolkit`` is quick, and a package's fastai-free modules (``toolkit.data.layouts``,
``toolkit.models.translation``...) import without the package's fastai-based ones.

Layer: formats, I/O and runtime.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable


def lazy_exports(package: str, exports: dict[str, str], namespace: dict) -> tuple[list[str], Callable, Callable]:
    """``(__all__, __getattr__, __dir__)`` for ``package`` whose ``exports`` map each public name
    to the module that defines it (a module's own name ending in the public name: the module
    itself); a value, once imported, is kept in ``namespace`` (the package's globals)."""

    def __getattr__(name: str):
        if name in exports:
            module = importlib.import_module(exports[name])
            value = module if module.__name__.endswith("." + name) else getattr(module, name)
            namespace[name] = value
            return value
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    def __dir__() -> list[str]:
        return sorted(set(namespace) | set(exports))

    return sorted(exports), __getattr__, __dir__
