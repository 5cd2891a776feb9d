"""Turns, purely: which states are final, reading and stopping one over an in-memory store with
a scripted clock, and the answer's shape."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import pytest
from metering.account import Account
from metering.errors import PathNotFound
from metering.tokens import TokenUsage
from metering.turn_service import TurnService, TurnView
from metering.turns import Turn, TurnStatus
from metering.wire import turn_response

from tests.support.builders import NOW, subscription

STOP_WAIT = 5.0


@dataclass
class Turns:
    """The store calls a turn's read and Stop make; ``settles_after`` polls of ``get_turn``
    after a Stop, the turn becomes ``stopped`` (its execution settled it)."""

    turns: dict[str, Turn]
    account: Account = field(default_factory=lambda: subscription(50_000))
    stops: list[str] = field(default_factory=list)
    settles_after: int | None = None

    def get_turn(self, request_id: str) -> Turn | None:
        turn = self.turns.get(request_id)
        if turn is not None and self.stops and self.settles_after is not None:
            if self.settles_after == 0:
                turn = replace(turn, status=TurnStatus.STOPPED)
                self.turns[request_id] = turn
            self.settles_after -= 1
        return turn

    def request_stop(self, request_id: str, user_id: str, now: object) -> None:
        self.stops.append(request_id)

    def get_account(self, user_id: str) -> Account | None:
        return self.account


@dataclass
class Clock:
    """A monotonic clock that moves only when slept on."""

    now: float = 0.0
    slept: list[float] = field(default_factory=list)

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def streaming(status: TurnStatus = TurnStatus.STREAMING) -> Turn:
    return Turn("t-1", "user-1", status, NOW, NOW, content="So far", model="claude-sonnet-5-5")


def service(store: Turns, clock: Clock) -> TurnService:
    return TurnService(
        store,  # type: ignore[arg-type]
        monotonic=clock,
        sleep=clock.sleep,
        stop_wait_seconds=STOP_WAIT,
    )


@pytest.mark.parametrize(
    ("status", "final"),
    [
        (TurnStatus.PENDING, False),
        (TurnStatus.STREAMING, False),
        (TurnStatus.COMPLETED, True),
        (TurnStatus.STOPPED, True),
        (TurnStatus.FAILED, True),
    ],
)
def test_only_completed_stopped_and_failed_turns_are_final(status: TurnStatus, final: bool) -> None:
    """Pending and streaming turns may still change; the other three never do."""
    assert status.final is final


def test_a_stop_waits_until_the_execution_settles_the_turn() -> None:
    """The Stop is recorded once, then polled until the turn is final: the answer holds it."""
    store, clock = Turns({"t-1": streaming()}, settles_after=2), Clock()

    view = service(store, clock).stop("user-1", "t-1", NOW)

    assert store.stops == ["t-1"]
    assert (view.turn.status, view.stopping) == (TurnStatus.STOPPED, False)
    assert clock.now < STOP_WAIT


def test_a_stop_the_execution_does_not_settle_in_time_answers_stopping() -> None:
    """Past the wait the answer says the turn is stopping; the Stop stays recorded."""
    store, clock = Turns({"t-1": streaming()}), Clock()

    view = service(store, clock).stop("user-1", "t-1", NOW)

    assert store.stops == ["t-1"]
    assert view.stopping
    assert clock.now >= STOP_WAIT
    assert turn_response(view)["turn"]["status"] == "stopping"


def test_stopping_a_final_turn_records_no_stop_and_does_not_wait() -> None:
    """A completed turn is answered as it is."""
    store, clock = Turns({"t-1": streaming(TurnStatus.COMPLETED)}), Clock()

    view = service(store, clock).stop("user-1", "t-1", NOW)

    assert (store.stops, clock.slept, view.stopping) == ([], [], False)
    assert view.turn.status is TurnStatus.COMPLETED


@pytest.mark.parametrize("request_id", ["t-1", "t-unknown"])
def test_another_users_turn_and_an_unknown_one_are_the_same_not_found(request_id: str) -> None:
    """Neither a read nor a Stop tells whether someone else's turn exists, nor stops it."""
    store, clock = Turns({"t-1": streaming()}), Clock()
    turns = service(store, clock)

    with pytest.raises(PathNotFound):
        turns.read("user-2", request_id)
    with pytest.raises(PathNotFound):
        turns.stop("user-2", request_id, NOW)

    assert store.stops == []


def test_the_turn_answer_carries_the_text_its_charge_and_the_usage_stats() -> None:
    """The document a user reads of a turn, in the contract's camelCase."""
    usage = TokenUsage(input_tokens=300, output_tokens=12, steps=1)
    turn = replace(streaming(), usage=usage, cost_micro_usd=1_080, estimated=True)
    view = TurnView(turn, subscription(50_000, current_tokens_used=312))

    answer = turn_response(view)

    assert answer["turn"] == {
        "requestId": "t-1",
        "status": "streaming",
        "content": "So far",
        "model": "claude-sonnet-5-5",
        "stopReason": "",
        "truncated": False,
        "usage": {
            "inputTokens": 300,
            "cacheCreationInputTokens": 0,
            "cacheReadInputTokens": 0,
            "outputTokens": 12,
            "totalTokens": 312,
            "steps": 1,
            "costUsd": 0.00108,
        },
        "estimated": True,
    }
    assert answer["usage"]["tokens"]["used"] == 312
