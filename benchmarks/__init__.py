"""Benchmarks behind ``make bench``: each measures our design against a baseline run side by side
in the same process and prints a markdown table of both figures and their ratio."""

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# The benchmarks exercise the single source of the domain package, as the tests do.
_SHARED = str(ROOT / "shared")
if _SHARED not in sys.path:
    sys.path.append(_SHARED)
