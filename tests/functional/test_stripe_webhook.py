"""The stripe-webhook function through ``main(context)``: real signatures, the SQLite store."""

from __future__ import annotations

import random
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import responses
from metering.account import Account, demo_period_due, plan_reset
from metering.errors import StoreError

from localruntime.context import RuntimeContext, RuntimeRequest, RuntimeResult, execute
from localruntime.settings import DEV_WEBHOOK_SECRET
from localruntime.sqlite_store import SQLiteStore
from tests.support.stripe_events import (
    SECRET,
    Event,
    FakeClock,
    at,
    encode,
    hold,
    load_app,
    load_event,
    retarget,
    sign,
    unload_app,
    webhook_context,
)
from tools import stripe_events as stripe_events_tool

FUNCTION = "stripe-webhook"
SHAPES = [pytest.param("", id="api-2025"), pytest.param(".legacy", id="api-legacy")]
USER, CUSTOMER, SUBSCRIPTION = "user_ada", "cus_ada", "sub_ada"
IDS = {"customer_id": CUSTOMER, "subscription_id": SUBSCRIPTION}
JAN, FEB, MAR = at(2025, 1, 10), at(2025, 2, 10), at(2025, 3, 10)
FEB_1 = at(2025, 2, 1)
STRIPE_API = "https://stripe.test"


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


def row_counts(db_path: str) -> dict[str, int]:
    if not Path(db_path).exists():
        return {}
    with sqlite3.connect(db_path) as connection:
        tables = ("subscriptions", "usage_events", "claims")
        return {t: connection.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0] for t in tables}


def checkout(shape: str = "", created: int = 0) -> Event:
    return retarget(
        load_event(f"checkout.session.completed.subscription{shape}"),
        user_id=USER,
        created=created or int(JAN.timestamp()) - 10,
        **IDS,
    )


def subscription_event(
    kind: str, shape: str, created: datetime, items: list[tuple[str, int]] | None = None, **kw: Any
) -> Event:
    return retarget(
        load_event(f"customer.subscription.{kind}{shape}"),
        created=int(created.timestamp()),
        items=items,
        **IDS,
        **kw,
    )


def ended(kind: str, shape: str, when: datetime) -> Event:
    """A subscription event sent as the subscription ended at ``when``."""
    event = subscription_event(kind, shape, when, status="canceled")
    event["data"]["object"].update(ended_at=event["created"], canceled_at=event["created"])
    return event


def invoice_event(
    kind: str, shape: str, period: tuple[datetime, datetime], reason: str = "subscription_cycle"
) -> Event:
    return retarget(
        load_event(f"invoice.{kind}{shape}"),
        created=int(period[0].timestamp()) + 3600,
        period=period,
        billing_reason=reason,
        **IDS,
    )


def topup_event(session_id: str, tokens: int, created: datetime, shape: str = "") -> Event:
    return retarget(
        load_event(f"checkout.session.completed.topup{shape}"),
        user_id=USER,
        customer_id=CUSTOMER,
        session_id=session_id,
        topup_tokens=tokens,
        created=int(created.timestamp()),
    )


def subscribe(webhook: Webhook, shape: str = "", plan: str = "starter") -> None:
    """Checkout, subscription and its first paid invoice for January."""
    for event in (
        checkout(shape),
        subscription_event("created", shape, JAN, [(plan, 1)], period=(JAN, FEB)),
        invoice_event("paid", shape, (JAN, FEB), "subscription_create"),
    ):
        assert webhook.deliver(event).status_code == 200


# -- every event type, both API shapes -------------------------------------------------------


@pytest.mark.parametrize("shape", SHAPES)
def test_checkout_links_customer_and_subscription_to_the_user(webhook: Webhook, shape: str) -> None:
    result = webhook.deliver(checkout(shape))

    assert (result.status_code, result.json()) == (200, {"received": True})
    account = webhook.account()
    assert (account.stripe_customer_id, account.stripe_subscription_id) == (CUSTOMER, SUBSCRIPTION)
    assert account.plan == "demo"


@pytest.mark.parametrize("shape", SHAPES)
def test_subscription_created_sets_plan_and_addon_tokens(webhook: Webhook, shape: str) -> None:
    webhook.deliver(checkout(shape))
    event = subscription_event("created", shape, JAN, [("starter", 1), ("addon", 3)])

    assert webhook.deliver(event).status_code == 200

    account = webhook.account()
    assert (account.plan, account.max_tokens_per_month, account.addon_tokens) == (
        "starter",
        50_000,
        30_000,
    )
    assert account.status == "active"
    # Plan changes never reset usage: the period moves only with a paid invoice.
    assert account.period_start == at(2024, 12, 1)


@pytest.mark.parametrize("shape", SHAPES)
def test_fixture_subscription_counts_addon_quantity(webhook: Webhook, shape: str) -> None:
    webhook.deliver(checkout(shape))
    event = retarget(load_event(f"customer.subscription.updated{shape}"), **IDS)

    webhook.deliver(event)

    # The fixture holds the Starter price and the 10k add-on price with quantity 2.
    assert (webhook.account().max_tokens_per_month, webhook.account().addon_tokens) == (
        50_000,
        20_000,
    )


@pytest.mark.parametrize("shape", SHAPES)
def test_subscription_updated_changes_plan_without_reset(webhook: Webhook, shape: str) -> None:
    subscribe(webhook, shape)
    hold(webhook.store, USER, "req-1", 700, JAN)

    webhook.deliver(subscription_event("updated", shape, JAN + timedelta(days=5), [("pro", 1)]))

    account = webhook.account()
    assert (account.plan, account.max_tokens_per_month, account.addon_tokens) == ("pro", 200_000, 0)
    assert (account.current_tokens_used, account.period_start) == (700, JAN)


@pytest.mark.parametrize("kind", ["paid", "payment_succeeded"])
@pytest.mark.parametrize("shape", SHAPES)
def test_paid_renewal_resets_to_the_invoice_line_period(
    webhook: Webhook, shape: str, kind: str
) -> None:
    subscribe(webhook, shape)
    hold(webhook.store, USER, "req-1", 1_200, JAN)

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
    subscribe(webhook, shape)
    hold(webhook.store, USER, "req-1", 500, JAN)
    paid = invoice_event("paid", shape, (FEB, MAR))
    webhook.deliver(paid)
    hold(webhook.store, USER, "req-2", 40, FEB)  # used in the new period

    succeeded = invoice_event("payment_succeeded", shape, (FEB, MAR))
    assert webhook.deliver(succeeded).status_code == 200

    account = webhook.account()
    assert (account.current_tokens_used, account.lifetime_tokens_used) == (40, 500)


@pytest.mark.parametrize("shape", SHAPES)
def test_invoice_for_a_plan_change_does_not_reset(webhook: Webhook, shape: str) -> None:
    subscribe(webhook, shape)
    hold(webhook.store, USER, "req-1", 300, JAN)

    webhook.deliver(invoice_event("paid", shape, (FEB, MAR), "subscription_update"))

    assert (webhook.account().current_tokens_used, webhook.account().period_start) == (300, JAN)


@pytest.mark.parametrize("shape", SHAPES)
def test_payment_failed_marks_past_due_without_reset(webhook: Webhook, shape: str) -> None:
    subscribe(webhook, shape)
    hold(webhook.store, USER, "req-1", 300, JAN)

    webhook.deliver(invoice_event("payment_failed", shape, (FEB, MAR)))

    account = webhook.account()
    assert (account.status, account.current_tokens_used, account.period_start) == (
        "past_due",
        300,
        JAN,
    )


@pytest.mark.parametrize("shape", SHAPES)
def test_topup_checkout_credits_one_time_tokens(webhook: Webhook, shape: str) -> None:
    result = webhook.deliver(topup_event("cs_test_topup_1", 100_000, JAN, shape))

    assert result.status_code == 200
    account = webhook.account()
    assert (account.topup_tokens, account.stripe_customer_id) == (100_000, CUSTOMER)
    assert account.limit == 30 + 100_000


@pytest.mark.parametrize("shape", SHAPES)
def test_subscription_deleted_returns_to_demo_keeping_topups(webhook: Webhook, shape: str) -> None:
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
    subscribe(webhook)  # Starter: 50,000 a month
    webhook.deliver(topup_event("cs_test_topup_1", 500, JAN + timedelta(days=1)))
    hold(webhook.store, USER, "req-1", 4_000, JAN)

    webhook.deliver(ended("deleted", "", ENDED))
    canceled = webhook.account()
    hold(webhook.store, USER, "req-2", 10, ENDED)
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
    subscribe(webhook)
    webhook.deliver(topup_event("cs_test_topup_1", 5_000, JAN + timedelta(days=1)))
    hold(webhook.store, USER, "req-1", 52_000, JAN)

    webhook.deliver(ended("deleted", "", ENDED))

    account = webhook.account()
    assert (account.topup_tokens, account.current_tokens_used) == (3_000, 0)
    assert account.lifetime_tokens_used == 52_000


def test_two_events_ending_one_subscription_close_its_period_once(webhook: Webhook) -> None:
    subscribe(webhook)
    hold(webhook.store, USER, "req-1", 4_000, JAN)
    updated = ended("updated", "", ENDED)
    deleted = ended("deleted", "", ENDED)
    deleted["created"] += 60  # sent a minute later, about the same end

    webhook.deliver(updated)
    hold(webhook.store, USER, "req-2", 20, ENDED)
    result = webhook.deliver(deleted)

    assert result.status_code == 200
    account = webhook.account()
    assert (account.period_start, account.current_tokens_used) == (ENDED, 20)
    assert (account.lifetime_tokens_used, account.stripe_updated_at) == (
        4_000,
        deleted["created"],
    )


def test_unknown_event_type_is_acknowledged_and_changes_nothing(webhook: Webhook) -> None:
    subscribe(webhook)
    before = webhook.account()

    result = webhook.deliver(load_event("customer.created"))

    assert (result.status_code, result.json()) == (200, {"received": True})
    assert webhook.account() == before
    assert '"event":"stripe.webhook.ignored"' in result.logs[-1]


@pytest.mark.parametrize("kind", ["subscription", "topup"])
def test_checkout_naming_no_possible_user_is_acknowledged_and_creates_no_account(
    webhook: Webhook, kind: str
) -> None:
    event = retarget(load_event(f"checkout.session.completed.{kind}"), customer_id=CUSTOMER)
    event["data"]["object"]["client_reference_id"] = "order-" + "9" * 40  # not a user id

    first, retry = webhook.deliver(event), webhook.deliver(event)

    assert (first.status_code, retry.status_code) == (200, 200)
    assert '"event":"stripe.webhook.ignored"' in first.logs[-1]
    assert '"event":"stripe.webhook.duplicate"' in retry.logs[-1]
    assert row_counts(webhook.db_path)["subscriptions"] == 0


def test_each_outcome_is_one_log_line_with_event_id_and_type(webhook: Webhook) -> None:
    event = checkout()

    result = webhook.deliver(event)

    assert result.logs == [
        '{"event":"stripe.webhook.linked","eventId":"' + event["id"] + '",'
        '"type":"checkout.session.completed"}'
    ]


def test_older_subscription_update_does_not_overwrite_a_newer_one(webhook: Webhook) -> None:
    subscribe(webhook)
    newer = subscription_event("updated", "", FEB, [("business", 1)])
    older = subscription_event("updated", "", JAN + timedelta(days=3), [("pro", 1)])

    webhook.deliver(newer)
    webhook.deliver(older)

    assert webhook.account().plan == "business"


def test_reset_for_an_older_period_after_a_newer_one_is_a_no_op(webhook: Webhook) -> None:
    subscribe(webhook)
    webhook.deliver(invoice_event("paid", "", (MAR, at(2025, 4, 10))))
    hold(webhook.store, USER, "req-1", 250, MAR)

    webhook.deliver(invoice_event("paid", "", (FEB, MAR)))

    account = webhook.account()
    assert (account.period_start, account.current_tokens_used) == (MAR, 250)


def test_event_for_an_unlinked_customer_fails_so_that_stripe_retries(webhook: Webhook) -> None:
    event = subscription_event("created", "", JAN, [("pro", 1)])

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
    assert webhook.account().plan == "pro"


def test_checkout_after_the_deletion_does_not_relink_the_subscription(webhook: Webhook) -> None:
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
    context = webhook_context(body, signature=signature or "")

    result = execute(webhook.main, context)

    assert result.status_code == 400
    assert result.json()["error"]["code"] == "invalid_request"
    assert not any(row_counts(webhook.db_path).values())


def test_get_is_refused_with_400(webhook: Webhook) -> None:
    result = execute(webhook.main, webhook_context(checkout(), method="GET"))

    assert (result.status_code, result.json()["error"]["code"]) == (400, "invalid_request")


def test_signing_secret_surrounding_whitespace_is_ignored(tmp_path: Path) -> None:
    db_path = str(tmp_path / "m.sqlite3")
    env = environ(db_path, STRIPE_WEBHOOK_SECRET=f"  {SECRET}\n")
    main = load_app(FUNCTION, env, store=SQLiteStore(db_path))
    try:
        assert execute(main, webhook_context(checkout())).status_code == 200
    finally:
        unload_app(FUNCTION)


def test_refuses_to_run_without_a_webhook_secret(tmp_path: Path) -> None:
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
    subscribe(webhook)
    hold(webhook.store, USER, "req-1", 800, JAN)
    event = make_event()
    webhook.deliver(event)
    after_one = webhook.account()
    # Usage in between: a second application (a reset) would be visible on the counter.
    hold(webhook.store, USER, "req-2", 5, JAN)
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


def install_store(webhook: Webhook, store: SQLiteStore) -> None:
    """Start the function cold again over ``store``."""
    webhook.main = load_app(FUNCTION, environ(webhook.db_path), clock=webhook.clock, store=store)


@pytest.mark.parametrize("operation", ["add_topup", "complete_event"])
def test_failed_topup_leaves_the_event_claimable_and_the_retry_credits_once(
    webhook: Webhook, operation: str
) -> None:
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
    subscribe(webhook)
    hold(webhook.store, USER, "req-1", 900, JAN)
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
    subscribe(webhook)
    webhook.deliver(topup_event("cs_test_topup_1", 500, JAN + timedelta(days=1)))
    hold(webhook.store, USER, "req-1", 4_000, JAN)
    install_store(webhook, FlakyStore(webhook.db_path, "update_account"))
    event = ended("deleted", "", ENDED)

    failed = webhook.deliver(event)
    between = webhook.account()
    hold(webhook.store, USER, "req-2", 20, ENDED)
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
    assert api_webhook.account().plan == "pro"


def test_plan_only_on_the_product_without_an_api_key_fails_and_changes_nothing(
    webhook: Webhook,
) -> None:
    webhook.deliver(checkout())

    result = webhook.deliver(_bare_price_event(JAN))

    assert result.status_code == 500
    assert webhook.account().plan == "demo"


# -- a year of events, in order and shuffled -------------------------------------------------------


def year_of_events(shape: str = "") -> list[Event]:
    """Subscribe in January, 12 renewals, 2 plan changes, a top-up, a failed and recovered
    payment, then a cancellation: as Stripe sends them, in time order."""
    starts = [at(2025, month, 1) for month in range(1, 13)] + [at(2026, 1, 1), at(2026, 2, 1)]
    events: list[Event] = [
        checkout(shape, created=int(starts[0].timestamp()) - 30),
        subscription_event("created", shape, starts[0], [("starter", 1)], period=starts[0:2]),
        invoice_event("paid", shape, (starts[0], starts[1]), "subscription_create"),
    ]
    plans = {3: [("pro", 1)], 7: [("business", 1), ("addon", 2)]}
    for month in range(1, 13):
        period = (starts[month], starts[month + 1])
        if month == 9:  # October: the first attempt fails, the retry three days later succeeds
            events.append(invoice_event("payment_failed", shape, period))
            past_due = subscription_event(
                "updated", shape, period[0] + timedelta(hours=2), plans[7], status="past_due"
            )
            events.append(past_due)
            paid = invoice_event("paid", shape, period)
            paid["created"] += 3 * 86400
            events.append(paid)
            events.append(
                subscription_event(
                    "updated", shape, period[0] + timedelta(days=3, hours=2), plans[7]
                )
            )
        else:
            events.append(invoice_event("paid", shape, period))
            events.append(invoice_event("payment_succeeded", shape, period))
        if month in plans:
            events.append(
                subscription_event("updated", shape, period[0] + timedelta(days=9), plans[month])
            )
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
    events = year_of_events(shape)

    results = [webhook.deliver(event) for event in events]

    assert {r.status_code for r in results} == {200}
    assert final_state(webhook) == YEAR_END


@pytest.mark.parametrize("seed", range(20))
def test_a_year_of_events_in_any_order_converges_to_the_same_state(
    tmp_path: Path, clock: FakeClock, seed: int
) -> None:
    webhook = start_webhook(str(tmp_path / "m.sqlite3"), clock)
    events = year_of_events(".legacy" if seed % 2 else "")
    random.Random(seed).shuffle(events)
    try:
        deliver_until_accepted(webhook, events)
    finally:
        unload_app(FUNCTION)

    assert final_state(webhook) == YEAR_END


def test_a_year_in_order_with_usage_accounts_every_token(webhook: Webhook) -> None:
    events = year_of_events()
    used = 0
    for index, event in enumerate(events):
        webhook.deliver(event)
        if event["type"] == "invoice.paid" and webhook.account().plan != "demo":
            hold(webhook.store, USER, f"req-{index}", 1_000, webhook.clock.now)
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


def test_dev_command_scenarios_sign_and_post_events_the_webhook_applies(
    dev_endpoint: tuple[str, Webhook], capsys: pytest.CaptureFixture[str]
) -> None:
    url, webhook = dev_endpoint

    def run(*args: str) -> int:
        return stripe_events_tool.main([*args, "--user", USER, "--url", url])

    assert run("subscribe", "--plan", "starter", "--at", "2025-01-10T09:00:00Z") == 0
    subscribed = webhook.account()
    hold(webhook.store, USER, "req-1", 100, webhook.clock.now)
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
    assert printed.count(": 200 ") == 8
    assert "invoice.payment_succeeded" in printed


def test_dev_command_reports_a_refused_signature(
    dev_endpoint: tuple[str, Webhook], capsys: pytest.CaptureFixture[str]
) -> None:
    url, webhook = dev_endpoint

    code = stripe_events_tool.main(
        ["topup", "--user", USER, "--url", url, "--secret", "whsec_not_the_right_one"]
    )

    assert code == 1
    assert ": 400 " in capsys.readouterr().out
    assert webhook.store.get_account(USER) is None
