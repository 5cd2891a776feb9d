"""Streamed model calls through the SDK's ``messages.stream``, against the API's SSE events."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from metering.adapters.anthropic_model import AnthropicModel
from metering.errors import UpstreamError, UpstreamUnavailable
from metering.model import (
    Block,
    Message,
    ModelReply,
    ModelRequest,
    TextBlock,
    ToolSpec,
    ToolUseBlock,
)
from metering.tokens import TokenUsage

from tests.support.anthropic_fake import (
    MODEL,
    Failure,
    FakeAnthropic,
    Raise,
    Reply,
    Streamed,
    connection_refused,
    error_event,
    stream_events,
    text_reply,
    tool_use_reply,
)

TOOL = ToolSpec(
    name="get_my_usage",
    description="The caller's usage.",
    input_schema={"type": "object", "properties": {}},
)
REQUEST = ModelRequest(
    model=MODEL,
    system="Be brief.",
    messages=(Message.text("user", "How much have I used?"),),
    max_tokens=300,
    tools=(TOOL,),
)
LONG_TEXT = "You have used a little of this month's allowance, and plenty is left. " * 3


@dataclass
class Sink:
    """Records what arrived; ``stop_when`` decides each poll, and the fake's read count at the
    first True is kept to check that nothing more was pulled."""

    fake: FakeAnthropic
    stop_when: Callable[[Sink], bool] = lambda sink: False
    texts: list[str] = field(default_factory=list)
    inputs: list[str] = field(default_factory=list)
    sent_at_stop: int | None = None

    def text(self, delta: str) -> None:
        self.texts.append(delta)

    def tool_input(self, delta: str) -> None:
        self.inputs.append(delta)

    def should_stop(self) -> bool:
        stop = self.stop_when(self)
        if stop and self.sent_at_stop is None:
            self.sent_at_stop = self.fake.streams[-1].sent
        return stop


def model_for(fake: FakeAnthropic, *, retries: int = 0) -> AnthropicModel:
    return AnthropicModel.connect(
        "sk-ant-test-key", timeout_seconds=5, max_retries=retries, http_client=fake.client()
    )


def assert_closed_promptly(fake: FakeAnthropic, sink: Sink) -> None:
    """The response is closed and, past the event in flight at the stop, nothing was read."""
    [body] = fake.streams
    assert body.closed
    assert sink.sent_at_stop is not None
    assert body.sent <= sink.sent_at_stop + 1
    assert body.sent < len(body.events)


CACHE_5M, CACHE_1H, CACHE_READ = 30, 70, 900


@pytest.mark.parametrize(
    "reply",
    [
        text_reply(
            LONG_TEXT,
            input_tokens=120,
            output_tokens=42,
            cache_write_5m=CACHE_5M,
            cache_write_1h=CACHE_1H,
            cache_read=CACHE_READ,
        ),
        tool_use_reply(
            "get_my_usage",
            {"scope": "month", "detail": True},
            cache_write_5m=CACHE_5M,
            cache_write_1h=CACHE_1H,
            cache_read=CACHE_READ,
        ),
    ],
    ids=["text", "tool_use"],
)
def test_a_completed_stream_reports_the_whole_message_and_its_usage(reply: Reply) -> None:
    """A stream that runs to message_stop gives the message's blocks, stop reason, model and
    exact usage, every delta on the sink, and a closed response."""
    fake = FakeAnthropic().then(reply)
    sink = Sink(fake)

    streamed = model_for(fake).stream(REQUEST, sink, deadline_seconds=5)

    assert streamed.reply == reply_of(reply.document)
    assert not streamed.cut
    assert streamed.output_reported
    assert streamed.reply.usage.cache_creation_1h_tokens == 70
    assert streamed.reply.usage.cache_creation_5m_tokens == 30
    assert streamed.reply.usage.cache_read_input_tokens == 900
    assert "".join(sink.texts) == streamed.reply.text
    for tool_use in streamed.reply.tool_uses:
        assert json.loads("".join(sink.inputs)) == tool_use.input
    assert fake.requests[0]["stream"] is True
    assert fake.streams[0].closed


def reply_of(document: dict[str, Any]) -> ModelReply:
    """The domain reply ``document`` stands for, read off the API's JSON by hand."""
    blocks: list[Block] = []
    for block in document["content"]:
        if block["type"] == "text":
            blocks.append(TextBlock(block["text"]))
        else:
            blocks.append(ToolUseBlock(block["id"], block["name"], block["input"]))
    usage = document["usage"]
    return ModelReply(
        blocks=tuple(blocks),
        stop_reason=document["stop_reason"],
        usage=TokenUsage(
            input_tokens=usage["input_tokens"],
            cache_creation_input_tokens=usage["cache_creation_input_tokens"],
            cache_read_input_tokens=usage["cache_read_input_tokens"],
            output_tokens=usage["output_tokens"],
            cache_creation_1h_tokens=usage["cache_creation"]["ephemeral_1h_input_tokens"],
            steps=1,
        ),
        model=document["model"],
    )


def test_stop_before_the_first_token_charges_the_input_only() -> None:
    """A Stop before any token keeps the exact input and cache figures and no output."""
    fake = FakeAnthropic().then(
        text_reply(
            LONG_TEXT,
            input_tokens=120,
            cache_write_5m=CACHE_5M,
            cache_write_1h=CACHE_1H,
            cache_read=CACHE_READ,
        )
    )
    sink = Sink(fake, stop_when=lambda sink: True)

    call = model_for(fake).stream(REQUEST, sink, deadline_seconds=5)

    assert call.cut
    assert not call.output_reported
    assert call.reply.blocks == ()
    assert call.reply.usage == TokenUsage(
        input_tokens=120,
        cache_creation_input_tokens=100,
        cache_creation_1h_tokens=70,
        cache_read_input_tokens=900,
        output_tokens=0,
        steps=1,
    )
    assert sink.texts == []
    assert_closed_promptly(fake, sink)


def test_stop_mid_text_keeps_the_text_received_and_closes() -> None:
    """A Stop mid-text closes the stream, keeping the text received so far."""
    fake = FakeAnthropic().then(text_reply(LONG_TEXT, input_tokens=120))
    sink = Sink(fake, stop_when=lambda sink: len(sink.texts) >= 3)

    call = model_for(fake).stream(REQUEST, sink, deadline_seconds=5)

    assert call.cut
    assert not call.output_reported
    assert call.reply.usage.output_tokens == 0
    assert call.reply.usage.input_tokens == 120
    assert call.reply.blocks == (TextBlock("".join(sink.texts)),)
    assert LONG_TEXT.startswith(call.reply.text)
    assert call.reply.text
    assert_closed_promptly(fake, sink)


def test_stop_mid_tool_input_keeps_the_partial_call_and_closes() -> None:
    """A Stop mid tool-input JSON closes the stream, keeping the partial tool call."""
    fake = FakeAnthropic().then(
        tool_use_reply("get_my_usage", {"scope": "month", "detail": "everything"}, text="")
    )
    sink = Sink(fake, stop_when=lambda sink: len(sink.inputs) >= 3)

    call = model_for(fake).stream(REQUEST, sink, deadline_seconds=5)

    assert call.cut
    assert len(sink.inputs) == 3
    [block] = call.reply.blocks
    assert isinstance(block, ToolUseBlock)
    assert block.name == "get_my_usage"
    assert_closed_promptly(fake, sink)


def _document() -> dict[str, object]:
    return text_reply(LONG_TEXT, input_tokens=120, output_tokens=42).document


@pytest.mark.parametrize(
    ("dropped", "reported", "output"),
    [(1, True, 42), (2, False, 0)],
    ids=["after-message-delta", "before-message-delta"],
)
def test_a_stream_ending_without_message_stop_is_a_cut(
    dropped: int, reported: bool, output: int
) -> None:
    """A stream that ends without message_stop is a cut; output only from a message_delta."""
    events = stream_events(_document())[:-dropped]
    fake = FakeAnthropic().then(Streamed(events))

    call = model_for(fake).stream(REQUEST, Sink(fake), deadline_seconds=5)

    assert call.cut
    assert call.output_reported is reported
    assert call.reply.usage.output_tokens == output
    assert call.reply.text == LONG_TEXT


@pytest.mark.parametrize(
    "failure",
    [
        pytest.param(
            lambda events: Streamed((*events[:6], error_event(), *events[6:])), id="error-event"
        ),
        pytest.param(lambda events: Streamed(events, drop_after=6), id="connection-lost"),
    ],
)
def test_a_failure_after_the_start_is_a_cut_never_retried_or_raised(
    failure: Callable[[tuple[Any, ...]], Streamed],
) -> None:
    """An error event or a lost connection mid-stream cuts the call: what arrived, no retry."""
    fake = FakeAnthropic().then(failure(tuple(stream_events(_document()))))
    sink = Sink(fake)

    call = model_for(fake, retries=1).stream(REQUEST, sink, deadline_seconds=5)

    assert call.cut
    assert not call.output_reported
    assert call.reply.usage.input_tokens == 120
    assert call.reply.text == "".join(sink.texts)
    assert call.reply.text
    assert len(fake.requests) == 1, "a started call is never retried"
    assert fake.streams[0].closed


@pytest.mark.parametrize(
    ("outcome", "error"),
    [
        (Failure(529), UpstreamUnavailable),
        (Failure(400), UpstreamError),
        (Raise(connection_refused), UpstreamUnavailable),
        (Streamed((error_event("overloaded_error"),)), UpstreamUnavailable),
        (Streamed((error_event("invalid_request_error"),)), UpstreamError),
        (Streamed((("ping", {"type": "ping"}),)), UpstreamUnavailable),
        (Streamed(stream_events(_document()), drop_after=0), UpstreamUnavailable),
    ],
    ids=[
        "529",
        "400",
        "refused",
        "overloaded-event",
        "invalid-event",
        "no-message-start",
        "dropped-before-start",
    ],
)
def test_a_call_refused_before_it_started_raises(
    outcome: Failure | Raise | Streamed, error: type[Exception]
) -> None:
    """A call the provider refused before message_start raises: nothing was generated."""
    fake = FakeAnthropic().then(outcome)

    with pytest.raises(error):
        model_for(fake).stream(REQUEST, Sink(fake), deadline_seconds=5)


def test_the_deadline_cuts_a_slow_stream() -> None:
    """Past its deadline a slow stream is cut and closed, like a Stop."""
    events = stream_events(_document(), chunk=2)
    fake = FakeAnthropic().then(Streamed(events, delay_seconds=0.02))

    began = time.monotonic()
    call = model_for(fake).stream(REQUEST, Sink(fake), deadline_seconds=0.2)
    elapsed = time.monotonic() - began

    assert call.cut
    assert call.reply.usage.input_tokens == 120
    assert 0.2 <= elapsed < 0.2 + 0.3
    [body] = fake.streams
    assert body.closed
    assert body.sent < len(events)
