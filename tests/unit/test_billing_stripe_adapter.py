"""The Stripe adapter at its HTTP edge: real stripe-python parsing, errors as domain errors."""

from __future__ import annotations

import pytest
import requests
import responses
from metering.adapters.stripe_billing import StripeBilling, StripeWebhookVerifier
from metering.errors import InvalidRequest, UpstreamError, UpstreamUnavailable

from tests.support.stripe_events import SECRET, at, encode, load_event, retarget, sign

API = "https://stripe.test"
SUBSCRIPTION_URL = f"{API}/v1/subscriptions/sub_x"


def subscription_body(shape: str = "") -> dict[str, object]:
    event = retarget(
        load_event(f"customer.subscription.updated{shape}"),
        subscription_id="sub_x",
        customer_id="cus_x",
        period=(at(2025, 3, 1), at(2025, 4, 1)),
        status="trialing",
    )
    body: dict[str, object] = event["data"]["object"]
    return body


@pytest.mark.parametrize("shape", ["", ".legacy"])
@responses.activate
def test_get_subscription_answers_a_domain_snapshot(shape: str) -> None:
    responses.get(SUBSCRIPTION_URL, json=subscription_body(shape))

    snapshot = StripeBilling("sk_test_1", API).get_subscription("sub_x")

    assert (snapshot.id, snapshot.customer_id, snapshot.status) == ("sub_x", "cus_x", "trialing")
    assert (snapshot.period_start, snapshot.period_end) == (at(2025, 3, 1), at(2025, 4, 1))
    assert snapshot.items[0].price_metadata == {"plan": "starter"}


@pytest.mark.parametrize(
    ("status", "error_type", "expected"),
    [
        (404, "invalid_request_error", UpstreamError),
        (401, "invalid_request_error", UpstreamError),
        (429, "invalid_request_error", UpstreamUnavailable),
        (500, "api_error", UpstreamUnavailable),
    ],
)
@responses.activate
def test_stripe_errors_become_domain_errors(
    status: int, error_type: str, expected: type[Exception]
) -> None:
    responses.get(
        SUBSCRIPTION_URL, status=status, json={"error": {"type": error_type, "message": "no"}}
    )

    with pytest.raises(expected):
        StripeBilling("sk_test_1", API, retries=0).get_subscription("sub_x")


@responses.activate
def test_unreachable_stripe_is_unavailable() -> None:
    responses.get(SUBSCRIPTION_URL, body=requests.ConnectionError("refused"))

    with pytest.raises(UpstreamUnavailable):
        StripeBilling("sk_test_1", API, retries=0).get_subscription("sub_x")


def test_verifier_returns_the_event_as_a_plain_dict() -> None:
    body = encode(load_event("invoice.paid"))

    event = StripeWebhookVerifier(f" {SECRET} ").verify(body, sign(body))

    assert type(event) is dict
    assert event["type"] == "invoice.paid"


def test_verifier_message_names_the_problem_without_the_secret() -> None:
    body = encode(load_event("invoice.paid"))

    with pytest.raises(InvalidRequest) as raised:
        StripeWebhookVerifier(SECRET).verify(body, sign(body, "whsec_other"))

    assert "signature" in raised.value.message
    assert SECRET not in raised.value.message
