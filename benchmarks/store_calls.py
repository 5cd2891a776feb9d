"""Store calls, and HTTP requests on the Appwrite emulator, per chat request: ours vs the seed's.

Ours reserves before and settles after every model call and keeps a ledger row per request; the
seed reads, calls the model and rewrites the counter. Counted by a proxy around each store and,
on the emulator, by the HTTP requests it answers.
"""

from __future__ import annotations

import tempfile
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import cast

from metering.account import new_account
from metering.adapters.anthropic_model import AnthropicModel
from metering.adapters.appwrite_store import AppwriteStore
from metering.chat import ChatRequest, ChatService, usage_tool
from metering.errors import TokenLimitExceeded
from metering.model import Message
from metering.plans import load_default_plans
from metering.ports import UsageStore
from metering.pricing import load_default_prices

from benchmarks.common import CallCounter, CountingProxy, Table, chat_settings, ratio
from benchmarks.seed import SeedAppwrite, SeedSQLite, SeedStore, seed_chat
from localruntime.sqlite_store import SQLiteStore
from tests.support.anthropic_fake import FakeAnthropic, Outcome, text_reply, tool_use_reply
from tests.support.appwrite_emulator import emulated_appwrite

SETTINGS = chat_settings(
    "You are a helpful assistant. Call get_my_usage for questions about usage.", max_steps=4
)
QUESTION = ChatRequest(messages=(Message.text("user", "How many tokens do I have left?"),))


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
class Counts:
    """Mean per chat request."""

    store_calls: float
    http_requests: float | None
    by_method: dict[str, float]
    model_calls: float


@dataclass(frozen=True)
class Row:
    scenario: str
    backend: str
    ours: Counts
    seed: Counts


def _seed_account(store: UsageStore, user_id: str, *, at_limit: bool) -> None:
    plans = load_default_plans()
    account = new_account(user_id, plans.get("starter"), datetime.now(UTC))
    used = account.limit if at_limit else 0
    store.create_account(replace(account, current_tokens_used=used))


@dataclass(frozen=True)
class _Stores:
    """A fresh store per request, as each execution opens one, and the HTTP request count."""

    ours: Callable[[], UsageStore]
    seed: Callable[[], SeedStore]
    http_requests: Callable[[], int | None]


def _measure(
    scenario: Scenario,
    users: list[str],
    store_for: Callable[[], object],
    http_requests: Callable[[], int | None],
    run: Callable[[object, FakeAnthropic, ChatRequest, str], None],
) -> Counts:
    counter = CallCounter()
    http = 0
    model_calls = 0
    for user_id in users:
        request = replace(QUESTION, request_id=f"req-{user_id}")
        if scenario.retry:
            run(store_for(), FakeAnthropic().then(*scenario.replies()), request, user_id)
        fake = FakeAnthropic().then(*scenario.replies())
        before = http_requests()
        run(CountingProxy(store_for(), counter), fake, request, user_id)
        after = http_requests()
        http += 0 if before is None or after is None else after - before
        model_calls += len(fake.requests)
    requests = len(users)
    return Counts(
        store_calls=counter.total / requests,
        http_requests=None if http_requests() is None else http / requests,
        by_method={name: count / requests for name, count in sorted(counter.calls.items())},
        model_calls=model_calls / requests,
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
    )
    with suppress(TokenLimitExceeded):
        service.handle(user_id, request, datetime.now(UTC))


def _run_seed(store: object, fake: FakeAnthropic, request: ChatRequest, user_id: str) -> None:
    # The seed has no idempotency key: a retry is one more request.
    tool = usage_tool(cast(UsageStore, None)).spec
    seed_chat(cast(SeedStore, store), _model(fake), SETTINGS, user_id, request, tool=tool)


@contextmanager
def _sqlite() -> Iterator[_Stores]:
    with tempfile.TemporaryDirectory(prefix="bench-calls-") as folder:
        path = str(Path(folder) / "usage.sqlite3")
        store = SQLiteStore(path)  # one per warm instance, as the store factory keeps it
        seed = SeedSQLite(path)
        yield _Stores(lambda: store, lambda: seed, lambda: None)


@contextmanager
def _appwrite() -> Iterator[_Stores]:
    with emulated_appwrite() as emulator:
        settings = emulator.store_settings()
        # The functions open a store per execution: no row id is remembered between requests.
        yield _Stores(
            lambda: AppwriteStore.connect(settings, emulator.api_key),
            lambda: SeedAppwrite(settings, emulator.api_key),
            lambda: len(emulator.calls),
        )


def measure(requests: int = 3) -> list[Row]:
    rows: list[Row] = []
    for backend, opened in (("SQLite", _sqlite), ("Appwrite emulator", _appwrite)):
        with opened() as stores:
            for index, scenario in enumerate(SCENARIOS):
                ours_users = [f"ours-{index}-{n}" for n in range(requests)]
                seed_users = [f"seed-{index}-{n}" for n in range(requests)]
                setup = stores.ours()
                for user_id in ours_users + seed_users:
                    _seed_account(setup, user_id, at_limit=scenario.at_limit)
                ours = _measure(scenario, ours_users, stores.ours, stores.http_requests, _run_ours)
                seed = _measure(scenario, seed_users, stores.seed, stores.http_requests, _run_seed)
                rows.append(Row(scenario.name, backend, ours, seed))
    return rows


def render(rows: list[Row]) -> str:
    table = Table(
        [
            "request",
            "store",
            "ours: store calls",
            "seed: store calls",
            "ours / seed",
            "ours: HTTP",
            "seed: HTTP",
            "ours / seed (HTTP)",
        ]
    )
    for row in rows:
        ours_http, seed_http = row.ours.http_requests, row.seed.http_requests
        table.add(
            row.scenario,
            row.backend,
            _number(row.ours.store_calls),
            _number(row.seed.store_calls),
            ratio(row.ours.store_calls, row.seed.store_calls),
            "-" if ours_http is None else _number(ours_http),
            "-" if seed_http is None else _number(seed_http),
            "-" if ours_http is None or seed_http is None else ratio(ours_http, seed_http),
        )
    methods = Table(
        [
            "request",
            "ours: store calls by method",
            "seed: store calls by method",
            "ours: model calls",
            "seed: model calls",
        ]
    )
    for row in rows:
        if row.backend == "SQLite":
            methods.add(
                row.scenario,
                _methods(row.ours.by_method),
                _methods(row.seed.by_method),
                _number(row.ours.model_calls),
                _number(row.seed.model_calls),
            )
    return table.render() + "\n\n" + methods.render()


def _number(value: float) -> str:
    return str(int(value)) if value == int(value) else f"{value:.2f}"


def _methods(by_method: dict[str, float]) -> str:
    return ", ".join(f"{name} {_number(count)}" for name, count in by_method.items()) or "-"


def run(quick: bool) -> str:
    return render(measure(requests=1 if quick else 3))
