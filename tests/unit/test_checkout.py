"""Pure tests of what billing sells: offers, purchases read from bodies, and the checkout or
portal request decided from the caller's account."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from metering.account import Account, new_account
from metering.checkout import (
    MAX_BODY_BYTES,
    Offer,
    checkout_request,
    offers,
    plan_change,
    portal_request,
    priced,
    read_purchase,
    return_urls,
    shelf,
    subscribed,
)
from metering.errors import Conflict, InvalidRequest, PayloadTooLarge, PlanError
from metering.plans import load_default_plans
from metering.ports import CheckoutMode, PortalRequest, Price

PLANS = load_default_plans()
NOW = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)
URLS = return_urls("https://app.example.test/chat")
STARTER = Offer("plan", "starter", "Starter", 50_000)
PRO = Offer("plan", "pro", "Pro", 200_000)
PACK = Offer("topup", "topup_25k", "25,000 tokens", 25_000)


def account(plan: str = "demo", **fields: Any) -> Account:
    return replace(new_account("alice", PLANS.get(plan), NOW), **fields)


def subscriber(plan: str = "starter", status: str = "active") -> Account:
    return account(
        plan, status=status, stripe_customer_id="cus_alice", stripe_subscription_id="sub_alice"
    )


def price(key: str, amount: int | None = 900, *, recurring: bool = True) -> Price:
    return Price(f"price_{key}", key, amount, "usd", recurring)


def prices() -> dict[str, Price]:
    return {
        "starter": price("starter", 900),
        "pro": price("pro", 2900),
        "business": price("business", 9900),
        "topup_25k": price("topup_25k", 500, recurring=False),
        "topup_100k": price("topup_100k", 1500, recurring=False),
    }


def body(document: object) -> bytes:
    return json.dumps(document).encode()


# -- offers and the shelf ----------------------------------------------------------------------


def test_offers_are_the_paid_plans_then_the_packs_never_demo() -> None:
    """Demo is given to everyone, not sold; the ids are the prices' lookup keys."""
    assert [(o.kind, o.id, o.tokens) for o in offers(PLANS)] == [
        ("plan", "starter", 50_000),
        ("plan", "pro", 200_000),
        ("plan", "business", 1_000_000),
        ("topup", "topup_25k", 25_000),
        ("topup", "topup_100k", 100_000),
    ]


def test_a_plan_is_a_subscription_and_a_pack_a_payment() -> None:
    """The offer's kind decides the Checkout mode."""
    assert (STARTER.mode, PACK.mode) == (CheckoutMode.SUBSCRIPTION, CheckoutMode.PAYMENT)


def test_the_shelf_prices_every_offer_and_names_the_callers_plan() -> None:
    """Every offer with a usable price is on the shelf, with Stripe's amount and currency."""
    found, problems = shelf(PLANS, prices(), account("pro"))

    assert problems == ()
    assert [(p.offer.id, p.amount, p.currency) for p in found.plans] == [
        ("starter", 900, "usd"),
        ("pro", 2900, "usd"),
        ("business", 9900, "usd"),
    ]
    assert [(p.offer.id, p.amount) for p in found.topups] == [
        ("topup_25k", 500),
        ("topup_100k", 1500),
    ]
    assert found.current_plan == "pro"


def test_a_caller_without_an_account_is_on_the_default_plan() -> None:
    """Nothing is created to answer: no account reads as Demo."""
    assert shelf(PLANS, prices(), None)[0].current_plan == "demo"


@pytest.mark.parametrize(
    ("key", "bad", "reason"),
    [
        pytest.param("pro", None, "no active price has lookup key 'pro'", id="missing"),
        pytest.param("pro", price("pro", None), "has no fixed amount", id="no-amount"),
        pytest.param("pro", price("pro", recurring=False), "must be recurring", id="one-time-plan"),
        pytest.param("topup_25k", price("topup_25k"), "must be one-time", id="recurring-pack"),
    ],
)
def test_an_offer_without_a_usable_price_leaves_the_shelf_with_its_reason(
    key: str, bad: Price | None, reason: str
) -> None:
    """It is not shown (it could not be sold) and the operator learns why."""
    listed = prices()
    if bad is None:
        del listed[key]
    else:
        listed[key] = bad

    found, problems = shelf(PLANS, listed, None)

    assert key not in [p.offer.id for p in (*found.plans, *found.topups)]
    assert len(problems) == 1
    assert reason in problems[0]


def test_priced_refuses_what_cannot_sell_the_offer() -> None:
    """A checkout never starts on a price missing or of the wrong kind."""
    with pytest.raises(PlanError, match="lookup key 'starter'"):
        priced(STARTER, None)
    with pytest.raises(PlanError, match="one-time"):
        priced(PACK, price("topup_25k"))


# -- reading a purchase ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("document", "expected"),
    [
        pytest.param({"plan": "starter"}, STARTER, id="plan"),
        pytest.param({"plan": " Pro "}, PRO, id="plan-any-case-and-spaces"),
        pytest.param({"topup": "topup_25k"}, PACK, id="pack"),
        pytest.param({"topup": "TOPUP_25K"}, PACK, id="pack-any-case"),
    ],
)
def test_a_body_names_one_offer_by_id(document: object, expected: Offer) -> None:
    """Ids are read as the catalogue normalises them."""
    assert read_purchase(body(document), PLANS) == expected


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param(b"", id="empty"),
        pytest.param(b"   ", id="blank"),
        pytest.param(b"{not json", id="bad-json"),
        pytest.param(b"\xff\xfe{}", id="not-utf8"),
        pytest.param(b"[]", id="array"),
        pytest.param(b'"starter"', id="string"),
        pytest.param(b"null", id="null"),
        pytest.param(b"{}", id="no-field"),
        pytest.param(body({"plan": "starter", "topup": "topup_25k"}), id="both"),
        pytest.param(body({"plan": "starter", "tokens": 10**9}), id="extra-tokens-field"),
        pytest.param(body({"topup": "topup_25k", "user_id": "bob"}), id="extra-user-field"),
        pytest.param(body({"plan": ""}), id="empty-id"),
        pytest.param(body({"plan": 7}), id="numeric-id"),
        pytest.param(body({"plan": ["starter"]}), id="list-id"),
        pytest.param(body({"plan": None}), id="null-id"),
        pytest.param(body({"plan": "platinum"}), id="unknown-plan"),
        pytest.param(body({"plan": "topup_25k"}), id="pack-as-plan"),
        pytest.param(body({"topup": "starter"}), id="plan-as-pack"),
        pytest.param(body({"topup": "topup_1m"}), id="unknown-pack"),
        pytest.param(body({"plan": "demo"}), id="demo"),
        pytest.param(b"[" * 2000 + b"]" * 2000, id="deeply-nested"),
    ],
)
def test_anything_else_is_invalid_request(raw: bytes) -> None:
    """Every malformed body is a 400 naming the problem, never a crash."""
    with pytest.raises(InvalidRequest):
        read_purchase(raw, PLANS)


def test_an_unknown_id_lists_the_known_ones() -> None:
    """The 400 says which ids exist, so the page (or its developer) can fix the call."""
    with pytest.raises(InvalidRequest) as refused:
        read_purchase(body({"topup": "topup_1m"}), PLANS)

    assert refused.value.details == [{"field": "topup", "allowed": ["topup_25k", "topup_100k"]}]


def test_demo_is_refused_as_free_not_as_unknown() -> None:
    """The message tells a Demo buyer why, rather than claiming the plan does not exist."""
    with pytest.raises(InvalidRequest, match="free"):
        read_purchase(body({"plan": "DEMO"}), PLANS)


def test_a_body_past_the_bound_is_too_large_before_parsing() -> None:
    """Oversized bodies are 413 however they are built."""
    raw = body({"plan": "starter", "pad": "x" * MAX_BODY_BYTES})

    with pytest.raises(PayloadTooLarge):
        read_purchase(raw, PLANS)


@given(st.binary(max_size=200) | st.text(max_size=200).map(str.encode))
def test_no_body_raises_anything_but_a_4xx_or_names_an_offer(raw: bytes) -> None:
    """Whatever arrives, the answer is an offer or a client error."""
    try:
        offer = read_purchase(raw, PLANS)
    except (InvalidRequest, PayloadTooLarge):
        return
    assert offer in offers(PLANS)


# -- the checkout request ----------------------------------------------------------------------


def test_a_plan_checkout_names_the_caller_everywhere_and_reuses_nothing_without_a_customer() -> (
    None
):
    """Mode subscription, the plan's price, the caller as reference and metadata user."""
    request = checkout_request("alice", account(), STARTER, price("starter"), URLS)

    assert request.mode is CheckoutMode.SUBSCRIPTION
    assert request.price_id == "price_starter"
    assert request.user_id == "alice"
    assert request.metadata == {"user_id": "alice"}
    assert request.customer_id is None
    assert request.success_url == "https://app.example.test/chat?checkout=success"
    assert request.cancel_url == "https://app.example.test/chat?checkout=cancel"


def test_a_pack_checkout_carries_the_catalogues_tokens() -> None:
    """metadata.topup_tokens and topup_id come from plans.json, the only source of a pack's size."""
    request = checkout_request(
        "alice", account(), PACK, price("topup_25k", 500, recurring=False), URLS
    )

    assert request.mode is CheckoutMode.PAYMENT
    assert request.metadata == {
        "user_id": "alice",
        "topup_id": "topup_25k",
        "topup_tokens": "25000",
    }


def test_the_linked_customer_is_reused() -> None:
    """A user with a Stripe customer buys as that customer, not as a new one."""
    linked = account(stripe_customer_id="cus_alice")

    request = checkout_request("alice", linked, PACK, price("topup_25k", recurring=False), URLS)

    assert request.customer_id == "cus_alice"


def test_a_checkout_without_a_usable_price_is_a_plan_error() -> None:
    """Stripe not holding the price is the operator's to fix: a 500 with the reason logged."""
    with pytest.raises(PlanError):
        checkout_request("alice", account(), STARTER, None, URLS)


# -- subscribers, plan changes and the portal --------------------------------------------------


@pytest.mark.parametrize(
    ("status", "expected"),
    [("active", True), ("trialing", True), ("past_due", True), ("canceled", False)],
)
def test_a_subscription_grants_in_the_granting_statuses_only(status: str, expected: bool) -> None:
    """The same statuses in which the webhook grants the plan."""
    assert subscribed(subscriber(status=status)) is expected


def test_a_seeded_plan_without_a_subscription_is_not_subscribed() -> None:
    """An account on Starter with no Stripe subscription (a seed) may still buy Starter."""
    assert not subscribed(account("starter"))
    assert plan_change(account("starter"), STARTER, URLS.page) is None


@pytest.mark.parametrize("status", ["active", "trialing", "past_due"])
def test_buying_the_plan_the_subscription_grants_is_a_conflict(status: str) -> None:
    """409: the subscriber already has it."""
    with pytest.raises(Conflict, match="already have the Starter plan"):
        plan_change(subscriber(status=status), STARTER, URLS.page)


def test_another_plan_for_a_subscriber_opens_the_portal_at_the_plan_change() -> None:
    """One subscription per user: the change happens on it, with Stripe's proration."""
    change = plan_change(subscriber(), PRO, URLS.page)

    assert change == PortalRequest("cus_alice", URLS.page, change_subscription="sub_alice")


def test_a_pack_for_a_subscriber_is_a_checkout() -> None:
    """Top-ups are bought beside a subscription."""
    assert plan_change(subscriber(), PACK, URLS.page) is None


def test_an_ended_subscription_buys_a_plan_through_checkout_again() -> None:
    """After a cancellation the plan is bought anew, even the one held before."""
    assert plan_change(subscriber(status="canceled"), STARTER, URLS.page) is None


def test_the_portal_opens_for_the_linked_customer() -> None:
    """The portal is the caller's own customer's, returning to the page."""
    assert portal_request(account(stripe_customer_id="cus_a"), URLS.page) == PortalRequest(
        "cus_a", URLS.page
    )


@pytest.mark.parametrize(
    "caller", [None, account()], ids=["no-account", "account-without-customer"]
)
def test_the_portal_without_a_customer_is_a_conflict(caller: Account | None) -> None:
    """409: there is nothing to manage before a first purchase."""
    with pytest.raises(Conflict):
        portal_request(caller, URLS.page)


# -- return URLs -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("page", "success"),
    [
        pytest.param("https://a.test/", "https://a.test/?checkout=success", id="plain"),
        pytest.param("http://127.0.0.1:8000", "http://127.0.0.1:8000?checkout=success", id="port"),
        pytest.param(
            "https://a.test/chat?lang=en",
            "https://a.test/chat?lang=en&checkout=success",
            id="query",
        ),
        pytest.param(
            "https://a.test/app#billing", "https://a.test/app?checkout=success#billing", id="frag"
        ),
    ],
)
def test_the_outcome_joins_the_pages_query(page: str, success: str) -> None:
    """``checkout=success`` is added to the query, before any fragment."""
    urls = return_urls(page)

    assert (urls.page, urls.success) == (page, success)
    assert urls.cancel == success.replace("success", "cancel")


@pytest.mark.parametrize(
    "page", ["", "/chat", "app.example.test/chat", "ftp://a.test/", "javascript:alert(1)"]
)
def test_a_return_url_must_be_an_absolute_http_url(page: str) -> None:
    """Anything else would send a paying user nowhere: refused at cold start."""
    with pytest.raises(ValueError, match="absolute"):
        return_urls(page)
