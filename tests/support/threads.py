"""Run several callables at once, each in a thread of its own."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable


def run_together(targets: Iterable[Callable[[], object]]) -> None:
    """Start one thread per target, then wait until every one has finished."""
    threads = [threading.Thread(target=target) for target in targets]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
