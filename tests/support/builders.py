"""Domain values with the tests' defaults: token usages, ledger entries, accounts, and usage put
on a counter the way a chat request puts it there."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime

from metering.account import Account, plan_reset
from metering.ledger import LedgerEntry, LedgerPatch, LedgerStatus
from metering.ports import UsageStore
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


def charge(
    store: UsageStore,
    user_id: str,
    request_id: str,
    tokens: int,
    now: datetime,
    *,
    settled: bool = True,
    limit: int | None = None,
) -> None:
    """Put ``tokens`` on the user's counter through a request of its own, as the chat does: its
    hold opened (``settled=False`` leaves it there, a request still in flight), then settled
    to the same usage. ``limit`` is the cap the hold must fit; by default none applies (usage
    that already happened)."""
    account = store.get_account(user_id)
    assert account is not None
    entry = ledger_entry(
        user_id,
        request_id,
        period_start=account.period_start,
        created_at=now,
        updated_at=now,
        held_tokens=tokens,
    )
    cap = account.current_tokens_used + tokens if limit is None else limit
    store.open_request(entry, cap)
    if settled:
        usage = TokenUsage(input_tokens=tokens, steps=1)
        patch: LedgerPatch = {
            "status": LedgerStatus.SETTLED,
            "held_tokens": 0,
            "usage": usage,
            "updated_at": now,
        }
        store.settle(user_id, request_id, 0, patch)


def reset_now(store: UsageStore, user_id: str, start: datetime, end: datetime | None) -> Account:
    """The user's reset to the period ``start``..``end``, planned from the row as it is now,
    applied (asserted to apply); the account after it."""
    snapshot = store.get_account(user_id)
    assert snapshot is not None
    reset = plan_reset(snapshot, start, end, NOW)
    assert reset is not None
    result = store.apply_reset(reset, snapshot.period_start)
    assert result is not None
    return result
