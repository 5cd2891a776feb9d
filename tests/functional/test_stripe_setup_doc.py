"""docs/stripe-setup.md against the code: the lookup keys billing asks for, the metadata the
webhook and billing read and write, and every event type the webhook acts on."""

from __future__ import annotations

import re
import typing
from functools import cache
from pathlib import Path

import pytest
import stripe
from metering.adapters.stripe_events import StripeEvents
from metering.billing import PLAN_KEYS, Ignore
from metering.checkout import checkout_request, offers, return_urls
from metering.errors import MeteringError
from metering.plans import load_default_plans
from metering.ports import Price

DOC = Path(__file__).resolve().parents[2] / "docs" / "stripe-setup.md"
PLANS = load_default_plans()
# Every event type Stripe sends, as the pinned SDK declares them.
STRIPE_EVENT_TYPES = frozenset(typing.get_args(stripe.Event.__annotations__["type"]))
EVENT_NAME = re.compile(r"`([a-z_]+(?:\.[a-z_]+)+)`")


def section(title: str) -> str:
    """The doc's text under ``## title``, up to the next section."""
    text = DOC.read_text(encoding="utf-8")
    start = text.index(f"\n## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start : end if end > 0 else len(text)]


@cache
def handled_event_types() -> frozenset[str]:
    """The types the webhook does not ignore as unhandled, probed with a minimal event each."""
    events = StripeEvents(PLANS, None)
    handled = set()
    for event_type in STRIPE_EVENT_TYPES:
        event = {
            "id": "evt_probe",
            "object": "event",
            "type": event_type,
            "created": 1_764_547_200,
            "data": {"object": {"id": "obj_probe"}},
        }
        try:
            command = events.read(event).read_command()
        except MeteringError:
            # It tried to read the object as a type it knows: handled.
            handled.add(event_type)
            continue
        if command != Ignore(event_type):
            handled.add(event_type)
    return frozenset(handled)


def test_the_probe_tells_handled_from_ignored_types() -> None:
    """The probe itself: a checkout completion is handled, a payout is not."""
    assert "checkout.session.completed" in handled_event_types()
    assert "payout.paid" not in handled_event_types()


@pytest.mark.parametrize("lookup_key", [offer.id for offer in offers(PLANS)])
def test_every_lookup_key_billing_asks_for_is_in_the_price_table(lookup_key: str) -> None:
    """Each plan and pack of plans.json has its row, under its exact lookup key."""
    assert f"| `{lookup_key}` |" in section("Products, prices and lookup keys")


def test_the_price_table_names_no_other_lookup_key() -> None:
    """No row promises a price billing would never ask for."""
    table = section("Products, prices and lookup keys").split("| sells |")[1].split("\n\n")[0]
    keys = {row.split(" | ")[3].strip("`") for row in table.splitlines()[2:]}

    assert keys == {offer.id for offer in offers(PLANS)}


@pytest.mark.parametrize("key", PLAN_KEYS)
def test_every_price_metadata_key_the_webhook_reads_is_documented(key: str) -> None:
    """``tokens_per_month``, ``plan`` and ``addon_tokens`` as the webhook spells them."""
    assert f"| `{key}` |" in section("Products, prices and lookup keys")


def test_every_session_metadata_key_billing_writes_is_documented() -> None:
    """The keys on a plan's and a pack's session are the ones the Checkout section lists."""
    urls = return_urls("https://app.example.test/")
    written: set[str] = set()
    for offer in offers(PLANS):
        price = Price(f"price_{offer.id}", offer.id, 100, "usd", offer.kind == "plan")
        written |= set(checkout_request("u1", None, offer, price, urls).metadata)

    checkout = section("Checkout Sessions: created by the billing function only")
    assert written == {"user_id", "topup_id", "topup_tokens"}
    for key in written:
        assert f"metadata.{key}" in checkout


def test_every_event_type_the_webhook_handles_is_to_be_enabled() -> None:
    """An event the webhook acts on but the operator does not enable would never arrive."""
    documented = set(EVENT_NAME.findall(section("The webhook endpoint")))

    assert handled_event_types() - documented == set()


def test_the_events_to_enable_are_real_stripe_event_types() -> None:
    """A misspelt type in the table is one Stripe cannot send."""
    table = section("The webhook endpoint").split("| event | effect |")[1].split("\n\n")[0]
    named = {match for line in table.splitlines() for match in EVENT_NAME.findall(line[:90])}

    assert named
    assert named - STRIPE_EVENT_TYPES == set()
    assert {"charge.refunded", "charge.dispute.closed"} <= named


def test_the_portal_invoices_prorations_at_once_and_allows_the_plan_change() -> None:
    """Raises are granted when their invoice is paid, so the portal must invoice immediately;
    billing opens its plan change (``subscription_update``), which must be switched on."""
    portal = section("Customer Portal")

    assert "proration_behavior = always_invoice" in portal
    assert "features.subscription_update.enabled = true" in portal
    assert "features.subscription_cancel.enabled = true" in portal
