"""The stripe-webhook function through ``main(context)``: real signatures, the SQLite store."""

from __future__ import annotations

import itertools
import json
import random
import re
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import partial
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import responses
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from metering.account import Account, demo_period_due, new_account, plan_reset
from metering.errors import LimitReached, StoreError
from metering.plans import load_default_plans
from metering.ports import ClaimOutcome, Payment, PaymentKind
from metering.settings import DEV_WEBHOOK_SECRET as DEV_SECRET

from localruntime.context import RuntimeContext, RuntimeRequest, RuntimeResult, execute
from localruntime.settings import DEV_WEBHOOK_SECRET
from localruntime.sqlite_store import SQLiteStore
from tests.support.builders import ledger_entry
from tests.support.stripe_events import (
    SECRET,
    Event,
    FakeClock,
    at,
    encode,
    fixture_names,
    invoice_id_for,
    load_app,
    load_event,
    retarget,
    sign,
    unload_app,
    use,
    webhook_context,
)
from tools import stripe_events as stripe_events_tool

FUNCTION = "stripe-webhook"
SHAPES = [pytest.param("", id="api-2025"), pytest.param(".legacy", id="api-legacy")]
USER, CUSTOMER, SUBSCRIPTION = "user_ada", "cus_ada", "sub_ada"
IDS: dict[str, Any] = {"customer_id": CUSTOMER, "subscription_id": SUBSCRIPTION}
JAN, FEB, MAR = at(2025, 1, 10), at(2025, 2, 10), at(2025, 3, 10)
FEB_1 = at(2025, 2, 1)
STRIPE_API = "https://stripe.test"
PLANS = load_default_plans()


@dataclass
class Webhook:
    main: Callable[..., Any]
    store: SQLiteStore
    db_path: str
    clock: FakeClock

    def deliver(self, event: Event) -> RuntimeResult:
        return execute(self.main, webhook_context(event))

    def account(self) -> Account:
        account = self.store.get_account(USER)
        assert account is not None
        return account


def plan_state(account: Account) -> tuple[str, int, str | None]:
    """The account's plan, its monthly tokens and the plan it waits to pay for, if any."""
    return (account.plan, account.max_tokens_per_month, account.pending_plan)


def environ(db_path: str, **extra: str) -> dict[str, str]:
    return {
        "STRIPE_WEBHOOK_SECRET": SECRET,
        "APPWRITE_FUNCTION_API_ENDPOINT": "http://127.0.0.1:9/v1",
        "APPWRITE_FUNCTION_PROJECT_ID": "webhook-test",
        **extra,
    }


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(at(2024, 12, 20))


def start_webhook(db_path: str, clock: FakeClock, **extra: str) -> Webhook:
    """The function started cold over a SQLite store at ``db_path``; ``extra`` adds settings."""
    store = SQLiteStore(db_path)
    main = load_app(FUNCTION, environ(db_path, **extra), clock=clock, store=store)
    return Webhook(main, store, db_path, clock)


@pytest.fixture
def webhook(tmp_path: Path, clock: FakeClock) -> Iterator[Webhook]:
    yield start_webhook(str(tmp_path / "metering.sqlite3"), clock)
    unload_app(FUNCTION)


@pytest.fixture
def api_webhook(tmp_path: Path, clock: FakeClock) -> Iterator[Webhook]:
    """The webhook with a Stripe API key, reading what an event leaves out from STRIPE_API."""
    yield start_webhook(
        str(tmp_path / "m.sqlite3"),
        clock,
        STRIPE_SECRET_KEY="sk_test_123",
        STRIPE_API_BASE=STRIPE_API,
    )
    unload_app(FUNCTION)


TABLES = ("subscriptions", "usage_events", "claims", "payments")
Items = list[tuple[str, int]]


def row_counts(db_path: str) -> dict[str, int]:
    if not Path(db_path).exists():
        return {}
    with sqlite3.connect(db_path) as connection:
        return {t: connection.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0] for t in TABLES}


def checkout(shape: str = "", created: int = 0) -> Event:
    return retarget(
        load_event(f"checkout.session.completed.subscription{shape}"),
        user_id=USER,
        created=created or int(JAN.timestamp()) - 10,
        **IDS,
    )


def subscription_event(
    kind: str,
    shape: str,
    created: datetime,
    items: Items | None = None,
    *,
    user: str | None = USER,
    invoice: tuple[datetime, str] | None = None,
    **kw: Any,
) -> Event:
    """A subscription event of the billing function's subscription (its metadata names
    ``user``); ``invoice`` is the (period start, billing reason) of its latest invoice."""
    latest = invoice_id_for(SUBSCRIPTION, *invoice) if invoice else None
    event = retarget(
        load_event(f"customer.subscription.{kind}{shape}"),
        created=int(created.timestamp()),
        items=items,
        user_id=user,
        latest_invoice=latest,
        **IDS,
        **kw,
    )
    if user is None:
        event["data"]["object"]["metadata"] = {}
    return event


def ended(kind: str, shape: str, when: datetime) -> Event:
    """A subscription event sent as the subscription ended at ``when``."""
    event = subscription_event(kind, shape, when, status="canceled")
    event["data"]["object"].update(ended_at=event["created"], canceled_at=event["created"])
    return event


def invoice_event(
    kind: str,
    shape: str,
    period: tuple[datetime, datetime],
    reason: str = "subscription_cycle",
    items: Items | None = None,
    *,
    credits: Items | None = None,
) -> Event:
    """An invoice of the subscription for ``period`` charging ``items`` (Starter by default)."""
    return retarget(
        load_event(f"invoice.{kind}{shape}"),
        created=int(period[0].timestamp()) + 3600,
        period=period,
        billing_reason=reason,
        items=items or [("starter", 1)],
        credits=credits or [],
        user_id=USER,
        **IDS,
    )


def plan_change(
    shape: str, when: datetime, items: Items, credits: Items, period_end: datetime = FEB
) -> list[Event]:
    """What Stripe sends for a change in the portal (prorations invoiced at once): the update,
    then the paid invoice charging the rest of the period of the new items."""
    return [
        subscription_event("updated", shape, when, items, invoice=(when, "subscription_update")),
        invoice_event(
            "paid", shape, (when, period_end), "subscription_update", items, credits=credits
        ),
    ]


def topup_event(session_id: str, tokens: int, created: datetime, shape: str = "") -> Event:
    return retarget(
        load_event(f"checkout.session.completed.topup{shape}"),
        user_id=USER,
        customer_id=CUSTOMER,
        session_id=session_id,
        topup_tokens=tokens,
        payment_intent=payment_intent_of(session_id),
        created=int(created.timestamp()),
    )


def payment_intent_of(session_id: str) -> str:
    return "pi_" + session_id.removeprefix("cs_test_")


def subscribe(webhook: Webhook, shape: str = "", plan: str = "starter") -> None:
    """Checkout, subscription and its first paid invoice for January."""
    for event in (
        checkout(shape),
        subscription_event(
            "created",
            shape,
            JAN,
            [(plan, 1)],
            period=(JAN, FEB),
            invoice=(JAN, "subscription_create"),
        ),
        invoice_event("paid", shape, (JAN, FEB), "subscription_create", [(plan, 1)]),
    ):
        assert webhook.deliver(event).status_code == 200


# -- every event type, both API shapes -------------------------------------------------------


@pytest.mark.parametrize("shape", SHAPES)
def test_checkout_links_customer_and_subscription_to_the_user(webhook: Webhook, shape: str) -> None:
    """The billing function's checkout links its customer and subscription, plan unchanged."""
    result = webhook.deliver(checkout(shape))

    assert (result.status_code, result.json()) == (200, {"received": True})
    account = webhook.account()
    assert (account.stripe_customer_id, account.stripe_subscription_id) == (CUSTOMER, SUBSCRIPTION)
    assert account.plan == "demo"


@pytest.mark.parametrize("shape", SHAPES)
def test_subscription_created_grants_plan_and_addons_once_its_first_invoice_is_paid(
    webhook: Webhook, shape: str
) -> None:
    """The new subscription is pending until the invoice charging it is paid."""
    items = [("starter", 1), ("addon", 3)]
    webhook.deliver(checkout(shape))
    created = subscription_event("created", shape, JAN, items)

    assert webhook.deliver(created).status_code == 200
    pending = webhook.account()
    paid = webhook.deliver(invoice_event("paid", shape, (JAN, FEB), "subscription_create", items))

    assert (pending.plan, pending.max_tokens_per_month, pending.addon_tokens) == ("demo", 30, 0)
    assert (pending.pending_plan, pending.pending_tokens_per_month) == ("starter", 50_000)
    assert (pending.status, pending.pending_addon_tokens) == ("active", 30_000)
    assert paid.status_code == 200
    account = webhook.account()
    assert (account.plan, account.max_tokens_per_month, account.addon_tokens) == (
        "starter",
        50_000,
        30_000,
    )
    assert (account.pending_plan, account.period_start) == (None, JAN)


@pytest.mark.parametrize("shape", SHAPES)
def test_fixture_subscription_counts_addon_quantity(webhook: Webhook, shape: str) -> None:
    """The fixture's Starter and two 10k add-ons ask for 50,000 plus 20,000 tokens."""
    webhook.deliver(checkout(shape))
    event = retarget(load_event(f"customer.subscription.updated{shape}"), **IDS)

    webhook.deliver(event)

    account = webhook.account()
    assert (account.pending_tokens_per_month, account.pending_addon_tokens) == (50_000, 20_000)


@pytest.mark.parametrize("shape", SHAPES)
def test_an_upgrade_takes_effect_when_its_prorated_invoice_is_paid_without_reset(
    webhook: Webhook, shape: str
) -> None:
    """Starter to Pro: nothing on the update alone, Pro once the prorations are paid."""
    subscribe(webhook, shape)
    use(webhook.store, USER, "req-1", 700, JAN)
    updated, paid = plan_change(shape, JAN + timedelta(days=5), [("pro", 1)], [("starter", 1)])

    webhook.deliver(updated)
    before = webhook.account()
    result = webhook.deliver(paid)

    assert (before.plan, before.max_tokens_per_month, before.pending_plan) == (
        "starter",
        50_000,
        "pro",
    )
    assert '"event":"stripe.webhook.plan_granted"' in result.logs[-1]
    account = webhook.account()
    assert (account.plan, account.max_tokens_per_month, account.addon_tokens) == ("pro", 200_000, 0)
    assert (account.current_tokens_used, account.period_start) == (700, JAN)


@pytest.mark.parametrize("shape", SHAPES)
def test_an_upgrade_whose_invoice_was_paid_before_the_update_arrived_is_granted(
    webhook: Webhook, shape: str
) -> None:
    """Events come in any order: the update finds its paid invoice recorded."""
    subscribe(webhook, shape)
    updated, paid = plan_change(shape, JAN + timedelta(days=5), [("pro", 1)], [("starter", 1)])

    webhook.deliver(paid)
    webhook.deliver(updated)

    assert plan_state(webhook.account()) == ("pro", 200_000, None)


def test_a_downgrade_applies_at_once(webhook: Webhook) -> None:
    """Lowering the allowance needs no payment: it applies on the update."""
    subscribe(webhook, plan="business")

    webhook.deliver(subscription_event("updated", "", JAN + timedelta(days=5), [("starter", 1)]))

    assert plan_state(webhook.account()) == ("starter", 50_000, None)


def test_upgrade_spend_and_downgrade_before_paying_gains_nothing(webhook: Webhook) -> None:
    """The attack: raise the plan, spend it, lower it before the prorations are charged."""
    subscribe(webhook)
    upgraded_at = JAN + timedelta(days=5)
    updated, unpaid = plan_change("", upgraded_at, [("business", 1)], [("starter", 1)])

    webhook.deliver(updated)
    upgraded = webhook.account()
    # Spending what Business would allow: the cap is still Starter's.
    use(webhook.store, USER, "req-1", upgraded.limit, upgraded_at)
    with pytest.raises(LimitReached):
        webhook.store.open_request(
            ledger_entry(USER, "req-2", period_start=JAN, held_tokens=1), webhook.account().limit
        )
    downgraded_at = upgraded_at + timedelta(hours=1)
    webhook.deliver(subscription_event("updated", "", downgraded_at, [("starter", 1)]))
    # Had the prorations been charged after all, they would grant what is no longer asked for.
    late = webhook.deliver(unpaid)

    account = webhook.account()
    assert upgraded.limit == 50_000
    assert late.status_code == 200
    assert plan_state(account) == ("starter", 50_000, None)
    assert account.current_tokens_used == 50_000


def test_more_addon_quantity_waits_for_its_invoice(webhook: Webhook) -> None:
    """Two more add-ons are granted when the invoice charging five is paid, not before."""
    items = [("starter", 1), ("addon", 3)]
    for event in (
        checkout(),
        subscription_event("created", "", JAN, items),
        invoice_event("paid", "", (JAN, FEB), "subscription_create", items),
    ):
        webhook.deliver(event)
    updated, paid = plan_change("", JAN + timedelta(days=3), [("starter", 1), ("addon", 5)], [])

    webhook.deliver(updated)
    before = webhook.account().addon_tokens
    webhook.deliver(paid)

    assert (before, webhook.account().addon_tokens) == (30_000, 50_000)


@pytest.mark.parametrize("kind", ["paid", "payment_succeeded"])
@pytest.mark.parametrize("shape", SHAPES)
def test_paid_renewal_resets_to_the_invoice_line_period(
    webhook: Webhook, shape: str, kind: str
) -> None:
    """A paid renewal resets usage to the line's period, moving it to lifetime."""
    subscribe(webhook, shape)
    use(webhook.store, USER, "req-1", 1_200, JAN)

    result = webhook.deliver(invoice_event(kind, shape, (FEB, MAR)))

    assert result.status_code == 200
    account = webhook.account()
    assert (account.period_start, account.period_end) == (FEB, MAR)
    assert (account.current_tokens_used, account.lifetime_tokens_used) == (0, 1_200)
    assert account.last_token_reset_at == webhook.clock.now


@pytest.mark.parametrize("shape", SHAPES)
def test_invoice_paid_and_payment_succeeded_for_one_payment_reset_once(
    webhook: Webhook, shape: str
) -> None:
    """The two events of one payment reset once."""
    subscribe(webhook, shape)
    use(webhook.store, USER, "req-1", 500, JAN)
    paid = invoice_event("paid", shape, (FEB, MAR))
    webhook.deliver(paid)
    use(webhook.store, USER, "req-2", 40, FEB)  # used in the new period

    succeeded = invoice_event("payment_succeeded", shape, (FEB, MAR))
    assert webhook.deliver(succeeded).status_code == 200

    account = webhook.account()
    assert (account.current_tokens_used, account.lifetime_tokens_used) == (40, 500)


@pytest.mark.parametrize("shape", SHAPES)
def test_invoice_for_a_plan_change_does_not_reset(webhook: Webhook, shape: str) -> None:
    """A plan change's prorated invoice starts no period."""
    subscribe(webhook, shape)
    use(webhook.store, USER, "req-1", 300, JAN)

    webhook.deliver(invoice_event("paid", shape, (FEB, MAR), "subscription_update"))

    assert (webhook.account().current_tokens_used, webhook.account().period_start) == (300, JAN)


@pytest.mark.parametrize("shape", SHAPES)
def test_payment_failed_marks_past_due_without_reset(webhook: Webhook, shape: str) -> None:
    """A failed renewal marks past due and keeps the period."""
    subscribe(webhook, shape)
    use(webhook.store, USER, "req-1", 300, JAN)

    webhook.deliver(invoice_event("payment_failed", shape, (FEB, MAR)))

    account = webhook.account()
    assert (account.status, account.current_tokens_used, account.period_start) == (
        "past_due",
        300,
        JAN,
    )


@pytest.mark.parametrize("shape", SHAPES)
def test_topup_checkout_credits_one_time_tokens(webhook: Webhook, shape: str) -> None:
    """A paid top-up adds its pack to the one-time balance."""
    result = webhook.deliver(topup_event("cs_test_topup_1", 100_000, JAN, shape))

    assert result.status_code == 200
    account = webhook.account()
    assert (account.topup_tokens, account.stripe_customer_id) == (100_000, CUSTOMER)
    assert account.limit == 30 + 100_000


@pytest.mark.parametrize("shape", SHAPES)
def test_subscription_deleted_returns_to_demo_keeping_topups(webhook: Webhook, shape: str) -> None:
    """A deletion returns to Demo, clearing add-ons and keeping the top-up."""
    subscribe(webhook, shape, plan="business")
    webhook.deliver(topup_event("cs_test_topup_1", 5_000, JAN + timedelta(days=1)))

    webhook.deliver(ended("deleted", shape, JAN + timedelta(days=9)))

    account = webhook.account()
    assert (account.plan, account.max_tokens_per_month, account.addon_tokens) == ("demo", 30, 0)
    assert (account.topup_tokens, account.stripe_subscription_id) == (5_000, None)
    assert account.status == "canceled"
    # The paid period is closed; a Demo period runs from the cancellation to the month's end.
    assert (account.period_start, account.period_end) == (JAN + timedelta(days=9), FEB_1)


ENDED = JAN + timedelta(days=9)


def demo_rollover(webhook: Webhook, now: datetime) -> Account:
    """The cron's Demo month rollover, applied to the account as it is."""
    account = webhook.account()
    due = demo_period_due(account, now)
    assert due is not None
    reset = plan_reset(account, due[0], due[1], now)
    assert reset is not None
    assert webhook.store.apply_reset(reset, account.period_start) is not None
    return webhook.account()


def test_cancellation_keeps_a_topup_the_paid_usage_never_needed_through_the_demo_rollover(
    webhook: Webhook,
) -> None:
    """A top-up the paid usage never needed survives the cancellation and the Demo rollover."""
    subscribe(webhook)  # Starter: 50,000 a month
    webhook.deliver(topup_event("cs_test_topup_1", 500, JAN + timedelta(days=1)))
    use(webhook.store, USER, "req-1", 4_000, JAN)

    webhook.deliver(ended("deleted", "", ENDED))
    canceled = webhook.account()
    use(webhook.store, USER, "req-2", 10, ENDED)
    rolled = demo_rollover(webhook, at(2025, 2, 1, 1))

    assert (canceled.plan, canceled.period_start, canceled.period_end) == ("demo", ENDED, FEB_1)
    assert (canceled.current_tokens_used, canceled.lifetime_tokens_used) == (0, 4_000)
    assert canceled.resets_at == FEB_1
    assert (rolled.period_start, rolled.topup_tokens, rolled.lifetime_tokens_used) == (
        FEB_1,
        500,
        4_010,
    )


def test_cancellation_consumes_exactly_the_top_up_used_beyond_the_paid_allowance(
    webhook: Webhook,
) -> None:
    """The cancellation consumes only the top-up used beyond Starter's allowance."""
    subscribe(webhook)
    webhook.deliver(topup_event("cs_test_topup_1", 5_000, JAN + timedelta(days=1)))
    use(webhook.store, USER, "req-1", 52_000, JAN)

    webhook.deliver(ended("deleted", "", ENDED))

    account = webhook.account()
    assert (account.topup_tokens, account.current_tokens_used) == (3_000, 0)
    assert account.lifetime_tokens_used == 52_000


def test_two_events_ending_one_subscription_close_its_period_once(webhook: Webhook) -> None:
    """An update to canceled and the deletion close the period once."""
    subscribe(webhook)
    use(webhook.store, USER, "req-1", 4_000, JAN)
    updated = ended("updated", "", ENDED)
    deleted = ended("deleted", "", ENDED)
    deleted["created"] += 60  # sent a minute later, about the same end

    webhook.deliver(updated)
    use(webhook.store, USER, "req-2", 20, ENDED)
    result = webhook.deliver(deleted)

    assert result.status_code == 200
    account = webhook.account()
    assert (account.period_start, account.current_tokens_used) == (ENDED, 20)
    assert (account.lifetime_tokens_used, account.stripe_updated_at) == (
        4_000,
        deleted["created"],
    )


def test_unknown_event_type_is_acknowledged_and_changes_nothing(webhook: Webhook) -> None:
    """An unhandled type answers 200 and is logged as ignored."""
    subscribe(webhook)
    before = webhook.account()

    result = webhook.deliver(load_event("customer.created"))

    assert (result.status_code, result.json()) == (200, {"received": True})
    assert webhook.account() == before
    assert '"event":"stripe.webhook.ignored"' in result.logs[-1]


@pytest.mark.parametrize("kind", ["subscription", "topup"])
def test_checkout_naming_no_possible_user_is_acknowledged_and_stores_nothing(
    webhook: Webhook, kind: str
) -> None:
    """An invalid checkout answers 200 (no retry can fix it), logs an error, stores nothing."""
    event = retarget(load_event(f"checkout.session.completed.{kind}"), customer_id=CUSTOMER)
    event["data"]["object"]["client_reference_id"] = "order-" + "9" * 40  # not a user id

    first, retry = webhook.deliver(event), webhook.deliver(event)

    assert (first.status_code, retry.status_code) == (200, 200)
    for result in (first, retry):
        assert '"event":"stripe.webhook.invalid"' in result.logs[-1]
        assert '"level":"error"' in result.logs[-1]
    assert not any(row_counts(webhook.db_path).values())


def test_checkout_of_someone_elses_product_is_ignored(webhook: Webhook) -> None:
    """A session with no user anywhere (another product on the account) is simply ignored."""
    event = retarget(load_event("checkout.session.completed.subscription"), customer_id=CUSTOMER)
    session = event["data"]["object"]
    session.update(client_reference_id=None, metadata={})

    result = webhook.deliver(event)

    assert (result.status_code, row_counts(webhook.db_path)["subscriptions"]) == (200, 0)
    assert '"event":"stripe.webhook.ignored"' in result.logs[-1]


def test_each_outcome_is_one_log_line_with_event_id_and_type(webhook: Webhook) -> None:
    """One structured line per delivery, with the event's id and type."""
    event = checkout()

    result = webhook.deliver(event)

    assert result.logs == [
        '{"event":"stripe.webhook.linked","eventId":"' + event["id"] + '",'
        '"type":"checkout.session.completed"}'
    ]


def test_older_subscription_update_does_not_overwrite_a_newer_one(webhook: Webhook) -> None:
    """An older update arriving late loses to the newer pending one."""
    subscribe(webhook)
    newer = subscription_event("updated", "", FEB, [("business", 1)])
    older = subscription_event("updated", "", JAN + timedelta(days=3), [("pro", 1)])

    webhook.deliver(newer)
    webhook.deliver(older)

    assert (webhook.account().plan, webhook.account().pending_plan) == ("starter", "business")


def test_reset_for_an_older_period_after_a_newer_one_is_a_no_op(webhook: Webhook) -> None:
    """A renewal of an older period after a newer one changes nothing."""
    subscribe(webhook)
    webhook.deliver(invoice_event("paid", "", (MAR, at(2025, 4, 10))))
    use(webhook.store, USER, "req-1", 250, MAR)

    webhook.deliver(invoice_event("paid", "", (FEB, MAR)))

    account = webhook.account()
    assert (account.period_start, account.current_tokens_used) == (MAR, 250)


def test_event_for_an_unlinked_customer_fails_so_that_stripe_retries(webhook: Webhook) -> None:
    """A subscription naming no user, of a customer no account is linked to, waits (500)."""
    event = subscription_event("created", "", JAN, [("pro", 1)], user=None)

    first = webhook.deliver(event)
    webhook.deliver(checkout())
    retry = webhook.deliver(event)

    assert first.status_code == 500
    assert first.json() == {
        "error": {
            "code": "internal",
            "message": "Something went wrong on our side. Please try again.",
        }
    }
    assert retry.status_code == 200
    assert webhook.account().pending_plan == "pro"


def test_a_subscription_naming_its_user_is_applied_before_its_checkout(webhook: Webhook) -> None:
    """The subscription's metadata finds the user first: no retry needed for the order."""
    event = subscription_event("created", "", JAN, [("pro", 1)])

    result = webhook.deliver(event)

    assert result.status_code == 200
    account = webhook.account()
    assert (account.stripe_subscription_id, account.pending_plan) == (SUBSCRIPTION, "pro")


def test_checkout_after_the_deletion_does_not_relink_the_subscription(webhook: Webhook) -> None:
    """A late checkout does not relink a subscription already deleted."""
    subscribe(webhook)
    webhook.deliver(ended("deleted", "", FEB))

    webhook.deliver(checkout(created=int(JAN.timestamp()) - 5))

    assert webhook.account().stripe_subscription_id is None


# -- signatures and bad bodies -------------------------------------------------------------------


def _now() -> int:
    return int(time.time())


def _bad_requests() -> list[Any]:
    event = checkout()
    body = encode(event)
    thin = encode(load_event("v2.thin_event"))
    not_json = b"<xml>not an event</xml>"
    not_event = b'{"hello": "world"}'
    latin1 = "caf\xe9".encode("latin-1")
    return [
        pytest.param(body, None, id="missing-header"),
        pytest.param(body, "t=oops,v1=nothex", id="malformed-header"),
        pytest.param(body, "v1=" + "0" * 64, id="header-without-timestamp"),
        pytest.param(body, sign(body, "whsec_someone_else"), id="wrong-secret"),
        pytest.param(body, sign(body, SECRET, _now() - 301), id="stale-timestamp"),
        pytest.param(body.replace(b"user_ada", b"user_eve"), sign(body), id="tampered-body"),
        pytest.param(not_json, sign(not_json), id="not-json"),
        pytest.param(not_event, sign(not_event), id="json-but-not-an-event"),
        pytest.param(b"[]", sign(b"[]"), id="json-array"),
        pytest.param(thin, sign(thin), id="thin-v2-event"),
        pytest.param(latin1, "t=1,v1=00", id="not-utf8"),
    ]


@pytest.mark.parametrize(("body", "signature"), _bad_requests())
def test_bad_signature_or_body_is_400_and_stores_nothing(
    webhook: Webhook, body: bytes, signature: str | None
) -> None:
    """Bad signatures and bodies that are no events answer 400 and store nothing."""
    context = webhook_context(body, signature=signature or "")

    result = execute(webhook.main, context)

    assert result.status_code == 400
    assert result.json()["error"]["code"] == "invalid_request"
    assert not any(row_counts(webhook.db_path).values())


def test_get_is_refused_with_400(webhook: Webhook) -> None:
    """Only POST is accepted."""
    result = execute(webhook.main, webhook_context(checkout(), method="GET"))

    assert (result.status_code, result.json()["error"]["code"]) == (400, "invalid_request")


def test_signing_secret_surrounding_whitespace_is_ignored(tmp_path: Path) -> None:
    """A secret pasted with whitespace still verifies."""
    db_path = str(tmp_path / "m.sqlite3")
    env = environ(db_path, STRIPE_WEBHOOK_SECRET=f"  {SECRET}\n")
    main = load_app(FUNCTION, env, store=SQLiteStore(db_path))
    try:
        assert execute(main, webhook_context(checkout())).status_code == 200
    finally:
        unload_app(FUNCTION)


def test_refuses_to_run_without_a_webhook_secret(tmp_path: Path) -> None:
    """Without STRIPE_WEBHOOK_SECRET every call is a 500 naming the configuration error."""
    env = environ(str(tmp_path / "m.sqlite3"))
    del env["STRIPE_WEBHOOK_SECRET"]
    main = load_app(FUNCTION, env)
    try:
        result = execute(main, webhook_context(checkout()))
    finally:
        unload_app(FUNCTION)

    assert (result.status_code, result.json()["error"]["code"]) == (500, "internal")
    assert "STRIPE_WEBHOOK_SECRET is required" in result.errors[-1]
    assert "ConfigurationError" in result.errors[-1]
    assert not any(row_counts(str(tmp_path / "m.sqlite3")).values())


# -- exactly once ------------------------------------------------------------------------------


def _duplicate_cases() -> list[Any]:
    cases = []
    for shape in ("", ".legacy"):
        cases += [
            pytest.param(lambda s=shape: checkout(s), id=f"checkout{shape}"),
            pytest.param(
                lambda s=shape: topup_event("cs_test_dup", 9_000, FEB, s), id=f"topup{shape}"
            ),
            pytest.param(
                lambda s=shape: subscription_event("created", s, FEB, [("business", 1)]),
                id=f"created{shape}",
            ),
            pytest.param(
                lambda s=shape: subscription_event("updated", s, FEB, [("pro", 1), ("addon", 2)]),
                id=f"updated{shape}",
            ),
            pytest.param(lambda s=shape: ended("deleted", s, FEB), id=f"deleted{shape}"),
            pytest.param(lambda s=shape: invoice_event("paid", s, (FEB, MAR)), id=f"paid{shape}"),
            pytest.param(
                lambda s=shape: invoice_event("payment_succeeded", s, (FEB, MAR)),
                id=f"succeeded{shape}",
            ),
            pytest.param(
                lambda s=shape: invoice_event("payment_failed", s, (FEB, MAR)), id=f"failed{shape}"
            ),
        ]
    return cases


@pytest.mark.parametrize("make_event", _duplicate_cases())
def test_ten_deliveries_of_one_event_change_state_once(
    webhook: Webhook, make_event: Callable[[], Event]
) -> None:
    """Nine more deliveries of an event are duplicates that change nothing."""
    subscribe(webhook)
    use(webhook.store, USER, "req-1", 800, JAN)
    event = make_event()
    webhook.deliver(event)
    after_one = webhook.account()
    # Usage in between: a second application (a reset) would be visible on the counter.
    use(webhook.store, USER, "req-2", 5, JAN)
    expected = after_one.current_tokens_used + 5

    results = [webhook.deliver(event) for _ in range(9)]

    assert {r.status_code for r in results} == {200}
    account = webhook.account()
    assert account.current_tokens_used == expected
    assert (account.topup_tokens, account.lifetime_tokens_used, account.plan) == (
        after_one.topup_tokens,
        after_one.lifetime_tokens_used,
        after_one.plan,
    )
    assert all('"event":"stripe.webhook.duplicate"' in r.logs[-1] for r in results)


def test_two_events_for_one_checkout_session_credit_the_topup_once(webhook: Webhook) -> None:
    """completed and async_payment_succeeded of one session credit once."""
    completed = topup_event("cs_test_async", 7_000, JAN)
    succeeded = retarget(completed, created=completed["created"] + 60)
    succeeded["type"] = "checkout.session.async_payment_succeeded"

    webhook.deliver(completed)
    webhook.deliver(succeeded)

    assert webhook.account().topup_tokens == 7_000


# -- failures while applying -------------------------------------------------------------------


class FlakyStore(SQLiteStore):
    """The real store, failing the named operation a number of times."""

    def __init__(self, path: str, operation: str, times: int = 1) -> None:
        super().__init__(path)
        self.failures = {operation: times}

    def _maybe_fail(self, operation: str) -> None:
        if self.failures.get(operation, 0) > 0:
            self.failures[operation] -= 1
            raise StoreError(f"injected failure in {operation}")

    def add_topup(self, user_id: str, tokens: int) -> Account:
        self._maybe_fail("add_topup")
        return super().add_topup(user_id, tokens)

    def apply_reset(self, reset: Any, previous_period_start: datetime) -> Account | None:
        self._maybe_fail("apply_reset")
        return super().apply_reset(reset, previous_period_start)

    def update_account(self, user_id: str, patch: Any) -> Account:
        self._maybe_fail("update_account")
        return super().update_account(user_id, patch)

    def complete_event(self, event_id: str, outcome: str, now: datetime) -> None:
        self._maybe_fail("complete_event")
        super().complete_event(event_id, outcome, now)

    def remove_topup(self, user_id: str, tokens: int) -> Account:
        self._maybe_fail("remove_topup")
        return super().remove_topup(user_id, tokens)

    def record_payment(self, payment: Payment) -> bool:
        self._maybe_fail("record_payment")
        return super().record_payment(payment)

    def update_payment(self, stripe_id: str, patch: Any) -> Payment:
        self._maybe_fail("update_payment")
        return super().update_payment(stripe_id, patch)

    def claim_event(
        self, event_id: str, event_type: str, object_id: str, now: datetime, lease: Any
    ) -> ClaimOutcome:
        self._maybe_fail("claim_event")
        return super().claim_event(event_id, event_type, object_id, now, lease)


FLAKY_OPERATIONS = (
    "add_topup",
    "apply_reset",
    "update_account",
    "complete_event",
    "remove_topup",
    "record_payment",
    "update_payment",
    "claim_event",
)


def install_store(webhook: Webhook, store: SQLiteStore) -> None:
    """Start the function cold again over ``store``."""
    webhook.main = load_app(FUNCTION, environ(webhook.db_path), clock=webhook.clock, store=store)


@pytest.mark.parametrize("operation", ["add_topup", "complete_event"])
def test_failed_topup_leaves_the_event_claimable_and_the_retry_credits_once(
    webhook: Webhook, operation: str
) -> None:
    """A failed credit answers 500 and the retry credits exactly once."""
    webhook.deliver(checkout())
    install_store(webhook, FlakyStore(webhook.db_path, operation))
    event = topup_event("cs_test_flaky", 12_000, JAN)

    failed = webhook.deliver(event)
    retried = webhook.deliver(event)

    assert (failed.status_code, retried.status_code) == (500, 200)
    assert "internal" in failed.body.decode()
    assert webhook.account().topup_tokens == 12_000


@pytest.mark.parametrize("operation", ["apply_reset", "complete_event"])
def test_failed_reset_answers_500_and_the_retry_resets_once(
    webhook: Webhook, operation: str
) -> None:
    """A failed reset answers 500 and the retry resets exactly once."""
    subscribe(webhook)
    use(webhook.store, USER, "req-1", 900, JAN)
    install_store(webhook, FlakyStore(webhook.db_path, operation))
    event = invoice_event("paid", "", (FEB, MAR))

    failed = webhook.deliver(event)
    retried = webhook.deliver(event)
    again = webhook.deliver(event)

    assert [failed.status_code, retried.status_code, again.status_code] == [500, 200, 200]
    account = webhook.account()
    assert (account.period_start, account.lifetime_tokens_used) == (FEB, 900)
    assert '"event":"stripe.webhook.duplicate"' in again.logs[-1]


def test_cancellation_failing_after_its_reset_converges_on_the_retry(webhook: Webhook) -> None:
    """A cancellation failing after its reset converges on the retry without a second reset."""
    subscribe(webhook)
    webhook.deliver(topup_event("cs_test_topup_1", 500, JAN + timedelta(days=1)))
    use(webhook.store, USER, "req-1", 4_000, JAN)
    install_store(webhook, FlakyStore(webhook.db_path, "update_account"))
    event = ended("deleted", "", ENDED)

    failed = webhook.deliver(event)
    between = webhook.account()
    use(webhook.store, USER, "req-2", 20, ENDED)
    retried = webhook.deliver(event)

    assert (failed.status_code, retried.status_code) == (500, 200)
    # The period closed before the failed patch; the retry patches without resetting again.
    assert (between.plan, between.period_start, between.lifetime_tokens_used) == (
        "starter",
        ENDED,
        4_000,
    )
    assert '"event":"stripe.webhook.canceled"' in retried.logs[-1]
    account = webhook.account()
    assert (account.plan, account.max_tokens_per_month, account.stripe_subscription_id) == (
        "demo",
        30,
        None,
    )
    assert (account.period_start, account.current_tokens_used) == (ENDED, 20)
    assert (account.lifetime_tokens_used, account.topup_tokens) == (4_000, 500)


# -- linking: only sessions the billing function created -----------------------------------------

EVE, EVE_CUSTOMER, EVE_SUBSCRIPTION = "user_eve", "cus_eve", "sub_eve"


def forged_checkout(metadata: dict[str, str]) -> Event:
    """Eve's Payment Link checkout: she chose ``client_reference_id`` (Ada's id), the link's
    metadata is whatever its owner set."""
    event = retarget(
        load_event("checkout.session.completed.subscription"),
        customer_id=EVE_CUSTOMER,
        subscription_id=EVE_SUBSCRIPTION,
    )
    event["data"]["object"].update(client_reference_id=USER, metadata=metadata)
    return event


def eves(kind: str, when: datetime) -> Event:
    """An event of Eve's own subscription (its metadata names nobody)."""
    event = retarget(
        load_event(f"customer.subscription.{kind}"),
        created=int(when.timestamp()),
        customer_id=EVE_CUSTOMER,
        subscription_id=EVE_SUBSCRIPTION,
        items=[("business", 1)],
    )
    if kind == "deleted":
        event["data"]["object"].update(ended_at=event["created"], canceled_at=event["created"])
    return event


@pytest.mark.parametrize(
    "metadata",
    [
        pytest.param({}, id="payment-link-without-user"),
        pytest.param({"user_id": EVE}, id="eves-own-user"),
        # Even a session naming Ada twice cannot take her paid account from her customer.
        pytest.param({"user_id": USER}, id="ada-in-both"),
    ],
)
def test_a_forged_checkout_cannot_relink_the_victim(
    webhook: Webhook, metadata: dict[str, str]
) -> None:
    """The victim keeps plan, customer and renewals whatever the attacker's events say."""
    subscribe(webhook)
    before = webhook.account()

    forged = webhook.deliver(forged_checkout(metadata))
    created = webhook.deliver(eves("created", JAN + timedelta(days=2)))
    canceled = webhook.deliver(eves("deleted", JAN + timedelta(days=3)))
    use(webhook.store, USER, "req-1", 400, JAN)
    renewal = webhook.deliver(invoice_event("paid", "", (FEB, MAR)))

    assert forged.status_code == 200
    assert '"event":"stripe.webhook.invalid"' in forged.logs[-1]
    assert '"level":"error"' in forged.logs[-1]
    # Eve's subscription belongs to no account: Stripe retries it, nobody is changed.
    assert (created.status_code, canceled.status_code) == (500, 500)
    assert renewal.status_code == 200
    account = webhook.account()
    assert (account.plan, account.max_tokens_per_month, account.status) == (
        before.plan,
        before.max_tokens_per_month,
        "active",
    )
    assert (account.stripe_customer_id, account.stripe_subscription_id) == (CUSTOMER, SUBSCRIPTION)
    assert (account.period_start, account.lifetime_tokens_used) == (FEB, 400)


def test_a_demo_account_links_the_customer_of_its_new_checkout(webhook: Webhook) -> None:
    """After a cancellation nothing holds the account: a new subscription's customer links."""
    subscribe(webhook)
    webhook.deliver(ended("deleted", "", FEB))
    renewed = retarget(
        load_event("checkout.session.completed.subscription"),
        user_id=USER,
        customer_id="cus_ada_2",
        subscription_id="sub_ada_2",
        created=int(FEB.timestamp()) + 60,
    )

    result = webhook.deliver(renewed)

    assert '"event":"stripe.webhook.linked"' in result.logs[-1]
    account = webhook.account()
    assert (account.stripe_customer_id, account.stripe_subscription_id) == (
        "cus_ada_2",
        "sub_ada_2",
    )


# -- refunds and lost disputes of top-ups --------------------------------------------------------


def refund_event(session_id: str, refunded: int = 500, created: datetime = FEB) -> Event:
    """charge.refunded of the top-up's 500-cent charge: ``refunded`` cents back in all."""
    event = retarget(
        load_event("charge.refunded"),
        created=int(created.timestamp()),
        customer_id=CUSTOMER,
        payment_intent=payment_intent_of(session_id),
    )
    event["data"]["object"].update(amount_refunded=refunded, refunded=refunded == 500)
    return event


def dispute_event(session_id: str, status: str = "lost") -> Event:
    event = retarget(
        load_event("charge.dispute.closed"),
        created=int(FEB.timestamp()),
        payment_intent=payment_intent_of(session_id),
    )
    event["data"]["object"]["status"] = status
    return event


def test_a_refunded_top_up_loses_what_is_left_of_its_pack_once(webhook: Webhook) -> None:
    """The pack goes; the plan stays; the same refund, delivered again or resent, takes no more."""
    subscribe(webhook)
    webhook.deliver(topup_event("cs_test_pack", 100_000, JAN))
    webhook.deliver(topup_event("cs_test_other", 25_000, JAN))
    refund = refund_event("cs_test_pack")

    first = webhook.deliver(refund)
    again = webhook.deliver(refund)
    resent = webhook.deliver(retarget(refund))

    assert '"event":"stripe.webhook.topup_revoked"' in first.logs[-1]
    assert '"event":"stripe.webhook.duplicate"' in again.logs[-1]
    assert '"event":"stripe.webhook.topup_already_revoked"' in resent.logs[-1]
    account = webhook.account()
    assert (account.topup_tokens, account.max_tokens_per_month) == (25_000, 50_000)
    payment = webhook.store.get_payment("cs_test_pack")
    assert payment is not None
    assert payment.tokens_revoked == 100_000


def test_a_partial_refund_takes_its_share_and_the_rest_goes_with_the_full_refund(
    webhook: Webhook,
) -> None:
    """A fifth of the money back takes a fifth of the pack; the full refund the remainder."""
    webhook.deliver(topup_event("cs_test_pack", 100_000, JAN))

    webhook.deliver(refund_event("cs_test_pack", refunded=100))
    partly = webhook.account().topup_tokens
    webhook.deliver(refund_event("cs_test_pack", refunded=500))

    assert (partly, webhook.account().topup_tokens) == (80_000, 0)


def test_a_refund_never_takes_more_than_is_left_nor_the_plans_tokens(webhook: Webhook) -> None:
    """A pack mostly consumed by a past period loses only its rest; nothing goes below zero."""
    subscribe(webhook)
    webhook.deliver(topup_event("cs_test_pack", 100_000, JAN))
    use(webhook.store, USER, "req-1", 110_000, JAN)  # 60,000 beyond Starter's allowance
    webhook.deliver(invoice_event("paid", "", (FEB, MAR)))
    consumed = webhook.account().topup_tokens

    webhook.deliver(refund_event("cs_test_pack", created=FEB + timedelta(days=1)))

    account = webhook.account()
    assert (consumed, account.topup_tokens) == (40_000, 0)
    assert (account.plan, account.max_tokens_per_month) == ("starter", 50_000)


@pytest.mark.parametrize(("status", "left"), [("lost", 0), ("won", 100_000)])
def test_a_lost_dispute_takes_the_pack_back_a_won_one_does_not(
    webhook: Webhook, status: str, left: int
) -> None:
    """charge.dispute.closed: lost is a refund of the whole pack, won changes nothing."""
    webhook.deliver(topup_event("cs_test_pack", 100_000, JAN))

    result = webhook.deliver(dispute_event("cs_test_pack", status))

    assert result.status_code == 200
    assert webhook.account().topup_tokens == left


def test_a_refund_of_a_subscription_payment_is_ignored(webhook: Webhook) -> None:
    """Only top-ups are taken back: a refunded invoice charge leaves the account alone."""
    subscribe(webhook)
    webhook.deliver(topup_event("cs_test_pack", 100_000, JAN))
    before = webhook.account()
    event = refund_event("cs_test_unknown")
    event["data"]["object"]["metadata"] = {}

    result = webhook.deliver(event)

    assert result.status_code == 200
    assert '"event":"stripe.webhook.ignored"' in result.logs[-1]
    assert webhook.account() == before


def test_a_refund_before_its_top_up_was_credited_waits_for_the_credit(webhook: Webhook) -> None:
    """Out of order: the refund fails (Stripe retries) until the pack exists, then takes it."""
    refund = refund_event("cs_test_pack")

    early = webhook.deliver(refund)
    webhook.deliver(topup_event("cs_test_pack", 100_000, JAN))
    retried = webhook.deliver(refund)

    assert (early.status_code, retried.status_code) == (500, 200)
    assert webhook.account().topup_tokens == 0


@pytest.mark.parametrize("operation", ["remove_topup", "update_payment", "complete_event"])
def test_a_failed_refund_is_retried_and_takes_the_pack_once(
    webhook: Webhook, operation: str
) -> None:
    """A store failure at any step answers 500; the retry removes the pack exactly once."""
    webhook.deliver(topup_event("cs_test_pack", 100_000, JAN))
    webhook.deliver(topup_event("cs_test_other", 25_000, JAN))
    install_store(webhook, FlakyStore(webhook.db_path, operation))
    refund = refund_event("cs_test_pack")

    failed = webhook.deliver(refund)
    retried = webhook.deliver(refund)
    again = webhook.deliver(retarget(refund))

    assert (failed.status_code, retried.status_code, again.status_code) == (500, 200, 200)
    assert webhook.account().topup_tokens == 25_000


# -- revenue -------------------------------------------------------------------------------------


def month_of_payments(webhook: Webhook, start: datetime, end: datetime) -> list[Payment]:
    page = webhook.store.list_payments(start, end, 100, None)
    assert page.next_cursor is None
    return list(page.items)


def test_every_paid_invoice_is_recorded_once_for_the_report(webhook: Webhook) -> None:
    """Amount, currency, invoice id, service period, user and subscription of each payment."""
    subscribe(webhook)
    for event in (
        invoice_event("paid", "", (FEB, MAR)),
        invoice_event("payment_succeeded", "", (FEB, MAR)),
        *plan_change("", FEB + timedelta(days=5), [("pro", 1)], [("starter", 1)], MAR),
    ):
        assert webhook.deliver(event).status_code == 200

    january = month_of_payments(webhook, at(2025, 1, 1), FEB_1)
    february = month_of_payments(webhook, FEB_1, at(2025, 3, 1))

    assert [(p.billing_reason, p.amount, p.currency) for p in january] == [
        ("subscription_create", 900, "usd")
    ]
    assert [(p.billing_reason, p.amount) for p in february] == [
        ("subscription_cycle", 900),
        # Half a month of Pro less half a month of Starter, charged at once.
        ("subscription_update", 1_450 - 450),
    ]
    renewal = february[0]
    assert renewal.stripe_id == invoice_id_for(SUBSCRIPTION, FEB, "subscription_cycle")
    assert (renewal.user_id, renewal.subscription_id, renewal.kind) == (
        USER,
        SUBSCRIPTION,
        PaymentKind.INVOICE,
    )
    assert (renewal.period_start, renewal.period_end) == (FEB, MAR)


def test_a_top_up_payment_is_recorded_with_its_pack(webhook: Webhook) -> None:
    """A top-up is revenue too, with the tokens it bought and the payment intent that paid."""
    webhook.deliver(topup_event("cs_test_pack", 100_000, JAN))
    webhook.deliver(topup_event("cs_test_pack", 100_000, JAN))  # the same session again

    [payment] = month_of_payments(webhook, at(2025, 1, 1), FEB_1)

    assert (payment.kind, payment.amount, payment.tokens) == (PaymentKind.TOPUP, 500, 100_000)
    assert payment.payment_intent == payment_intent_of("cs_test_pack")


def test_an_invoice_of_no_linked_customer_and_no_subscription_is_ignored(webhook: Webhook) -> None:
    """A one-off invoice of someone the app does not know records nothing and asks no retry."""
    event = retarget(load_event("invoice.paid.legacy"), customer_id="cus_stranger")
    event["data"]["object"].update(subscription=None, billing_reason="manual")

    result = webhook.deliver(event)

    assert result.status_code == 200
    assert '"event":"stripe.webhook.ignored"' in result.logs[-1]
    assert row_counts(webhook.db_path)["payments"] == 0


# -- invalid values in signed events ---------------------------------------------------------------


def snapshot(db_path: str) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every table: what "changes nothing" compares."""
    with sqlite3.connect(db_path) as connection:
        return {
            table: connection.execute(f"SELECT * FROM {table} ORDER BY seq").fetchall()
            for table in TABLES
        }


def _absurd(name: str, change: Callable[[dict[str, Any]], None]) -> Event:
    event = retarget(load_event(name), user_id=USER, customer_id=CUSTOMER)
    change(event)
    return event


def _set(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def change(event: dict[str, Any]) -> None:
        node: Any = event
        *parents, last = path.split(".")
        for key in parents:
            node = node[int(key)] if isinstance(node, list) else node[key]
        node[last] = value

    return change


ABSURD = [
    pytest.param(
        "checkout.session.completed.topup",
        "data.object.metadata.topup_tokens",
        "\u0661\u0660\u0660\u0660\u0660\u0660\u0660",
        id="topup-in-arabic-indic-digits",
    ),
    pytest.param(
        "checkout.session.completed.topup",
        "data.object.metadata.topup_tokens",
        str(2**63),
        id="topup-past-2-to-the-63",
    ),
    pytest.param(
        "checkout.session.completed.topup",
        "data.object.metadata.topup_tokens",
        "100000001",
        id="topup-above-the-maximum",
    ),
    pytest.param(
        "checkout.session.completed.topup",
        "data.object.metadata.topup_tokens",
        "-100000",
        id="topup-negative",
    ),
    pytest.param(
        "invoice.paid", "data.object.billing_reason", {"nested": ["x"]}, id="reason-object"
    ),
    pytest.param("invoice.paid", "data.object.amount_paid", 2**64, id="amount-past-2-to-the-64"),
    pytest.param(
        "customer.subscription.updated",
        "data.object.items.data.0.quantity",
        2**63,
        id="quantity-past-2-to-the-63",
    ),
    pytest.param(
        "customer.subscription.updated",
        "data.object.items.data.1.price.metadata.addon_tokens",
        "99999999999",
        id="addon-tokens-absurd",
    ),
    pytest.param(
        "customer.subscription.updated",
        "data.object.items.data.0.price.metadata.tokens_per_month",
        "1e9",
        id="plan-tokens-float",
    ),
    pytest.param("charge.refunded", "data.object.amount_refunded", 2**70, id="refund-absurd"),
    pytest.param("invoice.paid", "created", 2**64, id="created-past-2-to-the-64"),
    pytest.param("invoice.paid", "id", "evt_" + "x" * 300, id="event-id-too-long"),
]


@pytest.mark.parametrize(("name", "path", "value"), ABSURD)
def test_absurd_values_in_a_signed_event_change_nothing_and_answer_200(
    webhook: Webhook, name: str, path: str, value: Any
) -> None:
    """No retry can fix them: 200, an error line for the operator, and not a row changed."""
    subscribe(webhook)
    webhook.deliver(topup_event("cs_test_pack", 100_000, JAN))
    before = snapshot(webhook.db_path)

    result = webhook.deliver(_absurd(name, _set(path, value)))

    assert (result.status_code, result.json()) == (200, {"received": True})
    assert '"event":"stripe.webhook.invalid"' in result.logs[-1]
    assert '"level":"error"' in result.logs[-1]
    assert snapshot(webhook.db_path) == before


def test_the_token_maximum_is_a_setting(tmp_path: Path, clock: FakeClock) -> None:
    """STRIPE_MAX_TOKENS bounds every token amount: a pack past it credits nothing."""
    webhook = start_webhook(str(tmp_path / "m.sqlite3"), clock, STRIPE_MAX_TOKENS="50000")
    try:
        small = webhook.deliver(topup_event("cs_test_small", 25_000, JAN))
        large = webhook.deliver(topup_event("cs_test_large", 100_000, JAN))
    finally:
        unload_app(FUNCTION)

    assert (small.status_code, large.status_code) == (200, 200)
    assert '"event":"stripe.webhook.invalid"' in large.logs[-1]
    assert webhook.account().topup_tokens == 25_000


# -- the development secret --------------------------------------------------------------------


def test_the_development_secret_is_refused_by_a_deployed_function(tmp_path: Path) -> None:
    """Anyone can sign with the printed dev secret: without the embedded store, 500 and why."""
    main = load_app(
        FUNCTION, environ(str(tmp_path / "m.sqlite3"), STRIPE_WEBHOOK_SECRET=DEV_SECRET)
    )
    try:
        result = execute(main, webhook_context(checkout(), secret=DEV_SECRET))
    finally:
        unload_app(FUNCTION)

    assert (result.status_code, result.json()["error"]["code"]) == (500, "internal")
    assert "ConfigurationError" in result.errors[-1]
    assert "public development secret" in result.errors[-1]


def test_the_local_runtime_signs_with_the_secret_the_function_knows_as_public() -> None:
    """The runtime's printed secret is the very one deployed functions refuse."""
    assert DEV_WEBHOOK_SECRET == DEV_SECRET


# -- a property: validly signed, mutated events from every fixture --------------------------------

# 10,000 in all, spread over the fixtures; seeded (derandomized) so that CI is stable.
PROPERTY_EXAMPLES = 10_000
FIXTURES = fixture_names()
PROPERTY_PACK = "cs_test_property_pack"
MAX_TOKENS = 100_000_000
METADATA_KEYS = ("user_id", "topup_tokens", "topup_id", "plan", "tokens_per_month", "addon_tokens")
EVENT_TYPES = (
    "checkout.session.completed",
    "customer.subscription.created",
    "customer.subscription.updated",
    "customer.subscription.deleted",
    "invoice.paid",
    "invoice.payment_failed",
    "charge.refunded",
    "charge.dispute.closed",
)
DELETE = object()
ABSURD_VALUES = st.sampled_from(
    [
        *(2**63, 2**63 - 1, 2**64, -(2**63) - 1, -1, 0, 1, 10**18, MAX_TOKENS + 1),
        *(True, False, None, 1.5, -0.0, float("inf"), 1e300),
        *("", "\u0661\u0660\u0660\u0660\u0660\u0660\u0660", "\uff11\uff10\uff10\uff10"),
        *("1_000", "+5", " 5 ", "-5", "1e6", "0x10", "x" * 300, "a b", "100001", "25000"),
        *(USER, EVE, CUSTOMER, EVE_CUSTOMER, SUBSCRIPTION, "pro", "business", "platinum"),
        *("topup_100k", "topup_25k", "subscription_cycle", "subscription_update", "manual"),
        *("lost", "won", "paid", "unpaid", "active", "canceled", "past_due", "payment"),
        *EVENT_TYPES,
        *({}, [], {"id": 1}, {"id": SUBSCRIPTION}, [1, [2]], {"a": {"b": {"c": None}}}),
    ]
)
VALUES = st.one_of(ABSURD_VALUES, st.integers(), st.text(max_size=12))


def property_base(name: str) -> Event:
    """The fixture aimed at the property's account: its user, customer, subscription, pack."""
    event = load_event(name)
    kind = _object_kind(event)
    ours: dict[str, Any] = {"customer_id": CUSTOMER, "subscription_id": SUBSCRIPTION}
    if kind == "checkout.session":
        return retarget(event, user_id=USER, **ours)
    if kind == "subscription":
        return retarget(event, user_id=USER, **ours)
    if kind == "invoice":
        return retarget(event, user_id=USER, period=(FEB, MAR), items=[("starter", 1)], **ours)
    if kind in ("charge", "dispute"):
        return retarget(event, payment_intent=payment_intent_of(PROPERTY_PACK))
    return event


def _object_kind(event: Event) -> str | None:
    obj = event.get("data", {}).get("object") if isinstance(event.get("data"), dict) else None
    return obj.get("object") if isinstance(obj, dict) else None


def _paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every place in a document, and in each metadata object each key the app reads."""
    found: list[tuple[Any, ...]] = [prefix] if prefix else []
    if isinstance(node, dict):
        if prefix and prefix[-1] == "metadata":
            found += [(*prefix, key) for key in METADATA_KEYS if key not in node]
        for key, value in node.items():
            found += _paths(value, (*prefix, key))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            found += _paths(value, (*prefix, index))
    return found


def _mutate(event: Event, changes: list[tuple[tuple[Any, ...], Any]]) -> Event:
    """``event`` with ``changes`` made, copying only the nodes on their paths."""
    mutated = dict(event)
    for path, value in changes:
        node: Any = mutated
        for key in path[:-1]:
            child = node[key] if _holds(node, key) else None
            if not isinstance(child, dict | list):
                break
            child = dict(child) if isinstance(child, dict) else list(child)
            node[key] = child
            node = child
        else:
            last = path[-1]
            if value is DELETE:
                if isinstance(node, dict):
                    node.pop(last, None)
            elif isinstance(node, dict) or _holds(node, last):
                node[last] = value
    return mutated


def _holds(node: Any, key: Any) -> bool:
    if isinstance(node, dict):
        return key in node
    return isinstance(node, list) and isinstance(key, int) and key < len(node)


def mutated_events(base: Event) -> st.SearchStrategy[Event]:
    """``base`` with one to three places replaced by absurd or merely unexpected values, or
    removed; the places the app reads (metadata keys, ids, amounts) as likely as any. Each is
    a new event (its own id, unless that is what changed), so that its claim lets it through."""
    paths = _paths(base)
    read = [path for path in paths if any(key in path for key in ("metadata", "id", "created"))]
    place = st.sampled_from(paths) | st.sampled_from(read or paths)
    change = st.tuples(place, VALUES | st.just(DELETE))
    serial = itertools.count()

    def new_event(changes: list[tuple[tuple[Any, ...], Any]]) -> Event:
        fresh = {**base, "id": f"evt_property{next(serial):08d}"}
        return _mutate(fresh, changes)

    return st.lists(change, min_size=1, max_size=3).map(new_event)


@dataclass
class PropertyWebhook:
    webhook: Webhook
    store: FlakyStore


@pytest.fixture
def property_webhook(tmp_path: Path, clock: FakeClock) -> Iterator[PropertyWebhook]:
    """The function over a store that fails when told to, holding a subscribed account with a
    credited pack; the Stripe API answers every product, with no plan in its metadata."""
    db_path = str(tmp_path / "m.sqlite3")
    store = FlakyStore(db_path, "none", 0)
    env = environ(db_path, STRIPE_SECRET_KEY="sk_test_property", STRIPE_API_BASE=STRIPE_API)
    main = load_app(FUNCTION, env, clock=clock, store=store)
    webhook = Webhook(main, store, db_path, clock)
    with responses.RequestsMock(assert_all_requests_are_fired=False) as api:
        api.add_callback(
            responses.GET,
            re.compile(re.escape(STRIPE_API) + r"/v1/products/(?P<id>[^/?]+)"),
            callback=lambda request: (
                200,
                {},
                json.dumps(_product(request.path_url.rsplit("/", 1)[-1], {})),
            ),
        )
        subscribe(webhook)
        assert webhook.deliver(topup_event(PROPERTY_PACK, 100_000, JAN)).status_code == 200
        yield PropertyWebhook(webhook, store)
    unload_app(FUNCTION)


def _bounded(account: Account) -> bool:
    amounts = (
        account.max_tokens_per_month,
        account.addon_tokens,
        account.topup_tokens,
        account.pending_tokens_per_month,
        account.pending_addon_tokens,
    )
    return all(0 <= amount <= MAX_TOKENS for amount in amounts)


@pytest.mark.slow
@pytest.mark.parametrize("name", FIXTURES)
def test_mutated_signed_events_never_answer_500_and_invalid_ones_change_nothing(
    property_webhook: PropertyWebhook, name: str
) -> None:
    """Whatever a validly signed event holds: 200 or 400, never a 500 but for a store failure
    injected into it; an invalid one (400, or 200 logged as invalid) leaves every row as it
    was, and no account ever holds a token amount past the maximum."""
    webhook, store = property_webhook.webhook, property_webhook.store
    operations = st.sampled_from(FLAKY_OPERATIONS)
    failure = st.none() | st.none() | st.none() | st.none() | operations

    @settings(
        max_examples=-(-PROPERTY_EXAMPLES // len(FIXTURES)),
        derandomize=True,
        database=None,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(event=mutated_events(property_base(name)), fail=failure)
    def deliver(event: Event, fail: str | None) -> None:
        store.failures = {fail: 1} if fail else {}
        before = snapshot(webhook.db_path)

        result = webhook.deliver(event)

        injected = fail is not None and store.failures.get(fail) == 0
        store.failures = {}
        assert result.status_code in (200, 400) or (injected and result.status_code == 500), (
            result.status_code,
            result.logs,
            result.errors,
        )
        if result.status_code == 400 or '"event":"stripe.webhook.invalid"' in result.logs[-1]:
            assert snapshot(webhook.db_path) == before
        account = webhook.store.get_account(USER)
        assert account is None or _bounded(account)

    deliver()


# -- product metadata through the Stripe API -----------------------------------------------------


def _product(product_id: str, metadata: dict[str, str]) -> dict[str, Any]:
    return {
        "id": product_id,
        "object": "product",
        "active": True,
        "created": 1753200000,
        "default_price": None,
        "description": None,
        "images": [],
        "livemode": False,
        "marketing_features": [],
        "metadata": metadata,
        "name": "Pro",
        "package_dimensions": None,
        "shippable": None,
        "statement_descriptor": None,
        "tax_code": None,
        "type": "service",
        "unit_label": None,
        "updated": 1753200000,
        "url": None,
    }


def _bare_price_event(created: datetime) -> Event:
    event = subscription_event("updated", "", created, [("pro", 1)])
    price = event["data"]["object"]["items"]["data"][0]["price"]
    price.update(metadata={}, lookup_key=None, product="prod_PlainPro")
    return event


@responses.activate
def test_plan_only_on_the_product_is_read_through_the_stripe_api(api_webhook: Webhook) -> None:
    """A price without a plan takes the product's, fetched once with the secret key."""
    product = responses.get(
        f"{STRIPE_API}/v1/products/prod_PlainPro",
        json=_product("prod_PlainPro", {"plan": "pro"}),
    )
    api_webhook.deliver(checkout())
    first = api_webhook.deliver(_bare_price_event(JAN))
    second = api_webhook.deliver(_bare_price_event(FEB))
    api_webhook.deliver(invoice_event("paid", "", (JAN, FEB), "subscription_create", [("pro", 1)]))

    assert (first.status_code, second.status_code) == (200, 200)
    account = api_webhook.account()
    assert (account.plan, account.max_tokens_per_month) == ("pro", 200_000)
    assert product.call_count == 1  # cached for the cold start
    assert product.calls[0].request.headers["Authorization"] == "Bearer sk_test_123"


@responses.activate
def test_stripe_api_outage_answers_503_and_releases_the_claim(api_webhook: Webhook) -> None:
    """A failed product read answers 503 and leaves the event for Stripe's retry to apply."""
    url = f"{STRIPE_API}/v1/products/prod_PlainPro"
    responses.get(url, json={"error": {"type": "api_error", "message": "boom"}}, status=500)
    event = _bare_price_event(JAN)
    api_webhook.deliver(checkout())
    failed = api_webhook.deliver(event)
    responses.replace(responses.GET, url, json=_product("prod_PlainPro", {"plan": "pro"}))
    retried = api_webhook.deliver(event)

    assert (failed.status_code, failed.json()["error"]["code"]) == (503, "upstream_unavailable")
    assert retried.status_code == 200
    assert api_webhook.account().pending_plan == "pro"


def test_plan_only_on_the_product_without_an_api_key_fails_and_changes_nothing(
    webhook: Webhook,
) -> None:
    """Without STRIPE_SECRET_KEY a plan kept on the product is a configuration error (500)."""
    webhook.deliver(checkout())

    result = webhook.deliver(_bare_price_event(JAN))

    assert result.status_code == 500
    assert webhook.account().plan == "demo"


# -- a year of events, in order and shuffled -------------------------------------------------------


def year_of_events(shape: str = "") -> list[Event]:
    """Subscribe in January, 12 renewals, 2 plan changes (each with its prorated invoice), a
    top-up, a failed and recovered payment, then a cancellation: as Stripe sends them, in time
    order. Each invoice charges the items the subscription has when it is issued."""
    starts = [at(2025, month, 1) for month in range(1, 13)] + [at(2026, 1, 1), at(2026, 2, 1)]
    items: Items = [("starter", 1)]
    events: list[Event] = [
        checkout(shape, created=int(starts[0].timestamp()) - 30),
        subscription_event(
            "created",
            shape,
            starts[0],
            items,
            period=(starts[0], starts[1]),
            invoice=(starts[0], "subscription_create"),
        ),
        invoice_event("paid", shape, (starts[0], starts[1]), "subscription_create", items),
    ]
    plans: dict[int, Items] = {3: [("pro", 1)], 7: [("business", 1), ("addon", 2)]}
    for month in range(1, 13):
        period = (starts[month], starts[month + 1])
        if month == 9:  # October: the first attempt fails, the retry three days later succeeds
            events.append(invoice_event("payment_failed", shape, period, items=items))
            past_due = subscription_event(
                "updated", shape, period[0] + timedelta(hours=2), items, status="past_due"
            )
            events.append(past_due)
            paid = invoice_event("paid", shape, period, items=items)
            paid["created"] += 3 * 86400
            events.append(paid)
            events.append(
                subscription_event("updated", shape, period[0] + timedelta(days=3, hours=2), items)
            )
        else:
            events.append(invoice_event("paid", shape, period, items=items))
            events.append(invoice_event("payment_succeeded", shape, period, items=items))
        if month in plans:
            changed = period[0] + timedelta(days=9)
            events += plan_change(shape, changed, plans[month], items, period[1])
            items = plans[month]
        if month == 5:
            events.append(topup_event("cs_test_year_topup", 100_000, period[0] + timedelta(days=4)))
    events.append(ended("deleted", shape, at(2026, 1, 20)))
    return events


def deliver_until_accepted(webhook: Webhook, events: list[Event]) -> None:
    """Deliver like Stripe: whatever fails is delivered again later."""
    pending = events
    for _ in range(len(events) + 1):
        failed = [event for event in pending if webhook.deliver(event).status_code != 200]
        if not failed:
            return
        pending = failed
    raise AssertionError(f"{len(pending)} events never accepted")


def final_state(webhook: Webhook) -> tuple[Any, ...]:
    a = webhook.account()
    return (
        a.plan,
        a.status,
        a.max_tokens_per_month,
        a.addon_tokens,
        a.topup_tokens,
        a.current_tokens_used,
        a.lifetime_tokens_used,
        a.period_start,
        a.period_end,
        a.stripe_customer_id,
        a.stripe_subscription_id,
    )


YEAR_END = (
    "demo",
    "canceled",
    30,
    0,
    100_000,
    0,
    0,
    # The cancellation on 20 January closed the paid period: Demo from then to the month's end.
    at(2026, 1, 20),
    at(2026, 2, 1),
    CUSTOMER,
    None,
)


@pytest.mark.parametrize("shape", SHAPES)
def test_a_year_of_events_in_order_ends_on_demo_with_the_topup(
    webhook: Webhook, shape: str
) -> None:
    """A year of events in order ends on Demo with the top-up kept."""
    events = year_of_events(shape)

    results = [webhook.deliver(event) for event in events]

    assert {r.status_code for r in results} == {200}
    assert final_state(webhook) == YEAR_END


@pytest.mark.parametrize("seed", range(20))
def test_a_year_of_events_in_any_order_converges_to_the_same_state(
    tmp_path: Path, clock: FakeClock, seed: int
) -> None:
    """Shuffled and redelivered until accepted, a year ends in the same state."""
    webhook = start_webhook(str(tmp_path / "m.sqlite3"), clock)
    events = year_of_events(".legacy" if seed % 2 else "")
    random.Random(seed).shuffle(events)
    try:
        deliver_until_accepted(webhook, events)
    finally:
        unload_app(FUNCTION)

    assert final_state(webhook) == YEAR_END


def test_a_year_in_order_with_usage_accounts_every_token(webhook: Webhook) -> None:
    """Every token used over the year ends in lifetime usage."""
    events = year_of_events()
    used = 0
    for index, event in enumerate(events):
        webhook.deliver(event)
        if event["type"] == "invoice.paid" and webhook.account().plan != "demo":
            use(webhook.store, USER, f"req-{index}", 1_000, webhook.clock.now)
            used += 1_000

    account = webhook.account()
    # The cancellation closed January 2026's paid period: its usage is lifetime now.
    assert (account.lifetime_tokens_used, account.current_tokens_used) == (used, 0)


# -- the sample-event command ------------------------------------------------------------------


class _Forward(BaseHTTPRequestHandler):
    """A function domain in miniature: each POST runs the webhook's ``main``."""

    main: Callable[..., Any]

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["content-length"]))
        request = RuntimeRequest(method="POST", headers=dict(self.headers.items()), body=body)
        result = execute(type(self).main, RuntimeContext(request))
        self.send_response(result.status_code)
        self.send_header("content-type", "application/json")
        self.end_headers()
        self.wfile.write(result.body)

    def log_message(self, format: str, *args: Any) -> None:
        return


@pytest.fixture
def dev_endpoint(tmp_path: Path, clock: FakeClock) -> Iterator[tuple[str, Webhook]]:
    db_path = str(tmp_path / "metering.sqlite3")
    env = environ(db_path, STRIPE_WEBHOOK_SECRET=DEV_WEBHOOK_SECRET)
    main = load_app(FUNCTION, env, clock=clock, store=SQLiteStore(db_path))
    handler = type("Forward", (_Forward,), {"main": staticmethod(main)})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/functions/stripe-webhook"
        yield url, Webhook(main, SQLiteStore(db_path), db_path, clock)
    finally:
        server.shutdown()
        server.server_close()
        unload_app(FUNCTION)


def dev_command(url: str, *args: str) -> int:
    """Run the dev command ``args`` for ``USER``, posting its events to ``url``."""
    return stripe_events_tool.main([*args, "--user", USER, "--url", url])


def test_dev_command_scenarios_sign_and_post_events_the_webhook_applies(
    dev_endpoint: tuple[str, Webhook], capsys: pytest.CaptureFixture[str]
) -> None:
    """subscribe, renew, change-plan, topup and cancel play the billing story locally."""
    url, webhook = dev_endpoint
    run = partial(dev_command, url)
    assert run("subscribe", "--plan", "starter", "--at", "2025-01-10T09:00:00Z") == 0
    subscribed = webhook.account()
    use(webhook.store, USER, "req-1", 100, webhook.clock.now)
    assert run("renew", "--at", "2025-02-09T09:00:00Z") == 0
    renewed = webhook.account()
    assert run("change-plan", "--plan", "pro", "--at", "2025-02-12T09:00:00Z") == 0
    assert run("topup", "--tokens", "5000") == 0
    changed = webhook.account()
    assert run("cancel", "--at", "2025-02-20T09:00:00Z") == 0

    assert (subscribed.plan, subscribed.stripe_subscription_id is not None) == ("starter", True)
    assert (renewed.current_tokens_used, renewed.lifetime_tokens_used) == (0, 100)
    assert (subscribed.period_start, renewed.period_start) == (
        at(2025, 1, 10, 9),
        at(2025, 2, 9, 9),
    )
    assert (changed.plan, changed.topup_tokens) == ("pro", 5_000)
    assert (webhook.account().plan, webhook.account().topup_tokens) == ("demo", 5_000)
    assert webhook.account().period_start == at(2025, 2, 20, 9)  # the cancellation's Demo period
    printed = capsys.readouterr().out
    assert printed.count(": 200 ") == 9
    assert "invoice.payment_succeeded" in printed
    assert printed.count("refund --payment-intent pi_dev") == 1


def test_dev_command_refunds_the_top_up_it_printed(
    dev_endpoint: tuple[str, Webhook], capsys: pytest.CaptureFixture[str]
) -> None:
    """topup prints its payment intent; refund with it takes what is left of the pack."""
    url, webhook = dev_endpoint
    run = partial(dev_command, url)
    assert run("topup", "--tokens", "5000") == 0
    intent = capsys.readouterr().out.split("refund --payment-intent ")[1].split(")")[0]
    credited = webhook.account().topup_tokens
    assert run("refund", "--payment-intent", intent) == 0

    assert (credited, webhook.account().topup_tokens) == (5_000, 0)


def test_dev_command_renews_a_seeded_account_never_linked(
    dev_endpoint: tuple[str, Webhook],
) -> None:
    """A demo account seeded on a plan, never linked to Stripe, renews: the events name it."""
    url, webhook = dev_endpoint
    webhook.store.create_account(new_account(USER, PLANS.default, webhook.clock.now))
    webhook.store.update_account(USER, {"plan": "pro", "max_tokens_per_month": 200_000})
    use(webhook.store, USER, "req-1", 70, webhook.clock.now)

    code = stripe_events_tool.main(
        ["renew", "--plan", "pro", "--user", USER, "--url", url, "--at", "2025-01-05T00:00:00Z"]
    )

    account = webhook.account()
    assert code == 0
    assert (account.plan, account.current_tokens_used, account.lifetime_tokens_used) == (
        "pro",
        0,
        70,
    )
    assert account.period_start == at(2025, 1, 5)


def test_dev_command_reports_a_refused_signature(
    dev_endpoint: tuple[str, Webhook], capsys: pytest.CaptureFixture[str]
) -> None:
    """A wrong secret is a 400 the command reports with a failing exit."""
    url, webhook = dev_endpoint

    code = stripe_events_tool.main(
        ["topup", "--user", USER, "--url", url, "--secret", "whsec_not_the_right_one"]
    )

    assert code == 1
    assert ": 400 " in capsys.readouterr().out
    assert webhook.store.get_account(USER) is None
