"""The billing function's Stripe adapter against Stripe's wire format, through the real
stripe-python: prices by lookup key (cached), the Checkout and portal session requests it sends,
and Stripe's errors as domain errors."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from urllib.parse import parse_qs, urlsplit

import pytest
import requests
import responses
from metering.adapters.stripe_billing import StripeCheckout, parse_price
from metering.errors import UpstreamError, UpstreamUnavailable
from metering.ports import CheckoutMode, CheckoutRequest, PortalRequest, Price

from tests.support.stripe_api import API, API_KEY, FakeStripe, decode_form, price_object

SUBSCRIPTION = CheckoutRequest(
    mode=CheckoutMode.SUBSCRIPTION,
    price_id="price_starter",
    user_id="alice",
    customer_id=None,
    metadata={"user_id": "alice"},
    success_url="https://app.example.test/?checkout=success",
    cancel_url="https://app.example.test/?checkout=cancel",
)
TOPUP = CheckoutRequest(
    mode=CheckoutMode.PAYMENT,
    price_id="price_topup_25k",
    user_id="alice",
    customer_id=None,
    metadata={"user_id": "alice", "topup_id": "topup_25k", "topup_tokens": "25000"},
    success_url="https://app.example.test/?checkout=success",
    cancel_url="https://app.example.test/?checkout=cancel",
)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def stripe_api() -> Iterator[FakeStripe]:
    fake = FakeStripe(customers={"cus_alice"})
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        fake.register(mock)
        yield fake


def adapter(clock: Clock | None = None, retries: int = 0) -> StripeCheckout:
    return StripeCheckout(API_KEY, API, retries=retries, clock=clock or Clock())


# -- prices ------------------------------------------------------------------------------------


def test_prices_are_found_by_lookup_key_in_one_request(stripe_api: FakeStripe) -> None:
    """One list call with every lookup key, active prices only; each answer in domain words."""
    stripe_api.prices["starter"]["id"] = "price_1Starter"

    found = adapter().find_prices(["starter", "topup_25k"])

    assert stripe_api.price_lists == [["starter", "topup_25k"]]
    assert found["starter"] == Price("price_1Starter", "starter", 900, "usd", recurring=True)
    assert found["topup_25k"].recurring is False
    assert found["topup_25k"].unit_amount == 500


@responses.activate
def test_the_price_list_request_is_stripes_form_encoding() -> None:
    """``lookup_keys[0]=...&active=true``, authenticated with the secret key."""
    responses.get(f"{API}/v1/prices", json={"object": "list", "data": [], "has_more": False})

    assert adapter().find_prices(["starter", "pro"]) == {}

    request = responses.calls[0].request
    query = parse_qs(urlsplit(str(request.url)).query)
    assert query == {"lookup_keys[0]": ["starter"], "lookup_keys[1]": ["pro"],
                     "active": ["true"], "limit": ["100"]}  # fmt: skip
    assert request.headers["Authorization"] == f"Bearer {API_KEY}"


def test_a_lookup_key_without_a_price_is_left_out(stripe_api: FakeStripe) -> None:
    """Keys Stripe has no active price for are absent, not errors."""
    del stripe_api.prices["business"]
    stripe_api.prices["pro"]["active"] = False

    assert set(adapter().find_prices(["starter", "pro", "business"])) == {"starter"}


def test_prices_are_cached_per_key_until_the_ttl_passes(stripe_api: FakeStripe) -> None:
    """A warm instance asks again only for keys it has not seen or whose entry expired."""
    clock = Clock()
    checkout = adapter(clock)

    checkout.find_prices(["starter", "pro"])
    checkout.find_prices(["starter", "pro"])
    checkout.find_prices(["pro", "topup_25k"])
    clock.now += 299
    checkout.find_prices(["starter"])
    clock.now += 2
    stripe_api.prices["starter"]["unit_amount"] = 1200
    again = checkout.find_prices(["starter"])

    assert stripe_api.price_lists == [["starter", "pro"], ["topup_25k"], ["starter"]]
    assert again["starter"].unit_amount == 1200


def test_a_missing_price_is_cached_too(stripe_api: FakeStripe) -> None:
    """Absence is remembered for the TTL: a missing price does not cost a call per page load."""
    del stripe_api.prices["pro"]
    checkout = adapter()

    checkout.find_prices(["pro"])
    checkout.find_prices(["pro"])

    assert stripe_api.price_lists == [["pro"]]


def test_more_keys_than_stripe_takes_go_in_batches(stripe_api: FakeStripe) -> None:
    """Stripe takes at most 10 lookup keys a request."""
    keys = [f"key_{n}" for n in range(12)]
    for key in keys:
        stripe_api.prices[key] = price_object(key, 100, recurring=False)

    found = adapter().find_prices(keys)

    assert [len(batch) for batch in stripe_api.price_lists] == [10, 2]
    assert set(found) == set(keys)


def test_a_failed_price_list_is_not_cached(stripe_api: FakeStripe) -> None:
    """After an outage the next call asks Stripe again."""
    stripe_api.failing_status = 503
    checkout = adapter()
    with pytest.raises(UpstreamUnavailable):
        checkout.find_prices(["starter"])
    stripe_api.failing_status = None

    assert checkout.find_prices(["starter"])["starter"].unit_amount == 900
    assert len(stripe_api.price_lists) == 2


@pytest.mark.parametrize(
    ("document", "expected"),
    [
        pytest.param(
            price_object("pro", 2900, recurring=True, price_id="price_p"),
            Price("price_p", "pro", 2900, "usd", True),
            id="recurring",
        ),
        pytest.param(
            price_object("pro", None, recurring=True, price_id="price_p"),
            Price("price_p", "pro", None, "usd", True),
            id="tiered-no-amount",
        ),
        pytest.param(
            {**price_object("pro", 5, recurring=False, price_id="price_p"), "unit_amount": "5"},
            Price("price_p", "pro", None, "usd", False),
            id="string-amount",
        ),
        pytest.param(
            {**price_object("pro", 5, recurring=False, price_id="price_p"), "unit_amount": -5},
            Price("price_p", "pro", None, "usd", False),
            id="negative-amount",
        ),
        pytest.param({"id": "price_p", "currency": "usd"}, None, id="no-lookup-key"),
        pytest.param(["price_p"], None, id="not-an-object"),
    ],
)
def test_parse_price_reads_only_what_it_can_trust(document: object, expected: Price | None) -> None:
    """An amount that is not a non-negative integer is no fixed amount; no id or key, no price."""
    assert parse_price(document) == expected


# -- Checkout Sessions -------------------------------------------------------------------------


def test_a_subscription_session_carries_the_user_on_session_and_subscription(
    stripe_api: FakeStripe,
) -> None:
    """What Stripe receives: mode, one unit of the price, the user as reference and metadata."""
    url = adapter().create_checkout(SUBSCRIPTION)

    assert url.startswith("https://checkout.stripe.com/c/pay/cs_test_")
    (sent,) = stripe_api.sessions
    assert sent == {
        "mode": "subscription",
        "line_items": [{"price": "price_starter", "quantity": "1"}],
        "client_reference_id": "alice",
        "metadata": {"user_id": "alice"},
        "subscription_data": {"metadata": {"user_id": "alice"}},
        "success_url": "https://app.example.test/?checkout=success",
        "cancel_url": "https://app.example.test/?checkout=cancel",
    }


def test_a_payment_session_carries_the_pack_on_session_and_payment(
    stripe_api: FakeStripe,
) -> None:
    """A pack's tokens ride on the session and its payment; a customer is always created."""
    adapter().create_checkout(TOPUP)

    (sent,) = stripe_api.sessions
    assert sent["mode"] == "payment"
    assert sent["metadata"] == {
        "user_id": "alice",
        "topup_id": "topup_25k",
        "topup_tokens": "25000",
    }
    assert sent["payment_intent_data"] == {"metadata": sent["metadata"]}
    assert sent["customer_creation"] == "always"
    assert "subscription_data" not in sent
    assert "customer" not in sent


@pytest.mark.parametrize("request_", [SUBSCRIPTION, TOPUP], ids=["subscription", "payment"])
def test_the_linked_customer_is_sent_and_no_new_one_asked_for(
    stripe_api: FakeStripe, request_: CheckoutRequest
) -> None:
    """Customer reuse: ``customer`` is the linked id, and ``customer_creation`` is not sent."""
    adapter().create_checkout(replace(request_, customer_id="cus_alice"))

    (sent,) = stripe_api.sessions
    assert sent["customer"] == "cus_alice"
    assert "customer_creation" not in sent


@responses.activate
def test_a_session_without_a_url_is_an_upstream_error() -> None:
    """An embedded-mode answer (no hosted URL) cannot be followed by the page."""
    responses.post(
        f"{API}/v1/checkout/sessions",
        json={"id": "cs_test_1", "object": "checkout.session", "url": None},
    )

    with pytest.raises(UpstreamError, match="without a URL"):
        adapter().create_checkout(SUBSCRIPTION)


# -- Customer Portal sessions ------------------------------------------------------------------


def test_a_portal_session_is_the_customers_returning_to_the_page(stripe_api: FakeStripe) -> None:
    """``customer`` and ``return_url``, nothing else: the portal's home page."""
    url = adapter().create_portal(PortalRequest("cus_alice", "https://app.example.test/"))

    assert url.startswith("https://billing.stripe.com/p/session/")
    assert stripe_api.portals == [
        {"customer": "cus_alice", "return_url": "https://app.example.test/"}
    ]


def test_a_plan_change_opens_the_portal_at_the_subscription_update(
    stripe_api: FakeStripe,
) -> None:
    """``flow_data`` of type subscription_update names the subscription and returns to the page."""
    adapter().create_portal(
        PortalRequest("cus_alice", "https://app.example.test/", change_subscription="sub_alice")
    )

    (sent,) = stripe_api.portals
    assert sent["flow_data"] == {
        "type": "subscription_update",
        "subscription_update": {"subscription": "sub_alice"},
        "after_completion": {
            "type": "redirect",
            "redirect": {"return_url": "https://app.example.test/"},
        },
    }


# -- errors ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "error"),
    [
        pytest.param(400, UpstreamError, id="400-refused"),
        pytest.param(401, UpstreamError, id="401-bad-key"),
        pytest.param(429, UpstreamUnavailable, id="429-rate-limited"),
        pytest.param(500, UpstreamUnavailable, id="500"),
        pytest.param(503, UpstreamUnavailable, id="503"),
    ],
)
def test_stripe_errors_become_domain_errors(
    stripe_api: FakeStripe, status: int, error: type[Exception]
) -> None:
    """No stripe exception leaves the adapter: refusals are 502, outages 503."""
    stripe_api.failing_status = status
    checkout = adapter()

    with pytest.raises(error):
        checkout.find_prices(["starter"])
    with pytest.raises(error):
        checkout.create_checkout(SUBSCRIPTION)
    with pytest.raises(error):
        checkout.create_portal(PortalRequest("cus_alice", "https://app.example.test/"))


def test_an_unknown_customer_is_stripes_refusal(stripe_api: FakeStripe) -> None:
    """A customer deleted in Stripe is refused there (400 resource_missing): an upstream error."""
    with pytest.raises(UpstreamError, match="400"):
        adapter().create_portal(PortalRequest("cus_gone", "https://app.example.test/"))


@responses.activate
def test_unreachable_stripe_is_unavailable() -> None:
    """A connection failure is retryable for the user, never a 500."""
    responses.post(f"{API}/v1/checkout/sessions", body=requests.ConnectionError("refused"))

    with pytest.raises(UpstreamUnavailable):
        adapter().create_checkout(SUBSCRIPTION)


@responses.activate
def test_a_retried_session_creation_keeps_its_idempotency_key() -> None:
    """With one retry, a lost answer does not create two sessions: both attempts share a key."""
    url = f"{API}/v1/checkout/sessions"
    responses.post(url, body=requests.ConnectionError("reset"))
    responses.post(url, json={"id": "cs_test_2", "object": "checkout.session",
                              "url": "https://checkout.stripe.com/c/pay/cs_test_2"})  # fmt: skip

    assert adapter(retries=1).create_checkout(SUBSCRIPTION).endswith("cs_test_2")

    keys = {call.request.headers["Idempotency-Key"] for call in responses.calls}
    assert len(responses.calls) == 2
    assert len(keys) == 1
    assert decode_form(responses.calls[1].request.body)["client_reference_id"] == "alice"
