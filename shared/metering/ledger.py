"""The per-request ledger: one entry per chat request, keyed by its idempotency key."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import TypedDict

from .tokens import TokenUsage


class LedgerStatus(StrEnum):
    RESERVED = "reserved"  # in flight: `usage` charged so far, `held_tokens` held for the call
    SETTLED = "settled"  # done: `usage` is charged, nothing held
    FAILED = "failed"  # the model failed: completed steps charged, the rest released
    RECLAIMED = "reclaimed"  # the request died mid-flight; the cron gave its hold back
    # An operator's manual change (grant, plan, reset, reconcile fix): zero usage, its reason and
    # effect as JSON in `reply`, so that every manual change is in the ledger without counting.
    ADJUSTMENT = "adjustment"


@dataclass(frozen=True, slots=True)
class LedgerEntry:
    request_id: str
    user_id: str
    status: LedgerStatus
    model: str
    period_start: datetime
    created_at: datetime
    updated_at: datetime
    usage: TokenUsage = TokenUsage()  # noqa: RUF009 -- immutable, safe to share
    # The live hold of the call in flight: on the user's counter, not yet settled.
    held_tokens: int = 0
    # True when some output was measured from the text received (a call cut before its usage).
    estimated: bool = False
    cost_micro_usd: int = 0
    price_version: str = ""
    # The response message, kept so that a retry with the same request id answers the same.
    reply: str = ""


class LedgerPatch(TypedDict, total=False):
    """Fields of a ledger entry its owning request (or the cron's reclaim) sets."""

    status: LedgerStatus
    model: str
    usage: TokenUsage
    cost_micro_usd: int
    price_version: str
    reply: str
    held_tokens: int
    estimated: bool
    updated_at: datetime
