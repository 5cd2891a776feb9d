"""JSON as it crosses the wire: the one ``Json`` alias, and the typed shapes built from it."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

# A JSON object built for an answer.
Json = dict[str, Any]
# A JSON object read from outside (a request, a vendor payload): never mutated.
JsonIn = Mapping[str, Any]
