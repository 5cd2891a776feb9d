"""The billing function through ``main(context)``: plans, checkout and portal for the verified
caller only, with Stripe's API at the HTTP edge; bad requests create nothing anywhere."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from tests.strategies import json_values
from tests.support.function_harness import Harness, modules_after_build, running

PAGE = "https://app.example.test/chat"


@pytest.fixture
def billing(tmp_path: Path) -> Iterator[Harness]:
    with running("billing", tmp_path / "metering.sqlite3") as harness:
        yield harness


def subscribe(harness: Harness, user: str, plan: str = "starter", status: str = "active") -> None:
    harness.seed(
        user,
        plan,
        status=status,
        stripe_customer_id=f"cus_{user}",
        stripe_subscription_id=f"sub_{user}",
    )
    harness.stripe.customers.add(f"cus_{user}")


def checkout(harness: Harness, body: Any, user: str | None = "alice") -> Any:
    return harness.call(body, user=user, path="/checkout")


# -- GET /plans --------------------------------------------------------------------------------


def test_plans_lists_the_paid_plans_and_packs_at_stripes_prices(billing: Harness) -> None:
    """Every plan but Demo and every pack, priced as Stripe holds them; a new user is on Demo."""
    result = billing.call(method="GET", user="newcomer", path="/plans")

    assert result.status_code == 200, result.body
    answer = result.json()
    assert answer["currentPlan"] == "demo"
    assert answer["plans"] == [
        {"id": "starter", "name": "Starter", "tokens": 50_000,
         "price": {"amount": 900, "currency": "usd"}, "current": False},
        {"id": "pro", "name": "Pro", "tokens": 200_000,
         "price": {"amount": 2900, "currency": "usd"}, "current": False},
        {"id": "business", "name": "Business", "tokens": 1_000_000,
         "price": {"amount": 9900, "currency": "usd"}, "current": False},
    ]  # fmt: skip
    assert answer["topups"] == [
        {"id": "topup_25k", "name": "25,000 tokens", "tokens": 25_000,
         "price": {"amount": 500, "currency": "usd"}},
        {"id": "topup_100k", "name": "100,000 tokens", "tokens": 100_000,
         "price": {"amount": 1500, "currency": "usd"}},
    ]  # fmt: skip


def test_plans_creates_no_account(billing: Harness) -> None:
    """Reading the shelf stores nothing: billing never writes an account."""
    before = billing.snapshot()

    billing.call(method="GET", user="newcomer", path="/plans")

    assert billing.snapshot() == before


def test_plans_marks_the_callers_plan(billing: Harness) -> None:
    """``current`` and ``currentPlan`` are the caller's, not anyone else's."""
    subscribe(billing, "alice", "pro")
    billing.seed("bob", "business")

    answer = billing.call(method="GET", user="alice", path="/plans").json()

    assert answer["currentPlan"] == "pro"
    assert [plan["id"] for plan in answer["plans"] if plan["current"]] == ["pro"]


def test_prices_are_looked_up_once_per_warm_instance(billing: Harness) -> None:
    """Lookup keys are the plan and pack ids, asked once; later executions use the cache."""
    for _ in range(3):
        assert billing.call(method="GET", user="alice", path="/plans").status_code == 200
    assert billing.call({"plan": "pro"}, user="alice", path="/checkout").status_code == 200

    assert billing.stripe.price_lists == [["starter", "pro", "business", "topup_25k", "topup_100k"]]


def test_an_offer_stripe_has_no_price_for_is_left_off_and_logged(billing: Harness) -> None:
    """Without its price an offer cannot be sold: not shown, and the operator is told why."""
    del billing.stripe.prices["business"]
    billing.stripe.prices["topup_100k"]["type"] = "recurring"

    result = billing.call(method="GET", user="alice", path="/plans")

    answer = result.json()
    assert [plan["id"] for plan in answer["plans"]] == ["starter", "pro"]
    assert [pack["id"] for pack in answer["topups"]] == ["topup_25k"]
    notes = [json.loads(line) for line in result.logs if "billing.offer_unpriced" in line]
    assert len(notes) == 2
    assert "business" in notes[0]["problem"]


# -- POST /checkout ----------------------------------------------------------------------------


def test_a_plan_checkout_is_a_subscription_session_for_the_caller(billing: Harness) -> None:
    """Mode, price by lookup key, the caller on reference, session and subscription metadata."""
    result = checkout(billing, {"plan": "starter"})

    assert result.status_code == 200, result.body
    assert result.json()["url"].startswith("https://checkout.stripe.com/c/pay/cs_test_")
    (sent,) = billing.stripe.sessions
    assert sent["mode"] == "subscription"
    assert sent["line_items"] == [
        {"price": billing.stripe.prices["starter"]["id"], "quantity": "1"}
    ]
    assert sent["client_reference_id"] == "alice"
    assert sent["metadata"] == {"user_id": "alice"}
    assert sent["subscription_data"] == {"metadata": {"user_id": "alice"}}
    assert sent["success_url"] == f"{PAGE}?checkout=success"
    assert sent["cancel_url"] == f"{PAGE}?checkout=cancel"
    assert "customer" not in sent


def test_a_pack_checkout_is_a_payment_carrying_the_packs_tokens(billing: Harness) -> None:
    """metadata.topup_tokens is the pack's size from plans.json, on the session and payment."""
    result = checkout(billing, {"topup": "topup_100k"})

    assert result.status_code == 200, result.body
    (sent,) = billing.stripe.sessions
    assert sent["mode"] == "payment"
    assert sent["line_items"][0]["price"] == billing.stripe.prices["topup_100k"]["id"]
    expected = {"user_id": "alice", "topup_id": "topup_100k", "topup_tokens": "100000"}
    assert sent["metadata"] == expected
    assert sent["payment_intent_data"] == {"metadata": expected}
    assert sent["client_reference_id"] == "alice"


def test_the_linked_customer_is_reused(billing: Harness) -> None:
    """A caller with a Stripe customer pays as that customer."""
    billing.seed("alice", "demo", stripe_customer_id="cus_alice")
    billing.stripe.customers.add("cus_alice")

    checkout(billing, {"topup": "topup_25k"})
    checkout(billing, {"plan": "starter"})

    assert [sent.get("customer") for sent in billing.stripe.sessions] == ["cus_alice"] * 2
    assert all("customer_creation" not in sent for sent in billing.stripe.sessions)


def test_nothing_in_the_body_reaches_the_session_but_the_id(billing: Harness) -> None:
    """A body naming other users, tokens or prices is refused whole: no session at all."""
    forged = {"topup": "topup_25k", "topup_tokens": "1000000", "user_id": "victim"}

    result = checkout(billing, forged)

    assert result.status_code == 400
    assert billing.stripe.calls == 0


def test_a_seeded_plan_without_a_subscription_can_be_bought(billing: Harness) -> None:
    """An account on Starter that never subscribed (a seed) checks out Starter normally."""
    billing.seed("alice", "starter")

    assert checkout(billing, {"plan": "starter"}).status_code == 200
    assert billing.stripe.sessions[0]["mode"] == "subscription"


@pytest.mark.parametrize("status", ["active", "trialing", "past_due"])
def test_buying_the_plan_one_has_is_409_and_asks_nothing_of_stripe(
    billing: Harness, status: str
) -> None:
    """A granting subscription on that plan: a conflict, no session, nothing stored."""
    subscribe(billing, "alice", "starter", status)
    before = billing.snapshot()

    result = checkout(billing, {"plan": "starter"})

    assert result.status_code == 409
    assert result.json()["error"]["code"] == "conflict"
    assert billing.stripe.calls == 0
    assert billing.snapshot() == before


def test_another_plan_for_a_subscriber_opens_the_portals_plan_change(billing: Harness) -> None:
    """No second subscription: the answer is a portal session at the subscription's update."""
    subscribe(billing, "alice", "starter")

    result = checkout(billing, {"plan": "pro"})

    assert result.status_code == 200, result.body
    assert result.json()["url"].startswith("https://billing.stripe.com/p/session/")
    assert billing.stripe.sessions == []
    (sent,) = billing.stripe.portals
    assert sent["customer"] == "cus_alice"
    assert sent["flow_data"]["type"] == "subscription_update"
    assert sent["flow_data"]["subscription_update"] == {"subscription": "sub_alice"}


def test_a_subscriber_buys_packs_through_checkout(billing: Harness) -> None:
    """Top-ups stack on a subscription, bought as the subscription's customer."""
    subscribe(billing, "alice", "starter")

    assert checkout(billing, {"topup": "topup_25k"}).status_code == 200
    assert billing.stripe.sessions[0]["customer"] == "cus_alice"


def test_a_plan_stripe_has_no_price_for_is_500_and_creates_no_session(billing: Harness) -> None:
    """The operator's to fix: logged with the reason, no session, no stored change."""
    del billing.stripe.prices["pro"]

    result = checkout(billing, {"plan": "pro"})

    assert result.status_code == 500
    assert result.json() == {
        "error": {
            "code": "internal",
            "message": "Something went wrong on our side. Please try again.",
        }
    }
    assert any("lookup key 'pro'" in line for line in result.errors)
    assert billing.stripe.sessions == []


# -- bad requests: 4xx, nothing created --------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "status"),
    [
        pytest.param(b"", 400, id="empty"),
        pytest.param(b"{not json", 400, id="bad-json"),
        pytest.param(b"\xff\xfe", 400, id="not-utf8"),
        pytest.param(b"[]", 400, id="array"),
        pytest.param(b"{}", 400, id="no-field"),
        pytest.param(b'{"plan": "starter", "topup": "topup_25k"}', 400, id="both"),
        pytest.param(b'{"plan": 1}', 400, id="numeric-id"),
        pytest.param(b'{"plan": "platinum"}', 400, id="unknown-plan"),
        pytest.param(b'{"topup": "topup_1m"}', 400, id="unknown-pack"),
        pytest.param(b'{"plan": "demo"}', 400, id="demo"),
        pytest.param(b'{"plan": "topup_25k"}', 400, id="pack-as-plan"),
        pytest.param(b'{"plan": "starter", "price": "price_free"}', 400, id="extra-field"),
        pytest.param(b"[" * 2000 + b"]" * 2000, 400, id="deeply-nested"),
        pytest.param(b'{"plan": "' + b"x" * 5000 + b'"}', 413, id="too-large"),
    ],
)
def test_bad_checkout_bodies_are_4xx_and_create_nothing(
    billing: Harness, raw: bytes, status: int
) -> None:
    """No Stripe call, no row: a bad body changes nothing anywhere."""
    billing.seed("alice", "demo")
    before = billing.snapshot()

    result = checkout(billing, raw)

    assert result.status_code == status, result.body
    assert result.json()["error"]["code"] in ("invalid_request", "payload_too_large")
    assert billing.stripe.calls == 0
    assert billing.snapshot() == before


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/checkout"),
        ("POST", "/plans"),
        ("GET", "/portal"),
        ("GET", "/"),
        ("POST", "/"),
        ("POST", "/checkout/extra"),
        ("GET", "/PLANS"),
        ("DELETE", "/plans"),
        ("PUT", "/checkout"),
    ],
)
def test_other_routes_are_400_before_anything_else(
    billing: Harness, method: str, path: str
) -> None:
    """Only GET /plans, POST /checkout and POST /portal exist; nothing is read or asked."""
    result = billing.call(b'{"plan": "starter"}', method=method, user="alice", path=path)

    assert result.status_code == 400
    assert result.json()["error"]["code"] == "invalid_request"
    assert billing.accounts.calls == 0
    assert billing.stripe.calls == 0


def test_a_trailing_slash_names_the_same_route(billing: Harness) -> None:
    """``/plans/`` is ``/plans``."""
    assert billing.call(method="GET", user="alice", path="/plans/").status_code == 200


def _encoded(strategy: st.SearchStrategy[Any]) -> st.SearchStrategy[bytes]:
    return strategy.map(lambda value: json.dumps(value).encode())


_purchases = st.sampled_from(
    [{"plan": "starter"}, {"plan": " Pro "}, {"topup": "TOPUP_25K"}, {"topup": "topup_100k"}]
)
_near_purchases = st.fixed_dictionaries(
    {},
    optional={
        "plan": st.sampled_from(["starter", "demo", "", "x"]) | json_values(),
        "topup": st.sampled_from(["topup_25k", "topup"]) | json_values(),
        "tokens": json_values(),
    },
)
_bodies = st.one_of(
    _encoded(_purchases), _encoded(_near_purchases), _encoded(json_values()), st.binary(max_size=64)
)


@settings(
    max_examples=200,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    method=st.sampled_from(["POST", "POST", "GET", "PUT"]),
    path=st.sampled_from(["/checkout", "/checkout/", "/plans", "/portal", "/", "/x"]),
    raw=_bodies,
)
def test_no_request_of_a_signed_in_caller_is_a_5xx_or_stores_anything(
    billing: Harness, method: str, path: str, raw: bytes
) -> None:
    """Any method, path and body: a JSON 2xx or 4xx, no row changed, and a session only for a
    body naming one known offer."""
    before, sessions = billing.snapshot(), len(billing.stripe.sessions)

    result = billing.call(raw, method=method, user="fuzzer", path=path)

    assert result.status_code in (200, 400, 409, 413), (result.status_code, result.errors)
    assert billing.snapshot() == before
    created = len(billing.stripe.sessions) - sessions
    event(f"status {result.status_code}, sessions {created}")
    assert created == (1 if result.status_code == 200 and path.startswith("/checkout") else 0)
    if created:
        body = json.loads(raw)
        assert set(body) in ({"plan"}, {"topup"})
        assert billing.stripe.sessions[-1]["client_reference_id"] == "fuzzer"


# -- only the verified caller ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [("GET", "/plans", None), ("POST", "/checkout", {"plan": "starter"}), ("POST", "/portal", {})],
    ids=["plans", "checkout", "portal"],
)
@pytest.mark.parametrize(
    "headers",
    [{}, {"x-appwrite-user-id": "alice"}, {"x-appwrite-user-jwt": "eyJnot-issued"}],
    ids=["nothing", "user-id-only", "unknown-jwt"],
)
def test_without_a_valid_jwt_every_route_is_401(
    billing: Harness, method: str, path: str, body: Any, headers: dict[str, str]
) -> None:
    """No verified caller, no answer: nothing asked of Stripe."""
    result = billing.call(body, method=method, path=path, headers=headers)

    assert result.status_code == 401
    assert result.json()["error"]["code"] == "unauthenticated"
    assert billing.stripe.calls == 0


def test_a_forged_user_id_header_is_403_and_names_no_one(billing: Harness) -> None:
    """The user-id header must agree with the JWT: a checkout for someone else is refused."""
    billing.seed("victim", "demo", stripe_customer_id="cus_victim")
    jwt = billing.jwt("attacker")

    result = billing.call(
        {"plan": "starter"},
        path="/checkout",
        headers={"x-appwrite-user-jwt": jwt, "x-appwrite-user-id": "victim"},
    )

    assert result.status_code == 403
    assert billing.stripe.calls == 0


def test_the_session_is_always_the_jwts_users(billing: Harness) -> None:
    """Whatever the query says, the reference, metadata and customer are the caller's."""
    billing.seed("victim", "demo", stripe_customer_id="cus_victim")

    billing.call(
        {"plan": "starter"},
        user="attacker",
        path="/checkout",
        query_string="user=victim&userId=victim",
    )

    (sent,) = billing.stripe.sessions
    assert (sent["client_reference_id"], sent["metadata"]["user_id"]) == ("attacker", "attacker")
    assert "customer" not in sent


# -- POST /portal ------------------------------------------------------------------------------


def test_the_portal_is_the_linked_customers(billing: Harness) -> None:
    """A portal session of the caller's customer, back to the page."""
    subscribe(billing, "alice", "pro")

    result = billing.call({}, user="alice", path="/portal")

    assert result.status_code == 200, result.body
    assert result.json()["url"].startswith("https://billing.stripe.com/p/session/")
    assert billing.stripe.portals == [{"customer": "cus_alice", "return_url": PAGE}]


@pytest.mark.parametrize("seeded", [False, True], ids=["no-account", "never-bought"])
def test_the_portal_without_a_customer_is_409(billing: Harness, seeded: bool) -> None:
    """Nothing to manage yet: a conflict, and no portal session asked for."""
    if seeded:
        billing.seed("alice", "demo")
    before = billing.snapshot()

    result = billing.call({}, user="alice", path="/portal")

    assert result.status_code == 409
    assert result.json()["error"]["code"] == "conflict"
    assert billing.stripe.calls == 0
    assert billing.snapshot() == before


# -- failures ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("stripe_status", "status", "code"),
    [(503, 503, "upstream_unavailable"), (400, 502, "upstream_error")],
    ids=["outage", "refusal"],
)
def test_stripe_failures_are_json_errors(
    billing: Harness, stripe_status: int, status: int, code: str
) -> None:
    """Stripe down is retryable; Stripe refusing is a 502; neither stores anything."""
    billing.stripe.failing_status = stripe_status
    before = billing.snapshot()

    for path, body in (("/plans", None), ("/checkout", {"topup": "topup_25k"})):
        result = billing.call(body, method="GET" if body is None else "POST", user="a", path=path)
        assert result.status_code == status, result.body
        assert result.json()["error"]["code"] == code
    assert billing.snapshot() == before


def test_a_customer_stripe_no_longer_knows_is_a_502(billing: Harness) -> None:
    """A linked customer deleted in Stripe: Stripe refuses, the caller gets upstream_error."""
    billing.seed("alice", "demo", stripe_customer_id="cus_deleted")

    result = billing.call({}, user="alice", path="/portal")

    assert result.status_code == 502
    assert result.json()["error"]["code"] == "upstream_error"


@pytest.mark.parametrize(
    "missing",
    [
        {"STRIPE_SECRET_KEY": ""},
        {"BILLING_RETURN_URL": ""},
        {"BILLING_RETURN_URL": "app.example.test/chat"},
    ],
    ids=["no-key", "no-return-url", "relative-return-url"],
)
def test_without_its_configuration_billing_answers_500_and_says_why(
    tmp_path: Path, missing: dict[str, str]
) -> None:
    """The configuration error is logged by name, never shown; nothing reaches Stripe."""
    with running("billing", tmp_path / "m.sqlite3", environment=missing) as harness:
        result = harness.call(method="GET", user="alice", path="/plans")

        assert result.status_code == 500
        assert result.json()["error"]["code"] == "internal"
        name = next(iter(missing))
        assert any(name in line for line in result.errors)
        assert harness.stripe.calls == 0


@pytest.mark.slow
def test_billing_never_imports_the_anthropic_sdk() -> None:
    """Loading and wiring billing leaves anthropic out of the process."""
    loaded = modules_after_build(
        "billing",
        STRIPE_SECRET_KEY="sk_test_x",
        BILLING_RETURN_URL="https://a.test/",
    )
    assert {"appwrite", "stripe"} <= loaded
    assert "anthropic" not in loaded
