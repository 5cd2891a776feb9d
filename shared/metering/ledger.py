"""The per-request ledger: one entry per chat request, keyed by its idempotency key."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import TypedDict

from .tokens import TokenUsage


class LedgerStatus(StrEnum):
    RESERVED = "reserved"  # in flight: `reserved_tokens` are held on the user's counter
    SETTLED = "settled"  # done: `usage` is charged, nothing held
    FAILED = "failed"  # the model failed: completed steps charged, the rest released
    RECLAIMED = "reclaimed"  # the request died mid-flight; the cron gave its hold back


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
    reserved_tokens: int = 0
    cost_micro_usd: int = 0
    price_version: str = ""
    # The response message, kept so that a retry with the same request id answers the same.
    reply: str = ""


class LedgerPatch(TypedDict, total=False):
    """Fields of a ledger entry its owning request sets; ``reserved_tokens`` is never patched."""

    status: LedgerStatus
    model: str
    usage: TokenUsage
    cost_micro_usd: int
    price_version: str
    reply: str
    updated_at: datetime
