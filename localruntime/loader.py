"""Import a function the way open-runtimes does: its folder is a package, ``src.main`` inside it.

Each function gets its own package name so that all of them load side by side in one process;
they share the one installed ``metering`` package.
"""

from __future__ import annotations

import importlib
import sys
import types
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
FUNCTIONS_DIR = ROOT / "functions"


def package_name(function_id: str) -> str:
    return "fn_" + function_id.replace("-", "_")


def load_function(function_id: str, functions_dir: Path = FUNCTIONS_DIR) -> types.ModuleType:
    """Import ``functions/<function_id>/src/main.py`` as ``fn_<id>.src.main`` (relative imports
    inside it resolve against the function's own folder)."""
    name = package_name(function_id)
    if name not in sys.modules:
        package = types.ModuleType(name)
        package.__path__ = [str(functions_dir / function_id)]
        sys.modules[name] = package
    return importlib.import_module(f"{name}.src.main")


def bootstrap_of(function_id: str) -> Any:
    """The loaded function's wiring module; its ``configure(environ, **overrides)`` sets up the
    next cold start."""
    return importlib.import_module(f"{package_name(function_id)}.src.bootstrap")


def unload_function(function_id: str) -> None:
    """Drop a loaded function and everything under its package, so that the next
    ``load_function`` is a cold start."""
    name = package_name(function_id)
    for module in [m for m in sys.modules if m == name or m.startswith(name + ".")]:
        del sys.modules[module]
