"""The scheduled safety net over the ports: Demo month rollovers, renewals and cancellations a
webhook missed, reservations of crashed chats, and counter-vs-ledger reconciliation, in a budget."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from . import settings as declared
from .account import Account, demo_period_due, plan_reset
from .billing import ENDED_STATUSES, decide_recovered_reset, recovered_cancel
from .billing_service import cancel_subscription
from .config import EnvReader
from .errors import Conflict, MeteringError
from .ledger import LedgerEntry, LedgerPatch, LedgerStatus
from .plans import PlanCatalog, load_default_plans
from .ports import AccountQuery, BillingProvider, Page, SubscriptionSnapshot, UsageStore
from .timeutil import month_start
from .turns import TurnPatch, TurnStatus

MAX_DRIFT_REPORTED = 50


@dataclass(frozen=True)
class MaintenanceSettings:
    grace: timedelta = timedelta(hours=6)
    reservation_ttl: timedelta = timedelta(minutes=15)
    page_size: int = 100
    time_budget: timedelta = timedelta(seconds=240)

    @classmethod
    def read(cls, env: EnvReader) -> MaintenanceSettings:
        return cls(
            grace=timedelta(seconds=env.read(declared.CRON_GRACE_SECONDS)),
            reservation_ttl=timedelta(seconds=env.read(declared.CRON_RESERVATION_TTL_SECONDS)),
            page_size=env.read(declared.CRON_PAGE_SIZE),
            time_budget=timedelta(seconds=env.read(declared.CRON_TIME_BUDGET_SECONDS)),
        )


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
    reservations_reclaimed: int = 0
    tokens_released: int = 0
    reconciled: int = 0
    drift: list[dict[str, Any]] = field(default_factory=list)
    drifted: int = 0
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
            },
            "reservations": {
                "reclaimed": self.reservations_reclaimed,
                "tokensReleased": self.tokens_released,
            },
            "reconciliation": {
                "users": self.reconciled,
                "drifted": self.drifted,
                "drift": self.drift,
            },
        }


class _OutOfTime(Exception):
    """Raised between rows when the time budget is spent; the next run continues."""


class Maintenance:
    """One run of the safety net. Every reset goes through the store's forward-only
    ``apply_reset``, so a period the webhook already reset is never reset again; a cancellation
    is the webhook's own decision, so a late deletion event finds nothing left to change."""

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
        self._deadline = now + self.settings.time_budget
        summary = Summary()
        if self.billing is None:
            summary.stripe_lookups = "skipped: STRIPE_SECRET_KEY is not set"
        try:
            self._demo_rollovers(now, summary)
            # Store-only steps first: slow Stripe look-ups must not starve the reclaim.
            self._reclaim_reservations(now, summary)
            if self.billing is not None:
                self._missed_renewals(now, self.billing, summary)
            self._reconcile(summary)
        except _OutOfTime:
            summary.complete = False
        return summary

    def _check_time(self) -> None:
        if self.clock() >= self._deadline:
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

    def _accounts(self, query: AccountQuery) -> Iterator[Account]:
        size = self.settings.page_size
        yield from self._pages(lambda cursor: self.store.list_accounts(query, size, cursor))

    def _demo_rollovers(self, now: datetime, summary: Summary) -> None:
        query = AccountQuery(subscribed=False, period_start_before=month_start(now))
        for account in self._accounts(query):
            due = demo_period_due(account, now)
            reset = plan_reset(account, due[0], due[1], now) if due else None
            if reset and self.store.apply_reset(reset, account.period_start) is not None:
                summary.demo_resets += 1
                self._touched[account.user_id] = None

    def _missed_renewals(self, now: datetime, billing: BillingProvider, summary: Summary) -> None:
        query = AccountQuery(subscribed=True, period_end_before=now - self.settings.grace)
        for account in self._accounts(query):
            summary.subscriptions_checked += 1
            try:
                snapshot = billing.get_subscription(account.stripe_subscription_id or "")
            except MeteringError:
                # One unreachable subscription must not stop the others; the next run retries.
                summary.stripe_errors += 1
                continue
            if snapshot.status in ENDED_STATUSES:
                if self._cancel(account.user_id, snapshot, now):
                    summary.subscriptions_canceled += 1
                else:
                    summary.subscriptions_unchanged += 1
                continue
            reset = decide_recovered_reset(account, snapshot, now)
            if reset is None:
                if snapshot.status not in ("active", "trialing"):
                    summary.subscriptions_not_active += 1
                else:
                    summary.subscriptions_unchanged += 1
                continue
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
        for user_id in list(self._touched):
            self._check_time()
            account = self.store.get_account(user_id)
            if account is None:
                continue
            ledger = self.store.ledger_total(user_id, account.period_start)
            summary.reconciled += 1
            if ledger != account.current_tokens_used:
                summary.drifted += 1
                if len(summary.drift) < MAX_DRIFT_REPORTED:
                    summary.drift.append(
                        {
                            "userId": user_id,
                            "counter": account.current_tokens_used,
                            "ledger": ledger,
                            "difference": account.current_tokens_used - ledger,
                        }
                    )
