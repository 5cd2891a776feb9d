"""Send correctly signed sample Stripe events to the local (or any) stripe-webhook endpoint.

    python -m tools.stripe_events subscribe --user USER_ID --plan starter
    python -m tools.stripe_events renew|change-plan|topup|cancel --user USER_ID [--url ...]
    python -m tools.stripe_events refund --user USER_ID --payment-intent PI (what topup printed)

Events are built from the fixtures in tests/fixtures/stripe and retargeted to the user.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import hmac
import json
import secrets
import sys
import time
import urllib.error
import urllib.request
from calendar import monthrange
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from metering.settings import DEV_WEBHOOK_SECRET

ROOT = Path(__file__).resolve().parent.parent
FIXTURES_DIR = ROOT / "tests" / "fixtures" / "stripe"
DEFAULT_URL = "http://127.0.0.1:8000/functions/stripe-webhook"

Event = dict[str, Any]

# Price metadata as an operator sets it up: by plan name, by token count, or as an add-on.
PRICES: dict[str, tuple[str, str, int, dict[str, str]]] = {
    "starter": ("price_1S2kQeLkdIwHu7ixStarterM", "starter", 900, {"plan": "starter"}),
    "pro": ("price_1S2kQfLkdIwHu7ixProMonthl", "pro", 2900, {"tokens_per_month": "200000"}),
    "business": ("price_1S2kQgLkdIwHu7ixBusinessM", "business", 9900, {"plan": "business"}),
    "addon": ("price_1S2kRfLkdIwHu7ixAddon10k", "addon_10k", 300, {"addon_tokens": "10000"}),
}


def load_event(name: str) -> Event:
    """A fixture event by file name without ``.json``, e.g. ``invoice.paid.legacy``."""
    path = FIXTURES_DIR / f"{name}.json"
    document: Event = json.loads(path.read_text(encoding="utf-8"))
    return document


def new_event_id() -> str:
    return "evt_" + secrets.token_hex(12)


def _ts(value: datetime) -> int:
    return int(value.timestamp())


def price_object(name: str, template: dict[str, Any]) -> dict[str, Any]:
    """A price in the template's shape carrying the metadata of ``name`` (a plan or 'addon')."""
    price_id, lookup_key, amount, metadata = PRICES[name]
    price = copy.deepcopy(template)
    price.update(
        id=price_id,
        lookup_key=lookup_key,
        unit_amount=amount,
        unit_amount_decimal=str(amount),
        metadata=dict(metadata),
        nickname=f"{name.title()} monthly",
        product=f"prod_{name}_{price_id[-6:]}",
    )
    return price


def _plan_from_price(price: dict[str, Any], template: dict[str, Any]) -> dict[str, Any]:
    plan = copy.deepcopy(template)
    plan.update(
        id=price["id"],
        amount=price["unit_amount"],
        amount_decimal=price["unit_amount_decimal"],
        metadata=price["metadata"],
        nickname=price["nickname"],
        product=price["product"],
    )
    return plan


def invoice_id_for(subscription_id: str, period_start: datetime, billing_reason: str) -> str:
    """A stable invoice id for one payment: ``invoice.paid`` and ``invoice.payment_succeeded``
    of it name the same invoice, and every renewal names its own."""
    key = f"{subscription_id}:{_ts(period_start)}:{billing_reason}"
    return "in_dev" + hashlib.sha256(key.encode("utf-8")).hexdigest()[:20]


def retarget(
    event: Event,
    *,
    event_id: str | None = None,
    created: int | None = None,
    user_id: str | None = None,
    customer_id: str | None = None,
    subscription_id: str | None = None,
    period: tuple[datetime, datetime] | None = None,
    items: Sequence[tuple[str, int]] | None = None,
    credits: Sequence[tuple[str, int]] = (),
    status: str | None = None,
    billing_reason: str | None = None,
    session_id: str | None = None,
    topup_tokens: int | None = None,
    payment_intent: str | None = None,
    latest_invoice: str | None = None,
) -> Event:
    """A copy of ``event`` aimed at another user, customer, subscription or period, with a new
    event id unless one is given. ``items`` are (price name, quantity) pairs; an invoice's
    ``credits`` are prorated credits for the unused time of replaced ones. ``user_id`` is the
    user the billing function names in a session's, a subscription's or its invoices' metadata."""
    event = copy.deepcopy(event)
    event["id"] = event_id or new_event_id()
    if created is not None:
        event["created"] = created
    obj = event["data"]["object"]
    kind = obj.get("object")
    if kind == "checkout.session":
        _checkout(
            obj,
            user_id=user_id,
            customer_id=customer_id,
            subscription_id=subscription_id,
            session_id=session_id,
            topup_tokens=topup_tokens,
            payment_intent=payment_intent,
        )
    elif kind == "subscription":
        _subscription(
            obj,
            user_id=user_id,
            customer_id=customer_id,
            subscription_id=subscription_id,
            period=period,
            items=items,
            status=status,
            latest_invoice=latest_invoice,
        )
    elif kind == "invoice":
        _invoice(
            obj,
            user_id=user_id,
            customer_id=customer_id,
            subscription_id=subscription_id,
            period=period,
            items=items,
            credits=credits,
            billing_reason=billing_reason,
        )
    elif kind in ("charge", "dispute"):
        if customer_id is not None and kind == "charge":
            obj["customer"] = customer_id
        if payment_intent is not None:
            obj["payment_intent"] = payment_intent
    return event


def _checkout(
    session: dict[str, Any],
    *,
    user_id: str | None,
    customer_id: str | None,
    subscription_id: str | None,
    session_id: str | None,
    topup_tokens: int | None,
    payment_intent: str | None,
) -> None:
    metadata = session.setdefault("metadata", {})
    if user_id is not None:
        # As the billing function creates sessions: the user in both places.
        session["client_reference_id"] = user_id
        metadata["user_id"] = user_id
    if customer_id is not None:
        session["customer"] = customer_id
    if subscription_id is not None and session.get("mode") == "subscription":
        session["subscription"] = subscription_id
    if session_id is not None:
        session["id"] = session_id
    if payment_intent is not None and session.get("mode") == "payment":
        session["payment_intent"] = payment_intent
    if topup_tokens is not None:
        metadata["topup_tokens"] = str(topup_tokens)
        # A size that is no pack's is a custom top-up: it names no pack.
        metadata.pop("topup_id", None)


def _subscription(
    subscription: dict[str, Any],
    *,
    user_id: str | None,
    customer_id: str | None,
    subscription_id: str | None,
    period: tuple[datetime, datetime] | None,
    items: Sequence[tuple[str, int]] | None,
    status: str | None,
    latest_invoice: str | None,
) -> None:
    if user_id is not None:
        subscription["metadata"] = {**subscription.get("metadata", {}), "user_id": user_id}
    if subscription_id is not None:
        subscription["id"] = subscription_id
        subscription["items"]["url"] = f"/v1/subscription_items?subscription={subscription_id}"
    if customer_id is not None:
        subscription["customer"] = customer_id
    if status is not None:
        subscription["status"] = status
    if latest_invoice is not None:
        subscription["latest_invoice"] = latest_invoice
    entries = subscription["items"]["data"]
    if items is not None:
        template = entries[0]
        entries = []
        for name, quantity in items:
            item = copy.deepcopy(template)
            item["price"] = price_object(name, template["price"])
            item["plan"] = _plan_from_price(item["price"], template["plan"])
            item["quantity"] = quantity
            item["id"] = _item_id(name)
            entries.append(item)
        subscription["items"]["data"] = entries
        subscription["items"]["total_count"] = len(entries)
    for item in entries:
        item["subscription"] = subscription["id"]
    if period is not None:
        start, end = _ts(period[0]), _ts(period[1])
        subscription["billing_cycle_anchor"] = start
        # Older API versions keep the period on the subscription, newer ones on each item.
        if "current_period_start" in subscription:
            subscription.update(current_period_start=start, current_period_end=end)
        else:
            for item in entries:
                item.update(current_period_start=start, current_period_end=end)


def _item_id(name: str) -> str:
    return "si_" + hashlib.sha256(name.encode()).hexdigest()[:14]


def _invoice(
    invoice: dict[str, Any],
    *,
    user_id: str | None,
    customer_id: str | None,
    subscription_id: str | None,
    period: tuple[datetime, datetime] | None,
    items: Sequence[tuple[str, int]] | None,
    credits: Sequence[tuple[str, int]],
    billing_reason: str | None,
) -> None:
    legacy = "subscription" in invoice
    details = (
        invoice["subscription_details"] if legacy else invoice["parent"]["subscription_details"]
    )
    if user_id is not None:
        details["metadata"] = {**details.get("metadata", {}), "user_id": user_id}
    if customer_id is not None:
        invoice["customer"] = customer_id
    if billing_reason is not None:
        invoice["billing_reason"] = billing_reason
    if subscription_id is not None:
        if legacy:
            invoice["subscription"] = subscription_id
        else:
            details["subscription"] = subscription_id
    if items:
        template = invoice["lines"]["data"][0]
        prorated = invoice["billing_reason"] == "subscription_update"
        invoice["lines"]["data"] = [
            _line(template, name, quantity, legacy, prorated) for name, quantity in items
        ] + [
            _line(template, name, quantity, legacy, True, credit=True) for name, quantity in credits
        ]
        _totals(invoice)
    for line in invoice["lines"]["data"]:
        if subscription_id is not None:
            if legacy:
                line["subscription"] = subscription_id
            else:
                line["parent"]["subscription_item_details"]["subscription"] = subscription_id
        if period is not None:
            line["period"] = {"start": _ts(period[0]), "end": _ts(period[1])}
    if period is not None:
        start, end = period
        # The invoice's own period is the one before (empty on the first invoice).
        first = invoice["billing_reason"] == "subscription_create"
        invoice["period_start"] = _ts(start if first else start - (end - start))
        invoice["period_end"] = _ts(start)
        invoice["created"] = _ts(start)
        transitions = invoice.get("status_transitions") or {}
        transitions["finalized_at"] = _ts(start)
        # Paid at once, as a card on file pays; null while unpaid.
        transitions["paid_at"] = _ts(start) if invoice.get("status") == "paid" else None
        invoice["status_transitions"] = transitions
        subscription = invoice["subscription"] if legacy else details["subscription"]
        invoice["id"] = invoice_id_for(subscription, start, invoice["billing_reason"])
        for line in invoice["lines"]["data"]:
            line["invoice"] = invoice["id"]


def _line(
    template: dict[str, Any],
    name: str,
    quantity: int,
    legacy: bool,
    prorated: bool,
    *,
    credit: bool = False,
) -> dict[str, Any]:
    """An invoice line charging ``quantity`` of the price ``name``: its period's charge, or a
    prorated charge (the rest of the period) or credit (the unused time of a replaced price)."""
    line = copy.deepcopy(template)
    price_id, _key, unit, _metadata = PRICES[name]
    amount = unit * quantity // (2 if prorated else 1) * (-1 if credit else 1)
    label = f"{quantity} \u00d7 {name.title()}"  # Stripe writes the multiplication sign
    line.update(
        id="il_" + hashlib.sha256(f"{name}:{credit}".encode()).hexdigest()[:20],
        amount=amount,
        quantity=quantity,
        description=(f"Unused time on {label}" if credit else f"Remaining time on {label}")
        if prorated
        else f"{label} (at ${unit / 100:.2f} / month)",
    )
    if legacy:
        line["price"] = price_object(name, line["price"])
        line["plan"] = _plan_from_price(line["price"], line["plan"])
        line.update(proration=prorated, subscription_item=_item_id(name))
        if "amount_excluding_tax" in line:
            line["amount_excluding_tax"] = amount
    else:
        line["pricing"]["price_details"].update(
            price=price_id, product=f"prod_{name}_{price_id[-6:]}"
        )
        line["pricing"]["unit_amount_decimal"] = str(unit)
        item = line["parent"]["subscription_item_details"]
        item.update(proration=prorated, subscription_item=_item_id(name))
    return line


def _totals(invoice: dict[str, Any]) -> None:
    total = sum(line["amount"] for line in invoice["lines"]["data"])
    due = max(0, total)
    paid = invoice.get("status") == "paid"
    invoice["lines"]["total_count"] = len(invoice["lines"]["data"])
    for key in ("subtotal", "subtotal_excluding_tax", "total", "total_excluding_tax"):
        if key in invoice:
            invoice[key] = total
    invoice.update(
        amount_due=due, amount_paid=due if paid else 0, amount_remaining=0 if paid else due
    )


def encode(event: Event) -> bytes:
    return json.dumps(event, separators=(",", ":")).encode("utf-8")


def signature_header(payload: bytes, secret: str, timestamp: int | None = None) -> str:
    """Stripe's ``Stripe-Signature`` scheme v1: HMAC-SHA256 of ``"{t}.{body}"``."""
    stamp = int(time.time()) if timestamp is None else timestamp
    signed = f"{stamp}.".encode() + payload
    digest = hmac.new(secret.encode("utf-8"), signed, hashlib.sha256).hexdigest()
    return f"t={stamp},v1={digest}"


# -- scenarios ---------------------------------------------------------------------------------


def dev_ids(user_id: str) -> tuple[str, str]:
    """Stable customer and subscription ids for a local user."""
    digest = hashlib.sha256(user_id.encode("utf-8")).hexdigest()[:14]
    return f"cus_dev{digest}", f"sub_dev{digest}"


def one_month_later(moment: datetime) -> datetime:
    """The same day next month, clamped to its last day, as Stripe bills monthly prices."""
    year, month = (moment.year + 1, 1) if moment.month == 12 else (moment.year, moment.month + 1)
    return moment.replace(year=year, month=month, day=min(moment.day, monthrange(year, month)[1]))


def dev_payment_intent(session_id: str) -> str:
    """The PaymentIntent that paid a local top-up checkout (what a refund names)."""
    return "pi_dev" + hashlib.sha256(session_id.encode("utf-8")).hexdigest()[:20]


def scenario_events(
    scenario: str,
    user_id: str,
    plan: str,
    tokens: int,
    now: datetime,
    *,
    payment_intent: str | None = None,
) -> list[Event]:
    """The events Stripe sends for one user action, in the order it sends them. Every object
    names the user in its metadata, as those the billing function creates do, so that a seeded
    account nothing linked yet is found too."""
    customer, subscription = dev_ids(user_id)
    stamp = _ts(now)
    period = (now, one_month_later(now))
    ids: dict[str, Any] = {"customer_id": customer, "subscription_id": subscription}
    mine: dict[str, Any] = {"user_id": user_id, **ids}

    def subscription_event(kind: str, created: int, reason: str) -> Event:
        return retarget(
            load_event(kind),
            created=created,
            period=period,
            items=[(plan, 1)],
            latest_invoice=invoice_id_for(subscription, now, reason),
            **mine,
        )

    def invoice_paid(reason: str) -> Event:
        return retarget(
            load_event("invoice.paid"),
            created=stamp,
            period=period,
            items=[(plan, 1)],
            billing_reason=reason,
            **mine,
        )

    if scenario == "subscribe":
        return [
            retarget(
                load_event("checkout.session.completed.subscription"),
                created=stamp - 2,
                session_id="cs_dev_" + secrets.token_hex(16),
                **mine,
            ),
            subscription_event("customer.subscription.created", stamp - 1, "subscription_create"),
            invoice_paid("subscription_create"),
        ]
    if scenario == "renew":
        paid = invoice_paid("subscription_cycle")
        # Stripe sends both for one payment; the reset must happen once.
        succeeded = copy.deepcopy(paid)
        succeeded.update(id=new_event_id(), type="invoice.payment_succeeded")
        return [paid, succeeded]
    if scenario == "change-plan":
        # A raise takes effect once its prorated invoice is paid (portal: invoice at once).
        return [
            subscription_event("customer.subscription.updated", stamp, "subscription_update"),
            invoice_paid("subscription_update"),
        ]
    if scenario == "topup":
        session_id = "cs_dev_" + secrets.token_hex(16)
        return [
            retarget(
                load_event("checkout.session.completed.topup"),
                created=stamp,
                user_id=user_id,
                customer_id=customer,
                session_id=session_id,
                topup_tokens=tokens,
                payment_intent=dev_payment_intent(session_id),
            )
        ]
    if scenario == "refund":
        if not payment_intent:
            raise ValueError("refund needs the top-up's payment intent (--payment-intent)")
        refunded = retarget(
            load_event("charge.refunded"),
            created=stamp,
            customer_id=customer,
            payment_intent=payment_intent,
        )
        refunded["data"]["object"]["metadata"]["user_id"] = user_id
        return [refunded]
    if scenario == "cancel":
        deleted = retarget(load_event("customer.subscription.deleted"), created=stamp, **mine)
        # Stripe sends the deletion as the subscription ends.
        deleted["data"]["object"].update(ended_at=stamp, canceled_at=stamp)
        return [deleted]
    raise ValueError(f"unknown scenario {scenario!r}")


SCENARIOS = ("subscribe", "renew", "change-plan", "topup", "refund", "cancel")


def post(url: str, event: Event, secret: str) -> tuple[int, str]:
    """POST one signed event; the HTTP status and the response body."""
    body = encode(event)
    request = urllib.request.Request(  # noqa: S310 -- the URL is the operator's own endpoint
        url,
        data=body,
        method="POST",
        headers={
            "content-type": "application/json",
            "stripe-signature": signature_header(body, secret),
        },
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310
            return response.status, response.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode("utf-8", "replace")


def _when(text: str) -> datetime:
    moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("scenario", choices=SCENARIOS)
    parser.add_argument("--user", required=True, help="the Appwrite user id")
    parser.add_argument("--plan", default="starter", choices=[p for p in PRICES if p != "addon"])
    parser.add_argument("--tokens", type=int, default=100_000, help="top-up size")
    parser.add_argument(
        "--payment-intent", help="refund: the top-up's payment intent (`topup` prints it)"
    )
    parser.add_argument("--url", default=DEFAULT_URL)
    parser.add_argument("--secret", default=DEV_WEBHOOK_SECRET, help="the webhook signing secret")
    parser.add_argument(
        "--at",
        type=_when,
        default=None,
        help="pretend the events happen at this ISO-8601 time (e.g. a month later, to renew)",
    )
    parser.add_argument("--dry-run", action="store_true", help="print the events, send nothing")
    args = parser.parse_args(argv)
    now = args.at or datetime.now(UTC)
    try:
        events = scenario_events(
            args.scenario,
            args.user,
            args.plan,
            args.tokens,
            now,
            payment_intent=args.payment_intent,
        )
    except ValueError as error:
        parser.error(str(error))
    failed = False
    for event in events:
        if args.dry_run:
            print(json.dumps(event, indent=2))
            continue
        try:
            status, body = post(args.url, event, args.secret)
        except urllib.error.URLError as error:
            print(f"{event['type']}: cannot reach {args.url}: {error.reason}", file=sys.stderr)
            return 2
        print(f"{event['type']} {event['id']}: {status} {body}")
        intent = event["data"]["object"].get("payment_intent")
        if event["type"].startswith("checkout.session") and intent:
            print(f"  paid by {intent} (refund it: refund --payment-intent {intent})")
        failed = failed or status != 200
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
