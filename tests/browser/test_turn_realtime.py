"""A streamed turn followed through the real Web SDK realtime client in chromium: its user's
client receives the turn row's progress, then its final state; another user's receives nothing."""

from __future__ import annotations

import itertools
import uuid
from collections.abc import Iterator

import pytest
from metering import codec
from playwright.sync_api import Browser, Page

from localruntime.server import Runtime
from tests.browser.chat_page import Backend, User, log_in
from tests.browser.conftest import DESKTOP
from tests.browser.test_realtime import SENT, SUBSCRIBE

# Slow enough that the turn writes its text several times (CHAT_PROGRESS_INTERVAL_SECONDS).
PACE = 30.0
TURN_MS = 60_000
WAIT_MS = 10_000
SETTLE_MS = 1_000
QUESTION = "How should I start a budget when my income changes from month to month?"

# The turn as the page starts one: an asynchronous execution of chat with a requestId, sent by
# the SDK client the subscription was made with (so, as its logged-in user).
START_TURN = """
async ([requestId, text]) => {
  const { Functions } = await import("/vendor/appwrite.js");
  const config = await (await fetch("/config.json", { cache: "no-store" })).json();
  const body = JSON.stringify({ messages: [{ role: "user", content: text }], requestId });
  const execution = await new Functions(window.__client).createExecution(
    config.functions.chat, body, true, "/", "POST", { "content-type": "application/json" },
  );
  return execution.status;
}
"""

FINISHED = """
() => (window.__events || []).some((e) => ["completed", "stopped", "failed"].includes(
  e.payload.status))
"""


@pytest.fixture
def paced(runtime: Runtime) -> Iterator[None]:
    """The offline model at a reading pace for this test, whatever the runtime was started with."""
    before = runtime.model.tokens_per_second
    runtime.model.tokens_per_second = PACE
    yield
    runtime.model.tokens_per_second = before


def _subscribe(page: Page, channel: str) -> None:
    assert page.evaluate(SUBSCRIBE, channel) == "local"
    page.wait_for_function(SENT, timeout=WAIT_MS)


def _turn_channel(request_id: str) -> str:
    return f"databases.koffers_db.tables.turns.rows.{codec.row_key(request_id)}"


@pytest.mark.usefixtures("paced")
def test_owner_follows_a_streamed_turn_other_user_receives_nothing(
    runtime: Runtime, backend: Backend, page: Page, browser: Browser
) -> None:
    """Create, several updates whose text grows, then the completed turn with its usage, to the
    owner's SDK client alone."""
    owner: User = backend.sign_up("turn-owner")
    other: User = backend.sign_up("turn-other")
    request_id = f"turn-{uuid.uuid4().hex[:12]}"
    channel = _turn_channel(request_id)
    log_in(page, runtime.base_url, owner)
    _subscribe(page, channel)

    other_context = browser.new_context(viewport=DESKTOP, locale="en-US", timezone_id="UTC")
    try:
        other_page = other_context.new_page()
        errors: list[str] = []
        other_page.on("pageerror", lambda error: errors.append(str(error)))
        log_in(other_page, runtime.base_url, other)
        _subscribe(other_page, channel)
        # The runtime reads a subscribe message at once; a second lets it on a loaded machine.
        page.wait_for_timeout(SETTLE_MS)

        assert page.evaluate(START_TURN, [request_id, QUESTION]) in ("waiting", "processing")
        page.wait_for_function(FINISHED, timeout=TURN_MS)
        events = page.evaluate("window.__events")

        turn = runtime.store.get_turn(request_id)
        assert turn is not None
        assert turn.status.value == "completed"
        assert all(channel in event["channels"] for event in events)
        assert all(
            event["payload"]["$permissions"] == [f'read("user:{owner.user_id}")']
            for event in events
        )
        actions = [event["events"][0].rsplit(".", 1)[1] for event in events]
        assert actions[0] == "create"
        assert set(actions[1:]) == {"update"}
        payloads = [event["payload"] for event in events]
        assert payloads[0]["status"] == "pending"
        progress = [p["content"] for p in payloads if p["status"] == "streaming"]
        assert len(progress) >= 3, f"only {len(progress)} progress updates"
        assert all(len(a) < len(b) for a, b in itertools.pairwise(progress))
        assert all(turn.content.startswith(text) for text in progress)
        final = payloads[-1]
        assert (final["status"], final["content"]) == ("completed", turn.content)
        assert final["totalTokens"] == turn.usage.total_tokens > 0

        other_page.wait_for_timeout(SETTLE_MS)
        assert other_page.evaluate("window.__events") == []
        assert errors == [], f"the other page raised: {errors}"
    finally:
        other_context.close()
