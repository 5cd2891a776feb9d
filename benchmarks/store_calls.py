"""Store calls, and HTTP requests on the Appwrite emulator, per chat request: ours vs the seed's
and vs the previous flow's published figures.

Ours opens the request (entry, turn and first hold) and settles each step, each one atomic change;
the seed reads, calls the model and rewrites the counter. Counted by a proxy around each store and,
on the emulator, by the HTTP requests it answers; the turn's progress writes are counted apart.
"""

from __future__ import annotations

import re
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

from metering.account import new_account
from metering.adapters.anthropic_model import AnthropicModel
from metering.adapters.appwrite_store import AppwriteStore
from metering.chat import ChatRequest, ChatService, usage_tool
from metering.errors import TokenLimitExceeded
from metering.model import Message
from metering.plans import load_default_plans
from metering.ports import UsageStore
from metering.pricing import load_default_prices

from benchmarks.common import (
    PROGRESS_METHODS,
    CallCounter,
    CountingProxy,
    Table,
    chat_settings,
    ratio,
)
from benchmarks.seed import SeedAppwrite, SeedSQLite, SeedStore, Unstreamed, seed_chat
from localruntime.sqlite_store import SQLiteStore
from tests.support.anthropic_fake import FakeAnthropic, Outcome, text_reply, tool_use_reply
from tests.support.appwrite_emulator import emulated_appwrite

SETTINGS = chat_settings(
    "You are a helpful assistant. Call get_my_usage for questions about usage.", max_steps=4
)
QUESTION = ChatRequest(messages=(Message.text("user", "How many tokens do I have left?"),))
# The store methods that change the hard cap and the ledger: each must be one atomic change.
ATOMIC_METHODS = frozenset({"open_request", "hold", "settle", "discard_request"})
_TRANSACTION_PATHS = (
    ("POST", re.compile(r"/tablesdb/transactions$")),
    ("POST", re.compile(r"/tablesdb/transactions/[^/]+/operations$")),
    ("PATCH", re.compile(r"/tablesdb/transactions/[^/]+$")),
)


def _single() -> list[Outcome]:
    return [text_reply("Hello.", input_tokens=30, output_tokens=20)]


@dataclass(frozen=True)
class Scenario:
    name: str
    replies: Callable[[], list[Outcome]]
    at_limit: bool = False
    # Counted: the second send of a request that completed (same requestId, e.g. a client retry).
    retry: bool = False


SCENARIOS = (
    Scenario("single step", _single),
    Scenario(
        "3-step tool loop",
        lambda: [
            tool_use_reply("get_my_usage"),
            tool_use_reply("get_my_usage"),
            text_reply("You have plenty left.", input_tokens=600, output_tokens=30),
        ],
    ),
    Scenario("refused at the limit (429)", list, at_limit=True),
    Scenario("retry of a completed request", _single, retry=True),
)


@dataclass(frozen=True)
class Published:
    """The previous flow's figures as published (reserve and settle not atomic: a reserve or
    release was two bounded increments on Appwrite, and the ledger row was written apart)."""

    store_calls: int
    http_requests: int


BEFORE = {
    "single step": Published(7, 9),
    "3-step tool loop": Published(13, 19),
    "refused at the limit (429)": Published(2, 2),
    "retry of a completed request": Published(3, 3),
}


@dataclass(frozen=True)
class Counts:
    """Means per chat request; progress calls (the turn's text and Stop look-ups) apart."""

    store_calls: float
    http_requests: float | None
    progress_calls: float
    progress_http: float | None
    by_method: dict[str, float]
    http_by_method: dict[str, float]
    model_calls: float
    # For each atomic method called: whether every call of it was one transaction of three
    # HTTP requests (create, stage the operations, commit). Appwrite only.
    transactions: dict[str, bool]


@dataclass(frozen=True)
class Row:
    scenario: str
    backend: str
    ours_turn: Counts
    ours_plain: Counts | None  # None for a retry: without a requestId there is nothing to retry
    seed: Counts

    @property
    def before(self) -> Published:
        return BEFORE[self.scenario]


def _seed_account(store: UsageStore, user_id: str, *, at_limit: bool) -> None:
    plans = load_default_plans()
    account = new_account(user_id, plans.get("starter"), datetime.now(UTC))
    used = account.limit if at_limit else 0
    store.create_account(replace(account, current_tokens_used=used))


@dataclass(frozen=True)
class _Stores:
    """A fresh store per request, as each execution opens one, and the emulator's HTTP log."""

    ours: Callable[[], UsageStore]
    seed: Callable[[], SeedStore]
    http_log: Callable[[], Sequence[Any]] | None


Runner = Callable[[object, FakeAnthropic, ChatRequest, str], None]


def is_transaction(http: Sequence[Any]) -> bool:
    """Whether ``http`` is exactly one TablesDB transaction: create, one staging call, the
    reads that check what it staged, commit."""
    if len(http) < len(_TRANSACTION_PATHS):
        return False
    create, stage, *reads, commit = http
    return all(
        call.method == method and pattern.search(call.path)
        for call, (method, pattern) in zip((create, stage, commit), _TRANSACTION_PATHS, strict=True)
    ) and all(read.method == "GET" for read in reads)


def _measure(
    scenario: Scenario,
    users: list[str],
    stores: _Stores,
    store_for: Callable[[], object],
    run: Runner,
    *,
    request_id: bool,
) -> Counts:
    counter = CallCounter(keep=True)
    model_calls = 0
    for user_id in users:
        request = replace(QUESTION, request_id=f"req-{user_id}" if request_id else None)
        if scenario.retry:
            run(store_for(), FakeAnthropic().then(*scenario.replies()), request, user_id)
        fake = FakeAnthropic().then(*scenario.replies())
        run(CountingProxy(store_for(), counter, stores.http_log), fake, request, user_id)
        model_calls += len(fake.requests)
    requests = len(users)
    appwrite = stores.http_log is not None
    progress = sum(n for name, n in counter.calls.items() if name in PROGRESS_METHODS)
    progress_http = sum(n for name, n in counter.http.items() if name in PROGRESS_METHODS)
    transactions: dict[str, bool] = {}
    if appwrite:
        for call in counter.log:
            if call.name in ATOMIC_METHODS:
                one = is_transaction(call.http)
                transactions[call.name] = transactions.get(call.name, True) and one
    return Counts(
        store_calls=(counter.total - progress) / requests,
        http_requests=(sum(counter.http.values()) - progress_http) / requests if appwrite else None,
        progress_calls=progress / requests,
        progress_http=progress_http / requests if appwrite else None,
        by_method={name: count / requests for name, count in sorted(counter.calls.items())},
        http_by_method={name: count / requests for name, count in sorted(counter.http.items())},
        model_calls=model_calls / requests,
        transactions=transactions,
    )


def _model(fake: FakeAnthropic) -> AnthropicModel:
    return AnthropicModel.connect("sk-ant-bench", max_retries=0, http_client=fake.client())


def _run_ours(store: object, fake: FakeAnthropic, request: ChatRequest, user_id: str) -> None:
    service = ChatService(
        store=cast(UsageStore, store),
        model=_model(fake),
        plans=load_default_plans(),
        prices=load_default_prices(),
        settings=SETTINGS,
        new_request_id=lambda: uuid.uuid4().hex,
        monotonic=time.monotonic,
    )
    with suppress(TokenLimitExceeded):
        service.handle(user_id, request, datetime.now(UTC))


def _run_seed(store: object, fake: FakeAnthropic, request: ChatRequest, user_id: str) -> None:
    # The seed has no idempotency key: a retry is one more request.
    tool = usage_tool(cast(UsageStore, None)).spec
    model = Unstreamed(_model(fake))
    seed_chat(cast(SeedStore, store), model, SETTINGS, user_id, request, tool=tool)


@contextmanager
def _sqlite() -> Iterator[_Stores]:
    with tempfile.TemporaryDirectory(prefix="bench-calls-") as folder:
        path = str(Path(folder) / "usage.sqlite3")
        store = SQLiteStore(path)  # one per warm instance, as the store factory keeps it
        seed = SeedSQLite(path)
        yield _Stores(lambda: store, lambda: seed, None)


@contextmanager
def _appwrite() -> Iterator[_Stores]:
    with emulated_appwrite() as emulator:
        settings = emulator.store_settings()
        # The functions open a store per execution: no row id is remembered between requests.
        yield _Stores(
            lambda: AppwriteStore.connect(settings, emulator.api_key),
            lambda: SeedAppwrite(settings, emulator.api_key),
            lambda: emulator.calls,
        )


def measure(requests: int = 3) -> list[Row]:
    rows: list[Row] = []
    for backend, opened in (("SQLite", _sqlite), ("Appwrite emulator", _appwrite)):
        with opened() as stores:
            for index, scenario in enumerate(SCENARIOS):
                users = {
                    flow: [f"{flow}-{index}-{n}" for n in range(requests)]
                    for flow in ("turn", "plain", "seed")
                }
                setup = stores.ours()
                for user_id in (user for group in users.values() for user in group):
                    _seed_account(setup, user_id, at_limit=scenario.at_limit)
                turn = _measure(
                    scenario, users["turn"], stores, stores.ours, _run_ours, request_id=True
                )
                plain = None
                if not scenario.retry:
                    plain = _measure(
                        scenario, users["plain"], stores, stores.ours, _run_ours, request_id=False
                    )
                seed = _measure(
                    scenario, users["seed"], stores, stores.seed, _run_seed, request_id=False
                )
                rows.append(Row(scenario.name, backend, turn, plain, seed))
    return rows


def render(rows: list[Row]) -> str:
    appwrite = Table(
        [
            "request",
            "ours, turn: HTTP",
            "ours, no turn: HTTP",
            "seed: HTTP",
            "before: HTTP",
            "ours (turn) / seed",
            "ours (turn) / before",
            "ours, turn: progress HTTP",
        ]
    )
    calls = Table(
        [
            "request",
            "store",
            "ours, turn",
            "ours, no turn",
            "seed",
            "before",
            "ours (turn) / seed",
            "ours (turn) / before",
            "ours, turn: progress calls",
        ]
    )
    for row in rows:
        plain = row.ours_plain
        calls.add(
            row.scenario,
            row.backend,
            _number(row.ours_turn.store_calls),
            "n/a" if plain is None else _number(plain.store_calls),
            _number(row.seed.store_calls),
            row.before.store_calls,
            ratio(row.ours_turn.store_calls, row.seed.store_calls),
            ratio(row.ours_turn.store_calls, row.before.store_calls),
            _number(row.ours_turn.progress_calls),
        )
        if row.backend == "SQLite":
            continue
        ours_http = row.ours_turn.http_requests or 0.0
        seed_http = row.seed.http_requests or 0.0
        appwrite.add(
            row.scenario,
            _number(ours_http),
            "n/a" if plain is None else _number(plain.http_requests or 0.0),
            _number(seed_http),
            row.before.http_requests,
            ratio(ours_http, seed_http),
            ratio(ours_http, row.before.http_requests),
            _number(row.ours_turn.progress_http or 0.0),
        )
    methods = Table(
        [
            "request",
            "ours, turn: store calls by method (HTTP requests on Appwrite)",
            "seed: store calls by method",
            "ours: model calls",
            "seed: model calls",
        ]
    )
    for row in rows:
        if row.backend == "Appwrite emulator":
            methods.add(
                row.scenario,
                _methods(row.ours_turn),
                _methods(row.seed),
                _number(row.ours_turn.model_calls),
                _number(row.seed.model_calls),
            )
    return "\n\n".join(
        [
            "HTTP requests per chat request on the Appwrite emulator (progress calls apart):",
            appwrite.render(),
            "Store calls per chat request (progress calls apart):",
            calls.render(),
            _transactions(rows),
            methods.render(),
        ]
    )


def _transactions(rows: list[Row]) -> str:
    seen: set[str] = set()
    broken: set[str] = set()
    for row in rows:
        if row.scenario == "retry of a completed request":
            continue  # its claim is refused at the commit, then the entry found is read
        for counts in (row.ours_turn, row.ours_plain):
            for name, one in (counts.transactions if counts is not None else {}).items():
                seen.add(name)
                if not one:
                    broken.add(name)
    text = (
        f"On Appwrite every call of {_names(seen - broken)} was one transaction of 3 HTTP requests"
        " (create, stage, commit), the settle that ends a request with one read of the account's"
        " period between staging and commit"
    )
    if broken:
        text += f"; some calls of {_names(broken)} were not"
    return text + (
        "; the refused claim of a retry takes 4: the failed transaction's 3 and a read of the"
        " entry it found."
    )


def _names(names: set[str]) -> str:
    quoted = [f"`{name}`" for name in sorted(names)]
    if len(quoted) < 2:
        return "".join(quoted) or "no method"
    return ", ".join(quoted[:-1]) + " and " + quoted[-1]


def _number(value: float) -> str:
    return str(int(value)) if value == int(value) else f"{value:.2f}"


def _methods(counts: Counts) -> str:
    parts = []
    for name, count in counts.by_method.items():
        http = counts.http_by_method.get(name)
        parts.append(f"{name} {_number(count)}" + (f" ({_number(http)})" if http else ""))
    return ", ".join(parts) or "-"


def run(quick: bool) -> str:
    return render(measure(requests=1 if quick else 3))
