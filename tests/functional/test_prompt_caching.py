"""Prompt caching through the metered chat: a conversation on the fake that applies the API's
caching rules charges its user the same tokens with caching as without (every kind counted),
while the operator's cost falls."""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from datetime import timedelta
from pathlib import Path

from metering.account import new_account
from metering.adapters.anthropic_model import AnthropicModel
from metering.chat import ChatRequest, ChatResult, ChatService, ChatSettings
from metering.model import Message
from metering.plans import load_default_plans
from metering.pricing import load_default_prices
from metering.settings import CHAT_SYSTEM_PROMPT

from benchmarks import prompt_caching
from localruntime.prompt_cache import MIN_CACHEABLE_TOKENS, PromptCache, prompt_tokens, tokens_of
from localruntime.sqlite_store import SQLiteStore
from tests.support.anthropic_fake import MODEL, FakeAnthropic, Reply, text_reply, tool_use_reply
from tests.support.function_harness import NOW

SETTINGS = ChatSettings(
    model=MODEL,
    max_tokens=1024,
    min_output_tokens=16,
    system_prompt=CHAT_SYSTEM_PROMPT.default,
    max_steps=4,
)
TURNS = 10
# The turn that asks about usage, so that the tool loop runs (two model calls).
USAGE_TURN = 4


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Conversation:
    results: list[ChatResult]
    fake: FakeAnthropic
    used: int


def answer(turn: int) -> str:
    return f"Answer {turn}: " + "keep a budget, track spending and save a little each month. " * 4


def converse(tmp_path: Path, *, caching: bool) -> Conversation:
    clock = Clock()
    fake = FakeAnthropic(prompt_cache=PromptCache(clock), count_tokens=prompt_tokens)
    store = SQLiteStore(str(tmp_path / f"caching-{caching}.sqlite3"))
    account = new_account("alice", load_default_plans().get("starter"), NOW)
    store.create_account(replace(account, max_tokens_per_month=1_000_000))
    service = ChatService(
        store=store,
        model=AnthropicModel.connect(
            "sk-ant-test-key", max_retries=0, http_client=fake.client(), prompt_caching=caching
        ),
        plans=load_default_plans(),
        prices=load_default_prices(),
        settings=SETTINGS,
        new_request_id=lambda: f"turn-{len(fake.requests)}",
        monotonic=time.monotonic,
    )
    history: list[Message] = []
    results = []
    for turn in range(TURNS):
        question = f"Turn {turn}: how much should I set aside for savings this month?"
        if turn == USAGE_TURN:
            question = "How many tokens do I have left?"
            fake.then(tool_use_reply("get_my_usage", output_tokens=20))
        reply: Reply = text_reply(answer(turn), output_tokens=tokens_of(answer(turn)))
        fake.then(reply)
        history.append(Message.text("user", question))
        result = service.handle("alice", ChatRequest(tuple(history)), NOW + timedelta(minutes=turn))
        history.append(Message.text("assistant", result.reply.content))
        results.append(result)
        clock.now += 60
    stored = store.get_account("alice")
    assert stored is not None
    return Conversation(results, fake, stored.current_tokens_used)


def test_a_user_is_charged_the_same_tokens_with_and_without_caching(tmp_path: Path) -> None:
    cached = converse(tmp_path, caching=True)
    uncached = converse(tmp_path, caching=False)

    totals = [r.usage.total_tokens for r in cached.results]
    assert totals == [r.usage.total_tokens for r in uncached.results]
    assert cached.used == uncached.used == sum(totals)
    # Every prompt token of every call, however the provider split it, plus the output.
    for conversation in (cached, uncached):
        prompts = sum(prompt_tokens(body) for body in conversation.fake.requests)
        outputs = sum(r.usage.output_tokens for r in conversation.results)
        assert conversation.used == prompts + outputs
    assert cached.results[USAGE_TURN].usage.steps == 2


def test_caching_moves_the_prompt_into_cache_reads_and_lowers_the_operators_cost(
    tmp_path: Path,
) -> None:
    cached = converse(tmp_path, caching=True)
    uncached = converse(tmp_path, caching=False)

    assert all(
        (r.usage.cache_creation_input_tokens, r.usage.cache_read_input_tokens) == (0, 0)
        for r in uncached.results
    )
    reads = sum(r.usage.cache_read_input_tokens for r in cached.results)
    writes = sum(r.usage.cache_creation_input_tokens for r in cached.results)
    assert reads > writes > 0
    # The last turn reads everything the turn before it sent.
    assert cached.results[-1].usage.cache_read_input_tokens > cached.results[-1].usage.input_tokens
    cost = sum(r.reply.cost_micro_usd for r in cached.results)
    baseline = sum(r.reply.cost_micro_usd for r in uncached.results)
    assert cost < baseline


def test_the_benchmark_conversation_costs_less_within_the_lifetime_and_more_past_it() -> None:
    """The benchmark's structural facts: the same tokens charged with and without caching;
    turns a minute apart read most of the prompt, turns six minutes apart write it again."""
    minute_plain, minute = (
        prompt_caching.converse(caching=False),
        prompt_caching.converse(caching=True),
    )
    apart = prompt_caching.converse(caching=True, gap_seconds=360)

    assert minute.usage.total_tokens == minute_plain.usage.total_tokens == apart.usage.total_tokens
    assert minute.usage.cache_read_input_tokens > minute.usage.cache_creation_input_tokens
    assert minute.cost_pico_usd < minute_plain.cost_pico_usd < apart.cost_pico_usd
    # Below the minimum the stable prefix alone is never cached: the first turn is all input.
    assert minute.stable_prefix_tokens < MIN_CACHEABLE_TOKENS
    assert minute.turns[0].usage.input_tokens == minute.turns[0].prompt_tokens
    document = prompt_caching.statement()
    pasted = (
        prompt_caching.converse(caching=False, document=document),
        prompt_caching.converse(caching=True, document=document),
    )
    # A long stable prefix is cached from the first turn and read by every later one.
    assert pasted[1].turns[0].usage.input_tokens == 0
    assert all(turn.usage.cache_read_input_tokens for turn in pasted[1].turns[1:])
    assert pasted[1].cost_pico_usd * 10 <= pasted[0].cost_pico_usd * 4
    assert "| with caching " in prompt_caching.render([(minute_plain, minute), pasted])
