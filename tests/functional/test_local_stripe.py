"""The local Stripe of ``make dev`` over HTTP: the real Stripe SDK against its API, the test
checkout and portal pages, and the signed events they deliver, in Stripe's order, to the real
stripe-webhook function, which changes the user's plan and tokens."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

import pytest
import requests
import stripe
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from metering.plans import DATA_DIR, DEFAULT_PLANS_FILE, parse_plans
from stripe.params.checkout import SessionCreateParams

from localruntime.__main__ import banner
from localruntime.server import Runtime
from localruntime.stripe_local import LocalStripe, parse_params
from localruntime.wire import Request
from tests.support.runtime import (
    AppwriteHttp,
    checkout_session,
    local_stripe,
    project_functions,
    running,
)

SUBSCRIPTION_EVENTS = [
    "checkout.session.completed",
    "customer.subscription.created",
    "invoice.paid",
    "invoice.payment_succeeded",
]


@pytest.fixture(scope="module")
def runtime(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Runtime]:
    root = tmp_path_factory.mktemp("local-stripe")
    with running(root / "data", functions=project_functions(), warm=True) as started:
        yield started


@pytest.fixture
def client(runtime: Runtime) -> stripe.StripeClient:
    return local_stripe(runtime)


def user(runtime: Runtime) -> tuple[AppwriteHttp, str]:
    http = AppwriteHttp(runtime.base_url)
    return http, http.sign_up_and_log_in(f"buyer-{uuid.uuid4().hex[:10]}@example.test")


def usage(http: AppwriteHttp) -> dict[str, Any]:
    stats: dict[str, Any] = http.execution("usage", method="GET").body
    return stats


def press(url: str, body: dict[str, str] | None = None) -> requests.Response:
    """A plain HTML form post, as a browser without JavaScript sends it."""
    return requests.post(url, data=body or {}, allow_redirects=False, timeout=60)


def delivered(runtime: Runtime, *object_ids: str) -> list[dict[str, Any]]:
    """The events the webhook function was sent about these objects (or their customer), in
    the order it got them; each one's signature is checked with the webhook secret."""
    secret = runtime.settings.stripe_webhook_secret.value
    events = []
    for record in runtime.executions.of_function("stripe-webhook"):
        event = json.loads(record.invocation.body)
        obj = event["data"]["object"]
        if not {obj.get("id"), obj.get("customer")} & set(object_ids):
            continue
        headers = {key.lower(): value for key, value in record.invocation.headers}
        assert stripe.WebhookSignature.verify_header(
            record.invocation.body.decode("utf-8"), headers["stripe-signature"], secret, 300
        )
        assert record.outcome is not None
        assert record.outcome.status_code == 200, record.outcome.body
        events.append(event)
    return events


def subscribed(runtime: Runtime, plan: str = "starter") -> tuple[AppwriteHttp, str, Any]:
    """A new user who paid for ``plan`` on the checkout page, and the session."""
    http, user_id = user(runtime)
    session = checkout_session(runtime, user_id, plan=plan)
    assert press(session.url + "/pay").status_code == 303
    paid = local_stripe(runtime).v1.checkout.sessions.retrieve(session.id)
    return http, user_id, paid


# -- the API through the SDK ---------------------------------------------------------------------


def test_prices_of_every_plan_and_pack_are_found_by_lookup_key(
    client: stripe.StripeClient,
) -> None:
    """Each plan but the free default is a monthly price keyed by its id with its allowance in
    the metadata; each pack a one-time price with its tokens; products expand."""
    keys = ["starter", "pro", "business", "topup_25k", "topup_100k", "demo"]
    found = client.v1.prices.list(
        params={"lookup_keys": keys, "active": True, "expand": ["data.product"]}
    )
    prices = {price.lookup_key: price for price in found.data}
    assert set(prices) == set(keys) - {"demo"}
    for plan, amount, tokens in (("starter", 900, 50_000), ("pro", 2900, 200_000),
                                 ("business", 9900, 1_000_000)):  # fmt: skip
        price = prices[plan]
        assert (price.type, price.unit_amount, price.currency) == ("recurring", amount, "usd")
        assert (price.recurring.interval, price.recurring.interval_count) == ("month", 1)
        assert price.metadata.to_dict() == {"plan": plan, "tokens_per_month": str(tokens)}
        assert price.product.name == plan.title()
    for pack, amount, tokens in (("topup_25k", 500, 25_000), ("topup_100k", 1500, 100_000)):
        price = prices[pack]
        assert (price.type, price.unit_amount, price.recurring) == ("one_time", amount, None)
        assert price.metadata.to_dict() == {"topup_tokens": str(tokens)}
    product = client.v1.products.retrieve(prices["pro"].product.id)
    assert (product.object, product.default_price) == ("product", prices["pro"].id)


def test_the_wire_format_is_stripes(runtime: Runtime) -> None:
    """Lists, objects and errors have Stripe's envelopes, with Stripe's bracketed form keys."""
    base = runtime.stripe_base_url + "/v1"
    auth = {"Authorization": "Bearer sk_test_local"}
    listed = requests.get(
        f"{base}/prices?lookup_keys[]=starter&active=true&expand[]=data.product",
        headers=auth,
        timeout=30,
    )
    assert listed.status_code == 200
    assert listed.headers["Content-Type"] == "application/json"
    assert listed.headers["Request-Id"].startswith("req_")
    body = listed.json()
    assert body == {"object": "list", "data": body["data"], "has_more": False, "url": "/v1/prices"}
    (price,) = body["data"]
    assert (price["object"], price["livemode"], price["product"]["object"]) == (
        "price",
        False,
        "product",
    )
    assert isinstance(price["created"], int)
    assert price["id"].startswith("price_")
    missing = requests.get(f"{base}/subscriptions/sub_missing", headers=auth, timeout=30)
    assert missing.status_code == 404
    assert missing.json()["error"] == {
        "type": "invalid_request_error",
        "message": "No such subscription: 'sub_missing'",
        "code": "resource_missing",
        "doc_url": "https://stripe.com/docs/error-codes/resource-missing",
        "param": "id",
    }


Call = Callable[[stripe.StripeClient], object]


def _session(**params: Any) -> Call:
    """Create a session from a valid subscription session with ``params`` changed (None: left
    out)."""
    base = {
        "mode": "subscription",
        "success_url": "http://x.test/",
        "line_items": [{"price": "price_local_starter", "quantity": 1}],
    }
    merged = {k: v for k, v in {**base, **params}.items() if v is not None}
    return lambda c: c.v1.checkout.sessions.create(params=cast("SessionCreateParams", merged))


def _one(price: str) -> list[dict[str, Any]]:
    return [{"price": price, "quantity": 1}]


BAD_CALLS: list[tuple[str, Call, int, str]] = [
    ("unknown price", _session(line_items=_one("price_nope")), 400, "line_items[0][price]"),
    ("no mode", _session(mode=None), 400, "mode"),
    ("no line items", _session(line_items=None), 400, "line_items"),
    ("recurring price in payment mode", _session(mode="payment"), 400, "line_items[0][price]"),
    (
        "pack in subscription mode",
        _session(line_items=_one("price_local_topup_25k")),
        400,
        "line_items[0][price]",
    ),
    (
        "no quantity",
        _session(line_items=[{"price": "price_local_starter"}]),
        400,
        "line_items[0][quantity]",
    ),
    ("bad success url", _session(success_url="javascript:alert(1)"), 400, "success_url"),
    ("unknown customer", _session(customer="cus_nope"), 400, "customer"),
    (
        "subscription data in payment mode",
        _session(
            mode="payment",
            line_items=_one("price_local_topup_25k"),
            subscription_data={"metadata": {"user_id": "u"}},
        ),
        400,
        "subscription_data",
    ),
    (
        "portal of an unknown customer",
        lambda c: c.v1.billing_portal.sessions.create(
            params={"customer": "cus_nope", "return_url": "http://x.test/"}
        ),
        400,
        "customer",
    ),
    (
        "portal without return url",
        lambda c: c.v1.billing_portal.sessions.create(
            params={"customer": c.v1.customers.create().id}
        ),
        400,
        "return_url",
    ),
    ("unknown subscription", lambda c: c.v1.subscriptions.retrieve("sub_nope"), 404, "id"),
    ("unknown product", lambda c: c.v1.products.retrieve("prod_nope"), 404, "id"),
    ("unknown session", lambda c: c.v1.checkout.sessions.retrieve("cs_test_nope"), 404, "id"),
]


@pytest.mark.parametrize(
    ("call", "status", "param"),
    [case[1:] for case in BAD_CALLS],
    ids=[case[0] for case in BAD_CALLS],
)
def test_bad_calls_raise_the_sdks_invalid_request_error(
    client: stripe.StripeClient, call: Call, status: int, param: str
) -> None:
    """A refused call is the SDK's InvalidRequestError with Stripe's status and param, and
    creates no session."""
    sessions = client.v1.checkout.sessions
    before = len(list(sessions.list(params={"limit": 100}).auto_paging_iter()))
    with pytest.raises(stripe.InvalidRequestError) as raised:
        call(client)
    assert (raised.value.http_status, raised.value.param) == (status, param)
    assert len(list(sessions.list(params={"limit": 100}).auto_paging_iter())) == before


# Built from parts: the file holds no string a secret scanner takes for a live key.
LIVE_SHAPED_KEY = "sk_" + "live_" + "0123456789abcdef"


@pytest.mark.parametrize("key", ["", LIVE_SHAPED_KEY, "pk_test_0123456789abcdef"])
def test_only_secret_test_keys_are_accepted(runtime: Runtime, key: str) -> None:
    """No key, a live key or a publishable key is the SDK's AuthenticationError (401)."""
    if not key:
        response = requests.get(runtime.stripe_base_url + "/v1/prices", timeout=30)
        assert response.status_code == 401
        assert response.json()["error"]["type"] == "invalid_request_error"
        return
    other = stripe.StripeClient(key, base_addresses={"api": runtime.stripe_base_url})
    with pytest.raises(stripe.AuthenticationError) as raised:
        other.v1.prices.list()
    assert key not in str(raised.value)


def test_unknown_routes_and_parameters_are_refused(runtime: Runtime) -> None:
    """An unknown URL is 404 and an unknown parameter 400, as Stripe answers them."""
    auth = {"Authorization": "Bearer sk_test_local"}
    base = runtime.stripe_base_url + "/v1"
    route = requests.delete(f"{base}/prices", headers=auth, timeout=30)
    assert route.status_code == 404
    assert route.json()["error"]["message"].startswith("Unrecognized request URL (DELETE")
    unknown = requests.get(f"{base}/prices?colour=red", headers=auth, timeout=30)
    assert unknown.status_code == 400
    assert unknown.json()["error"]["code"] == "parameter_unknown"


def test_a_session_has_stripes_shape_and_can_be_read_back(
    runtime: Runtime, client: stripe.StripeClient
) -> None:
    """A created session is open and unpaid, at a checkout URL of the local Stripe, and keeps
    what the billing function puts on it."""
    _, user_id = user(runtime)
    session = checkout_session(runtime, user_id, plan="pro")
    assert session.url == f"{runtime.stripe_base_url}/checkout/{session.id}"
    assert session.id.startswith("cs_test_")
    assert (session.object, session.status, session.payment_status) == (
        "checkout.session",
        "open",
        "unpaid",
    )
    assert (session.mode, session.client_reference_id, session.customer) == (
        "subscription",
        user_id,
        None,
    )
    assert session.metadata.to_dict() == {"user_id": user_id}
    assert (session.amount_total, session.currency, session.livemode) == (2900, "usd", False)
    again = client.v1.checkout.sessions.retrieve(session.id, params={"expand": ["line_items"]})
    (item,) = again.line_items.data
    assert (item.price.lookup_key, item.quantity, item.amount_total) == ("pro", 1, 2900)
    listed = client.v1.checkout.sessions.line_items.list(session.id)
    assert [i.price.id for i in listed.data] == [item.price.id]


def test_a_retried_post_with_its_idempotency_key_is_answered_once(runtime: Runtime) -> None:
    """The same key replays the first answer; the same key with other parameters is refused."""
    url = runtime.stripe_base_url + "/v1/customers"
    headers = {"Authorization": "Bearer sk_test_local", "Idempotency-Key": uuid.uuid4().hex}
    first = requests.post(url, data={"email": "a@example.test"}, headers=headers, timeout=30)
    second = requests.post(url, data={"email": "a@example.test"}, headers=headers, timeout=30)
    assert first.status_code == second.status_code == 200
    assert first.json()["id"] == second.json()["id"]
    assert second.headers["Idempotent-Replayed"] == "true"
    other = requests.post(url, data={"email": "b@example.test"}, headers=headers, timeout=30)
    assert other.status_code == 400
    assert other.json()["error"]["type"] == "idempotency_error"


# -- the checkout page ---------------------------------------------------------------------------


def test_the_checkout_page_is_a_test_payment_with_pay_and_cancel(runtime: Runtime) -> None:
    """The page says no money moves, shows the plan and its price, and posts plain forms."""
    _, user_id = user(runtime)
    session = checkout_session(runtime, user_id, plan="starter")
    page = requests.get(session.url, timeout=30)
    assert page.status_code == 200
    assert page.headers["Content-Type"] == "text/html; charset=utf-8"
    text = page.text
    assert "Test payment — no money moves" in text
    assert "Starter" in text
    assert "50,000 tokens a month" in text
    assert "$9.00" in text
    assert f'<form method="post" action="/_stripe/checkout/{session.id}/pay">' in text
    assert 'data-testid="checkout-pay"' in text
    assert 'data-testid="checkout-cancel"' in text


def test_paying_a_subscription_delivers_stripes_events_in_order(runtime: Runtime) -> None:
    """Pay creates the customer, subscription and paid invoice and sends, signed, the four
    events Stripe sends in its order, in the 2025-03-31+ shapes, then returns to success_url."""
    _, user_id = user(runtime)
    session = checkout_session(runtime, user_id, plan="starter")
    answer = press(session.url + "/pay")
    assert answer.status_code == 303
    assert answer.headers["Location"] == runtime.base_url + "/?checkout=success"
    paid = local_stripe(runtime).v1.checkout.sessions.retrieve(session.id)
    events = delivered(runtime, session.id, paid.customer)
    assert [event["type"] for event in events] == SUBSCRIPTION_EVENTS
    completed, created, invoice_paid, succeeded = (event["data"]["object"] for event in events)
    assert (completed["status"], completed["payment_status"]) == ("complete", "paid")
    assert completed["client_reference_id"] == completed["metadata"]["user_id"] == user_id
    assert completed["customer"].startswith("cus_")
    assert completed["subscription"] == created["id"]
    assert created["metadata"] == {"user_id": user_id}
    assert (created["status"], created["customer"]) == ("active", completed["customer"])
    (item,) = created["items"]["data"]
    assert item["price"]["lookup_key"] == "starter"
    assert item["current_period_end"] > item["current_period_start"]
    assert "current_period_start" not in created
    assert invoice_paid == succeeded
    assert invoice_paid["billing_reason"] == "subscription_create"
    assert invoice_paid["parent"]["subscription_details"]["subscription"] == created["id"]
    assert "subscription" not in invoice_paid
    assert (invoice_paid["amount_paid"], invoice_paid["currency"]) == (900, "usd")
    (line,) = invoice_paid["lines"]["data"]
    assert line["period"] == {
        "start": item["current_period_start"],
        "end": item["current_period_end"],
    }
    assert line["pricing"]["price_details"]["price"] == item["price"]["id"]
    assert len({event["id"] for event in events}) == 4
    assert all(event["livemode"] is False for event in events)


def test_paying_on_the_page_puts_the_user_on_starter(runtime: Runtime) -> None:
    """After Pay the user's plan is Starter with its allowance, and Stripe knows the rest."""
    http, user_id = user(runtime)
    assert usage(http)["plan"] == "demo"
    session = checkout_session(runtime, user_id, plan="starter")
    assert press(session.url + "/pay").status_code == 303
    stats = usage(http)
    assert (stats["plan"], stats["tokens"]["planTokens"], stats["tokens"]["limit"]) == (
        "starter",
        50_000,
        50_000,
    )
    client = local_stripe(runtime)
    paid = client.v1.checkout.sessions.retrieve(
        session.id, params={"expand": ["subscription", "customer"]}
    )
    assert (paid.status, paid.subscription.status, paid.customer.object) == (
        "complete",
        "active",
        "customer",
    )
    listed = client.v1.subscriptions.list(params={"customer": paid.customer.id})
    assert [s.id for s in listed.data] == [paid.subscription.id]
    events = client.v1.events.list(params={"delivery_success": False, "limit": 100})
    assert not [e for e in events.data if e.data.object.get("customer") == paid.customer.id]


def test_a_second_press_of_pay_changes_nothing(runtime: Runtime) -> None:
    """A paid session sends its events once: pressing Pay again only returns to the site."""
    _, user_id = user(runtime)
    session = checkout_session(runtime, user_id, plan="starter")
    assert press(session.url + "/pay").status_code == 303
    again = press(session.url + "/pay")
    assert (again.status_code, again.headers["Location"]) == (
        303,
        runtime.base_url + "/?checkout=success",
    )
    customer = local_stripe(runtime).v1.checkout.sessions.retrieve(session.id).customer
    assert len(delivered(runtime, session.id, customer)) == 4
    assert "Payment complete" in requests.get(session.url, timeout=30).text


def test_a_delivery_the_webhook_refused_is_retried_and_then_delivered(
    runtime: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As Stripe retries a delivery answered with a non-2xx, the local Stripe tries again: a
    webhook that fails each event's first delivery still takes all of them, in order."""
    assert runtime.stripe is not None
    deliver = runtime.stripe._deliver_one  # the one seam between the local Stripe and the webhook
    attempts: list[str] = []

    def fails_first(payload: bytes, signature: str) -> tuple[int, bytes]:
        event_id = json.loads(payload)["id"]
        attempts.append(event_id)
        if attempts.count(event_id) == 1:
            return 500, b'{"error":{"code":"internal"}}'
        return deliver(payload, signature)

    monkeypatch.setattr(runtime.stripe, "_deliver_one", fails_first)
    _, user_id = user(runtime)
    session = checkout_session(runtime, user_id, plan="starter")

    assert press(session.url + "/pay").status_code == 303

    customer = local_stripe(runtime).v1.checkout.sessions.retrieve(session.id).customer
    events = delivered(runtime, session.id, customer)
    assert len(events) == 4
    assert attempts == [event_id for event_id in dict.fromkeys(attempts) for _ in range(2)]
    pending = local_stripe(runtime).v1.events.list(params={"delivery_success": False, "limit": 100})
    assert not [e for e in pending.data if e.data.object.get("customer") == customer]


def test_an_existing_customer_is_reused(runtime: Runtime) -> None:
    """A session for a linked customer bills that customer; no other one is created."""
    _, user_id, first = subscribed(runtime)
    client = local_stripe(runtime)
    session = checkout_session(runtime, user_id, topup="topup_25k", customer=first.customer)
    assert press(session.url + "/pay").status_code == 303
    paid = client.v1.checkout.sessions.retrieve(session.id)
    assert paid.customer == first.customer


def test_a_topup_session_credits_the_pack_once(runtime: Runtime) -> None:
    """A paid pack sends one checkout.session.completed (paid, with its tokens) and the user
    gets the pack's tokens once, however often Pay is pressed."""
    http, user_id = user(runtime)
    session = checkout_session(runtime, user_id, topup="topup_25k")
    assert "$5.00" in requests.get(session.url, timeout=30).text
    assert press(session.url + "/pay").status_code == 303
    assert press(session.url + "/pay").status_code == 303
    events = delivered(runtime, session.id)
    assert [event["type"] for event in events] == ["checkout.session.completed"]
    completed = events[0]["data"]["object"]
    assert (completed["mode"], completed["payment_status"]) == ("payment", "paid")
    assert completed["metadata"] == {
        "user_id": user_id,
        "topup_tokens": "25000",
        "topup_id": "topup_25k",
    }
    intent = local_stripe(runtime).v1.payment_intents.retrieve(completed["payment_intent"])
    assert (intent.status, intent.amount, intent.currency) == ("succeeded", 500, "usd")
    assert usage(http)["tokens"]["topupTokens"] == 25_000


def test_cancel_on_the_checkout_page_changes_nothing(runtime: Runtime) -> None:
    """Cancel returns to cancel_url; the session stays open, no event is sent, the plan stays."""
    http, user_id = user(runtime)
    session = checkout_session(runtime, user_id, plan="business")
    answer = press(session.url + "/cancel")
    assert (answer.status_code, answer.headers["Location"]) == (
        303,
        runtime.base_url + "/?checkout=cancel",
    )
    again = local_stripe(runtime).v1.checkout.sessions.retrieve(session.id)
    assert (again.status, again.customer, again.subscription) == ("open", None, None)
    assert delivered(runtime, session.id) == []
    assert usage(http)["plan"] == "demo"


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/checkout/cs_test_unknown"),
        ("POST", "/checkout/cs_test_unknown/pay"),
        ("POST", "/checkout/cs_test_unknown/cancel"),
        ("GET", "/portal/bps_unknown"),
        ("POST", "/portal/bps_unknown/cancel"),
        ("GET", "/nowhere"),
    ],
)
def test_unknown_sessions_are_404_pages(runtime: Runtime, method: str, path: str) -> None:
    """A session id nobody created is a 404 page, and pressing its buttons changes nothing."""
    before = len(runtime.executions.of_function("stripe-webhook"))
    response = requests.request(method, runtime.stripe_base_url + path, timeout=30)
    assert response.status_code == 404
    assert response.headers["Content-Type"] == "text/html; charset=utf-8"
    assert len(runtime.executions.of_function("stripe-webhook")) == before


def test_the_buttons_want_a_post(runtime: Runtime) -> None:
    """Following a Pay link (a GET) pays nothing: the buttons are form posts."""
    _, user_id = user(runtime)
    session = checkout_session(runtime, user_id, plan="starter")
    response = requests.get(session.url + "/pay", timeout=30)
    assert (response.status_code, response.headers["Allow"]) == (405, "POST")
    assert local_stripe(runtime).v1.checkout.sessions.retrieve(session.id).status == "open"


# -- the portal ----------------------------------------------------------------------------------


def back_from_the_portal(
    runtime: Runtime, customer: str, url: str, body: dict[str, str] | None = None
) -> list[dict[str, Any]]:
    """Press ``url`` of a portal page, which sends the user back to the app; the events about
    ``customer`` that the press delivered."""
    already = len(delivered(runtime, customer))
    answer = press(url, body)
    assert (answer.status_code, answer.headers["Location"]) == (303, runtime.base_url + "/")
    return delivered(runtime, customer)[already:]


def portal(runtime: Runtime, customer: str) -> Any:
    return local_stripe(runtime).v1.billing_portal.sessions.create(
        params={"customer": customer, "return_url": runtime.base_url + "/"}
    )


def test_the_portal_page_offers_the_other_plans_and_cancel(runtime: Runtime) -> None:
    """The portal shows the current plan, a button for every other plan, renew, cancel, and
    the way back."""
    _, _, paid = subscribed(runtime)
    session = portal(runtime, paid.customer)
    assert (session.object, session.url) == (
        "billing_portal.session",
        f"{runtime.stripe_base_url}/portal/{session.id}",
    )
    text = requests.get(session.url, timeout=30).text
    assert "no money moves" in text
    assert 'data-testid="portal-plan-pro"' in text
    assert 'data-testid="portal-plan-business"' in text
    assert 'data-testid="portal-plan-starter"' not in text
    assert 'data-testid="portal-plan-demo"' not in text
    assert 'data-testid="portal-cancel"' in text
    assert 'data-testid="portal-renew"' in text
    assert f'href="{runtime.base_url}/" data-testid="portal-return"' in text


def test_a_portal_deep_link_must_name_the_customers_running_subscription(
    runtime: Runtime,
) -> None:
    """A subscription_update flow opens for the customer's own subscription; another
    customer's subscription is refused as Stripe refuses it."""
    _, _, mine = subscribed(runtime)
    _, _, theirs = subscribed(runtime)
    sessions = local_stripe(runtime).v1.billing_portal.sessions

    def flow(subscription: str) -> Any:
        return sessions.create(
            params={
                "customer": mine.customer,
                "return_url": runtime.base_url + "/",
                "flow_data": {
                    "type": "subscription_update",
                    "subscription_update": {"subscription": subscription},
                },
            }
        )

    assert flow(mine.subscription).flow.type == "subscription_update"
    with pytest.raises(stripe.InvalidRequestError) as raised:
        flow(theirs.subscription)
    assert raised.value.param == "flow_data[subscription_update][subscription]"


def test_an_upgrade_in_the_portal_charges_the_proration_then_applies(runtime: Runtime) -> None:
    """Switching to a dearer plan sends the update, then the paid subscription_update invoice
    of the prorated difference; the user ends on the new plan."""
    http, _, paid = subscribed(runtime)
    session = portal(runtime, paid.customer)
    events = back_from_the_portal(runtime, paid.customer, f"{session.url}/plan", {"plan": "pro"})
    assert [event["type"] for event in events] == [
        "customer.subscription.updated",
        "invoice.paid",
        "invoice.payment_succeeded",
    ]
    updated, invoice = events[0]["data"], events[1]["data"]["object"]
    assert updated["object"]["items"]["data"][0]["price"]["lookup_key"] == "pro"
    previous = updated["previous_attributes"]["items"]["data"][0]["price"]["lookup_key"]
    assert previous == "starter"
    assert invoice["billing_reason"] == "subscription_update"
    assert invoice["parent"]["subscription_details"]["subscription"] == paid.subscription
    # Paid just after subscribing, nearly the whole difference of $20 is due.
    assert 1900 <= invoice["amount_paid"] <= 2000
    proration = [line["parent"]["subscription_item_details"]["proration"] for line in
                 invoice["lines"]["data"]]  # fmt: skip
    assert proration == [True, True]
    assert sorted(line["amount"] < 0 for line in invoice["lines"]["data"]) == [False, True]
    stats = usage(http)
    assert (stats["plan"], stats["tokens"]["planTokens"]) == ("pro", 200_000)
    item = local_stripe(runtime).v1.subscriptions.retrieve(paid.subscription)["items"].data[0]
    assert item.price.lookup_key == "pro"


def test_a_downgrade_in_the_portal_sends_only_the_update(runtime: Runtime) -> None:
    """A cheaper plan is one customer.subscription.updated, no invoice; the plan follows."""
    http, _, paid = subscribed(runtime, "business")
    already = len(delivered(runtime, paid.customer))
    assert (
        press(f"{portal(runtime, paid.customer).url}/plan", {"plan": "starter"}).status_code == 303
    )
    events = delivered(runtime, paid.customer)[already:]
    assert [event["type"] for event in events] == ["customer.subscription.updated"]
    assert usage(http)["plan"] == "starter"


def test_cancel_in_the_portal_returns_the_user_to_demo(runtime: Runtime) -> None:
    """Cancel ends the subscription at once with customer.subscription.deleted; the user is on
    Demo and the portal has nothing left to change."""
    http, _, paid = subscribed(runtime)
    session = portal(runtime, paid.customer)
    events = back_from_the_portal(runtime, paid.customer, f"{session.url}/cancel")
    assert [event["type"] for event in events] == ["customer.subscription.deleted"]
    ended = events[0]["data"]["object"]
    assert ended["status"] == "canceled"
    assert ended["ended_at"] == ended["canceled_at"]
    assert usage(http)["plan"] == "demo"
    assert local_stripe(runtime).v1.subscriptions.retrieve(paid.subscription).status == "canceled"
    text = requests.get(session.url, timeout=30).text
    assert "No active subscription" in text
    assert 'data-testid="portal-return"' in text
    assert press(f"{session.url}/cancel").status_code == 409


def test_renew_now_in_the_portal_resets_usage_to_the_next_period(runtime: Runtime) -> None:
    """Renew moves the period on and pays the cycle's invoice, as a test clock would: the
    webhook resets the used tokens to the new period."""
    http, _, paid = subscribed(runtime)
    body = {"messages": [{"role": "user", "content": "Hello there"}]}
    used = http.execution("chat", body).body["usage"]["tokens"]["used"]
    assert used > 0
    session = portal(runtime, paid.customer)
    events = back_from_the_portal(runtime, paid.customer, f"{session.url}/renew")
    assert [event["type"] for event in events] == [
        "customer.subscription.updated",
        "invoice.paid",
        "invoice.payment_succeeded",
    ]
    item = events[0]["data"]["object"]["items"]["data"][0]
    before = events[0]["data"]["previous_attributes"]["items"]["data"][0]
    assert item["current_period_start"] == before["current_period_end"]
    invoice = events[1]["data"]["object"]
    assert invoice["billing_reason"] == "subscription_cycle"
    assert invoice["lines"]["data"][0]["period"]["start"] == item["current_period_start"]
    assert (invoice["period_start"], invoice["period_end"]) == (
        before["current_period_start"],
        before["current_period_end"],
    )
    tokens = usage(http)["tokens"]
    assert (tokens["used"], tokens["lifetimeUsed"], tokens["planTokens"]) == (0, used, 50_000)


@pytest.mark.parametrize("plan", ["starter", "demo", "nope", ""])
def test_the_portal_refuses_a_plan_it_does_not_offer(runtime: Runtime, plan: str) -> None:
    """The current plan, the free one or an unknown one is a 400 page and sends nothing."""
    _, _, paid = subscribed(runtime)
    already = len(delivered(runtime, paid.customer))
    response = press(f"{portal(runtime, paid.customer).url}/plan", {"plan": plan})
    assert response.status_code == 400
    assert len(delivered(runtime, paid.customer)) == already


# -- the runtime around it -----------------------------------------------------------------------


def billing(http: AppwriteHttp, path: str, body: dict[str, str] | None = None) -> Any:
    method = "GET" if path == "/plans" else "POST"
    response = http.execute("billing", json.dumps(body) if body else "", method=method, path=path)
    assert response.status_code == 201, response.text
    execution = response.json()
    assert execution["responseStatusCode"] == 200, execution["responseBody"]
    return json.loads(execution["responseBody"])


def test_the_billing_function_sells_through_the_local_stripe(runtime: Runtime) -> None:
    """The page's calls: the local prices, a checkout URL that pays on the local page, then a
    portal URL of the local portal for the now linked customer."""
    http, _ = user(runtime)
    plans = billing(http, "/plans")
    prices = {plan["id"]: plan["price"]["amount"] for plan in plans["plans"]}
    assert prices == {"starter": 900, "pro": 2900, "business": 9900}
    url = billing(http, "/checkout", {"plan": "starter"})["url"]
    assert url.startswith(runtime.stripe_base_url + "/checkout/cs_test_")
    assert press(url + "/pay").headers["Location"] == runtime.base_url + "/?checkout=success"
    assert usage(http)["plan"] == "starter"
    portal_url = billing(http, "/portal")["url"]
    assert portal_url.startswith(runtime.stripe_base_url + "/portal/bps_")
    assert 'data-testid="portal-plan-pro"' in requests.get(portal_url, timeout=30).text


def test_the_functions_are_pointed_at_the_local_stripe(runtime: Runtime) -> None:
    """Without a Stripe key the functions get the local Stripe's base, a test key and the
    page as the billing return URL."""
    env = runtime.function_environment()
    assert env["STRIPE_SECRET_KEY"] == "sk_test_local"
    assert env["STRIPE_API_BASE"] == runtime.base_url + "/_stripe"
    assert env["BILLING_RETURN_URL"] == runtime.base_url + "/"


def test_the_banner_says_the_local_stripe_is_on_and_where_the_outbox_is(runtime: Runtime) -> None:
    """`make dev` tells that payments are local tests and where the emails land."""
    text = banner(runtime)
    assert f"LOCAL test Stripe at {runtime.base_url}/_stripe: no money moves" in text
    assert f"{runtime.base_url}/outbox" in text


def test_the_local_stripe_lists_the_events_it_delivered(runtime: Runtime) -> None:
    """Its index page shows the newest events and whether the webhook took them."""
    _, _, paid = subscribed(runtime)
    (event,) = local_stripe(runtime).v1.events.list(params={"limit": 1}).data
    text = requests.get(runtime.stripe_base_url + "/", timeout=30).text
    assert event.type == "invoice.payment_succeeded"
    assert event.data.object.customer == paid.customer
    assert event.id in text
    assert "delivered" in text


def test_a_plan_gone_from_the_plans_file_is_no_longer_sold(tmp_path: Path) -> None:
    """Prices follow the plans file: one whose plan was removed goes inactive, others stay."""
    document = json.loads((DATA_DIR / DEFAULT_PLANS_FILE).read_text(encoding="utf-8"))

    def local(plans_text: str) -> LocalStripe:
        return LocalStripe(
            path=tmp_path / "stripe.sqlite3",
            plans=parse_plans(plans_text),
            base_url="http://127.0.0.1:1/_stripe",
            webhook_secret="whsec_test",
            deliver=lambda payload, signature: (200, b""),
            clock=lambda: datetime.now(UTC),
        )

    local(json.dumps(document)).close()
    document["plans"] = [plan for plan in document["plans"] if plan["id"] != "business"]
    stripe_local = local(json.dumps(document))
    try:
        auth = [("Authorization", "Bearer sk_test_local")]
        request = Request("GET", "/_stripe/v1/prices", "active=true", auth, b"", "127.0.0.1")
        reply = stripe_local.handle(request, "/v1/prices")
    finally:
        stripe_local.close()
    keys = {price["lookup_key"] for price in json.loads(reply.body)["data"]}
    assert keys == {"starter", "pro", "topup_25k", "topup_100k"}


def test_with_a_stripe_key_the_local_stripe_is_not_mounted(tmp_path: Path) -> None:
    """With STRIPE_SECRET_KEY the given Stripe is used and nothing is served at /_stripe."""
    env = {"STRIPE_SECRET_KEY": "sk_test_real", "STRIPE_API_BASE": "http://stripe-mock.test"}
    with running(tmp_path, functions={}, env=env) as started:
        assert started.stripe is None
        function_env = started.function_environment()
        assert function_env["STRIPE_SECRET_KEY"] == "sk_test_real"
        assert function_env["STRIPE_API_BASE"] == "http://stripe-mock.test"
        response = requests.get(started.base_url + "/_stripe/v1/prices", timeout=30)
        assert response.status_code == 404
        assert not (tmp_path / "stripe.sqlite3").exists()


def test_customers_and_subscriptions_survive_a_restart(tmp_path: Path) -> None:
    """The local Stripe keeps its objects in the data folder; an event the webhook could not
    take (here: no webhook function) stays pending, as Stripe shows it."""
    with running(tmp_path, functions={}) as first:
        session = checkout_session(first, "user_restart", plan="pro")
        assert press(session.url + "/pay").status_code == 303
        paid = local_stripe(first).v1.checkout.sessions.retrieve(session.id)
        pending = local_stripe(first).v1.events.list(params={"delivery_success": False})
        assert len(pending.data) == 4
    with running(tmp_path, functions={}) as second:
        client = local_stripe(second)
        assert client.v1.subscriptions.retrieve(paid.subscription).status == "active"
        assert portal(second, paid.customer).customer == paid.customer
        assert client.v1.prices.retrieve("price_local_pro").lookup_key == "pro"


# -- bad input -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pairs", "expected"),
    [
        ([("a", "1")], {"a": "1"}),
        ([("l[0][p]", "x"), ("l[1][p]", "y")], {"l": [{"p": "x"}, {"p": "y"}]}),
        ([("k[]", "1"), ("k[]", "2")], {"k": ["1", "2"]}),
        ([("metadata[0]", "x")], {"metadata": {"0": "x"}}),
        ([("s[metadata][user_id]", "u")], {"s": {"metadata": {"user_id": "u"}}}),
    ],
    ids=["scalar", "list-of-objects", "appended", "metadata-keys-stay", "nested"],
)
def test_form_keys_nest_as_stripe_reads_them(
    pairs: list[tuple[str, str]], expected: dict[str, Any]
) -> None:
    """Bracketed keys nest; indexes make lists, except under metadata."""
    assert parse_params(pairs) == expected


_keys = st.sampled_from(
    ["mode", "line_items[0][price]", "line_items[0][quantity]", "success_url", "customer",
     "metadata[user_id]", "metadata", "expand[]", "subscription_data[metadata][x]", "a[", "]",
     "line_items[]", "line_items[0]", "expires_at", "customer_creation"]
)  # fmt: skip
_values = st.sampled_from(
    ["", "subscription", "payment", "price_local_starter", "1", "-1", "http://x.test/", "cus_x",
     "x" * 600]
) | st.text(max_size=12)  # fmt: skip


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(pairs=st.lists(st.tuples(_keys | st.text(max_size=8), _values), max_size=6))
def test_no_malformed_call_is_a_server_error(
    runtime: Runtime, pairs: list[tuple[str, str]]
) -> None:
    """Any form body to the session endpoint is answered below 500, errors in Stripe's shape."""
    response = requests.post(
        runtime.stripe_base_url + "/v1/checkout/sessions",
        data=pairs,
        headers={"Authorization": "Bearer sk_test_local"},
        timeout=30,
    )
    assert response.status_code < 500, response.text
    if response.status_code != 200:
        error = response.json()["error"]
        assert set(error) <= {"type", "message", "code", "param", "doc_url"}
        assert error["type"] in ("invalid_request_error", "idempotency_error")
