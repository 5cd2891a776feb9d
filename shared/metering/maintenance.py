"""The scheduled safety net over the ports: Demo month rollovers, renewals and cancellations a
webhook missed, reservations of crashed chats, and counter-vs-ledger reconciliation, in a budget."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from . import settings as declared
from .account import Account, demo_period_due, plan_reset
from .billing import ENDED_STATUSES, decide_recovered_reset, recovered_cancel
from .billing_service import cancel_subscription
from .config import EnvReader
from .errors import Conflict, MeteringError, NotFound, StoreError
from .ledger import LedgerEntry, LedgerPatch, LedgerStatus
from .plans import PlanCatalog, load_default_plans
from .ports import AccountQuery, BillingProvider, Page, SubscriptionSnapshot, UsageStore
from .timeutil import month_start
from .turns import TurnPatch, TurnStatus

MAX_DRIFT_REPORTED = 50
# The names the resumable passes keep their place under, between runs.
STRIPE_LOOKUPS = "cron.stripe-lookups"
RECONCILIATION = "cron.reconciliation"


@dataclass(frozen=True)
class MaintenanceSettings:
    grace: timedelta = timedelta(hours=6)
    reservation_ttl: timedelta = timedelta(minutes=15)
    page_size: int = 100
    time_budget: timedelta = timedelta(seconds=240)
    # The share of the budget the Stripe look-ups leave to reconciliation.
    reconcile_share_percent: int = 25

    @classmethod
    def read(cls, env: EnvReader) -> MaintenanceSettings:
        return cls(
            grace=timedelta(seconds=env.read(declared.CRON_GRACE_SECONDS)),
            reservation_ttl=timedelta(seconds=env.read(declared.CRON_RESERVATION_TTL_SECONDS)),
            page_size=env.read(declared.CRON_PAGE_SIZE),
            time_budget=timedelta(seconds=env.read(declared.CRON_TIME_BUDGET_SECONDS)),
            reconcile_share_percent=env.read(declared.CRON_RECONCILE_SHARE_PERCENT),
        )


@dataclass
class Progress:
    """How far one resumable pass got in a run."""

    resumed: bool = False  # it started where the previous run stopped
    finished: bool = False  # it reached its last row: the next run starts over

    def as_json(self) -> dict[str, bool]:
        return {"resumed": self.resumed, "finished": self.finished}


@dataclass
class Summary:
    demo_resets: int = 0
    subscriptions_checked: int = 0
    subscription_resets: int = 0
    subscriptions_canceled: int = 0
    subscriptions_not_active: int = 0
    subscriptions_unchanged: int = 0
    stripe_errors: int = 0
    stripe_lookups: str = "done"
    stripe_pass: Progress = field(default_factory=Progress)
    reservations_reclaimed: int = 0
    tokens_released: int = 0
    reconciled: int = 0
    drift: list[dict[str, Any]] = field(default_factory=list)
    drifted: int = 0
    reconcile_pass: Progress = field(default_factory=Progress)
    complete: bool = True

    def as_json(self) -> dict[str, Any]:
        return {
            "complete": self.complete,
            "demoResets": self.demo_resets,
            "subscriptions": {
                "checked": self.subscriptions_checked,
                "reset": self.subscription_resets,
                "canceled": self.subscriptions_canceled,
                "notActive": self.subscriptions_not_active,
                "unchanged": self.subscriptions_unchanged,
                "errors": self.stripe_errors,
                "stripeLookups": self.stripe_lookups,
                **self.stripe_pass.as_json(),
            },
            "reservations": {
                "reclaimed": self.reservations_reclaimed,
                "tokensReleased": self.tokens_released,
            },
            "reconciliation": {
                "users": self.reconciled,
                "drifted": self.drifted,
                "drift": self.drift,
                **self.reconcile_pass.as_json(),
            },
        }


class _OutOfTime(Exception):
    """Raised between rows when the time budget is spent; the next run continues."""


class Maintenance:
    """One run of the safety net. Every reset goes through the store's forward-only
    ``apply_reset``, so a period the webhook already reset is never reset again; a cancellation
    is the webhook's own decision, so a late deletion event finds nothing left to change.

    Demo rollovers and the reclaim resume by themselves (what they handled leaves their filter).
    The Stripe look-ups and reconciliation do not (a ``past_due`` row stays due), so each walks
    its rows in laps, saving where it stopped; a lap that reaches the end clears it."""

    def __init__(
        self,
        store: UsageStore,
        billing: BillingProvider | None,
        settings: MaintenanceSettings,
        clock: Callable[[], datetime],
        plans: PlanCatalog | None = None,
    ) -> None:
        self.store = store
        self.billing = billing
        self.settings = settings
        self.clock = clock
        self.plans = plans if plans is not None else load_default_plans()
        self._deadline = datetime.max.replace(tzinfo=UTC)
        # Users whose counter this run changed, in order: reconciled at the end.
        self._touched: dict[str, None] = {}

    def run(self) -> Summary:
        now = self.clock()
        budget = self.settings.time_budget
        self._deadline = now + budget
        # The look-ups stop early enough to leave reconciliation its share, however slow Stripe.
        stripe_deadline = self._deadline - budget * (self.settings.reconcile_share_percent / 100)
        summary = Summary()
        try:
            self._demo_rollovers(now, summary)
            # Store-only steps first: slow Stripe look-ups must not starve the reclaim.
            self._reclaim_reservations(now, summary)
        except _OutOfTime:
            summary.complete = False
            return summary
        if self.billing is None:
            summary.stripe_lookups = "skipped: STRIPE_SECRET_KEY is not set"
        else:
            self._missed_renewals(now, self.billing, summary, stripe_deadline)
        self._reconcile(summary)
        stripe_done = self.billing is None or summary.stripe_pass.finished
        summary.complete = stripe_done and summary.reconcile_pass.finished
        return summary

    def _check_time(self, deadline: datetime | None = None) -> None:
        if self.clock() >= (self._deadline if deadline is None else deadline):
            raise _OutOfTime

    def _pages(self, fetch: Callable[[str | None], Page[Any]]) -> Iterator[Any]:
        cursor: str | None = None
        while True:
            self._check_time()
            page = fetch(cursor)
            for item in page.items:
                self._check_time()
                yield item
            if page.next_cursor is None:
                return
            cursor = page.next_cursor

    def _list_accounts(self, query: AccountQuery, cursor: str | None) -> Page[Account]:
        """The one place every pass reads its accounts from."""
        return self.store.list_accounts(query, self.settings.page_size, cursor)

    def _accounts(self, query: AccountQuery) -> Iterator[Account]:
        yield from self._pages(lambda cursor: self._list_accounts(query, cursor))

    def _lap(
        self, name: str, query: AccountQuery, progress: Progress, deadline: datetime
    ) -> Iterator[Account]:
        """The accounts ``query`` matches, from where the pass ``name`` stopped last to the end
        (one lap at most), saving the position after the last account handled when time runs
        out; ``_OutOfTime`` then reaches the caller."""
        start = self.store.get_cursor(name)
        progress.resumed = start is not None
        position = start
        try:
            for account, after in self._positions(query, start, progress, deadline):
                yield account
                position = after  # resumed here: the caller has handled ``account``
        except _OutOfTime:
            if position != start:
                self.store.save_cursor(name, position)
            raise
        if start is not None:
            self.store.save_cursor(name, None)
        progress.finished = True

    def _positions(
        self, query: AccountQuery, cursor: str | None, progress: Progress, deadline: datetime
    ) -> Iterator[tuple[Account, str]]:
        """Each account after ``cursor``, with the cursor just after it, checking the time
        before each."""
        restarted = False
        while True:
            self._check_time(deadline)
            try:
                page = self._list_accounts(query, cursor)
            except NotFound:
                # The row the cursor names was deleted (Appwrite's cursors are row ids): the
                # lap starts again from the first row, once.
                if cursor is None or restarted:
                    raise
                restarted, cursor, progress.resumed = True, None, False
                continue
            if len(page.item_cursors) != len(page.items):
                raise StoreError("the store named no cursor for each account of a page")
            for account, after in zip(page.items, page.item_cursors, strict=True):
                self._check_time(deadline)
                yield account, after
            if page.next_cursor is None:
                return
            cursor = page.next_cursor

    def _demo_rollovers(self, now: datetime, summary: Summary) -> None:
        query = AccountQuery(subscribed=False, period_start_before=month_start(now))
        for account in self._accounts(query):
            due = demo_period_due(account, now)
            reset = plan_reset(account, due[0], due[1], now) if due else None
            if reset and self.store.apply_reset(reset, account.period_start) is not None:
                summary.demo_resets += 1
                self._touched[account.user_id] = None

    def _missed_renewals(
        self, now: datetime, billing: BillingProvider, summary: Summary, deadline: datetime
    ) -> None:
        query = AccountQuery(subscribed=True, period_end_before=now - self.settings.grace)
        with contextlib.suppress(_OutOfTime):
            for account in self._lap(STRIPE_LOOKUPS, query, summary.stripe_pass, deadline):
                self._look_up(account, now, billing, summary)

    def _look_up(
        self, account: Account, now: datetime, billing: BillingProvider, summary: Summary
    ) -> None:
        summary.subscriptions_checked += 1
        try:
            snapshot = billing.get_subscription(account.stripe_subscription_id or "")
        except MeteringError:
            # One unreachable subscription must not stop the others; the next lap retries.
            summary.stripe_errors += 1
            return
        if snapshot.status in ENDED_STATUSES:
            if self._cancel(account.user_id, snapshot, now):
                summary.subscriptions_canceled += 1
            else:
                summary.subscriptions_unchanged += 1
            return
        reset = decide_recovered_reset(account, snapshot, now)
        if reset is None:
            if snapshot.status not in ("active", "trialing"):
                summary.subscriptions_not_active += 1
            else:
                summary.subscriptions_unchanged += 1
            return
        if self.store.apply_reset(reset, account.period_start) is not None:
            summary.subscription_resets += 1
            self._touched[account.user_id] = None
        else:
            summary.subscriptions_unchanged += 1

    def _cancel(self, user_id: str, snapshot: SubscriptionSnapshot, now: datetime) -> bool:
        # Decided on the row as it is now, not as listed: a webhook may have moved the account
        # to another subscription during the look-up, and that one must not be cancelled.
        account = self.store.get_account(user_id)
        command = recovered_cancel(account, snapshot) if account else None
        if account is None or command is None:
            return False
        if not cancel_subscription(self.store, self.plans, account, command, now):
            return False
        self._touched[user_id] = None
        return True

    def _reclaim_reservations(self, now: datetime, summary: Summary) -> None:
        stale_before = now - self.settings.reservation_ttl
        size = self.settings.page_size

        def fetch(cursor: str | None) -> Page[LedgerEntry]:
            return self.store.list_stale_reservations(stale_before, size, cursor)

        for entry in self._pages(fetch):
            account = self.store.get_account(entry.user_id)
            # Only the live hold goes back: the settled steps stay charged, as the provider
            # billed them. After a reset the hold already went with the old period's usage.
            same_period = account is not None and account.period_start == entry.period_start
            release = entry.held_tokens if same_period else 0
            turn = self.store.get_turn(entry.request_id)
            turn_patch: TurnPatch | None = None
            if turn is not None and not turn.status.final:
                turn_patch = {"status": TurnStatus.FAILED, "updated_at": now}
            patch: LedgerPatch = {
                "status": LedgerStatus.RECLAIMED,
                "held_tokens": 0,
                "updated_at": now,
            }
            try:
                self.store.settle(entry.user_id, entry.request_id, release, patch, turn_patch)
            except Conflict:
                continue  # the request settled itself meanwhile: it was not dead
            summary.tokens_released += release
            summary.reservations_reclaimed += 1
            self._touched[entry.user_id] = None

    def _reconcile(self, summary: Summary) -> None:
        """The users this run changed, then a lap of every user with usage this period. A
        counter of 0 over a non-empty ledger is not looked for: finding one means reading the
        whole period's ledger; ``tools.admin reconcile`` does that."""
        try:
            for user_id in list(self._touched):
                self._check_time()
                account = self.store.get_account(user_id)
                if account is not None:
                    self._reconcile_account(account, summary)
            query = AccountQuery(with_usage=True)
            for account in self._lap(RECONCILIATION, query, summary.reconcile_pass, self._deadline):
                if account.user_id not in self._touched:
                    self._reconcile_account(account, summary)
        except _OutOfTime:
            return

    def _reconcile_account(self, account: Account, summary: Summary) -> None:
        ledger = self.store.ledger_total(account.user_id, account.period_start)
        if ledger != account.current_tokens_used:
            # A request may have moved both since the account was read: look again before
            # calling it drift.
            fresh = self.store.get_account(account.user_id)
            if fresh is None:
                return
            account = fresh
            ledger = self.store.ledger_total(account.user_id, account.period_start)
        summary.reconciled += 1
        if ledger == account.current_tokens_used:
            return
        summary.drifted += 1
        if len(summary.drift) < MAX_DRIFT_REPORTED:
            summary.drift.append(
                {
                    "userId": account.user_id,
                    "counter": account.current_tokens_used,
                    "ledger": ledger,
                    "difference": account.current_tokens_used - ledger,
                }
            )
