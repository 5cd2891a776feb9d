"""Cron cost at scale: a whole run of the safety net on an SQLite store of 100,000 subscriptions
with 1 %, 10 % and 100 % of them due, against the same run on a store whose queries scan every
row and filter in Python: store calls per due row, rows read, time and peak memory."""

from __future__ import annotations

import sqlite3
import tempfile
import time
import tracemalloc
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, cast

from metering.account import Account
from metering.maintenance import Maintenance, MaintenanceSettings, Summary
from metering.ports import AccountQuery, BillingProvider, Page, SubscriptionSnapshot, UsageStore
from metering.timeutil import format_timestamp, month_start, next_month_start

from benchmarks.common import CallCounter, CountingProxy, Table, ratio
from localruntime.sqlite_store import SQLiteStore

NOW = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)
# No time budget in the way: the whole run is what is measured.
SETTINGS = MaintenanceSettings(time_budget=timedelta(hours=1))
# (subscriptions, one row in n due): alternately a Demo month rollover and a missed renewal.
SHARES = ((100_000, 100), (100_000, 10), (100_000, 1))
QUICK_SHARES = ((10_000, 100), (10_000, 10), (2_000, 1))
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


def seed_subscriptions(path: str, rows: int, *, due_every: int) -> int:
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
        is_due = n % due_every == 0
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
                # Usage only where a reset will take it; the rest start the period at 0.
                n % 25 + 1 if is_due else 0,
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


def _matches(account: Account, query: AccountQuery) -> bool:
    """``query`` evaluated in Python on one row, as a full scan must."""
    if query.subscribed is not None and account.has_subscription != query.subscribed:
        return False
    if query.with_usage and account.current_tokens_used <= 0:
        return False
    if query.period_start_before is not None and account.period_start >= query.period_start_before:
        return False
    return query.period_end_before is None or (
        account.period_end is not None and account.period_end < query.period_end_before
    )


class FullScanStore:
    """The baseline: the same store, but ``list_accounts`` walks every row (no filter reaches
    the database) and keeps the matching ones in Python, as a cron without indexed queries
    must. Everything else is the real store's."""

    def __init__(self, inner: UsageStore) -> None:
        self._inner = inner

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def list_accounts(self, query: AccountQuery, limit: int, cursor: str | None) -> Page[Account]:
        items: list[Account] = []
        cursors: list[str] = []
        while True:
            page = self._inner.list_accounts(AccountQuery(), limit, cursor)
            for account, after in zip(page.items, page.item_cursors, strict=True):
                if _matches(account, query):
                    items.append(account)
                    cursors.append(after)
                    if len(items) == limit:
                        return Page(items, after, cursors)
            if page.next_cursor is None:
                return Page(items, None, cursors)
            cursor = page.next_cursor


@dataclass(frozen=True)
class Cost:
    store_calls: int
    rows_read: int
    seconds: float
    peak_bytes: int
    due: int


@dataclass(frozen=True)
class Comparison:
    subscriptions: int
    due: int
    ours: Cost
    baseline: Cost


def _run(store: UsageStore, full_scan: bool) -> tuple[Cost, Summary]:
    """One cron run through the public ``Maintenance`` API, counted, timed, memory traced."""
    counter = CallCounter()
    proxy = cast(UsageStore, CountingProxy(store, counter))
    target = cast(UsageStore, FullScanStore(proxy)) if full_scan else proxy
    cron = Maintenance(target, cast(BillingProvider, FakeBilling()), SETTINGS, lambda: NOW)
    tracemalloc.start()
    started = time.perf_counter()
    try:
        summary = cron.run()
        seconds = time.perf_counter() - started
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    resets = summary.demo_resets + summary.subscription_resets
    return Cost(counter.total, counter.rows_read, seconds, peak, resets), summary


def _copy(source: str, target: str) -> None:
    """A consistent copy through SQLite's backup API (a file copy could miss what is still in
    the write-ahead log)."""
    with sqlite3.connect(source) as origin, sqlite3.connect(target) as copy:
        origin.backup(copy)
    origin.close()
    copy.close()


def measure(shares: tuple[tuple[int, int], ...] = SHARES) -> list[Comparison]:
    """For each (subscriptions, one due in ``n``), a fresh store and its copy: a whole cron run
    on each, ours and the full scan, which must do the same work. After the first, a second run
    on the same stores, when nothing is due any more."""
    comparisons: list[Comparison] = []
    with tempfile.TemporaryDirectory(prefix="bench-cron-") as folder:
        for number, (subscriptions, every) in enumerate(shares):
            ours_path = str(Path(folder) / f"ours-{number}.sqlite3")
            baseline_path = str(Path(folder) / f"baseline-{number}.sqlite3")
            due = seed_subscriptions(ours_path, subscriptions, due_every=every)
            _copy(ours_path, baseline_path)
            ours, baseline = SQLiteStore(ours_path), SQLiteStore(baseline_path)
            ours_run, ours_summary = _run(ours, full_scan=False)
            baseline_run, baseline_summary = _run(baseline, full_scan=True)
            if ours_summary.as_json() != baseline_summary.as_json():
                raise AssertionError("the full scan and the paged queries did different work")
            comparisons.append(Comparison(subscriptions, due, ours_run, baseline_run))
            if number == 0:
                # Every due row has been reset now: nothing left to do.
                idle = Comparison(subscriptions, 0, _run(ours, False)[0], _run(baseline, True)[0])
                comparisons.append(idle)
            Path(ours_path).unlink()
            Path(baseline_path).unlink()
    return comparisons


def render(comparisons: list[Comparison]) -> str:
    table = Table(
        [
            "subscriptions",
            "due",
            "due %",
            "ours: store calls",
            "per due row",
            "full scan: store calls",
            "scan / ours",
            "ours: rows read",
            "full scan: rows read",
            "scan / ours",
            "ours: s",
            "full scan: s",
            "scan / ours",
            "ours: peak MB",
            "full scan: peak MB",
            "scan / ours",
        ]
    )
    for c in comparisons:
        table.add(
            c.subscriptions,
            c.due,
            f"{100 * c.due / c.subscriptions:g}%",
            c.ours.store_calls,
            round(c.ours.store_calls / c.due, 2) if c.due else "-",
            c.baseline.store_calls,
            ratio(c.baseline.store_calls, c.ours.store_calls),
            c.ours.rows_read,
            c.baseline.rows_read,
            ratio(c.baseline.rows_read, c.ours.rows_read),
            round(c.ours.seconds, 2),
            round(c.baseline.seconds, 2),
            ratio(c.baseline.seconds, c.ours.seconds),
            round(c.ours.peak_bytes / 1e6, 2),
            round(c.baseline.peak_bytes / 1e6, 2),
            ratio(c.baseline.peak_bytes, c.ours.peak_bytes),
        )
    heading = (
        f"SQLite store, page size {SETTINGS.page_size}; a third of the users subscribed; the due"
        " rows alternate Demo rollovers and lapsed renewals (a fake Stripe reports the next "
        "period); the row with 0 due is a second run of the first, once all are reset. A whole "
        "`Maintenance.run()` each time (resets, reclaim, reconciliation of the users it changed"
        " and of every user with usage: here only the due ones had any). Rows read are rows "
        "returned to the function; peak MB is tracemalloc's peak during the run (which also "
        "slows both sides alike)."
    )
    return heading + "\n\n" + table.render()


def run(quick: bool) -> str:
    return render(measure(QUICK_SHARES if quick else SHARES))
