"""Per-user caps through the chat function's ``main(context)``, over SQLite and over the TablesDB
emulation: turns in flight (strict, across instances, counted by the store) and requests per
minute (from the ledger), each refusal a 429 ``rate_limited`` with ``Retry-After``."""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx2
import pytest
import responses
from metering.account import new_account
from metering.errors import StoreError
from metering.ledger import LedgerEntry, LedgerStatus
from metering.plans import load_default_plans
from metering.ports import UsageStore
from metering.turns import Turn

from localruntime.context import RuntimeContext, RuntimeRequest, RuntimeResult, execute
from localruntime.sqlite_store import SQLiteStore
from tests.support.anthropic_fake import FakeAnthropic, text_reply
from tests.support.function_harness import NOW
from tests.support.identity import ENDPOINT, PROJECT_ID, FakeAccounts
from tests.support.stripe_events import FakeClock, load_app, unload_app

# Long enough for any test here; only reached when a test is broken.
SAFETY_SECONDS = 30
ALLOWANCE = 1_000_000
RECLAIM_AFTER = timedelta(minutes=15)


@dataclass
class Backend:
    """Where the chat keeps its data and checks identities, and the in-flight count it keeps."""

    store: UsageStore
    endpoint: str
    project_id: str
    issue_jwt: Callable[[str], str]
    in_flight: Callable[[str], int]


@pytest.fixture(params=["sqlite", "appwrite"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    if request.param == "sqlite":
        path = tmp_path / "metering.sqlite3"
        store = SQLiteStore(str(path))

        def read(user_id: str) -> int:
            with sqlite3.connect(path) as connection:
                [(value,)] = connection.execute(
                    "SELECT requestsInFlight FROM subscriptions WHERE userId = ?", (user_id,)
                ).fetchall()
            return int(value or 0)

        accounts = FakeAccounts()
        with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
            accounts.register(mock)
            yield Backend(store, ENDPOINT, PROJECT_ID, accounts.issue, read)
        return
    from metering.adapters.appwrite_store import AppwriteStore

    from tests.support.appwrite_emulator import emulated_appwrite

    with emulated_appwrite() as emulator:
        settings = emulator.store_settings()

        def issue(user_id: str) -> str:
            jwt = f"eyJ{user_id}.{len(emulator.rows('subscriptions'))}"
            emulator.register_user(jwt, user_id)
            return jwt

        def count(user_id: str) -> int:
            [row] = [r for r in emulator.rows("subscriptions") if r.get("userId") == user_id]
            value = row.get("requestsInFlight")
            return int(value) if isinstance(value, int) else 0

        yield Backend(
            AppwriteStore.connect(settings, emulator.api_key),
            settings.appwrite_endpoint,
            settings.appwrite_project_id,
            issue,
            count,
        )


@dataclass
class GatedModel(FakeAnthropic):
    """The fake Messages API, holding every model call at a gate until the test opens it, so
    that turns stay in flight for as long as a test needs."""

    gate: threading.Event = field(default_factory=threading.Event)
    arrived: int = 0
    arrival: threading.Condition = field(default_factory=threading.Condition)

    def handle(self, request: httpx2.Request) -> httpx2.Response:
        if request.url.path.endswith("/v1/messages"):
            with self.arrival:
                self.arrived += 1
                self.arrival.notify_all()
            assert self.gate.wait(SAFETY_SECONDS), "the test never opened the gate"
        return super().handle(request)

    def wait_for(self, calls: int) -> None:
        with self.arrival:
            assert self.arrival.wait_for(lambda: self.arrived >= calls, SAFETY_SECONDS)


@dataclass
class Chat:
    backend: Backend
    model: GatedModel
    clock: FakeClock
    main: Callable[[RuntimeContext], Any]
    jwts: dict[str, str] = field(default_factory=dict)

    def seed(self, user_id: str) -> None:
        account = new_account(user_id, load_default_plans().get("starter"), NOW)
        self.backend.store.create_account(account)
        self.backend.store.update_account(user_id, {"max_tokens_per_month": ALLOWANCE})
        self.jwts[user_id] = self.backend.issue_jwt(user_id)

    def call(self, user_id: str, request_id: str, text: str = "Hello") -> RuntimeResult:
        body = {"messages": [{"role": "user", "content": text}], "requestId": request_id}
        headers = {
            "content-type": "application/json",
            "x-appwrite-trigger": "http",
            "x-appwrite-user-id": user_id,
            "x-appwrite-user-jwt": self.jwts[user_id],
        }
        request = RuntimeRequest(
            method="POST", path="/", headers=headers, body=json.dumps(body).encode()
        )
        return execute(self.main, RuntimeContext(req=request))

    def used(self, user_id: str) -> int:
        account = self.backend.store.get_account(user_id)
        assert account is not None
        assert self.backend.store.ledger_total(user_id, account.period_start) == (
            account.current_tokens_used
        )
        return account.current_tokens_used

    def in_flight_entries(self, user_id: str) -> int:
        """The user's entries still ``reserved``: what the in-flight count must equal."""
        page = self.backend.store.list_stale_reservations(
            self.clock() + timedelta(days=1), 500, None
        )
        return sum(1 for entry in page.items if entry.user_id == user_id)


ChatFactory = Callable[..., Chat]


@pytest.fixture
def start_chat(backend: Backend) -> Iterator[ChatFactory]:
    """Cold-starts the chat function over ``backend`` with the given settings (and store)."""

    def start(store: UsageStore | None = None, **settings: str) -> Chat:
        model = GatedModel(default=text_reply("Here you are.", input_tokens=50, output_tokens=5))
        clock = FakeClock(NOW)
        environ = {
            "APPWRITE_FUNCTION_API_ENDPOINT": backend.endpoint,
            "APPWRITE_FUNCTION_PROJECT_ID": backend.project_id,
            "ANTHROPIC_API_KEY": "sk-ant-rate-limit-test",
            "CHAT_MAX_RETRIES": "0",
            **settings,
        }
        main = load_app(
            "chat",
            environ,
            clock=clock,
            store=store or backend.store,
            anthropic_http_client=model.client(),
        )
        return Chat(backend, model, clock, main)

    yield start
    unload_app("chat")


def run_cron(backend: Backend, clock: FakeClock) -> dict[str, Any]:
    environ = {
        "APPWRITE_FUNCTION_API_ENDPOINT": backend.endpoint,
        "APPWRITE_FUNCTION_PROJECT_ID": backend.project_id,
    }
    main = load_app("monthly-reset-cron", environ, clock=clock, store=backend.store)
    try:
        headers = {"x-appwrite-trigger": "schedule"}
        result = execute(
            main, RuntimeContext(RuntimeRequest(method="POST", path="/", headers=headers))
        )
    finally:
        unload_app("monthly-reset-cron")
    assert result.status_code == 200, result.body
    summary: dict[str, Any] = result.json()
    return summary


def rate_limited(result: RuntimeResult, reason: str, retry_after: int) -> None:
    """The refusal's contract: 429, its own code, the wait in the header and the body."""
    assert result.status_code == 429, result.body
    error = result.json()["error"]
    assert error["code"] == "rate_limited"
    assert error["retryAfter"] == retry_after
    assert error["details"][0]["reason"] == reason
    assert result.headers["retry-after"] == str(retry_after)


def in_background(
    pool: ThreadPoolExecutor, chat: Chat, user_id: str, request_id: str
) -> Future[RuntimeResult]:
    return pool.submit(chat.call, user_id, request_id)


def test_concurrent_turns_past_the_cap_are_refused_and_other_users_go_on(
    start_chat: ChatFactory,
) -> None:
    """Seven turns of one user at once with a cap of 3: exactly 3 reach the model, 4 are 429
    ``rate_limited`` with Retry-After and leave no trace; another user still gets in; once
    they end the count is back at zero and the counter equals the ledger."""
    chat = start_chat(CHAT_MAX_TURNS_IN_FLIGHT="3")
    chat.seed("alice")
    chat.seed("bob")
    with ThreadPoolExecutor(8) as pool:
        alice = [in_background(pool, chat, "alice", f"alice-{n}") for n in range(7)]
        chat.model.wait_for(3)
        # The admitted ones wait at the gate: whatever ends meanwhile was refused.
        assert len(ended(alice, 4)) == 4
        assert chat.backend.in_flight("alice") == 3 == chat.in_flight_entries("alice")
        bob = in_background(pool, chat, "bob", "bob-1")
        chat.model.wait_for(4)
        chat.model.gate.set()
        results = [future.result(SAFETY_SECONDS) for future in alice]
        assert bob.result(SAFETY_SECONDS).status_code == 200

    assert sorted(result.status_code for result in results) == [200] * 3 + [429] * 4
    for number, result in enumerate(results):
        if result.status_code == 429:
            rate_limited(result, "turns_in_flight", 2)
            assert chat.backend.store.get_ledger(f"alice-{number}") is None
            assert chat.backend.store.get_turn(f"alice-{number}") is None
    assert len(chat.model.requests) == 4
    assert chat.backend.in_flight("alice") == 0 == chat.in_flight_entries("alice")
    assert chat.used("alice") == 3 * 55


def ended(futures: list[Future[RuntimeResult]], count: int) -> list[RuntimeResult]:
    """The results of the first ``count`` calls to end (while the gate is shut, only refused
    calls can)."""
    pending = set(futures)
    while len(futures) - len(pending) < count:
        done, pending = wait(pending, SAFETY_SECONDS, return_when=FIRST_COMPLETED)
        assert done, "no further call ended"
    return [future.result() for future in futures if future.done()]


def test_a_finished_turn_frees_its_slot(start_chat: ChatFactory) -> None:
    """Cap 1: a second turn is refused while the first runs, and admitted once it ended."""
    chat = start_chat(CHAT_MAX_TURNS_IN_FLIGHT="1")
    chat.seed("alice")
    with ThreadPoolExecutor(1) as pool:
        first = in_background(pool, chat, "alice", "first")
        chat.model.wait_for(1)

        rate_limited(chat.call("alice", "second"), "turns_in_flight", 2)

        chat.model.gate.set()
        assert first.result(SAFETY_SECONDS).status_code == 200

    assert chat.call("alice", "second").status_code == 200
    assert chat.backend.in_flight("alice") == 0


@dataclass
class DyingStore:
    """A store whose execution dies once its request is open: nothing it does after that
    reaches the store (a killed process), so only the cron can end the request."""

    inner: UsageStore
    dead: bool = False

    def __getattr__(self, name: str) -> Any:
        method = getattr(self.inner, name)
        if name in {"hold", "settle", "discard_request", "update_turn", "get_ledger"}:

            def refused(*args: Any, **kwargs: Any) -> Any:
                if self.dead:
                    raise StoreError("the process is gone")
                return method(*args, **kwargs)

            return refused
        return method

    def open_request(
        self,
        entry: LedgerEntry,
        limit: int,
        turn: Turn | None = None,
        *,
        max_in_flight: int | None = None,
    ) -> None:
        self.inner.open_request(entry, limit, turn, max_in_flight=max_in_flight)
        self.dead = True


def test_a_crashed_turns_slot_comes_back_with_the_crons_reclaim(
    start_chat: ChatFactory, backend: Backend
) -> None:
    """Cap 1: a request whose execution died keeps its slot (429 meanwhile) until the cron
    reclaims its hold; then the user chats again."""
    dying = DyingStore(backend.store)
    crashed = start_chat(dying, CHAT_MAX_TURNS_IN_FLIGHT="1")
    crashed.seed("alice")
    crashed.model.gate.set()
    assert crashed.call("alice", "crashed").status_code == 500
    assert backend.in_flight("alice") == 1

    chat = start_chat(CHAT_MAX_TURNS_IN_FLIGHT="1")
    chat.jwts = crashed.jwts
    chat.model.gate.set()
    rate_limited(chat.call("alice", "blocked"), "turns_in_flight", 2)

    chat.clock.advance(RECLAIM_AFTER + timedelta(minutes=1))
    summary = run_cron(backend, chat.clock)

    assert summary["reservations"]["reclaimed"] == 1
    entry = backend.store.get_ledger("crashed")
    assert entry is not None
    assert entry.status is LedgerStatus.RECLAIMED
    assert backend.in_flight("alice") == 0
    assert chat.call("alice", "after").status_code == 200


def test_the_cap_per_minute_refuses_until_the_window_moves(start_chat: ChatFactory) -> None:
    """Cap 3 a minute: requests at 0, 10 and 20 s pass, the one at 30 s waits 30 s, and is
    admitted exactly a minute after the first."""
    chat = start_chat(CHAT_MAX_REQUESTS_PER_MINUTE="3")
    chat.seed("alice")
    chat.model.gate.set()
    for number in range(3):
        assert chat.call("alice", f"r-{number}").status_code == 200
        chat.clock.advance(timedelta(seconds=10))

    rate_limited(chat.call("alice", "r-3"), "requests_per_minute", 30)
    chat.clock.advance(timedelta(seconds=29))
    rate_limited(chat.call("alice", "r-3"), "requests_per_minute", 1)
    chat.clock.advance(timedelta(seconds=1))

    assert chat.call("alice", "r-3").status_code == 200
    rate_limited(chat.call("alice", "r-4"), "requests_per_minute", 10)
    assert chat.backend.store.get_ledger("r-4") is None


def test_a_retry_of_a_request_that_ran_gets_its_answer_past_the_cap(
    start_chat: ChatFactory,
) -> None:
    """Cap 1 a minute: the same requestId again replays its recorded reply (charged once); a
    new one is refused."""
    chat = start_chat(CHAT_MAX_REQUESTS_PER_MINUTE="1")
    chat.seed("alice")
    chat.model.gate.set()
    first = chat.call("alice", "once")
    assert first.status_code == 200

    again = chat.call("alice", "once")

    assert again.status_code == 200
    assert again.json()["message"] == first.json()["message"]
    assert len(chat.model.requests) == 1
    rate_limited(chat.call("alice", "new"), "requests_per_minute", 60)


@dataclass
class CountingStarts:
    """The store, counting how often the chat asks for the user's request starts."""

    inner: UsageStore
    asked: int = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def request_starts(self, *args: Any) -> Any:
        self.asked += 1
        return self.inner.request_starts(*args)


def test_zero_disables_both_caps(start_chat: ChatFactory, backend: Backend) -> None:
    """With both caps 0, five turns of one user run at once and the ledger is never asked for
    the minute's requests."""
    counting = CountingStarts(backend.store)
    chat = start_chat(counting, CHAT_MAX_TURNS_IN_FLIGHT="0", CHAT_MAX_REQUESTS_PER_MINUTE="0")
    chat.seed("alice")
    with ThreadPoolExecutor(5) as pool:
        turns = [in_background(pool, chat, "alice", f"t-{n}") for n in range(5)]
        chat.model.wait_for(5)
        assert backend.in_flight("alice") == 5
        chat.model.gate.set()
        assert [turn.result(SAFETY_SECONDS).status_code for turn in turns] == [200] * 5

    assert counting.asked == 0
    assert backend.in_flight("alice") == 0


def test_the_defaults_cap_three_in_flight_and_ask_the_ledger_once(
    start_chat: ChatFactory, backend: Backend
) -> None:
    """Unset, the caps are 3 in flight and 30 a minute: one look at the minute's requests per
    request."""
    counting = CountingStarts(backend.store)
    chat = start_chat(counting)
    chat.seed("alice")
    with ThreadPoolExecutor(4) as pool:
        turns = [in_background(pool, chat, "alice", f"t-{n}") for n in range(4)]
        chat.model.wait_for(3)
        [refused] = ended(turns, 1)
        chat.model.gate.set()
        statuses = sorted(turn.result(SAFETY_SECONDS).status_code for turn in turns)

    rate_limited(refused, "turns_in_flight", 2)
    assert statuses == [200, 200, 200, 429]
    assert counting.asked == 4
