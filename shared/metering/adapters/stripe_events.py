"""Stripe's JSON in, domain words out: a verified snapshot event becomes one billing command.

Reads both API shapes (2025-03-31+ and older); pure but for the product look-ups it is handed.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import Any

from .. import billing
from ..errors import ConfigurationError, InvalidRequest
from ..plans import PlanCatalog
from ..ports import BillingProvider, SubscriptionItem, SubscriptionSnapshot
from ..timeutil import parse_timestamp

Json = Mapping[str, Any]
# Product id -> its metadata, for the products a subscription's prices leave unsaid.
ProductLookup = Callable[[frozenset[str]], Mapping[str, Mapping[str, str]]]

RESET_BILLING_REASONS = frozenset({"subscription_cycle", "subscription_create"})


class StripeEvents:
    """Verified Stripe events to ``BillingEvent``s; a plan named only on its product is read
    through ``provider`` (None without an API key: such events then fail)."""

    def __init__(self, plans: PlanCatalog, provider: BillingProvider | None) -> None:
        self._plans = plans
        self._provider = provider

    def read(self, event: Json) -> billing.BillingEvent:
        """Raises ``InvalidRequest`` for anything that is not a snapshot event."""
        header = event_header(event)
        return billing.BillingEvent(
            header, lambda: parse_command(event, self._plans, self._products)
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


def _id_of(value: object) -> str | None:
    """An id from a field that holds either the id or the expanded object."""
    if isinstance(value, str) and value:
        return value
    if isinstance(value, Mapping):
        inner = value.get("id")
        return inner if isinstance(inner, str) and inner else None
    return None


def _mapping(value: object) -> Json:
    return value if isinstance(value, Mapping) else {}


def _list_data(value: object) -> Sequence[Json]:
    data = _mapping(value).get("data")
    if not isinstance(data, list):
        return ()
    return [item for item in data if isinstance(item, Mapping)]


def _metadata(value: object) -> dict[str, str]:
    return {str(k): str(v) for k, v in _mapping(value).items() if v is not None}


def _time(value: object) -> datetime | None:
    if value is None:
        return None
    try:
        return parse_timestamp(value)
    except (ValueError, OverflowError, OSError):
        raise InvalidRequest(f"not a timestamp: {value!r}") from None


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


def parse_subscription(obj: Json) -> SubscriptionSnapshot:
    """A subscription object of either API shape: periods on the items (2025-03-31+) or on the
    subscription itself (older)."""
    subscription_id = _id_of(obj)
    if subscription_id is None:
        raise InvalidRequest("subscription has no id")
    items: list[SubscriptionItem] = []
    periods: list[tuple[datetime, datetime | None]] = []
    for item in _list_data(obj.get("items")):
        price = _mapping(item.get("price")) or _mapping(item.get("plan"))
        product = price.get("product")
        product_metadata = (
            _metadata(product.get("metadata")) if isinstance(product, Mapping) else {}
        )
        quantity = item.get("quantity")
        items.append(
            SubscriptionItem(
                price_id=_id_of(price) or "",
                lookup_key=price.get("lookup_key") or None,
                price_metadata=_metadata(price.get("metadata")),
                product_id=_id_of(product),
                product_metadata=(
                    product_metadata if billing.has_plan_keys(product_metadata) else None
                ),
                quantity=quantity if isinstance(quantity, int) and quantity >= 0 else 1,
            )
        )
        start = _time(item.get("current_period_start"))
        if start is not None:
            periods.append((start, _time(item.get("current_period_end"))))
    top_start = _time(obj.get("current_period_start"))
    if top_start is not None:
        period: tuple[datetime | None, datetime | None] = (
            top_start,
            _time(obj.get("current_period_end")),
        )
    elif periods:
        period = max(periods, key=lambda p: p[0])
    else:
        period = (None, None)
    status = obj.get("status")
    return SubscriptionSnapshot(
        id=subscription_id,
        customer_id=_id_of(obj.get("customer")),
        status=status if isinstance(status, str) else "",
        period_start=period[0],
        period_end=period[1],
        items=tuple(items),
        ended_at=_time(obj.get("ended_at")),
    )


def _subscription_of_invoice(invoice: Json) -> str | None:
    details = _mapping(_mapping(invoice.get("parent")).get("subscription_details"))
    return _id_of(details.get("subscription")) or _id_of(invoice.get("subscription"))


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
    return _id_of(details.get("price")) or _id_of(line.get("price"))


def service_period(invoice: Json) -> tuple[datetime, datetime | None] | None:
    """The period an invoice pays for, from its subscription lines (the invoice's own
    ``period_start``/``period_end`` describe the previous period on renewals)."""
    lines = [line for line in _list_data(invoice.get("lines")) if _line_is_subscription(line)]
    regular = [line for line in lines if not _line_is_proration(line)] or lines
    periods: list[tuple[datetime, datetime | None]] = []
    for line in regular:
        period = _mapping(line.get("period"))
        start = _time(period.get("start"))
        if start is not None:
            periods.append((start, _time(period.get("end"))))
    return max(periods, key=lambda p: p[0]) if periods else None


# -- events to commands --------------------------------------------------------------------------


def parse_command(
    event: Json, plans: PlanCatalog, products: ProductLookup = _no_products
) -> billing.Command:
    """The one command a snapshot event asks for; ``products`` answers the metadata of the
    products a subscription's prices leave unsaid."""
    header = event_header(event)
    obj, kind = _object(event) or {}, header.type
    if kind in ("checkout.session.completed", "checkout.session.async_payment_succeeded"):
        return _checkout(obj, kind)
    if kind == "customer.subscription.deleted":
        return _cancel(parse_subscription(obj), header)
    if kind.startswith("customer.subscription."):
        return _subscription(parse_subscription(obj), header, plans, products)
    if kind in ("invoice.paid", "invoice.payment_succeeded"):
        return _paid_invoice(obj, kind)
    if kind == "invoice.payment_failed":
        subscription_id = _subscription_of_invoice(obj)
        if subscription_id is None:
            return billing.Ignore(kind, "invoice without subscription")
        return billing.RecordPaymentFailed(
            subscription_id, _id_of(obj.get("customer")), header.created
        )
    return billing.Ignore(kind)


def _subscription(
    snapshot: SubscriptionSnapshot,
    header: billing.EventHeader,
    plans: PlanCatalog,
    products: ProductLookup,
) -> billing.Command:
    # Every subscription event but the deletion reads the products its prices leave unsaid
    # before its type or status tells whether the plan is needed: a failed look-up fails it.
    fetched = products(billing.products_to_fetch(snapshot, plans))
    if header.type not in ("customer.subscription.created", "customer.subscription.updated"):
        return billing.Ignore(header.type)
    if snapshot.status in billing.ENDED_STATUSES:
        return _cancel(snapshot, header)
    granted = billing.entitlement(snapshot, plans, fetched)
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
    )


def _cancel(
    snapshot: SubscriptionSnapshot, header: billing.EventHeader
) -> billing.CancelSubscription:
    # The end is the subscription's `ended_at`, as the cron reads it, so that every cancellation
    # of one subscription (deleted, updated to an ended status, the cron's) closes the same
    # period; the event's `created`, sent as it ends, when the object has none.
    ended = snapshot.ended_at or _time(header.created)
    return billing.CancelSubscription(snapshot.id, snapshot.customer_id, header.created, ended)


def _checkout(session: Json, kind: str) -> billing.Command:
    user_id = session.get("client_reference_id")
    if not isinstance(user_id, str) or not user_id:
        return billing.Ignore(kind, "checkout without client_reference_id")
    if not billing.USER_ID.fullmatch(user_id):
        return billing.Ignore(kind, "client_reference_id is not a user id")
    customer_id = _id_of(session.get("customer"))
    topup = _metadata(session.get("metadata")).get("topup_tokens")
    paid = session.get("payment_status") in ("paid", "no_payment_required")
    if session.get("mode") == "payment" and topup is not None and paid:
        tokens = billing.metadata_count(topup, "topup_tokens")
        session_id = _id_of(session)
        if session_id is None:
            raise InvalidRequest("checkout session has no id")
        return billing.CreditTopup(user_id, customer_id, tokens, session_id)
    if kind == "checkout.session.async_payment_succeeded":
        return billing.Ignore(kind, "not a top-up")
    return billing.LinkCustomer(user_id, customer_id, _id_of(session.get("subscription")))


def _paid_invoice(invoice: Json, kind: str) -> billing.Command:
    if invoice.get("billing_reason") not in RESET_BILLING_REASONS:
        return billing.Ignore(kind, f"billing_reason {invoice.get('billing_reason')!r}")
    subscription_id = _subscription_of_invoice(invoice)
    period = service_period(invoice)
    if subscription_id is None or period is None:
        return billing.Ignore(kind, "invoice without subscription period")
    return billing.ResetPeriod(
        subscription_id, _id_of(invoice.get("customer")), period[0], period[1]
    )
