"""Domain values with the tests' defaults: token usages, ledger entries and accounts."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime

from metering.account import Account
from metering.ledger import LedgerEntry, LedgerStatus
from metering.tokens import TokenUsage

# The store tests' clock, and the period it falls in.
NOW = datetime(2026, 3, 15, 12, 0, tzinfo=UTC)
MARCH = datetime(2026, 3, 1, tzinfo=UTC)
APRIL = datetime(2026, 4, 1, tzinfo=UTC)
MAY = datetime(2026, 5, 1, tzinfo=UTC)


def token_usage(
    *,
    input: int = 0,
    writes: int = 0,
    reads: int = 0,
    output: int = 0,
    writes_1h: int = 0,
    steps: int = 0,
) -> TokenUsage:
    """A usage by short names: ``writes`` are all cache writes, ``writes_1h`` the 1-hour ones."""
    return TokenUsage(input, writes, reads, output, writes_1h, steps)


def ledger_entry(user_id: str, request_id: str, **fields: object) -> LedgerEntry:
    """A reserved entry of ``request_id`` in March, created at ``NOW``; ``fields`` override."""
    entry = LedgerEntry(
        request_id=request_id,
        user_id=user_id,
        status=LedgerStatus.RESERVED,
        model="claude-sonnet-5-5",
        period_start=MARCH,
        created_at=NOW,
        updated_at=NOW,
    )
    return replace(entry, **fields)  # type: ignore[arg-type]


def subscription(max_tokens_per_month: int, **fields: object) -> Account:
    """An active Starter subscription ``sub_1`` of ``user-1`` in March; ``fields`` override."""
    account = Account(
        user_id="user-1",
        plan="starter",
        status="active",
        max_tokens_per_month=max_tokens_per_month,
        period_start=MARCH,
        period_end=APRIL,
        stripe_subscription_id="sub_1",
    )
    return replace(account, **fields)  # type: ignore[arg-type]
