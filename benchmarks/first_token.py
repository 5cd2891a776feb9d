"""The metering's cost before the first streamed token: store calls, HTTP requests and, with a
fixed simulated round trip per HTTP request, the time they take, as a ratio to the model's own
time to first token; ours vs the seed's and vs the previous flow (its published per-method counts).
"""

from __future__ import annotations

import statistics
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

from metering.account import new_account
from metering.adapters.anthropic_model import AnthropicModel
from metering.adapters.appwrite_store import AppwriteStore
from metering.chat import ChatRequest, ChatService
from metering.model import Message, ModelRequest, StreamedCall, StreamSink
from metering.plans import load_default_plans
from metering.ports import ModelClient, UsageStore
from metering.pricing import load_default_prices

from benchmarks.common import (
    ROUND_TRIP_MS,
    CallCounter,
    CountingProxy,
    Table,
    chat_settings,
    ratio,
)
from benchmarks.seed import SeedAppwrite, SeedSQLite, SeedStore, Unstreamed, seed_chat
from localruntime.sqlite_store import SQLiteStore
from tests.support.anthropic_fake import FakeAnthropic, Streamed, stream_events, text_reply
from tests.support.appwrite_emulator import emulated_appwrite

SETTINGS = chat_settings("You are a helpful assistant.", max_steps=1)
QUESTION = ChatRequest(messages=(Message.text("user", "Tell me a short story."),))
# The previous flow before its model call, from its published per-method counts: get_account,
# get_ledger (a retry?), create_ledger and reserve (two bounded increments on Appwrite).
BEFORE_STORE_CALLS = 4
BEFORE_HTTP_REQUESTS = 5
# The fake API waits this long before each event it streams: message_start, ping,
# content_block_start, then the first text delta come some 400 ms after the call, as a fast
# answer of a current model.
MODEL_EVENT_DELAY_SECONDS = 0.1


@dataclass(frozen=True)
class FirstByte:
    """Means per request of one flow on one store, up to the moment the model call starts."""

    flow: str
    backend: str
    store_calls: float
    http_requests: float | None
    milliseconds: float  # median, from the request's start to the model call's
    model_milliseconds: float  # median, from the model call's start to its first text token

    @property
    def overhead_ratio(self) -> float:
        """The metering's wait before the call over the model's own time to first token."""
        return self.milliseconds / self.model_milliseconds if self.model_milliseconds else 0.0


class _FirstText:
    """A sink that notes when the first text token arrives and passes everything on."""

    def __init__(self, sink: StreamSink) -> None:
        self.sink = sink
        self.at: float | None = None

    def text(self, delta: str) -> None:
        if self.at is None:
            self.at = time.perf_counter()
        self.sink.text(delta)

    def tool_input(self, delta: str) -> None:
        self.sink.tool_input(delta)

    def should_stop(self) -> bool:
        return self.sink.should_stop()


class _Watched:
    """A model client that notes the store's counts and the time when its call starts, and when
    its first text token arrives."""

    def __init__(self, model: ModelClient, counter: CallCounter) -> None:
        self.model = model
        self.counter = counter
        self.started: tuple[int, int, float] | None = None
        self.first_text: float | None = None

    def stream(
        self, request: ModelRequest, sink: StreamSink, deadline_seconds: float
    ) -> StreamedCall:
        if self.started is None:
            self.started = (*self.counter.snapshot(), time.perf_counter())
        watched = _FirstText(sink)
        try:
            return self.model.stream(request, watched, deadline_seconds)
        finally:
            if self.first_text is None:
                self.first_text = watched.at

    def count_tokens(self, request: ModelRequest) -> int:
        return self.model.count_tokens(request)


@dataclass(frozen=True)
class _Stores:
    ours: Callable[[], UsageStore]
    seed: Callable[[], SeedStore]
    http_log: Callable[[], Sequence[Any]] | None


@contextmanager
def _sqlite() -> Iterator[_Stores]:
    with tempfile.TemporaryDirectory(prefix="bench-first-") as folder:
        path = str(Path(folder) / "usage.sqlite3")
        store, seed = SQLiteStore(path), SeedSQLite(path)
        yield _Stores(lambda: store, lambda: seed, None)


@contextmanager
def _appwrite() -> Iterator[_Stores]:
    with emulated_appwrite() as emulator:
        settings = emulator.store_settings()
        yield _Stores(
            lambda: AppwriteStore.connect(settings, emulator.api_key),
            lambda: SeedAppwrite(settings, emulator.api_key),
            lambda: emulator.calls,
        )


def _model(counter: CallCounter, event_delay: float) -> _Watched:
    reply = text_reply("Once upon a time.", input_tokens=30, output_tokens=8)
    fake = FakeAnthropic().then(Streamed(stream_events(reply.document), event_delay))
    client = AnthropicModel.connect("sk-ant-bench", max_retries=0, http_client=fake.client())
    return _Watched(client, counter)


@dataclass(frozen=True)
class Flow:
    name: str
    seed: bool = False  # the seed's flow, else ours
    turn: bool = False  # ours with a requestId, so with a turn row


FLOWS = (Flow("ours, turn", turn=True), Flow("ours, no turn"), Flow("seed", seed=True))


def _flow(
    flow: Flow,
    stores: _Stores,
    requests: int,
    *,
    round_trip: float,
    backend: str,
    event_delay: float,
) -> FirstByte:
    setup = stores.ours()
    # On Appwrite each HTTP request waits a round trip; SQLite is local.
    latency = round_trip if stores.http_log is not None else 0.0
    samples: list[tuple[int, int, float, float]] = []
    for _ in range(requests):
        user_id = f"first-{uuid.uuid4().hex[:8]}"
        account = new_account(user_id, load_default_plans().get("starter"), datetime.now(UTC))
        setup.create_account(account)
        counter = CallCounter()
        model = _model(counter, event_delay)
        began = time.perf_counter()
        if flow.seed:
            store = CountingProxy(stores.seed(), counter, stores.http_log, latency)
            seed_chat(cast(SeedStore, store), Unstreamed(model), SETTINGS, user_id, QUESTION)
        else:
            store = CountingProxy(stores.ours(), counter, stores.http_log, latency)
            service = ChatService(
                store=cast(UsageStore, store),
                model=model,
                plans=load_default_plans(),
                prices=load_default_prices(),
                settings=SETTINGS,
                new_request_id=lambda: uuid.uuid4().hex,
                monotonic=time.monotonic,
            )
            request_id = f"turn-{user_id}" if flow.turn else None
            service.handle(user_id, replace(QUESTION, request_id=request_id), datetime.now(UTC))
        assert model.started is not None
        assert model.first_text is not None
        calls, http, at = model.started
        samples.append((calls, http, at - began, model.first_text - at))
    return FirstByte(
        flow=flow.name,
        backend=backend,
        store_calls=statistics.fmean(s[0] for s in samples),
        http_requests=statistics.fmean(s[1] for s in samples) if stores.http_log else None,
        milliseconds=1000 * statistics.median(s[2] for s in samples),
        model_milliseconds=1000 * statistics.median(s[3] for s in samples),
    )


def measure(
    requests: int = 5,
    round_trip_ms: float = ROUND_TRIP_MS,
    event_delay: float = MODEL_EVENT_DELAY_SECONDS,
) -> list[FirstByte]:
    results: list[FirstByte] = []
    for backend, opened in (("SQLite", _sqlite), ("Appwrite emulator", _appwrite)):
        with opened() as stores:
            for flow in FLOWS:
                results.append(
                    _flow(
                        flow,
                        stores,
                        requests,
                        round_trip=round_trip_ms / 1000,
                        backend=backend,
                        event_delay=event_delay,
                    )
                )
    return results


def render(results: list[FirstByte], round_trip_ms: float = ROUND_TRIP_MS) -> str:
    table = Table(
        [
            "store",
            "flow",
            "store calls",
            "HTTP requests",
            "ms to first model byte",
            "model's own ms to first token",
            "metering / model",
            "store calls / seed",
            "HTTP / seed",
            "ms / seed",
            "HTTP / before",
        ]
    )
    by_key = {(r.backend, r.flow): r for r in results}
    for result in results:
        seed = by_key[(result.backend, "seed")]
        http = result.http_requests
        table.add(
            result.backend,
            result.flow,
            _number(result.store_calls),
            "-" if http is None else _number(http),
            round(result.milliseconds, 2),
            round(result.model_milliseconds, 1),
            f"{100 * result.overhead_ratio:.1f}%",
            ratio(result.store_calls, seed.store_calls),
            "-" if http is None else ratio(http, seed.http_requests or 0),
            ratio(result.milliseconds, seed.milliseconds),
            "-" if http is None else ratio(http, BEFORE_HTTP_REQUESTS),
        )
        if http is not None and result.flow == "seed":
            table.add(
                result.backend,
                "before (published counts)",
                BEFORE_STORE_CALLS,
                BEFORE_HTTP_REQUESTS,
                "-",
                "-",
                "-",
                ratio(BEFORE_STORE_CALLS, seed.store_calls),
                ratio(BEFORE_HTTP_REQUESTS, seed.http_requests or 0),
                "-",
                "1.00x",
            )
    return (
        f"On the Appwrite emulator every HTTP request waits a simulated {round_trip_ms:g} ms"
        " (a function and its database in one region); SQLite is local and waits nothing."
        " Median time over the runs from the start of the request to the start of its model"
        " call, and from there to the first text token the model streams (the fake API waits"
        f" {MODEL_EVENT_DELAY_SECONDS * 1000:g} ms before each event); metering / model divides"
        " the first by the second.\n\n" + table.render()
    )


def _number(value: float) -> str:
    return str(int(value)) if value == int(value) else f"{value:.2f}"


def run(quick: bool) -> str:
    return render(measure(requests=2 if quick else 7))
