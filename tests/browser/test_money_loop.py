"""The money loop in the page: Demo explained with the plans, Checkout and back, a pack at the
limit, the portal; billing errors worded for the user; alerts once per period, dismissible."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

import pytest
from playwright.sync_api import Locator, Page, Route, expect

from localruntime.server import Runtime
from tests.browser.chat_page import (
    Backend,
    User,
    assistant_messages,
    log_in,
    send,
    sign_up_in_page,
    user_id_of,
)

pytestmark = pytest.mark.browser

BILLING_EXECUTIONS = "**/v1/functions/billing/executions"
# What GET /plans answers when Stripe holds these prices (minor units).
SHELF = {
    "plans": [
        {"id": "starter", "name": "Starter", "tokens": 50_000, "current": False,
         "price": {"amount": 900, "currency": "usd"}},
        {"id": "pro", "name": "Pro", "tokens": 200_000, "current": False,
         "price": {"amount": 2900, "currency": "usd"}},
        {"id": "business", "name": "Business", "tokens": 1_000_000, "current": False,
         "price": {"amount": 9900, "currency": "usd"}},
    ],
    "topups": [
        {"id": "topup_25k", "name": "25,000 tokens", "tokens": 25_000,
         "price": {"amount": 500, "currency": "usd"}},
        {"id": "topup_100k", "name": "100,000 tokens", "tokens": 100_000,
         "price": {"amount": 1500, "currency": "usd"}},
    ],
    "currentPlan": "demo",
}  # fmt: skip


def execution(status: int, body: Mapping[str, Any]) -> str:
    """An Appwrite execution object carrying the billing function's answer."""
    return json.dumps(
        {
            "$id": "test-execution",
            "functionId": "billing",
            "trigger": "http",
            "status": "completed",
            "responseStatusCode": status,
            "responseBody": json.dumps(body),
            "responseHeaders": [],
            "duration": 0.01,
        }
    )


class FakeBilling:
    """The billing function at the HTTP edge: answers by path, records what the page asked."""

    def __init__(self, answers: Mapping[str, tuple[int, Mapping[str, Any]]]) -> None:
        self.answers = dict(answers)
        self.calls: list[dict[str, Any]] = []

    def __call__(self, route: Route) -> None:
        sent = route.request.post_data_json
        self.calls.append(sent)
        status, body = self.answers[sent["path"]]
        route.fulfill(status=201, content_type="application/json", body=execution(status, body))


def wait_until_home(page: Page, runtime: Runtime) -> None:
    """The page is back at its own address, whatever query it came back with."""
    page.wait_for_url(re.compile(re.escape(runtime.base_url) + r"/(\?.*)?$"))


def through_stripe(
    page: Page, runtime: Runtime, start: Locator, confirm: str = "checkout-pay"
) -> None:
    """Click ``start``, then ``confirm`` on Stripe's page, and wait to be back on the chat."""
    start.click()
    page.get_by_test_id(confirm).click()
    wait_until_home(page, runtime)


def no_horizontal_scroll(page: Page) -> None:
    widths = page.evaluate(
        "[document.documentElement.scrollWidth, document.documentElement.clientWidth]"
    )
    assert widths[0] <= widths[1], widths


# -- the whole story, through the local runtime's billing function and local Stripe ------------


def test_demo_to_starter_to_a_pack_to_cancelled(
    page: Page, runtime: Runtime, backend: Backend
) -> None:
    """A new user sees why Demo cannot chat and the plans, pays for Starter on the local checkout
    page and chats on return without a reload; at the limit buys a pack and keeps chatting;
    cancels in the portal and is back on Demo."""
    email = "buyer@browser.test"
    sign_up_in_page(page, runtime.base_url, email)
    user = User(user_id_of(runtime.base_url, email), email)

    explainer = page.get_by_test_id("demo-explainer")
    expect(explainer).to_contain_text("cannot chat")
    expect(explainer).to_contain_text("30 tokens")
    expect(page.get_by_test_id("composer")).to_be_hidden()
    cards = page.get_by_test_id("plan-card")
    expect(cards).to_have_count(3)
    expect(cards.nth(0)).to_contain_text("Starter")
    expect(cards.nth(0)).to_contain_text("50,000 tokens a month")
    expect(cards.nth(0).get_by_test_id("plan-price")).to_contain_text(re.compile(r"\d"))

    starter = page.locator('[data-testid="plan-choose"][data-plan="starter"]')
    starter.focus()
    page.keyboard.press("Enter")
    pay = page.get_by_test_id("checkout-pay")
    expect(pay).to_be_visible()
    pay.click()

    wait_until_home(page, runtime)
    status = page.get_by_test_id("checkout-status")
    expect(status).to_have_attribute("data-phase", "confirmed")
    expect(status).to_contain_text("Starter")
    expect(page.get_by_test_id("usage-tokens")).to_have_text("0 / 50,000 tokens")
    expect(page.get_by_test_id("usage-plan")).to_have_text("Starter plan")
    assert "checkout=" not in page.url
    expect(page.get_by_test_id("offer")).to_be_hidden()
    send(page, "Hello from a paying customer")
    expect(page.get_by_test_id("message-tokens")).to_have_count(1)
    assert "offline model" in assistant_messages(page)[0]

    # Spend what is left but a few tokens elsewhere; the next message is refused as spent.
    backend.use_tokens(user, 50_000 - 5 - backend.used(user))
    send(page, "One more question")
    expect(page.get_by_test_id("limit-notice")).to_contain_text("too few for another reply")
    expect(page.get_by_test_id("message-input")).to_be_disabled()
    offer = page.get_by_test_id("offer")
    expect(offer.get_by_test_id("topup-buy")).to_have_count(2)
    expect(offer.get_by_test_id("manage-billing")).to_be_visible()
    expect(offer.locator('[data-testid="plan-choose"][data-plan="pro"]')).to_be_visible()
    expect(offer.locator('[data-testid="plan-choose"][data-plan="starter"]')).to_have_count(0)

    through_stripe(
        page, runtime, offer.locator('[data-testid="topup-buy"][data-topup="topup_25k"]')
    )
    expect(page.get_by_test_id("checkout-status")).to_contain_text("25,000 tokens were added")
    expect(page.get_by_test_id("usage-tokens")).to_have_text("49,995 / 75,000 tokens")
    expect(page.get_by_test_id("limit-notice")).to_have_count(0)
    box = page.get_by_test_id("message-input")
    expect(box).to_be_enabled()
    expect(box).to_have_value("One more question")
    box.press("Enter")
    expect(page.get_by_test_id("message-tokens")).to_have_count(2)

    through_stripe(page, runtime, page.get_by_test_id("billing-button"), "portal-cancel")
    expect(page.get_by_test_id("usage-plan")).to_have_text("Demo plan")
    expect(page.get_by_test_id("billing-button")).to_be_hidden()


def test_a_subscriber_upgrades_at_the_limit_through_the_portal(
    page: Page, runtime: Runtime, backend: Backend
) -> None:
    """A Starter subscriber at the limit chooses Pro: billing sends them to the portal's plan
    change (not a second subscription), and back on the page, with no query and no reload, the
    meter shows Pro once its invoice is paid, and the box is enabled again."""
    email = "upgrader@browser.test"
    sign_up_in_page(page, runtime.base_url, email)
    user = User(user_id_of(runtime.base_url, email), email)
    through_stripe(page, runtime, page.locator('[data-testid="plan-choose"][data-plan="starter"]'))
    expect(page.get_by_test_id("usage-plan")).to_have_text("Starter plan")
    backend.use_tokens(user, 50_000)
    page.reload()
    expect(page.get_by_test_id("limit-notice")).to_be_visible()

    pro = page.locator('[data-testid="plan-choose"][data-plan="pro"]')
    through_stripe(page, runtime, pro, "portal-plan-pro")
    expect(page.get_by_test_id("usage-plan")).to_have_text("Pro plan")
    expect(page.get_by_test_id("checkout-status")).to_contain_text("You are on the Pro plan")
    expect(page.get_by_test_id("limit-notice")).to_have_count(0)
    expect(page.get_by_test_id("message-input")).to_be_enabled()


# -- the page's side of each state, with the billing function answering at the HTTP edge ---------


def test_demo_view_lists_prices_and_is_usable_on_a_phone(
    page: Page, runtime: Runtime, backend: Backend
) -> None:
    """On a 375 px phone the Demo plans show name, tokens and Stripe's price, are buttons with
    labels a keyboard reaches, and nothing scrolls sideways."""
    billing = FakeBilling({"/plans": (200, SHELF)})
    page.route(BILLING_EXECUTIONS, billing)
    user = backend.sign_up("demo-phone", plan="demo")
    page.set_viewport_size({"width": 375, "height": 740})
    log_in(page, runtime.base_url, user)
    expect(page.get_by_test_id("plan-card")).to_have_count(3)
    pro = page.locator('[data-testid="plan-card"][data-plan="pro"]')
    expect(pro).to_contain_text("200,000 tokens a month")
    expect(pro.get_by_test_id("plan-price")).to_have_text("$29.00 a month")
    choose = pro.get_by_test_id("plan-choose")
    expect(choose).to_have_attribute(
        "aria-label", "Choose Pro: 200,000 tokens a month for $29.00 a month"
    )
    pack = page.locator('[data-testid="topup-buy"][data-topup="topup_100k"]')
    expect(pack).to_have_accessible_name("Buy +100,000 tokens once for $15.00")
    expect(page.get_by_test_id("message-input")).to_be_hidden()
    expect(page.get_by_test_id("manage-billing")).to_have_count(0)
    expect(page.get_by_test_id("billing-button")).to_be_hidden()
    no_horizontal_scroll(page)
    assert billing.calls[0]["method"] == "GET"

    reached: list[tuple[str, str]] = []
    for _ in range(14):
        page.keyboard.press("Tab")
        reached.append(
            page.evaluate(
                "() => { const e = document.activeElement; return [(e.dataset.testid || '') +"
                " ':' + (e.dataset.plan || e.dataset.topup || ''),"
                " getComputedStyle(e).outlineStyle]; }"
            )
        )
    names = [name for name, _ in reached]
    assert {"plan-choose:starter", "plan-choose:pro", "topup-buy:topup_25k"} <= set(names)
    assert all(outline != "none" for name, outline in reached if name.startswith("plan-choose"))


def test_a_cancelled_checkout_says_nothing_was_charged(
    page: Page, runtime: Runtime, backend: Backend
) -> None:
    """Choosing a plan posts {"plan": id} and follows the answered URL; coming back with
    ?checkout=cancel says nothing was charged and leaves a clean address."""
    billing = FakeBilling(
        {
            "/plans": (200, SHELF),
            "/checkout": (200, {"url": runtime.base_url + "/?checkout=cancel"}),
        }
    )
    page.route(BILLING_EXECUTIONS, billing)
    user = backend.sign_up("demo-cancel", plan="demo")
    log_in(page, runtime.base_url, user)
    page.locator('[data-testid="plan-choose"][data-plan="starter"]').click()
    wait_until_home(page, runtime)
    status = page.get_by_test_id("checkout-status")
    expect(status).to_contain_text("Nothing was charged")
    page.wait_for_function("() => !location.search.includes('checkout')")
    checkout = [call for call in billing.calls if call["path"] == "/checkout"]
    assert checkout[0]["method"] == "POST"
    assert json.loads(checkout[0]["body"]) == {"plan": "starter"}
    expect(page.get_by_test_id("demo-explainer")).to_be_visible()
    page.get_by_test_id("checkout-dismiss").click()
    expect(status).to_have_count(0)


@pytest.mark.parametrize(
    ("status", "wording"),
    [
        (409, "You already have this plan"),
        (503, "Billing is unavailable right now and nothing was charged"),
        (400, "no longer offered"),
    ],
    ids=["already-have-it", "stripe-down", "unknown-plan"],
)
def test_billing_errors_are_worded_for_the_user(
    page: Page, runtime: Runtime, backend: Backend, status: int, wording: str
) -> None:
    """A refused or failed checkout shows a clear message, keeps the page and its buttons usable."""
    error = {"error": {"code": "x", "message": "raw server text"}}
    billing = FakeBilling({"/plans": (200, SHELF), "/checkout": (status, error)})
    page.route(BILLING_EXECUTIONS, billing)
    user = backend.sign_up(f"billing-error-{status}", plan="demo")
    log_in(page, runtime.base_url, user)
    choose = page.locator('[data-testid="plan-choose"][data-plan="starter"]')
    choose.click()
    message = page.get_by_test_id("billing-error")
    expect(message).to_have_attribute("role", "alert")
    expect(message).to_contain_text(wording)
    expect(message).not_to_contain_text("raw server text")
    expect(choose).to_be_enabled()
    assert page.url == runtime.base_url + "/"


def test_plans_that_cannot_load_offer_a_retry(
    page: Page, runtime: Runtime, backend: Backend
) -> None:
    """When GET /plans fails the Demo view says so and Try again loads them."""
    billing = FakeBilling({"/plans": (503, {"error": {"code": "upstream_unavailable"}})})
    page.route(BILLING_EXECUTIONS, billing)
    user = backend.sign_up("plans-down", plan="demo")
    log_in(page, runtime.base_url, user)
    expect(page.get_by_test_id("plans-error")).to_contain_text("Billing is unavailable")
    billing.answers["/plans"] = (200, SHELF)
    page.get_by_test_id("plans-retry").click()
    expect(page.get_by_test_id("plan-card")).to_have_count(3)


def test_portal_without_a_customer_is_explained(
    page: Page, runtime: Runtime, backend: Backend
) -> None:
    """Manage billing for a plan with no Stripe customer yet (409) says what is missing."""
    page.route(
        BILLING_EXECUTIONS,
        FakeBilling({"/portal": (409, {"error": {"code": "conflict", "message": "x"}})}),
    )
    user = backend.sign_up("no-customer")
    log_in(page, runtime.base_url, user)
    page.get_by_test_id("billing-button").click()
    expect(page.get_by_test_id("billing-error")).to_contain_text("no billing account to manage")


def test_back_from_checkout_waits_for_the_new_allowance(
    page: Page, runtime: Runtime, backend: Backend
) -> None:
    """Back with ?checkout=success the page says the payment is being confirmed and reads the
    usage again until the pack shows, without a reload; a late confirmation is said clearly."""
    billing = FakeBilling(
        {
            "/plans": (200, {**SHELF, "currentPlan": "starter"}),
            "/checkout": (200, {"url": runtime.base_url + "/?checkout=success"}),
        }
    )
    page.route(BILLING_EXECUTIONS, billing)
    user = backend.sign_up("awaits-pack")
    backend.use_tokens(user, 50_000)
    log_in(page, runtime.base_url, user)
    page.locator('[data-testid="topup-buy"][data-topup="topup_25k"]').click()
    wait_until_home(page, runtime)
    status = page.get_by_test_id("checkout-status")
    expect(status).to_have_attribute("data-phase", "confirming")
    expect(status).to_contain_text("confirming")
    backend.add_topup(user, 25_000)
    expect(status).to_have_attribute("data-phase", "confirmed")
    expect(page.get_by_test_id("usage-tokens")).to_have_text("50,000 / 75,000 tokens")
    expect(page.get_by_test_id("message-input")).to_be_enabled()
    page.wait_for_function("() => location.search === ''")

    # The same again, with a confirmation that never arrives.
    backend.use_tokens(user, 25_000)
    page.reload()
    page.locator('[data-testid="topup-buy"][data-topup="topup_25k"]').click()
    wait_until_home(page, runtime)
    expect(status).to_have_attribute("data-phase", "slow", timeout=30_000)
    expect(status).to_contain_text("not confirmed yet")
    expect(page.get_by_test_id("checkout-check-again")).to_be_visible()
    page.wait_for_function("() => location.search === ''")


def test_a_message_too_long_for_what_is_left_keeps_the_box(
    page: Page, runtime: Runtime, backend: Backend
) -> None:
    """A 429 for one long message, with plenty left for a short one, asks to shorten it and
    keeps the box enabled with the text; a short message then goes through."""
    user = backend.sign_up("too-long")
    backend.use_tokens(user, 48_000)
    log_in(page, runtime.base_url, user)
    long_text = "Please read this carefully. " * 400
    send(page, long_text)
    notice = page.get_by_test_id("too-long-notice")
    expect(notice).to_contain_text("This message is too long for the 2,000 tokens left")
    expect(notice).to_contain_text("Shorten it")
    box = page.get_by_test_id("message-input")
    expect(box).to_be_enabled()
    expect(box).to_have_value(long_text.strip())
    expect(page.get_by_test_id("limit-notice")).to_have_count(0)
    expect(page.get_by_test_id("offer")).to_be_hidden()
    box.fill("Short one")
    box.press("Enter")
    expect(page.get_by_test_id("message-tokens")).to_have_count(1)
    expect(notice).to_have_count(0)


def test_an_alert_is_shown_once_and_stays_dismissed(
    page: Page, runtime: Runtime, backend: Backend
) -> None:
    """Crossing 75 % in a chat brings the period's alert into the warning banner (not beside
    it); dismissed, it stays dismissed after a reload."""
    user = backend.sign_up("alerted")
    backend.use_tokens(user, 37_450)
    log_in(page, runtime.base_url, user)
    expect(page.get_by_test_id("usage-banner")).to_have_count(0)
    send(page, "Push me past three quarters")
    banner = page.get_by_test_id("usage-banner")
    expect(banner).to_have_attribute("data-level", "warning")
    expect(banner).to_have_attribute("data-notice-id", re.compile(r".+"))
    expect(banner).to_contain_text("You have used 75 %")
    expect(banner).to_have_count(1)
    page.get_by_test_id("dismiss-alert").click()
    expect(banner).to_have_count(0)
    expect(page.get_by_test_id("message-input")).to_be_focused()
    page.reload()
    expect(page.get_by_test_id("usage-meter")).to_have_attribute("data-level", "warning")
    expect(page.get_by_test_id("usage-banner")).to_have_count(0)


def test_a_warning_offers_more_tokens_before_the_limit(
    page: Page, runtime: Runtime, backend: Backend
) -> None:
    """From the 90 % banner the user opens the packs and bigger plans (on a 375 px phone, with
    nothing scrolling sideways), keeps chatting, and can close them."""
    shelf = {**SHELF, "currentPlan": "starter"}
    page.route(BILLING_EXECUTIONS, FakeBilling({"/plans": (200, shelf)}))
    user = backend.sign_up("almost-out")
    backend.use_tokens(user, 46_000)
    page.set_viewport_size({"width": 375, "height": 740})
    log_in(page, runtime.base_url, user)
    page.get_by_test_id("show-offer").click()
    offer = page.get_by_test_id("offer")
    expect(offer).to_be_visible()
    expect(offer.get_by_test_id("topup-buy")).to_have_count(2)
    expect(offer.get_by_test_id("plan-card")).to_have_count(2)
    expect(offer.locator('[data-testid="plan-card"][data-plan="starter"]')).to_have_count(0)
    expect(offer).to_be_focused()
    page.keyboard.press("Tab")
    expect(page.get_by_test_id("offer-close")).to_be_focused()
    page.keyboard.press("Tab")
    expect(page.get_by_test_id("topup-buy").first).to_be_focused()
    no_horizontal_scroll(page)
    expect(page.get_by_test_id("message-input")).to_be_enabled()
    page.get_by_test_id("offer-close").click()
    expect(offer).to_be_hidden()
