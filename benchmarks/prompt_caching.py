"""The operator's cost of a 10-turn conversation with prompt caching against the same
conversation without, on the Anthropic fake applying the API's caching rules (1,024-token minimum,
five minutes refreshed on each read, writes at 1.25x, reads at 0.1x).

The chat runs as in production: the project's system prompt and ``get_my_usage`` tool, the tool
loop on a usage question, the real adapter over HTTP. The user is charged the same tokens either
way; only the price of the prompt's tokens changes.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

from metering.account import new_account
from metering.adapters.anthropic_model import AnthropicModel
from metering.chat import ChatRequest, ChatService
from metering.model import Message
from metering.plans import load_default_plans
from metering.pricing import load_default_prices
from metering.settings import CHAT_SYSTEM_PROMPT
from metering.tokens import TokenUsage

from benchmarks.common import MODEL, Table, chat_settings, ratio
from localruntime.prompt_cache import MIN_CACHEABLE_TOKENS, PromptCache, prompt_tokens, tokens_of
from localruntime.sqlite_store import SQLiteStore
from tests.support.anthropic_fake import FakeAnthropic, text_reply, tool_use_reply

NOW = datetime(2026, 11, 28, 12, tzinfo=UTC)
# What a user of a personal finance app asks; the fourth asks about usage (the tool loop).
QUESTIONS = (
    "I just started my first job. How should I split my paycheck between bills, savings and fun?",
    "What is an emergency fund, and how big should mine be?",
    "Should I pay off my credit card first or build savings? The card charges 22% interest.",
    "How many tokens do I have left this month?",
    "Can you explain the difference between a Roth IRA and a traditional IRA?",
    "My rent is 1,400 a month on 4,200 take-home pay. Is that too much?",
    "How do I budget for irregular expenses like car repairs and birthday gifts?",
    "What is a sinking fund, and how is it different from an emergency fund?",
    "I have 3,000 in a savings account earning 0.5%. Where could it earn more, safely?",
    "Can you sum up the plan we talked about in five bullet points?",
)
USAGE_QUESTION = 3
# Reply lengths in tokens, as a concise assistant answers (CHAT_MAX_TOKENS is 1,024).
REPLY_TOKENS = (260, 220, 240, 60, 280, 180, 300, 200, 220, 160)
_SENTENCES = (
    "Start with the essentials: rent, utilities, groceries and minimum debt payments.",
    "Automate a transfer to savings on payday so that saving happens before spending.",
    "A high-interest balance usually costs more than savings earn, so pay it down first.",
    "Keep the emergency fund in an account you can reach quickly without penalties.",
    "Review the budget monthly and adjust the categories that keep running over.",
    "Small recurring costs add up; list your subscriptions and cancel what you do not use.",
)
GAPS_SECONDS = (60.0, 240.0, 360.0)
# The textbook case: the user pastes a document (here a quarter of bank statement lines, about
# 3,000 tokens) and asks about it for the rest of the conversation.
STATEMENT_LINES = 300


def statement() -> str:
    lines = ["date,description,amount,balance"]
    balance = 4_200.0
    payees = ("GROCER MARKET", "CITY TRANSIT", "COFFEE BAR", "POWER & LIGHT", "STREAMING CO")
    for day in range(STATEMENT_LINES):
        amount = -round(7.5 + (day * 37 % 90) + (day % 7) * 1.25, 2)
        balance = round(balance + amount, 2)
        month, date = 7 + day * 3 // STATEMENT_LINES, day % 28 + 1
        lines.append(f"2026-{month:02d}-{date:02d},{payees[day % len(payees)]},{amount},{balance}")
    return "Here are my statements from July to September:\n" + "\n".join(lines) + "\n"


def reply_text(turn: int, tokens: int) -> str:
    """A reply of exactly ``tokens`` tokens (four characters each), the same on every run."""
    text = ""
    index = turn
    while len(text) < tokens * 4:
        text += _SENTENCES[index % len(_SENTENCES)] + " "
        index += 1
    return text[: tokens * 4].rstrip() + "."


@dataclass(frozen=True)
class Turn:
    usage: TokenUsage
    prompt_tokens: int
    calls: int
    cost_pico_usd: int


@dataclass(frozen=True)
class Run:
    caching: bool
    gap_seconds: float
    turns: tuple[Turn, ...]
    stable_prefix_tokens: int
    with_document: bool = False

    @property
    def usage(self) -> TokenUsage:
        total = TokenUsage()
        for turn in self.turns:
            total += turn.usage
        return total

    @property
    def cost_pico_usd(self) -> int:
        return sum(turn.cost_pico_usd for turn in self.turns)

    @property
    def prompt_cost_pico_usd(self) -> int:
        prices = load_default_prices()
        output_only = TokenUsage(output_tokens=self.usage.output_tokens, steps=1)
        return self.cost_pico_usd - prices.cost(MODEL, output_only, NOW).pico_usd


def converse(*, caching: bool, gap_seconds: float = 60.0, document: str = "") -> Run:
    """The conversation through the chat service, a turn every ``gap_seconds``; ``document``
    opens the first message (pasted before its question)."""
    now = [0.0]
    fake = FakeAnthropic(prompt_cache=PromptCache(lambda: now[0]), count_tokens=prompt_tokens)
    prices = load_default_prices()
    with tempfile.TemporaryDirectory(prefix="bench-caching-") as folder:
        store = SQLiteStore(str(Path(folder) / "usage.sqlite3"))
        account = new_account("reader", load_default_plans().get("business"), NOW)
        store.create_account(replace(account, max_tokens_per_month=10_000_000))
        service = ChatService(
            store=store,
            model=AnthropicModel.connect(
                "sk-ant-bench", max_retries=0, http_client=fake.client(), prompt_caching=caching
            ),
            plans=load_default_plans(),
            prices=prices,
            settings=chat_settings(CHAT_SYSTEM_PROMPT.default, max_steps=4),
            new_request_id=lambda: f"turn-{len(fake.requests)}",
            monotonic=time.monotonic,
        )
        history: list[Message] = []
        turns: list[Turn] = []
        for index, question in enumerate(QUESTIONS):
            answer = reply_text(index, REPLY_TOKENS[index])
            if index == USAGE_QUESTION:
                fake.then(
                    tool_use_reply("get_my_usage", text="Let me look that up.", output_tokens=25)
                )
            fake.then(text_reply(answer, output_tokens=tokens_of(answer)))
            before = len(fake.requests)
            history.append(Message.text("user", (document if index == 0 else "") + question))
            at = NOW + timedelta(seconds=index * gap_seconds)
            result = service.handle("reader", ChatRequest(tuple(history)), at)
            history.append(Message.text("assistant", result.reply.content))
            sent = fake.requests[before:]
            turns.append(
                Turn(
                    usage=result.usage,
                    prompt_tokens=sum(prompt_tokens(body) for body in sent),
                    calls=len(sent),
                    cost_pico_usd=prices.cost(MODEL, result.usage, at).pico_usd,
                )
            )
            now[0] += gap_seconds
    first = fake.requests[0]
    stable = prompt_tokens({**first, "messages": []})
    return Run(caching, gap_seconds, tuple(turns), stable, bool(document))


def measure(gaps: Sequence[float] = GAPS_SECONDS) -> list[tuple[Run, Run]]:
    """(without, with) caching for each gap between turns, then the same conversation opened
    by a pasted statement, a turn a minute."""
    pairs = [
        (converse(caching=False, gap_seconds=g), converse(caching=True, gap_seconds=g))
        for g in gaps
    ]
    document = statement()
    pairs.append(
        (converse(caching=False, document=document), converse(caching=True, document=document))
    )
    return pairs


def _usd(pico: int) -> str:
    return f"{pico / 1e12:.4f}"


def render(pairs: Sequence[tuple[Run, Run]]) -> str:
    without, cached = pairs[0]
    pasted = next(pair for pair in pairs if pair[0].with_document)
    pairs = [pair for pair in pairs if not pair[0].with_document]
    totals = Table(
        [
            "conversation",
            "run",
            "input",
            "cache writes",
            "cache reads",
            "output",
            "tokens charged",
            "operator cost (USD)",
            "cost vs without",
        ]
    )
    for run, baseline in (
        (without, without),
        (cached, without),
        (pasted[0], pasted[0]),
        (pasted[1], pasted[0]),
    ):
        usage = run.usage
        totals.add(
            "a statement pasted, then the 10 questions" if run.with_document else "10 questions",
            "with caching" if run.caching else "without caching",
            usage.input_tokens,
            usage.cache_creation_input_tokens,
            usage.cache_read_input_tokens,
            usage.output_tokens,
            usage.total_tokens,
            _usd(run.cost_pico_usd),
            ratio(run.cost_pico_usd, baseline.cost_pico_usd),
        )
    first_cached = next(
        (n for n, turn in enumerate(cached.turns, 1) if turn.usage.cache_creation_input_tokens),
        None,
    )
    per_turn = Table(
        ["turn", "model calls", "prompt tokens", "input", "cache writes", "cache reads", "output"]
    )
    for number, turn in enumerate(cached.turns, 1):
        usage = turn.usage
        per_turn.add(
            number,
            turn.calls,
            turn.prompt_tokens,
            usage.input_tokens,
            usage.cache_creation_input_tokens,
            usage.cache_read_input_tokens,
            usage.output_tokens,
        )
    gaps = Table(
        [
            "gap between turns",
            "cache reads",
            "cache writes",
            "cost with / without",
            "prompt cost with / without",
        ]
    )
    for plain, caching in pairs:
        gaps.add(
            f"{caching.gap_seconds / 60:g} min",
            caching.usage.cache_read_input_tokens,
            caching.usage.cache_creation_input_tokens,
            ratio(caching.cost_pico_usd, plain.cost_pico_usd),
            ratio(caching.prompt_cost_pico_usd, plain.prompt_cost_pico_usd),
        )
    below = cached.stable_prefix_tokens < MIN_CACHEABLE_TOKENS
    prompt_cost, baseline_prompt_cost = cached.prompt_cost_pico_usd, without.prompt_cost_pico_usd
    return "\n".join(
        [
            f"A {len(QUESTIONS)}-turn conversation, a turn a minute, priced with "
            f"`prices.json` ({MODEL}); goal: the operator's cost at most 0.4x. Two "
            "conversations: ten short questions, and the same opened by a pasted statement "
            f"({pasted[1].turns[0].prompt_tokens:,} prompt tokens on the first turn), the case "
            "prompt caching exists for.",
            "",
            totals.render(),
            "",
            "The prompt's share alone (input, cache writes and reads, without the output that "
            f"caching does not touch): {ratio(prompt_cost, baseline_prompt_cost)} with against "
            "without. The output alone costs "
            f"{ratio(without.cost_pico_usd - baseline_prompt_cost, without.cost_pico_usd)} of the "
            "conversation without caching: no caching of the prompt goes below that. The user is "
            "charged the same tokens either way.",
            "",
            "The stable prefix (the API's tool-use system prompt, the `get_my_usage` tool and "
            f"the default system prompt) is {cached.stable_prefix_tokens:,} tokens, "
            + (
                f"under the {MIN_CACHEABLE_TOKENS:,}-token minimum: it is never cached on its own; "
                f"the conversation's breakpoint caches from turn {first_cached}, once the "
                "history passes the minimum."
                if below
                else f"past the {MIN_CACHEABLE_TOKENS:,}-token minimum: every conversation "
                "reads it."
            ),
            "",
            "Per turn, with caching (turn 4 asks about usage: two model calls):",
            "",
            per_turn.render(),
            "",
            "The gap between turns against the five-minute lifetime (past it, every turn writes "
            "its prompt again at 1.25x):",
            "",
            gaps.render(),
        ]
    )


def run(quick: bool) -> str:
    """The figures do not depend on the machine: ``quick`` changes nothing."""
    return render(measure())
