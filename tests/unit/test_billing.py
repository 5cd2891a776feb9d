"""Pure tests of the billing domain: plans from metadata, and the decisions on each command."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from metering.account import Account, PeriodClose, close_period, new_account
from metering.adapters.stripe_events import parse_subscription
from metering.billing import (
    NO_PENDING,
    CancelSubscription,
    InvoicePaid,
    LinkCustomer,
    RecordPaymentFailed,
    RevokeTopup,
    SetSubscription,
    close_paid_period,
    covers,
    decide_cancel,
    decide_grant,
    decide_link,
    decide_payment_failed,
    decide_recovered_reset,
    decide_reset,
    decide_subscription,
    entitlement,
    metadata_count,
    products_to_fetch,
    recovered_cancel,
    relinks,
    tokens_to_revoke,
)
from metering.billing_service import revoke_claim_id, topup_claim_id
from metering.errors import PlanError
from metering.plans import load_default_plans
from metering.ports import Payment, PaymentKind, SubscriptionSnapshot

from tests.support.stripe_events import CUS, SUB, at, load_event, retarget

PLANS = load_default_plans()
NOW = at(2025, 9, 1, 2)
MAX = 100_000_000
STARTER_PRICE, PRO_PRICE, ADDON_PRICE = "price_starter", "price_pro", "price_addon"


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
    """Plan tokens: tokens_per_month, else the named plan or lookup key; add-ons by quantity."""
    granted = entitlement(subscription_with(*items), PLANS, {}, MAX)

    assert (granted.plan, granted.tokens_per_month, granted.addon_tokens) == expected


def test_product_metadata_is_used_when_the_price_says_nothing() -> None:
    """A price naming no plan falls back on its product's metadata, fetched."""
    snapshot = subscription_with({"metadata": {}, "lookup_key": None, "product": "prod_X"})

    assert products_to_fetch(snapshot, PLANS) == {"prod_X"}
    assert entitlement(snapshot, PLANS, {"prod_X": {"plan": "business"}}, MAX).plan == "business"


def test_expanded_product_with_metadata_needs_no_fetch() -> None:
    """An expanded product carrying plan keys is read in place."""
    product = {"id": "prod_X", "object": "product", "metadata": {"tokens_per_month": "999"}}
    snapshot = subscription_with({"metadata": {}, "lookup_key": None, "product": product})

    assert products_to_fetch(snapshot, PLANS) == frozenset()
    assert entitlement(snapshot, PLANS, {}, MAX).tokens_per_month == 999


@pytest.mark.parametrize(
    "metadata",
    [
        pytest.param({"plan": "platinum"}, id="unknown-plan"),
        pytest.param({"tokens_per_month": "lots"}, id="not-a-number"),
        pytest.param({"tokens_per_month": "-5"}, id="negative"),
        pytest.param({"tokens_per_month": "\u0661\u0660\u0660\u0660"}, id="arabic-indic-digits"),
        pytest.param({"tokens_per_month": "1_000"}, id="underscores"),
        pytest.param({"tokens_per_month": "+5"}, id="signed"),
        pytest.param({"tokens_per_month": str(2**64)}, id="past-2-to-the-64"),
        pytest.param({"tokens_per_month": str(MAX + 1)}, id="above-the-maximum"),
        pytest.param({"plan": "starter", "addon_tokens": "x"}, id="bad-addon"),
        pytest.param({"tokens_per_month": "5", "plan": "p" * 40}, id="plan-name-too-long"),
        pytest.param({}, id="nothing"),
    ],
)
def test_unusable_plan_metadata_is_a_plan_error(metadata: dict[str, str]) -> None:
    """Only plain ASCII counts up to the maximum and known or short plan names make a plan."""
    snapshot = subscription_with({"metadata": metadata, "lookup_key": None})

    with pytest.raises(PlanError):
        entitlement(snapshot, PLANS, {}, MAX)


def test_addon_quantity_past_the_maximum_is_a_plan_error() -> None:
    """Each add-on may be in bounds and their sum still absurd: the sum is bounded too."""
    snapshot = subscription_with(
        {"metadata": {"plan": "pro"}},
        {"metadata": {"addon_tokens": "1000000"}, "quantity": 101},
    )

    with pytest.raises(PlanError):
        entitlement(snapshot, PLANS, {}, MAX)


@pytest.mark.parametrize(("value", "expected"), [("0", 0), ("42", 42), (" 7 ", 7), (str(MAX), MAX)])
def test_metadata_counts_are_ascii_digits_up_to_the_maximum(value: str, expected: int) -> None:
    """A count is ASCII digits (spaces around allowed), at most the maximum."""
    assert metadata_count(value, "topup_tokens", MAX) == expected


def test_entitlement_names_the_prices_a_raise_must_be_paid_by() -> None:
    """The plan's item and each add-on item with its quantity are what an invoice must charge."""
    granted = entitlement(
        subscription_with(
            {"id": PRO_PRICE, "metadata": {"plan": "pro"}},
            {"id": ADDON_PRICE, "metadata": {"addon_tokens": "10000"}, "quantity": 3},
        ),
        PLANS,
        {},
        MAX,
    )

    assert (granted.plan_charges, granted.addon_charges) == (
        ((PRO_PRICE, 1),),
        ((ADDON_PRICE, 3),),
    )


# -- decisions ---------------------------------------------------------------------------------


def set_subscription(
    created: int,
    *,
    status: str = "active",
    plan: str = "pro",
    tokens: int = 200_000,
    addon: int = 5_000,
    subscription_id: str = SUB,
    customer_id: str = CUS,
) -> SetSubscription:
    return SetSubscription(
        subscription_id,
        customer_id,
        plan,
        tokens,
        addon,
        status,
        None,
        None,
        created,
        plan_charges=((f"price_{plan}", 1),),
        addon_charges=((ADDON_PRICE, addon // 1000),) if addon else (),
        latest_invoice="in_latest",
    )


def paid_invoice(
    charges: tuple[tuple[str, int], ...],
    reason: str = "subscription_update",
    subscription_id: str = SUB,
    invoice_id: str = "in_latest",
) -> InvoicePaid:
    return InvoicePaid(
        invoice_id, subscription_id, CUS, None, reason, 900, "usd", NOW, charges=charges
    )


def recorded(invoice: InvoicePaid) -> Payment:
    return Payment(
        invoice.invoice_id,
        PaymentKind.INVOICE,
        "u1",
        invoice.amount_paid,
        invoice.currency,
        invoice.paid_at,
        subscription_id=invoice.subscription_id,
        billing_reason=invoice.billing_reason,
        charges=invoice.charges,
    )


def test_newer_subscription_state_is_applied_and_remembered() -> None:
    """A newer lowering is applied as it is and its time kept to beat older ones."""
    business = account(plan="business", max_tokens_per_month=1_000_000, addon_tokens=9_000)
    patch = decide_subscription(replace(business, stripe_updated_at=100), set_subscription(101))

    assert patch["plan"] == "pro"
    assert (patch["max_tokens_per_month"], patch["addon_tokens"]) == (200_000, 5_000)
    assert patch["stripe_updated_at"] == 101


def test_older_subscription_state_loses() -> None:
    """An update older than the one applied changes nothing."""
    assert decide_subscription(account(stripe_updated_at=100), set_subscription(99)) == {}


def test_incomplete_subscription_is_recorded_without_granting_the_plan() -> None:
    """A subscription that is not paid up yet records its status and grants nothing."""
    patch = decide_subscription(account(), set_subscription(5, status="incomplete"))

    assert patch["status"] == "incomplete"
    assert "plan" not in patch
    assert "max_tokens_per_month" not in patch


def test_an_unpaid_second_subscription_does_not_take_the_account_from_the_paid_one() -> None:
    """An incomplete second subscription neither takes the account nor can later end it."""
    paid = account(stripe_updated_at=100)
    second = SetSubscription("sub_new", CUS, "pro", 200_000, 0, "incomplete", None, None, 101)

    assert decide_subscription(paid, second) == {}
    # Its expiry later is then not the account's subscription ending either.
    assert decide_cancel(paid, CancelSubscription("sub_new", CUS, 102), PLANS) == {}


def test_a_paid_second_subscription_takes_the_account_over() -> None:
    """A granting second subscription becomes the one the account follows."""
    second = set_subscription(101, plan="starter", tokens=50_000, addon=0, subscription_id="sub_2")

    patch = decide_subscription(account(stripe_updated_at=100), second)

    assert (patch["stripe_subscription_id"], patch["plan"]) == ("sub_2", "starter")


# -- paid before granted ---------------------------------------------------------------------


def test_a_raise_waits_for_its_invoice_and_grants_nothing_yet() -> None:
    """Starter to Pro: the account keeps Starter's allowance; Pro is pending its payment."""
    patch = decide_subscription(account(), set_subscription(10, addon=0))

    assert "max_tokens_per_month" not in patch
    assert "plan" not in patch
    assert (patch["pending_plan"], patch["pending_tokens_per_month"]) == ("pro", 200_000)
    assert patch["pending_charges"] == (("price_pro", 1),)


def test_a_lowering_applies_at_once_and_clears_what_was_pending() -> None:
    """Back down from a pending raise: the lower plan now, nothing left pending."""
    pending = account(
        plan="pro",
        max_tokens_per_month=200_000,
        pending_plan="business",
        pending_tokens_per_month=1_000_000,
        pending_charges=(("price_business", 1),),
    )

    patch = decide_subscription(
        pending, set_subscription(10, plan="starter", tokens=50_000, addon=0)
    )

    assert (patch["plan"], patch["max_tokens_per_month"]) == ("starter", 50_000)
    assert {key: patch[key] for key in NO_PENDING} == NO_PENDING  # type: ignore[literal-required]


def test_a_lower_plan_with_more_addons_lowers_now_and_waits_for_the_addons() -> None:
    """Each part of the allowance is judged alone: the lower plan applies, the add-ons wait."""
    pro = account(plan="pro", max_tokens_per_month=200_000)

    patch = decide_subscription(pro, set_subscription(10, plan="starter", tokens=50_000))

    assert (patch["plan"], patch["max_tokens_per_month"]) == ("starter", 50_000)
    assert "addon_tokens" not in patch
    assert (patch["pending_addon_tokens"], patch["pending_charges"]) == (5_000, ((ADDON_PRICE, 5),))


def test_a_raise_whose_latest_invoice_was_already_paid_is_granted() -> None:
    """The invoice charging Pro was paid before the update arrived: Pro at once."""
    paid = recorded(paid_invoice((("price_pro", 1),)))

    patch = decide_subscription(account(), set_subscription(10, addon=0), paid)

    assert (patch["plan"], patch["max_tokens_per_month"]) == ("pro", 200_000)
    assert patch["pending_plan"] is None


@pytest.mark.parametrize(
    "paid",
    [
        pytest.param(recorded(paid_invoice((("price_starter", 1),))), id="old-price-only"),
        pytest.param(
            recorded(paid_invoice((("price_pro", 1),), subscription_id="sub_2")),
            id="another-subscription",
        ),
        pytest.param(recorded(paid_invoice((("price_pro", 1),), reason="manual")), id="manual"),
    ],
)
def test_an_earlier_invoice_that_did_not_charge_the_raise_grants_nothing(paid: Payment) -> None:
    """The last cycle's invoice (prorations for next time) does not pay for a raise."""
    patch = decide_subscription(account(), set_subscription(10, addon=0), paid)

    assert "max_tokens_per_month" not in patch
    assert patch["pending_plan"] == "pro"


def test_more_addon_quantity_needs_an_invoice_charging_that_quantity() -> None:
    """An invoice charging two add-ons does not pay for five."""
    two = account(addon_tokens=2_000)
    five = set_subscription(10, plan="starter", tokens=50_000, addon=5_000)

    held = decide_subscription(two, five, recorded(paid_invoice(((ADDON_PRICE, 2),))))
    granted = decide_subscription(two, five, recorded(paid_invoice(((ADDON_PRICE, 5),))))

    assert (held.get("addon_tokens"), held["pending_addon_tokens"]) == (None, 5_000)
    assert granted["addon_tokens"] == 5_000


def pending_pro(**fields: Any) -> Account:
    return account(
        pending_plan="pro",
        pending_tokens_per_month=200_000,
        pending_addon_tokens=0,
        pending_charges=(("price_pro", 1),),
        **fields,
    )


@pytest.mark.parametrize(
    "reason", ["subscription_update", "subscription_cycle", "subscription_create"]
)
def test_the_paid_invoice_charging_a_pending_raise_grants_it(reason: str) -> None:
    """A prorated, renewal or first invoice that charged Pro grants Pro and clears it."""
    patch = decide_grant(pending_pro(), paid_invoice((("price_pro", 1),), reason))

    assert (patch["plan"], patch["max_tokens_per_month"], patch["addon_tokens"]) == (
        "pro",
        200_000,
        0,
    )
    assert patch["pending_plan"] is None


@pytest.mark.parametrize(
    "invoice",
    [
        pytest.param(paid_invoice((("price_starter", 1),)), id="charged-the-old-price"),
        pytest.param(paid_invoice((("price_pro", 1),), "manual"), id="manual-invoice"),
        pytest.param(paid_invoice((("price_pro", 1),), subscription_id="sub_2"), id="other-sub"),
        pytest.param(paid_invoice(()), id="charged-nothing"),
    ],
)
def test_a_paid_invoice_that_did_not_charge_the_raise_grants_nothing(invoice: InvoicePaid) -> None:
    """Only an invoice of the account's subscription charging the raised prices grants it."""
    assert decide_grant(pending_pro(), invoice) == {}


def test_nothing_pending_nothing_granted() -> None:
    """A paid invoice without a pending raise changes no allowance."""
    assert decide_grant(account(), paid_invoice((("price_pro", 1),))) == {}


@pytest.mark.parametrize(
    ("charged", "needed", "expected"),
    [
        ((), (), True),
        ((("a", 1),), (("a", 1),), True),
        ((("a", 1), ("a", 3)), (("a", 2),), True),
        ((("a", 1),), (("a", 2),), False),
        ((("a", 1),), (("a", 1), ("b", 1)), False),
    ],
)
def test_covers_needs_every_price_at_its_quantity(
    charged: tuple[tuple[str, int], ...], needed: tuple[tuple[str, int], ...], expected: bool
) -> None:
    """An invoice covers a raise when it charged each needed price at least that many times."""
    assert covers(charged, needed) is expected


# -- linking ---------------------------------------------------------------------------------


def test_an_account_a_granting_subscription_holds_is_never_relinked() -> None:
    """Another customer's checkout or subscription cannot take a paying account over."""
    paying = account(status="active")

    assert relinks(paying, "cus_attacker")
    assert decide_link(paying, LinkCustomer("u1", "cus_attacker", "sub_attacker"), 5) == {}
    attacker = set_subscription(
        paying.stripe_updated_at + 10, subscription_id="sub_attacker", customer_id="cus_attacker"
    )
    assert decide_subscription(paying, attacker) == {}


@pytest.mark.parametrize(
    "fields",
    [
        pytest.param({"status": "canceled", "stripe_subscription_id": None}, id="canceled"),
        pytest.param({"stripe_customer_id": None}, id="no-customer"),
        pytest.param({"status": "incomplete"}, id="not-granting"),
    ],
)
def test_an_account_without_a_granting_subscription_may_be_linked(fields: dict[str, Any]) -> None:
    """A Demo, unlinked or unpaid account takes the customer of its new checkout."""
    assert not relinks(account(**{"status": "active", **fields}), "cus_new")


def test_cancel_returns_to_the_default_plan_and_clears_the_subscription() -> None:
    """Cancelling drops the plan, add-ons, subscription and a pending raise."""
    patch = decide_cancel(pending_pro(addon_tokens=9), CancelSubscription(SUB, CUS, 10), PLANS)

    assert patch == {
        "plan": "demo",
        "status": "canceled",
        "max_tokens_per_month": 30,
        "addon_tokens": 0,
        "stripe_subscription_id": None,
        "stripe_updated_at": 10,
        **NO_PENDING,
    }


def test_cancellation_closes_the_paid_period_against_the_paid_allowance() -> None:
    """Cancelling ends the paid period with its usage counted against the paid allowance."""
    paid = account(current_tokens_used=4_000, topup_tokens=500)  # Starter: 50,000
    ended = at(2025, 8, 20, 6)

    reset = close_paid_period(paid, CancelSubscription(SUB, CUS, 10, ended), NOW)

    assert reset is not None
    assert close_period(paid, carried=0) == PeriodClose(used=4_000, topup_consumed=0)
    assert (reset.period_start, reset.period_end, reset.reset_at) == (ended, at(2025, 9, 1), NOW)


def test_cancellation_consumes_top_up_only_for_usage_beyond_the_paid_allowance() -> None:
    """Only usage past plan plus add-ons eats into the top-up when the period closes."""
    paid = account(current_tokens_used=62_000, addon_tokens=10_000, topup_tokens=5_000)

    reset = close_paid_period(paid, CancelSubscription(SUB, CUS, 10, at(2025, 8, 20)), NOW)

    assert reset is not None
    assert close_period(paid, carried=0) == PeriodClose(used=62_000, topup_consumed=2_000)


@pytest.mark.parametrize(
    "ended", [None, at(2025, 8, 1), at(2025, 7, 20)], ids=["unknown", "at-start", "before"]
)
def test_cancellation_without_an_end_after_the_period_start_closes_nothing(
    ended: datetime | None,
) -> None:
    """An end unknown or not after the period start closes no period."""
    paid = account(current_tokens_used=4_000)

    assert close_paid_period(paid, CancelSubscription(SUB, CUS, 10, ended), NOW) is None


def test_recovered_cancellation_is_dated_by_ended_at_and_none_while_running() -> None:
    """The cron's cancellation is dated when the subscription ended; none while it runs."""
    ended = at(2025, 8, 20, 6)
    snapshot = SubscriptionSnapshot(SUB, CUS, "canceled", None, None, (), ended)

    command = recovered_cancel(account(stripe_updated_at=7), snapshot)
    running = recovered_cancel(account(), replace(snapshot, status="active", ended_at=None))

    assert command == CancelSubscription(SUB, CUS, int(ended.timestamp()), ended)
    assert running is None


def test_cancel_of_another_subscription_changes_nothing() -> None:
    """A cancellation of a subscription the account does not follow changes nothing."""
    assert decide_cancel(account(), CancelSubscription("sub_old", CUS, 10), PLANS) == {}


def test_payment_failure_older_than_the_applied_state_changes_nothing() -> None:
    """A failed payment older than the applied state is ignored; a newer one marks past due."""
    current = account(stripe_updated_at=50)

    assert decide_payment_failed(current, RecordPaymentFailed(SUB, CUS, 49)) == {}
    assert decide_payment_failed(current, RecordPaymentFailed(SUB, CUS, 51)) == {
        "status": "past_due"
    }


def test_link_does_not_revive_a_subscription_deleted_later() -> None:
    """A late checkout does not bring back a subscription whose deletion was applied."""
    deleted = account(stripe_subscription_id=None, stripe_updated_at=200)

    patch = decide_link(deleted, LinkCustomer("u1", CUS, SUB), created=150)

    assert "stripe_subscription_id" not in patch


def renewal(start: datetime, end: datetime, subscription_id: str = SUB) -> InvoicePaid:
    return replace(
        paid_invoice((), "subscription_cycle", subscription_id),
        period_start=start,
        period_end=end,
    )


def test_reset_moves_forward_only() -> None:
    """A renewal resets to a later period only."""
    current = account(period_start=at(2025, 9, 1), current_tokens_used=70)

    forward = decide_reset(current, renewal(at(2025, 10, 1), at(2025, 11, 1)), NOW)
    same = decide_reset(current, renewal(at(2025, 9, 1), at(2025, 10, 1)), NOW)
    older = decide_reset(current, renewal(at(2025, 8, 1), at(2025, 9, 1)), NOW)

    assert forward is not None
    assert (forward.period_start, forward.period_end) == (at(2025, 10, 1), at(2025, 11, 1))
    assert (same, older) == (None, None)


def test_reset_of_another_subscription_is_refused() -> None:
    """A renewal of a subscription the account does not follow resets nothing."""
    command = renewal(at(2025, 10, 1), at(2025, 11, 1), "sub_other")

    assert decide_reset(account(), command, NOW) is None


def test_a_plan_change_invoice_does_not_reset() -> None:
    """Prorations pay for the rest of the period: no new period starts."""
    prorated = replace(
        renewal(at(2025, 10, 1), at(2025, 11, 1)), billing_reason="subscription_update"
    )

    assert decide_reset(account(), prorated, NOW) is None


# -- refunds -------------------------------------------------------------------------------------


def topup(tokens: int = 25_000, revoked: int = 0) -> Payment:
    return Payment(
        "cs_1", PaymentKind.TOPUP, "u1", 500, "usd", NOW, tokens=tokens, tokens_revoked=revoked
    )


@pytest.mark.parametrize(
    ("command", "expected"),
    [
        pytest.param(RevokeTopup("pi_1", 500, 500, "refund"), 25_000, id="full-refund"),
        pytest.param(RevokeTopup("pi_1", 0, 500, "dispute"), 25_000, id="lost-dispute"),
        pytest.param(RevokeTopup("pi_1", 100, 500, "refund"), 5_000, id="a-fifth"),
        pytest.param(RevokeTopup("pi_1", 1, 3, "refund"), 8_334, id="rounded-up"),
        pytest.param(RevokeTopup("pi_1", 7, 0, "refund"), 25_000, id="free-pack"),
    ],
)
def test_a_refund_takes_back_its_share_of_the_pack(command: RevokeTopup, expected: int) -> None:
    """A dispute or full refund takes the whole pack, a partial refund its share."""
    assert tokens_to_revoke(topup(), command) == expected


def test_revoke_claims_differ_by_payment_and_amount() -> None:
    """Each step of a refund is its own effect; the same step is one claim."""
    assert revoke_claim_id("pi_1", 5) == revoke_claim_id("pi_1", 5)
    assert (
        len({revoke_claim_id("pi_1", 5), revoke_claim_id("pi_1", 6), revoke_claim_id("pi_2", 5)})
        == 3
    )
    assert len(revoke_claim_id("pi_" + "x" * 200, 5)) <= 36


@pytest.mark.parametrize(
    ("status", "resets"),
    [("active", True), ("trialing", True), ("past_due", False), ("canceled", False)],
)
def test_recovered_reset_only_for_paid_up_subscriptions(status: str, resets: bool) -> None:
    """The safety net resets only active or trialing subscriptions."""
    obj = retarget(
        load_event("customer.subscription.updated"),
        subscription_id=SUB,
        period=(at(2025, 9, 1), at(2025, 10, 1)),
        status=status,
    )["data"]["object"]

    reset = decide_recovered_reset(account(), parse_subscription(obj), NOW)

    assert (reset is not None) == resets


def test_topup_claim_ids_are_short_safe_and_distinct() -> None:
    """Top-up claim keys fit a row id and differ per session."""
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
def test_subscription_updates_in_any_order_end_on_the_newest_and_grant_no_raise(
    updates: list[tuple[int, str]], order: Any
) -> None:
    """Whatever the order, the newest update is what is set or pending, and no update alone
    ever raises the allowance above where it started."""
    shuffled = list(updates)
    order.shuffle(shuffled)
    state = account()
    for created, plan in shuffled:
        tokens = PLANS.get(plan).tokens_per_month
        command = set_subscription(created, plan=plan, tokens=tokens, addon=0)
        patch = decide_subscription(state, command)
        state = replace(state, **patch)
        assert state.max_tokens_per_month <= 50_000

    assert (state.pending_plan or state.plan) == max(updates)[1]
