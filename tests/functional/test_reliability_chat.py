"""A streamed turn through ``main(context)`` whose process dies at each store call (on SQLite) and
at each HTTP request (on the emulated Appwrite), before or after it reached the store; then one
cron run past the reservation TTL. Whatever the moment, the user ends charged exactly the steps
that had settled, the counter equals the ledger, nothing stays held and the turn is final. Store
errors and model failures at each point keep the same balance."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import requests
from metering.account import new_account
from metering.adapters.appwrite_store import AppwriteStore
from metering.errors import StoreError
from metering.ledger import LedgerStatus
from metering.plans import load_default_plans
from metering.ports import UsageStore
from metering.turns import TurnStatus
from requests import PreparedRequest

from localruntime.context import RuntimeContext, RuntimeRequest, RuntimeResult, execute
from localruntime.sqlite_store import SQLiteStore
from tests.support.anthropic_fake import (
    Failure,
    Raise,
    Streamed,
    stream_events,
    text_reply,
    timeout,
    tool_use_reply,
)
from tests.support.appwrite_emulator import AppwriteEmulator
from tests.support.builders import charge
from tests.support.function_harness import NOW, Harness, base_environment, running
from tests.support.recording import Recording
from tests.support.stripe_events import load_app, unload_app
from tools.schema import load_schema

USER = "alice"
REQUEST_ID = "turn-under-test"
EARLIER = 69  # a settled request before the turn: its charge must stay
# One cron cycle past CRON_RESERVATION_TTL_SECONDS (15 minutes by default).
AFTER_TTL = NOW + timedelta(minutes=16)
# The longest interval: the fast scripted streams write no progress and poll no Stop, so the
# store calls of a turn are the same every run.
ENVIRONMENT = {"CHAT_PROGRESS_INTERVAL_SECONDS": "5"}

# A three-step tool loop and what each step is charged (input plus output).
STEPS = (
    tool_use_reply("get_my_usage", text="Checking.", input_tokens=400, output_tokens=40),
    tool_use_reply("get_my_usage", text="", input_tokens=500, output_tokens=50),
    text_reply("You have used 1,059 tokens.", input_tokens=600, output_tokens=60),
)
STEP_CHARGES = (440, 550, 660)

# The store calls of the turn, in order.
CALLS = (
    "get_account",  # the caller's account
    "request_starts",  # the minute's requests, for the cap per minute
    "open_request",  # the id claimed, the turn created, the first call held: one change
    "settle",  # step 1 charged, its unused hold given back
    "stop_requested",
    "get_account",  # the get_my_usage tool
    "stop_requested",  # before the next call
    "hold",
    "settle",  # step 2
    "stop_requested",
    "get_account",
    "stop_requested",
    "hold",
    "settle",  # step 3: the turn completed
)
WRITES = frozenset({"open_request", "hold", "settle", "discard_request", "update_turn"})
# The table requests each store call of the turn makes on Appwrite, in order: a read is one,
# a change is one transaction (created, staged in one request, committed).
APPWRITE_CALLS = (
    ("get_account", 1),
    ("request_starts", 1),
    ("open_request", 3),
    ("settle", 3),
    ("stop_requested", 1),
    ("get_account", 1),
    ("stop_requested", 1),
    ("hold", 3),
    ("settle", 3),
    ("stop_requested", 1),
    ("get_account", 1),
    ("stop_requested", 1),
    ("hold", 3),
    # The settle that ends the request reads the account's period once staged.
    ("settle", 4),
)


def write_name(name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
    """``settle`` for a settled step, ``abandon`` for the settle that fails a request."""
    if name != "settle":
        return name
    patch = kwargs.get("patch", args[3] if len(args) > 3 else {})
    return "abandon" if patch.get("status") is LedgerStatus.FAILED else name


class ProcessDeath(BaseException):
    """The execution is killed: nothing that catches ``Exception`` sees it, and every later
    store call of the execution fails the same way (the process is gone)."""


class DyingStore(Recording):
    """The function's store, killed at its ``at``-th call (1-based): before the call reaches the
    store, or ``after`` it returned (its change committed, the answer lost). Notes the writes
    that reached the store, in ``committed``."""

    def __init__(self, inner: UsageStore) -> None:
        super().__init__(inner)
        self.at: int | None = None
        # Or killed at the first call of this name.
        self.at_first: str | None = None
        self.after = False
        self.dead = False
        self.committed: list[str] = []
        # A StoreError at the ``at``-th call instead: the execution lives on and handles it.
        self.fails_at: int | None = None

    def _run(
        self, name: str, method: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        if self.dead:
            raise ProcessDeath
        if len(self.calls) == self.fails_at:
            raise StoreError(f"injected fault in {name}")
        due = len(self.calls) == self.at or (name == self.at_first and self.calls.count(name) == 1)
        if due and not self.after:
            self.dead = True
            raise ProcessDeath
        result = method(*args, **kwargs)
        if name in WRITES:
            self.committed.append(write_name(name, args, kwargs))
        if due:
            self.dead = True
            raise ProcessDeath
        return result


class Committing(Recording):
    """The Appwrite store, noting each call whose transaction the server committed and how many
    table requests each call made."""

    def __init__(self, inner: UsageStore, server: DyingServer) -> None:
        super().__init__(inner)
        self.server = server
        self.committed: list[str] = []
        self.requests: list[tuple[str, int]] = []

    def _run(
        self, name: str, method: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        emulator = self.server.emulator
        known = set(emulator.transactions)
        sent = len(self.server.requests)
        try:
            return method(*args, **kwargs)
        finally:
            self.requests.append((name, len(self.server.requests) - sent))
            started = [t for key, t in emulator.transactions.items() if key not in known]
            if any(transaction.status == "committed" for transaction in started):
                self.committed.append(write_name(name, args, kwargs))


class DyingServer:
    """The emulated Appwrite, killing the execution at its ``at``-th table request (1-based):
    before the server sees it, or ``after`` the server handled it (the answer lost). With
    ``fails`` the connection breaks there instead and the execution lives on."""

    def __init__(self, emulator: AppwriteEmulator) -> None:
        self.emulator = emulator
        self._handle = emulator.handle
        # Set before the emulator starts routing, so that every request comes through here.
        emulator.handle = self.handle  # type: ignore[method-assign]
        self.at: int | None = None
        self.after = False
        self.fails = False
        self.dead = False
        self.requests: list[str] = []

    def handle(self, request: PreparedRequest) -> Any:
        path = urlsplit(request.url or "").path
        if "/tablesdb" not in path:
            return self._handle(request)  # the Account API: identity, not the store
        if self.dead:
            raise ProcessDeath
        self.requests.append(f"{request.method} {path}")
        due = len(self.requests) == self.at
        if due and not self.after:
            self._end()
        answer = self._handle(request)
        if due:
            self._end()
        return answer

    def _end(self) -> None:
        if self.fails:
            raise requests.ConnectionError("injected: the connection broke")
        self.dead = True
        raise ProcessDeath


@dataclass
class Turned:
    """The chat function over a store the test can kill, and what a later process sees."""

    harness: Harness
    observed: DyingStore | Committing
    fresh: Callable[[], UsageStore]
    environ: dict[str, str]

    def ask(self) -> RuntimeResult:
        body = {"messages": [{"role": "user", "content": "How much have I used?"}]}
        return self.harness.call({**body, "requestId": REQUEST_ID}, user=USER)

    def cron(self) -> dict[str, Any]:
        """One scheduled run of ``monthly-reset-cron``, a process of its own, past the TTL."""
        main = load_app(
            "monthly-reset-cron", self.environ, clock=lambda: AFTER_TTL, store=self.fresh()
        )
        context = RuntimeContext(
            RuntimeRequest(method="POST", headers={"x-appwrite-trigger": "schedule"})
        )
        try:
            result = execute(main, context)
        finally:
            unload_app("monthly-reset-cron")
        assert result.status_code == 200, result.body
        summary: dict[str, Any] = result.json()
        return summary

    def counter_and_ledger(self) -> tuple[int, int]:
        store = self.fresh()
        account = store.get_account(USER)
        assert account is not None
        return account.current_tokens_used, store.ledger_total(USER, account.period_start)

    def assert_charged_exactly_the_settled_steps(self) -> None:
        """After the cron: the settled steps charged, nothing held, the turn final."""
        settled = self.observed.committed.count("settle")
        opened = "open_request" in self.observed.committed
        finished = settled == len(STEPS)
        summary = self.cron()
        assert summary["reservations"]["reclaimed"] == int(opened and not finished)
        assert summary["reconciliation"]["drifted"] == 0
        charged = sum(STEP_CHARGES[:settled])
        assert self.counter_and_ledger() == (EARLIER + charged, EARLIER + charged)
        store = self.fresh()
        entry, turn = store.get_ledger(REQUEST_ID), store.get_turn(REQUEST_ID)
        if not opened:
            assert (entry, turn) == (None, None)
            return
        assert entry is not None
        assert turn is not None
        assert entry.held_tokens == 0
        assert entry.status is (LedgerStatus.SETTLED if finished else LedgerStatus.RECLAIMED)
        assert turn.status is (TurnStatus.COMPLETED if finished else TurnStatus.FAILED)
        assert turn.usage == entry.usage
        assert turn.usage.total_tokens == charged


@contextmanager
def on_sqlite(tmp_path: Path, environment: dict[str, str] = ENVIRONMENT) -> Iterator[Turned]:
    path = tmp_path / "metering.sqlite3"
    dying = DyingStore(SQLiteStore(str(path)))
    with running("chat", path, environment, store=dying) as harness:
        harness.seed(USER)
        charge(harness.store(), USER, "earlier", EARLIER, NOW)
        yield Turned(harness, dying, lambda: SQLiteStore(str(path)), base_environment(path))


@contextmanager
def on_appwrite(tmp_path: Path) -> Iterator[tuple[Turned, DyingServer]]:
    emulator = AppwriteEmulator(load_schema())
    server = DyingServer(emulator)

    def fresh() -> UsageStore:
        return AppwriteStore.connect(emulator.store_settings(), emulator.api_key)

    committing = Committing(fresh(), server)
    environment = {
        **ENVIRONMENT,
        "APPWRITE_FUNCTION_API_ENDPOINT": emulator.endpoint,
        "APPWRITE_FUNCTION_PROJECT_ID": emulator.project_id,
    }
    path = tmp_path / "unused.sqlite3"
    # The emulator routes last, so that it answers every Appwrite request, the JWT's too.
    with (
        running("chat", path, environment, store=committing) as harness,
        emulator.running(),
    ):
        emulator.register_user(harness.jwt(USER), USER)
        store = fresh()
        store.create_account(new_account(USER, load_default_plans().get("starter"), NOW))
        charge(store, USER, "earlier", EARLIER, NOW)
        yield Turned(harness, committing, fresh, environment), server


def death_points() -> list[Any]:
    return [
        pytest.param(at, after, id=f"call{at:02d}-{name}-{'after' if after else 'before'}")
        for at, name in enumerate(CALLS, start=1)
        for after in (False, True)
    ]


def http_death_points() -> list[Any]:
    points: list[Any] = []
    at = 0
    for position, (name, sent) in enumerate(APPWRITE_CALLS, start=1):
        for request in range(1, sent + 1):
            at += 1
            for after in (False, True):
                when = "after" if after else "before"
                label = f"call{position:02d}-{name}-http{request}-{when}"
                points.append(pytest.param(at, after, id=label))
    return points


def test_the_death_points_cover_every_store_call_of_the_turn(tmp_path: Path) -> None:
    """The sweep below kills the turn at each of these calls, in this order."""
    with on_sqlite(tmp_path) as turned:
        turned.harness.model.then(*STEPS)

        assert turned.ask().status_code == 200
        assert tuple(turned.observed.calls) == CALLS
        assert turned.counter_and_ledger() == (EARLIER + sum(STEP_CHARGES),) * 2


@pytest.mark.parametrize(("at", "after"), death_points())
def test_a_process_dying_at_any_store_call_is_charged_exactly_its_settled_steps(
    tmp_path: Path, at: int, after: bool
) -> None:
    """Killed at one store call, before or after it committed: the counter equals the ledger at
    once, and after the cron the user pays exactly the steps settled before the death."""
    with on_sqlite(tmp_path) as turned:
        turned.harness.model.then(*STEPS)
        store = turned.observed
        assert isinstance(store, DyingStore)
        store.at, store.after = at, after

        with pytest.raises(ProcessDeath):
            turned.ask()

        counter, ledger = turned.counter_and_ledger()
        assert counter == ledger
        turned.assert_charged_exactly_the_settled_steps()


def test_the_http_death_points_cover_every_request_of_the_turn(tmp_path: Path) -> None:
    """The Appwrite sweep below kills the turn at each of these requests, in this order."""
    with on_appwrite(tmp_path) as (turned, _):
        turned.harness.model.then(*STEPS)

        assert turned.ask().status_code == 200
        observed = turned.observed
        assert isinstance(observed, Committing)
        assert tuple(observed.requests) == APPWRITE_CALLS
        assert turned.counter_and_ledger() == (EARLIER + sum(STEP_CHARGES),) * 2


@pytest.mark.parametrize(("at", "after"), http_death_points())
def test_a_process_dying_at_any_appwrite_request_is_charged_exactly_its_settled_steps(
    tmp_path: Path, at: int, after: bool
) -> None:
    """Killed at one HTTP request, before the server saw it or after it answered (a commit
    applied, its answer lost): after the cron the user pays exactly the settled steps."""
    with on_appwrite(tmp_path) as (turned, server):
        turned.harness.model.then(*STEPS)
        server.requests.clear()  # counted from the turn's first request
        server.at, server.after = at, after

        with pytest.raises(ProcessDeath):
            turned.ask()

        server.dead, server.at = False, None
        counter, ledger = turned.counter_and_ledger()
        assert counter == ledger
        turned.assert_charged_exactly_the_settled_steps()


# The write may come from the stream's watchdog thread, which then dies with the process.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_a_process_dying_at_a_progress_write_leaves_a_failed_turn_and_no_charge(
    tmp_path: Path,
) -> None:
    """Killed while writing the streamed text (before or after the write): the turn the user
    follows ends failed with what it showed, and nothing is charged."""
    environment = {"CHAT_PROGRESS_INTERVAL_SECONDS": "0.05"}
    reply = text_reply("Fine so far.", input_tokens=300, output_tokens=4)
    for after in (False, True):
        with on_sqlite(tmp_path / str(after), environment) as turned:
            # Events further apart than the interval: the text is written as it grows.
            turned.harness.model.then(Streamed(stream_events(reply.document), delay_seconds=0.08))
            store = turned.observed
            assert isinstance(store, DyingStore)
            store.at_first, store.after = "update_turn", after

            with pytest.raises(ProcessDeath):
                turned.ask()

            assert store.committed == ["open_request", "update_turn"][: 1 + after]
            turned.assert_charged_exactly_the_settled_steps()
            turn = turned.fresh().get_turn(REQUEST_ID)
            assert turn is not None
            assert bool(turn.content) is after
            assert "Fine so far.".startswith(turn.content)


@pytest.mark.parametrize(
    "at", [pytest.param(at, id=f"call{at:02d}-{name}") for at, name in enumerate(CALLS, start=1)]
)
def test_a_store_error_at_any_call_keeps_the_counter_equal_to_the_ledger(
    tmp_path: Path, at: int
) -> None:
    """A StoreError is answered 500 ``internal`` (a failed Stop look-up is no Stop: the turn
    goes on); the counter equals the ledger, nothing stays held, the turn is final, and a
    retry with the same id is charged at most once."""
    with on_sqlite(tmp_path) as turned:
        turned.harness.model.then(*STEPS, *STEPS)
        store = turned.observed
        assert isinstance(store, DyingStore)
        store.fails_at = at

        result = turned.ask()

        store.fails_at = None
        survives = CALLS[at - 1] == "stop_requested"
        assert result.status_code == (200 if survives else 500), result.body
        if not survives:
            assert result.json()["error"]["code"] == "internal"
            assert "injected" not in result.body.decode()
        turned.cron()
        assert_balanced_and_settled(turned, store.committed.count("settle"))
        retry = turned.ask()
        assert retry.status_code in (200, 400), retry.body
        turned.cron()
        assert_balanced_and_settled(turned, 0)


@pytest.mark.parametrize(("at", "after"), http_death_points())
def test_a_broken_appwrite_request_keeps_the_counter_equal_to_the_ledger(
    tmp_path: Path, at: int, after: bool
) -> None:
    """The connection breaks at one request, before the server saw it or after it applied it
    (the answer lost), and the execution lives on: the counter equals the ledger, nothing
    stays held, the turn is final."""
    with on_appwrite(tmp_path) as (turned, server):
        turned.harness.model.then(*STEPS)
        server.requests.clear()
        server.at, server.after, server.fails = at, after, True

        result = turned.ask()

        server.at = None
        assert result.status_code in (200, 500), result.body
        turned.cron()
        assert_balanced_and_settled(turned, turned.observed.committed.count("settle"))


def assert_balanced_and_settled(turned: Turned, settled: int) -> None:
    """Counter == ledger, charged at least the ``settled`` steps and at most one whole turn,
    nothing held, the turn final."""
    counter, ledger = turned.counter_and_ledger()
    assert counter == ledger
    assert EARLIER + sum(STEP_CHARGES[:settled]) <= counter <= EARLIER + sum(STEP_CHARGES)
    store = turned.fresh()
    entry, turn = store.get_ledger(REQUEST_ID), store.get_turn(REQUEST_ID)
    assert entry is None or entry.held_tokens == 0
    assert turn is None or turn.status.final


MODEL_FAULTS = [
    pytest.param(Failure(529), 503, "upstream_unavailable", id="529"),
    pytest.param(Raise(timeout), 503, "upstream_unavailable", id="timeout"),
    pytest.param(Failure(400), 502, "upstream_error", id="400"),
]


@pytest.mark.parametrize("step", [1, 2, 3])
@pytest.mark.parametrize(("failure", "status", "code"), MODEL_FAULTS)
def test_a_model_refusal_at_any_step_keeps_the_settled_steps_and_fails_the_turn(
    tmp_path: Path, step: int, failure: Failure | Raise, status: int, code: str
) -> None:
    """502/503 with its code; the steps before stay charged, the refused call's hold goes
    back, the turn says failed, and the cron finds nothing to reclaim."""
    with on_sqlite(tmp_path) as turned:
        turned.harness.model.then(*STEPS[: step - 1], failure)
        charged = EARLIER + sum(STEP_CHARGES[: step - 1])

        result = turned.ask()

        assert (result.status_code, result.json()["error"]["code"]) == (status, code)
        assert turned.counter_and_ledger() == (charged, charged)
        store = turned.fresh()
        entry, turn = store.get_ledger(REQUEST_ID), store.get_turn(REQUEST_ID)
        if step == 1:
            assert entry is None
        else:
            assert entry is not None
            assert (entry.status, entry.usage.steps, entry.held_tokens) == (
                LedgerStatus.FAILED,
                step - 1,
                0,
            )
        assert turn is not None
        assert turn.status is TurnStatus.FAILED
        assert turned.cron()["reservations"]["reclaimed"] == 0
        assert turned.counter_and_ledger() == (charged, charged)
