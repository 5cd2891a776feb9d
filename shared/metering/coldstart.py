"""The wiring of one cold start: built once on first use, kept across warm executions, and the
real clock the wiring injects into the domain."""

from __future__ import annotations

import functools
import os
import threading
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any, Generic, TypeVar

T = TypeVar("T")


def utc_now() -> datetime:
    return datetime.now(UTC)


class ColdStart(Generic[T]):
    """Holds a function's app, built by ``build(environ, **overrides)`` on first use."""

    def __init__(self, build: Callable[..., T]) -> None:
        self._build = build
        self._recipe: Callable[[], T] = functools.partial(build, os.environ)
        self._app: T | None = None
        self._lock = threading.Lock()

    def current(self) -> T:
        with self._lock:
            if self._app is None:
                self._app = self._recipe()
            return self._app

    def configure(self, environ: Mapping[str, str] | None = None, **overrides: Any) -> None:
        """Start cold again, building from ``environ`` (None: the process's) and ``overrides``
        (a store, a clock, fake transports) from the next execution on. The local runtime and
        the tests configure functions this way; nothing writes to the process environment."""
        source = os.environ if environ is None else environ
        with self._lock:
            self._app = None
            self._recipe = functools.partial(self._build, source, **overrides)
