"""Overshoot and lost updates when 8, 32 or 128 requests of one user near the limit are in flight,
through the local runtime's HTTP surface, on SQLite and on the TablesDB emulation over HTTP.

Each row is one round: a fresh user a few thousand tokens below the limit sends N requests at
once, as N browsers would (Appwrite's execution API, session cookie). Ours is the chat function
(synchronous, or a streamed turn: an asynchronous execution with a ``requestId``, followed until
it ends); the seed is its read-then-write flow served as a function by the same runtime, on the
same store and the same offline model.
"""

from __future__ import annotations

import json
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import requests
from metering.account import new_account
from metering.adapters.appwrite_store import AppwriteStore
from metering.plans import load_default_plans
from metering.ports import UsageStore

from benchmarks.common import Table, ratio
from benchmarks.seed import write_seed_function
from localruntime.functions import FunctionSpec, discover
from localruntime.loader import ROOT
from localruntime.server import Runtime
from localruntime.settings import RuntimeSettings
from tests.support.appwrite_emulator import AppwriteEmulator
from tests.support.appwrite_http_bridge import served
from tests.support.runtime import AppwriteHttp
from tools.schema import load_schema

SIZES = (8, 32, 128)
# Room left per request in flight: below what a request of the seed charges here (about 125), so
# that the seed's answers together would pass the limit at every size.
HEADROOM_PER_REQUEST = 100
# Fast enough to keep a round short, slow enough that the requests of a round overlap.
TOKENS_PER_SECOND = 2_000.0
QUESTION = "Summarise what I spent on groceries this week, in a few sentences."
SEED_FUNCTION = "seed-chat"
# The per-user caps off, so that the hard cap is what the rounds measure; one row keeps them.
NO_CAPS = {"CHAT_MAX_TURNS_IN_FLIGHT": "0", "CHAT_MAX_REQUESTS_PER_MINUTE": "0"}
DEFAULT_CAPS_ROW = "ours, default caps (3 in flight, 30/min)"
# The row with the default caps has room for every request, so that its 429s are the caps'.
CAPS_ROOM = 40_000
OURS_SYNC = "ours, synchronous"
OURS_STREAMED = "ours, streamed turns"
SEED = "seed (read-then-write)"
FLOWS = (OURS_SYNC, OURS_STREAMED, SEED)
# How often a streamed turn's execution is looked up while it runs.
POLL_SECONDS = 0.05


@dataclass(frozen=True)
class Outcome:
    """One round: ``requests`` requests of one user released together."""

    backend: str
    flow: str
    requests: int
    served: int
    refused: Counter[str]  # 429s by error code
    errors: Counter[str]  # other answers, by status and code ("transport" when none came)
    limit: int
    start: int  # the counter before the round
    charged: int  # what the served answers report they charged
    overshoot: int  # tokens served past the limit: start + every reported charge - limit
    counter_past_limit: int
    lost_updates: int  # charges the answers report minus what the counter gained
    ledger_drift: int | None  # counter growth minus the ledger's total (ours only)
    seconds: float

    @property
    def refused_total(self) -> int:
        return sum(self.refused.values())

    @property
    def per_second(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0


@dataclass(frozen=True)
class _Answer:
    status: int
    code: str | None  # the error code of a 4xx
    charged: int


@dataclass
class _Target:
    """A started runtime and the store it meters on."""

    backend: str
    runtime: Runtime
    store: UsageStore


def _environ(data_dir: Path, caps: Mapping[str, str]) -> dict[str, str]:
    return {
        "HOST": "127.0.0.1",
        "PORT": "0",
        "DATA_DIR": str(data_dir),
        "RUN_CRON": "false",
        "OFFLINE_MODEL_TOKENS_PER_SECOND": str(TOKENS_PER_SECOND),
        # 128 executions share two cores: the platform's 30 s would time the last ones out.
        "EXECUTION_TIMEOUT_SECONDS": "300",
        **caps,
    }


@contextmanager
def _runtime(
    folder: Path,
    backend: str,
    caps: Mapping[str, str],
    store: UsageStore | None,
    seed_target: Callable[[Path], Mapping[str, str]],
) -> Iterator[_Target]:
    """The runtime serving the chat and the seed's flow, on ``store`` (default: its SQLite)."""
    environ = _environ(folder / "data", caps)
    chat = discover(ROOT, ROOT / "functions")["chat"]
    seed_folder = write_seed_function(
        folder / "functions", SEED_FUNCTION, seed_target(folder / "data")
    )
    specs = {"chat": chat, SEED_FUNCTION: FunctionSpec(SEED_FUNCTION, seed_folder)}
    runtime = Runtime(RuntimeSettings.read(environ), functions=specs, environ=environ, store=store)
    runtime.start()
    try:
        for spec in runtime.specs.values():  # cold starts are not what a round measures
            runtime.runner.main_of(spec)
        yield _Target(backend, runtime, runtime.store)
    finally:
        runtime.stop()


@contextmanager
def _sqlite(folder: Path, caps: Mapping[str, str]) -> Iterator[_Target]:
    def seed_target(data_dir: Path) -> dict[str, str]:
        return {"sqlite": str(data_dir / "metering.sqlite3")}

    with _runtime(folder, "SQLite", caps, None, seed_target) as target:
        yield target


@contextmanager
def _appwrite(folder: Path, caps: Mapping[str, str]) -> Iterator[_Target]:
    """The TablesDB emulation served on a loopback port, so that the runtime, the functions and
    this benchmark all speak real HTTP (nothing intercepts the process's requests)."""
    with served(lambda endpoint: AppwriteEmulator(load_schema(), endpoint=endpoint)) as emulator:
        settings = emulator.store_settings()
        store = AppwriteStore.connect(settings, emulator.api_key)

        def seed_target(_: Path) -> dict[str, str]:
            return {
                "endpoint": settings.appwrite_endpoint,
                "project": settings.appwrite_project_id,
                "key": emulator.api_key,
                "database": settings.database_id,
                "table": settings.subscriptions_table,
            }

        with _runtime(folder, "Appwrite emulator (HTTP)", caps, store, seed_target) as target:
            yield target


def _user(target: _Target, headroom: int) -> tuple[AppwriteHttp, str, int]:
    """A signed-up, logged-in user ``headroom`` tokens below the Starter limit."""
    client = AppwriteHttp(target.runtime.base_url)
    user_id = client.sign_up_and_log_in(f"bench-{uuid.uuid4().hex[:12]}@example.test")
    account = new_account(user_id, load_default_plans().get("starter"), datetime.now(UTC))
    start = account.limit - headroom
    target.store.create_account(replace(account, current_tokens_used=start))
    return client, user_id, start


def _answer(execution: Mapping[str, Any]) -> _Answer:
    status = int(execution.get("responseStatusCode") or 0)
    try:
        body = json.loads(execution.get("responseBody") or "null")
    except ValueError:
        body = None
    if status == 200 and isinstance(body, dict):
        return _Answer(200, None, int(body["message"]["usage"]["totalTokens"]))
    code = body.get("error", {}).get("code") if isinstance(body, dict) else None
    return _Answer(status, code, 0)


def _send(client: AppwriteHttp, function_id: str, index: int, streamed: bool) -> _Answer:
    """One request as the page sends it; a streamed turn is followed until its execution ends."""
    body: dict[str, Any] = {"messages": [{"role": "user", "content": f"{QUESTION} ({index})"}]}
    if streamed:
        body["requestId"] = f"turn-{uuid.uuid4().hex[:16]}"
    params: dict[str, Any] = {
        "body": json.dumps(body),
        "async": streamed,
        "path": "/",
        "method": "POST",
    }
    response = client.http.post(
        f"{client.endpoint}/functions/{function_id}/executions", json=params, timeout=600
    )
    response.raise_for_status()
    execution: dict[str, Any] = response.json()
    while execution["status"] in ("waiting", "processing"):
        time.sleep(POLL_SECONDS)
        polled = client.http.get(
            f"{client.endpoint}/functions/{function_id}/executions/{execution['$id']}",
            timeout=60,
        )
        polled.raise_for_status()
        execution = polled.json()
    return _answer(execution)


def _cookie_client(client: AppwriteHttp) -> Callable[[], AppwriteHttp]:
    """A fresh HTTP session per request with the user's cookie: N browsers of one user."""
    cookie = {name: value or "" for name, value in client.http.cookies.get_dict().items()}

    def fresh() -> AppwriteHttp:
        other = AppwriteHttp(client.endpoint.removesuffix("/v1"))
        other.http.cookies.update(cookie)
        return other

    return fresh


def _round(target: _Target, flow: str, requests_at_once: int, room: int | None = None) -> Outcome:
    room = HEADROOM_PER_REQUEST * requests_at_once if room is None else room
    client, user_id, start = _user(target, room)
    limit = start + room
    function_id = SEED_FUNCTION if flow == SEED else "chat"
    streamed = flow == OURS_STREAMED
    fresh = _cookie_client(client)
    barrier = threading.Barrier(requests_at_once)

    def one(index: int) -> _Answer | None:
        browser = fresh()
        barrier.wait()
        try:
            return _send(browser, function_id, index, streamed)
        except requests.RequestException:
            return None
        finally:
            browser.http.close()

    began = time.perf_counter()
    with ThreadPoolExecutor(requests_at_once) as pool:
        answers = list(pool.map(one, range(requests_at_once)))
    seconds = time.perf_counter() - began
    account = target.store.get_account(user_id)
    assert account is not None
    final = account.current_tokens_used
    served_answers = [a for a in answers if a is not None and a.status == 200]
    charged = sum(a.charged for a in served_answers)
    refused = Counter(str(a.code) for a in answers if a is not None and a.status == 429)
    errors = Counter(
        "transport" if a is None else f"{a.status} {a.code}"
        for a in answers
        if a is None or a.status not in (200, 429)
    )
    drift = None
    if flow != SEED:
        # The starting counter predates the ledger; everything since must be in it.
        drift = final - start - target.store.ledger_total(user_id, account.period_start)
    return Outcome(
        backend=target.backend,
        flow=flow,
        requests=requests_at_once,
        served=len(served_answers),
        refused=refused,
        errors=errors,
        limit=limit,
        start=start,
        charged=charged,
        overshoot=max(0, start + charged - limit),
        counter_past_limit=max(0, final - limit),
        lost_updates=charged - (final - start),
        ledger_drift=drift,
        seconds=seconds,
    )


Opener = Callable[[Path, Mapping[str, str]], Any]
BACKENDS: tuple[tuple[str, Opener], ...] = (("SQLite", _sqlite), ("Appwrite", _appwrite))


def measure(
    sizes: tuple[int, ...] = SIZES,
    *,
    flows: tuple[str, ...] = FLOWS,
    default_caps_size: int | None = 32,
) -> list[Outcome]:
    """Every flow at every size on both stores, then (when ``default_caps_size``) one round of
    ours with the default per-user caps on SQLite."""
    outcomes: list[Outcome] = []
    with tempfile.TemporaryDirectory(prefix="bench-concurrency-") as root:
        for number, (_, opened) in enumerate(BACKENDS):
            with ExitStack() as stack:
                target = stack.enter_context(opened(Path(root) / f"b{number}", NO_CAPS))
                for size in sizes:
                    for flow in flows:
                        outcomes.append(_round(target, flow, size))
        if default_caps_size is not None:
            with _sqlite(Path(root) / "caps", {}) as target:
                capped = _round(target, OURS_SYNC, default_caps_size, CAPS_ROOM)
                outcomes.append(_renamed(capped, DEFAULT_CAPS_ROW))
    return outcomes


def _renamed(outcome: Outcome, flow: str) -> Outcome:
    fields = {**outcome.__dict__, "flow": flow}
    return Outcome(**fields)


def render(outcomes: list[Outcome]) -> str:
    table = Table(
        [
            "store",
            "in flight",
            "flow",
            "200",
            "429 limit",
            "429 rate",
            "errors",
            "room",
            "charged",
            "overshoot",
            "overshoot %",
            "counter past limit",
            "lost updates",
            "counter - ledger",
            "requests/s",
            "wall s",
        ]
    )
    for o in outcomes:
        table.add(
            o.backend,
            o.requests,
            o.flow,
            o.served,
            o.refused["token_limit_exceeded"],
            o.refused["rate_limited"],
            sum(o.errors.values()) + sum(n for c, n in o.refused.items() if c not in _CODES),
            o.limit - o.start,
            o.charged,
            o.overshoot,
            f"{100.0 * o.overshoot / o.limit:.1f}%",
            o.counter_past_limit,
            o.lost_updates,
            "n/a" if o.ledger_drift is None else o.ledger_drift,
            round(o.per_second, 1),
            round(o.seconds, 2),
        )
    ratios = Table(
        [
            "store",
            "in flight",
            "overshoot seed / ours",
            "lost updates seed / ours",
            "requests/s ours / seed",
            "requests/s streamed / seed",
        ]
    )
    by_key = {(o.backend, o.requests, o.flow): o for o in outcomes}
    for o in outcomes:
        if o.flow != OURS_SYNC or (o.backend, o.requests, SEED) not in by_key:
            continue
        seed = by_key[(o.backend, o.requests, SEED)]
        streamed = by_key.get((o.backend, o.requests, OURS_STREAMED))
        ratios.add(
            o.backend,
            o.requests,
            ratio(seed.overshoot, o.overshoot),
            ratio(seed.lost_updates, o.lost_updates),
            ratio(o.per_second, seed.per_second),
            "-" if streamed is None else ratio(streamed.per_second, seed.per_second),
        )
    heading = (
        f"One round per row: a fresh Starter user (50,000 tokens), {HEADROOM_PER_REQUEST}"
        " tokens below the limit per request in flight (room), sends that many requests at once"
        " through the runtime's execution API (synchronous, or asynchronous with a requestId and"
        " followed to its end for streamed turns); the"
        f" offline model streams {TOKENS_PER_SECOND:,.0f} tokens/s. Per-user caps off"
        f" ({', '.join(f'{k}=0' for k in NO_CAPS)}) except in the last row, whose user has"
        f" {CAPS_ROOM:,} tokens of room, so that its 429s are the caps'. Overshoot: start +"
        " every charge the answers report - limit; lost updates: those charges minus what the"
        " counter gained."
    )
    errors: Counter[str] = Counter()
    for o in outcomes:
        errors.update(o.errors)
        errors.update({f"429 {c}": n for c, n in o.refused.items() if c not in _CODES})
    listed = ", ".join(f"{kind}: {n}" for kind, n in sorted(errors.items())) or "none"
    parts = [heading, table.render(), ratios.render(), f"Errors by status and code: {listed}."]
    return "\n\n".join(parts)


_CODES = frozenset({"token_limit_exceeded", "rate_limited"})


def run(quick: bool) -> str:
    sizes = (8, 32) if quick else SIZES
    return render(measure(sizes))
