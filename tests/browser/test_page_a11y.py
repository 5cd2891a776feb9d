"""The page for people using a keyboard or a screen reader: no serious axe-core violation on the
login, chat and limit views, keyboard-only use from login to logout, only new content announced,
focus and scroll left where the reader put them, and tokens rather than dollars by default."""

from __future__ import annotations

import json
import re

import pytest
from playwright.sync_api import Page, Route, expect

from localruntime.server import Runtime
from tests.browser.chat_page import Backend, log_in, send
from tests.browser.page_support import (
    CHAT_EXECUTIONS,
    FakeChat,
    axe_violations,
    focused_test_id,
    model_pace,
    signed_topup,
    wait_for_reply,
    writing,
)
from tests.browser.test_page_markdown import REPLY

pytestmark = pytest.mark.browser


def test_axe_finds_nothing_serious_on_the_login_view(page: Page, runtime: Runtime) -> None:
    """The login form, and the sign-up form it switches to, pass axe-core's serious checks."""
    page.goto(runtime.base_url + "/")
    expect(page.get_by_test_id("auth-view")).to_be_visible()
    assert axe_violations(page) == []
    page.get_by_test_id("auth-toggle").click()
    expect(page.get_by_test_id("auth-name-field")).to_be_visible()
    assert axe_violations(page) == []


def test_axe_finds_nothing_serious_on_the_chat_view(
    page: Page, runtime: Runtime, backend: Backend
) -> None:
    """A conversation with a rendered reply (code, table, links), its token details shown, and
    a reply being written pass axe-core's serious checks."""
    fake = FakeChat(REPLY)
    page.route(CHAT_EXECUTIONS, fake)
    user = backend.sign_up("axe-chat")
    backend.use_tokens(user, 38_000)
    log_in(page, runtime.base_url, user)
    send(page, "How do I read a file?")
    reply = wait_for_reply(page, 1)
    reply.get_by_test_id("message-tokens").focus()
    assert axe_violations(page) == []
    page.unroute(CHAT_EXECUTIONS)
    with model_pace(runtime, 4):
        send(page, "Something to write slowly")
        expect(writing(page).get_by_test_id("message-content")).to_have_text(re.compile(r"\w"))
        assert axe_violations(page) == []
        page.keyboard.press("Escape")
        expect(writing(page)).to_have_count(0, timeout=20_000)


def test_axe_finds_nothing_serious_on_the_limit_view(
    page: Page, runtime: Runtime, backend: Backend
) -> None:
    """At the limit (the notice, the disabled box, the packs and plans to buy) and with a message
    too long for what is left, axe-core finds nothing serious."""
    user = backend.sign_up("axe-limit")
    backend.use_tokens(user, 50_000)
    log_in(page, runtime.base_url, user)
    expect(page.get_by_test_id("topup-buy").first).to_be_visible()
    assert axe_violations(page) == []

    other = backend.sign_up("axe-too-long")
    backend.use_tokens(other, 48_000)
    page.get_by_test_id("logout").click()
    expect(page.get_by_test_id("auth-view")).to_be_visible()
    log_in(page, runtime.base_url, other)
    send(page, "Please read this carefully. " * 400)
    expect(page.get_by_test_id("too-long-notice")).to_be_visible()
    assert axe_violations(page) == []


def test_keyboard_only_from_login_to_logout(page: Page, runtime: Runtime, backend: Backend) -> None:
    """With the keyboard alone: log in, send, stop a reply with Esc, read its token details and
    the meter's parts, start a new chat and log out."""
    user = backend.sign_up("keys-only")
    page.goto(runtime.base_url + "/")
    expect(page.get_by_test_id("auth-email")).to_be_focused()
    page.keyboard.type(user.email)
    page.keyboard.press("Tab")
    page.keyboard.type(user.password)
    page.keyboard.press("Enter")
    box = page.get_by_test_id("message-input")
    expect(box).to_be_focused()
    with model_pace(runtime, 4):
        page.keyboard.type("Write me a short poem about autumn leaves on a river")
        page.keyboard.press("Enter")
        expect(writing(page).get_by_test_id("message-content")).to_have_text(re.compile(r"\w"))
        page.keyboard.press("Escape")
        reply = page.locator('[data-testid="message"][data-status="stopped"]')
        expect(reply).to_have_count(1, timeout=20_000)
    expect(box).to_be_focused()

    reached = []
    for _ in range(20):
        page.keyboard.press("Shift+Tab")
        reached.append(focused_test_id(page))
        if reached[-1] == "message-tokens":
            break
    assert reached[-1] == "message-tokens", reached
    expect(reply.get_by_test_id("message-token-breakdown")).to_be_visible()
    for _ in range(20):
        page.keyboard.press("Shift+Tab")
        if focused_test_id(page) == "usage-tokens":
            break
    expect(page.get_by_test_id("usage-composition")).to_be_visible()
    for _ in range(5):
        page.keyboard.press("Tab")
        if focused_test_id(page) == "new-chat":
            break
    page.keyboard.press("Enter")
    expect(page.get_by_test_id("message")).to_have_count(0)
    expect(box).to_be_focused()
    for _ in range(10):
        page.keyboard.press("Shift+Tab")
        if focused_test_id(page) == "logout":
            break
    page.keyboard.press("Enter")
    expect(page.get_by_test_id("auth-view")).to_be_visible()


def test_updates_keep_focus_and_announce_only_what_is_new(
    page: Page, runtime: Runtime, backend: Backend
) -> None:
    """A token chip keeps focus (the same node) while the meter and the conversation update
    around it; the conversation is not a live region, and the announcer says the new reply."""
    user = backend.sign_up("focus-kept")
    log_in(page, runtime.base_url, user)
    send(page, "First question")
    first = wait_for_reply(page, 1)
    expect(page.get_by_test_id("announcer")).to_contain_text("Reply:")
    expect(page.get_by_test_id("announcer")).to_contain_text("offline model")
    assert page.get_by_test_id("conversation").get_attribute("aria-live") is None

    chip = first.get_by_test_id("message-tokens")
    chip.focus()
    chip.evaluate("node => { node.__marked = true; }")
    page.wait_for_timeout(1_000)
    signed_topup(runtime, user, 25_000)
    expect(page.get_by_test_id("usage-tokens")).to_contain_text("75,000 tokens")
    expect(chip).to_be_focused()
    assert chip.evaluate("node => node.__marked === true")
    assert page.evaluate("document.activeElement.dataset.testid") == "message-tokens"


def test_the_view_stays_where_the_reader_scrolled(
    page: Page, runtime: Runtime, backend: Backend
) -> None:
    """Reading earlier messages while a reply is written: the page does not pull the view down
    to the reply; a reader at the end of the conversation follows it."""
    user = backend.sign_up("scroller")
    earlier = [
        {"id": f"m-{n}", "role": "user" if n % 2 == 0 else "assistant", "content": f"Line {n}"}
        for n in range(40)
    ]
    page.goto(runtime.base_url + "/")
    page.evaluate(
        "([key, value]) => localStorage.setItem(key, value)",
        [f"metered-chat:conversation:v1:{user.user_id}", json.dumps({"messages": earlier})],
    )
    log_in(page, runtime.base_url, user)
    conversation = page.get_by_test_id("conversation")
    expect(page.get_by_test_id("message")).to_have_count(40)
    with model_pace(runtime, 8):
        send(page, "Write me a short poem about autumn leaves on a river")
        expect(writing(page).get_by_test_id("message-content")).to_have_text(re.compile(r"\w"))
        conversation.evaluate("node => { node.scrollTop = 0; }")
        wait_for_reply(page, 1)
    assert conversation.evaluate("node => node.scrollTop") == 0
    send(page, "And one more")
    wait_for_reply(page, 2)
    at_end = conversation.evaluate(
        "node => node.scrollHeight - node.scrollTop - node.clientHeight < 48"
    )
    assert at_end


def test_users_see_tokens_and_the_operator_may_show_dollars(
    page: Page, runtime: Runtime, backend: Backend
) -> None:
    """A reply's details list tokens by kind and no cost; with showCost in config.json the cost
    is shown too."""
    user = backend.sign_up("no-dollars")
    log_in(page, runtime.base_url, user)
    send(page, "Hello")
    breakdown = wait_for_reply(page, 1).get_by_test_id("message-token-breakdown")
    expect(breakdown).to_contain_text("Output")
    expect(breakdown).not_to_contain_text("Cost")
    expect(breakdown).not_to_contain_text("$")

    def with_cost(route: Route) -> None:
        route.fulfill(json={**route.fetch().json(), "showCost": True})

    page.route("**/config.json", with_cost)
    page.reload()
    breakdown = page.get_by_test_id("message-token-breakdown")
    expect(breakdown).to_contain_text(re.compile(r"Cost\s*\$\d"))
