"""Exactly once: claim, act, then complete or release. The one protocol every effect that must
happen once goes through (a Stripe event, a top-up credit, a period reset).

Creating the claim row is the claim. A worker that dies leaves it pending; once its ``lease`` has
run out another worker may take it over. A claim whose lease is None is never taken over: its
effect may have happened before the worker died, and doing it twice is worse than a pending row
an operator can see.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Generic, Protocol, TypeVar

from .ports import ClaimOutcome

T = TypeVar("T")


class ClaimStore(Protocol):
    """The four primitives the protocol needs (``UsageStore`` has them)."""

    def claim_event(
        self, event_id: str, event_type: str, object_id: str, now: datetime, lease: timedelta | None
    ) -> ClaimOutcome: ...

    def complete_event(self, event_id: str, outcome: str, now: datetime) -> None: ...

    def release_event(self, event_id: str) -> None: ...


@dataclass(frozen=True, slots=True)
class Claim:
    key: str  # unique per effect: a Stripe event id, "reset:<user>:<period>", "topup_<session>"
    kind: str  # what is claimed: a Stripe event type, "reset", "topup"
    object_id: str  # what the effect is about, for the operator
    lease: timedelta | None  # None: never taken over


@dataclass(frozen=True, slots=True)
class Done(Generic[T]):
    """What the act decided: its result, and the outcome recorded on the claim (None when
    nothing happened, which releases the claim so that a later attempt can still run)."""

    result: T
    recorded: str | None


@dataclass(frozen=True, slots=True)
class Once(Generic[T]):
    state: ClaimOutcome  # CLAIMED: this call acted; DONE or IN_PROGRESS: it did nothing
    result: T | None = None


def run_once(store: ClaimStore, claim: Claim, now: datetime, act: Callable[[], Done[T]]) -> Once[T]:
    """Run ``act`` unless the effect of ``claim`` happened or is happening elsewhere."""
    state = store.claim_event(claim.key, claim.kind, claim.object_id, now, claim.lease)
    if state is not ClaimOutcome.CLAIMED:
        return Once(state)
    try:
        done = act()
    except BaseException:
        # The effect did not happen (or is idempotent): the retry must be able to claim again.
        store.release_event(claim.key)
        raise
    if done.recorded is None:
        store.release_event(claim.key)
    else:
        store.complete_event(claim.key, done.recorded, now)
    return Once(ClaimOutcome.CLAIMED, done.result)
