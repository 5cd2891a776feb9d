"""A user's subscription state, the usage figures derived from it, and the reset rule."""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime
from enum import StrEnum
from typing import TypedDict

from .plans import Plan
from .timeutil import month_start, next_month_start

WARNING_PERCENT = 75
CRITICAL_PERCENT = 90


class Level(StrEnum):
    OK = "ok"
    WARNING = "warning"
    CRITICAL = "critical"
    EXCEEDED = "exceeded"


@dataclass(frozen=True, slots=True)
class Account:
    """One row of ``subscriptions``, in domain words. Counters change only through the store."""

    user_id: str
    plan: str
    status: str
    max_tokens_per_month: int
    period_start: datetime
    row_id: str = ""
    period_end: datetime | None = None
    current_tokens_used: int = 0
    lifetime_tokens_used: int = 0
    addon_tokens: int = 0
    topup_tokens: int = 0
    last_token_reset_at: datetime | None = None
    stripe_customer_id: str | None = None
    stripe_subscription_id: str | None = None
    # `created` (Unix seconds) of the newest Stripe subscription event applied: older ones lose.
    stripe_updated_at: int = 0
    # A raise of the allowance waiting for the invoice that charges it (paid before granted):
    # what it grants, and the (price id, quantity) pairs that paid invoice must charge.
    pending_plan: str | None = None
    pending_tokens_per_month: int = 0
    pending_addon_tokens: int = 0
    pending_charges: tuple[tuple[str, int], ...] = ()
    storage_bytes_used: int = 0
    storage_bytes_limit: int = 0
    bank_connections_used: int = 0
    bank_connections_limit: int = 0
    # The highest usage alert (75, 90, 100) already sent this period; a reset sets it to 0.
    alert_threshold_sent: int = 0

    @property
    def limit(self) -> int:
        return self.max_tokens_per_month + self.addon_tokens + self.topup_tokens

    @property
    def remaining(self) -> int:
        return max(0, self.limit - self.current_tokens_used)

    @property
    def has_subscription(self) -> bool:
        return bool(self.stripe_subscription_id)

    @property
    def resets_at(self) -> datetime | None:
        """When usage returns to zero: the Stripe period's end, or the next UTC month for Demo."""
        if self.has_subscription:
            return self.period_end
        return next_month_start(self.period_start)


class AccountPatch(TypedDict, total=False):
    """Plain (non-counter) fields of an ``Account`` a caller may set; counters are never patched."""

    plan: str
    status: str
    max_tokens_per_month: int
    addon_tokens: int
    stripe_customer_id: str | None
    stripe_subscription_id: str | None
    stripe_updated_at: int
    pending_plan: str | None
    pending_tokens_per_month: int
    pending_addon_tokens: int
    pending_charges: tuple[tuple[str, int], ...]
    period_start: datetime
    period_end: datetime | None
    storage_bytes_limit: int
    bank_connections_limit: int


def new_account(user_id: str, plan: Plan, now: datetime, row_id: str = "") -> Account:
    """A first-touch account: the default plan, a calendar-month period starting this month."""
    return Account(
        user_id=user_id,
        row_id=row_id or user_id,
        plan=plan.id,
        status="none",
        max_tokens_per_month=plan.tokens_per_month,
        period_start=month_start(now),
        period_end=next_month_start(now),
        storage_bytes_limit=plan.storage_bytes,
        bank_connections_limit=plan.bank_connections,
    )


def percent(used: int, limit: int) -> float:
    """Percentage rounded down to one decimal, so that 100.0 means the limit is reached and the
    figure never contradicts ``level``; a zero limit with any use is 100 %."""
    if limit <= 0:
        return 100.0 if used > 0 else 0.0
    return min(used * 1000 // limit, 1000) / 10


def level(used: int, limit: int) -> Level:
    if limit <= 0 or used >= limit:
        return Level.EXCEEDED
    # Integer comparisons: 74.99 % must not round up into a warning.
    if used * 100 >= limit * CRITICAL_PERCENT:
        return Level.CRITICAL
    if used * 100 >= limit * WARNING_PERCENT:
        return Level.WARNING
    return Level.OK


@dataclass(frozen=True, slots=True)
class ResetPlan:
    """A move of one account to a new period, decided from a snapshot of it.

    What the ending period used is not part of the plan: the store works it out from the row
    inside its atomic change (``close_period``), so that nothing that happens between the
    snapshot and the change is counted in the wrong period.
    """

    user_id: str
    period_start: datetime
    period_end: datetime | None
    reset_at: datetime


@dataclass(frozen=True, slots=True)
class PeriodClose:
    """What a reset takes off the counter: the ending period's usage and the top-up it used."""

    used: int
    topup_consumed: int


def close_period(account: Account, carried: int) -> PeriodClose:
    """The ending period's share of the counter, as the account stands at the reset.

    ``carried`` is what the user's requests still in flight put on the counter (their charged
    steps and their holds). A request in flight at a reset belongs to the new period: it ends
    there, and its entry takes the new period's start, so its tokens stay on the counter.
    """
    used = max(0, account.current_tokens_used - carried)
    allowance = account.max_tokens_per_month + account.addon_tokens
    topup_consumed = min(account.topup_tokens, max(0, used - allowance))
    return PeriodClose(used=used, topup_consumed=topup_consumed)


def plan_reset(
    account: Account, period_start: datetime, period_end: datetime | None, now: datetime
) -> ResetPlan | None:
    """The reset to a new period, or None when it would not move the period forward."""
    if period_start <= account.period_start:
        return None
    return ResetPlan(
        user_id=account.user_id,
        period_start=period_start,
        period_end=period_end,
        reset_at=now,
    )


def apply_reset(account: Account, reset: ResetPlan, carried: int = 0) -> Account:
    """The account after ``reset`` with ``carried`` tokens in flight: the reference semantics
    every store must match."""
    closed = close_period(account, carried)
    return replace(
        account,
        current_tokens_used=account.current_tokens_used - closed.used,
        lifetime_tokens_used=account.lifetime_tokens_used + closed.used,
        topup_tokens=account.topup_tokens - closed.topup_consumed,
        period_start=reset.period_start,
        period_end=reset.period_end,
        last_token_reset_at=reset.reset_at,
        # A new period re-arms the usage alerts.
        alert_threshold_sent=0,
    )


def demo_period_due(account: Account, now: datetime) -> tuple[datetime, datetime] | None:
    """For an account without a Stripe subscription: the calendar month to move to, if it began."""
    if account.has_subscription:
        return None
    current = month_start(now)
    if current <= account.period_start:
        return None
    return current, next_month_start(current)
