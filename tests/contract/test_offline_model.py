"""The local runtime's offline model through the real Anthropic SDK: the Messages API's shapes,
usage, truncation, prompt caching, the usage tool round trip and the API's errors."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from typing import Any

import anthropic
import pytest
import requests
from hypothesis import given, settings
from hypothesis import strategies as st
from metering.adapters.anthropic_model import AnthropicModel
from metering.model import Message, ModelRequest

from localruntime.server import Runtime
from tests.support.runtime import running

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


@pytest.fixture(scope="module")
def runtime(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Runtime]:
    with running(tmp_path_factory.mktemp("offline"), functions={}) as started:
        yield started


@pytest.fixture
def client(runtime: Runtime) -> anthropic.Anthropic:
    return anthropic.Anthropic(
        api_key="offline-local-key",
        base_url=runtime.base_url + "/_offline/anthropic",
        max_retries=0,
    )


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


def test_streaming_is_refused_in_the_apis_error_format(client: anthropic.Anthropic) -> None:
    with pytest.raises(anthropic.BadRequestError) as raised:
        client.messages.create(model=MODEL, max_tokens=10, messages=ask("Hi"), stream=True)
    assert isinstance(raised.value.body, dict)
    assert raised.value.body["error"]["type"] == "invalid_request_error"


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
