"""The metered chat loop over the ports: a scripted model and the embedded store."""

from __future__ import annotations

import itertools
import json
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from metering.account import new_account
from metering.chat import (
    ChatReply,
    ChatRequest,
    ChatService,
    ChatSettings,
    recorded_reply,
    reply_record,
)
from metering.errors import (
    InvalidRequest,
    RequestInProgress,
    TokenLimitExceeded,
    UpstreamUnavailable,
)
from metering.ledger import LedgerEntry, LedgerStatus
from metering.model import (
    Message,
    ModelReply,
    ModelRequest,
    StreamedCall,
    StreamSink,
    TextBlock,
    ToolUseBlock,
    request_input_bound,
)
from metering.plans import load_default_plans
from metering.pricing import load_default_prices
from metering.tokens import TokenUsage
from metering.turns import Turn, TurnStatus

from localruntime.sqlite_store import SQLiteStore
from tests.support.builders import charge
from tests.support.function_harness import NOW
from tests.support.recording import Holds

MODEL = "claude-sonnet-5-5"
SETTINGS = ChatSettings(
    model=MODEL, max_tokens=1024, min_output_tokens=16, system_prompt="Be brief.", max_steps=4
)


@dataclass
class Step:
    """What the provider does on one call: its usage, and whether it asks for a tool."""

    input_tokens: int = 50
    output_tokens: int = 10
    tool: str | None = None
    fail: bool = False


@dataclass
class ScriptedModel:
    steps: list[Step]
    counted: int = 40
    # Honest: the input billed is the true count, which the local bound never undercounts.
    honest: bool = False
    requests: list[ModelRequest] = field(default_factory=list)
    counts: int = 0

    def stream(
        self, request: ModelRequest, sink: StreamSink, deadline_seconds: float
    ) -> StreamedCall:
        reply = self._reply(request)
        for block in reply.blocks:
            if isinstance(block, TextBlock):
                sink.text(block.text)
        return StreamedCall(reply, cut=False, output_reported=True)

    def _reply(self, request: ModelRequest) -> ModelReply:
        self.requests.append(request)
        step = self.steps.pop(0)
        if step.fail:
            raise UpstreamUnavailable("scripted outage")
        output = min(step.output_tokens, request.max_tokens)
        billed = step.input_tokens
        if self.honest:
            billed = min(self.counted, request_input_bound(request))
        usage = TokenUsage(input_tokens=billed, output_tokens=output, steps=1)
        if step.tool is not None:
            blocks = (
                TextBlock("Checking."),
                ToolUseBlock(f"toolu_{len(self.requests)}", step.tool),
            )
            return ModelReply(blocks, "tool_use", usage, MODEL)
        stop = "max_tokens" if output < step.output_tokens else "end_turn"
        return ModelReply((TextBlock("Answer."),), stop, usage, MODEL)

    def count_tokens(self, request: ModelRequest) -> int:
        self.counts += 1
        return self.counted


_ids = itertools.count()


def service(store: SQLiteStore, model: ScriptedModel, **overrides: int) -> ChatService:
    return ChatService(
        store=store,
        model=model,
        plans=load_default_plans(),
        prices=load_default_prices(),
        settings=replace(SETTINGS, **overrides),
        new_request_id=lambda: f"generated-{next(_ids)}",
        monotonic=time.monotonic,
    )


def seed(store: SQLiteStore, user_id: str, limit: int, used: int = 0) -> None:
    plan = load_default_plans().get("starter")
    account = new_account(user_id, plan, NOW)
    store.create_account(replace(account, max_tokens_per_month=limit, current_tokens_used=used))


def used(store: SQLiteStore, user_id: str) -> int:
    account = store.get_account(user_id)
    assert account is not None
    return account.current_tokens_used


def ask(request_id: str | None = None) -> ChatRequest:
    return ChatRequest((Message.text("user", "How am I doing?"),), request_id)


@pytest.fixture
def store(tmp_path: Path) -> SQLiteStore:
    return SQLiteStore(str(tmp_path / "unit.sqlite3"))


def test_the_first_call_holds_input_bound_plus_max_tokens_then_settles_to_its_usage(
    store: SQLiteStore,
) -> None:
    """The hold is the local input bound plus max_tokens; after the call only the usage stays."""
    seed(store, "u", 100_000)
    model = ScriptedModel([Step(input_tokens=70, output_tokens=30)])
    holds = Holds(store)

    result = service(holds, model).handle("u", ask("r1"), NOW)  # type: ignore[arg-type]

    assert holds.holds == [request_input_bound(model.requests[0]) + SETTINGS.max_tokens]
    assert used(store, "u") == 100
    assert result.usage.total_tokens == 100
    entry = store.get_ledger("r1")
    assert entry is not None
    assert (entry.status, entry.held_tokens, entry.usage.total_tokens) == (
        LedgerStatus.SETTLED,
        0,
        100,
    )


def test_the_last_allowed_step_switches_tools_off(store: SQLiteStore) -> None:
    """The loop bound holds even if the model keeps asking for tools."""
    seed(store, "u", 100_000)
    model = ScriptedModel([Step(tool="get_my_usage"), Step(tool="get_my_usage"), Step()])

    result = service(store, model, max_steps=3).handle("u", ask(), NOW)

    assert [r.tool_choice for r in model.requests] == ["auto", "auto", "none"]
    assert result.usage.steps == 3


def test_a_single_step_chat_offers_no_tools(store: SQLiteStore) -> None:
    """With CHAT_MAX_STEPS=1 a tool call could never be answered, so none is offered."""
    seed(store, "u", 100_000)
    model = ScriptedModel([Step()])

    service(store, model, max_steps=1).handle("u", ask(), NOW)

    assert model.requests[0].tools == ()


def test_usage_reported_beyond_the_reservation_is_cut_down_to_it_output_first(
    store: SQLiteStore,
) -> None:
    """A provider that reports more than was held is charged the hold, output cut first."""
    seed(store, "u", 2_000, used=0)
    model = ScriptedModel([Step(input_tokens=5_000, output_tokens=10)], counted=40)
    holds = Holds(store)

    result = service(holds, model).handle("u", ask("r-over"), NOW)  # type: ignore[arg-type]

    [held] = holds.holds
    assert held <= 2_000
    assert result.usage == TokenUsage(input_tokens=held, output_tokens=0, steps=1)
    assert used(store, "u") == held
    entry = store.get_ledger("r-over")
    assert entry is not None
    assert (entry.usage, entry.held_tokens) == (result.usage, 0)
    assert store.ledger_total("u", entry.period_start) == used(store, "u")


def test_a_failed_request_id_cannot_be_replayed(store: SQLiteStore) -> None:
    """A request that failed after charging a step answers 400 on retry, charging nothing."""
    seed(store, "u", 100_000)
    failing = ScriptedModel([Step(tool="get_my_usage", input_tokens=400), Step(fail=True)])
    with pytest.raises(UpstreamUnavailable):
        service(store, failing).handle("u", ask("r-failed"), NOW)
    charged = used(store, "u")

    with pytest.raises(InvalidRequest):
        service(store, ScriptedModel([Step()])).handle("u", ask("r-failed"), NOW)

    assert used(store, "u") == charged == 410


def test_a_request_id_whose_first_call_failed_can_be_retried(store: SQLiteStore) -> None:
    """Nothing was charged, so the id is free again and the retry runs."""
    seed(store, "u", 100_000)
    with pytest.raises(UpstreamUnavailable):
        service(store, ScriptedModel([Step(fail=True)])).handle("u", ask("r-retry"), NOW)

    result = service(store, ScriptedModel([Step()])).handle("u", ask("r-retry"), NOW)

    assert result.usage.steps == 1
    assert used(store, "u") == 60


def test_an_in_flight_request_id_is_409(store: SQLiteStore) -> None:
    """The same id while the first is running is RequestInProgress."""
    seed(store, "u", 100_000)
    charge(store, "u", "r-busy", 100, NOW, settled=False)

    with pytest.raises(RequestInProgress):
        service(store, ScriptedModel([])).handle("u", ask("r-busy"), NOW)


def test_a_retry_replays_the_recorded_reply_and_reads_the_account_afresh(
    store: SQLiteStore,
) -> None:
    """The replay is the first reply rebuilt from the ledger entry, with no model call."""
    seed(store, "u", 100_000)
    first = service(store, ScriptedModel([Step(input_tokens=70, output_tokens=30)])).handle(
        "u", ask("r-again"), NOW
    )
    retry_model = ScriptedModel([])

    again = service(store, retry_model).handle("u", ask("r-again"), NOW)

    assert (first.replayed, again.replayed) == (False, True)
    assert again.reply == first.reply
    assert again.account == first.account
    assert retry_model.requests == []


@dataclass
class ConcurrentCharge:
    """The embedded store, with another request of the same user charging ``tokens`` while
    this one settles."""

    inner: SQLiteStore
    tokens: int

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def settle(self, user_id: str, *args: Any, **kwargs: Any) -> None:
        if self.tokens:
            tokens, self.tokens = self.tokens, 0
            charge(self.inner, user_id, "concurrent", tokens, NOW)
        self.inner.settle(user_id, *args, **kwargs)


def test_the_answers_account_is_the_one_read_at_the_start_plus_this_requests_charge(
    store: SQLiteStore,
) -> None:
    """No read after settling: a concurrent request's charge is not in this answer's figures."""
    seed(store, "u", 100_000, used=1_000)
    model = ScriptedModel([Step(input_tokens=70, output_tokens=30)])

    concurrent = ConcurrentCharge(store, 500)

    result = service(concurrent, model).handle("u", ask("r1"), NOW)  # type: ignore[arg-type]

    assert result.account.current_tokens_used == 1_000 + 100
    assert used(store, "u") == 1_000 + 100 + 500


def test_a_request_with_a_request_id_leaves_its_turn_final_with_the_whole_text(
    store: SQLiteStore,
) -> None:
    """The turn holds every step's text and the charge; a request without an id has no turn."""
    seed(store, "u", 100_000)
    model = ScriptedModel([Step(tool="get_my_usage", input_tokens=400), Step()] * 2)

    with_id = service(store, model).handle("u", ask("r-turn"), NOW)
    without = service(store, model).handle("u", ask(), NOW)

    turn = store.get_turn("r-turn")
    assert turn is not None
    assert (turn.status, turn.content, turn.usage) == (
        TurnStatus.COMPLETED,
        "Checking.\n\nAnswer.",
        with_id.usage,
    )
    assert turn.content == with_id.reply.content
    assert store.get_turn(without.request_id) is None


def test_a_refusal_carries_the_account_it_was_decided_on(store: SQLiteStore) -> None:
    """The 429 names the account, whose figures the edge answers; nothing is written."""
    seed(store, "u", 1_000, used=1_000)

    with pytest.raises(TokenLimitExceeded) as refused:
        service(store, ScriptedModel([])).handle("u", ask("r-none"), NOW)

    assert refused.value.account == store.get_account("u")
    assert refused.value.reason == "allowance_spent"
    assert store.get_ledger("r-none") is None


def test_a_refusal_with_room_for_a_short_message_says_the_message_is_too_long(
    store: SQLiteStore,
) -> None:
    """A long message refused while a one-word one would fit is 'message_too_long'; deciding
    it asks the model nothing more than the refused call's own count."""
    seed(store, "u", 100_000, used=98_000)
    model = ScriptedModel([], counted=5_000)
    long = ChatRequest((Message.text("user", "Please read this carefully. " * 400),), "r-long")

    with pytest.raises(TokenLimitExceeded) as refused:
        service(store, model).handle("u", long, NOW)

    assert refused.value.reason == "message_too_long"
    assert (model.counts, model.requests) == (1, [])
    assert store.get_ledger("r-long") is None


def test_a_refusal_without_room_for_any_message_says_the_allowance_is_spent(
    store: SQLiteStore,
) -> None:
    """With too little left for even a one-word message, the same refusal is 'allowance_spent'."""
    seed(store, "u", 100_000, used=100_000 - 40)
    model = ScriptedModel([], counted=5_000)

    with pytest.raises(TokenLimitExceeded) as refused:
        service(store, model).handle("u", ask("r-short"), NOW)

    assert refused.value.reason == "allowance_spent"
    assert model.requests == []


REPLY = ChatReply(
    content="Part one.\n\nPart two.",
    model=MODEL,
    stop_reason="max_tokens",
    truncated=True,
    usage=TokenUsage(input_tokens=500, cache_read_input_tokens=40, output_tokens=70, steps=2),
    cost_micro_usd=2_562,
)


def settled(reply_text: str) -> LedgerEntry:
    return LedgerEntry(
        "r-done",
        "u",
        LedgerStatus.SETTLED,
        MODEL,
        NOW,
        NOW,
        NOW,
        usage=REPLY.usage,
        cost_micro_usd=REPLY.cost_micro_usd,
        reply=reply_text,
    )


def turn_of(content: str) -> Turn:
    return Turn("r-done", "u", TurnStatus.COMPLETED, NOW, NOW, content=content)


def test_the_ledger_record_says_how_the_reply_ended_and_the_turn_holds_its_text() -> None:
    """Model, usage and cost live in the entry's columns, the text in the turn; the record
    holds the rest, never the text."""
    record = reply_record(REPLY)

    assert json.loads(record) == {"stop_reason": "max_tokens", "truncated": True}
    assert recorded_reply(settled(record), turn_of(REPLY.content)) == REPLY


@pytest.mark.parametrize(
    "record",
    [
        pytest.param(
            {"content": REPLY.content, "stop_reason": "max_tokens", "truncated": True},
            id="record-with-its-text",
        ),
        pytest.param(
            {
                "role": "assistant",
                "content": REPLY.content,
                "model": MODEL,
                "stopReason": "max_tokens",
                "truncated": True,
                "usage": {"totalTokens": 610, "steps": 2, "costUsd": 0.002562},
            },
            id="camel-case-message",
        ),
    ],
)
def test_an_entry_settled_before_turns_existed_replays_from_its_own_record(
    record: dict[str, Any],
) -> None:
    """Entries written before turns hold the text themselves (some as the camelCase message)."""
    assert recorded_reply(settled(json.dumps(record)), None) == REPLY


def test_the_local_bound_covers_every_text_and_grows_with_tools() -> None:
    """The bound is at least the UTF-8 bytes sent, and tools add their hidden prompt."""
    text = "Grüße " * 40
    plain = ModelRequest(MODEL, "sys", (Message.text("user", text),), 100)
    with_tools = service_tools_request(plain)

    assert request_input_bound(plain) >= len(text.encode()) + len(b"sys")
    assert request_input_bound(with_tools) > request_input_bound(plain) + 1_000


def service_tools_request(request: ModelRequest) -> ModelRequest:
    tools = ChatService(
        store=None,  # type: ignore[arg-type]
        model=ScriptedModel([]),
        plans=load_default_plans(),
        prices=load_default_prices(),
        settings=SETTINGS,
        new_request_id=str,
        monotonic=time.monotonic,
    ).tools
    return replace(request, tools=tuple(tool.spec for tool in tools.values()))


_steps = st.lists(
    st.builds(
        Step,
        input_tokens=st.integers(0, 3_000),
        output_tokens=st.integers(0, 2_000),
        tool=st.sampled_from([None, None, "get_my_usage", "no_such_tool"]),
    ),
    min_size=4,
    max_size=4,
)


@settings(max_examples=60, deadline=None, database=None)
@given(
    limit=st.integers(0, 8_000),
    already=st.integers(0, 8_000),
    steps=_steps,
    counted=st.integers(0, 3_000),
    fail_at=st.sampled_from([None, None, 0, 1, 2]),
)
def test_whatever_the_model_does_the_counter_stays_within_the_limit_and_reconciles(  # noqa: PLR0917
    tmp_path_factory: pytest.TempPathFactory,
    limit: int,
    already: int,
    steps: list[Step],
    counted: int,
    fail_at: int | None,
) -> None:
    """used <= limit always; a refusal changes nothing; ledger total equals the counter and
    nothing stays held."""
    store = shared_store(tmp_path_factory)
    user = f"user-{next(_ids)}"
    start = min(already, limit)
    seed(store, user, limit, used=start)
    if fail_at is not None:
        steps[fail_at] = Step(fail=True)
    model = ScriptedModel(steps, counted=counted, honest=True)

    outcome: object
    try:
        outcome = service(store, model).handle(user, ask(f"req-{user}"), NOW)
    except (TokenLimitExceeded, UpstreamUnavailable) as error:
        outcome = error

    account = store.get_account(user)
    assert account is not None
    assert account.current_tokens_used <= max(limit, start)
    assert store.ledger_total(user, account.period_start) == account.current_tokens_used - start
    entry = store.get_ledger(f"req-{user}")
    assert entry is None or entry.held_tokens == 0
    if isinstance(outcome, TokenLimitExceeded):
        assert account.current_tokens_used == start
        assert model.requests == []
        assert store.get_ledger(f"req-{user}") is None


_stores: dict[str, SQLiteStore] = {}


def shared_store(factory: pytest.TempPathFactory) -> SQLiteStore:
    """One file for all examples (a fresh user each): creating a schema per example is slow."""
    if "store" not in _stores:
        _stores["store"] = SQLiteStore(str(factory.mktemp("prop") / "prop.sqlite3"))
    return _stores["store"]


@dataclass
class RacingStore:
    """The embedded store, with another request settling the same id just before ours."""

    inner: SQLiteStore
    rival: ChatService | None = None

    def __getattr__(self, name: str) -> object:
        return getattr(self.inner, name)

    def open_request(
        self,
        entry: LedgerEntry,
        limit: int,
        turn: Turn | None = None,
        *,
        max_in_flight: int | None = None,
    ) -> None:
        if self.rival is not None:
            rival, self.rival = self.rival, None
            rival.handle(entry.user_id, ask(entry.request_id), NOW)
        self.inner.open_request(entry, limit, turn, max_in_flight=max_in_flight)


def test_losing_the_race_for_a_request_id_answers_the_winners_reply(store: SQLiteStore) -> None:
    """Two requests with one id: the second sees AlreadyExists and replays; charged once."""
    seed(store, "u", 100_000)
    racing = RacingStore(store)
    racing.rival = service(store, ScriptedModel([Step(input_tokens=70, output_tokens=30)]))
    loser_model = ScriptedModel([Step(input_tokens=999, output_tokens=999)])

    result = service(racing, loser_model).handle("u", ask("r-race"), NOW)  # type: ignore[arg-type]

    assert result.replayed is True
    assert result.usage.total_tokens == 100
    assert loser_model.requests == []
    assert used(store, "u") == 100


@dataclass
class RoomTakingStore:
    """A store where a concurrent request holds ``taken`` tokens just before the request opens,
    so the room the first call was planned from is gone when it is held."""

    inner: SQLiteStore
    taken: int

    def __getattr__(self, name: str) -> object:
        return getattr(self.inner, name)

    def open_request(
        self,
        entry: LedgerEntry,
        limit: int,
        turn: Turn | None = None,
        *,
        max_in_flight: int | None = None,
    ) -> None:
        if self.taken:
            taken, self.taken = self.taken, 0
            charge(self.inner, entry.user_id, "other", taken, NOW, settled=False)
        self.inner.open_request(entry, limit, turn, max_in_flight=max_in_flight)


def test_a_reservation_that_loses_a_race_is_replanned_smaller_instead_of_refused(
    store: SQLiteStore,
) -> None:
    """Room taken by a concurrent request shrinks max_tokens; it does not turn into a 429."""
    seed(store, "u", 2_000)
    model = ScriptedModel([Step(input_tokens=40, output_tokens=10)])
    racing = RoomTakingStore(store, taken=1_500)

    result = service(racing, model, max_steps=1).handle("u", ask("r1"), NOW)  # type: ignore[arg-type]

    assert result.usage.total_tokens == 50
    assert model.requests[0].max_tokens < SETTINGS.max_tokens
    assert used(store, "u") == 1_500 + 50
