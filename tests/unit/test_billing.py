"""Pure tests of the billing domain: plans from metadata, and the decisions on each command."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from metering.account import Account, new_account
from metering.adapters.stripe_events import parse_subscription
from metering.billing import (
    CancelSubscription,
    LinkCustomer,
    RecordPaymentFailed,
    ResetPeriod,
    SetSubscription,
    close_paid_period,
    decide_cancel,
    decide_link,
    decide_payment_failed,
    decide_recovered_reset,
    decide_reset,
    decide_subscription,
    entitlement,
    products_to_fetch,
    recovered_cancel,
)
from metering.billing_service import topup_claim_id
from metering.errors import PlanError
from metering.plans import load_default_plans
from metering.ports import SubscriptionSnapshot

from tests.support.stripe_events import CUS, SUB, at, load_event, retarget

PLANS = load_default_plans()
NOW = at(2025, 9, 1, 2)


def account(**fields: Any) -> Account:
    base = new_account("u1", PLANS.get("starter"), at(2025, 8, 5))
    return replace(base, **{"stripe_subscription_id": SUB, "stripe_customer_id": CUS, **fields})


# -- plans from metadata ---------------------------------------------------------------------


def subscription_with(*items: dict[str, Any]) -> Any:
    obj = load_event("customer.subscription.updated")["data"]["object"]
    template = obj["items"]["data"][0]
    obj["items"]["data"] = [
        {**template, "price": {**template["price"], **item}, "quantity": item.get("quantity", 1)}
        for item in items
    ]
    return parse_subscription(obj)


@pytest.mark.parametrize(
    ("items", "expected"),
    [
        pytest.param(
            [{"metadata": {"tokens_per_month": "75000", "plan": "starter"}}],
            ("starter", 75_000, 0),
            id="tokens-beat-plan",
        ),
        pytest.param([{"metadata": {"plan": "Pro"}}], ("pro", 200_000, 0), id="plan-name"),
        pytest.param(
            [{"metadata": {}, "lookup_key": "business"}],
            ("business", 1_000_000, 0),
            id="lookup-key",
        ),
        pytest.param(
            [{"metadata": {"tokens_per_month": "123"}, "lookup_key": "custom_team"}],
            ("custom_team", 123, 0),
            id="custom-tokens",
        ),
        pytest.param(
            [
                {"metadata": {"plan": "pro"}},
                {"metadata": {"addon_tokens": "10000"}, "quantity": 3},
                {"metadata": {"addon_tokens": "500"}, "quantity": 1},
            ],
            ("pro", 200_000, 30_500),
            id="addons-times-quantity",
        ),
    ],
)
def test_entitlement_from_price_metadata(
    items: list[dict[str, Any]], expected: tuple[str, int, int]
) -> None:
    granted = entitlement(subscription_with(*items), PLANS, {})

    assert (granted.plan, granted.tokens_per_month, granted.addon_tokens) == expected


def test_product_metadata_is_used_when_the_price_says_nothing() -> None:
    snapshot = subscription_with({"metadata": {}, "lookup_key": None, "product": "prod_X"})

    assert products_to_fetch(snapshot, PLANS) == {"prod_X"}
    assert entitlement(snapshot, PLANS, {"prod_X": {"plan": "business"}}).plan == "business"


def test_expanded_product_with_metadata_needs_no_fetch() -> None:
    product = {"id": "prod_X", "object": "product", "metadata": {"tokens_per_month": "999"}}
    snapshot = subscription_with({"metadata": {}, "lookup_key": None, "product": product})

    assert products_to_fetch(snapshot, PLANS) == frozenset()
    assert entitlement(snapshot, PLANS, {}).tokens_per_month == 999


@pytest.mark.parametrize(
    "metadata",
    [
        pytest.param({"plan": "platinum"}, id="unknown-plan"),
        pytest.param({"tokens_per_month": "lots"}, id="not-a-number"),
        pytest.param({"tokens_per_month": "-5"}, id="negative"),
        pytest.param({}, id="nothing"),
    ],
)
def test_unusable_plan_metadata_is_a_plan_error(metadata: dict[str, str]) -> None:
    snapshot = subscription_with({"metadata": metadata, "lookup_key": None})

    with pytest.raises(PlanError):
        entitlement(snapshot, PLANS, {})


# -- decisions ---------------------------------------------------------------------------------


def set_subscription(created: int, status: str = "active", plan: str = "pro") -> SetSubscription:
    return SetSubscription(SUB, CUS, plan, 200_000, 5_000, status, None, None, created)


def test_newer_subscription_state_is_applied_and_remembered() -> None:
    patch = decide_subscription(account(stripe_updated_at=100), set_subscription(101))

    assert patch["plan"] == "pro"
    assert (patch["max_tokens_per_month"], patch["addon_tokens"]) == (200_000, 5_000)
    assert patch["stripe_updated_at"] == 101


def test_older_subscription_state_loses() -> None:
    assert decide_subscription(account(stripe_updated_at=100), set_subscription(99)) == {}


def test_incomplete_subscription_is_recorded_without_granting_the_plan() -> None:
    patch = decide_subscription(account(), set_subscription(5, status="incomplete"))

    assert patch["status"] == "incomplete"
    assert "plan" not in patch
    assert "max_tokens_per_month" not in patch


def test_an_unpaid_second_subscription_does_not_take_the_account_from_the_paid_one() -> None:
    paid = account(stripe_updated_at=100)
    second = SetSubscription("sub_new", CUS, "pro", 200_000, 0, "incomplete", None, None, 101)

    assert decide_subscription(paid, second) == {}
    # Its expiry later is then not the account's subscription ending either.
    assert decide_cancel(paid, CancelSubscription("sub_new", CUS, 102), PLANS) == {}


def test_a_paid_second_subscription_takes_the_account_over() -> None:
    second = SetSubscription("sub_new", CUS, "pro", 200_000, 0, "active", None, None, 101)

    patch = decide_subscription(account(stripe_updated_at=100), second)

    assert (patch["stripe_subscription_id"], patch["plan"]) == ("sub_new", "pro")


def test_cancel_returns_to_the_default_plan_and_clears_the_subscription() -> None:
    patch = decide_cancel(account(addon_tokens=9), CancelSubscription(SUB, CUS, 10), PLANS)

    assert patch == {
        "plan": "demo",
        "status": "canceled",
        "max_tokens_per_month": 30,
        "addon_tokens": 0,
        "stripe_subscription_id": None,
        "stripe_updated_at": 10,
    }


def test_cancellation_closes_the_paid_period_against_the_paid_allowance() -> None:
    paid = account(current_tokens_used=4_000, topup_tokens=500)  # Starter: 50,000
    ended = at(2025, 8, 20, 6)

    reset = close_paid_period(paid, CancelSubscription(SUB, CUS, 10, ended), NOW)

    assert reset is not None
    assert (reset.used, reset.topup_consumed) == (4_000, 0)
    assert (reset.period_start, reset.period_end, reset.reset_at) == (ended, at(2025, 9, 1), NOW)


def test_cancellation_consumes_top_up_only_for_usage_beyond_the_paid_allowance() -> None:
    paid = account(current_tokens_used=62_000, addon_tokens=10_000, topup_tokens=5_000)

    reset = close_paid_period(paid, CancelSubscription(SUB, CUS, 10, at(2025, 8, 20)), NOW)

    assert reset is not None
    assert (reset.used, reset.topup_consumed) == (62_000, 2_000)


@pytest.mark.parametrize(
    "ended", [None, at(2025, 8, 1), at(2025, 7, 20)], ids=["unknown", "at-start", "before"]
)
def test_cancellation_without_an_end_after_the_period_start_closes_nothing(
    ended: datetime | None,
) -> None:
    paid = account(current_tokens_used=4_000)

    assert close_paid_period(paid, CancelSubscription(SUB, CUS, 10, ended), NOW) is None


def test_recovered_cancellation_is_dated_by_ended_at_and_none_while_running() -> None:
    ended = at(2025, 8, 20, 6)
    snapshot = SubscriptionSnapshot(SUB, CUS, "canceled", None, None, (), ended)

    command = recovered_cancel(account(stripe_updated_at=7), snapshot)
    running = recovered_cancel(account(), replace(snapshot, status="active", ended_at=None))

    assert command == CancelSubscription(SUB, CUS, int(ended.timestamp()), ended)
    assert running is None


def test_cancel_of_another_subscription_changes_nothing() -> None:
    assert decide_cancel(account(), CancelSubscription("sub_old", CUS, 10), PLANS) == {}


def test_payment_failure_older_than_the_applied_state_changes_nothing() -> None:
    current = account(stripe_updated_at=50)

    assert decide_payment_failed(current, RecordPaymentFailed(SUB, CUS, 49)) == {}
    assert decide_payment_failed(current, RecordPaymentFailed(SUB, CUS, 51)) == {
        "status": "past_due"
    }


def test_link_does_not_revive_a_subscription_deleted_later() -> None:
    deleted = account(stripe_subscription_id=None, stripe_updated_at=200)

    patch = decide_link(deleted, LinkCustomer("u1", CUS, SUB), created=150)

    assert "stripe_subscription_id" not in patch


def test_reset_moves_forward_only() -> None:
    current = account(period_start=at(2025, 9, 1), current_tokens_used=70)

    forward = decide_reset(current, ResetPeriod(SUB, CUS, at(2025, 10, 1), at(2025, 11, 1)), NOW)
    same = decide_reset(current, ResetPeriod(SUB, CUS, at(2025, 9, 1), at(2025, 10, 1)), NOW)
    older = decide_reset(current, ResetPeriod(SUB, CUS, at(2025, 8, 1), at(2025, 9, 1)), NOW)

    assert forward is not None
    assert (forward.used, forward.period_start) == (70, at(2025, 10, 1))
    assert (same, older) == (None, None)


def test_reset_of_another_subscription_is_refused() -> None:
    command = ResetPeriod("sub_other", CUS, at(2025, 10, 1), at(2025, 11, 1))

    assert decide_reset(account(), command, NOW) is None


@pytest.mark.parametrize(
    ("status", "resets"),
    [("active", True), ("trialing", True), ("past_due", False), ("canceled", False)],
)
def test_recovered_reset_only_for_paid_up_subscriptions(status: str, resets: bool) -> None:
    obj = retarget(
        load_event("customer.subscription.updated"),
        subscription_id=SUB,
        period=(at(2025, 9, 1), at(2025, 10, 1)),
        status=status,
    )["data"]["object"]

    reset = decide_recovered_reset(account(), parse_subscription(obj), NOW)

    assert (reset is not None) == resets


def test_topup_claim_ids_are_short_safe_and_distinct() -> None:
    first, second = topup_claim_id("cs_test_" + "a" * 60), topup_claim_id("cs_test_" + "b" * 60)

    assert first != second
    assert len(first) <= 36
    assert first.replace("_", "").isalnum()


@settings(max_examples=60, deadline=None)
@given(
    updates=st.lists(
        st.tuples(st.integers(0, 10_000), st.sampled_from(["starter", "pro", "business"])),
        min_size=1,
        max_size=8,
        unique_by=lambda u: u[0],
    ),
    order=st.randoms(use_true_random=False),
)
def test_subscription_updates_in_any_order_end_on_the_newest(
    updates: list[tuple[int, str]], order: Any
) -> None:
    shuffled = list(updates)
    order.shuffle(shuffled)
    state = account()
    for created, plan in shuffled:
        patch = decide_subscription(state, set_subscription(created, plan=plan))
        state = replace(state, **patch)  # type: ignore[arg-type]

    assert state.plan == max(updates)[1]
