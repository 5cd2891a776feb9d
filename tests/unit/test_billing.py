"""Pure tests of the billing domain: Stripe documents of both API shapes -> commands -> changes."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from metering.account import Account, new_account
from metering.billing import (
    CancelSubscription,
    CreditTopup,
    EventHeader,
    Ignore,
    LinkCustomer,
    RecordPaymentFailed,
    ResetPeriod,
    SetSubscription,
    SubscriptionSnapshot,
    close_paid_period,
    decide_cancel,
    decide_link,
    decide_payment_failed,
    decide_recovered_reset,
    decide_reset,
    decide_subscription,
    entitlement,
    event_header,
    line_price,
    parse_command,
    parse_subscription,
    products_to_fetch,
    recovered_cancel,
    service_period,
)
from metering.billing_service import topup_claim_id
from metering.errors import InvalidRequest, PlanError
from metering.plans import load_default_plans

from tests.support.stripe_events import at, load_event, retarget

PLANS = load_default_plans()
SHAPES = [pytest.param("", id="api-2025"), pytest.param(".legacy", id="api-legacy")]
NOW = at(2025, 9, 1, 2)
SUB = "sub_1S2kWqLkdIwHu7ixq8Zr3TtY"
CUS = "cus_SkQ4vX9nTq2LmB"


def command_of(name: str, **changes: Any) -> Any:
    event = retarget(load_event(name), **changes) if changes else load_event(name)
    return parse_command(event_header(event), PLANS)


def account(**fields: Any) -> Account:
    base = new_account("u1", PLANS.get("starter"), at(2025, 8, 5))
    return replace(base, **{"stripe_subscription_id": SUB, "stripe_customer_id": CUS, **fields})


# -- parsing ---------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", SHAPES)
def test_checkout_for_a_subscription_links_customer_and_subscription(shape: str) -> None:
    command = command_of(f"checkout.session.completed.subscription{shape}")

    assert command == LinkCustomer("user_fixture01", CUS, SUB)


@pytest.mark.parametrize("shape", SHAPES)
def test_paid_topup_checkout_credits_the_session_metadata_tokens(shape: str) -> None:
    command = command_of(f"checkout.session.completed.topup{shape}")

    assert isinstance(command, CreditTopup)
    assert (command.user_id, command.tokens) == ("user_fixture01", 100_000)
    assert command.session_id.startswith("cs_test_")


def test_unpaid_topup_checkout_only_links_the_customer() -> None:
    event = load_event("checkout.session.completed.topup")
    event["data"]["object"]["payment_status"] = "unpaid"

    command = parse_command(event_header(event), PLANS)

    assert command == LinkCustomer("user_fixture01", CUS, None)


def test_checkout_without_client_reference_id_is_ignored() -> None:
    event = load_event("checkout.session.completed.subscription")
    event["data"]["object"]["client_reference_id"] = None

    assert isinstance(parse_command(event_header(event), PLANS), Ignore)


@pytest.mark.parametrize(
    "reference",
    ["u" * 37, "user ada", "user/ada", "_ada", "ada\n", "usér"],
)
def test_checkout_whose_client_reference_id_cannot_be_a_user_id_is_ignored(reference: str) -> None:
    for name in ("checkout.session.completed.subscription", "checkout.session.completed.topup"):
        event = load_event(name)
        event["data"]["object"]["client_reference_id"] = reference

        command = parse_command(event_header(event), PLANS)

        assert command == Ignore(event["type"], "client_reference_id is not a user id")


@pytest.mark.parametrize("kind", ["created", "updated"])
@pytest.mark.parametrize("shape", SHAPES)
def test_subscription_event_sets_plan_addons_status_and_period(shape: str, kind: str) -> None:
    command = command_of(f"customer.subscription.{kind}{shape}")

    assert command == SetSubscription(
        subscription_id=SUB,
        customer_id=CUS,
        plan="starter",
        tokens_per_month=50_000,
        addon_tokens=20_000,
        status="active",
        period_start=at(2025, 9, 1),
        period_end=at(2025, 10, 1),
        created=load_event(f"customer.subscription.{kind}{shape}")["created"],
    )


@pytest.mark.parametrize("shape", SHAPES)
def test_subscription_deleted_cancels(shape: str) -> None:
    command = command_of(f"customer.subscription.deleted{shape}")

    assert isinstance(command, CancelSubscription)
    assert (command.subscription_id, command.customer_id) == (SUB, CUS)


def test_cancellation_is_dated_by_the_subscription_end_else_by_the_event() -> None:
    event = load_event("customer.subscription.deleted")
    ended_at = event["data"]["object"]["ended_at"]
    without_end = retarget(event, created=ended_at + 90)
    without_end["data"]["object"]["ended_at"] = None

    dated = parse_command(event_header(retarget(event, created=ended_at + 5)), PLANS)
    undated = parse_command(event_header(without_end), PLANS)

    assert isinstance(dated, CancelSubscription)
    assert isinstance(undated, CancelSubscription)
    assert (dated.created, dated.at) == (ended_at + 5, datetime.fromtimestamp(ended_at, UTC))
    assert undated.at == datetime.fromtimestamp(ended_at + 90, UTC)


@pytest.mark.parametrize("status", ["canceled", "incomplete_expired"])
def test_subscription_updated_to_an_ended_status_cancels(status: str) -> None:
    command = command_of("customer.subscription.updated", status=status)

    assert isinstance(command, CancelSubscription)


@pytest.mark.parametrize("kind", ["paid", "payment_succeeded"])
@pytest.mark.parametrize("shape", SHAPES)
def test_paid_renewal_resets_to_the_line_period_not_the_invoice_period(
    shape: str, kind: str
) -> None:
    event = load_event(f"invoice.{kind}{shape}")
    invoice = event["data"]["object"]
    assert (invoice["period_start"], invoice["period_end"]) != (
        invoice["lines"]["data"][0]["period"]["start"],
        invoice["lines"]["data"][0]["period"]["end"],
    )

    command = parse_command(event_header(event), PLANS)

    assert command == ResetPeriod(SUB, CUS, at(2025, 9, 1), at(2025, 10, 1))


@pytest.mark.parametrize(
    "reason", ["subscription_update", "manual", "subscription_threshold", "upcoming", None]
)
def test_paid_invoice_for_other_reasons_is_ignored(reason: str | None) -> None:
    event = load_event("invoice.paid")
    event["data"]["object"]["billing_reason"] = reason

    assert isinstance(parse_command(event_header(event), PLANS), Ignore)


@pytest.mark.parametrize("shape", SHAPES)
def test_failed_payment_records_past_due(shape: str) -> None:
    event = load_event(f"invoice.payment_failed{shape}")

    command = parse_command(event_header(event), PLANS)

    assert command == RecordPaymentFailed(SUB, CUS, event["created"])


def test_unknown_type_is_ignored_by_name() -> None:
    assert command_of("customer.created") == Ignore("customer.created")


@pytest.mark.parametrize(
    "payload",
    [
        pytest.param([], id="list"),
        pytest.param({"id": "evt_1", "type": "x", "created": 1}, id="no-data"),
        pytest.param({"id": "evt_1", "type": "x", "created": 1, "data": {}}, id="no-object"),
        pytest.param(
            {"id": "evt_1", "type": "x", "created": "1", "data": {"object": {}}}, id="text-created"
        ),
        pytest.param({"type": "x", "created": 1, "data": {"object": {}}}, id="no-id"),
        pytest.param(
            {
                "id": "e",
                "object": "v2.core.event",
                "type": "x",
                "created": 1,
                "data": {"object": {}},
            },
            id="thin",
        ),
    ],
)
def test_documents_that_are_not_snapshot_events_are_invalid(payload: Any) -> None:
    with pytest.raises(InvalidRequest):
        event_header(payload)


def test_line_price_reads_both_shapes() -> None:
    new = load_event("invoice.paid")["data"]["object"]["lines"]["data"][0]
    old = load_event("invoice.paid.legacy")["data"]["object"]["lines"]["data"][0]

    assert line_price(new) == line_price(old) == "price_1S2kQeLkdIwHu7ixStarterM"


def test_service_period_skips_proration_lines() -> None:
    invoice = load_event("invoice.paid")["data"]["object"]
    proration = {
        **invoice["lines"]["data"][0],
        "period": {"start": 1758000000, "end": 1759276800},
        "parent": {
            "type": "subscription_item_details",
            "subscription_item_details": {"proration": True, "subscription": SUB},
        },
    }
    invoice["lines"]["data"].append(proration)

    assert service_period(invoice) == (at(2025, 9, 1), at(2025, 10, 1))


@pytest.mark.parametrize("first", [True, False])
def test_service_period_of_a_legacy_invoice_ignores_one_off_items_of_the_subscription(
    first: bool,
) -> None:
    invoice = load_event("invoice.paid.legacy")["data"]["object"]
    line = invoice["lines"]["data"][0]
    start = line["period"]["start"]
    # A setup fee billed with the subscription: its own line, one instant as its period.
    fee = {
        **line,
        "type": "invoiceitem",
        "invoice_item": "ii_setup_fee",
        "period": {"start": start, "end": start},
    }
    invoice["lines"]["data"] = [fee, line] if first else [line, fee]

    assert service_period(invoice) == (at(2025, 9, 1), at(2025, 10, 1))


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


@pytest.mark.parametrize("shape", SHAPES)
def test_subscription_period_comes_from_items_or_the_subscription(shape: str) -> None:
    obj = load_event(f"customer.subscription.updated{shape}")["data"]["object"]

    snapshot = parse_subscription(obj)

    assert (snapshot.period_start, snapshot.period_end) == (at(2025, 9, 1), at(2025, 10, 1))
    assert (snapshot.status, snapshot.customer_id) == ("active", CUS)


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


def test_header_carries_id_type_created_and_object_id() -> None:
    event = load_event("invoice.paid")

    header: EventHeader = event_header(event)

    assert (header.id, header.type, header.created) == (
        event["id"],
        "invoice.paid",
        event["created"],
    )
    assert header.object_id == event["data"]["object"]["id"]
