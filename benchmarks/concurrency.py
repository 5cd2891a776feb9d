"""Overshoot and lost updates when many requests of one user near the limit run at once.

Each round starts a fresh user a few thousand tokens below the limit and releases N threads at
once; every request's model call takes a random few milliseconds and reports a random usage.
Ours opens the request with a bounded hold and settles, each one atomic change; the seed reads,
checks, calls the model and rewrites the counter (read-then-write).
"""

from __future__ import annotations

import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from functools import partial
from pathlib import Path

from metering.account import new_account
from metering.adapters.appwrite_store import AppwriteStore
from metering.chat import ChatRequest, ChatService
from metering.errors import TokenLimitExceeded
from metering.model import Message
from metering.plans import load_default_plans
from metering.ports import UsageStore
from metering.pricing import load_default_prices

from benchmarks.common import LatencyModel, Table, chat_settings, ratio
from benchmarks.seed import SeedAppwrite, SeedSQLite, SeedStore, Unstreamed, seed_chat
from localruntime.sqlite_store import SQLiteStore
from tests.support.appwrite_emulator import emulated_appwrite

SETTINGS = chat_settings("You are a helpful assistant inside a personal finance app.", max_steps=1)
REQUEST = ChatRequest(messages=(Message.text("user", "Summarise my spending this week."),))
PLAN = "starter"
HEADROOM = 8_000


@dataclass(frozen=True)
class Outcome:
    """Totals over all rounds of one flow on one store."""

    flow: str
    backend: str
    requests: int
    served: int
    refused: int
    errors: int
    limit: int
    # Tokens served past the limit: the starting counter plus every charge, minus the limit.
    overshoot: int  # summed over rounds
    worst_overshoot: int  # in the worst round
    counter_past_limit: int  # what the stored counters show past the limit, summed over rounds
    lost_updates: int  # tokens requests believe they added minus what the counters gained
    ledger_drift: int | None  # counter minus ledger total, summed over rounds (ours only)
    seconds: float

    @property
    def worst_overshoot_percent(self) -> float:
        return 100.0 * self.worst_overshoot / self.limit


@dataclass
class _Round:
    charged: int = 0
    served: int = 0
    refused: int = 0
    errors: int = 0


@dataclass
class _Tally:
    """The figures of a flow, summed over its rounds."""

    requests: int
    served: int = 0
    refused: int = 0
    errors: int = 0
    limit: int = 0
    overshoot: int = 0
    worst_overshoot: int = 0
    counter_past_limit: int = 0
    lost_updates: int = 0
    ledger_drift: int | None = None

    def add(
        self, outcome: _Round, *, start: int, final: int, limit: int, drift: int | None = None
    ) -> None:
        """One round: ``start``/``final`` are the user's counter before and after it."""
        self.served += outcome.served
        self.refused += outcome.refused
        self.errors += outcome.errors
        self.limit = limit
        past = max(0, start + outcome.charged - limit)
        self.overshoot += past
        self.worst_overshoot = max(self.worst_overshoot, past)
        self.counter_past_limit += max(0, final - limit)
        self.lost_updates += outcome.charged - (final - start)
        if drift is not None:
            self.ledger_drift = (self.ledger_drift or 0) + drift

    def outcome(self, flow: str, backend: str, started: float) -> Outcome:
        """The tally as the flow's outcome on ``backend``, timed from ``started``."""
        return Outcome(
            flow=flow, backend=backend, seconds=time.perf_counter() - started, **asdict(self)
        )


def _in_threads(threads: int, request: Callable[[], int | None]) -> _Round:
    """Run ``request`` once in each of ``threads`` threads released together; it returns the
    tokens it believes it charged, or None when refused with 429."""
    outcome = _Round()
    lock = threading.Lock()
    barrier = threading.Barrier(threads)

    def work() -> None:
        barrier.wait()
        try:
            charged = request()
        except Exception:
            with lock:
                outcome.errors += 1
            return
        with lock:
            if charged is None:
                outcome.refused += 1
            else:
                outcome.served += 1
                outcome.charged += charged

    workers = [threading.Thread(target=work) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    return outcome


def _create_user(store: UsageStore, user_id: str, headroom: int) -> tuple[int, int]:
    """A user ``headroom`` tokens below the limit; returns (starting counter, limit)."""
    account = new_account(user_id, load_default_plans().get(PLAN), datetime.now(UTC))
    start = account.limit - headroom
    store.create_account(replace(account, current_tokens_used=start))
    return start, account.limit


@dataclass(frozen=True)
class _Flow:
    """How one flow serves a request and reads the user's counter back after a round."""

    name: str
    prefix: str  # of the round's user ids
    # One request of ``user_id``: the tokens it believes it charged, or None when refused.
    request: Callable[[LatencyModel, str], int | None]
    # The counter after the round of a user who started at ``start``, and its ledger drift.
    counter: Callable[[str, int], tuple[int, int | None]]


def _rounds(
    flow: _Flow,
    setup_store: Callable[[], UsageStore],
    *,
    threads: int,
    rounds: int,
    headroom: int,
    seed: int,
    backend: str,
) -> Outcome:
    """``rounds`` rounds of ``threads`` requests at once, each for a fresh user near the limit."""
    model = LatencyModel(seed)
    tally = _Tally(requests=threads * rounds)
    started = time.perf_counter()
    for number in range(rounds):
        user_id = f"{flow.prefix}-{number}-{uuid.uuid4().hex[:8]}"
        start, limit = _create_user(setup_store(), user_id, headroom)
        outcome = _in_threads(threads, partial(flow.request, model, user_id))
        final, drift = flow.counter(user_id, start)
        tally.add(outcome, start=start, final=final, limit=limit, drift=drift)
    return tally.outcome(flow.name, backend, started)


def _ours(store_for: Callable[[], UsageStore]) -> _Flow:
    """Open the request with a bounded hold, stream the model call, settle."""

    def request(model: LatencyModel, user_id: str) -> int | None:
        service = ChatService(
            store=store_for(),
            model=model,
            plans=load_default_plans(),
            prices=load_default_prices(),
            settings=SETTINGS,
            new_request_id=lambda: uuid.uuid4().hex,
            monotonic=time.monotonic,
            tools={},
        )
        try:
            result = service.handle(user_id, REQUEST, datetime.now(UTC))
        except TokenLimitExceeded:
            return None
        return result.usage.total_tokens

    def counter(user_id: str, start: int) -> tuple[int, int | None]:
        store = store_for()
        account = store.get_account(user_id)
        assert account is not None
        final = account.current_tokens_used
        # The starting counter predates the ledger; everything since must be in it.
        return final, final - start - store.ledger_total(user_id, account.period_start)

    return _Flow("ours (atomic hold, settle)", "ours", request, counter)


def _seed(seed_store: Callable[[], SeedStore]) -> _Flow:
    """Read, check, call the model and rewrite the counter."""

    def request(model: LatencyModel, user_id: str) -> int | None:
        result = seed_chat(seed_store(), Unstreamed(model), SETTINGS, user_id, REQUEST)
        return None if result.status == 429 else result.charged

    def counter(user_id: str, start: int) -> tuple[int, int | None]:
        return seed_store().read_usage(user_id).used, None

    return _Flow("seed (read-then-write)", "seed", request, counter)


Stores = tuple[Callable[[], UsageStore], Callable[[], SeedStore]]


@contextmanager
def _sqlite() -> Iterator[Stores]:
    with tempfile.TemporaryDirectory(prefix="bench-concurrency-") as folder:
        path = str(Path(folder) / "usage.sqlite3")
        store = SQLiteStore(path)
        seed = SeedSQLite(path)
        yield (lambda: store), (lambda: seed)


@contextmanager
def _appwrite() -> Iterator[Stores]:
    with emulated_appwrite() as emulator:
        settings = emulator.store_settings()
        # One client per request, as each execution opens its own.
        yield (
            lambda: AppwriteStore.connect(settings, emulator.api_key),
            lambda: SeedAppwrite(settings, emulator.api_key),
        )


def measure(
    threads: int = 40, rounds: int = 5, headroom: int = HEADROOM, seed: int = 7
) -> list[Outcome]:
    outcomes: list[Outcome] = []
    for backend, opened in (("SQLite", _sqlite), ("Appwrite emulator", _appwrite)):
        with opened() as (our_store, seed_store):
            shape = {"threads": threads, "rounds": rounds, "headroom": headroom, "seed": seed}
            for flow in (_ours(our_store), _seed(seed_store)):
                outcomes.append(_rounds(flow, our_store, backend=backend, **shape))
    return outcomes


def render(outcomes: list[Outcome], threads: int, rounds: int, headroom: int) -> str:
    table = Table(
        [
            "store",
            "flow",
            "requests",
            "200",
            "429",
            "errors",
            "limit",
            "overshoot, worst round",
            "overshoot %",
            "overshoot, all rounds",
            "counter past limit",
            "lost updates",
            "counter - ledger",
            "wall s",
        ]
    )
    for outcome in outcomes:
        table.add(
            outcome.backend,
            outcome.flow,
            outcome.requests,
            outcome.served,
            outcome.refused,
            outcome.errors,
            outcome.limit,
            outcome.worst_overshoot,
            f"{outcome.worst_overshoot_percent:.1f}%",
            outcome.overshoot,
            outcome.counter_past_limit,
            outcome.lost_updates,
            "n/a" if outcome.ledger_drift is None else outcome.ledger_drift,
            round(outcome.seconds, 2),
        )
    times = Table(
        ["store", "overshoot seed / ours", "lost updates seed / ours", "wall time ours / seed"]
    )
    for ours, seed in zip(outcomes[::2], outcomes[1::2], strict=True):
        times.add(
            ours.backend,
            ratio(seed.overshoot, ours.overshoot),
            ratio(seed.lost_updates, ours.lost_updates),
            ratio(ours.seconds, seed.seconds),
        )
    heading = (
        f"{threads} threads x {rounds} rounds per flow and store; each round a fresh {PLAN}"
        f" user {headroom:,} tokens below the limit. Overshoot: tokens served past the limit"
        " (starting counter + every charge - limit); lost updates: charges the requests believe"
        " were recorded minus what the counter gained."
    )
    return heading + "\n\n" + table.render() + "\n\n" + times.render()


def run(quick: bool) -> str:
    threads, rounds = (20, 2) if quick else (40, 5)
    return render(measure(threads, rounds), threads, rounds, HEADROOM)
