"""Progress writes while a turn streams: its text and the Stop look-up, once per progress interval,
against the naive baseline that writes at every delta (the same service with an interval of 0),
streaming a long reply from the Anthropic fake at a realistic pace.
"""

from __future__ import annotations

import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
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
    PROGRESS_INTERVAL,
    ROUND_TRIP_MS,
    CallCounter,
    CountingProxy,
    Table,
    chat_settings,
    count_rule,
    paced_reply,
    ratio,
)
from localruntime.sqlite_store import SQLiteStore
from tests.support.anthropic_fake import FakeAnthropic, Streamed
from tests.support.appwrite_emulator import emulated_appwrite

TOKENS_PER_SECOND = 50
QUESTION = "Tell me a long story."


@dataclass(frozen=True)
class Progress:
    """One streamed turn's progress calls, per second of its stream."""

    backend: str
    flow: str
    interval: float
    tokens: int
    seconds: float  # the model call's duration, from its start to its end
    text_writes: int  # update_turn
    stop_checks: int  # stop_requested
    http_requests: int | None  # of those calls, on the emulator
    text_written: int  # characters of turn text the progress writes carried

    @property
    def writes_per_second(self) -> float:
        return (self.text_writes + self.stop_checks) / self.seconds


class _Timed:
    """A model client that notes how long its stream ran."""

    def __init__(self, model: ModelClient) -> None:
        self.model = model
        self.seconds = 0.0

    def stream(
        self, request: ModelRequest, sink: StreamSink, deadline_seconds: float
    ) -> StreamedCall:
        began = time.perf_counter()
        try:
            return self.model.stream(request, sink, deadline_seconds)
        finally:
            self.seconds += time.perf_counter() - began

    def count_tokens(self, request: ModelRequest) -> int:
        return self.model.count_tokens(request)


@dataclass(frozen=True)
class _Backend:
    name: str
    store: Callable[[], UsageStore]
    http_log: Callable[[], Sequence[Any]] | None


@contextmanager
def _sqlite() -> Iterator[_Backend]:
    with tempfile.TemporaryDirectory(prefix="bench-progress-") as folder:
        store = SQLiteStore(str(Path(folder) / "usage.sqlite3"))
        yield _Backend("SQLite", lambda: store, None)


@contextmanager
def _appwrite() -> Iterator[_Backend]:
    with emulated_appwrite() as emulator:
        settings = emulator.store_settings()
        yield _Backend(
            "Appwrite emulator",
            lambda: AppwriteStore.connect(settings, emulator.api_key),
            lambda: emulator.calls,
        )


def stream_turn(backend: _Backend, flow: str, interval: float, tokens: int) -> Progress:
    """One turn of ``tokens`` streamed at ``TOKENS_PER_SECOND``, its progress calls counted."""
    user_id = f"progress-{uuid.uuid4().hex[:8]}"
    setup = backend.store()
    setup.create_account(new_account(user_id, load_default_plans().get("pro"), datetime.now(UTC)))
    fake = FakeAnthropic(count_tokens=count_rule).then(
        Streamed(paced_reply(tokens), delay_seconds=1 / TOKENS_PER_SECOND)
    )
    client = AnthropicModel.connect("sk-ant-bench", max_retries=0, http_client=fake.client())
    model = _Timed(client)
    counter = CallCounter(keep=True)
    # On Appwrite each HTTP request waits a round trip, in the thread that reads the stream.
    round_trip = ROUND_TRIP_MS / 1000 if backend.http_log is not None else 0.0
    store = CountingProxy(backend.store(), counter, backend.http_log, round_trip)
    service = ChatService(
        store=cast(UsageStore, store),
        model=model,
        plans=load_default_plans(),
        prices=load_default_prices(),
        settings=chat_settings("You are a storyteller.", max_steps=1, progress_interval=interval),
        new_request_id=lambda: uuid.uuid4().hex,
        monotonic=time.monotonic,
        tools={},
    )
    request = ChatRequest(messages=(Message.text("user", QUESTION),), request_id=f"turn-{user_id}")
    service.handle(user_id, request, datetime.now(UTC))
    writes = [call for call in counter.log if call.name == "update_turn"]
    return Progress(
        backend=backend.name,
        flow=flow,
        interval=interval,
        tokens=tokens,
        seconds=model.seconds,
        text_writes=len(writes),
        stop_checks=counter.calls["stop_requested"],
        http_requests=(
            counter.http["update_turn"] + counter.http["stop_requested"]
            if backend.http_log is not None
            else None
        ),
        text_written=sum(len(call.args[1].get("content", "")) for call in writes),
    )


def measure(seconds: float = 4.0) -> list[Progress]:
    tokens = round(seconds * TOKENS_PER_SECOND)
    results: list[Progress] = []
    for opened in (_sqlite, _appwrite):
        with opened() as backend:
            results.append(stream_turn(backend, "ours", PROGRESS_INTERVAL, tokens))
            results.append(stream_turn(backend, "naive: every delta", 0.0, tokens))
    return results


def render(results: list[Progress]) -> str:
    table = Table(
        [
            "store",
            "flow",
            "interval s",
            "tokens",
            "stream s",
            "text writes",
            "stop checks",
            "HTTP requests",
            "calls per s",
            "text written, KB",
            "naive / ours (calls per s)",
            "naive / ours (KB)",
            "naive / ours (stream s)",
        ]
    )
    for ours, naive in zip(results[::2], results[1::2], strict=True):
        for result in (ours, naive):
            table.add(
                result.backend,
                result.flow,
                result.interval,
                result.tokens,
                round(result.seconds, 2),
                result.text_writes,
                result.stop_checks,
                "-" if result.http_requests is None else result.http_requests,
                round(result.writes_per_second, 1),
                round(result.text_written / 1000, 1),
                ratio(result.writes_per_second, ours.writes_per_second),
                ratio(result.text_written, ours.text_written),
                ratio(result.seconds, ours.seconds),
            )
    pace = (
        f"A reply of one-token deltas at {TOKENS_PER_SECOND} tokens/s. Calls per second: the"
        " progress calls (text writes and stop checks) over the model call's duration. The naive"
        " baseline is the same service with an interval of 0: a text write at every delta and a"
        " stop check at every event the SDK yields (two per delta: the raw delta and its text"
        f" event). On the Appwrite emulator each HTTP request waits {ROUND_TRIP_MS:g} ms, in the"
        " thread that reads the stream. The final state is written by the settle, in its"
        " transaction, and is not counted here."
    )
    return pace + "\n\n" + table.render()


def run(quick: bool) -> str:
    return render(measure(seconds=1.0 if quick else 4.0))
