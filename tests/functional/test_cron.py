"""The monthly-reset-cron function through ``main(context)``: SQLite store, Stripe faked at HTTP."""

from __future__ import annotations

import json
import re
import sqlite3
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import responses
from metering.account import Account, new_account
from metering.adapters.appwrite_store import AppwriteStore
from metering.ledger import LedgerStatus
from metering.maintenance import RECONCILIATION
from metering.plans import load_default_plans
from metering.ports import UsageStore
from metering.tokens import TokenUsage
from metering.turns import Turn, TurnStatus

from localruntime.context import RuntimeContext, RuntimeRequest, RuntimeResult, execute
from localruntime.sqlite_store import SQLiteStore
from tests.support.appwrite_emulator import emulated_appwrite
from tests.support.builders import charge, ledger_entry
from tests.support.stripe_events import (
    SECRET,
    FakeClock,
    at,
    hold,
    load_app,
    load_event,
    retarget,
    unload_app,
    use,
    webhook_context,
)

FUNCTION = "monthly-reset-cron"
STRIPE_API = "https://stripe.test"
PLANS = load_default_plans()
SUB_PERIOD = (at(2025, 1, 10), at(2025, 2, 10))
NEXT_PERIOD = (at(2025, 2, 10), at(2025, 3, 10))


def cron_context(trigger: str | None = "schedule") -> RuntimeContext:
    headers = {"x-appwrite-trigger": trigger} if trigger is not None else {}
    return RuntimeContext(RuntimeRequest(method="POST", path="/", headers=headers))


@dataclass
class Cron:
    db_path: str
    store: SQLiteStore
    clock: FakeClock

    def run(self, trigger: str | None = "schedule", **env: str) -> RuntimeResult:
        main = load_app(FUNCTION, self.environ(**env), clock=self.clock, store=self.store)
        try:
            return execute(main, cron_context(trigger))
        finally:
            unload_app(FUNCTION)

    def environ(self, **extra: str) -> dict[str, str]:
        return {
            "APPWRITE_FUNCTION_API_ENDPOINT": "http://127.0.0.1:9/v1",
            "APPWRITE_FUNCTION_PROJECT_ID": "cron-test",
            **extra,
        }

    def account(self, user_id: str) -> Account:
        account = self.store.get_account(user_id)
        assert account is not None
        return account


@pytest.fixture
def cron(tmp_path: Path) -> Cron:
    db_path = str(tmp_path / "metering.sqlite3")
    return Cron(db_path, SQLiteStore(db_path), FakeClock(at(2025, 2, 1, 1)))


def demo(cron: Cron, user_id: str, created: datetime, used: int = 0) -> Account:
    cron.store.create_account(new_account(user_id, PLANS.default, created))
    if used:
        charge(cron.store, user_id, f"{user_id}-req", used, created)
    return cron.account(user_id)


def subscribed(
    cron: Cron, user_id: str, period: tuple[datetime, datetime] = SUB_PERIOD, used: int = 0
) -> Account:
    account = replace(
        new_account(user_id, PLANS.get("starter"), period[0]),
        period_start=period[0],
        period_end=period[1],
    )
    cron.store.create_account(account)
    cron.store.update_account(
        user_id,
        {
            "plan": "starter",
            "status": "active",
            "max_tokens_per_month": 50_000,
            "stripe_customer_id": f"cus_{user_id}",
            "stripe_subscription_id": f"sub_{user_id}",
        },
    )
    if used:
        charge(cron.store, user_id, f"{user_id}-req", used, period[0])
    return cron.account(user_id)


def stripe_subscription(
    user_id: str, period: tuple[datetime, datetime], status: str = "active", shape: str = ""
) -> dict[str, Any]:
    """What GET /v1/subscriptions/{id} answers: the fixture's subscription object."""
    event = retarget(
        load_event(f"customer.subscription.updated{shape}"),
        customer_id=f"cus_{user_id}",
        subscription_id=f"sub_{user_id}",
        period=period,
        status=status,
    )
    subscription: dict[str, Any] = event["data"]["object"]
    return subscription


def mock_subscription(user_id: str, body: dict[str, Any]) -> responses.BaseResponse:
    return responses.get(f"{STRIPE_API}/v1/subscriptions/sub_{user_id}", json=body)


STRIPE = {"STRIPE_SECRET_KEY": "sk_test_cron", "STRIPE_API_BASE": STRIPE_API}


# -- trigger ---------------------------------------------------------------------------------


@pytest.mark.parametrize("trigger", ["http", "event", "", None])
def test_any_trigger_but_schedule_is_forbidden_and_changes_nothing(
    cron: Cron, trigger: str | None
) -> None:
    demo(cron, "u1", at(2025, 1, 5), used=20)

    result = cron.run(trigger)

    assert (result.status_code, result.json()["error"]["code"]) == (403, "forbidden")
    assert cron.account("u1").current_tokens_used == 20


# -- Demo month rollover ---------------------------------------------------------------------


def test_demo_accounts_reset_when_their_calendar_month_ended(cron: Cron) -> None:
    demo(cron, "jan", at(2025, 1, 5), used=25)
    demo(cron, "dec", at(2024, 12, 5), used=7)
    demo(cron, "feb", at(2025, 2, 1), used=3)

    result = cron.run()

    summary = result.json()
    assert (result.status_code, summary["demoResets"], summary["complete"]) == (200, 2, True)
    for user_id, lifetime in (("jan", 25), ("dec", 7)):
        account = cron.account(user_id)
        assert (account.current_tokens_used, account.lifetime_tokens_used) == (0, lifetime)
        assert account.period_start == at(2025, 2, 1)
    assert cron.account("feb").current_tokens_used == 3


def test_demo_reset_spends_topup_used_beyond_the_allowance(cron: Cron) -> None:
    demo(cron, "u1", at(2025, 1, 5))
    cron.store.add_topup("u1", 100)
    charge(cron.store, "u1", "r1", 90, at(2025, 1, 6))  # 30 from the plan, 60 from the top-up

    cron.run()

    account = cron.account("u1")
    assert (account.topup_tokens, account.current_tokens_used) == (40, 0)


def test_running_twice_resets_once(cron: Cron) -> None:
    demo(cron, "u1", at(2025, 1, 5), used=10)

    first, second = cron.run().json(), cron.run().json()

    assert (first["demoResets"], second["demoResets"]) == (1, 0)
    assert cron.account("u1").lifetime_tokens_used == 10


def test_pages_through_more_due_rows_than_one_page(cron: Cron) -> None:
    for index in range(11):
        demo(cron, f"u{index:02d}", at(2025, 1, 5), used=1)
    demo(cron, "current", at(2025, 2, 1), used=1)

    summary = cron.run(CRON_PAGE_SIZE="3").json()

    assert (summary["demoResets"], summary["complete"]) == (11, True)
    assert all(cron.account(f"u{i:02d}").period_start == at(2025, 2, 1) for i in range(11))


def test_stops_before_its_time_budget_and_the_next_run_resumes(cron: Cron) -> None:
    for index in range(12):
        demo(cron, f"u{index:02d}", at(2025, 1, 5), used=1)
    ticking = TickingClock(cron.clock.now, step=timedelta(seconds=1))
    cron.clock = ticking

    first = cron.run(CRON_PAGE_SIZE="4", CRON_TIME_BUDGET_SECONDS="6").json()
    runs = [first]
    while not runs[-1]["complete"] and len(runs) < 10:
        runs.append(cron.run(CRON_PAGE_SIZE="4", CRON_TIME_BUDGET_SECONDS="6").json())

    assert first["complete"] is False
    assert 0 < first["demoResets"] < 12
    assert sum(run["demoResets"] for run in runs) == 12
    assert all(cron.account(f"u{i:02d}").lifetime_tokens_used == 1 for i in range(12))


@responses.activate
def test_slow_stripe_lookups_do_not_starve_the_reclaim_of_crashed_reservations(
    cron: Cron,
) -> None:
    for index in range(10):
        subscribed(cron, f"s{index}", used=1)
    responses.get(
        re.compile(rf"{STRIPE_API}/v1/subscriptions/sub_s\d"),
        json=stripe_subscription("s0", SUB_PERIOD),
    )
    demo(cron, "u1", at(2025, 2, 1))
    cron.clock.now = SUB_PERIOD[1] + timedelta(hours=7)
    hold(cron.store, "u1", "crashed", 400, cron.clock.now - timedelta(minutes=20))
    cron.clock = TickingClock(cron.clock.now, step=timedelta(seconds=1))

    summary = cron.run(CRON_TIME_BUDGET_SECONDS="5", **STRIPE).json()

    assert summary["complete"] is False
    assert summary["subscriptions"]["checked"] < 10
    assert summary["reservations"] == {"reclaimed": 1, "tokensReleased": 400}
    assert cron.account("u1").current_tokens_used == 0


class TickingClock(FakeClock):
    """Time passes by ``step`` at every reading, as work does."""

    def __init__(self, now: datetime, step: timedelta) -> None:
        super().__init__(now)
        self.step = step

    def __call__(self) -> datetime:
        self.now += self.step
        return self.now


# -- missed renewals -------------------------------------------------------------------------


@pytest.mark.parametrize("shape", ["", ".legacy"])
@responses.activate
def test_missed_renewal_webhook_is_recovered_from_stripe(cron: Cron, shape: str) -> None:
    subscribed(cron, "u1", used=4_000)
    api = mock_subscription("u1", stripe_subscription("u1", NEXT_PERIOD, shape=shape))
    cron.clock.now = SUB_PERIOD[1] + timedelta(hours=7)

    summary = cron.run(**STRIPE).json()

    assert summary["subscriptions"]["reset"] == 1
    account = cron.account("u1")
    assert (account.period_start, account.period_end) == NEXT_PERIOD
    assert (account.current_tokens_used, account.lifetime_tokens_used) == (0, 4_000)
    assert api.calls[0].request.headers["Authorization"] == "Bearer sk_test_cron"


@pytest.mark.parametrize("status", ["past_due", "unpaid", "incomplete"])
@responses.activate
def test_no_reset_unless_the_moved_subscription_is_active(cron: Cron, status: str) -> None:
    subscribed(cron, "u1", used=4_000)
    mock_subscription("u1", stripe_subscription("u1", NEXT_PERIOD, status=status))
    cron.clock.now = SUB_PERIOD[1] + timedelta(hours=7)

    summary = cron.run(**STRIPE).json()

    assert (summary["subscriptions"]["reset"], summary["subscriptions"]["notActive"]) == (0, 1)
    assert summary["subscriptions"]["canceled"] == 0
    account = cron.account("u1")
    assert (account.current_tokens_used, account.plan, account.stripe_subscription_id) == (
        4_000,
        "starter",
        "sub_u1",
    )


@responses.activate
def test_no_stripe_lookup_within_the_grace_period(cron: Cron) -> None:
    subscribed(cron, "u1", used=10)
    api = mock_subscription("u1", stripe_subscription("u1", NEXT_PERIOD))
    cron.clock.now = SUB_PERIOD[1] + timedelta(hours=5)

    summary = cron.run(**STRIPE).json()

    assert (summary["subscriptions"]["checked"], api.call_count) == (0, 0)
    assert cron.account("u1").current_tokens_used == 10


@responses.activate
def test_period_not_moved_in_stripe_means_no_reset(cron: Cron) -> None:
    subscribed(cron, "u1", used=10)
    mock_subscription("u1", stripe_subscription("u1", SUB_PERIOD))
    cron.clock.now = SUB_PERIOD[1] + timedelta(hours=7)

    summary = cron.run(**STRIPE).json()

    assert summary["subscriptions"]["unchanged"] == 1
    assert cron.account("u1").current_tokens_used == 10


@responses.activate
def test_a_stripe_error_for_one_subscription_does_not_stop_the_others(cron: Cron) -> None:
    subscribed(cron, "gone", used=5)
    subscribed(cron, "ok", used=6)
    responses.get(
        f"{STRIPE_API}/v1/subscriptions/sub_gone",
        status=404,
        json={"error": {"type": "invalid_request_error", "code": "resource_missing"}},
    )
    mock_subscription("ok", stripe_subscription("ok", NEXT_PERIOD))
    cron.clock.now = SUB_PERIOD[1] + timedelta(hours=7)

    summary = cron.run(**STRIPE).json()

    assert (summary["subscriptions"]["errors"], summary["subscriptions"]["reset"]) == (1, 1)
    assert cron.account("gone").current_tokens_used == 5


@responses.activate
def test_second_run_after_the_recovery_asks_stripe_nothing(cron: Cron) -> None:
    subscribed(cron, "u1", used=10)
    api = mock_subscription("u1", stripe_subscription("u1", NEXT_PERIOD))
    cron.clock.now = SUB_PERIOD[1] + timedelta(hours=7)

    cron.run(**STRIPE)
    second = cron.run(**STRIPE).json()

    assert (second["subscriptions"]["checked"], api.call_count) == (0, 1)
    assert cron.account("u1").lifetime_tokens_used == 10


def test_without_a_stripe_key_lookups_are_skipped_and_the_summary_says_so(cron: Cron) -> None:
    subscribed(cron, "u1", used=10)
    cron.clock.now = SUB_PERIOD[1] + timedelta(days=2)

    summary = cron.run().json()

    assert summary["subscriptions"]["stripeLookups"].startswith("skipped")
    assert "STRIPE_SECRET_KEY" in summary["subscriptions"]["stripeLookups"]
    assert cron.account("u1").current_tokens_used == 10


# -- the webhook and the cron reset a period once --------------------------------------------


@pytest.fixture
def webhook(cron: Cron) -> Iterator[Callable[[dict[str, Any]], RuntimeResult]]:
    env = {"STRIPE_WEBHOOK_SECRET": SECRET, **cron.environ()}
    main = load_app("stripe-webhook", env, clock=cron.clock, store=cron.store)
    yield lambda event: execute(main, webhook_context(event))
    unload_app("stripe-webhook")


def renewal_event(user_id: str) -> dict[str, Any]:
    return retarget(
        load_event("invoice.paid"),
        customer_id=f"cus_{user_id}",
        subscription_id=f"sub_{user_id}",
        period=NEXT_PERIOD,
    )


@responses.activate
def test_cron_after_the_renewal_webhook_does_nothing(
    cron: Cron, webhook: Callable[[dict[str, Any]], RuntimeResult]
) -> None:
    subscribed(cron, "u1", used=300)
    api = mock_subscription("u1", stripe_subscription("u1", NEXT_PERIOD))
    assert webhook(renewal_event("u1")).status_code == 200
    charge(cron.store, "u1", "after", 20, NEXT_PERIOD[0])
    cron.clock.now = SUB_PERIOD[1] + timedelta(hours=7)

    summary = cron.run(**STRIPE).json()

    assert (summary["subscriptions"]["checked"], api.call_count) == (0, 0)
    account = cron.account("u1")
    assert (account.current_tokens_used, account.lifetime_tokens_used) == (20, 300)


@responses.activate
def test_renewal_webhook_after_the_cron_recovered_the_period_does_nothing(
    cron: Cron, webhook: Callable[[dict[str, Any]], RuntimeResult]
) -> None:
    subscribed(cron, "u1", used=300)
    mock_subscription("u1", stripe_subscription("u1", NEXT_PERIOD))
    cron.clock.now = SUB_PERIOD[1] + timedelta(hours=7)
    cron.run(**STRIPE)
    charge(cron.store, "u1", "after", 20, NEXT_PERIOD[0])

    result = webhook(renewal_event("u1"))

    assert result.status_code == 200
    assert '"event":"stripe.webhook.reset_not_forward"' in result.logs[-1]
    account = cron.account("u1")
    assert (account.current_tokens_used, account.lifetime_tokens_used) == (20, 300)


# -- the webhook and the cron cancel a subscription once -------------------------------------

ENDED_AT = SUB_PERIOD[1] + timedelta(minutes=3)


def ended_subscription(user_id: str, status: str = "canceled", shape: str = "") -> dict[str, Any]:
    """What GET /v1/subscriptions/{id} answers once the subscription has ended."""
    subscription = stripe_subscription(user_id, SUB_PERIOD, status=status, shape=shape)
    subscription.update(ended_at=int(ENDED_AT.timestamp()), canceled_at=int(ENDED_AT.timestamp()))
    return subscription


def deletion_event(user_id: str) -> dict[str, Any]:
    """The ``customer.subscription.deleted`` Stripe sends, dated when the subscription ended."""
    event = retarget(
        load_event("customer.subscription.deleted"),
        created=int(ENDED_AT.timestamp()),
        customer_id=f"cus_{user_id}",
        subscription_id=f"sub_{user_id}",
        period=SUB_PERIOD,
    )
    event["data"]["object"].update(ended_at=event["created"], canceled_at=event["created"])
    return event


def paid_with_addon_and_topup(cron: Cron, user_id: str) -> None:
    subscribed(cron, user_id, used=4_000)
    cron.store.update_account(user_id, {"addon_tokens": 10_000})
    cron.store.add_topup(user_id, 500)


@pytest.mark.parametrize(
    ("status", "shape"),
    [("canceled", ""), ("canceled", ".legacy"), ("incomplete_expired", "")],
)
@responses.activate
def test_missed_deletion_webhook_is_applied_from_stripe(
    cron: Cron, status: str, shape: str
) -> None:
    paid_with_addon_and_topup(cron, "u1")
    mock_subscription("u1", ended_subscription("u1", status, shape))
    cron.clock.now = SUB_PERIOD[1] + timedelta(hours=7)

    subscriptions = cron.run(**STRIPE).json()["subscriptions"]

    assert (subscriptions["canceled"], subscriptions["notActive"]) == (1, 0)
    account = cron.account("u1")
    default = PLANS.default
    assert (account.plan, account.max_tokens_per_month, account.addon_tokens) == (
        default.id,
        default.tokens_per_month,
        0,
    )
    assert (account.status, account.stripe_subscription_id) == ("canceled", None)
    assert (account.topup_tokens, account.stripe_customer_id) == (500, "cus_u1")
    assert account.stripe_updated_at == int(ENDED_AT.timestamp())
    # As the webhook's cancellation: the paid period is closed, a Demo period starts at its end.
    assert (account.period_start, account.period_end) == (ENDED_AT, at(2025, 3, 1))
    assert (account.current_tokens_used, account.lifetime_tokens_used) == (0, 4_000)


@responses.activate
def test_cancelled_paid_period_keeps_the_topup_through_the_next_demo_rollover(cron: Cron) -> None:
    paid_with_addon_and_topup(cron, "u1")  # 4,000 used of Starter's 50,000, a 500 top-up
    mock_subscription("u1", ended_subscription("u1"))
    cron.clock.now = SUB_PERIOD[1] + timedelta(hours=7)
    cron.run(**STRIPE)
    charge(cron.store, "u1", "demo-req", 10, cron.clock.now)

    cron.clock.now = at(2025, 3, 1, 1)
    summary = cron.run(**STRIPE).json()

    assert summary["demoResets"] == 1
    account = cron.account("u1")
    assert (account.period_start, account.topup_tokens) == (at(2025, 3, 1), 500)
    assert (account.current_tokens_used, account.lifetime_tokens_used) == (0, 4_010)


@responses.activate
def test_second_run_after_the_cancellation_asks_stripe_nothing_and_cancels_nothing(
    cron: Cron,
) -> None:
    paid_with_addon_and_topup(cron, "u1")
    api = mock_subscription("u1", ended_subscription("u1"))
    cron.clock.now = SUB_PERIOD[1] + timedelta(hours=7)

    cron.run(**STRIPE)
    cron.clock.advance(timedelta(hours=1))
    second = cron.run(**STRIPE).json()["subscriptions"]

    assert (second["checked"], second["canceled"], api.call_count) == (0, 0, 1)
    account = cron.account("u1")
    assert (account.plan, account.status, account.stripe_subscription_id) == (
        "demo",
        "canceled",
        None,
    )


@responses.activate
def test_ended_subscription_the_account_no_longer_follows_is_not_cancelled(
    cron: Cron, webhook: Callable[[dict[str, Any]], RuntimeResult]
) -> None:
    subscribed(cron, "u1", used=4_000)
    created = retarget(
        load_event("customer.subscription.created"),
        created=int(SUB_PERIOD[1].timestamp()) + 60,
        customer_id="cus_u1",
        subscription_id="sub_u1_new",
        period=NEXT_PERIOD,
        items=[("pro", 1)],
    )

    def replaced_during_the_lookup(request: Any) -> tuple[int, dict[str, str], str]:
        # The new subscription's webhook lands after the cron listed the row, before it decides.
        assert webhook(created).status_code == 200
        return 200, {}, json.dumps(ended_subscription("u1"))

    responses.add_callback(
        responses.GET, f"{STRIPE_API}/v1/subscriptions/sub_u1", replaced_during_the_lookup
    )
    cron.clock.now = SUB_PERIOD[1] + timedelta(hours=7)

    subscriptions = cron.run(**STRIPE).json()["subscriptions"]

    assert (subscriptions["checked"], subscriptions["canceled"]) == (1, 0)
    account = cron.account("u1")
    # Pro is pending until its invoice is paid (paid before granted); the account follows the
    # new subscription and is not cancelled.
    assert (account.pending_plan or account.plan, account.stripe_subscription_id) == (
        "pro",
        "sub_u1_new",
    )
    assert account.status == "active"


@responses.activate
def test_deletion_webhook_after_the_cron_cancelled_changes_nothing(
    cron: Cron, webhook: Callable[[dict[str, Any]], RuntimeResult]
) -> None:
    paid_with_addon_and_topup(cron, "u1")
    mock_subscription("u1", ended_subscription("u1"))
    cron.clock.now = SUB_PERIOD[1] + timedelta(hours=7)
    cron.run(**STRIPE)
    charge(cron.store, "u1", "demo-req", 20, cron.clock.now)  # a second reset would take it off
    repaired = cron.account("u1")

    result = webhook(deletion_event("u1"))

    assert result.status_code == 200
    assert cron.account("u1") == repaired
    assert (repaired.plan, repaired.stripe_subscription_id, repaired.topup_tokens) == (
        "demo",
        None,
        500,
    )
    assert (repaired.current_tokens_used, repaired.lifetime_tokens_used) == (20, 4_000)


@responses.activate
def test_deletion_webhook_during_the_crons_lookup_closes_the_period_once(
    cron: Cron, webhook: Callable[[dict[str, Any]], RuntimeResult]
) -> None:
    paid_with_addon_and_topup(cron, "u1")

    def deleted_during_the_lookup(request: Any) -> tuple[int, dict[str, str], str]:
        # The webhook cancels after the cron listed the row, before it decides.
        assert webhook(deletion_event("u1")).status_code == 200
        charge(cron.store, "u1", "demo-req", 20, ENDED_AT)
        return 200, {}, json.dumps(ended_subscription("u1"))

    responses.add_callback(
        responses.GET, f"{STRIPE_API}/v1/subscriptions/sub_u1", deleted_during_the_lookup
    )
    cron.clock.now = SUB_PERIOD[1] + timedelta(hours=7)

    cron.run(**STRIPE)

    account = cron.account("u1")
    assert (account.plan, account.period_start, account.topup_tokens) == ("demo", ENDED_AT, 500)
    assert (account.current_tokens_used, account.lifetime_tokens_used) == (20, 4_000)


# -- stale reservations and reconciliation ---------------------------------------------------


def test_reservations_of_crashed_chats_are_given_back(cron: Cron) -> None:
    now = cron.clock.now
    demo(cron, "u1", at(2025, 2, 1))
    cron.store.add_topup("u1", 1_000)
    hold(cron.store, "u1", "crashed", 400, now - timedelta(minutes=20))
    hold(cron.store, "u1", "running", 100, now - timedelta(minutes=5))

    summary = cron.run().json()

    assert summary["reservations"] == {"reclaimed": 1, "tokensReleased": 400}
    assert cron.account("u1").current_tokens_used == 100
    crashed = cron.store.get_ledger("crashed")
    assert crashed is not None
    assert crashed.status == LedgerStatus.RECLAIMED
    running = cron.store.get_ledger("running")
    assert running is not None
    assert running.status == LedgerStatus.RESERVED


def test_a_crashed_turn_keeps_its_settled_steps_and_gives_back_only_its_live_hold(
    cron: Cron,
) -> None:
    """A turn that died in its second step: the first stays charged, the hold goes back, the
    turn ends failed with the text it had."""
    now = cron.clock.now
    account = demo(cron, "u1", at(2025, 2, 1))
    cron.store.add_topup("u1", 1_000)
    started = now - timedelta(minutes=20)
    entry = ledger_entry(
        "u1",
        "crashed",
        period_start=account.period_start,
        created_at=started,
        updated_at=started,
        held_tokens=300,
    )
    turn = Turn("crashed", "u1", TurnStatus.PENDING, started, started)
    cron.store.open_request(entry, 1_030, turn)
    first_step = TokenUsage(input_tokens=100, output_tokens=20, steps=1)
    cron.store.settle(
        "u1",
        "crashed",
        300 - first_step.total_tokens,
        {"held_tokens": 0, "usage": first_step, "updated_at": started},
        {"status": TurnStatus.STREAMING, "content": "Let me look.", "updated_at": started},
    )
    cron.store.hold("u1", "crashed", 250, 1_030)

    summary = cron.run().json()

    assert summary["reservations"] == {"reclaimed": 1, "tokensReleased": 250}
    assert summary["reconciliation"]["drifted"] == 0
    assert cron.account("u1").current_tokens_used == 120
    crashed = cron.store.get_ledger("crashed")
    assert crashed is not None
    assert (crashed.status, crashed.usage, crashed.held_tokens) == (
        LedgerStatus.RECLAIMED,
        first_step,
        0,
    )
    ended = cron.store.get_turn("crashed")
    assert ended is not None
    assert (ended.status, ended.content) == (TurnStatus.FAILED, "Let me look.")


def test_a_dead_hold_carried_across_a_rollover_is_given_back_and_never_counted_as_used(
    cron: Cron,
) -> None:
    """A request that died holding 25 in January: the rollover carries the hold into February
    (a request in flight belongs to the new period), the reclaim gives it back there, and
    January's usage, moved to the lifetime total, has none of it."""
    demo(cron, "u1", at(2025, 1, 5))
    use(cron.store, "u1", "done", 40, at(2025, 1, 20))
    hold(cron.store, "u1", "crashed", 25, at(2025, 1, 31, 23))

    summary = cron.run().json()

    assert summary["demoResets"] == 1
    assert summary["reservations"] == {"reclaimed": 1, "tokensReleased": 25}
    account = cron.account("u1")
    assert (account.current_tokens_used, account.lifetime_tokens_used) == (0, 40)
    assert cron.store.ledger_total("u1", account.period_start) == 0
    assert summary["reconciliation"]["drifted"] == 0


def test_counter_drift_against_the_ledger_is_reported_and_logged(cron: Cron) -> None:
    now = cron.clock.now
    cron.store.create_account(
        replace(new_account("u1", PLANS.default, now), current_tokens_used=15)
    )
    cron.store.add_topup("u1", 100)
    hold(cron.store, "u1", "crashed", 10, now - timedelta(hours=1))

    result = cron.run()

    reconciliation = result.json()["reconciliation"]
    assert reconciliation["drifted"] == 1
    assert reconciliation["drift"] == [
        {"userId": "u1", "counter": 15, "ledger": 0, "difference": 15}
    ]
    assert any(json.loads(line)["event"] == "cron.drift" for line in result.logs)


def test_summary_is_one_log_line_with_every_count(cron: Cron) -> None:
    result = cron.run()

    summary = json.loads(result.logs[-1])
    assert summary["event"] == "cron.summary"
    assert summary["complete"] is True
    assert result.json() == {k: v for k, v in summary.items() if k != "event"}


# -- every user with usage, and passes that resume where the last run stopped ----------------


class RecordingStore:
    """The store, noting whose ledger each reconciliation read: the rows a pass covered."""

    def __init__(self, store: UsageStore) -> None:
        self.inner = store
        self.reconciled: list[str] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def ledger_total(self, user_id: str, period_start: datetime) -> int:
        self.reconciled.append(user_id)
        return self.inner.ledger_total(user_id, period_start)


@dataclass
class Backend:
    cron: Cron
    name: str
    delete_account: Callable[[str], None]  # the account's row, gone as an operator deletes it


@pytest.fixture(params=["sqlite", "appwrite"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    """The cron on the embedded store, or on an AppwriteStore over the TablesDB emulation."""
    clock = FakeClock(at(2025, 2, 1, 1))
    if request.param == "sqlite":
        db_path = str(tmp_path / "metering.sqlite3")

        def delete_sqlite(user_id: str) -> None:
            with sqlite3.connect(db_path) as connection:
                connection.execute("DELETE FROM subscriptions WHERE userId = ?", (user_id,))
            connection.close()

        yield Backend(Cron(db_path, SQLiteStore(db_path), clock), "sqlite", delete_sqlite)
        return
    with emulated_appwrite() as emulator:
        store = AppwriteStore.connect(emulator.store_settings(), emulator.api_key)

        def delete_appwrite(user_id: str) -> None:
            rows = emulator.table("subscriptions").rows
            del rows[next(key for key, row in rows.items() if row["userId"] == user_id)]

        yield Backend(Cron("", store, clock), "appwrite", delete_appwrite)  # type: ignore[arg-type]


def users_with_usage(cron: Cron, count: int) -> list[str]:
    """``count`` Demo users of the current month, each with usage its ledger accounts for."""
    user_ids = [f"u{index:02d}" for index in range(count)]
    for user_id in user_ids:
        demo(cron, user_id, at(2025, 2, 1), used=5)
    return user_ids


def test_reconciliation_covers_every_user_with_usage_not_only_those_the_run_touched(
    backend: Backend,
) -> None:
    """Six users with usage this period, none reset or reclaimed by the run: all six are
    reconciled and the one whose counter has no ledger behind it is reported."""
    cron = backend.cron
    for index in range(5):
        demo(cron, f"u{index}", at(2025, 2, 1), used=10 + index)
    cron.store.create_account(
        replace(new_account("drifted", PLANS.default, at(2025, 2, 1)), current_tokens_used=15)
    )
    demo(cron, "idle", at(2025, 2, 1))

    summary = cron.run().json()

    reconciliation = summary["reconciliation"]
    assert (reconciliation["users"], reconciliation["drifted"]) == (6, 1)
    assert reconciliation["drift"] == [
        {"userId": "drifted", "counter": 15, "ledger": 0, "difference": 15}
    ]
    assert (reconciliation["resumed"], reconciliation["finished"]) == (False, True)
    assert summary["complete"] is True


def test_reconciliation_out_of_time_resumes_where_it_stopped_and_covers_each_user_once_a_lap(
    backend: Backend,
) -> None:
    """Runs that each run out of time mid-pass save their place: the next one resumes there,
    together they reconcile every user exactly once, and the lap's end starts the next over."""
    cron = backend.cron
    user_ids = users_with_usage(cron, 10)
    recording = RecordingStore(cron.store)
    cron.store = recording  # type: ignore[assignment]
    cron.clock = TickingClock(cron.clock.now, step=timedelta(seconds=1))
    env = {"CRON_TIME_BUDGET_SECONDS": "6", "CRON_PAGE_SIZE": "4"}

    runs = [cron.run(**env).json()["reconciliation"]]
    while not runs[-1]["finished"] and len(runs) < 20:
        runs.append(cron.run(**env).json()["reconciliation"])

    assert len(runs) > 2
    assert [run["resumed"] for run in runs] == [False] + [True] * (len(runs) - 1)
    assert [run["finished"] for run in runs] == [False] * (len(runs) - 1) + [True]
    assert recording.reconciled == user_ids
    assert sum(run["users"] for run in runs) == len(user_ids)
    assert recording.inner.get_cursor(RECONCILIATION) is None

    recording.reconciled.clear()
    next_lap = cron.run(**env).json()["reconciliation"]
    assert next_lap["resumed"] is False
    assert recording.reconciled == user_ids[: len(recording.reconciled)]
    assert recording.reconciled


def test_a_saved_place_at_a_row_deleted_since_does_not_break_the_next_run(
    backend: Backend,
) -> None:
    """The account the saved cursor names is deleted between runs: the next run still ends its
    lap (on Appwrite, whose cursor is that row's id, by starting the lap over)."""
    cron = backend.cron
    user_ids = users_with_usage(cron, 6)
    recording = RecordingStore(cron.store)
    cron.store = recording  # type: ignore[assignment]
    cron.clock = TickingClock(cron.clock.now, step=timedelta(seconds=1))
    first = cron.run(CRON_TIME_BUDGET_SECONDS="6").json()["reconciliation"]
    assert first["finished"] is False
    stopped_after = recording.reconciled[-1]
    assert recording.inner.get_cursor(RECONCILIATION) is not None
    backend.delete_account(stopped_after)
    recording.reconciled.clear()

    second = cron.run(CRON_TIME_BUDGET_SECONDS="600").json()

    reconciliation = second["reconciliation"]
    assert (reconciliation["finished"], second["complete"]) == (True, True)
    rest = user_ids[user_ids.index(stopped_after) + 1 :]
    if backend.name == "appwrite":
        assert reconciliation["resumed"] is False
        assert recording.reconciled == [u for u in user_ids if u != stopped_after]
    else:
        assert reconciliation["resumed"] is True
        assert recording.reconciled == rest
    assert recording.inner.get_cursor(RECONCILIATION) is None


@responses.activate
def test_hundreds_of_past_due_subscriptions_do_not_starve_the_renewable_ones_behind_them(
    cron: Cron,
) -> None:
    """300 due subscriptions Stripe keeps answering `past_due` for, and three renewable ones
    after them: each run's look-ups start where the last stopped, so within a few runs every
    row is looked up exactly once, the three are reset, and reconciliation keeps its share of
    every run."""
    stuck = [f"p{index:03d}" for index in range(300)]
    renewable = ["r1", "r2", "r3"]
    for user_id in stuck + renewable:
        subscribed(cron, user_id, used=1)
    lookups: list[str] = []

    def answer(request: Any) -> tuple[int, dict[str, str], str]:
        user_id = urlsplit(request.url).path.rsplit("/sub_", 1)[1]
        lookups.append(user_id)
        status = "active" if user_id in renewable else "past_due"
        return 200, {}, json.dumps(stripe_subscription(user_id, NEXT_PERIOD, status=status))

    responses.add_callback(
        responses.GET, re.compile(rf"{STRIPE_API}/v1/subscriptions/sub_\w+"), callback=answer
    )
    cron.clock = TickingClock(SUB_PERIOD[1] + timedelta(hours=7), step=timedelta(seconds=1))
    env = {**STRIPE, "CRON_TIME_BUDGET_SECONDS": "100"}

    runs = [cron.run(**env).json()]
    while not runs[-1]["subscriptions"]["finished"] and len(runs) < 10:
        runs.append(cron.run(**env).json())

    assert 1 < len(runs) < 10
    assert lookups == stuck + renewable
    assert sum(run["subscriptions"]["notActive"] for run in runs) == 300
    assert sum(run["subscriptions"]["reset"] for run in runs) == 3
    assert all(cron.account(user_id).period_start == NEXT_PERIOD[0] for user_id in renewable)
    assert all(run["reconciliation"]["users"] > 0 for run in runs)
    assert [run["subscriptions"]["resumed"] for run in runs] == [False] + [True] * (len(runs) - 1)


def test_the_summary_says_whether_each_pass_resumed_and_finished(cron: Cron) -> None:
    """A run with nothing left over: both passes start at the first row and reach the end;
    without a Stripe key the look-ups did not run, so they did not finish either."""
    summary = cron.run().json()

    assert {key: summary["reconciliation"][key] for key in ("resumed", "finished")} == {
        "resumed": False,
        "finished": True,
    }
    assert {key: summary["subscriptions"][key] for key in ("resumed", "finished")} == {
        "resumed": False,
        "finished": False,
    }
    assert summary["complete"] is True
