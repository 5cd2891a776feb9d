"""A bounded soak of the local runtime over loopback, with store and model faults injected.

Several users, each a thread acting as one browser page: it signs up through the Appwrite
surface, follows its turn and account rows over the Realtime WebSocket as the page does, and does
a random mix of streamed turns (an asynchronous execution, followed to its end; a Stop at a random
moment now and then), top-up packs and plans bought on the local checkout page, renewals from the
local portal, and usage reads. The cron function runs all along; every few runs its clock moves
on a month, so the Demo users are reset by it.

The faults sit between the functions and the store (``FaultyStore`` around the runtime's
publishing store): a lost answer is a write that happened, and Realtime published it, as on
Appwrite, where the row change is published by the database and not by the function.

It stops at whichever comes first of its action count and its time limit; then the faults stop,
a last cron run reclaims what crashed requests held, and the end checks run: for every user the
counter equals the settled ledger and nothing is held; no execution answered a 5xx that no
injected fault explains and no HTTP answer of the runtime was a 5xx; every turn is final, and its
final state reached its own user's Realtime connection, and nobody else's.
"""

from __future__ import annotations

import json
import random
import socket
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, cast

import requests
from metering.adapters.appwrite_store import AppwriteStore
from metering.ports import UsageStore
from metering.turns import TurnStatus
from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, CloseConnection, Request, TextMessage
from wsproto.utilities import LocalProtocolError, RemoteProtocolError

from localruntime.functions import ExecutionRecord
from localruntime.loader import bootstrap_of
from localruntime.server import CRON_FUNCTION, Runtime
from localruntime.settings import LOCAL_STRIPE_KEY, RuntimeSettings
from tests.support.appwrite_emulator import AppwriteEmulator
from tests.support.appwrite_http_bridge import served
from tests.support.faults import Faults, FaultyModel, FaultyStore
from tests.support.runtime import PROJECT, AppwriteHttp
from tests.support.waiting import wait_until
from tools.schema import load_schema

FINAL = {status.value for status in TurnStatus if status.final}
DATABASE = "koffers_db"
# The cron's smallest reservation TTL: the last run's clock is this far ahead, so that it
# reclaims every reservation still held once nothing is in flight.
MIN_RESERVATION_TTL = timedelta(seconds=60)
# A Demo reset moves the cron's clock this far on: always into a later calendar month.
CRON_MONTH = timedelta(days=31)
# How long a page follows one turn before it gives up on it (its row is checked at the end).
TURN_FOLLOW_SECONDS = 30.0
EXECUTION_POLL_SECONDS = 0.4
STOP_ATTEMPTS = 3
END_WAIT_SECONDS = 20.0
QUESTIONS = (
    "Request {rid}: write me a short note about the weather in spring.",
    "Request {rid}: how many tokens do I have left this month?",
    "Request {rid}: summarise what a metered chat does in a few sentences, please.",
    "Request {rid}: what is my usage so far?",
    "Request {rid}: give me three ideas for a weekend trip with friends and family.",
)


@dataclass(frozen=True)
class SoakPlan:
    users: int
    actions_per_user: int  # the count limit
    seconds: float  # the time limit
    seed: int = 20240601
    store_fault_rate: float = 0.02
    model_fault_rate: float = 0.1
    stop_rate: float = 0.3
    cron_interval_seconds: float = 0.5
    demo_reset_every: int = 4  # cron runs
    tokens_per_second: float = 400.0  # the offline model's pace
    # What each action is chosen by: turns most, purchases and renewals now and then.
    weights: Mapping[str, float] = field(
        default_factory=lambda: {
            "turn": 0.6,
            "pack": 0.08,
            "plan": 0.07,
            "renew": 0.1,
            "usage": 0.15,
        }
    )

    @classmethod
    def short(cls, seed: int | None = None) -> SoakPlan:
        """The form ``make test`` runs: a few users, two dozen actions each, 40 s at the most."""
        return cls(users=6, actions_per_user=24, seconds=40.0, **_seed(seed))

    @classmethod
    def long(cls, seconds: float, seed: int | None = None) -> SoakPlan:
        """Time-limited: as many actions as ``seconds`` allow."""
        return cls(users=8, actions_per_user=1_000_000, seconds=seconds, **_seed(seed))


def _seed(seed: int | None) -> dict[str, int]:
    return {} if seed is None else {"seed": seed}


class CronClock:
    """The cron function's clock: the real one, moved on by whole Demo months."""

    def __init__(self) -> None:
        self.ahead = timedelta(0)

    def now(self) -> datetime:
        return datetime.now(UTC) + self.ahead


@dataclass
class Rig:
    runtime: Runtime
    faults: Faults
    cron_clock: CronClock
    # What the functions use (faults injected), and the store behind it that the checks read.
    faulty: FaultyStore
    store: UsageStore


@contextmanager
def emulated_store() -> Iterator[UsageStore]:
    """An ``AppwriteStore`` on the TablesDB emulation served over loopback HTTP, so that every
    function's store call is a real request, made concurrently, as on Appwrite."""
    with served(lambda endpoint: AppwriteEmulator(load_schema(), endpoint=endpoint)) as emulator:
        yield AppwriteStore.connect(emulator.store_settings(), emulator.api_key)


@contextmanager
def soak_runtime(data_dir: Path, plan: SoakPlan, store: UsageStore | None = None) -> Iterator[Rig]:
    """A started runtime on loopback with the faulty model, every function warm and wired to
    the faulty store (over ``store``, by default the runtime's SQLite), the cron to its own
    clock; faults stay off until the soak turns them on."""
    faults = Faults(plan.seed, store_rate=plan.store_fault_rate, model_rate=plan.model_fault_rate)
    environ = {
        "HOST": "127.0.0.1",
        "PORT": "0",
        "DATA_DIR": str(data_dir),
        "RUN_CRON": "false",
        # A Stop is noticed within one interval; the turns are short.
        "CHAT_PROGRESS_INTERVAL_SECONDS": "0.05",
        "CHAT_STOP_WAIT_SECONDS": "5",
        # One page runs one turn at a time; the soak's pace would pass a per-minute cap at once.
        "CHAT_MAX_REQUESTS_PER_MINUTE": "0",
        "CHAT_MAX_TURNS_IN_FLIGHT": "3",
    }
    model = FaultyModel(faults, plan.tokens_per_second)
    runtime = Runtime(RuntimeSettings.read(environ), environ=environ, store=store, model=model)
    runtime.start()
    try:
        published = cast("UsageStore", runtime.store)
        rig = Rig(runtime, faults, CronClock(), FaultyStore(published, faults), published)
        for spec in runtime.specs.values():
            # Loaded once as the runtime wires it, then configured again for the next cold start
            # (no cold reset follows before the runtime stops).
            runtime.runner.main_of(spec)
            _configure(rig, spec.id)
        yield rig
    finally:
        runtime.stop()


def _configure(rig: Rig, function_id: str, *, reclaim_all: bool = False) -> None:
    environ = dict(rig.runtime.function_environment())
    overrides: dict[str, Any] = {"store": rig.faulty}
    if function_id == CRON_FUNCTION:
        clock = rig.cron_clock
        # Reclaimed: holds untouched for a minute of real time, however far the clock moved.
        ttl = clock.ahead + MIN_RESERVATION_TTL
        environ["CRON_RESERVATION_TTL_SECONDS"] = str(int(ttl.total_seconds()))
        overrides["clock"] = clock.now
        if reclaim_all:
            # A clock a little more than the TTL ahead of every hold still in place.
            now = datetime.now(UTC) + clock.ahead + MIN_RESERVATION_TTL + timedelta(seconds=1)
            overrides["clock"] = lambda: max(now, clock.now())
    bootstrap_of(function_id).configure(environ, **overrides)
    rig.runtime.runner.main_of(rig.runtime.specs[function_id])


# -- what the soak saw ---------------------------------------------------------------------------


@dataclass
class SoakReport:
    seed: int
    users: int = 0
    requests: int = 0
    turns: int = 0
    turn_outcomes: Counter[str] = field(default_factory=Counter)
    stops: int = 0
    purchases: int = 0
    renewals: int = 0
    # Answers other than a success, by what answered and how (429s, 409s, attributed 5xx).
    declined: Counter[str] = field(default_factory=Counter)
    cron_runs: int = 0
    demo_resets: int = 0
    reclaimed: int = 0
    faults: Counter[str] = field(default_factory=Counter)
    attributed_5xx: int = 0
    unattributed_5xx: int = 0
    executions: int = 0
    realtime_finals: int = 0
    drift: int = 0
    held: int = 0
    seconds: float = 0.0
    problems: list[str] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, name: str, amount: int = 1) -> None:
        with self._lock:
            setattr(self, name, getattr(self, name) + amount)

    def count(self, name: str, key: str) -> None:
        with self._lock:
            getattr(self, name)[key] += 1

    def problem(self, text: str) -> None:
        with self._lock:
            self.problems.append(text)

    def summary(self) -> str:
        faults = " ".join(f"{kind}={n}" for kind, n in sorted(self.faults.items())) or "none"
        outcomes = " ".join(f"{k}={n}" for k, n in sorted(self.turn_outcomes.items()))
        declined = " ".join(f"{k}={n}" for k, n in sorted(self.declined.items())) or "none"
        return (
            f"soak seed={self.seed}: {self.users} users, {self.requests} requests, "
            f"{self.executions} executions, {self.turns} turns ({outcomes}), {self.stops} stops, "
            f"{self.purchases} purchases, {self.renewals} renewals, {self.demo_resets} demo "
            f"resets in {self.cron_runs} cron runs, {self.reclaimed} reservations reclaimed; "
            f"other answers: {declined}; faults injected: {faults} ({sum(self.faults.values())}); "
            f"5xx: {self.attributed_5xx} attributed to injected faults, "
            f"{self.unattributed_5xx} not; "
            f"final drift {self.drift} tokens, held {self.held}; {self.realtime_finals}/"
            f"{self.turn_outcomes.total()} turns' final state received on Realtime; "
            f"{len(self.problems)} problems; {self.seconds:.1f} s"
        )


class ExecutionWatch:
    """Every execution the runtime ran (the runtime keeps its last thousand): polled while the
    soak runs, so that none is missed, and kept once it has ended."""

    def __init__(self, runtime: Runtime) -> None:
        self._runtime = runtime
        self.ended: dict[str, ExecutionRecord] = {}
        self.running: set[str] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, name="soak-watch", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        self.sweep()

    def sweep(self) -> None:
        for function_id in self._runtime.specs:
            for record in self._runtime.executions.of_function(function_id):
                execution_id = record.invocation.execution_id
                if record.status in ("completed", "failed") and record.outcome is not None:
                    self.ended[execution_id] = record
                    self.running.discard(execution_id)
                elif execution_id not in self.ended:
                    self.running.add(execution_id)

    def busy(self) -> bool:
        self.sweep()
        return bool(self.running)

    def _poll(self) -> None:
        while not self._stop.wait(0.2):
            self.sweep()


class RealtimePage:
    """The page's Realtime connection: subscribed to its user's turn and account rows, it keeps
    every turn row it receives."""

    def __init__(self, port: int, cookie: str) -> None:
        self._sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self._ws = WSConnection(ConnectionType.CLIENT)
        target = f"/v1/realtime?project={PROJECT}"
        headers = [(b"cookie", cookie.encode())]
        self._sock.sendall(self._ws.send(Request("127.0.0.1", target, extra_headers=headers)))
        self._pending: list[dict[str, Any]] = []
        self._lock = threading.Condition()
        self.rows: dict[str, list[dict[str, Any]]] = {}
        self.accounts = 0
        self.user_id: str | None = None
        self._accepted = False
        while not self._accepted or not self._pending:
            self._pump()
        connected = self._pending.pop(0)
        if connected.get("type") != "connected" or connected["data"]["user"] is None:
            raise AssertionError(f"realtime did not connect the user: {connected}")
        self.user_id = str(connected["data"]["user"]["$id"])
        channels = [
            f"tablesdb.{DATABASE}.tables.{table}.rows" for table in ("turns", "subscriptions")
        ]
        subscribe = {"subscriptionId": "page", "channels": channels}
        self._sock.sendall(
            self._ws.send(TextMessage(json.dumps({"type": "subscribe", "data": [subscribe]})))
        )
        while not self._pending:
            self._pump()
        answer = self._pending.pop(0)
        if answer.get("type") != "response" or not answer["data"].get("success"):
            raise AssertionError(f"realtime refused the subscription: {answer}")
        self._sock.settimeout(None)
        self._thread = threading.Thread(target=self._read, name="soak-realtime", daemon=True)
        self._thread.start()

    def _pump(self) -> bool:
        data = self._sock.recv(65536)
        self._ws.receive_data(data or None)
        for event in self._ws.events():
            if isinstance(event, AcceptConnection):
                self._accepted = True
            elif isinstance(event, TextMessage):
                self._pending.append(json.loads(event.data))
            elif isinstance(event, CloseConnection):
                return False
        return bool(data)

    def _read(self) -> None:
        try:
            while self._pump():
                for message in self._pending:
                    self._take(message)
                self._pending.clear()
        except (OSError, LocalProtocolError, RemoteProtocolError):
            return  # closed: the soak is over, or the runtime stopped

    def _take(self, message: dict[str, Any]) -> None:
        if message.get("type") != "event":
            return
        payload = message["data"]["payload"]
        with self._lock:
            if payload.get("$tableId") == "turns":
                self.rows.setdefault(str(payload["requestId"]), []).append(payload)
            else:
                self.accounts += 1
            self._lock.notify_all()

    def final_row(self, request_id: str, wait: float = 0.0) -> dict[str, Any] | None:
        """The last final row received of the turn (the events of two writers may cross),
        waiting up to ``wait`` seconds for one."""
        deadline = time.monotonic() + wait
        with self._lock:
            while True:
                rows = self.rows.get(request_id, [])
                finals = [row for row in rows if row["status"] in FINAL]
                remaining = deadline - time.monotonic()
                if finals or remaining <= 0:
                    return finals[-1] if finals else None
                self._lock.wait(remaining)

    def close(self) -> None:
        with suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)
        self._sock.close()
        self._thread.join(timeout=5)


# -- one user's page -----------------------------------------------------------------------------


class SoakUser:
    def __init__(self, soak: Soak, index: int) -> None:
        self.soak = soak
        self.rng = random.Random(soak.plan.seed * 1000 + index)
        self.http = AppwriteHttp(soak.runtime.base_url)
        self.email = f"soak-{index}-{uuid.uuid4().hex[:8]}@example.test"
        self.user_id = ""
        self.page: RealtimePage | None = None
        self.turns: list[str] = []
        self.thread = threading.Thread(target=self.run, name=f"soak-user-{index}", daemon=True)

    @property
    def report(self) -> SoakReport:
        return self.soak.report

    def run(self) -> None:
        try:
            self.user_id = self.http.sign_up_and_log_in(self.email)
            self.report.add("requests", 2)
            cookie = "; ".join(f"{c.name}={c.value}" for c in self.http.http.cookies)
            self.page = RealtimePage(self.soak.runtime.port, cookie)
            # A new user is on Demo, too small for any reply: most buy a pack or a plan first.
            if self.rng.random() < 0.8:
                self.buy("pack")
            if self.rng.random() < 0.5:
                self.buy("plan")
            actions, weights = zip(*self.soak.plan.weights.items(), strict=True)
            for _ in range(self.soak.plan.actions_per_user):
                if self.soak.done.is_set():
                    break
                action = self.rng.choices(actions, weights)[0]
                if action == "turn":
                    self.turn()
                elif action in ("pack", "plan"):
                    self.buy(action)
                elif action == "renew":
                    self.renew()
                else:
                    self.execute("usage", "GET", "/")
        except Exception as error:  # a crash of the driver is a finding too
            self.report.problem(f"user {self.email}: {type(error).__name__}: {error}")

    # -- HTTP, counted -------------------------------------------------------------------------

    def call(self, method: str, path: str, body: Any = None) -> requests.Response:
        response = self.http.call(method, path, body)
        self._seen(response, f"{method} /v1{path}")
        return response

    def press(self, url: str, form: Mapping[str, str] | None = None) -> requests.Response:
        """A button of a local Stripe page (a form POST)."""
        response = requests.post(url, data=form, allow_redirects=False, timeout=60)
        self._seen(response, f"POST {url}")
        return response

    def _seen(self, response: requests.Response, what: str) -> None:
        self.report.add("requests")
        if response.status_code >= 500:
            self.report.problem(f"{what} answered HTTP {response.status_code}")

    def execute(
        self, function_id: str, method: str, path: str, body: Any = None, *, run_async: bool = False
    ) -> dict[str, Any] | None:
        """An execution as the Web SDK creates one; its document, or None when refused."""
        response = self.call(
            "POST",
            f"/functions/{function_id}/executions",
            {
                "body": "" if body is None else json.dumps(body),
                "async": run_async,
                "path": path,
                "method": method,
                "headers": {"content-type": "application/json"},
            },
        )
        if response.status_code not in (201, 202):
            self.report.problem(f"execution of {function_id} {path}: HTTP {response.status_code}")
            return None
        document: dict[str, Any] = response.json()
        return document

    @staticmethod
    def answer(document: Mapping[str, Any]) -> tuple[int, Any]:
        try:
            body = json.loads(document["responseBody"] or "null")
        except ValueError:
            body = None
        return int(document["responseStatusCode"]), body

    # -- actions -------------------------------------------------------------------------------

    def turn(self) -> None:
        request_id = f"soak-{uuid.uuid4().hex[:16]}"
        text = self.rng.choice(QUESTIONS).format(rid=request_id)
        body = {"messages": [{"role": "user", "content": text}], "requestId": request_id}
        started = time.monotonic()
        document = self.execute("chat", "POST", "/", body, run_async=True)
        if document is None:
            return
        self.turns.append(request_id)
        self.report.add("turns")
        stop_at = (
            started + self.rng.uniform(0.0, 0.8)
            if self.rng.random() < self.soak.plan.stop_rate
            else None
        )
        stops_left = STOP_ATTEMPTS
        next_poll = started + EXECUTION_POLL_SECONDS
        assert self.page is not None
        while time.monotonic() - started < TURN_FOLLOW_SECONDS:
            if self.page.final_row(request_id, wait=0.05) is not None:
                return
            now = time.monotonic()
            if stop_at is not None and now >= stop_at:
                stop_at = None
                if not self.stop(request_id) and stops_left > 1:
                    # Not started yet (404): the page asks again a moment later.
                    stops_left -= 1
                    stop_at = now + 0.3
            if now >= next_poll:
                next_poll = now + EXECUTION_POLL_SECONDS
                ended = self.outcome(str(document["$id"]))
                if ended is not None and ended[0] >= 300:
                    # Refused (nothing written) or failed: a row it left is checked at the end.
                    key = "429" if ended[0] == 429 else str(ended[0])
                    code = (
                        ended[1].get("error", {}).get("code")
                        if isinstance(ended[1], dict)
                        else None
                    )
                    self.report.count("declined", f"chat {key} {code}")
                    return

    def outcome(self, execution_id: str) -> tuple[int, Any] | None:
        response = self.call("GET", f"/functions/chat/executions/{execution_id}")
        if response.status_code != 200:
            self.report.problem(f"GET execution {execution_id}: HTTP {response.status_code}")
            return None
        document = response.json()
        if document["status"] not in ("completed", "failed"):
            return None
        return self.answer(document)

    def stop(self, request_id: str) -> bool:
        """Stop the turn; False when it is not there yet (the page asks again)."""
        document = self.execute("chat", "POST", f"/turns/{request_id}/stop", {})
        if document is None:
            return True
        status, _ = self.answer(document)
        if status == 200:
            self.report.add("stops")
        return status != 404

    def buy(self, kind: str) -> None:
        if kind == "pack":
            purchase = {"topup": self.rng.choice(("topup_25k", "topup_100k"))}
        else:
            purchase = {"plan": self.rng.choice(("starter", "pro", "business"))}
        document = self.execute("billing", "POST", "/checkout", purchase)
        if document is None:
            return
        status, body = self.answer(document)
        if status != 200:
            self.report.count("declined", f"checkout {status}")
            return
        url = str(body["url"])
        if "/portal/" in url:
            # A subscriber asking for another plan is sent to the portal's plan change.
            paid = self.press(url + "/plan", purchase)
        else:
            paid = self.press(url + "/pay")
        if paid.status_code == 303:
            self.report.add("purchases")
        elif "/portal/" in url and paid.status_code == 400 and self.has_undelivered_event():
            # An injected fault failed an earlier event's delivery (the local Stripe does not
            # retry it), so the account still shows the plan Stripe already moved away from
            # and the portal refuses a change to the plan the subscription is on.
            self.report.count("declined", "portal 400 behind an undelivered event")
        else:
            self.report.problem(f"{url}: paying answered {paid.status_code}")

    def has_undelivered_event(self) -> bool:
        """Whether the local Stripe holds an event about this user its webhook did not take."""
        params = {"delivery_success": "false", "limit": "100"}
        while True:
            answer = requests.get(
                f"{self.soak.runtime.stripe_base_url}/v1/events",
                params=params,
                headers={"Authorization": f"Bearer {LOCAL_STRIPE_KEY}"},
                timeout=30,
            )
            answer.raise_for_status()
            page = answer.json()
            events = page["data"]
            if any(self.user_id in json.dumps(event["data"]["object"]) for event in events):
                return True
            if not page["has_more"] or not events:
                return False
            params["starting_after"] = events[-1]["id"]

    def renew(self) -> None:
        document = self.execute("billing", "POST", "/portal", {})
        if document is None:
            return
        status, body = self.answer(document)
        if status != 200:
            self.report.count("declined", f"portal {status}")
            return
        renewed = self.press(str(body["url"]) + "/renew")
        if renewed.status_code == 303:
            self.report.add("renewals")
        else:
            # 409: the customer has no running subscription (a pack buyer).
            self.report.count("declined", f"renew {renewed.status_code}")


# -- the soak ------------------------------------------------------------------------------------


class Soak:
    def __init__(self, rig: Rig, plan: SoakPlan) -> None:
        self.rig = rig
        self.runtime = rig.runtime
        self.plan = plan
        self.report = SoakReport(plan.seed, users=plan.users)
        self.done = threading.Event()
        self.watch = ExecutionWatch(rig.runtime)
        self._cron_stop = threading.Event()

    def run(self) -> SoakReport:
        started = time.monotonic()
        users = [SoakUser(self, index) for index in range(self.plan.users)]
        cron = threading.Thread(target=self._cron_loop, name="soak-cron", daemon=True)
        self.watch.start()
        self.rig.faults.enabled = True
        cron.start()
        for user in users:
            user.thread.start()
        deadline = started + self.plan.seconds
        for user in users:
            user.thread.join(max(0.0, deadline - time.monotonic()))
        # The time limit: every page ends the action it is in, then stops.
        self.done.set()
        for user in users:
            user.thread.join(TURN_FOLLOW_SECONDS + 30)
            if user.thread.is_alive():
                self.report.problem(f"user {user.email} did not finish its last action")
        self._cron_stop.set()
        cron.join(60)
        try:
            wait_until(lambda: not self.watch.busy(), 60, what="every execution to end")
        except AssertionError as error:
            self.report.problem(str(error))
        self.rig.faults.enabled = False
        self._last_cron()
        self.watch.stop()
        self._check(users)
        for user in users:
            if user.page is not None:
                user.page.close()
            user.http.http.close()
        self.report.seconds = time.monotonic() - started
        return self.report

    # -- the cron ------------------------------------------------------------------------------

    def _cron_loop(self) -> None:
        runs = 0
        while not self._cron_stop.wait(self.plan.cron_interval_seconds):
            runs += 1
            if runs % self.plan.demo_reset_every == 0:
                self.rig.cron_clock.ahead += CRON_MONTH
                _configure(self.rig, CRON_FUNCTION)
            self._run_cron()

    def _run_cron(self) -> dict[str, Any] | None:
        outcome = self.runtime.api.run_scheduled(CRON_FUNCTION)
        self.report.add("cron_runs")
        if outcome.status_code != 200:
            return None  # a 5xx is judged with every other execution
        summary: dict[str, Any] = json.loads(outcome.body)
        self.report.add("demo_resets", int(summary.get("demoResets", 0)))
        self.report.add("reclaimed", int(summary.get("reservations", {}).get("reclaimed", 0)))
        return summary

    def _last_cron(self) -> None:
        _configure(self.rig, CRON_FUNCTION, reclaim_all=True)
        summary = self._run_cron()
        if summary is None:
            self.report.problem("the last cron run failed with the faults off")
        elif not summary.get("complete", False):
            self.report.problem(f"the last cron run did not complete: {summary}")

    # -- the end checks ------------------------------------------------------------------------

    def _check(self, users: list[SoakUser]) -> None:
        report = self.report
        report.faults = self.rig.faults.by_kind()
        self._check_executions()
        store = self.rig.store
        for user in users:
            if not user.user_id:
                continue
            account = store.get_account(user.user_id)
            if account is None:
                continue
            total = store.ledger_total(user.user_id, account.period_start)
            if account.current_tokens_used != total:
                report.drift += abs(account.current_tokens_used - total)
                report.problem(
                    f"user {user.user_id}: counter {account.current_tokens_used} != ledger {total}"
                )
        held = store.list_stale_reservations(datetime.now(UTC) + timedelta(days=3650), 1000, None)
        for entry in held.items:
            report.held += entry.held_tokens
            report.problem(
                f"request {entry.request_id} is still reserved ({entry.held_tokens} held)"
            )
        self._check_turns(users)

    def _check_executions(self) -> None:
        report = self.report
        faults = self.rig.faults
        report.executions = len(self.watch.ended)
        for execution_id, record in self.watch.ended.items():
            outcome = record.outcome
            assert outcome is not None
            if outcome.timed_out:
                report.problem(
                    f"execution {execution_id} of {record.invocation.function_id} timed out"
                )
                continue
            if outcome.status_code < 500:
                continue
            invocation = record.invocation
            fault = faults.explains(execution_id, _request_id_of(invocation.body))
            if fault is not None:
                report.attributed_5xx += 1
                continue
            report.unattributed_5xx += 1
            report.problem(
                f"execution {execution_id} of {invocation.function_id} {invocation.method} "
                f"{invocation.path} answered {outcome.status_code} with no injected fault: "
                f"{'; '.join(outcome.errors)[:300]}"
            )

    def _check_turns(self, users: list[SoakUser]) -> None:
        report = self.report
        store = self.rig.store

        def settled() -> bool:
            for user in users:
                for request_id in user.turns:
                    turn = store.get_turn(request_id)
                    if turn is None:
                        continue
                    page = user.page
                    if not turn.status.final or page is None or page.final_row(request_id) is None:
                        return False
            return True

        # Each turn that is not is named below.
        with suppress(AssertionError):
            wait_until(settled, END_WAIT_SECONDS, what="every turn's final state on its page")
        owners = {request_id: user for user in users for request_id in user.turns}
        for user in users:
            page = user.page
            for request_id in user.turns:
                turn = store.get_turn(request_id)
                if turn is None:
                    report.turn_outcomes["never written"] += 1
                    continue
                report.turn_outcomes[turn.status.value] += 1
                if not turn.status.final:
                    report.problem(f"turn {request_id} ended {turn.status.value}, not final")
                    continue
                row = None if page is None else page.final_row(request_id)
                if row is None:
                    report.problem(
                        f"turn {request_id} ({turn.status.value}): no final row on Realtime"
                    )
                elif (row["status"], row["content"] or "") != (turn.status.value, turn.content):
                    report.problem(
                        f"turn {request_id}: the final row received says {row['status']} "
                        f"{row['content']!r}, the store {turn.status.value} {turn.content!r}"
                    )
                else:
                    report.realtime_finals += 1
            for request_id in [] if page is None else list(page.rows):
                owner = owners.get(request_id)
                if owner is not user:
                    report.problem(f"user {user.user_id} received the turn {request_id} of another")


def _request_id_of(body: bytes) -> str | None:
    try:
        document = json.loads(body or b"null")
    except ValueError:
        return None
    request_id = document.get("requestId") if isinstance(document, dict) else None
    return request_id if isinstance(request_id, str) else None


def run_soak(rig: Rig, plan: SoakPlan) -> SoakReport:
    return Soak(rig, plan).run()
