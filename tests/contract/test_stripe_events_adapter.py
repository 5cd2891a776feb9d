"""The Stripe adapter: events of both API shapes to commands, subscriptions read through the real
stripe-python over HTTP, signatures, and Stripe's errors as domain errors."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import pytest
import requests
import responses
from metering.adapters.stripe_billing import StripeBilling, StripeWebhookVerifier
from metering.adapters.stripe_events import (
    StripeEvents,
    event_header,
    line_price,
    parse_command,
    parse_subscription,
    service_period,
)
from metering.billing import (
    CancelSubscription,
    CreditTopup,
    EventHeader,
    Ignore,
    LinkCustomer,
    RecordPaymentFailed,
    ResetPeriod,
    SetSubscription,
)
from metering.errors import ConfigurationError, InvalidRequest, UpstreamError, UpstreamUnavailable
from metering.plans import load_default_plans
from metering.ports import SubscriptionSnapshot

from tests.support.stripe_events import (
    CUS,
    SECRET,
    SUB,
    at,
    encode,
    load_event,
    retarget,
    sign,
)

PLANS = load_default_plans()
SHAPES = [pytest.param("", id="api-2025"), pytest.param(".legacy", id="api-legacy")]


def command_of(name: str, **changes: Any) -> Any:
    event = retarget(load_event(name), **changes) if changes else load_event(name)
    return parse_command(event, PLANS)


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

    command = parse_command(event, PLANS)

    assert command == LinkCustomer("user_fixture01", CUS, None)


def test_checkout_without_client_reference_id_is_ignored() -> None:
    event = load_event("checkout.session.completed.subscription")
    event["data"]["object"]["client_reference_id"] = None

    assert isinstance(parse_command(event, PLANS), Ignore)


@pytest.mark.parametrize(
    "reference",
    ["u" * 37, "user ada", "user/ada", "_ada", "ada\n", "usér"],
)
def test_checkout_whose_client_reference_id_cannot_be_a_user_id_is_ignored(reference: str) -> None:
    for name in ("checkout.session.completed.subscription", "checkout.session.completed.topup"):
        event = load_event(name)
        event["data"]["object"]["client_reference_id"] = reference

        command = parse_command(event, PLANS)

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

    dated = parse_command(retarget(event, created=ended_at + 5), PLANS)
    undated = parse_command(without_end, PLANS)

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

    command = parse_command(event, PLANS)

    assert command == ResetPeriod(SUB, CUS, at(2025, 9, 1), at(2025, 10, 1))


@pytest.mark.parametrize(
    "reason", ["subscription_update", "manual", "subscription_threshold", "upcoming", None]
)
def test_paid_invoice_for_other_reasons_is_ignored(reason: str | None) -> None:
    event = load_event("invoice.paid")
    event["data"]["object"]["billing_reason"] = reason

    assert isinstance(parse_command(event, PLANS), Ignore)


@pytest.mark.parametrize("shape", SHAPES)
def test_failed_payment_records_past_due(shape: str) -> None:
    event = load_event(f"invoice.payment_failed{shape}")

    command = parse_command(event, PLANS)

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


@pytest.mark.parametrize("shape", SHAPES)
def test_subscription_period_comes_from_items_or_the_subscription(shape: str) -> None:
    obj = load_event(f"customer.subscription.updated{shape}")["data"]["object"]

    snapshot = parse_subscription(obj)

    assert (snapshot.period_start, snapshot.period_end) == (at(2025, 9, 1), at(2025, 10, 1))
    assert (snapshot.status, snapshot.customer_id) == ("active", CUS)


def test_header_carries_id_type_created_and_object_id() -> None:
    event = load_event("invoice.paid")

    header: EventHeader = event_header(event)

    assert (header.id, header.type, header.created) == (
        event["id"],
        "invoice.paid",
        event["created"],
    )
    assert header.object_id == event["data"]["object"]["id"]


# -- product look-ups ------------------------------------------------------------------------


class ProductCatalog:
    """A ``BillingProvider`` that knows products only, and counts the look-ups."""

    def __init__(self, products: Mapping[str, Mapping[str, str]]) -> None:
        self.products = products
        self.asked: list[str] = []

    def get_subscription(self, subscription_id: str) -> SubscriptionSnapshot:
        raise AssertionError("events never read the subscription")

    def get_product_metadata(self, product_id: str) -> Mapping[str, str]:
        self.asked.append(product_id)
        return self.products[product_id]


def bare_price_event() -> Any:
    event = load_event("customer.subscription.updated")
    for item in event["data"]["object"]["items"]["data"]:
        item["price"].update(metadata={}, lookup_key=None, product="prod_Plain")
    return event


def test_a_plan_only_on_the_product_is_looked_up_once_the_command_is_read() -> None:
    catalog = ProductCatalog({"prod_Plain": {"plan": "pro"}})

    event = StripeEvents(PLANS, catalog).read(bare_price_event())
    asked_before = list(catalog.asked)
    command = event.read_command()

    assert (asked_before, catalog.asked) == ([], ["prod_Plain"])
    assert isinstance(command, SetSubscription)
    assert (command.plan, command.tokens_per_month) == ("pro", 200_000)


def test_a_plan_only_on_the_product_without_a_provider_is_a_configuration_error() -> None:
    event = StripeEvents(PLANS, None).read(bare_price_event())

    with pytest.raises(ConfigurationError):
        event.read_command()


def test_reading_refuses_what_is_not_a_snapshot_event() -> None:
    with pytest.raises(InvalidRequest):
        StripeEvents(PLANS, None).read({"id": "evt_1", "type": "x", "created": 1})


# -- the Stripe API and signatures ------------------------------------------------------------


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
