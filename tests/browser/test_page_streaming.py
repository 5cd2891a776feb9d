"""Streamed turns in the page: the text grows while it is written, Stop and Esc stop the turn on
the server and keep what was written (as context too), and a reload picks a turn up again."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from metering.ledger import LedgerStatus
from metering.turns import Turn, TurnStatus
from playwright.sync_api import Page, WebSocketRoute, expect

from localruntime.server import Runtime
from tests.browser.chat_page import Backend, log_in, send
from tests.browser.page_support import (
    CHAT_EXECUTIONS,
    WATCH_GROWTH,
    assistant,
    focused_test_id,
    growth,
    model_pace,
    request_id_of,
    wait_for_reply,
    writing,
)

pytestmark = pytest.mark.browser

# No word the offline model takes for a question about usage: one model call, no tool loop.
QUESTION = "Write me a short poem about autumn leaves falling on a quiet river at dusk"
SLOW = 6  # tokens a second: a reply of this question takes about ten seconds


def turn_of(runtime: Runtime, request_id: str) -> Turn:
    turn = runtime.store.get_turn(request_id)
    assert turn is not None, request_id
    return turn


def full_reply(page: Page, runtime: Runtime, backend: Backend, name: str) -> Turn:
    """The turn QUESTION gets when nobody stops it (the offline model answers it the same way
    every time), asked by another user so that nothing here is charged to the first."""
    other = backend.sign_up(name)
    page.get_by_test_id("logout").click()
    expect(page.get_by_test_id("auth-view")).to_be_visible()
    log_in(page, runtime.base_url, other)
    send(page, QUESTION)
    reply = wait_for_reply(page, 1)
    return turn_of(runtime, request_id_of(reply))


def started_turns(page: Page, sink: list[dict[str, Any]]) -> None:
    """Collects the chat body of every turn the page starts (its asynchronous executions)."""

    def record(request: Any) -> None:
        if not request.url.endswith("/v1/functions/chat/executions"):
            return
        execution = request.post_data_json
        if execution and execution.get("async") is True:
            sink.append(json.loads(execution["body"]))

    page.on("request", record)


def stop_mid_turn(page: Page, how: str) -> None:
    """Once the first words are on screen, Stop by the button or by Esc in the message box."""
    expect(writing(page).get_by_test_id("message-content")).to_have_text(re.compile(r"\w"))
    expect(page.get_by_test_id("stop-button")).to_be_visible()
    if how == "button":
        page.get_by_test_id("stop-button").click()
    else:
        page.get_by_test_id("message-input").press("Escape")


def test_the_text_grows_while_the_turn_is_written(
    page: Page, runtime: Runtime, backend: Backend
) -> None:
    """The reply shows in several steps before the turn ends, marked as being written, with
    Stop offered and Send off; at the end it is the turn's whole text with its tokens."""
    user = backend.sign_up("stream-grows")
    log_in(page, runtime.base_url, user)
    page.evaluate(WATCH_GROWTH)
    with model_pace(runtime, 20):
        send(page, QUESTION)
        state = writing(page).get_by_test_id("writing-state")
        expect(state).to_be_visible()
        expect(page.get_by_test_id("stop-button")).to_be_visible()
        expect(page.get_by_test_id("send-button")).to_be_disabled()
        expect(writing(page).get_by_test_id("message-content")).to_have_text(re.compile(r"\w"))
        expect(state).to_contain_text("Writing")
        reply = wait_for_reply(page, 1)
    shown = [length for length in growth(page) if length > 0]
    final = len(reply.get_by_test_id("message-content").inner_text())
    assert len(set(shown)) >= 2, shown
    assert shown[0] < final, (shown, final)
    turn = turn_of(runtime, request_id_of(reply))
    assert turn.status is TurnStatus.COMPLETED
    assert turn.content.split()[-1] in reply.inner_text()
    expect(reply).to_have_attribute("data-status", "completed")
    expect(page.get_by_test_id("stop-button")).to_be_hidden()
    assert backend.used(user) == turn.usage.total_tokens


@pytest.mark.parametrize("how", ["button", "escape"])
def test_stop_cuts_the_turn_on_the_server_and_keeps_the_text(
    page: Page, runtime: Runtime, backend: Backend, how: str
) -> None:
    """Stop (the button, or Esc in the box) stops generating on the server: the turn and its
    ledger row end with less than the whole reply, charged what ran, and the page shows the
    partial text with "Stopped · N tokens"; the next message sends it along as context."""
    user = backend.sign_up(f"stopper-{how}")
    log_in(page, runtime.base_url, user)
    sent: list[dict[str, Any]] = []
    started_turns(page, sent)
    with model_pace(runtime, SLOW):
        send(page, QUESTION)
        stop_mid_turn(page, how)
        expect(page.get_by_test_id("stop-label")).to_have_text(re.compile("Stop"))
        reply = assistant(page).first
        expect(reply).to_have_attribute("data-status", "stopped", timeout=20_000)
    meta = reply.get_by_test_id("message-meta")
    expect(meta).to_contain_text(re.compile(r"Stopped\s*·\s*[\d,]+ tokens"))
    expect(page.get_by_test_id("stop-button")).to_be_hidden()
    assert focused_test_id(page) == "message-input"

    request_id = request_id_of(reply)
    stopped = turn_of(runtime, request_id)
    assert stopped.status is TurnStatus.STOPPED
    entry = runtime.store.get_ledger(request_id)
    assert entry is not None
    assert entry.status is LedgerStatus.SETTLED
    assert entry.held_tokens == 0
    shown_total = int(re.sub(r"\D", "", reply.get_by_test_id("message-tokens").inner_text()))
    assert shown_total == stopped.usage.total_tokens == entry.usage.total_tokens
    assert backend.used(user) == stopped.usage.total_tokens
    assert stopped.content.split()[-1] in reply.inner_text()

    # The stopped text goes along with the next message, as the assistant's turn.
    send(page, "Go on from there")
    wait_for_reply(page, 2)
    follow_up = sent[-1]["messages"]
    assert follow_up[-2] == {"role": "assistant", "content": stopped.content}
    assert follow_up[-1] == {"role": "user", "content": "Go on from there"}

    whole = full_reply(page, runtime, backend, f"stopper-{how}-whole")
    assert whole.content.startswith(stopped.content)
    assert len(stopped.content) < len(whole.content)
    assert stopped.usage.output_tokens < whole.usage.output_tokens


def test_a_reload_mid_turn_picks_the_turn_up_again(
    page: Page, runtime: Runtime, backend: Backend
) -> None:
    """Reloaded while a reply is being written, the page shows the turn again from the server
    (its text so far, still being written) and follows it to its end, charged once."""
    user = backend.sign_up("reloader")
    log_in(page, runtime.base_url, user)
    with model_pace(runtime, SLOW):
        send(page, QUESTION)
        expect(writing(page).get_by_test_id("message-content")).to_have_text(re.compile(r"\w"))
        page.reload()
        expect(page.get_by_test_id("chat-view")).to_be_visible()
        expect(writing(page)).to_have_count(1)
        expect(writing(page).get_by_test_id("message-content")).to_have_text(re.compile(r"\w"))
        expect(page.get_by_test_id("stop-button")).to_be_visible()
        reply = wait_for_reply(page, 1)
    expect(reply).to_have_attribute("data-status", "completed")
    turn = turn_of(runtime, request_id_of(reply))
    assert turn.status is TurnStatus.COMPLETED
    assert turn.content.split()[-1] in reply.inner_text()
    expect(page.get_by_test_id("message")).to_have_count(2)
    assert backend.used(user) == turn.usage.total_tokens


def test_a_lost_connection_mid_turn_picks_the_turn_up_again(
    page: Page, runtime: Runtime, backend: Backend
) -> None:
    """The Realtime socket drops while a reply is written: the SDK connects again, the page
    reads the turn and follows it to its end, with the whole text and one reply."""
    sockets: list[WebSocketRoute] = []

    def through(socket: WebSocketRoute) -> None:
        socket.connect_to_server()
        sockets.append(socket)

    page.route_web_socket(re.compile(r"/v1/realtime"), through)
    user = backend.sign_up("reconnecter")
    log_in(page, runtime.base_url, user)
    with model_pace(runtime, SLOW):
        send(page, QUESTION)
        expect(writing(page).get_by_test_id("message-content")).to_have_text(re.compile(r"\w"))
        assert len(sockets) == 1
        sockets[0].close(code=4000, reason="dropped by the test")
        expect(page.get_by_test_id("stop-button")).to_be_visible()
        reply = wait_for_reply(page, 1)
    assert len(sockets) >= 2, "the SDK did not connect again"
    turn = turn_of(runtime, request_id_of(reply))
    assert turn.status is TurnStatus.COMPLETED
    assert turn.content.split()[-1] in reply.inner_text()
    expect(page.get_by_test_id("message")).to_have_count(2)


def test_a_turn_that_never_shows_up_is_given_back(
    page: Page, runtime: Runtime, backend: Backend
) -> None:
    """A turn whose execution the platform does not know (no row, no execution record) ends in
    "Message not sent" with the text back in the box, not in a reply that never comes."""
    user = backend.sign_up("lost-turn")
    log_in(page, runtime.base_url, user)

    def lose(route: Any) -> None:
        execution = route.request.post_data_json
        if execution.get("async"):
            queued = {"$id": "lost", "status": "waiting", "responseStatusCode": 0}
            route.fulfill(status=202, content_type="application/json", body=json.dumps(queued))
        else:
            route.continue_()

    page.route(CHAT_EXECUTIONS, lose)
    page.route(
        "**/v1/functions/chat/executions/lost",
        lambda route: route.fulfill(
            status=404,
            content_type="application/json",
            body=json.dumps({"message": "x", "code": 404, "type": "execution_not_found"}),
        ),
    )
    send(page, "Anyone there?")
    expect(writing(page)).to_have_count(1)
    banner = page.get_by_test_id("error-banner")
    expect(banner).to_contain_text("Message not sent")
    expect(page.get_by_test_id("message-input")).to_have_value("Anyone there?")
    expect(page.get_by_test_id("message")).to_have_count(0)
    expect(page.get_by_test_id("retry-button")).to_be_visible()
