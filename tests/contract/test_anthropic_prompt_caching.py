"""Prompt caching on the Messages API wire format: where the adapter puts its breakpoints (through
the real SDK, at HTTP), and the API's caching rules as the fake applies them (minimum length,
lifetime refreshed on read, the 20-block lookback, at most four breakpoints, writes and reads)."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from metering.adapters.anthropic_model import AnthropicModel
from metering.model import (
    Block,
    Message,
    ModelRequest,
    TextBlock,
    ToolResultBlock,
    ToolSpec,
    ToolUseBlock,
)
from metering.tokens import TokenUsage

from localruntime.prompt_cache import (
    LOOKBACK_BLOCKS,
    MIN_CACHEABLE_TOKENS,
    CacheRuleError,
    PromptCache,
    prompt_tokens,
)
from tests.support.anthropic_fake import MODEL, FakeAnthropic, text_reply

TOOL = ToolSpec(
    name="get_my_usage",
    description="Returns the current user's token usage for this billing period.",
    input_schema={"type": "object", "properties": {}, "additionalProperties": False},
)
EPHEMERAL = {"type": "ephemeral"}


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Collected:
    def text(self, delta: str) -> None:
        pass

    def tool_input(self, delta: str) -> None:
        pass

    def should_stop(self) -> bool:
        return False


def model_for(fake: FakeAnthropic, *, prompt_caching: bool = True) -> AnthropicModel:
    return AnthropicModel.connect(
        "sk-ant-test-key", max_retries=0, http_client=fake.client(), prompt_caching=prompt_caching
    )


def request(messages: tuple[Message, ...], **overrides: Any) -> ModelRequest:
    fields: dict[str, Any] = {
        "model": MODEL,
        "system": "You are a helpful assistant inside a personal finance app.",
        "messages": messages,
        "max_tokens": 512,
        "tools": (TOOL,),
    }
    fields.update(overrides)
    return ModelRequest(**fields)


def usage_of(model: AnthropicModel, sent: ModelRequest) -> TokenUsage:
    call = model.stream(sent, Collected(), deadline_seconds=5)
    assert not call.cut
    return call.reply.usage


def breakpoints(body: dict[str, Any]) -> list[str]:
    """Where a request body carries ``cache_control``: ``tools.N``, ``system.N``,
    ``messages.M.N``."""
    found = [
        f"tools.{i}" for i, tool in enumerate(body.get("tools", [])) if "cache_control" in tool
    ]
    system = body.get("system")
    if isinstance(system, list):
        found += [f"system.{i}" for i, block in enumerate(system) if "cache_control" in block]
    for m, message in enumerate(body["messages"]):
        content = message["content"]
        if isinstance(content, list):
            found += [f"messages.{m}.{i}" for i, b in enumerate(content) if "cache_control" in b]
    return found


# -- where the adapter puts its breakpoints ------------------------------------------------------


def test_a_first_turn_marks_the_system_prompt_and_the_newest_message() -> None:
    """The stable prefix (tools, then the system prompt) and the whole conversation so far are
    each a breakpoint: the next turn resends both."""
    fake = FakeAnthropic().then(text_reply("Hello."))
    conversation = (
        Message.text("user", "Hi"),
        Message.text("assistant", "Hello! How can I help?"),
        Message.text("user", "What is an emergency fund?"),
    )

    usage_of(model_for(fake), request(conversation))

    [body] = fake.requests
    assert breakpoints(body) == ["system.0", "messages.2.0"]
    assert body["system"][0]["cache_control"] == EPHEMERAL
    assert body["messages"][2]["content"][0]["cache_control"] == EPHEMERAL


def test_a_tool_loop_step_marks_its_newest_block_only() -> None:
    """The step after a tool call moves the message breakpoint to the tool result, so that the
    next step reads the step before it."""
    fake = FakeAnthropic().then(text_reply("You have 48,766 tokens left."))
    conversation = (
        Message.text("user", "How many tokens do I have left?"),
        Message(
            "assistant",
            (TextBlock("Let me look."), ToolUseBlock("toolu_1", "get_my_usage", {})),
        ),
        Message("user", (ToolResultBlock("toolu_1", '{"remaining": 48766}'),)),
    )

    usage_of(model_for(fake), request(conversation))

    assert breakpoints(fake.requests[0]) == ["system.0", "messages.2.0"]
    assert fake.requests[0]["messages"][2]["content"][0]["type"] == "tool_result"


def test_without_a_system_prompt_the_last_tool_ends_the_stable_prefix() -> None:
    fake = FakeAnthropic().then(text_reply("Hello."))
    two_tools = (TOOL, ToolSpec("get_my_plan", "The caller's plan.", {"type": "object"}))

    usage_of(model_for(fake), request((Message.text("user", "Hi"),), system="", tools=two_tools))

    assert breakpoints(fake.requests[0]) == ["tools.1", "messages.0.0"]


def test_an_empty_text_is_never_marked() -> None:
    """The API refuses ``cache_control`` on an empty text block: the block before it carries
    the breakpoint."""
    fake = FakeAnthropic().then(text_reply("Done."))
    newest = Message("user", (ToolResultBlock("toolu_1", "{}"), TextBlock("")))
    conversation = (
        Message.text("user", "Usage?"),
        Message("assistant", (ToolUseBlock("toolu_1", "get_my_usage", {}),)),
        newest,
    )

    usage_of(model_for(fake), request(conversation))

    assert breakpoints(fake.requests[0]) == ["system.0", "messages.2.0"]


def test_with_caching_off_no_breakpoint_is_sent() -> None:
    fake = FakeAnthropic().then(text_reply("Hello."))

    usage_of(model_for(fake, prompt_caching=False), request((Message.text("user", "Hi"),)))

    assert breakpoints(fake.requests[0]) == []
    assert (
        fake.requests[0]["system"] == "You are a helpful assistant inside a personal finance app."
    )


def test_a_token_count_carries_no_breakpoint() -> None:
    """Counting caches nothing; the count is the same with or without breakpoints."""
    fake = FakeAnthropic()

    model_for(fake).count_tokens(request((Message.text("user", "Hi"),)))

    assert breakpoints(fake.count_requests[0]) == []


_texts = st.text(min_size=0, max_size=12)
_block: st.SearchStrategy[Block] = st.one_of(
    st.builds(TextBlock, _texts),
    st.builds(ToolUseBlock, st.just("toolu_1"), st.just("get_my_usage"), st.just({})),
    st.builds(ToolResultBlock, st.just("toolu_1"), _texts),
)
_message = st.builds(
    Message, st.sampled_from(["user", "assistant"]), st.tuples(_block) | st.tuples(_block, _block)
)


@settings(max_examples=60, deadline=None)
@given(
    history=st.lists(_message, min_size=0, max_size=6),
    system=st.sampled_from(["", "Be brief."]),
    tools=st.sampled_from([(), (TOOL,)]),
)
def test_no_request_has_more_than_four_breakpoints_or_one_the_api_refuses(
    history: list[Message], system: str, tools: tuple[ToolSpec, ...]
) -> None:
    """Whatever the conversation, at most two breakpoints (of the four allowed), none on an
    empty text, and the caching rules accept the request."""
    fake = FakeAnthropic(prompt_cache=PromptCache(Clock())).then(text_reply("Ok."))
    conversation = (*history, Message.text("user", "And now?"))

    usage_of(model_for(fake), request(conversation, system=system, tools=tools))

    [body] = fake.requests
    assert 1 <= len(breakpoints(body)) <= 2


# -- the caching rules, through the SDK ----------------------------------------------------------

REPLY = (
    "An emergency fund is money set aside for unexpected costs such as a repair, a medical bill "
    "or a gap between jobs. A common target is three to six months of essential spending, kept "
    "somewhere you can reach quickly without penalties, like a savings account. "
) * 2
QUESTIONS = [
    f"Question {n}: how should I think about saving for goal number {n}?" for n in range(10)
]


def test_a_ten_turn_conversation_reads_what_the_turn_before_wrote() -> None:
    """Below the minimum nothing is cached; the first turn past it writes its whole prompt;
    every later turn reads the previous turn's prompt and writes only what it added."""
    clock = Clock()
    fake = FakeAnthropic(prompt_cache=PromptCache(clock))
    model = model_for(fake)
    conversation: tuple[Message, ...] = ()
    usages: list[TokenUsage] = []
    for question in QUESTIONS:
        conversation = (*conversation, Message.text("user", question))
        fake.then(text_reply(REPLY, output_tokens=60))
        usages.append(usage_of(model, request(conversation)))
        conversation = (*conversation, Message.text("assistant", REPLY))
        clock.now += 60

    totals = [prompt_tokens(body) for body in fake.requests]
    kinds = []
    for turn, (usage, total) in enumerate(zip(usages, totals, strict=True)):
        assert (
            usage.input_tokens + usage.cache_creation_input_tokens + usage.cache_read_input_tokens
            == total
        )
        previous_written = turn > 0 and totals[turn - 1] >= MIN_CACHEABLE_TOKENS
        if previous_written:
            kinds.append("read")
            assert usage.cache_read_input_tokens == totals[turn - 1]
            assert usage.cache_creation_input_tokens == total - totals[turn - 1]
            assert usage.input_tokens == 0
        elif total >= MIN_CACHEABLE_TOKENS:
            kinds.append("write")
            assert (usage.cache_creation_input_tokens, usage.cache_read_input_tokens) == (total, 0)
        else:
            kinds.append("input")
            assert usage.input_tokens == total
        assert usage.cache_creation_5m_tokens == usage.cache_creation_input_tokens
    # Each kind of turn happened: the conversation grew past the minimum mid-way.
    assert kinds[0] == "input"
    assert kinds.count("write") == 1
    assert kinds[-1] == "read"
    assert kinds.count("read") >= 3


def test_a_tool_loop_step_reads_the_step_before_it() -> None:
    clock = Clock()
    fake = FakeAnthropic(prompt_cache=PromptCache(clock)).then(
        text_reply("Let me look.", output_tokens=5), text_reply("Plenty.", output_tokens=3)
    )
    model = model_for(fake)
    first = (Message.text("user", REPLY * 6),)
    step_one = usage_of(model, request(first))
    clock.now += 2
    second = (
        *first,
        Message(
            "assistant", (TextBlock("Let me look."), ToolUseBlock("toolu_1", "get_my_usage", {}))
        ),
        Message("user", (ToolResultBlock("toolu_1", '{"remaining": 48766}'),)),
    )
    step_two = usage_of(model, request(second))

    assert step_one.cache_creation_input_tokens == prompt_tokens(fake.requests[0])
    assert step_two.cache_read_input_tokens == prompt_tokens(fake.requests[0])
    assert step_two.cache_creation_input_tokens > 0
    assert step_two.input_tokens == 0


def test_more_than_four_breakpoints_are_refused_as_the_api_does() -> None:
    fake = FakeAnthropic(prompt_cache=PromptCache(Clock())).then(text_reply("Ok."))
    body = raw_body([text_block(10, marked=True) for _ in range(5)])
    with pytest.raises(CacheRuleError, match="maximum of 4"):
        PromptCache(Clock()).apply(body)
    response = fake.client().post("https://api.anthropic.com/v1/messages", json=body)
    assert response.status_code == 400
    assert response.json()["error"]["type"] == "invalid_request_error"


# -- the caching rules, on request bodies --------------------------------------------------------


def text_block(
    tokens: int, *, marked: bool = False, ttl: str | None = None, tag: str = ""
) -> dict[str, Any]:
    """A text block of exactly ``tokens`` tokens (four characters each)."""
    text = (tag + "x" * (4 * tokens))[: 4 * tokens]
    block: dict[str, Any] = {"type": "text", "text": text}
    if marked:
        block["cache_control"] = {"type": "ephemeral", **({"ttl": ttl} if ttl else {})}
    return block


def raw_body(system: list[dict[str, Any]], *messages: list[dict[str, Any]]) -> dict[str, Any]:
    turns = messages or ([{"type": "text", "text": "hi"}],)
    return {
        "model": MODEL,
        "max_tokens": 64,
        "system": system,
        "messages": [
            {"role": "user" if i % 2 == 0 else "assistant", "content": content}
            for i, content in enumerate(turns)
        ],
    }


@pytest.mark.parametrize(
    ("prefix", "cached"),
    [
        pytest.param(MIN_CACHEABLE_TOKENS - 1, False, id="one-below-the-minimum"),
        pytest.param(MIN_CACHEABLE_TOKENS, True, id="at-the-minimum"),
    ],
)
def test_a_prefix_below_the_minimum_is_never_cached(prefix: int, cached: bool) -> None:
    cache = PromptCache(Clock())
    body = raw_body([text_block(prefix, marked=True)])

    first, second = cache.apply(body), cache.apply(body)

    assert (first.cache_creation, second.cache_read) == ((prefix, prefix) if cached else (0, 0))
    assert first.total == second.total == prompt_tokens(body)


def test_an_entry_expires_five_minutes_after_its_last_use() -> None:
    clock = Clock()
    cache = PromptCache(clock)
    body = raw_body([text_block(1500, marked=True)])
    assert cache.apply(body).cache_write_5m == 1500

    clock.now += 299
    assert cache.apply(body).cache_read == 1500
    clock.now += 299  # 598 s after the write: alive, because the read refreshed it
    assert cache.apply(body).cache_read == 1500
    clock.now += 300  # five minutes without use
    again = cache.apply(body)
    assert (again.cache_read, again.cache_write_5m) == (0, 1500)


def test_a_one_hour_breakpoint_outlives_five_minutes_and_is_reported_apart() -> None:
    clock = Clock()
    cache = PromptCache(clock)
    body = raw_body([text_block(1200, marked=True, ttl="1h")])
    written = cache.apply(body)
    assert (written.cache_write_1h, written.cache_write_5m) == (1200, 0)

    clock.now += 3599
    assert cache.apply(body).cache_read == 1200
    clock.now += 3600
    assert cache.apply(body).cache_read == 0


def test_a_one_hour_breakpoint_after_a_five_minute_one_is_refused() -> None:
    body = raw_body([text_block(600, marked=True), text_block(600, marked=True, ttl="1h")])
    with pytest.raises(CacheRuleError, match="1h"):
        PromptCache(Clock()).apply(body)


@pytest.mark.parametrize(
    ("added", "read"),
    [
        pytest.param(LOOKBACK_BLOCKS - 1, True, id="within-the-lookback"),
        pytest.param(LOOKBACK_BLOCKS, False, id="past-the-lookback"),
    ],
)
def test_the_lookup_walks_back_twenty_blocks_from_a_breakpoint(added: int, read: bool) -> None:
    """A cached prefix more than 20 blocks before the request's breakpoint is not found."""
    cache = PromptCache(Clock())
    system = [text_block(1100, marked=True)]
    cache.apply(raw_body(system))
    blocks = [text_block(5, tag=f"b{n}") for n in range(added)]
    blocks[-1]["cache_control"] = EPHEMERAL

    usage = cache.apply(raw_body([text_block(1100)], blocks))

    assert usage.cache_read == (1100 if read else 0)
    assert usage.cache_creation == usage.total - usage.cache_read


def test_an_early_breakpoint_below_the_minimum_is_cached_with_the_longer_prefix() -> None:
    """A prefix is cumulative: a short system prompt is cached as part of the conversation."""
    cache = PromptCache(Clock())
    body = raw_body([text_block(500, marked=True)], [text_block(600, marked=True)])

    first, second = cache.apply(body), cache.apply(body)

    assert (first.cache_write_5m, first.input_tokens) == (1103, 0)
    assert (second.cache_read, second.cache_creation) == (1103, 0)


def test_a_change_of_tool_choice_keeps_the_system_prefix_but_not_the_messages() -> None:
    cache = PromptCache(Clock())
    body = raw_body([text_block(1100, marked=True)], [text_block(200, marked=True)])
    body["tools"] = [{"name": "get_my_usage", "input_schema": {"type": "object"}}]
    body["tool_choice"] = {"type": "auto"}
    first = cache.apply(body)

    changed = cache.apply({**body, "tool_choice": {"type": "none"}})

    assert first.cache_creation == first.total
    assert changed.cache_read == first.total - 203
    assert changed.cache_creation == 203


def test_moving_a_breakpoint_does_not_change_what_is_cached() -> None:
    """The identity of a prefix is its content: the next turn finds the previous turn's
    breakpoint although that block no longer carries ``cache_control``."""
    cache = PromptCache(Clock())
    turn_one = raw_body([text_block(1100)], [text_block(50, marked=True)])
    written = cache.apply(turn_one)

    turn_two = raw_body(
        [text_block(1100)], [text_block(50)], [text_block(80)], [text_block(20, marked=True)]
    )
    usage = cache.apply(turn_two)

    assert usage.cache_read == written.cache_creation == 1153
    assert usage.cache_creation == 83 + 23
