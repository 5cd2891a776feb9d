"""A store wrapper that names every public call made through it."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


class Recording:
    """The store, with the name of every call made through it in ``calls``."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner
        self.calls: list[str] = []

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self._inner, name)
        if name.startswith("_") or not callable(attribute):
            return attribute

        def call(*args: Any, **kwargs: Any) -> Any:
            self.calls.append(name)
            return self._run(name, attribute, args, kwargs)

        return call

    def _run(
        self, name: str, method: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        """Make the call ``name`` (already in ``calls``); a subclass may fail it instead."""
        return method(*args, **kwargs)
