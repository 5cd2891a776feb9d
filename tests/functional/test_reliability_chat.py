"""Reliability of the chat path through ``main(context)``: the store failing at each of its calls,
the model failing at each step of the tool loop, and the process dying mid-request. Afterwards
one run of the cron (through its own ``main``) leaves every counter equal to its ledger."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from metering.errors import StoreError
from metering.ledger import LedgerStatus

from localruntime.context import RuntimeContext, RuntimeRequest, RuntimeResult, execute
from localruntime.sqlite_store import SQLiteStore
from tests.support.anthropic_fake import (
    Failure,
    Raise,
    Reply,
    connection_refused,
    text_reply,
    timeout,
    tool_use_reply,
)
from tests.support.function_harness import NOW, Harness, base_environment, running
from tests.support.recording import Recording
from tests.support.stripe_events import load_app, unload_app

USER = "alice"
STARTER = 50_000
# The cron gives back reservations untouched for 15 minutes; this is one cron cycle later.
AFTER_TTL = NOW + timedelta(minutes=16)
EARLIER = (60, 9)  # a settled request before the one under test: its charge must stay
REQUEST_ID = "req-under-test"

ONE_STEP_CALLS = (
    "get_account",  # the caller's account
    "get_ledger",  # is requestId a retry?
    "create_ledger",  # claim requestId
    "reserve",
    "release",  # settle the reservation to the reported usage
    "update_ledger",  # SETTLED with the reply
    "get_account",  # the UsageStats of the answer
)
TWO_STEP_CALLS = (
    "get_account",
    "get_ledger",
    "create_ledger",
    "reserve",
    "release",
    "get_account",  # the get_my_usage tool
    "reserve",
    "release",
    "update_ledger",
    "get_account",
)


class ProcessDeath(BaseException):
    """The execution is killed: no ``except Exception`` and no clean-up runs after it."""


class FaultyStore(Recording):
    """The function's own store, failing its ``fail_at``-th call (1-based) with a StoreError,
    or dead for good once the ``dies_after`` (method, occurrence) call has returned."""

    def __init__(self, inner: Any, store_error: type[Exception]) -> None:
        super().__init__(inner)
        self._store_error = store_error
        self.fail_at: int | None = None
        self.dies_after: tuple[str, int] | None = None
        self.dead = False

    def _run(
        self, name: str, method: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        if self.dead:
            raise ProcessDeath
        if len(self.calls) == self.fail_at:
            raise self._store_error(f"injected fault in {name}")
        result = method(*args, **kwargs)
        if self.dies_after == (name, self.calls.count(name)):
            self.dead = True
        return result


class Chat:
    """The chat function over a store with injected faults, and the cron over the same file."""

    def __init__(self, harness: Harness, store: FaultyStore) -> None:
        self.harness = harness
        self.store = store

    def ask(self, request_id: str = REQUEST_ID) -> RuntimeResult:
        self.store.calls.clear()
        body = {"messages": [{"role": "user", "content": "How much have I used?"}]}
        return self.harness.call({**body, "requestId": request_id}, user=USER)

    def cron(self, at: datetime) -> dict[str, Any]:
        """One scheduled run of ``monthly-reset-cron`` with its clock at ``at``."""
        store = SQLiteStore(str(self.harness.sqlite_path))
        environ = base_environment(self.harness.sqlite_path)
        main = load_app("monthly-reset-cron", environ, clock=lambda: at, store=store)
        headers = {"x-appwrite-trigger": "schedule"}
        try:
            result = execute(main, RuntimeContext(RuntimeRequest(method="POST", headers=headers)))
        finally:
            unload_app("monthly-reset-cron")
        assert result.status_code == 200, result.body
        summary: dict[str, Any] = result.json()
        return summary

    def used(self) -> int:
        return self.harness.used(USER)

    def assert_balanced(self) -> None:
        """The counter equals what the ledger charged and never passes the limit."""
        account = self.harness.store().get_account(USER)
        assert account is not None
        ledger = self.harness.store().ledger_total(USER, account.period_start)
        assert account.current_tokens_used == ledger
        assert account.current_tokens_used <= account.limit


@pytest.fixture
def chat(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Chat]:
    path = tmp_path / "metering.sqlite3"
    faulty = FaultyStore(SQLiteStore(str(path)), StoreError)
    with running("chat", path, store=faulty) as harness:
        harness.seed(USER)
        harness.model.then(text_reply("Earlier.", *EARLIER))
        assert harness.call({"messages": [{"role": "user", "content": "Hi"}]}, user=USER).json()
        yield Chat(harness, faulty)


def one_step() -> list[Reply]:
    return [text_reply("You are fine.", input_tokens=420, output_tokens=12)]


def two_steps() -> list[Reply]:
    return [
        tool_use_reply("get_my_usage", input_tokens=400, output_tokens=40),
        text_reply("You have used 440 tokens.", input_tokens=600, output_tokens=30),
    ]


SCENARIOS = {"one-step": (one_step, ONE_STEP_CALLS), "two-step": (two_steps, TWO_STEP_CALLS)}
# What a retry with the same requestId answers after a fault at each call (1-based, in the order
# above). Until a step is charged the failed request leaves no ledger entry and the retry runs
# afresh (200); once one is, the entry is FAILED and the retry is refused (400); a fault on the
# final read comes after the entry is SETTLED, so the retry replays the reply (200).
RETRY_AFTER_FAULT = {
    "one-step": (200, 200, 200, 200, 200, 400, 200),
    "two-step": (200, 200, 200, 200, 200, 400, 400, 400, 400, 200),
}
STORE_FAULTS = [
    pytest.param(name, n, RETRY_AFTER_FAULT[name][n - 1], id=f"{name}-call{n}-{calls[n - 1]}")
    for name, (_, calls) in SCENARIOS.items()
    for n in range(1, len(calls) + 1)
]


def charge_of(replies: list[Reply]) -> int:
    return sum(
        sum(v for k, v in reply.document["usage"].items() if k.endswith("_tokens"))
        for reply in replies
    )


def assert_json_answer(result: RuntimeResult) -> dict[str, Any]:
    assert result.body, "an empty body"
    body: dict[str, Any] = result.json()
    if result.status_code >= 400:
        assert set(body["error"]) >= {"code", "message"}
    return body


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_the_fault_points_cover_every_store_call_of_the_request(chat: Chat, scenario: str) -> None:
    """The parametrized faults below hit each call a request makes, in this order."""
    replies, calls = SCENARIOS[scenario]
    chat.harness.model.then(*replies())

    assert chat.ask().status_code == 200
    assert tuple(chat.store.calls) == calls


@pytest.mark.parametrize(("scenario", "fail_at", "retry_status"), STORE_FAULTS)
def test_a_store_fault_at_any_call_answers_json_and_the_cron_rebalances(
    chat: Chat, scenario: str, fail_at: int, retry_status: int
) -> None:
    """A bare 500 ``internal`` (the chat absorbs no store error, wherever it happens); after the
    cron the counter equals the ledger, and a retry with the same requestId is charged at most
    once."""
    make_replies, _ = SCENARIOS[scenario]
    chat.harness.model.then(*make_replies(), *make_replies())
    before = chat.used()
    charge = charge_of(make_replies())
    chat.store.fail_at = fail_at

    result = chat.ask()

    chat.store.fail_at = None
    body = assert_json_answer(result)
    assert result.status_code == 500, body
    assert body["error"]["code"] == "internal"
    assert "injected" not in result.body.decode()
    chat.cron(AFTER_TTL)
    chat.assert_balanced()
    assert before <= chat.used() <= before + charge

    retry = chat.ask()

    assert retry.status_code == retry_status, retry.body
    retried = assert_json_answer(retry)
    if retry_status == 400:
        assert retried["error"]["code"] == "invalid_request"
    chat.cron(AFTER_TTL)
    chat.assert_balanced()
    assert before <= chat.used() <= before + charge


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_a_reply_that_cannot_be_recorded_keeps_its_completed_steps_charged(
    chat: Chat, scenario: str
) -> None:
    """A store fault on the settling ledger write: the entry becomes FAILED with the model's
    usage, so the cron has nothing to give back and the calls made stay charged."""
    make_replies, calls = SCENARIOS[scenario]
    chat.harness.model.then(*make_replies())
    before = chat.used()
    chat.store.fail_at = len(calls) - 1
    assert calls[-2] == "update_ledger"

    assert chat.ask().status_code == 500

    entry = chat.harness.store().get_ledger(REQUEST_ID)
    assert entry is not None
    assert entry.status is LedgerStatus.FAILED
    assert entry.usage.total_tokens == charge_of(make_replies())
    assert chat.cron(AFTER_TTL)["reservations"]["reclaimed"] == 0
    assert chat.used() == before + charge_of(make_replies())
    chat.assert_balanced()


def steps_failing_at(step: int, failure: Failure | Raise) -> list[Reply | Failure | Raise]:
    """A three-step tool loop whose ``step``-th model call fails."""
    loop: list[Reply | Failure | Raise] = [
        tool_use_reply("get_my_usage", input_tokens=400, output_tokens=40),
        tool_use_reply("get_my_usage", input_tokens=500, output_tokens=50),
        text_reply("Done.", input_tokens=600, output_tokens=60),
    ]
    loop[step - 1] = failure
    return loop[:step]


MODEL_FAULTS = [
    pytest.param(Failure(429), 503, "upstream_unavailable", id="429"),
    pytest.param(Failure(500), 503, "upstream_unavailable", id="500"),
    pytest.param(Failure(529), 503, "upstream_unavailable", id="529"),
    pytest.param(Raise(timeout), 503, "upstream_unavailable", id="timeout"),
    pytest.param(Raise(connection_refused), 503, "upstream_unavailable", id="connection"),
    pytest.param(Failure(400), 502, "upstream_error", id="400"),
]


@pytest.mark.parametrize("step", [1, 2, 3])
@pytest.mark.parametrize(("failure", "status", "code"), MODEL_FAULTS)
def test_a_model_fault_at_any_step_keeps_completed_steps_charged_and_nothing_held(
    chat: Chat, step: int, failure: Failure | Raise, status: int, code: str
) -> None:
    """502/503 with its code; done steps stay charged, the failed call's hold is released."""
    loop = steps_failing_at(step, failure)
    chat.harness.model.then(*loop)
    before = chat.used()
    completed = charge_of([outcome for outcome in loop if isinstance(outcome, Reply)])

    result = chat.ask()

    assert result.status_code == status
    assert assert_json_answer(result)["error"]["code"] == code
    assert chat.used() == before + completed
    chat.assert_balanced()
    entry = chat.harness.store().get_ledger(REQUEST_ID)
    if step == 1:
        assert entry is None
    else:
        assert entry is not None
        assert entry.status is LedgerStatus.FAILED
        assert (entry.usage.steps, entry.reserved_tokens) == (step - 1, completed)
    summary = chat.cron(AFTER_TTL)
    assert summary["reservations"]["reclaimed"] == 0
    assert chat.used() == before + completed
    chat.assert_balanced()


@pytest.mark.parametrize(
    ("scenario", "dies_after"),
    [
        pytest.param(one_step, ("reserve", 1), id="one-step-after-reserving"),
        pytest.param(two_steps, ("reserve", 2), id="two-step-after-a-completed-step"),
    ],
)
def test_a_process_dying_mid_request_is_given_back_by_one_cron_cycle(
    chat: Chat, scenario: Callable[[], list[Reply]], dies_after: tuple[str, int]
) -> None:
    """The hold outlives the process; the cron leaves it alone within the TTL and reclaims it
    after: counter == ledger, the user keeps only the earlier charge, a retry is refused."""
    chat.harness.model.then(*scenario())
    before = chat.used()
    chat.store.dies_after = dies_after

    with pytest.raises(ProcessDeath):
        chat.ask()

    chat.store.dead, chat.store.dies_after = False, None
    assert chat.used() > before
    entry = chat.harness.store().get_ledger(REQUEST_ID)
    assert entry is not None
    assert entry.status is LedgerStatus.RESERVED
    chat.assert_balanced()
    assert chat.ask().json()["error"]["code"] == "request_in_progress"
    assert chat.cron(NOW + timedelta(minutes=5))["reservations"]["reclaimed"] == 0

    summary = chat.cron(AFTER_TTL)

    assert summary["reservations"]["reclaimed"] == 1
    assert summary["reconciliation"]["drifted"] == 0
    assert chat.used() == before
    chat.assert_balanced()
    retry = chat.ask()
    assert retry.status_code == 400
    assert json.loads(retry.body)["error"]["code"] == "invalid_request"
    assert chat.used() == before
