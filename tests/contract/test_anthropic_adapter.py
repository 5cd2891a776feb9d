"""The Anthropic adapter against the Messages API wire format, through the real SDK: request
translation, usage and block mapping, errors and retries of the streamed call, and the count."""

from __future__ import annotations

import json

import pytest
from metering.adapters.anthropic_model import AnthropicModel
from metering.errors import UpstreamError, UpstreamUnavailable
from metering.model import (
    Message,
    ModelReply,
    ModelRequest,
    TextBlock,
    ToolResultBlock,
    ToolSpec,
    ToolUseBlock,
)
from metering.tokens import TokenUsage

from tests.support.anthropic_fake import (
    MODEL,
    Event,
    Failure,
    FakeAnthropic,
    Raise,
    Reply,
    Streamed,
    connection_refused,
    message_document,
    stream_events,
    text_reply,
    timeout,
    tool_use_reply,
    usage_document,
)
from tests.support.builders import token_usage

TOOL = ToolSpec(
    name="get_my_usage",
    description="The caller's usage.",
    input_schema={"type": "object", "properties": {}},
)


def request(**overrides: object) -> ModelRequest:
    fields: dict[str, object] = {
        "model": MODEL,
        "system": "Be brief.",
        "messages": (Message.text("user", "How much have I used?"),),
        "max_tokens": 300,
        "tools": (TOOL,),
    }
    fields.update(overrides)
    return ModelRequest(**fields)  # type: ignore[arg-type]


def model_for(
    fake: FakeAnthropic, *, retries: int = 0, base_url: str | None = None
) -> AnthropicModel:
    return AnthropicModel.connect(
        "sk-ant-test-key",
        base_url=base_url,
        timeout_seconds=5,
        max_retries=retries,
        http_client=fake.client(),
    )


class Collected:
    """A sink that takes every event and never asks to stop."""

    def text(self, delta: str) -> None:
        pass

    def tool_input(self, delta: str) -> None:
        pass

    def should_stop(self) -> bool:
        return False


def streamed(model: AnthropicModel, sent: ModelRequest) -> ModelReply:
    """The reply of one streamed call that ran to its ``message_stop``."""
    call = model.stream(sent, Collected(), deadline_seconds=5)
    assert not call.cut
    assert call.output_reported
    return call.reply


def test_request_carries_system_messages_tools_and_the_capped_max_tokens() -> None:
    """Domain turns, tool calls and results become the API's content blocks unchanged, with
    the prompt caching breakpoints on the system prompt and the newest message."""
    fake = FakeAnthropic().then(text_reply("Plenty left."))
    conversation = (
        Message.text("user", "How much have I used?"),
        Message(
            "assistant",
            (TextBlock("Checking."), ToolUseBlock("toolu_1", "get_my_usage", {"scope": "month"})),
        ),
        Message("user", (ToolResultBlock("toolu_1", '{"used": 5}', is_error=False),)),
    )

    streamed(model_for(fake), request(messages=conversation, max_tokens=77, tool_choice="none"))

    [body] = fake.requests
    assert body["stream"] is True
    assert body["model"] == MODEL
    assert body["max_tokens"] == 77
    assert body["system"] == [
        {"type": "text", "text": "Be brief.", "cache_control": {"type": "ephemeral"}}
    ]
    assert body["tools"] == [
        {
            "name": "get_my_usage",
            "description": "The caller's usage.",
            "input_schema": {"type": "object", "properties": {}},
        }
    ]
    assert body["tool_choice"] == {"type": "none"}
    assert body["messages"] == [
        {"role": "user", "content": [{"type": "text", "text": "How much have I used?"}]},
        {
            "role": "assistant",
            "content": [
                {"type": "text", "text": "Checking."},
                {
                    "type": "tool_use",
                    "id": "toolu_1",
                    "name": "get_my_usage",
                    "input": {"scope": "month"},
                },
            ],
        },
        {
            "role": "user",
            "content": [
                {
                    "type": "tool_result",
                    "tool_use_id": "toolu_1",
                    "content": '{"used": 5}',
                    "is_error": False,
                    "cache_control": {"type": "ephemeral"},
                },
            ],
        },
    ]
    sent = fake.headers[0]
    assert "sk-ant-test-key" in (sent.get("x-api-key", ""), sent.get("authorization", "")[7:])
    assert "anthropic-version" in fake.headers[0]


def test_no_tools_and_no_system_are_left_out_of_the_request() -> None:
    """Empty optional parameters are omitted rather than sent empty (the API refuses some)."""
    fake = FakeAnthropic().then(text_reply("Hi."))

    streamed(model_for(fake), request(system="", tools=()))

    assert not {"system", "tools", "tool_choice"} & set(fake.requests[0])


def test_base_url_is_honoured() -> None:
    """ANTHROPIC_BASE_URL points the client at another server (the local offline model)."""
    fake = FakeAnthropic().then(text_reply("Hi."))

    streamed(model_for(fake, base_url="http://127.0.0.1:8123/anthropic"), request())

    assert fake.urls[0] == "http://127.0.0.1:8123/anthropic/v1/messages"


def test_usage_maps_every_disjoint_field_including_one_hour_cache_writes() -> None:
    """Input, 5-minute and 1-hour cache writes, cache reads and output arrive as TokenUsage."""
    fake = FakeAnthropic().then(
        text_reply("Done.", 120, 45, cache_write_5m=300, cache_write_1h=200, cache_read=900)
    )

    reply = streamed(model_for(fake), request())

    assert reply.usage == token_usage(
        input=120, writes=500, reads=900, output=45, writes_1h=200, steps=1
    )
    assert reply.usage.total_tokens == 120 + 500 + 900 + 45
    assert (reply.text, reply.stop_reason, reply.model) == ("Done.", "end_turn", MODEL)


def test_usage_without_cache_fields_counts_them_as_zero() -> None:
    """Older answers omit the cache fields entirely; they count as nothing, not as an error."""
    document = message_document(
        [{"type": "text", "text": "Hi."}], {"input_tokens": 11, "output_tokens": 3}
    )
    fake = FakeAnthropic().then(Reply(document))

    reply = streamed(model_for(fake), request())

    assert reply.usage == TokenUsage(input_tokens=11, output_tokens=3, steps=1)


def with_a_thinking_block_first(events: tuple[Event, ...]) -> tuple[Event, ...]:
    """``events`` with a thinking block streamed before the message's own blocks."""
    shifted: list[Event] = [
        (name, {**data, "index": data["index"] + 1} if "index" in data else data)
        for name, data in events
    ]
    thinking: list[Event] = [
        (
            "content_block_start",
            {
                "type": "content_block_start",
                "index": 0,
                "content_block": {"type": "thinking", "thinking": "", "signature": ""},
            },
        ),
        (
            "content_block_delta",
            {
                "type": "content_block_delta",
                "index": 0,
                "delta": {"type": "thinking_delta", "thinking": "hmm"},
            },
        ),
        (
            "content_block_delta",
            {
                "type": "content_block_delta",
                "index": 0,
                "delta": {"type": "signature_delta", "signature": "sig"},
            },
        ),
        ("content_block_stop", {"type": "content_block_stop", "index": 0}),
    ]
    # After message_start and the ping.
    return (*shifted[:2], *thinking, *shifted[2:])


def test_tool_use_blocks_map_to_domain_blocks_and_unknown_kinds_are_dropped() -> None:
    """A tool call keeps its id, name and input; block kinds this client never asks for vanish."""
    document = tool_use_reply("get_my_usage", {"scope": "month"}).document
    fake = FakeAnthropic().then(Streamed(with_a_thinking_block_first(stream_events(document))))

    reply = streamed(model_for(fake), request())

    assert reply.stop_reason == "tool_use"
    [call] = reply.tool_uses
    assert (call.name, dict(call.input)) == ("get_my_usage", {"scope": "month"})
    assert call.id.startswith("toolu_")
    assert [type(block) for block in reply.blocks] == [TextBlock, ToolUseBlock]


def test_count_tokens_uses_the_free_counting_endpoint() -> None:
    """count_tokens posts the same conversation to /v1/messages/count_tokens, without max_tokens."""
    fake = FakeAnthropic(count_tokens=lambda body: 7 + len(body["messages"]))

    counted = model_for(fake).count_tokens(request())

    assert counted == 8
    assert fake.urls == ["https://api.anthropic.com/v1/messages/count_tokens"]
    assert fake.requests == []
    assert "max_tokens" not in fake.count_requests[0]
    assert fake.count_requests[0]["tools"][0]["name"] == "get_my_usage"


@pytest.mark.parametrize(
    ("outcome", "error"),
    [
        (Failure(400), UpstreamError),
        (Failure(401), UpstreamError),
        (Failure(403), UpstreamError),
        (Failure(404), UpstreamError),
        (Failure(413), UpstreamError),
        (Failure(429), UpstreamUnavailable),
        (Failure(500), UpstreamUnavailable),
        (Failure(503), UpstreamUnavailable),
        (Failure(529), UpstreamUnavailable),
        (Raise(timeout), UpstreamUnavailable),
        (Raise(connection_refused), UpstreamUnavailable),
    ],
    ids=[
        "400",
        "401",
        "403",
        "404",
        "413",
        "429",
        "500",
        "503",
        "529-overloaded",
        "timeout",
        "connection",
    ],
)
def test_sdk_failures_become_domain_errors(
    outcome: Failure | Raise, error: type[Exception]
) -> None:
    """Refusals are UpstreamError (502); overload, rate limits, outages and timeouts are 503;
    all raised before the stream starts, so nothing is charged."""
    fake = FakeAnthropic().then(outcome)

    with pytest.raises(error) as raised:
        model_for(fake).stream(request(), Collected(), deadline_seconds=5)

    assert not type(raised.value).__module__.startswith("anthropic")
    assert "sk-ant-test-key" not in str(raised.value)


def test_count_tokens_failures_are_translated_too() -> None:
    """The counting endpoint's errors surface as domain errors, not SDK exceptions."""
    fake = FakeAnthropic(count_failure=Raise(connection_refused))

    with pytest.raises(UpstreamUnavailable):
        model_for(fake).count_tokens(request())


def test_a_rate_limited_attempt_is_retried_within_max_retries() -> None:
    """With max_retries=1 a 429 carrying retry-after-ms is retried once and the reply used."""
    fake = FakeAnthropic().then(Failure(429, {"retry-after-ms": "1"}), text_reply("Second try."))

    reply = streamed(model_for(fake, retries=1), request())

    assert reply.text == "Second try."
    assert len(fake.requests) == 2


def test_a_reply_with_invalid_usage_is_an_upstream_error() -> None:
    """Negative token counts are not charged blindly: the reply is refused as an upstream error."""
    document = message_document([{"type": "text", "text": "x"}], usage_document(-5, 3))
    fake = FakeAnthropic().then(Reply(document))

    with pytest.raises(UpstreamError):
        model_for(fake).stream(request(), Collected(), deadline_seconds=5)


def test_request_and_reply_bodies_round_trip_as_json() -> None:
    """Tool inputs with nested values survive the trip through the SDK unchanged."""
    nested = {"filters": {"months": [1, 2]}, "note": "ünïcode"}
    fake = FakeAnthropic().then(tool_use_reply("lookup", nested))

    reply = streamed(model_for(fake), request())

    assert json.loads(json.dumps(dict(reply.tool_uses[0].input))) == nested
