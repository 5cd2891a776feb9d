"""The live meter: it follows the account row through Realtime (a top-up paid elsewhere, a plan
change, a chat in another tab) with no reload, shows what the limit is made of, and the page
counts the tokens of the conversation on screen."""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import Page, expect

from localruntime.server import Runtime
from tests.browser.chat_page import Backend, log_in, send
from tests.browser.page_support import signed_topup, wait_for_reply

pytestmark = pytest.mark.browser


def composition(page: Page) -> dict[str, str]:
    rows = page.get_by_test_id("usage-composition-rows").locator(".tip-row")
    return {row.locator("dt").inner_text(): row.locator("dd").inner_text() for row in rows.all()}


def test_a_topup_paid_elsewhere_reaches_the_meter_without_a_reload(
    page: Page, runtime: Runtime, backend: Backend
) -> None:
    """At the limit, with the box disabled, a top-up's signed Stripe event arrives: the meter,
    the notice and the box follow at once, the user doing nothing; then a plan change too."""
    user = backend.sign_up("live-topup")
    backend.use_tokens(user, 50_000)
    log_in(page, runtime.base_url, user)
    expect(page.get_by_test_id("limit-notice")).to_be_visible()
    expect(page.get_by_test_id("message-input")).to_be_disabled()
    # The page is subscribed once its socket is open; a second covers a loaded machine.
    page.wait_for_timeout(1_000)

    signed_topup(runtime, user, 25_000)
    expect(page.get_by_test_id("usage-tokens")).to_have_text("50,000 / 75,000 tokens")
    expect(page.get_by_test_id("limit-notice")).to_have_count(0)
    expect(page.get_by_test_id("message-input")).to_be_enabled()
    assert composition(page)["Top-ups"] == "25,000"

    runtime.store.update_account(user.user_id, {"plan": "pro", "max_tokens_per_month": 200_000})
    expect(page.get_by_test_id("usage-plan")).to_have_text("Pro plan")
    expect(page.get_by_test_id("usage-tokens")).to_have_text("50,000 / 225,000 tokens")


def test_the_limit_shows_its_parts_on_hover_focus_and_tap(
    page: Page, runtime: Runtime, backend: Backend
) -> None:
    """The meter's figures explain the limit (plan, add-ons, top-ups, used, left) on hover, on
    keyboard focus and, on a phone, on a tap; Esc closes what a tap opened."""
    user = backend.sign_up("composition")
    backend.add_topup(user, 25_000)
    backend.use_tokens(user, 10_000)
    log_in(page, runtime.base_url, user)
    figures = page.get_by_test_id("usage-tokens")
    tip = page.get_by_test_id("usage-composition")
    expect(tip).to_be_hidden()
    figures.hover()
    expect(tip).to_be_visible()
    assert composition(page) == {
        "Starter plan": "50,000",
        "Add-ons": "0",
        "Top-ups": "25,000",
        "Limit": "75,000",
        "Used": "10,000",
        "Left": "65,000",
    }
    page.mouse.move(5, 700)
    expect(tip).to_be_hidden()
    figures.focus()
    expect(tip).to_be_visible()
    assert (figures.get_attribute("aria-describedby") or "") == "usage-composition"
    page.get_by_test_id("message-input").focus()
    expect(tip).to_be_hidden()

    page.set_viewport_size({"width": 375, "height": 740})
    # A tap is a click to the page: it toggles, where hover does not exist.
    figures.click()
    expect(tip).to_be_visible()
    expect(figures).to_have_attribute("aria-expanded", "true")
    page.get_by_test_id("message-input").focus()
    page.mouse.move(5, 700)
    expect(tip).to_be_visible()
    page.keyboard.press("Escape")
    expect(tip).to_be_hidden()
    expect(figures).to_have_attribute("aria-expanded", "false")


def test_a_chat_in_another_tab_moves_this_tabs_meter(
    page: Page, runtime: Runtime, backend: Backend
) -> None:
    """Two tabs of one user: a reply in the second shows in the first tab's meter, untouched."""
    user = backend.sign_up("two-tabs")
    log_in(page, runtime.base_url, user)
    expect(page.get_by_test_id("usage-tokens")).to_have_text("0 / 50,000 tokens")
    page.wait_for_timeout(1_000)
    other = page.context.new_page()
    other.goto(runtime.base_url + "/")
    expect(other.get_by_test_id("chat-view")).to_be_visible()
    send(other, "Hello from the other tab")
    wait_for_reply(other, 1)
    used = backend.used(user)
    assert used > 0
    expect(page.get_by_test_id("usage-tokens")).to_have_text(f"{used:,} / 50,000 tokens")
    expect(page.get_by_test_id("message")).to_have_count(0)
    other.close()


def test_the_conversation_shows_its_own_total(
    page: Page, runtime: Runtime, backend: Backend
) -> None:
    """Beside the per-reply counts, the page shows what the conversation has used so far; a new
    chat starts again from zero."""
    user = backend.sign_up("chat-total")
    log_in(page, runtime.base_url, user)
    total = page.get_by_test_id("conversation-tokens")
    expect(total).to_be_hidden()
    send(page, "First")
    first = wait_for_reply(page, 1)
    send(page, "Second")
    second = wait_for_reply(page, 2)
    counts = [
        int(re.sub(r"\D", "", reply.get_by_test_id("message-tokens").inner_text()))
        for reply in (first, second)
    ]
    expect(total).to_have_text(f"This chat: {sum(counts):,} tokens")
    assert backend.used(user) == sum(counts)
    page.get_by_test_id("new-chat").click()
    expect(total).to_be_hidden()
