"""Streamed turns through ``main(context)``: the Anthropic fake streams real SSE events at the
HTTP transport, and Stop, the deadline and every way a stream can end are charged what ran."""

from __future__ import annotations

import itertools
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from metering.turns import Turn

from localruntime.sqlite_store import SQLiteStore
from tests.support.anthropic_fake import (
    Event,
    FakeAnthropic,
    SSEBody,
    Streamed,
    error_event,
    stream_events,
    text_reply,
    tool_use_reply,
)
from tests.support.function_harness import NOW, Harness, running
from tests.support.recording import Holds
from tests.support.waiting import wait_until

INPUT_TOKENS = 300
# Each event of the scripted streams waits this long: a few events per progress interval.
EVENT_DELAY = 0.02
PROGRESS_INTERVAL = 0.05
# Events the stream may still send once the Stop is in the store: one progress interval's worth
# and the event in flight.
EVENTS_AFTER_STOP = int(PROGRESS_INTERVAL / EVENT_DELAY) + 2
LONG_TEXT = " ".join(f"word{i:03d}" for i in range(200))


def tokens_of(text: str) -> int:
    """The fake's token count of a text: a token per four characters, as the count rule uses."""
    return len(text) // 4


def count_rule(body: dict[str, Any]) -> int:
    """``count_tokens`` of a request: its texts, a token per four characters, plus framing."""
    texts: list[str] = []
    for message in body["messages"]:
        content = message["content"]
        if isinstance(content, str):
            texts.append(content)
            continue
        for block in content:
            texts.append(block.get("text") or json.dumps(block.get("input", "")))
    return 10 + sum(tokens_of(text) for text in texts)


@pytest.fixture
def store(tmp_path: Path) -> Holds:
    return Holds(SQLiteStore(str(tmp_path / "metering.sqlite3")))


@pytest.fixture
def chat(tmp_path: Path, store: Holds) -> Iterator[Harness]:
    environment = {
        "CHAT_PROGRESS_INTERVAL_SECONDS": str(PROGRESS_INTERVAL),
        "CHAT_TIMEOUT_SECONDS": "5",
        "CHAT_STOP_WAIT_SECONDS": "5",
    }
    model = FakeAnthropic(count_tokens=count_rule)
    with running("chat", tmp_path / "metering.sqlite3", environment, model, store) as harness:
        harness.seed("alice")
        yield harness


def ask(request_id: str, text: str = "Tell me a long story") -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": text}], "requestId": request_id}


def slow(reply: Any, **kwargs: Any) -> Streamed:
    return Streamed(stream_events(reply.document, chunk=16), delay_seconds=EVENT_DELAY, **kwargs)


class Turning:
    """A chat request running in a thread of its own, so the test can stop it meanwhile."""

    def __init__(self, chat: Harness, request_id: str, user: str = "alice") -> None:
        self.chat = chat
        self.request_id = request_id
        self.user = user
        self.result: Any = None
        self.thread = threading.Thread(target=self._run)
        self.thread.start()

    def _run(self) -> None:
        self.result = self.chat.call(ask(self.request_id), user=self.user)

    def stop(self) -> dict[str, Any]:
        path = f"/turns/{self.request_id}/stop"
        answer = self.chat.call(path=path, user=self.user)
        assert answer.status_code == 200, answer.body
        body: dict[str, Any] = answer.json()
        return body

    def join(self) -> dict[str, Any]:
        self.thread.join(timeout=30)
        assert self.result is not None
        assert self.result.status_code == 200, self.result.body
        body: dict[str, Any] = self.result.json()
        return body


def received_text(body: SSEBody) -> str:
    """The reply text of the events the fake sent before the client closed the stream."""
    return "".join(
        data["delta"].get("text", "") + data["delta"].get("partial_json", "")
        for _, data in body.events[: body.sent]
        if data.get("type") == "content_block_delta"
    )


def wait_for_text(chat: Harness, request_id: str, at_least: int = 1) -> None:
    def grown() -> bool:
        turn = chat.store().get_turn(request_id)
        return turn is not None and len(turn.content) >= at_least

    wait_until(grown, 10, what="the turn's text to grow")


def assert_settled_exactly(chat: Harness, store: Holds, user: str = "alice") -> None:
    account = chat.store().get_account(user)
    assert account is not None
    assert account.current_tokens_used == chat.store().ledger_total(user, account.period_start)


def assert_cut_and_charged(
    chat: Harness, store: Holds, request_id: str, *, sent_at_stop: int | None
) -> Turn:
    """The stream was closed, nothing was generated past one interval after the stop, no call
    followed, and the charge is the input plus the output received (measured, estimated)."""
    [body] = chat.model.streams
    assert body.closed or body.sent == body.drop_after
    if sent_at_stop is not None:
        # Cut by us: the rest of the reply was never requested.
        assert body.sent < len(body.events)
        assert body.sent <= sent_at_stop + EVENTS_AFTER_STOP
    assert len(chat.model.requests) == 1
    turn = chat.store().get_turn(request_id)
    assert turn is not None
    assert turn.status.final
    generated = tokens_of(received_text(body).rstrip())
    assert turn.usage.input_tokens == INPUT_TOKENS
    # Measured from the text received: the count's framing cancels, a token either way remains.
    assert abs(turn.usage.output_tokens - generated) <= 1
    assert turn.estimated
    assert turn.usage.total_tokens <= store.holds[0]
    assert_settled_exactly(chat, store)
    return turn


def test_a_turn_writes_its_text_in_batches_then_its_final_state(
    chat: Harness, store: Holds
) -> None:
    """The turn row's text grows while the reply streams; the end holds the exact usage."""
    reply = text_reply(LONG_TEXT, input_tokens=INPUT_TOKENS, output_tokens=180)
    chat.model.then(slow(reply))
    seen: list[str] = []
    turning = Turning(chat, "t-grow")

    def sample() -> bool:
        turn = chat.store().get_turn("t-grow")
        if turn is not None and turn.content and turn.content not in seen:
            seen.append(turn.content)
        return turn is not None and turn.status.final

    wait_until(sample, 20, what="the turn to finish")
    body = turning.join()

    assert len(seen) >= 3, "the text arrived in several writes"
    assert all(later.startswith(earlier) for earlier, later in itertools.pairwise(seen))
    assert body["message"]["content"] == LONG_TEXT
    assert body["message"]["estimated"] is False
    turn = chat.store().get_turn("t-grow")
    assert turn is not None
    assert (turn.status.value, turn.content, turn.usage.total_tokens) == (
        "completed",
        LONG_TEXT,
        INPUT_TOKENS + 180,
    )
    assert not turn.estimated
    assert_settled_exactly(chat, store)


def test_stop_mid_text_closes_the_stream_and_charges_what_was_generated(
    chat: Harness, store: Holds
) -> None:
    """Stop: the stream closes within an interval, the answer says stopped and what it cost."""
    reply = text_reply(LONG_TEXT, input_tokens=INPUT_TOKENS, output_tokens=180)
    chat.model.then(slow(reply))
    turning = Turning(chat, "t-stop")
    wait_for_text(chat, "t-stop", at_least=40)

    sent_at_stop = chat.model.streams[0].sent
    stopped = turning.stop()
    body = turning.join()

    assert stopped["turn"]["status"] == "stopped"
    assert stopped["turn"]["stopReason"] == "stopped"
    assert body["message"]["truncated"] is False
    turn = assert_cut_and_charged(chat, store, "t-stop", sent_at_stop=sent_at_stop)
    assert stopped["turn"]["usage"]["totalTokens"] == turn.usage.total_tokens
    assert stopped["usage"]["tokens"]["used"] == chat.used("alice")
    assert turn.content
    assert LONG_TEXT.startswith(turn.content)


def test_stop_before_the_first_token_charges_the_input_only(chat: Harness, store: Holds) -> None:
    """A Stop that lands before any text: the input was processed, no output is charged."""
    reply = text_reply(LONG_TEXT, input_tokens=INPUT_TOKENS, output_tokens=180)
    events = stream_events(reply.document)
    # A long silence (pings) between message_start and the first text.
    pings: tuple[Event, ...] = tuple(("ping", {"type": "ping"}) for _ in range(200))
    chat.model.then(Streamed((events[0], *pings, *events[1:]), delay_seconds=EVENT_DELAY))
    turning = Turning(chat, "t-early")
    wait_until(lambda: chat.model.streams and chat.model.streams[0].sent > 2, 10)

    sent_at_stop = chat.model.streams[0].sent
    turning.stop()
    turning.join()

    turn = assert_cut_and_charged(chat, store, "t-early", sent_at_stop=sent_at_stop)
    assert (turn.content, turn.usage.output_tokens) == ("", 0)


def test_stop_mid_tool_input_runs_no_tool_and_starts_no_call(chat: Harness, store: Holds) -> None:
    """Cut inside a tool call's JSON: the partial input is charged, the tool never runs."""
    reply = tool_use_reply(
        "get_my_usage",
        {"detail": "x" * 400},
        input_tokens=INPUT_TOKENS,
        output_tokens=150,
    )
    chat.model.then(slow(reply), text_reply("never asked"))
    turning = Turning(chat, "t-tool-json")
    wait_until(lambda: chat.model.streams and chat.model.streams[0].sent > 20, 10)

    sent_at_stop = chat.model.streams[0].sent
    turning.stop()
    turning.join()

    assert_cut_and_charged(chat, store, "t-tool-json", sent_at_stop=sent_at_stop)


def test_stop_between_steps_starts_no_further_call(chat: Harness, store: Holds) -> None:
    """A Stop that lands once a tool step settled: no tool result is sent to the model again."""
    first = tool_use_reply("get_my_usage", {}, input_tokens=INPUT_TOKENS, output_tokens=20)
    chat.model.then(first, text_reply("never asked"))
    store.after_settle.append(lambda: store.inner.request_stop("t-between", "alice", NOW))

    body = chat.call(ask("t-between"), user="alice").json()

    assert len(chat.model.requests) == 1
    assert body["message"]["usage"]["totalTokens"] == INPUT_TOKENS + 20
    assert body["message"]["estimated"] is False
    turn = chat.store().get_turn("t-between")
    assert turn is not None
    assert turn.status.value == "stopped"
    assert_settled_exactly(chat, store)


def test_stop_during_a_tool_starts_no_further_call(chat: Harness, store: Holds) -> None:
    """A Stop while the tool runs: the tool's step stays charged, no model call follows."""
    first = tool_use_reply("get_my_usage", {}, input_tokens=INPUT_TOKENS, output_tokens=20)
    chat.model.then(first, text_reply("never asked"))
    reads = 0
    inner_get = store.inner.get_account

    def get_account_and_stop(user_id: str) -> Any:
        # The usage tool reads the account: the Stop lands while it runs.
        nonlocal reads
        reads += 1
        if reads == 2:
            store.inner.request_stop("t-in-tool", "alice", NOW)
        return inner_get(user_id)

    store.inner.get_account = get_account_and_stop  # type: ignore[method-assign]
    body = chat.call(ask("t-in-tool"), user="alice").json()

    assert len(chat.model.requests) == 1
    assert body["message"]["usage"]["totalTokens"] == INPUT_TOKENS + 20
    turn = chat.store().get_turn("t-in-tool")
    assert turn is not None
    assert turn.status.value == "stopped"
    assert_settled_exactly(chat, store)


def test_the_deadline_cuts_a_call_and_charges_it_without_a_retry(
    tmp_path: Path, store: Holds
) -> None:
    """Past CHAT_TIMEOUT_SECONDS the call is cut like a Stop and charged; never tried again."""
    environment = {"CHAT_TIMEOUT_SECONDS": "1", "CHAT_MAX_RETRIES": "2"}
    model = FakeAnthropic(count_tokens=count_rule)
    reply = text_reply(LONG_TEXT * 3, input_tokens=INPUT_TOKENS, output_tokens=500)
    model.then(Streamed(stream_events(reply.document), delay_seconds=0.05))
    with running("chat", tmp_path / "metering.sqlite3", environment, model, store) as chat:
        chat.seed("alice")
        body = chat.call(ask("t-deadline"), user="alice").json()

        assert body["message"]["stopReason"] == "deadline"
        assert body["message"]["truncated"] is False
        assert chat.model.streams[0].sent < len(chat.model.streams[0].events)
        assert_cut_and_charged(chat, store, "t-deadline", sent_at_stop=None)


@pytest.mark.parametrize(
    "script",
    [
        pytest.param(
            lambda events: Streamed(events[:60], delay_seconds=0.001), id="no-message_stop"
        ),
        pytest.param(
            lambda events: Streamed((*events[:60], error_event()), delay_seconds=0.001),
            id="error-event",
        ),
        pytest.param(
            lambda events: Streamed(events, delay_seconds=0.001, drop_after=60),
            id="connection-lost",
        ),
    ],
)
def test_a_stream_that_breaks_off_is_charged_what_was_generated(
    chat: Harness, store: Holds, script: Any
) -> None:
    """A stream without message_stop, an error event, a lost connection: charged, not retried."""
    reply = text_reply(LONG_TEXT, input_tokens=INPUT_TOKENS, output_tokens=180)
    chat.model.then(script(stream_events(reply.document)))

    body = chat.call(ask("t-broken"), user="alice").json()

    assert body["message"]["stopReason"] == "interrupted"
    assert body["message"]["truncated"] is False
    assert_cut_and_charged(chat, store, "t-broken", sent_at_stop=None)


def test_two_streams_of_one_user_stop_independently(chat: Harness, store: Holds) -> None:
    """One Stop cuts its own turn only; both are charged exactly and the counter matches."""
    long_reply = text_reply(LONG_TEXT, input_tokens=INPUT_TOKENS, output_tokens=180)
    chat.model.then(slow(long_reply), slow(long_reply))
    first = Turning(chat, "t-one")
    second = Turning(chat, "t-two")
    wait_for_text(chat, "t-one", at_least=40)

    first.stop()
    first.join()
    second.join()

    one, two = chat.store().get_turn("t-one"), chat.store().get_turn("t-two")
    assert one is not None
    assert two is not None
    assert (one.status.value, two.status.value) == ("stopped", "completed")
    assert two.usage.total_tokens == INPUT_TOKENS + 180
    assert one.usage.total_tokens < two.usage.total_tokens
    assert_settled_exactly(chat, store)


def test_reading_a_turn_answers_its_state_to_its_user_only(chat: Harness) -> None:
    """GET /turns/{id}: the owner reads it; another user and an unknown id get the same 404."""
    chat.seed("mallory")
    chat.model.then(text_reply("Short answer.", input_tokens=INPUT_TOKENS, output_tokens=3))
    chat.call(ask("t-read"), user="alice")

    mine = chat.call(path="/turns/t-read", method="GET", user="alice")
    theirs = chat.call(path="/turns/t-read", method="GET", user="mallory")
    unknown = chat.call(path="/turns/t-nothing", method="GET", user="alice")
    stop_theirs = chat.call(path="/turns/t-read/stop", user="mallory")

    assert mine.status_code == 200
    assert mine.json()["turn"]["content"] == "Short answer."
    assert mine.json()["turn"]["status"] == "completed"
    for answer in (theirs, unknown, stop_theirs):
        assert answer.status_code == 404
        assert answer.json()["error"]["code"] == "not_found"


def test_stopping_a_finished_turn_answers_its_final_state(chat: Harness) -> None:
    """Stop is idempotent: a completed turn stays completed and is charged once."""
    chat.model.then(text_reply("Done.", input_tokens=INPUT_TOKENS, output_tokens=2))
    chat.call(ask("t-done"), user="alice")
    used = chat.used("alice")

    first = chat.call(path="/turns/t-done/stop", user="alice").json()
    second = chat.call(path="/turns/t-done/stop", user="alice").json()

    assert first["turn"]["status"] == second["turn"]["status"] == "completed"
    assert chat.used("alice") == used


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("GET", "/", 400),
        ("POST", "/turns/t-x", 400),
        ("GET", "/turns/t-x/stop", 400),
        ("GET", "/turns/bad id!", 400),
        ("GET", "/elsewhere", 404),
    ],
)
def test_routes_refuse_what_they_do_not_serve(
    chat: Harness, method: str, path: str, status: int
) -> None:
    """Wrong methods and paths answer a JSON error and change nothing."""
    before = chat.snapshot()
    answer = chat.call(path=path, method=method, user="alice")
    assert answer.status_code == status
    assert "error" in answer.json()
    assert chat.snapshot() == before


def test_a_refused_first_call_leaves_a_failed_turn_and_no_charge(chat: Harness) -> None:
    """The provider refused before generating: nothing is charged, the turn says failed."""
    chat.model.then(
        Streamed((("error", {"type": "error", "error": {"type": "overloaded_error"}}),))
    )
    answer = chat.call(ask("t-refused"), user="alice")

    assert answer.status_code == 503
    assert chat.used("alice") == 0
    turn = chat.store().get_turn("t-refused")
    assert turn is not None
    assert turn.status.value == "failed"
