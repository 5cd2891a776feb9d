"""The chat page in Debian's chromium against the local runtime: what a user sees and can do."""

from __future__ import annotations

import json
import re
import secrets
from collections.abc import Mapping
from typing import Any

import pytest
from playwright.sync_api import Page, Route, expect

from localruntime.server import Runtime
from tests.browser.chat_page import (
    Backend,
    assistant_messages,
    log_in,
    send,
)

pytestmark = pytest.mark.browser

CHAT_EXECUTIONS = "**/v1/functions/chat/executions"
GREEN = "rgb(31, 157, 85)"
YELLOW = "rgb(212, 160, 7)"
RED = "rgb(216, 52, 44)"


def bar_colour(page: Page) -> str:
    colour = page.get_by_test_id("usage-fill").evaluate(
        "node => getComputedStyle(node).backgroundColor"
    )
    return str(colour)


def execution(status: int, body: Mapping[str, Any]) -> str:
    """An Appwrite execution object carrying a function's answer."""
    return json.dumps(
        {
            "$id": "test-execution",
            "functionId": "chat",
            "trigger": "http",
            "status": "completed" if status < 500 else "failed",
            "responseStatusCode": status,
            "responseBody": json.dumps(body),
            "responseHeaders": [],
            "duration": 0.01,
        }
    )


def started_turn(request: Any) -> dict[str, Any] | None:
    """The chat body of a turn the page starts (an asynchronous execution), else None."""
    if not request.url.endswith("/v1/functions/chat/executions"):
        return None
    execution = request.post_data_json
    if not execution or execution.get("async") is not True:
        return None
    body: dict[str, Any] = json.loads(execution["body"])
    return body


def test_sign_up_log_out_and_log_in_again(page: Page, runtime: Runtime, backend: Backend) -> None:
    """A visitor creates an account, lands in the chat with a meter, logs out and back in."""
    page.goto(runtime.base_url + "/")
    expect(page.get_by_test_id("auth-view")).to_be_visible()
    expect(page.get_by_test_id("offline-badge")).to_be_visible()
    page.get_by_test_id("auth-toggle").click()
    expect(page.get_by_test_id("auth-title")).to_have_text("Create your account")
    email = f"new-{secrets.token_hex(6)}@browser.test"
    page.get_by_test_id("auth-name").fill("Grace")
    page.get_by_test_id("auth-email").fill(email)
    page.get_by_test_id("auth-password").fill("long-enough-password")
    page.get_by_test_id("auth-submit").click()
    expect(page.get_by_test_id("chat-view")).to_be_visible()
    expect(page.get_by_test_id("user-email")).to_have_text(email)
    expect(page.get_by_test_id("usage-meter")).to_be_visible()
    expect(page.get_by_test_id("usage-plan")).to_have_text("Demo plan")

    page.get_by_test_id("logout").click()
    expect(page.get_by_test_id("auth-view")).to_be_visible()
    page.reload()
    expect(page.get_by_test_id("auth-view")).to_be_visible()

    page.get_by_test_id("auth-email").fill(email)
    page.get_by_test_id("auth-password").fill("wrong-password")
    page.get_by_test_id("auth-submit").click()
    expect(page.get_by_test_id("auth-error")).to_have_text("Wrong email or password.")
    page.get_by_test_id("auth-password").fill("long-enough-password")
    page.get_by_test_id("auth-submit").click()
    expect(page.get_by_test_id("chat-view")).to_be_visible()


def test_reply_shows_its_tokens_and_moves_the_meter(
    page: Page, runtime: Runtime, backend: Backend
) -> None:
    """A sent message gets a reply with its token count and breakdown; the meter counts them."""
    user = backend.sign_up("ada")
    log_in(page, runtime.base_url, user)
    expect(page.get_by_test_id("usage-tokens")).to_have_text("0 / 50,000 tokens")
    expect(page.get_by_test_id("usage-bar")).to_have_attribute("aria-valuenow", "0")
    assert bar_colour(page) == GREEN

    box = page.get_by_test_id("message-input")
    box.fill("Hello there")
    box.press("Shift+Enter")
    box.press_sequentially("second line")
    expect(box).to_have_value("Hello there\nsecond line")
    box.press("Enter")

    reply = page.locator('[data-testid="message"][data-role="assistant"]')
    expect(reply).to_have_count(1)
    expect(reply.get_by_test_id("message-content")).to_contain_text("offline model")
    chip = reply.get_by_test_id("message-tokens")
    total = int(re.sub(r"\D", "", chip.inner_text()))
    assert total > 0
    assert backend.used(user) == total
    expect(page.get_by_test_id("usage-tokens")).to_have_text(f"{total:,} / 50,000 tokens")
    valuenow = float(page.get_by_test_id("usage-bar").get_attribute("aria-valuenow") or "0")
    assert valuenow > 0
    expect(box).to_have_value("")

    chip.focus()
    breakdown = reply.get_by_test_id("message-token-breakdown")
    expect(breakdown).to_be_visible()
    for label in ("Input", "Cache write", "Cache read", "Output", "Steps"):
        expect(breakdown).to_contain_text(label)
    # Dollars are the operator's figure: the user sees tokens.
    expect(breakdown).not_to_contain_text("Cost")


def test_warning_at_76_percent(page: Page, runtime: Runtime, backend: Backend) -> None:
    """At 76 % the bar turns yellow and a warning banner says how much is left."""
    user = backend.sign_up("grace")
    backend.use_tokens(user, 38_000)
    log_in(page, runtime.base_url, user)
    banner = page.get_by_test_id("usage-banner")
    expect(banner).to_have_attribute("role", "alert")
    expect(banner).to_contain_text("76%")
    expect(banner).to_contain_text("12,000 tokens left")
    expect(page.get_by_test_id("usage-percent")).to_have_text("76%")
    expect(page.get_by_test_id("usage-bar")).to_have_attribute("aria-valuenow", "76")
    assert bar_colour(page) == YELLOW
    expect(page.get_by_test_id("message-input")).to_be_enabled()


def test_critical_at_91_percent(page: Page, runtime: Runtime, backend: Backend) -> None:
    """At 91 % the bar turns red and the banner warns that replies may be cut short."""
    user = backend.sign_up("alan")
    backend.use_tokens(user, 45_500)
    log_in(page, runtime.base_url, user)
    banner = page.get_by_test_id("usage-banner")
    expect(banner).to_contain_text("Almost out of tokens: 91% used")
    expect(banner).to_contain_text("4,500 tokens left")
    expect(page.get_by_test_id("usage-bar")).to_have_attribute("aria-valuenow", "91")
    assert bar_colour(page) == RED
    expect(page.get_by_test_id("message-input")).to_be_enabled()


def test_at_the_limit_input_is_disabled_with_a_notice(
    page: Page, runtime: Runtime, backend: Backend
) -> None:
    """At 100 % a blocking notice says the allowance is spent and names the reset date, and input
    and send are disabled."""
    user = backend.sign_up("edsger")
    backend.use_tokens(user, 50_000)
    log_in(page, runtime.base_url, user)
    notice = page.get_by_test_id("limit-notice")
    expect(notice).to_have_attribute("role", "alert")
    expect(notice).to_contain_text("The allowance is spent")
    expect(notice).to_contain_text(re.compile(r"resets on [A-Z][a-z]{2} \d{1,2}, \d{4}"))
    expect(page.get_by_test_id("message-input")).to_be_disabled()
    expect(page.get_by_test_id("send-button")).to_be_disabled()
    expect(page.get_by_test_id("usage-banner")).to_have_count(0)
    expect(page.get_by_test_id("usage-percent")).to_have_text("100%")
    assert bar_colour(page) == RED


def test_limit_reached_mid_conversation_disables_input(
    page: Page, runtime: Runtime, backend: Backend
) -> None:
    """A 429 from the chat (the allowance ran out elsewhere, a few tokens short of the limit)
    shows the notice, blocks input and keeps the unsent message."""
    user = backend.sign_up("midway")
    log_in(page, runtime.base_url, user)
    send(page, "First question")
    expect(page.get_by_test_id("message-tokens")).to_have_count(1)
    backend.use_tokens(user, 50_000 - 5 - backend.used(user))

    send(page, "Second question")
    notice = page.get_by_test_id("limit-notice")
    expect(notice).to_contain_text("The 5 tokens left this period are too few for another reply")
    expect(page.get_by_test_id("message-input")).to_be_disabled()
    expect(page.get_by_test_id("message-input")).to_have_value("Second question")
    expect(page.get_by_test_id("send-button")).to_be_disabled()
    expect(page.get_by_test_id("usage-tokens")).to_have_text("49,995 / 50,000 tokens")
    assert len(assistant_messages(page)) == 1
    assert backend.used(user) == 49_995


def test_a_429_that_says_too_long_keeps_the_box_even_for_a_short_message(
    page: Page, runtime: Runtime, backend: Backend
) -> None:
    """The page follows the 429's own reason: a short message (which the size guess would call
    'spent') refused as message_too_long asks to shorten it and keeps the box enabled."""
    user = backend.sign_up("reasoned")
    backend.use_tokens(user, 48_000)
    log_in(page, runtime.base_url, user)
    refusal = {
        "code": "token_limit_exceeded",
        "message": "Monthly token limit reached",
        "details": [{"reason": "message_too_long", "remaining": 2_000}],
    }
    page.route(
        CHAT_EXECUTIONS,
        lambda route: route.fulfill(
            status=201, content_type="application/json", body=execution(429, {"error": refusal})
        ),
    )
    send(page, "Short")
    expect(page.get_by_test_id("too-long-notice")).to_contain_text(
        "This message is too long for the 2,000 tokens left"
    )
    expect(page.get_by_test_id("message-input")).to_be_enabled()
    expect(page.get_by_test_id("limit-notice")).to_have_count(0)


def test_markup_in_model_output_renders_as_text(
    page: Page, runtime: Runtime, backend: Backend
) -> None:
    """Markup the model sends back (the offline model quotes the message) is shown, not run."""
    user = backend.sign_up("markup")
    log_in(page, runtime.base_url, user)
    payload = "<script>window.__injected=1</script><img src=x onerror=window.__injected=2>"
    send(page, payload)
    reply = page.locator('[data-testid="message"][data-role="assistant"]')
    expect(reply.get_by_test_id("message-content")).to_contain_text("<script>window.__injected=1")
    conversation = page.get_by_test_id("conversation")
    assert conversation.locator("script, img").count() == 0
    assert page.evaluate("window.__injected") is None


def test_reload_keeps_the_conversation(page: Page, runtime: Runtime, backend: Backend) -> None:
    """The conversation, with each reply's token count, survives a reload; New chat clears it."""
    user = backend.sign_up("reload")
    log_in(page, runtime.base_url, user)
    send(page, "Remember me")
    expect(page.get_by_test_id("message-tokens")).to_have_count(1)
    before = page.get_by_test_id("conversation").inner_text()

    page.reload()
    expect(page.get_by_test_id("message")).to_have_count(2)
    expect(page.get_by_test_id("message-tokens")).to_have_count(1)
    assert page.get_by_test_id("conversation").inner_text() == before

    page.get_by_test_id("new-chat").click()
    expect(page.get_by_test_id("message")).to_have_count(0)
    page.reload()
    expect(page.get_by_test_id("empty-state")).to_be_visible()


def test_logout_clears_what_the_page_stored_for_the_user(
    page: Page, runtime: Runtime, backend: Backend
) -> None:
    """On a shared browser, logout leaves nothing of the user's in localStorage or
    sessionStorage: the next user sees an empty chat, and so does the first one back."""
    first, second = backend.sign_up("owner"), backend.sign_up("visitor")
    log_in(page, runtime.base_url, first)
    send(page, "Private note")
    expect(page.get_by_test_id("message-tokens")).to_have_count(1)
    stored = page.evaluate("Object.keys(localStorage)")
    assert f"metered-chat:conversation:v1:{first.user_id}" in stored
    page.get_by_test_id("logout").click()
    expect(page.get_by_test_id("auth-view")).to_be_visible()
    left = page.evaluate("[...Object.keys(localStorage), ...Object.keys(sessionStorage)]")
    assert [key for key in left if first.user_id in key or key.startswith("metered-chat:")] == []
    assert "Private note" not in page.content()

    log_in(page, runtime.base_url, second)
    expect(page.get_by_test_id("empty-state")).to_be_visible()
    page.get_by_test_id("logout").click()
    expect(page.get_by_test_id("auth-view")).to_be_visible()

    log_in(page, runtime.base_url, first)
    expect(page.get_by_test_id("empty-state")).to_be_visible()
    expect(page.get_by_test_id("message")).to_have_count(0)


@pytest.mark.parametrize(
    ("limit", "expected"),
    [(4, (["user", "assistant", "user"], "Message 2")), (1, (["user"], "Message 3"))],
    ids=["four", "one"],
)
def test_long_conversations_send_only_recent_messages(
    page: Page, runtime: Runtime, backend: Backend, limit: int, expected: tuple[list[str], str]
) -> None:
    """With historyMessages set, a request carries at most that many messages, starting with
    the user's, so a long conversation never outgrows the chat function's limit; with 1, only
    the new message goes (not the whole history)."""
    user = backend.sign_up(f"chatty-{limit}")

    def small_history(route: Route) -> None:
        config = route.fetch().json()
        route.fulfill(json={**config, "historyMessages": limit})

    page.route("**/config.json", small_history)
    log_in(page, runtime.base_url, user)
    bodies: list[dict[str, Any]] = []
    page.on("request", lambda request: bodies.append(started_turn(request) or {}))
    for number in range(1, 4):
        send(page, f"Message {number}")
        expect(page.get_by_test_id("message-tokens")).to_have_count(number)
    roles, first = expected
    body = [sent for sent in bodies if sent][-1]
    assert [m["role"] for m in body["messages"]] == roles
    assert body["messages"][0]["content"] == first
    assert body["messages"][-1]["content"] == "Message 3"


def test_server_error_offers_retry_without_losing_the_message(
    page: Page, runtime: Runtime, backend: Backend
) -> None:
    """A 5xx from the chat keeps the typed message and offers Retry, which then succeeds with the
    same request id (so a request that did run is charged once)."""
    user = backend.sign_up("barbara")
    log_in(page, runtime.base_url, user)
    request_ids: list[str] = []

    def record(request: Any) -> None:
        body = started_turn(request)
        if body is not None:
            request_ids.append(str(body["requestId"]))

    page.on("request", record)
    send(page, "What can you do?")
    expect(page.get_by_test_id("message-tokens")).to_have_count(1)
    page.route(
        CHAT_EXECUTIONS,
        lambda route: route.fulfill(
            status=201,
            content_type="application/json",
            body=execution(503, {"error": {"code": "upstream_unavailable", "message": "x"}}),
        ),
    )
    send(page, "Will this arrive?")
    banner = page.get_by_test_id("error-banner")
    expect(banner).to_have_attribute("role", "alert")
    expect(banner).to_contain_text("Message not sent")
    expect(page.get_by_test_id("message-input")).to_have_value("Will this arrive?")
    expect(page.get_by_test_id("message")).to_have_count(2)

    page.unroute(CHAT_EXECUTIONS)
    page.get_by_test_id("retry-button").click()
    expect(page.get_by_test_id("message-tokens")).to_have_count(2)
    expect(page.get_by_test_id("error-banner")).to_have_count(0)
    expect(page.get_by_test_id("message-input")).to_have_value("")
    assert len(request_ids) == 3
    assert request_ids[0] != request_ids[1]
    assert request_ids[1] == request_ids[2]


def test_network_failure_is_retryable(page: Page, runtime: Runtime, backend: Backend) -> None:
    """A request that never reaches the server is shown as retryable, the message kept."""
    user = backend.sign_up("network")
    log_in(page, runtime.base_url, user)
    page.route(CHAT_EXECUTIONS, lambda route: route.abort("internetdisconnected"))
    send(page, "Offline?")
    expect(page.get_by_test_id("error-banner")).to_contain_text("Couldn't reach the server")
    expect(page.get_by_test_id("retry-button")).to_be_visible()
    expect(page.get_by_test_id("message-input")).to_have_value("Offline?")


def test_unauthenticated_chat_returns_to_login(
    page: Page, runtime: Runtime, backend: Backend
) -> None:
    """A 401 (the session ended elsewhere) sends the user back to the login form."""
    user = backend.sign_up("expired")
    log_in(page, runtime.base_url, user)
    page.route(
        CHAT_EXECUTIONS,
        lambda route: route.fulfill(
            status=401,
            content_type="application/json",
            body=json.dumps(
                {"message": "No session", "code": 401, "type": "user_unauthorized", "version": "1"}
            ),
        ),
    )
    send(page, "Still there?")
    expect(page.get_by_test_id("auth-view")).to_be_visible()
    expect(page.get_by_test_id("auth-error")).to_contain_text("session has ended")


def test_narrow_viewport_has_no_horizontal_scroll(
    page: Page, runtime: Runtime, backend: Backend
) -> None:
    """At 375 px wide, with a banner and a long unbroken word, nothing scrolls sideways."""
    user = backend.sign_up("linus")
    backend.use_tokens(user, 45_500)
    page.set_viewport_size({"width": 375, "height": 740})
    log_in(page, runtime.base_url, user)
    send(page, "How do I read the meter on a phone?")
    expect(page.get_by_test_id("message-tokens")).to_have_count(1)
    expect(page.get_by_test_id("usage-banner")).to_be_visible()
    send(page, "W" * 300)
    expect(page.get_by_test_id("message-tokens")).to_have_count(2)
    widths = page.evaluate(
        "[document.documentElement.scrollWidth, document.documentElement.clientWidth]"
    )
    assert widths[0] <= widths[1], widths
    conversation = page.get_by_test_id("conversation")
    assert conversation.evaluate("node => node.scrollWidth <= node.clientWidth")


def test_keyboard_reaches_every_control_with_visible_focus(
    page: Page, runtime: Runtime, backend: Backend
) -> None:
    """Tab reaches the account buttons, the message box and Send, each with a focus outline."""
    user = backend.sign_up("keyboard")
    log_in(page, runtime.base_url, user)
    send(page, "Tab order")
    expect(page.get_by_test_id("message-tokens")).to_have_count(1)
    page.get_by_test_id("message-input").fill("draft")
    reached: list[str] = []
    for _ in range(12):
        page.keyboard.press("Tab")
        focused = page.evaluate(
            "() => { const e = document.activeElement;"
            " return [e.dataset.testid || e.tagName, getComputedStyle(e).outlineStyle]; }"
        )
        reached.append(focused[0])
        if focused[0] in {"new-chat", "logout", "message-input", "send-button", "message-tokens"}:
            assert focused[1] != "none", focused
    assert {"new-chat", "logout", "message-tokens", "message-input", "send-button"} <= set(reached)
