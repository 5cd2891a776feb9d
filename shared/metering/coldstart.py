"""The wiring of one cold start: built once on first use, kept across warm executions, and the
real clock the wiring injects into the domain."""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Generic, TypeVar

T = TypeVar("T")


def utc_now() -> datetime:
    return datetime.now(UTC)


class ColdStart(Generic[T]):
    """Holds a function's app; tests replace it, or the recipe it is built from."""

    def __init__(self, build: Callable[[], T]) -> None:
        self._build = build
        self._app: T | None = None
        self._lock = threading.Lock()

    def current(self) -> T:
        with self._lock:
            if self._app is None:
                self._app = self._build()
            return self._app

    def install(self, app: T | None) -> None:
        """Use ``app`` from now on; None starts cold again on the next execution."""
        with self._lock:
            self._app = app

    def rebuild_with(self, build: Callable[[], T]) -> None:
        """Start cold again, building with ``build`` from the next execution on."""
        with self._lock:
            self._app = None
            self._build = build
