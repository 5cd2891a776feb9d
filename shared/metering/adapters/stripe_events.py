"""Stripe's JSON in, domain words out: a verified snapshot event becomes one billing command.

Reads both API shapes (2025-03-31+ and older), strictly: a value Stripe never sends (an id that
is no id, a count in other digits, an integer past any bound) makes the event ``Invalid``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import Any

from .. import billing
from .. import settings as declared
from ..errors import ConfigurationError, InvalidRequest, PlanError
from ..plans import PlanCatalog
from ..ports import BillingProvider, Charges, SubscriptionItem, SubscriptionSnapshot
from ..timeutil import parse_timestamp

Json = Mapping[str, Any]
# Product id -> its metadata, for the products a subscription's prices leave unsaid.
ProductLookup = Callable[[frozenset[str]], Mapping[str, Mapping[str, str]]]

DEFAULT_MAX_TOKENS = declared.STRIPE_MAX_TOKENS.default
# Bounds of what Stripe sends; past them a value is absurd, whoever signed the event.
STRIPE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,254}")
EVENT_TYPE = re.compile(r"[a-z0-9_.]{1,128}")
REASON = re.compile(r"[a-z0-9_]{1,64}")
CURRENCY = re.compile(r"[a-z]{3}")
MAX_TIMESTAMP = 2**32  # Unix seconds: the year 2106
MAX_AMOUNT = 10**12  # minor units
MAX_QUANTITY = 1_000_000
MAX_ITEMS = 20  # Stripe's limit of items per subscription
MAX_LOOKUP_KEY = 200
SUBSCRIPTION_STATUSES = frozenset(
    {
        "incomplete",
        "incomplete_expired",
        "trialing",
        "active",
        "past_due",
        "canceled",
        "unpaid",
        "paused",
    }
)
CHECKOUT_TYPES = ("checkout.session.completed", "checkout.session.async_payment_succeeded")
PAID_INVOICE_TYPES = ("invoice.paid", "invoice.payment_succeeded")


class StripeEvents:
    """Verified Stripe events to ``BillingEvent``s; a plan named only on its product is read
    through ``provider`` (None without an API key: such events then fail)."""

    def __init__(
        self,
        plans: PlanCatalog,
        provider: BillingProvider | None,
        max_tokens: int = DEFAULT_MAX_TOKENS,
    ) -> None:
        self._plans = plans
        self._provider = provider
        self._max_tokens = max_tokens

    def read(self, event: Json) -> billing.BillingEvent:
        """Raises ``InvalidRequest`` for anything that is not a snapshot event."""
        header = event_header(event)
        return billing.BillingEvent(
            header,
            lambda: parse_command(event, self._plans, self._products, self._max_tokens),
            header_problem(header),
        )

    def _products(self, wanted: frozenset[str]) -> dict[str, Mapping[str, str]]:
        if not wanted:
            return {}
        if self._provider is None:
            raise ConfigurationError("price metadata is on the product: STRIPE_SECRET_KEY needed")
        return {product: self._provider.get_product_metadata(product) for product in sorted(wanted)}


def _no_products(wanted: frozenset[str]) -> Mapping[str, Mapping[str, str]]:
    return {}


# -- reading Stripe documents --------------------------------------------------------------------


def _shown(value: object) -> str:
    """A value for a message: short, whatever it is."""
    return repr(value)[:40]


def _id_of(value: object) -> str | None:
    """An id from a field that holds either the id or the expanded object."""
    if isinstance(value, str) and value:
        return value
    if isinstance(value, Mapping):
        inner = value.get("id")
        return inner if isinstance(inner, str) and inner else None
    return None


def _stripe_id(value: object, what: str) -> str | None:
    """An id (or the expanded object's), None when absent; ``InvalidRequest`` when the field
    holds something no Stripe id looks like."""
    if value is None:
        return None
    found = _id_of(value)
    if found is None or not STRIPE_ID.fullmatch(found):
        raise InvalidRequest(f"{what} is not a Stripe id: {_shown(value)}")
    return found


def _required_id(value: object, what: str) -> str:
    found = _stripe_id(value, what)
    if found is None:
        raise InvalidRequest(f"{what} is missing")
    return found


def _mapping(value: object) -> Json:
    return value if isinstance(value, Mapping) else {}


def _list_data(value: object, what: str) -> Sequence[Json]:
    data = _mapping(value).get("data")
    if data is None:
        return ()
    if not isinstance(data, list) or not all(isinstance(item, Mapping) for item in data):
        raise InvalidRequest(f"{what} is not a list of objects")
    return data


def _metadata(value: object) -> dict[str, str]:
    """Stripe metadata: string keys to string values (an unset key reads as absent)."""
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise InvalidRequest(f"metadata is not an object: {_shown(value)}")
    metadata: dict[str, str] = {}
    for key, item in value.items():
        if item is None:
            continue
        if not isinstance(key, str) or not isinstance(item, str):
            raise InvalidRequest(f"metadata {_shown(key)} is not a string: {_shown(item)}")
        metadata[key] = item
    return metadata


def _user(value: str | None, what: str) -> str | None:
    if value is not None and not billing.USER_ID.fullmatch(value):
        raise InvalidRequest(f"{what} is not a user id: {_shown(value)}")
    return value


def _integer(value: object, what: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise InvalidRequest(f"{what} is not an integer from {low} to {high}: {_shown(value)}")
    return value


def _amount(value: object, what: str) -> int:
    """Minor units; an absent amount is 0."""
    return 0 if value is None else _integer(value, what, 0, MAX_AMOUNT)


def _quantity(value: object, what: str) -> int:
    """A quantity; Stripe leaves it out (null) for some prices, which counts as one."""
    return 1 if value is None else _integer(value, what, 0, MAX_QUANTITY)


def _currency(value: object) -> str:
    if value is None:
        return ""
    if not isinstance(value, str) or not CURRENCY.fullmatch(value):
        raise InvalidRequest(f"currency is not an ISO code: {_shown(value)}")
    return value


def _text(value: object, what: str, pattern: re.Pattern[str]) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not pattern.fullmatch(value):
        raise InvalidRequest(f"{what} is not valid: {_shown(value)}")
    return value


def _instant(value: object, what: str) -> datetime:
    """Unix seconds, as Stripe writes every time."""
    try:
        return parse_timestamp(_integer(value, what, 0, MAX_TIMESTAMP - 1))
    except ValueError:
        raise InvalidRequest(f"{what} is not a time: {_shown(value)}") from None


def _time(value: object, what: str) -> datetime | None:
    return None if value is None else _instant(value, what)


def _period(
    start: datetime | None, end: datetime | None
) -> tuple[datetime | None, datetime | None]:
    if start is not None and end is not None and end < start:
        raise InvalidRequest("a period ends before it starts")
    return start, end


def _object(payload: object) -> Json | None:
    obj = _mapping(_mapping(payload).get("data")).get("object")
    return obj if isinstance(obj, Mapping) else None


def event_header(payload: object) -> billing.EventHeader:
    """The fields every snapshot event has; anything else is not an event (400)."""
    if not isinstance(payload, Mapping):
        raise InvalidRequest("body is not a Stripe event")
    event_id, event_type, created = payload.get("id"), payload.get("type"), payload.get("created")
    obj = _object(payload)
    if payload.get("object") not in (None, "event") or obj is None:
        raise InvalidRequest("body is not a Stripe snapshot event")
    if not isinstance(event_id, str) or not event_id or not isinstance(event_type, str):
        raise InvalidRequest("body is not a Stripe event: id and type are required")
    if isinstance(created, bool) or not isinstance(created, int):
        raise InvalidRequest("body is not a Stripe event: created must be an integer")
    return billing.EventHeader(event_id, event_type, created, _id_of(obj) or "")


def header_problem(header: billing.EventHeader) -> str | None:
    """Why an event cannot even be claimed (what the claim would store is absurd), or None."""
    if not STRIPE_ID.fullmatch(header.id):
        return f"event id is not a Stripe id: {_shown(header.id)}"
    if not EVENT_TYPE.fullmatch(header.type):
        return f"event type is not a Stripe event type: {_shown(header.type)}"
    if not 0 <= header.created < MAX_TIMESTAMP:
        return f"event created is not a time: {_shown(header.created)}"
    if header.object_id and not STRIPE_ID.fullmatch(header.object_id):
        return f"data.object.id is not a Stripe id: {_shown(header.object_id)}"
    return None


def _item(item: Json) -> tuple[SubscriptionItem, tuple[datetime | None, datetime | None]]:
    price = _mapping(item.get("price")) or _mapping(item.get("plan"))
    if not price:
        raise InvalidRequest("a subscription item has no price")
    product = price.get("product")
    product_metadata = _metadata(product.get("metadata")) if isinstance(product, Mapping) else {}
    lookup_key = price.get("lookup_key")
    if lookup_key is not None and (
        not isinstance(lookup_key, str) or len(lookup_key) > MAX_LOOKUP_KEY
    ):
        raise InvalidRequest(f"lookup_key is not a lookup key: {_shown(lookup_key)}")
    parsed = SubscriptionItem(
        price_id=_required_id(price.get("id"), "price id"),
        lookup_key=lookup_key or None,
        price_metadata=_metadata(price.get("metadata")),
        product_id=_stripe_id(product, "product"),
        product_metadata=(product_metadata if billing.has_plan_keys(product_metadata) else None),
        quantity=_quantity(item.get("quantity"), "item quantity"),
    )
    period = _period(
        _time(item.get("current_period_start"), "current_period_start"),
        _time(item.get("current_period_end"), "current_period_end"),
    )
    return parsed, period


def parse_subscription(obj: Json) -> SubscriptionSnapshot:
    """A subscription object of either API shape: periods on the items (2025-03-31+) or on the
    subscription itself (older)."""
    subscription_id = _required_id(obj.get("id"), "subscription id")
    entries = _list_data(obj.get("items"), "items")
    if len(entries) > MAX_ITEMS:
        raise InvalidRequest(f"a subscription has at most {MAX_ITEMS} items")
    items: list[SubscriptionItem] = []
    periods: list[tuple[datetime, datetime | None]] = []
    for entry in entries:
        item, (start, end) = _item(entry)
        items.append(item)
        if start is not None:
            periods.append((start, end))
    top_start = _time(obj.get("current_period_start"), "current_period_start")
    period: tuple[datetime | None, datetime | None]
    if top_start is not None:
        period = _period(top_start, _time(obj.get("current_period_end"), "current_period_end"))
    elif periods:
        period = max(periods, key=lambda p: p[0])
    else:
        period = (None, None)
    status = obj.get("status")
    if status not in SUBSCRIPTION_STATUSES:
        raise InvalidRequest(f"status is not a subscription status: {_shown(status)}")
    return SubscriptionSnapshot(
        id=subscription_id,
        customer_id=_stripe_id(obj.get("customer"), "customer"),
        status=str(status),
        period_start=period[0],
        period_end=period[1],
        items=tuple(items),
        ended_at=_time(obj.get("ended_at"), "ended_at"),
    )


def _subscription_user(obj: Json) -> str | None:
    """The user the billing function wrote into a subscription's metadata."""
    return _user(_metadata(obj.get("metadata")).get("user_id"), "metadata.user_id")


def _subscription_of_invoice(invoice: Json) -> str | None:
    details = _mapping(_mapping(invoice.get("parent")).get("subscription_details"))
    return _stripe_id(details.get("subscription"), "parent.subscription_details.subscription") or (
        _stripe_id(invoice.get("subscription"), "subscription")
    )


def _invoice_user(invoice: Json) -> str | None:
    """The subscription's metadata as the invoice copied it (``parent.subscription_details``
    since 2025-03-31, ``subscription_details`` before)."""
    for details in (
        _mapping(_mapping(invoice.get("parent")).get("subscription_details")),
        _mapping(invoice.get("subscription_details")),
    ):
        user_id = _metadata(details.get("metadata")).get("user_id")
        if user_id is not None:
            return _user(user_id, "subscription metadata.user_id")
    return None


def _line_is_subscription(line: Json) -> bool:
    parent = _mapping(line.get("parent"))
    if parent:
        return parent.get("type") == "subscription_item_details"
    # Older shape: one-off invoice items of the subscription (type "invoiceitem") also name it.
    if "type" in line:
        return line.get("type") == "subscription"
    return line.get("subscription") is not None


def _line_is_proration(line: Json) -> bool:
    details = _mapping(_mapping(line.get("parent")).get("subscription_item_details"))
    return bool(details.get("proration") or line.get("proration"))


def line_price(line: Json) -> str | None:
    """The price of an invoice line: ``pricing.price_details.price`` (2025-03-31+) or ``price``."""
    details = _mapping(_mapping(line.get("pricing")).get("price_details"))
    return _stripe_id(details.get("price"), "line price") or _stripe_id(
        line.get("price"), "line price"
    )


def _subscription_lines(invoice: Json) -> list[Json]:
    return [
        line for line in _list_data(invoice.get("lines"), "lines") if _line_is_subscription(line)
    ]


def service_period(invoice: Json) -> tuple[datetime, datetime | None] | None:
    """The period an invoice pays for, from its subscription lines (the invoice's own
    ``period_start``/``period_end`` describe the previous period on renewals)."""
    lines = _subscription_lines(invoice)
    regular = [line for line in lines if not _line_is_proration(line)] or lines
    periods: list[tuple[datetime, datetime | None]] = []
    for line in regular:
        period = _mapping(line.get("period"))
        start, end = _period(
            _time(period.get("start"), "line period start"),
            _time(period.get("end"), "line period end"),
        )
        if start is not None:
            periods.append((start, end))
    return max(periods, key=lambda p: p[0]) if periods else None


def charged_prices(invoice: Json) -> Charges:
    """The prices the subscription lines charged for, each at its largest quantity; credits
    (the unused time of a replaced price) are left out."""
    charged: dict[str, int] = {}
    for line in _subscription_lines(invoice):
        amount = _integer(line.get("amount", 0), "line amount", -MAX_AMOUNT, MAX_AMOUNT)
        price = line_price(line)
        if amount < 0 or price is None:
            continue
        quantity = _quantity(line.get("quantity"), "line quantity")
        charged[price] = max(charged.get(price, 0), quantity)
    return tuple(sorted(charged.items()))


# -- events to commands --------------------------------------------------------------------------


def parse_command(
    event: Json,
    plans: PlanCatalog,
    products: ProductLookup = _no_products,
    max_tokens: int = DEFAULT_MAX_TOKENS,
) -> billing.Command:
    """The one command a snapshot event asks for; ``products`` answers the metadata of the
    products a subscription's prices leave unsaid. A value no retry can fix is ``Invalid``."""
    header = event_header(event)
    obj = _object(event) or {}
    try:
        return _command(obj, header, plans, products, max_tokens)
    except (InvalidRequest, PlanError) as error:
        return billing.Invalid(header.type, error.message)


def _command(
    obj: Json,
    header: billing.EventHeader,
    plans: PlanCatalog,
    products: ProductLookup,
    max_tokens: int,
) -> billing.Command:
    kind = header.type
    if kind in CHECKOUT_TYPES:
        return _checkout(obj, header, plans, max_tokens)
    if kind == "customer.subscription.deleted":
        return _cancel(parse_subscription(obj), header, _subscription_user(obj))
    if kind.startswith("customer.subscription."):
        return _subscription(obj, header, plans, products, max_tokens)
    if kind in PAID_INVOICE_TYPES:
        return _paid_invoice(obj, header)
    if kind == "invoice.payment_failed":
        subscription_id = _subscription_of_invoice(obj)
        if subscription_id is None:
            return billing.Ignore(kind, "invoice without subscription")
        return billing.RecordPaymentFailed(
            subscription_id,
            _stripe_id(obj.get("customer"), "customer"),
            header.created,
            _invoice_user(obj),
        )
    if kind == "charge.refunded":
        return _refund(obj, kind)
    if kind == "charge.dispute.closed":
        return _dispute(obj, kind)
    return billing.Ignore(kind)


def _subscription(
    obj: Json,
    header: billing.EventHeader,
    plans: PlanCatalog,
    products: ProductLookup,
    max_tokens: int,
) -> billing.Command:
    snapshot = parse_subscription(obj)
    user_id = _subscription_user(obj)
    latest_invoice = _stripe_id(obj.get("latest_invoice"), "latest_invoice")
    # Every subscription event but the deletion reads the products its prices leave unsaid
    # before its type or status tells whether the plan is needed: a failed look-up fails it.
    fetched = products(billing.products_to_fetch(snapshot, plans))
    if header.type not in ("customer.subscription.created", "customer.subscription.updated"):
        return billing.Ignore(header.type)
    if snapshot.status in billing.ENDED_STATUSES:
        return _cancel(snapshot, header, user_id)
    granted = billing.entitlement(snapshot, plans, fetched, max_tokens)
    return billing.SetSubscription(
        subscription_id=snapshot.id,
        customer_id=snapshot.customer_id,
        plan=granted.plan,
        tokens_per_month=granted.tokens_per_month,
        addon_tokens=granted.addon_tokens,
        status=snapshot.status,
        period_start=snapshot.period_start,
        period_end=snapshot.period_end,
        created=header.created,
        user_id=user_id,
        plan_charges=granted.plan_charges,
        addon_charges=granted.addon_charges,
        latest_invoice=latest_invoice,
    )


def _cancel(
    snapshot: SubscriptionSnapshot, header: billing.EventHeader, user_id: str | None
) -> billing.CancelSubscription:
    # The end is the subscription's `ended_at`, as the cron reads it, so that every cancellation
    # of one subscription (deleted, updated to an ended status, the cron's) closes the same
    # period; the event's `created`, sent as it ends, when the object has none.
    ended = snapshot.ended_at or _instant(header.created, "created")
    return billing.CancelSubscription(
        snapshot.id, snapshot.customer_id, header.created, ended, user_id
    )


def _checkout(
    session: Json, header: billing.EventHeader, plans: PlanCatalog, max_tokens: int
) -> billing.Command:
    kind = header.type
    user_id = session.get("client_reference_id")
    metadata = _metadata(session.get("metadata"))
    owner = metadata.get("user_id")
    if user_id in (None, "") and owner is None:
        return billing.Ignore(kind, "checkout not created by the billing function")
    if not isinstance(user_id, str) or not billing.USER_ID.fullmatch(user_id):
        raise InvalidRequest(f"client_reference_id is not a user id: {_shown(user_id)}")
    # Only sessions the billing function created carry the user in their metadata too; a
    # Payment Link lets the buyer choose client_reference_id, never the metadata.
    if owner != user_id:
        raise InvalidRequest("metadata.user_id does not match client_reference_id")
    customer_id = _stripe_id(session.get("customer"), "customer")
    topup = metadata.get("topup_tokens")
    paid = session.get("payment_status") in ("paid", "no_payment_required")
    if session.get("mode") == "payment" and topup is not None and paid:
        tokens = billing.metadata_count(topup, "topup_tokens", max_tokens)
        if tokens == 0:
            raise InvalidRequest("a top-up of no tokens")
        pack_id = metadata.get("topup_id")
        if pack_id is not None:
            pack = plans.find_topup(pack_id)
            if pack is None or pack.tokens != tokens:
                raise InvalidRequest(
                    f"metadata.topup_id {_shown(pack_id)} is not a pack of {tokens}"
                )
        return billing.CreditTopup(
            user_id,
            customer_id,
            tokens,
            _required_id(session.get("id"), "checkout session id"),
            payment_intent=_stripe_id(session.get("payment_intent"), "payment_intent"),
            amount=_amount(session.get("amount_total"), "amount_total"),
            currency=_currency(session.get("currency")),
            paid_at=_instant(header.created, "created"),
        )
    if kind == "checkout.session.async_payment_succeeded":
        return billing.Ignore(kind, "not a top-up")
    return billing.LinkCustomer(
        user_id, customer_id, _stripe_id(session.get("subscription"), "subscription")
    )


def _paid_invoice(invoice: Json, header: billing.EventHeader) -> billing.Command:
    reason = _text(invoice.get("billing_reason"), "billing_reason", REASON)
    invoice_id = _required_id(invoice.get("id"), "invoice id")
    subscription_id = _subscription_of_invoice(invoice)
    customer_id = _stripe_id(invoice.get("customer"), "customer")
    if subscription_id is None and customer_id is None:
        return billing.Ignore(header.type, "invoice without customer")
    transitions = _mapping(invoice.get("status_transitions"))
    paid_at = _time(transitions.get("paid_at"), "paid_at") or _instant(header.created, "created")
    period = service_period(invoice) or (None, None)
    return billing.InvoicePaid(
        invoice_id=invoice_id,
        subscription_id=subscription_id,
        customer_id=customer_id,
        user_id=_invoice_user(invoice),
        billing_reason=reason,
        amount_paid=_amount(invoice.get("amount_paid"), "amount_paid"),
        currency=_currency(invoice.get("currency")),
        paid_at=paid_at,
        period_start=period[0],
        period_end=period[1],
        charges=charged_prices(invoice),
    )


def _refund(charge: Json, kind: str) -> billing.Command:
    payment_intent = _stripe_id(charge.get("payment_intent"), "payment_intent")
    amount = _amount(charge.get("amount"), "amount")
    refunded = _amount(charge.get("amount_refunded"), "amount_refunded")
    if refunded > amount:
        raise InvalidRequest("amount_refunded is more than the charge's amount")
    if payment_intent is None or refunded == 0:
        return billing.Ignore(kind, "no refund of a payment intent")
    names_topup = "topup_tokens" in _metadata(charge.get("metadata"))
    return billing.RevokeTopup(payment_intent, refunded, amount, "refund", names_topup)


def _dispute(dispute: Json, kind: str) -> billing.Command:
    status = dispute.get("status")
    payment_intent = _stripe_id(dispute.get("payment_intent"), "payment_intent")
    amount = _amount(dispute.get("amount"), "amount")
    if status != "lost":
        return billing.Ignore(kind, f"dispute closed {_shown(status)}")
    if payment_intent is None:
        return billing.Ignore(kind, "dispute without payment intent")
    return billing.RevokeTopup(payment_intent, amount, amount, "dispute")
