"""Exactly once: claim, act, then complete or release. The one protocol every effect that must
happen once goes through (a Stripe event, a top-up credit, a period reset).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Generic, Protocol, TypeVar

from .account import Account, ResetPlan
from .ports import ClaimOutcome
from .timeutil import format_timestamp

T = TypeVar("T")

# A reset's worker that died is taken over after this long. Safe even when its change landed:
# the change is conditional on the period it was planned from, so a second one does nothing.
RESET_LEASE = timedelta(minutes=10)


class ClaimStore(Protocol):
    """The three primitives the protocol needs (``UsageStore`` has them)."""

    def claim_event(
        self, event_id: str, event_type: str, object_id: str, now: datetime, lease: timedelta | None
    ) -> ClaimOutcome: ...

    def complete_event(self, event_id: str, outcome: str, now: datetime) -> None: ...

    def release_event(self, event_id: str) -> None: ...


@dataclass(frozen=True, slots=True)
class Claim:
    """Creating the claim's row is the claim. A worker that dies leaves it pending; once its
    ``lease`` has run out another worker may take it over. A claim whose lease is None is never
    taken over: its effect may have happened before the worker died, and doing it twice is worse
    than a pending row an operator can see."""

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


# -- period resets -----------------------------------------------------------------------------


def reset_claim(reset: ResetPlan) -> Claim:
    """Keyed on the user and the new period, not on the event: one reset per period."""
    return Claim(
        key=f"reset:{reset.user_id}:{format_timestamp(reset.period_start)}",
        kind="reset",
        object_id=reset.user_id,
        lease=RESET_LEASE,
    )


def reset_applies(account: Account, reset: ResetPlan, previous_period_start: datetime) -> bool:
    """The guard of every reset: the stored period is still the one the reset was planned from,
    and the reset moves it forward (compared at the millisecond both stores keep)."""
    stored = _ms(account.period_start)
    return stored == _ms(previous_period_start) and _ms(reset.period_start) > stored


def reset_once(
    store: ClaimStore, reset: ResetPlan, change: Callable[[], Account | None]
) -> Account | None:
    """A store's ``apply_reset``: ``change`` is its atomic change of the counters, conditional on
    ``reset_applies``, answering the updated account or None when it changed nothing. Nothing
    changed releases the claim, so that a reset planned from a fresh snapshot can still run."""
    once = run_once(store, reset_claim(reset), reset.reset_at, lambda: _recorded(change()))
    return once.result


def _recorded(account: Account | None) -> Done[Account | None]:
    return Done(account, "reset" if account is not None else None)


def _ms(value: datetime) -> datetime:
    return value.replace(microsecond=value.microsecond // 1000 * 1000)
