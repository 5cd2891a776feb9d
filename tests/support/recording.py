"""Store wrappers for tests: one names every public call made through it, one remembers the
holds (a call's reservation) it was asked for."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from metering.ledger import LedgerEntry
from metering.ports import UsageStore
from metering.turns import Turn


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


@dataclass
class Holds:
    """The store, remembering every hold it was asked for; ``after_settle`` callbacks run (once
    each) after the next settle, to act between two steps of a turn."""

    inner: UsageStore
    holds: list[int] = field(default_factory=list)
    after_settle: list[Callable[[], Any]] = field(default_factory=list)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def open_request(
        self,
        entry: LedgerEntry,
        limit: int,
        turn: Turn | None = None,
        *,
        max_in_flight: int | None = None,
    ) -> None:
        self.inner.open_request(entry, limit, turn, max_in_flight=max_in_flight)
        self.holds.append(entry.held_tokens)

    def hold(self, user_id: str, request_id: str, tokens: int, limit: int) -> None:
        self.inner.hold(user_id, request_id, tokens, limit)
        self.holds.append(tokens)

    def settle(self, *args: Any, **kwargs: Any) -> None:
        self.inner.settle(*args, **kwargs)
        while self.after_settle:
            self.after_settle.pop(0)()
