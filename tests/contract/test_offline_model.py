"""The local runtime's offline model through the real Anthropic SDK: the Messages API's shapes,
usage, truncation, prompt caching, the usage tool round trip, streaming at its pace (and stopping
when the client closes) and the API's errors."""

from __future__ import annotations

import itertools
import json
import math
import re
import time
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import anthropic
import pytest
import requests
from hypothesis import given, settings
from hypothesis import strategies as st
from metering.adapters.anthropic_model import AnthropicModel
from metering.model import Message, ModelRequest

from localruntime.offline_model import OfflineModel, StreamRecord, StreamState
from localruntime.server import Runtime
from tests.support.runtime import running
from tests.support.waiting import wait_until

MODEL = "claude-sonnet-5-5"
USAGE_TOOL: Any = {
    "name": "get_my_usage",
    "description": "The caller's token usage this period.",
    "input_schema": {"type": "object", "properties": {}},
}
NO_TOOLS: Any = {"type": "none"}
STATS = {
    "userId": "u1",
    "plan": "starter",
    "level": "ok",
    "tokens": {"used": 1234, "limit": 50000, "remaining": 48766, "percent": 2.5},
}


# Slow enough that a test can close a stream half-way, fast enough that a reply takes seconds.
PACE = 25.0
LONG_QUESTION = " ".join(f"word{n}" for n in range(40)) + ": can you explain budgeting to me?"


@pytest.fixture(scope="module")
def runtime(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Runtime]:
    env = {"OFFLINE_MODEL_TOKENS_PER_SECOND": "0"}
    with running(tmp_path_factory.mktemp("offline"), functions={}, env=env) as started:
        yield started


@pytest.fixture(scope="module")
def paced(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Runtime]:
    env = {"OFFLINE_MODEL_TOKENS_PER_SECOND": str(PACE)}
    with running(tmp_path_factory.mktemp("offline-paced"), functions={}, env=env) as started:
        yield started


def sdk(runtime: Runtime) -> anthropic.Anthropic:
    return anthropic.Anthropic(
        api_key="offline-local-key",
        base_url=runtime.base_url + "/_offline/anthropic",
        max_retries=0,
    )


@pytest.fixture
def client(runtime: Runtime) -> anthropic.Anthropic:
    return sdk(runtime)


def ask(text: str) -> list[Any]:
    return [{"role": "user", "content": text}]


def test_a_reply_is_deterministic_and_its_usage_matches_count_tokens(
    client: anthropic.Anthropic,
) -> None:
    messages = ask("What is a sinking fund?")
    first = client.messages.create(model=MODEL, max_tokens=512, messages=messages)
    second = client.messages.create(model=MODEL, max_tokens=512, messages=messages)
    counted = client.messages.count_tokens(model=MODEL, messages=messages).input_tokens
    assert first.content[0].type == "text"
    text = first.content[0].text
    assert (second.content[0].type, getattr(second.content[0], "text", None)) == ("text", text)
    assert "sinking fund" in text
    assert (first.stop_reason, first.model, first.role) == ("end_turn", MODEL, "assistant")
    assert first.usage.input_tokens == counted > 0
    assert first.usage.output_tokens == math.ceil(len(text) / 4)
    assert (first.usage.cache_creation_input_tokens, first.usage.cache_read_input_tokens) == (0, 0)


def test_different_questions_get_different_replies(client: anthropic.Anthropic) -> None:
    one = client.messages.create(model=MODEL, max_tokens=512, messages=ask("Hello"))
    two = client.messages.create(model=MODEL, max_tokens=512, messages=ask("Goodbye"))
    assert one.content != two.content


@pytest.mark.parametrize("max_tokens", [1, 5, 17])
def test_a_reply_is_cut_at_max_tokens(client: anthropic.Anthropic, max_tokens: int) -> None:
    reply = client.messages.create(
        model=MODEL, max_tokens=max_tokens, messages=ask("Explain compound interest to me.")
    )
    assert reply.stop_reason == "max_tokens"
    assert reply.usage.output_tokens == max_tokens
    assert reply.content[0].type == "text"
    assert len(reply.content[0].text) <= max_tokens * 4


def test_a_usage_question_calls_the_tool_then_answers_from_its_result(
    client: anthropic.Anthropic,
) -> None:
    messages: list[Any] = ask("How many tokens do I have left this month?")
    call = client.messages.create(
        model=MODEL, max_tokens=256, messages=messages, tools=[USAGE_TOOL]
    )
    assert call.stop_reason == "tool_use"
    uses = [block for block in call.content if block.type == "tool_use"]
    assert [(use.name, use.input) for use in uses] == [("get_my_usage", {})]
    messages += [
        {"role": "assistant", "content": [block.model_dump() for block in call.content]},
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": uses[0].id, "content": json.dumps(STATS)}
            ],
        },
    ]
    answer = client.messages.create(
        model=MODEL, max_tokens=256, messages=messages, tools=[USAGE_TOOL]
    )
    assert answer.stop_reason == "end_turn"
    assert answer.content[0].type == "text"
    assert "1,234" in answer.content[0].text
    assert "50,000" in answer.content[0].text


def test_tool_choice_none_answers_without_calling_the_tool(client: anthropic.Anthropic) -> None:
    reply = client.messages.create(
        model=MODEL,
        max_tokens=256,
        messages=ask("How many tokens have I used?"),
        tools=[USAGE_TOOL],
        tool_choice=NO_TOOLS,
    )
    assert [block.type for block in reply.content] == ["text"]


def test_a_question_not_about_usage_does_not_call_the_tool(client: anthropic.Anthropic) -> None:
    reply = client.messages.create(
        model=MODEL, max_tokens=256, messages=ask("Hi! What's a good name for a cat?"),
        tools=[USAGE_TOOL],
    )  # fmt: skip
    assert reply.stop_reason == "end_turn"


def test_a_cached_prefix_is_written_once_then_read(client: anthropic.Anthropic) -> None:
    system: Any = [
        {
            "type": "text",
            "text": "You are a careful assistant. " * 200,
            "cache_control": {"type": "ephemeral"},
        }
    ]
    messages = ask("Hello")
    counted = client.messages.count_tokens(model=MODEL, system=system, messages=messages)
    first = client.messages.create(model=MODEL, max_tokens=64, system=system, messages=messages)
    second = client.messages.create(model=MODEL, max_tokens=64, system=system, messages=messages)
    written = first.usage.cache_creation_input_tokens or 0
    assert written >= 1024
    assert first.usage.cache_creation is not None
    assert first.usage.cache_creation.ephemeral_5m_input_tokens == written
    assert (second.usage.cache_read_input_tokens, second.usage.cache_creation_input_tokens) == (
        written,
        0,
    )
    for usage in (first.usage, second.usage):
        parts = (
            usage.input_tokens
            + (usage.cache_creation_input_tokens or 0)
            + (usage.cache_read_input_tokens or 0)
        )
        assert parts == counted.input_tokens


def test_a_short_prefix_is_not_cached(client: anthropic.Anthropic) -> None:
    system: Any = [{"type": "text", "text": "Be brief.", "cache_control": {"type": "ephemeral"}}]
    reply = client.messages.create(model=MODEL, max_tokens=64, system=system, messages=ask("Hi"))
    assert (reply.usage.cache_creation_input_tokens, reply.usage.cache_read_input_tokens) == (0, 0)


def test_the_next_turn_through_the_chat_adapter_reads_the_turn_before(runtime: Runtime) -> None:
    """``make dev`` shows the effect: the adapter's breakpoints make the second turn read the
    first turn's prompt and write only what it added."""
    model = AnthropicModel.connect(
        "offline-local-key",
        base_url=runtime.base_url + "/_offline/anthropic",
        timeout_seconds=10,
        max_retries=0,
    )
    # Long enough to pass the minimum; its own words, so that no other test cached it.
    question = "Explain the envelope budgeting method to me. " * 100
    first = ModelRequest(
        model=MODEL,
        system="Be helpful.",
        messages=(Message.text("user", question),),
        max_tokens=300,
    )
    written = model.complete(first)
    second = replace(
        first,
        messages=(
            *first.messages,
            Message.text("assistant", written.text),
            Message.text("user", "And for a family of four?"),
        ),
    )
    read = model.complete(second)

    assert written.usage.cache_creation_input_tokens == model.count_tokens(first) >= 1024
    assert read.usage.cache_read_input_tokens == written.usage.cache_creation_input_tokens
    assert read.usage.cache_creation_input_tokens == model.count_tokens(
        second
    ) - model.count_tokens(first)
    assert read.usage.input_tokens == 0


def test_an_offline_cache_entry_lives_five_minutes_from_its_last_use() -> None:
    now = [0.0]
    model = OfflineModel(clock=lambda: now[0])
    system = [
        {"type": "text", "text": "Budget carefully. " * 300, "cache_control": {"type": "ephemeral"}}
    ]
    request = {"model": MODEL, "max_tokens": 32, "system": system, "messages": ask("Hi")}

    def kinds() -> tuple[int, int]:
        usage = model.create_message(request)["usage"]
        return usage["cache_creation_input_tokens"], usage["cache_read_input_tokens"]

    written, _ = kinds()
    assert written >= 1024
    now[0] = 299.0
    assert kinds() == (0, written)
    now[0] = 598.0  # alive: the read at 299 s refreshed it
    assert kinds() == (0, written)
    now[0] = 898.0  # five minutes without use
    assert kinds() == (written, 0)


def test_more_than_four_breakpoints_are_an_invalid_request(client: anthropic.Anthropic) -> None:
    marked: Any = {"type": "text", "text": "Budget.", "cache_control": {"type": "ephemeral"}}
    with pytest.raises(anthropic.BadRequestError, match="maximum of 4"):
        client.messages.create(
            model=MODEL,
            max_tokens=32,
            system=[marked] * 3,
            messages=[{"role": "user", "content": [marked, marked]}],
        )


def test_no_api_key_is_an_authentication_error(runtime: Runtime) -> None:
    response = requests.post(
        runtime.base_url + "/_offline/anthropic/v1/messages",
        json={"model": MODEL, "max_tokens": 10, "messages": ask("Hi")},
        headers={"anthropic-version": "2023-06-01"},
        timeout=30,
    )
    assert response.status_code == 401
    assert response.json()["error"]["type"] == "authentication_error"


@pytest.mark.parametrize(
    "arguments",
    [
        {"max_tokens": 0, "messages": ask("Hi")},
        {"max_tokens": 10, "messages": []},
        {"max_tokens": 10, "messages": [{"role": "assistant", "content": "first"}]},
        {"max_tokens": 10, "messages": [{"role": "system", "content": "x"}]},
    ],
    ids=["zero-max-tokens", "no-messages", "assistant-first", "unknown-role"],
)
def test_malformed_requests_are_bad_request_errors(
    client: anthropic.Anthropic, arguments: dict[str, Any]
) -> None:
    with pytest.raises(anthropic.BadRequestError) as raised:
        client.messages.create(model=MODEL, **arguments)
    assert raised.value.status_code == 400


def test_a_malformed_streamed_request_is_refused_before_any_event(
    client: anthropic.Anthropic,
) -> None:
    with pytest.raises(anthropic.BadRequestError) as raised:  # noqa: SIM117 -- entering raises
        with client.messages.stream(model=MODEL, max_tokens=0, messages=ask("Hi")):
            pass
    assert isinstance(raised.value.body, dict)
    assert raised.value.body["error"]["type"] == "invalid_request_error"


def blocks(message: Any) -> list[dict[str, Any]]:
    """The content blocks as the API sent them (a streamed message adds a parsed output)."""
    return [block.model_dump(exclude={"parsed_output"}) for block in message.content]


def record_of(runtime: Runtime, message_id: str) -> StreamRecord:
    record = runtime.model.stream_record(message_id)
    assert record is not None, f"the offline model has no stream {message_id}"
    return record


def test_a_streamed_reply_grows_at_the_set_pace_to_the_non_streamed_reply(
    paced: Runtime,
) -> None:
    """Same text, stop reason and usage as the non-streamed answer, a token per delta, each
    snapshot extending the last, and no faster than the pace allows."""
    client = sdk(paced)
    messages = ask("What is a sinking fund?")
    whole = client.messages.create(model=MODEL, max_tokens=512, messages=messages)
    seen: list[tuple[float, str]] = []
    kinds: list[str] = []
    with client.messages.stream(model=MODEL, max_tokens=512, messages=messages) as stream:
        for event in stream:
            kinds.append(event.type)
            if event.type == "text":
                seen.append((time.monotonic(), event.snapshot))
        final = stream.get_final_message()
    assert kinds[:2] == ["message_start", "content_block_start"]
    assert kinds[-2:] == ["message_delta", "message_stop"]
    assert blocks(final) == blocks(whole)
    assert final.stop_reason == whole.stop_reason == "end_turn"
    assert final.usage == whole.usage
    texts = [text for _, text in seen]
    assert all(len(a) < len(b) and b.startswith(a) for a, b in itertools.pairwise(texts))
    record = record_of(paced, final.id)
    assert len(seen) == record.tokens == record.sent_tokens == math.ceil(len(texts[-1]) / 4)
    assert record.state is StreamState.COMPLETED
    # The server sleeps between deltas: half of the paced duration is a bound no load breaks.
    assert seen[-1][0] - seen[0][0] >= 0.5 * (len(seen) - 1) / PACE


def test_the_wire_carries_the_apis_event_sequence(runtime: Runtime) -> None:
    """What the SDK parses (and hides, like ``ping``): named events whose data names them too,
    the input usage on ``message_start`` and the cumulative usage on ``message_delta``."""
    response = requests.post(
        runtime.base_url + "/_offline/anthropic/v1/messages",
        json={"model": MODEL, "max_tokens": 256, "messages": ask("Hello"), "stream": True},
        headers={"x-api-key": "offline-local-key"},
        timeout=30,
    )
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    frames = [frame for frame in response.text.split("\n\n") if frame]
    events = [
        (f.split("\n")[0].removeprefix("event: "), json.loads(f.split("\n")[1][6:])) for f in frames
    ]
    assert all(data["type"] == name for name, data in events)
    names = " ".join(name for name, _ in events)
    assert re.fullmatch(
        "message_start content_block_start ping (content_block_delta )+content_block_stop "
        "message_delta message_stop",
        names,
    )
    start, delta = events[0][1]["message"], events[-2][1]
    assert (start["content"], start["stop_reason"], start["usage"]["output_tokens"]) == (
        [],
        None,
        1,
    )
    assert delta["delta"] == {"stop_reason": "end_turn", "stop_sequence": None}
    text = "".join(data["delta"]["text"] for name, data in events if name == "content_block_delta")
    assert delta["usage"]["output_tokens"] == math.ceil(len(text) / 4)
    assert delta["usage"]["input_tokens"] == start["usage"]["input_tokens"]


def test_a_streamed_tool_call_sends_its_input_as_json_deltas(client: anthropic.Anthropic) -> None:
    messages = ask("How many tokens do I have left?")
    whole = client.messages.create(
        model=MODEL, max_tokens=256, messages=messages, tools=[USAGE_TOOL]
    )
    pieces: list[str] = []
    with client.messages.stream(
        model=MODEL, max_tokens=256, messages=messages, tools=[USAGE_TOOL]
    ) as stream:
        for event in stream:
            if event.type == "input_json":
                pieces.append(event.partial_json)
        final = stream.get_final_message()
    assert "".join(pieces) == "{}"
    assert final.stop_reason == "tool_use"
    assert blocks(final) == blocks(whole)
    assert final.usage == whole.usage


def test_closing_a_stream_early_stops_the_server_generating(paced: Runtime) -> None:
    """The server notices the closed connection and sends no further token."""
    client = sdk(paced)
    texts = 0
    with client.messages.stream(model=MODEL, max_tokens=512, messages=ask(LONG_QUESTION)) as stream:
        for event in stream:
            texts += event.type == "text"
            if texts == 3:
                break
        message_id = stream.current_message_snapshot.id
    record = record_of(paced, message_id)
    wait_until(lambda: record.state is StreamState.ABANDONED, timeout=10)
    sent = record.sent_tokens
    time.sleep(5 / PACE)
    assert record.sent_tokens == sent < record.tokens
    assert sent >= 3


def test_the_chat_adapter_streams_the_same_reply_and_a_stop_cuts_it(paced: Runtime) -> None:
    """The port's streaming call: the whole reply with its reported usage, or, cut by the
    sink's Stop, the text so far and a server that stopped sending."""
    model = AnthropicModel.connect(
        "offline-local-key",
        base_url=paced.base_url + "/_offline/anthropic",
        timeout_seconds=30,
        max_retries=0,
    )
    request = ModelRequest(
        model=MODEL,
        system="Be helpful.",
        messages=(Message.text("user", LONG_QUESTION),),
        max_tokens=512,
    )
    whole = model.complete(request)

    class Sink:
        def __init__(self, stop_after: int | None) -> None:
            self.deltas: list[str] = []
            self.stop_after = stop_after

        def text(self, delta: str) -> None:
            self.deltas.append(delta)

        def tool_input(self, delta: str) -> None:
            raise AssertionError("no tool in this request")

        def should_stop(self) -> bool:
            return self.stop_after is not None and len(self.deltas) >= self.stop_after

    full = Sink(None)
    call = model.stream(request, full, deadline_seconds=60)
    assert (call.cut, call.output_reported) == (False, True)
    assert call.reply.text == "".join(full.deltas) == whole.text
    assert call.reply.usage == whole.usage

    stopping = Sink(4)
    cut = model.stream(request, stopping, deadline_seconds=60)
    assert (cut.cut, cut.output_reported) == (True, False)
    assert cut.reply.text == "".join(stopping.deltas) == whole.text[:16]
    assert cut.reply.usage.input_tokens == whole.usage.input_tokens
    record = paced.model.streams()[-1]
    wait_until(lambda: record.state is StreamState.ABANDONED, timeout=10)
    assert 4 <= record.sent_tokens < record.tokens


def test_the_pace_spaces_the_deltas_by_one_over_tokens_per_second() -> None:
    """On a fake clock: each delta waits its turn, the events around them do not."""
    now = [0.0]
    waits: list[float] = []

    def sleep(seconds: float) -> None:
        waits.append(seconds)
        now[0] += seconds

    model = OfflineModel(10, clock=lambda: now[0], sleep=sleep)
    events = list(model.stream_message({"model": MODEL, "max_tokens": 64, "messages": ask("Hi")}))
    deltas = [e for e in events if e.startswith(b"event: content_block_delta")]
    assert len(waits) == len(deltas) > 1
    assert waits == pytest.approx([0.1] * len(deltas))
    assert now[0] == pytest.approx(len(deltas) / 10)


def test_the_chat_adapter_round_trips_through_the_offline_model(runtime: Runtime) -> None:
    model = AnthropicModel.connect(
        "offline-local-key",
        base_url=runtime.base_url + "/_offline/anthropic",
        timeout_seconds=10,
        max_retries=0,
    )
    request = ModelRequest(
        model=MODEL,
        system="Be helpful.",
        messages=(Message.text("user", "What is an emergency fund?"),),
        max_tokens=300,
    )
    reply = model.complete(request)
    assert reply.stop_reason == "end_turn"
    assert reply.usage.input_tokens == model.count_tokens(request)
    assert reply.usage.output_tokens > 0


_json = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 5000) | st.text(max_size=12),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=10,
)
# Close to valid on purpose, so that most requests get past the first checks.
_cache_control = st.sampled_from([{"type": "ephemeral"}, {"type": "ephemeral", "ttl": "1h"}])
_blocks = st.lists(
    st.fixed_dictionaries(
        {"type": st.sampled_from(["text", "tool_use", "tool_result", "image", 3])},
        optional={
            "text": st.text(max_size=30) | _json,
            "content": st.text(max_size=30) | _json,
            "cache_control": _cache_control | _json,
            "input": st.just({}) | _json,
            "id": st.just("toolu_1") | _json,
            "name": st.just("get_my_usage") | _json,
            "tool_use_id": st.just("toolu_1") | _json,
        },
    ),
    max_size=3,
)
_messages = st.lists(
    st.fixed_dictionaries(
        {
            "role": st.sampled_from(["user", "user", "assistant", "system", None]),
            "content": st.text(min_size=1, max_size=40) | _blocks | _json,
        }
    ),
    max_size=3,
)
_requests = st.fixed_dictionaries(
    {"model": st.just(MODEL) | _json, "max_tokens": st.integers(1, 300) | _json},
    optional={
        "messages": _messages,
        "system": st.text(max_size=30) | _blocks | _json,
        "tools": st.just([USAGE_TOOL]) | _json,
        "tool_choice": st.sampled_from([{"type": "auto"}, {"type": "none"}]) | _json,
        "stream": st.just(False) | _json,
    },
)


@pytest.mark.slow
@settings(max_examples=150, deadline=None)
@given(document=_requests, count=st.booleans())
def test_no_request_makes_the_offline_model_fail(
    runtime: Runtime, document: dict[str, Any], count: bool
) -> None:
    path = "/v1/messages/count_tokens" if count else "/v1/messages"
    response = requests.post(
        runtime.base_url + "/_offline/anthropic" + path,
        json=document,
        headers={"x-api-key": "offline-local-key"},
        timeout=30,
    )
    assert response.status_code in (200, 400), response.text
    if response.status_code == 400:
        assert response.json()["error"]["type"] == "invalid_request_error"
