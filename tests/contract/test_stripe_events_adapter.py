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
    charged_prices,
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
    Invalid,
    InvoicePaid,
    LinkCustomer,
    RecordPaymentFailed,
    RevokeTopup,
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


STARTER = "price_1S2kQeLkdIwHu7ixStarterM"
ADDON = "price_1S2kRfLkdIwHu7ixAddon10k"
INVOICE = "in_1S2kWqLkdIwHu7ixV2cXyPqA"
PI = "pi_3S2kZxLkdIwHu7ix1Tp9Qa3d"


def command_of(name: str, **changes: Any) -> Any:
    event = retarget(load_event(name), **changes) if changes else load_event(name)
    return parse_command(event, PLANS)


def with_object(name: str, **fields: Any) -> Any:
    """The fixture ``name`` with ``fields`` of its object replaced."""
    event = load_event(name)
    event["data"]["object"].update(fields)
    return event


# -- parsing ---------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", SHAPES)
def test_checkout_for_a_subscription_links_customer_and_subscription(shape: str) -> None:
    """A session the billing function created links its customer and subscription."""
    command = command_of(f"checkout.session.completed.subscription{shape}")

    assert command == LinkCustomer("user_fixture01", CUS, SUB)


@pytest.mark.parametrize("shape", SHAPES)
def test_paid_topup_checkout_credits_the_session_metadata_tokens(shape: str) -> None:
    """A paid top-up session credits its pack, and says which payment paid what."""
    command = command_of(f"checkout.session.completed.topup{shape}")

    assert isinstance(command, CreditTopup)
    assert (command.user_id, command.tokens) == ("user_fixture01", 100_000)
    assert command.session_id.startswith("cs_test_")
    assert (command.payment_intent, command.amount, command.currency) == (PI, 500, "usd")


def test_unpaid_topup_checkout_only_links_the_customer() -> None:
    """An unpaid top-up credits nothing yet (its async success will)."""
    event = load_event("checkout.session.completed.topup")
    event["data"]["object"]["payment_status"] = "unpaid"

    command = parse_command(event, PLANS)

    assert command == LinkCustomer("user_fixture01", CUS, None)


def test_checkout_naming_no_user_anywhere_is_someone_elses_and_ignored() -> None:
    """A session without our user in client_reference_id or metadata is not the app's."""
    event = with_object("checkout.session.completed.subscription", client_reference_id=None)
    event["data"]["object"]["metadata"] = {}

    assert isinstance(parse_command(event, PLANS), Ignore)


CHECKOUTS = ["checkout.session.completed.subscription", "checkout.session.completed.topup"]


@pytest.mark.parametrize("name", CHECKOUTS)
@pytest.mark.parametrize(
    ("reference", "owner"),
    [
        pytest.param("user_victim", None, id="metadata-missing"),
        pytest.param("user_victim", "user_fixture01", id="metadata-differs"),
        pytest.param(None, "user_fixture01", id="reference-missing"),
        pytest.param("u" * 37, "u" * 37, id="too-long"),
        pytest.param("user ada", "user ada", id="space"),
        pytest.param("_ada", "_ada", id="leading-symbol"),
        pytest.param("ada\n", "ada\n", id="newline"),
        pytest.param("usér", "usér", id="not-ascii"),
    ],
)
def test_checkout_the_billing_function_did_not_create_is_invalid(
    name: str, reference: str | None, owner: str | None
) -> None:
    """Linking needs metadata.user_id equal to client_reference_id, both a user id."""
    event = load_event(name)
    session = event["data"]["object"]
    session["client_reference_id"] = reference
    session["metadata"] = {**session["metadata"], "user_id": owner}

    command = parse_command(event, PLANS)

    assert isinstance(command, Invalid)
    assert command.type == event["type"]


@pytest.mark.parametrize(
    "metadata",
    [
        pytest.param(
            {"topup_tokens": "\u0661\u0660\u0660\u0660\u0660\u0660\u0660"}, id="arabic-indic"
        ),
        pytest.param({"topup_tokens": "\uff11\uff10\uff10\uff10"}, id="fullwidth"),
        pytest.param({"topup_tokens": str(2**63)}, id="past-2-to-the-63"),
        pytest.param({"topup_tokens": "100000001"}, id="above-the-maximum"),
        pytest.param({"topup_tokens": "-100"}, id="negative"),
        pytest.param({"topup_tokens": "0"}, id="zero"),
        pytest.param({"topup_tokens": "1e6"}, id="float"),
        pytest.param({"topup_tokens": 100}, id="not-a-string"),
        pytest.param({"topup_tokens": "25000", "topup_id": "topup_100k"}, id="not-the-packs"),
        pytest.param({"topup_id": "topup_1m"}, id="no-such-pack"),
    ],
)
def test_absurd_topup_metadata_is_invalid(metadata: dict[str, Any]) -> None:
    """Only a count of ASCII digits up to the maximum, matching its pack, credits tokens."""
    event = load_event("checkout.session.completed.topup")
    session = event["data"]["object"]
    session["metadata"] = {**session["metadata"], **metadata}

    assert isinstance(parse_command(event, PLANS), Invalid)


def test_the_token_maximum_is_the_one_configured() -> None:
    """A smaller configured maximum refuses a pack the default allows."""
    event = load_event("checkout.session.completed.topup")

    command = StripeEvents(PLANS, None, max_tokens=99_999).read(event).read_command()

    assert isinstance(command, Invalid)
    assert "above the maximum of 99999" in command.reason


@pytest.mark.parametrize("kind", ["created", "updated"])
@pytest.mark.parametrize("shape", SHAPES)
def test_subscription_event_sets_plan_addons_status_and_period(shape: str, kind: str) -> None:
    """The fixture's Starter and two 10k add-ons, with what an invoice must charge for them."""
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
        plan_charges=((STARTER, 1),),
        addon_charges=((ADDON, 2),),
        latest_invoice=INVOICE,
    )


def test_subscription_metadata_names_its_user() -> None:
    """A subscription the billing function created carries its user for the webhook to find."""
    command = command_of("customer.subscription.updated", user_id="user_ada")

    assert isinstance(command, SetSubscription)
    assert command.user_id == "user_ada"


@pytest.mark.parametrize("shape", SHAPES)
def test_subscription_deleted_cancels(shape: str) -> None:
    """A deletion is a cancellation of its subscription and customer."""
    command = command_of(f"customer.subscription.deleted{shape}")

    assert isinstance(command, CancelSubscription)
    assert (command.subscription_id, command.customer_id) == (SUB, CUS)


def test_cancellation_is_dated_by_the_subscription_end_else_by_the_event() -> None:
    """The end closing the paid period is ended_at, else the event's time."""
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
    """An update to an ended status is a cancellation too."""
    command = command_of("customer.subscription.updated", status=status)

    assert isinstance(command, CancelSubscription)


@pytest.mark.parametrize("kind", ["paid", "payment_succeeded"])
@pytest.mark.parametrize("shape", SHAPES)
def test_paid_renewal_resets_to_the_line_period_not_the_invoice_period(
    shape: str, kind: str
) -> None:
    """A paid renewal carries the line's service period, not the invoice's previous one."""
    event = load_event(f"invoice.{kind}{shape}")
    invoice = event["data"]["object"]
    assert (invoice["period_start"], invoice["period_end"]) != (
        invoice["lines"]["data"][0]["period"]["start"],
        invoice["lines"]["data"][0]["period"]["end"],
    )

    command = parse_command(event, PLANS)

    assert command == InvoicePaid(
        invoice_id=INVOICE,
        subscription_id=SUB,
        customer_id=CUS,
        user_id=None,
        billing_reason="subscription_cycle",
        amount_paid=900,
        currency="usd",
        paid_at=datetime.fromtimestamp(invoice["status_transitions"]["paid_at"], UTC),
        period_start=at(2025, 9, 1),
        period_end=at(2025, 10, 1),
        charges=((STARTER, 1),),
    )


@pytest.mark.parametrize("shape", SHAPES)
def test_a_paid_invoice_names_the_user_its_subscription_metadata_names(shape: str) -> None:
    """The subscription's metadata, as the invoice copies it, finds the user of a renewal."""
    command = command_of(f"invoice.paid{shape}", user_id="user_ada")

    assert isinstance(command, InvoicePaid)
    assert command.user_id == "user_ada"


@pytest.mark.parametrize(
    "reason", ["subscription_update", "manual", "subscription_threshold", "upcoming", None]
)
def test_paid_invoice_for_other_reasons_is_revenue_without_a_new_period(
    reason: str | None,
) -> None:
    """Every paid invoice is recorded; its reason decides what else it does."""
    event = load_event("invoice.paid")
    event["data"]["object"]["billing_reason"] = reason

    command = parse_command(event, PLANS)

    assert isinstance(command, InvoicePaid)
    assert (command.billing_reason, command.amount_paid) == (reason, 900)


def test_charged_prices_leave_out_credits_and_keep_the_largest_quantity() -> None:
    """Prorated credits for unused time are no charge; two lines of a price count once."""
    event = retarget(
        load_event("invoice.paid"),
        period=(at(2025, 9, 10), at(2025, 10, 1)),
        billing_reason="subscription_update",
        items=[("pro", 1), ("addon", 3)],
        credits=[("starter", 1)],
    )

    assert charged_prices(event["data"]["object"]) == (
        ("price_1S2kQfLkdIwHu7ixProMonthl", 1),
        (ADDON, 3),
    )


@pytest.mark.parametrize("shape", SHAPES)
def test_failed_payment_records_past_due(shape: str) -> None:
    """A failed payment marks its subscription past due."""
    event = load_event(f"invoice.payment_failed{shape}")

    command = parse_command(event, PLANS)

    assert command == RecordPaymentFailed(SUB, CUS, event["created"])


def test_unknown_type_is_ignored_by_name() -> None:
    """Types the app does not handle are ignored."""
    assert command_of("customer.created") == Ignore("customer.created")


def test_a_refund_of_a_payment_intent_revokes_its_top_up() -> None:
    """charge.refunded names the payment intent and how much of the charge went back."""
    assert command_of("charge.refunded") == RevokeTopup(PI, 500, 500, "refund", names_topup=True)


def test_a_partial_refund_says_how_much() -> None:
    """A partial refund carries its cumulative amount, for the pack's share."""
    event = with_object("charge.refunded", amount_refunded=125, refunded=False)

    assert parse_command(event, PLANS) == RevokeTopup(PI, 125, 500, "refund", names_topup=True)


def test_a_lost_dispute_revokes_the_whole_top_up() -> None:
    """charge.dispute.closed with status lost takes the whole pack back."""
    assert command_of("charge.dispute.closed") == RevokeTopup(PI, 500, 500, "dispute")


@pytest.mark.parametrize("status", ["won", "warning_closed", {"lost": True}])
def test_a_dispute_not_lost_changes_nothing(status: object) -> None:
    """A won or merely closed dispute is ignored."""
    command = parse_command(with_object("charge.dispute.closed", status=status), PLANS)

    assert isinstance(command, Ignore)


@pytest.mark.parametrize(
    ("name", "fields"),
    [
        pytest.param("invoice.paid", {"billing_reason": {"a": 1}}, id="reason-object"),
        pytest.param("invoice.paid", {"billing_reason": ["subscription_cycle"]}, id="reason-list"),
        pytest.param("invoice.paid", {"amount_paid": 2**63}, id="amount-past-2-to-the-63"),
        pytest.param("invoice.paid", {"amount_paid": -5}, id="amount-negative"),
        pytest.param("invoice.paid", {"amount_paid": True}, id="amount-bool"),
        pytest.param("invoice.paid", {"currency": "dollars"}, id="currency"),
        pytest.param("invoice.paid", {"customer": "cus with space"}, id="customer-id"),
        pytest.param("invoice.paid", {"customer": 2**64}, id="customer-number"),
        pytest.param("invoice.paid", {"lines": {"data": "nope"}}, id="lines-not-a-list"),
        pytest.param("charge.refunded", {"amount_refunded": 501}, id="refund-past-amount"),
        pytest.param("charge.refunded", {"payment_intent": {"id": 5}}, id="intent-object"),
        pytest.param("charge.dispute.closed", {"amount": 1.5}, id="dispute-float"),
        pytest.param("customer.subscription.updated", {"status": "free"}, id="status"),
        pytest.param("customer.subscription.updated", {"metadata": []}, id="metadata-list"),
        pytest.param(
            "customer.subscription.updated", {"metadata": {"user_id": "a b"}}, id="user-id"
        ),
        pytest.param(
            "customer.subscription.updated", {"ended_at": 2**70}, id="timestamp-past-2-to-the-70"
        ),
        pytest.param("customer.subscription.updated", {"ended_at": "2025"}, id="timestamp-text"),
        pytest.param("customer.subscription.deleted", {"id": None}, id="no-subscription-id"),
        pytest.param(
            "checkout.session.completed.topup", {"payment_intent": ["pi_1"]}, id="intent-list"
        ),
    ],
)
def test_absurd_values_in_a_signed_event_make_it_invalid(name: str, fields: dict[str, Any]) -> None:
    """Values Stripe never sends (wrong types, unbounded integers, ids no id looks like)."""
    command = parse_command(with_object(name, **fields), PLANS)

    assert isinstance(command, Invalid)


@pytest.mark.parametrize(
    "field",
    [
        pytest.param({"quantity": 2**63}, id="quantity-past-2-to-the-63"),
        pytest.param({"quantity": -1}, id="quantity-negative"),
        pytest.param({"quantity": "2"}, id="quantity-text"),
        pytest.param({"price": {"id": "price_x", "metadata": {"plan": {"a": 1}}}}, id="meta-obj"),
        pytest.param(
            {"price": {"id": "price_x", "metadata": {"tokens_per_month": "\u0661" + "\u0660" * 6}}},
            id="arabic-indic-tokens",
        ),
        pytest.param({"price": {"id": "price_x", "lookup_key": ["pro"]}}, id="lookup-key-list"),
    ],
)
def test_absurd_subscription_items_make_the_event_invalid(field: dict[str, Any]) -> None:
    """An item's quantity, price metadata and lookup key are read strictly."""
    event = load_event("customer.subscription.updated")
    event["data"]["object"]["items"]["data"][0].update(field)

    assert isinstance(parse_command(event, PLANS), Invalid)


def test_more_items_than_stripe_allows_make_the_event_invalid() -> None:
    """A subscription has at most 20 items."""
    event = load_event("customer.subscription.updated")
    items = event["data"]["object"]["items"]["data"]
    items.extend([items[1]] * 20)

    assert isinstance(parse_command(event, PLANS), Invalid)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        pytest.param("id", "evt " + "x" * 10, id="id-with-space"),
        pytest.param("id", "e" * 300, id="id-too-long"),
        pytest.param("type", "invoice.paid" * 20, id="type-too-long"),
        pytest.param("type", "Invoice Paid", id="type-charset"),
        pytest.param("created", 2**64, id="created-past-2-to-the-64"),
        pytest.param("created", -1, id="created-negative"),
    ],
)
def test_an_event_whose_header_cannot_be_claimed_has_a_problem(field: str, value: Any) -> None:
    """What the claim would store is bounded: past that, the event is invalid before claiming."""
    event = {**load_event("invoice.paid"), field: value}

    read = StripeEvents(PLANS, None).read(event)

    assert read.problem is not None


def test_a_normal_event_has_no_problem() -> None:
    """The fixtures' headers are claimable."""
    assert StripeEvents(PLANS, None).read(load_event("invoice.paid")).problem is None


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
    """Anything but a snapshot event with id, type, created and data.object is refused."""
    with pytest.raises(InvalidRequest):
        event_header(payload)


def test_line_price_reads_both_shapes() -> None:
    """An invoice line's price is found in both API shapes."""
    new = load_event("invoice.paid")["data"]["object"]["lines"]["data"][0]
    old = load_event("invoice.paid.legacy")["data"]["object"]["lines"]["data"][0]

    assert line_price(new) == line_price(old) == "price_1S2kQeLkdIwHu7ixStarterM"


def test_service_period_skips_proration_lines() -> None:
    """Proration lines do not set the service period."""
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
    """A one-off item billed with the subscription does not set the period."""
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
    """The period is read from the items (new shape) or the subscription (old shape)."""
    obj = load_event(f"customer.subscription.updated{shape}")["data"]["object"]

    snapshot = parse_subscription(obj)

    assert (snapshot.period_start, snapshot.period_end) == (at(2025, 9, 1), at(2025, 10, 1))
    assert (snapshot.status, snapshot.customer_id) == ("active", CUS)


def test_header_carries_id_type_created_and_object_id() -> None:
    """The header names the event, its type, its time and its object."""
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
    """Product look-ups wait until the event is claimed and its command read."""
    catalog = ProductCatalog({"prod_Plain": {"plan": "pro"}})

    event = StripeEvents(PLANS, catalog).read(bare_price_event())
    asked_before = list(catalog.asked)
    command = event.read_command()

    assert (asked_before, catalog.asked) == ([], ["prod_Plain"])
    assert isinstance(command, SetSubscription)
    assert (command.plan, command.tokens_per_month) == ("pro", 200_000)


def test_a_plan_only_on_the_product_without_a_provider_is_a_configuration_error() -> None:
    """Without an API key a plan kept on the product is a configuration error."""
    event = StripeEvents(PLANS, None).read(bare_price_event())

    with pytest.raises(ConfigurationError):
        event.read_command()


def test_reading_refuses_what_is_not_a_snapshot_event() -> None:
    """Reading a body that is not a snapshot event is a bad request."""
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
    """The SDK's subscription of either shape becomes a domain snapshot."""
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
    """Stripe's errors become upstream errors, retryable ones unavailable."""
    responses.get(
        SUBSCRIPTION_URL, status=status, json={"error": {"type": error_type, "message": "no"}}
    )

    with pytest.raises(expected):
        StripeBilling("sk_test_1", API, retries=0).get_subscription("sub_x")


@responses.activate
def test_unreachable_stripe_is_unavailable() -> None:
    """A connection failure is upstream unavailable."""
    responses.get(SUBSCRIPTION_URL, body=requests.ConnectionError("refused"))

    with pytest.raises(UpstreamUnavailable):
        StripeBilling("sk_test_1", API, retries=0).get_subscription("sub_x")


def test_verifier_returns_the_event_as_a_plain_dict() -> None:
    """A verified event is a plain dict; the secret's whitespace is ignored."""
    body = encode(load_event("invoice.paid"))

    event = StripeWebhookVerifier(f" {SECRET} ").verify(body, sign(body))

    assert type(event) is dict
    assert event["type"] == "invoice.paid"


def test_verifier_message_names_the_problem_without_the_secret() -> None:
    """A refused signature says why and never shows the secret."""
    body = encode(load_event("invoice.paid"))

    with pytest.raises(InvalidRequest) as raised:
        StripeWebhookVerifier(SECRET).verify(body, sign(body, "whsec_other"))

    assert "signature" in raised.value.message
    assert SECRET not in raised.value.message
