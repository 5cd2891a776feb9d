"""What the manual commands (grant, set-plan, reset) share: each change recorded as a ledger row
of its own (status ``adjustment``, zero usage, the reason as JSON in ``reply``), its row id
derived from the change, so that running the same command again changes nothing.

The record is written first and is the change's claim (creating a ledger row is one, as for a
chat request): a second run finds it and stops. When the change itself then fails, the record is
deleted again so that a retry can run; when the process dies between the two, the record stays
unfinished and a rerun refuses rather than risk applying the change twice.
"""

from __future__ import annotations

import argparse
import hashlib
import json
from collections.abc import Callable, Mapping
from typing import Any

from metering.account import Account
from metering.errors import Conflict, InvalidRequest, NotFound
from metering.ledger import LedgerEntry, LedgerStatus
from metering.ports import UsageStore

from tools.admin_commands.context import Context

# The record holds nothing, so any cap lets it in.
NO_CAP = 2**62


class Unfinished(Conflict):
    """The change's record exists but was never completed."""


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--user", required=True, help="the user id")
    parser.add_argument("--reason", required=True, help="why (kept in the ledger record)")
    parser.add_argument(
        "--key",
        help="what makes this change unique (default: its arguments and the current month, so "
        "the same command in the same month is applied once)",
    )
    parser.add_argument(
        "--dry-run", action="store_true", help="say what would change, change nothing"
    )


def record_id(kind: str, user_id: str, key: str) -> str:
    digest = hashlib.sha256(json.dumps([kind, user_id, key]).encode()).hexdigest()[:32]
    return f"admin-{kind}-{digest}"


def default_key(context: Context, details: Mapping[str, Any]) -> str:
    return json.dumps({"month": f"{context.clock():%Y-%m}", **details}, sort_keys=True)


def account_of(store: UsageStore, user_id: str) -> Account:
    account = store.get_account(user_id)
    if account is None:
        raise NotFound(f"user {user_id!r} has no account")
    return account


def apply_once(
    context: Context,
    args: argparse.Namespace,
    *,
    kind: str,
    details: Mapping[str, Any],
    describe: str,
    change: Callable[[UsageStore, Account], Mapping[str, Any]],
) -> int:
    """Record ``kind`` for ``args.user`` and run ``change`` once; a second run reports and stops.

    ``change`` returns what it did (added to the record's JSON)."""
    if not args.reason.strip():
        raise InvalidRequest("--reason must not be empty")
    store = context.store()
    account = account_of(store, args.user)
    key = args.key if args.key is not None else default_key(context, details)
    request_id = record_id(kind, args.user, key)
    recorded = store.get_ledger(request_id)
    if recorded is not None and recorded.status is LedgerStatus.ADJUSTMENT:
        context.say(f"{kind} {args.user}: already applied ({request_id}), nothing changed")
        return 0
    if recorded is not None:
        # A run stopped between its record and its change: whether the change happened is not
        # known here, and applying it again could apply it twice.
        raise Unfinished(
            f"{kind} {args.user}: an earlier run did not finish (record {request_id} is "
            f"{recorded.status.value}); check the account, then rerun with a new --key if the "
            "change is still wanted"
        )
    if args.dry_run:
        context.say(f"{kind} {args.user}: would {describe} (dry run, nothing changed)")
        return 0
    now = context.clock()
    reply = {"kind": kind, "reason": args.reason, "key": key, **details}
    # Opened as a request in flight (holding nothing), settled as the adjustment once the change
    # is made: the store's own claim-then-settle path, so no new write path is needed.
    entry = LedgerEntry(
        request_id=request_id,
        user_id=args.user,
        status=LedgerStatus.RESERVED,
        model="",
        period_start=account.period_start,
        created_at=now,
        updated_at=now,
        reply=json.dumps(reply, sort_keys=True),
    )
    store.open_request(entry, NO_CAP)
    try:
        done = change(store, account)
    except BaseException:
        store.discard_request(args.user, request_id, 0)
        raise
    store.settle(
        args.user,
        request_id,
        0,
        {
            "status": LedgerStatus.ADJUSTMENT,
            "reply": json.dumps({**reply, **done}, sort_keys=True),
            "updated_at": context.clock(),
        },
    )
    context.say(f"{kind} {args.user}: {describe} ({request_id})")
    return 0
