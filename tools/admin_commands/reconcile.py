"""Check every account's counter against its period's ledger (fixed only with --apply) and, with
ANTHROPIC_ADMIN_KEY, the month's ledger per model and hour against Anthropic's usage report.

A counter that differs from its ledger (below it or above it) is set to it, recorded as an
adjustment row of the ledger (zero usage, the drift in its JSON) created in the same change as the
counter's, so the ledger's total stays.
"""

from __future__ import annotations

import argparse
import contextlib
import json
from collections import defaultdict
from collections.abc import Iterator, Mapping
from datetime import datetime, timedelta
from typing import Any

import requests
from metering.account import Account
from metering.errors import AlreadyExists, UpstreamError
from metering.ledger import LedgerEntry, LedgerStatus
from metering.ports import AccountQuery, UsageStore
from metering.timeutil import month_start

from tools.admin_commands.context import Context
from tools.admin_commands.manual import record_id
from tools.admin_commands.report import pages

PAGE = 100
USAGE_REPORT_URL = "https://api.anthropic.com/v1/organizations/usage_report/messages"
ANTHROPIC_VERSION = "2023-06-01"
# 1h buckets: the API returns at most 168 a page.
BUCKETS_PER_PAGE = 168
TIMEOUT_SECONDS = 30
KINDS = ("input", "cache_writes", "cache_reads", "output")

Counts = dict[str, int]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--apply",
        action="store_true",
        help="set each counter that differs from its ledger total to it (default: report only)",
    )
    parser.add_argument(
        "--reason",
        default="reconcile: counter set to the ledger total",
        help="kept in each fix's ledger record",
    )


def run(args: argparse.Namespace, context: Context) -> int:
    store = context.store()
    drifted = check_counters(store, context, apply=args.apply, reason=args.reason)
    problems = drifted > 0
    key = context.environ.get("ANTHROPIC_ADMIN_KEY", "").strip()
    if key:
        problems = compare_with_anthropic(store, context, key) or problems
    else:
        context.say("anthropic: skipped (set ANTHROPIC_ADMIN_KEY to compare with its usage report)")
    return 1 if problems else 0


# -- counters against the ledger ---------------------------------------------------------------


def check_counters(store: UsageStore, context: Context, *, apply: bool, reason: str) -> int:
    """The number of drifted accounts left unfixed (with ``apply``: those it cannot fix)."""
    checked = with_usage = drifted = unfixed = 0
    accounts = pages(lambda cursor: store.list_accounts(AccountQuery(), PAGE, cursor))
    for account in context.each(accounts, desc="accounts", unit="account"):
        checked += 1
        ledger = store.ledger_total(account.user_id, account.period_start)
        counter = account.current_tokens_used
        if ledger or counter:
            with_usage += 1
        if ledger == counter:
            continue
        drifted += 1
        line = f"drift {account.user_id}: counter {counter}, ledger {ledger}"
        if not apply:
            context.say(f"{line} (run with --apply to fix)")
            continue
        if not fix(store, context, account, ledger=ledger, reason=reason):
            context.say(f"{line}: changed while being checked, not fixed (run again)")
            unfixed += 1
            continue
        context.say(f"{line}: fixed")
    context.say(
        f"counters: {checked} accounts, {with_usage} with usage this period, {drifted} drifted"
        + (f", {drifted - unfixed} fixed" if apply else "")
    )
    return unfixed if apply else drifted


def fix(store: UsageStore, context: Context, account: Account, *, ledger: int, reason: str) -> bool:
    """Set the counter to ``ledger`` (up or down) with one adjustment record, which counts
    nothing in the ledger; False, changing nothing, when a request moved the counter or the
    ledger since they were read (what looked like drift may have been that request)."""
    user_id, period_start, counter = (
        account.user_id,
        account.period_start,
        account.current_tokens_used,
    )
    again = store.get_account(user_id)
    if again is None or again.current_tokens_used != counter or again.period_start != period_start:
        return False
    if store.ledger_total(user_id, period_start) != ledger:
        return False
    key = json.dumps([period_start.isoformat(), counter, ledger])
    request_id = record_id("reconcile", user_id, key)
    now = context.clock()
    reply = {"kind": "reconcile", "reason": reason, "counter": counter, "ledger": ledger}
    entry = LedgerEntry(
        request_id=request_id,
        user_id=user_id,
        status=LedgerStatus.ADJUSTMENT,
        model="",
        period_start=period_start,
        created_at=now,
        updated_at=now,
        reply=json.dumps(reply, sort_keys=True),
    )
    # A fix applied before (its answer lost) has its record: applying it again would move the
    # counter twice.
    with contextlib.suppress(AlreadyExists):
        store.record_adjustment(entry, ledger - counter)
    return True


# -- the ledger against Anthropic's usage report -----------------------------------------------


def hour_of(at: datetime) -> datetime:
    return at.replace(minute=0, second=0, microsecond=0)


def ledger_buckets(
    store: UsageStore, start: datetime, end: datetime
) -> dict[tuple[datetime, str], Counts]:
    buckets: dict[tuple[datetime, str], Counts] = defaultdict(lambda: dict.fromkeys(KINDS, 0))
    for entry in pages(lambda cursor: store.list_ledger(start, end, PAGE, cursor)):
        if entry.status == LedgerStatus.ADJUSTMENT:
            continue
        counts = buckets[(hour_of(entry.created_at), entry.model)]
        counts["input"] += entry.usage.input_tokens
        counts["cache_writes"] += entry.usage.cache_creation_input_tokens
        counts["cache_reads"] += entry.usage.cache_read_input_tokens
        counts["output"] += entry.usage.output_tokens
    return dict(buckets)


def report_pages(key: str, start: datetime, end: datetime) -> Iterator[Mapping[str, Any]]:
    """Every page of the messages usage report, 1h buckets grouped by model."""
    params: dict[str, Any] = {
        "starting_at": start.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "ending_at": end.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "bucket_width": "1h",
        "group_by[]": ["model"],
        "limit": BUCKETS_PER_PAGE,
    }
    headers = {"x-api-key": key, "anthropic-version": ANTHROPIC_VERSION}
    while True:
        try:
            response = requests.get(
                USAGE_REPORT_URL, params=params, headers=headers, timeout=TIMEOUT_SECONDS
            )
        except requests.RequestException as error:
            raise UpstreamError(f"Anthropic usage report unreachable: {error}") from None
        if response.status_code != 200:
            raise UpstreamError(
                f"Anthropic usage report refused: HTTP {response.status_code} {response.text[:200]}"
            )
        body = response.json()
        yield body
        if not body.get("has_more") or not body.get("next_page"):
            return
        params["page"] = body["next_page"]


def anthropic_buckets(
    key: str, start: datetime, end: datetime
) -> dict[tuple[datetime, str], Counts]:
    buckets: dict[tuple[datetime, str], Counts] = {}
    for body in report_pages(key, start, end):
        for bucket in body.get("data", []):
            hour = datetime.fromisoformat(bucket["starting_at"].replace("Z", "+00:00"))
            for result in bucket.get("results", []):
                cache = result.get("cache_creation") or {}
                counts = {
                    "input": int(result.get("uncached_input_tokens") or 0),
                    "cache_writes": int(cache.get("ephemeral_1h_input_tokens") or 0)
                    + int(cache.get("ephemeral_5m_input_tokens") or 0),
                    "cache_reads": int(result.get("cache_read_input_tokens") or 0),
                    "output": int(result.get("output_tokens") or 0),
                }
                if not any(counts.values()):
                    continue
                slot = (hour_of(hour), str(result.get("model") or ""))
                previous = buckets.get(slot, dict.fromkeys(KINDS, 0))
                buckets[slot] = {kind: previous[kind] + counts[kind] for kind in KINDS}
    return buckets


def compare_with_anthropic(store: UsageStore, context: Context, key: str) -> bool:
    """True when some hour and model differ (each printed)."""
    end = hour_of(context.clock())
    start = month_start(end)
    if start == end:
        start -= timedelta(hours=1)
    ours = ledger_buckets(store, start, end)
    theirs = anthropic_buckets(key, start, end)
    differing = 0
    for hour, model in sorted(set(ours) | set(theirs)):
        mine = ours.get((hour, model), dict.fromkeys(KINDS, 0))
        reported = theirs.get((hour, model), dict.fromkeys(KINDS, 0))
        if mine == reported:
            continue
        differing += 1
        parts = ", ".join(
            f"{kind} {mine[kind]} vs {reported[kind]}"
            for kind in KINDS
            if mine[kind] != reported[kind]
        )
        context.say(
            f"anthropic {hour:%Y-%m-%dT%H}:00Z {model or '(no model)'}: ledger vs report: {parts}"
        )
    context.say(
        f"anthropic: {len(set(ours) | set(theirs))} hour-and-model buckets from "
        f"{start:%Y-%m-%dT%H:%MZ} to {end:%Y-%m-%dT%H:%MZ}, {differing} differing"
    )
    return differing > 0
