"""Cron cost at scale: the safety net's paged due-row queries against a full scan that lists
every subscription and checks each in Python, on an SQLite store of 100,000 subscriptions."""

from __future__ import annotations

import shutil
import sqlite3
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import cast

from metering.account import Account, demo_period_due
from metering.maintenance import Maintenance, MaintenanceSettings, Summary
from metering.ports import AccountQuery, BillingProvider, SubscriptionSnapshot, UsageStore
from metering.timeutil import format_timestamp, month_start, next_month_start

from benchmarks.common import CallCounter, CountingProxy, Table, ratio
from localruntime.sqlite_store import SQLiteStore

NOW = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)
SETTINGS = MaintenanceSettings()
# One row in DUE_EVERY is due: alternately a Demo month rollover and a missed renewal.
DUE_EVERY = 100
SUBSCRIBED_EVERY = 3  # a third of the users pay through Stripe


class FakeBilling:
    """Stripe's answer for a missed renewal: the subscription moved on to its next period."""

    def __init__(self) -> None:
        self.lookups = 0

    def get_subscription(self, subscription_id: str) -> SubscriptionSnapshot:
        self.lookups += 1
        start = NOW - timedelta(days=2)
        return SubscriptionSnapshot(
            id=subscription_id,
            customer_id=f"cus_{subscription_id}",
            status="active",
            period_start=start,
            period_end=start + timedelta(days=30),
            items=(),
        )

    def get_product_metadata(self, product_id: str) -> Mapping[str, str]:
        return {}


def seed_subscriptions(path: str, rows: int, *, due: bool) -> int:
    """Fill a fresh store with ``rows`` subscriptions in one transaction; returns the due count."""
    SQLiteStore(path)  # the schema
    this_month = format_timestamp(month_start(NOW))
    next_month = format_timestamp(next_month_start(NOW))
    last_month = format_timestamp(month_start(month_start(NOW) - timedelta(days=1)))
    paid_start = format_timestamp(NOW - timedelta(days=18))
    paid_end = format_timestamp(NOW + timedelta(days=12))
    missed_start = format_timestamp(NOW - timedelta(days=32))
    missed_end = format_timestamp(NOW - timedelta(days=2))
    stamp = format_timestamp(NOW)
    records = []
    due_rows = 0
    for n in range(rows):
        subscribed = n % SUBSCRIBED_EVERY == 0
        is_due = due and n % DUE_EVERY == 0
        due_rows += is_due
        if subscribed:
            start, end = (missed_start, missed_end) if is_due else (paid_start, paid_end)
            plan, status, customer, subscription = "pro", "active", f"cus_{n}", f"sub_{n}"
            allowance = 200_000
        else:
            start, end = (last_month, this_month) if is_due else (this_month, next_month)
            plan, status, customer, subscription = "demo", "none", None, None
            allowance = 30
        records.append(
            (
                f"row{n}",
                f"user{n}",
                plan,
                status,
                customer,
                subscription,
                n % 25,
                allowance,
                start,
                end,
                stamp,
                stamp,
            )
        )
    with sqlite3.connect(path) as connection:
        connection.executemany(
            "INSERT INTO subscriptions (id, userId, plan, status, stripeCustomerId,"
            " stripeSubscriptionId, currentTokensUsed, maxTokensPerMonth, periodStart, periodEnd,"
            " createdAt, updatedAt) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            records,
        )
    connection.close()
    return due_rows


def _due_queries() -> tuple[AccountQuery, AccountQuery]:
    """The two queries the cron pages through (Demo rollovers, missed renewals)."""
    return (
        AccountQuery(subscribed=False, period_start_before=month_start(NOW)),
        AccountQuery(subscribed=True, period_end_before=NOW - SETTINGS.grace),
    )


def _matches(account: Account, query: AccountQuery) -> bool:
    """``query`` evaluated in Python on one row, as a full scan must."""
    if query.subscribed is not None and account.has_subscription != query.subscribed:
        return False
    if query.period_start_before is not None and account.period_start >= query.period_start_before:
        return False
    return query.period_end_before is None or (
        account.period_end is not None and account.period_end < query.period_end_before
    )


def _pages(store: UsageStore, query: AccountQuery) -> Iterator[Account]:
    cursor: str | None = None
    while True:
        page = store.list_accounts(query, SETTINGS.page_size, cursor)
        yield from page.items
        if page.next_cursor is None:
            return
        cursor = page.next_cursor


def find_due_ours(store: UsageStore) -> set[str]:
    return {account.user_id for query in _due_queries() for account in _pages(store, query)}


def find_due_full_scan(store: UsageStore) -> set[str]:
    """List every row once; keep the Demo rows whose month ended and the lapsed renewals."""
    demo, renewals = _due_queries()
    due: set[str] = set()
    for account in _pages(store, AccountQuery()):
        if (_matches(account, demo) and demo_period_due(account, NOW)) or _matches(
            account, renewals
        ):
            due.add(account.user_id)
    return due


class FullScanMaintenance(Maintenance):
    """The same safety net, but each job lists every row and filters it in Python."""

    def _accounts(self, query: AccountQuery) -> Iterator[Account]:
        size = self.settings.page_size
        everyone = self._pages(
            lambda cursor: self.store.list_accounts(AccountQuery(), size, cursor)
        )
        for account in everyone:
            if _matches(account, query):
                yield account


@dataclass(frozen=True)
class Cost:
    store_calls: int
    rows_read: int
    seconds: float
    due: int


@dataclass(frozen=True)
class Comparison:
    subscriptions: int
    due: int
    measure: str
    ours: Cost
    baseline: Cost


def _find(store: SQLiteStore, full_scan: bool) -> Cost:
    counter = CallCounter()
    proxy = cast(UsageStore, CountingProxy(store, counter))
    started = time.perf_counter()
    found = find_due_full_scan(proxy) if full_scan else find_due_ours(proxy)
    seconds = time.perf_counter() - started
    return Cost(counter.total, counter.rows_read, seconds, len(found))


def _run(store: SQLiteStore, full_scan: bool) -> tuple[Cost, Summary]:
    counter = CallCounter()
    proxy = cast(UsageStore, CountingProxy(store, counter))
    kind = FullScanMaintenance if full_scan else Maintenance
    cron = kind(proxy, cast(BillingProvider, FakeBilling()), SETTINGS, lambda: NOW)
    started = time.perf_counter()
    summary = cron.run()
    seconds = time.perf_counter() - started
    resets = summary.demo_resets + summary.subscription_resets
    return Cost(counter.total, counter.rows_read, seconds, resets), summary


def measure(subscriptions: int = 100_000) -> list[Comparison]:
    comparisons: list[Comparison] = []
    with tempfile.TemporaryDirectory(prefix="bench-cron-") as folder:
        ours_path = str(Path(folder) / "ours.sqlite3")
        baseline_path = str(Path(folder) / "baseline.sqlite3")
        due = seed_subscriptions(ours_path, subscriptions, due=True)
        shutil.copyfile(ours_path, baseline_path)
        ours, baseline = SQLiteStore(ours_path), SQLiteStore(baseline_path)
        comparisons.append(
            Comparison(subscriptions, due, "find due rows", _find(ours, False), _find(ours, True))
        )
        ours_run, ours_summary = _run(ours, full_scan=False)
        baseline_run, baseline_summary = _run(baseline, full_scan=True)
        if ours_summary.as_json() != baseline_summary.as_json():
            raise AssertionError("the full scan and the paged queries did different work")
        comparisons.append(Comparison(subscriptions, due, "whole cron run", ours_run, baseline_run))
        # Every due row has been reset now: the same tables have nothing left to do.
        comparisons.append(
            Comparison(subscriptions, 0, "find due rows", _find(ours, False), _find(ours, True))
        )
        comparisons.append(
            Comparison(
                subscriptions, 0, "whole cron run", _run(ours, False)[0], _run(baseline, True)[0]
            )
        )
    return comparisons


def render(comparisons: list[Comparison]) -> str:
    headers = ["subscriptions", "due", "measure"]
    for measure in ("store calls", "rows read", "ms"):
        headers += [f"ours: {measure}", f"full scan: {measure}", "scan / ours"]
    table = Table(headers)
    for c in comparisons:
        table.add(
            c.subscriptions,
            c.due,
            c.measure,
            c.ours.store_calls,
            c.baseline.store_calls,
            ratio(c.baseline.store_calls, c.ours.store_calls),
            c.ours.rows_read,
            c.baseline.rows_read,
            ratio(c.baseline.rows_read, c.ours.rows_read),
            round(c.ours.seconds * 1000, 1),
            round(c.baseline.seconds * 1000, 1),
            ratio(c.baseline.seconds, c.ours.seconds),
        )
    heading = (
        f"SQLite store, page size {SETTINGS.page_size}; a third of the users subscribed; one row"
        f" in {DUE_EVERY} due (Demo rollovers and lapsed renewals alike), then none. Store calls"
        " include the resets and reconciliation of a whole run; rows read are rows returned to"
        " the function."
    )
    return heading + "\n\n" + table.render()


def run(quick: bool) -> str:
    return render(measure(10_000 if quick else 100_000))
