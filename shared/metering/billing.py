"""Stripe events in domain words: parse a verified event into one command, decide what it changes.

Pure: reads both API shapes (2025-03-31+ and older), no I/O; product metadata is passed in.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from .account import Account, ResetPlan, plan_reset
from .errors import InvalidRequest, PlanError
from .plans import PlanCatalog
from .ports import AccountPatch
from .timeutil import next_month_start, parse_timestamp

Json = Mapping[str, Any]

# Statuses in which a subscription grants its plan; ended ones return the user to the default plan.
GRANTING_STATUSES = frozenset({"active", "trialing", "past_due"})
ENDED_STATUSES = frozenset({"canceled", "incomplete_expired"})
# Statuses in which the safety net may reset a period Stripe has moved (never unpaid periods).
RESETTABLE_STATUSES = frozenset({"active", "trialing"})
RESET_BILLING_REASONS = frozenset({"subscription_cycle", "subscription_create"})
PLAN_KEYS = ("tokens_per_month", "plan", "addon_tokens")
# Appwrite's user id rule: a checkout naming anything else can never belong to a user.
USER_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,35}")


# -- what Stripe tells us ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SubscriptionItem:
    price_id: str
    lookup_key: str | None
    price_metadata: Mapping[str, str]
    product_id: str | None
    # None when the price names its product by id only (or the product carries no plan keys).
    product_metadata: Mapping[str, str] | None
    quantity: int


@dataclass(frozen=True, slots=True)
class SubscriptionSnapshot:
    id: str
    customer_id: str | None
    status: str
    period_start: datetime | None
    period_end: datetime | None
    items: tuple[SubscriptionItem, ...]
    # When an ended subscription ended (Stripe's ``ended_at``); None while it runs.
    ended_at: datetime | None = None


class BillingProvider(Protocol):
    """Reads from the billing system what events leave out."""

    def get_subscription(self, subscription_id: str) -> SubscriptionSnapshot:
        """The subscription as it is now; raises ``UpstreamError``/``UpstreamUnavailable``."""

    def get_product_metadata(self, product_id: str) -> Mapping[str, str]: ...


# -- commands ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LinkCustomer:
    user_id: str
    customer_id: str | None
    subscription_id: str | None


@dataclass(frozen=True, slots=True)
class CreditTopup:
    user_id: str
    customer_id: str | None
    tokens: int
    session_id: str


@dataclass(frozen=True, slots=True)
class SetSubscription:
    subscription_id: str
    customer_id: str | None
    plan: str
    tokens_per_month: int
    addon_tokens: int
    status: str
    period_start: datetime | None
    period_end: datetime | None
    created: int


@dataclass(frozen=True, slots=True)
class CancelSubscription:
    subscription_id: str
    customer_id: str | None
    created: int
    # When the subscription ended, which closes its paid period; None when unknown.
    at: datetime | None = None


@dataclass(frozen=True, slots=True)
class ResetPeriod:
    subscription_id: str
    customer_id: str | None
    period_start: datetime
    period_end: datetime | None


@dataclass(frozen=True, slots=True)
class RecordPaymentFailed:
    subscription_id: str
    customer_id: str | None
    created: int


@dataclass(frozen=True, slots=True)
class Ignore:
    type: str
    reason: str = "unhandled type"


Command = (
    LinkCustomer
    | CreditTopup
    | SetSubscription
    | CancelSubscription
    | ResetPeriod
    | RecordPaymentFailed
    | Ignore
)


@dataclass(frozen=True, slots=True)
class EventHeader:
    id: str
    type: str
    created: int
    object_id: str
    object: Json


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


def _count(value: str, key: str) -> int:
    try:
        number = int(value.strip())
    except ValueError:
        number = -1
    if number < 0:
        raise PlanError(f"metadata {key} must be a non-negative integer, got {value!r}")
    return number


def event_header(payload: object) -> EventHeader:
    """The fields every snapshot event has; anything else is not an event (400)."""
    if not isinstance(payload, Mapping):
        raise InvalidRequest("body is not a Stripe event")
    event_id, event_type, created = payload.get("id"), payload.get("type"), payload.get("created")
    obj = _mapping(payload.get("data")).get("object")
    if payload.get("object") not in (None, "event") or not isinstance(obj, Mapping):
        raise InvalidRequest("body is not a Stripe snapshot event")
    if not isinstance(event_id, str) or not event_id or not isinstance(event_type, str):
        raise InvalidRequest("body is not a Stripe event: id and type are required")
    if isinstance(created, bool) or not isinstance(created, int):
        raise InvalidRequest("body is not a Stripe event: created must be an integer")
    return EventHeader(event_id, event_type, created, _id_of(obj) or "", obj)


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
                product_metadata=product_metadata if _has_plan_keys(product_metadata) else None,
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


def _has_plan_keys(metadata: Mapping[str, str]) -> bool:
    return any(key in metadata for key in PLAN_KEYS)


def _names_plan(item: SubscriptionItem, plans: PlanCatalog) -> bool:
    return _has_plan_keys(item.price_metadata) or plans.find(item.lookup_key) is not None


def products_to_fetch(snapshot: SubscriptionSnapshot, plans: PlanCatalog) -> frozenset[str]:
    """Products whose metadata must come from the billing API: their prices say nothing."""
    return frozenset(
        item.product_id
        for item in snapshot.items
        if item.product_id and item.product_metadata is None and not _names_plan(item, plans)
    )


def subscription_products(payload: Json, plans: PlanCatalog) -> frozenset[str]:
    """``products_to_fetch`` for an event, empty for events that are not about a subscription."""
    header = event_header(payload)
    if not header.type.startswith("customer.subscription.") or header.type.endswith(".deleted"):
        return frozenset()
    return products_to_fetch(parse_subscription(header.object), plans)


@dataclass(frozen=True, slots=True)
class Entitlement:
    plan: str
    tokens_per_month: int
    addon_tokens: int


def entitlement(
    snapshot: SubscriptionSnapshot,
    plans: PlanCatalog,
    products: Mapping[str, Mapping[str, str]],
) -> Entitlement:
    """Plan and add-on tokens from the items' price metadata, falling back to the product's."""
    plan: Entitlement | None = None
    addon = 0
    for item in snapshot.items:
        metadata = {**(item.product_metadata or products.get(item.product_id or "", {}))}
        metadata.update(item.price_metadata)
        if "addon_tokens" in metadata:
            addon += _count(metadata["addon_tokens"], "addon_tokens") * item.quantity
            continue
        if plan is not None:
            continue
        name = metadata.get("plan") or item.lookup_key
        named = plans.find(name)
        if "tokens_per_month" in metadata:
            tokens = _count(metadata["tokens_per_month"], "tokens_per_month")
            plan = Entitlement((named.id if named else name or item.price_id).lower(), tokens, 0)
        elif named is not None:
            plan = Entitlement(named.id, named.tokens_per_month, 0)
        elif "plan" in metadata:
            raise PlanError(f"price {item.price_id} names unknown plan {metadata['plan']!r}")
    if plan is None:
        raise PlanError(f"subscription {snapshot.id} has no item whose metadata names a plan")
    return Entitlement(plan.plan, plan.tokens_per_month, addon)


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


def parse_command(
    header: EventHeader,
    plans: PlanCatalog,
    products: Mapping[str, Mapping[str, str]] | None = None,
) -> Command:
    """The one command an event asks for; ``products`` holds fetched product metadata."""
    obj, kind = header.object, header.type
    if kind in ("checkout.session.completed", "checkout.session.async_payment_succeeded"):
        return _checkout(obj, kind)
    if kind in ("customer.subscription.created", "customer.subscription.updated"):
        snapshot = parse_subscription(obj)
        if snapshot.status in ENDED_STATUSES:
            return _cancel(snapshot, header)
        granted = entitlement(snapshot, plans, products or {})
        return SetSubscription(
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
    if kind == "customer.subscription.deleted":
        return _cancel(parse_subscription(obj), header)
    if kind in ("invoice.paid", "invoice.payment_succeeded"):
        return _paid_invoice(obj, kind)
    if kind == "invoice.payment_failed":
        subscription_id = _subscription_of_invoice(obj)
        if subscription_id is None:
            return Ignore(kind, "invoice without subscription")
        return RecordPaymentFailed(subscription_id, _id_of(obj.get("customer")), header.created)
    return Ignore(kind)


def _cancel(snapshot: SubscriptionSnapshot, header: EventHeader) -> CancelSubscription:
    # The end is the subscription's `ended_at`, as the cron reads it, so that every cancellation
    # of one subscription (deleted, updated to an ended status, the cron's) closes the same
    # period; the event's `created`, sent as it ends, when the object has none.
    ended = snapshot.ended_at or _time(header.created)
    return CancelSubscription(snapshot.id, snapshot.customer_id, header.created, ended)


def _checkout(session: Json, kind: str) -> Command:
    user_id = session.get("client_reference_id")
    if not isinstance(user_id, str) or not user_id:
        return Ignore(kind, "checkout without client_reference_id")
    if not USER_ID.fullmatch(user_id):
        return Ignore(kind, "client_reference_id is not a user id")
    customer_id = _id_of(session.get("customer"))
    topup = _metadata(session.get("metadata")).get("topup_tokens")
    paid = session.get("payment_status") in ("paid", "no_payment_required")
    if session.get("mode") == "payment" and topup is not None and paid:
        tokens = _count(topup, "topup_tokens")
        session_id = _id_of(session)
        if session_id is None:
            raise InvalidRequest("checkout session has no id")
        return CreditTopup(user_id, customer_id, tokens, session_id)
    if kind == "checkout.session.async_payment_succeeded":
        return Ignore(kind, "not a top-up")
    return LinkCustomer(user_id, customer_id, _id_of(session.get("subscription")))


def _paid_invoice(invoice: Json, kind: str) -> Command:
    if invoice.get("billing_reason") not in RESET_BILLING_REASONS:
        return Ignore(kind, f"billing_reason {invoice.get('billing_reason')!r}")
    subscription_id = _subscription_of_invoice(invoice)
    period = service_period(invoice)
    if subscription_id is None or period is None:
        return Ignore(kind, "invoice without subscription period")
    return ResetPeriod(subscription_id, _id_of(invoice.get("customer")), period[0], period[1])


# -- decisions: current state + command -> change ----------------------------------------------


def _may_follow(account: Account, subscription_id: str) -> bool:
    """Events of another subscription than the account's current one change nothing."""
    return account.stripe_subscription_id in (None, "", subscription_id)


def decide_link(account: Account, command: LinkCustomer, created: int) -> AccountPatch:
    patch: AccountPatch = {}
    if command.customer_id and command.customer_id != account.stripe_customer_id:
        patch["stripe_customer_id"] = command.customer_id
    # A subscription event newer than this checkout (e.g. its deletion) already decided.
    if (
        command.subscription_id
        and not account.stripe_subscription_id
        and created >= account.stripe_updated_at
    ):
        patch["stripe_subscription_id"] = command.subscription_id
    return patch


def decide_subscription(account: Account, command: SetSubscription) -> AccountPatch:
    """Set state from the subscription object; an update older than the one applied loses."""
    if command.created < account.stripe_updated_at:
        return {}
    # A second subscription that grants nothing (e.g. its first payment failed) must not take
    # the account away from the one it follows: its later expiry would then end the paid plan.
    if command.status not in GRANTING_STATUSES and not _may_follow(
        account, command.subscription_id
    ):
        return {}
    patch: AccountPatch = {
        "status": command.status,
        "stripe_subscription_id": command.subscription_id,
        "stripe_updated_at": command.created,
    }
    if command.customer_id:
        patch["stripe_customer_id"] = command.customer_id
    if command.status in GRANTING_STATUSES:
        patch["plan"] = command.plan
        patch["max_tokens_per_month"] = command.tokens_per_month
        patch["addon_tokens"] = command.addon_tokens
    return patch


def decide_cancel(
    account: Account, command: CancelSubscription, plans: PlanCatalog
) -> AccountPatch:
    """Back to the default plan: add-ons cleared, the remaining top-up kept. Applied after
    ``close_paid_period``, which ends the paid period (its usage moves to lifetime; top-up is
    consumed only for usage beyond the paid allowance) and starts a Demo period at the
    cancellation."""
    if command.created < account.stripe_updated_at or not _may_follow(
        account, command.subscription_id
    ):
        return {}
    default = plans.default
    return {
        "plan": default.id,
        "status": "canceled",
        "max_tokens_per_month": default.tokens_per_month,
        "addon_tokens": 0,
        "stripe_subscription_id": None,
        "stripe_updated_at": command.created,
    }


def close_paid_period(
    account: Account, command: CancelSubscription, now: datetime
) -> ResetPlan | None:
    """The reset a cancellation starts with, computed with the paid allowance still on the
    account: a Demo period from the end to the next calendar month, then the usual Demo rollover.
    None when the end is unknown or not after the period start (forward only, so every
    cancellation of one subscription, dated by the same end, closes its period once)."""
    if command.at is None:
        return None
    return plan_reset(account, command.at, next_month_start(command.at), now)


def decide_payment_failed(account: Account, command: RecordPaymentFailed) -> AccountPatch:
    # Does not claim `stripe_updated_at`: it carries no plan, so later plan updates still apply.
    if command.created < account.stripe_updated_at or not _may_follow(
        account, command.subscription_id
    ):
        return {}
    return {"status": "past_due"} if account.status != "past_due" else {}


def decide_reset(account: Account, command: ResetPeriod, now: datetime) -> ResetPlan | None:
    """The forward-only reset to the invoice's period, or None."""
    if not _may_follow(account, command.subscription_id):
        return None
    return plan_reset(account, command.period_start, command.period_end, now)


def decide_recovered_reset(
    account: Account, snapshot: SubscriptionSnapshot, now: datetime
) -> ResetPlan | None:
    """The safety net: reset to Stripe's current period if it moved and is paid for."""
    if snapshot.status not in RESETTABLE_STATUSES or snapshot.period_start is None:
        return None
    if not _may_follow(account, snapshot.id):
        return None
    return plan_reset(account, snapshot.period_start, snapshot.period_end, now)


def recovered_cancel(account: Account, snapshot: SubscriptionSnapshot) -> CancelSubscription | None:
    """The safety net: the cancellation a missed ``customer.subscription.deleted`` would have
    asked for, dated when the subscription ended (as that event is); None while it runs."""
    if snapshot.status not in ENDED_STATUSES:
        return None
    ended = snapshot.ended_at
    # Without an end date it claims nothing newer than what the account already applied, and
    # leaves the period to the calendar-month rollover.
    created = int(ended.timestamp()) if ended is not None else account.stripe_updated_at
    return CancelSubscription(snapshot.id, snapshot.customer_id, created, ended)
