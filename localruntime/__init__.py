"""Run the whole system locally: the page, the functions and an Appwrite-compatible surface."""

import sys
from pathlib import Path

# The runtime itself uses the single source of the domain package, as the tests do.
_SHARED = str(Path(__file__).resolve().parent.parent / "shared")
if _SHARED not in sys.path:
    sys.path.append(_SHARED)
