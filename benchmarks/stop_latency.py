"""Stop: how soon a streamed turn's model call closes once its stop row exists, and what it is
charged beyond the text it had delivered; against the baseline "Stop only in the browser", where
the server never learns of the Stop and the whole reply is generated and charged.
"""

from __future__ import annotations

import statistics
import tempfile
import threading
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
from metering.model import Message
from metering.plans import load_default_plans
from metering.ports import UsageStore
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
    text_deltas_among,
)
from localruntime.sqlite_store import SQLiteStore
from tests.support.anthropic_fake import FakeAnthropic, SSEBody, Streamed
from tests.support.appwrite_emulator import emulated_appwrite

TOKENS_PER_SECOND = 50
OURS = "ours: Stop row, checked every interval"
BROWSER = "baseline: Stop only in the browser"
_POLL = 0.001


@dataclass(frozen=True)
class StopRun:
    """One streamed turn stopped once its stream had sent ``delivered`` text tokens."""

    backend: str
    flow: str
    reply_tokens: int  # the reply the model would have written in full
    delivered: int  # text tokens the stream had sent when the stop row was created
    sent: int  # text tokens the stream sent in all
    charged_output: int  # on the settled ledger entry
    reservation: int  # the call's hold
    close_seconds: float  # from the stop to the stream's close
    status: str  # of the turn once settled
    estimated: bool

    @property
    def overcharge(self) -> int:
        return self.charged_output - self.delivered

    @property
    def close_intervals(self) -> float:
        return self.close_seconds / PROGRESS_INTERVAL


@dataclass(frozen=True)
class _Backend:
    name: str
    store: Callable[[], UsageStore]
    http_log: Callable[[], Sequence[Any]] | None


@contextmanager
def _sqlite() -> Iterator[_Backend]:
    with tempfile.TemporaryDirectory(prefix="bench-stop-") as folder:
        path = str(Path(folder) / "usage.sqlite3")
        yield _Backend("SQLite", lambda: SQLiteStore(path), None)


@contextmanager
def _appwrite() -> Iterator[_Backend]:
    with emulated_appwrite() as emulator:
        settings = emulator.store_settings()
        yield _Backend(
            "Appwrite emulator",
            lambda: AppwriteStore.connect(settings, emulator.api_key),
            lambda: emulator.calls,
        )


def _wait(condition: Callable[[], bool], timeout: float = 30.0) -> None:
    until = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > until:
            raise TimeoutError("the streamed turn did not get there in time")
        time.sleep(_POLL)


def stopped_turn(backend: _Backend, reply_tokens: int, stop_at: int, *, in_store: bool) -> StopRun:
    """Stream a turn of ``reply_tokens`` and stop it once ``stop_at`` tokens were sent: with a
    stop row (ours) or, ``in_store`` False, only in the browser (the stream runs on)."""
    user_id = f"stop-{uuid.uuid4().hex[:8]}"
    request_id = f"turn-{user_id}"
    other = backend.store()  # the stop path's execution, and the reader of the outcome
    other.create_account(new_account(user_id, load_default_plans().get("pro"), datetime.now(UTC)))
    fake = FakeAnthropic(count_tokens=count_rule).then(
        Streamed(paced_reply(reply_tokens), delay_seconds=1 / TOKENS_PER_SECOND)
    )
    counter = CallCounter(keep=True)
    round_trip = ROUND_TRIP_MS / 1000 if backend.http_log is not None else 0.0
    service = ChatService(
        store=cast(
            UsageStore, CountingProxy(backend.store(), counter, backend.http_log, round_trip)
        ),
        model=AnthropicModel.connect("sk-ant-bench", max_retries=0, http_client=fake.client()),
        plans=load_default_plans(),
        prices=load_default_prices(),
        settings=chat_settings("You are a storyteller.", max_steps=1),
        new_request_id=lambda: uuid.uuid4().hex,
        monotonic=time.monotonic,
        tools={},
    )
    request = ChatRequest(
        messages=(Message.text("user", "Tell me a long story."),), request_id=request_id
    )
    failures: list[BaseException] = []

    def turn() -> None:
        try:
            service.handle(user_id, request, datetime.now(UTC))
        except BaseException as exc:  # reported by the caller's thread
            failures.append(exc)

    worker = threading.Thread(target=turn, name="streamed-turn")
    worker.start()
    _wait(lambda: bool(fake.streams) or bool(failures))
    if failures:
        raise failures[0]
    body: SSEBody = fake.streams[0]
    _wait(lambda: text_deltas_among(body.events[: body.sent]) >= stop_at)
    if in_store:
        other.request_stop(request_id, user_id, datetime.now(UTC))
    stopped = time.perf_counter()
    delivered = text_deltas_among(body.events[: body.sent])
    _wait(lambda: body.closed)
    closed = time.perf_counter()
    worker.join()
    if failures:
        raise failures[0]
    entry = other.get_ledger(request_id)
    turn_row = other.get_turn(request_id)
    assert entry is not None
    assert turn_row is not None
    opened = next(call for call in counter.log if call.name == "open_request")
    return StopRun(
        backend=backend.name,
        flow=OURS if in_store else BROWSER,
        reply_tokens=reply_tokens,
        delivered=delivered,
        sent=text_deltas_among(body.events[: body.sent]),
        charged_output=entry.usage.output_tokens,
        reservation=opened.args[0].held_tokens,
        close_seconds=closed - stopped,
        status=str(turn_row.status),
        estimated=entry.estimated,
    )


def measure(reply_tokens: int = 200, stops: int = 5) -> list[StopRun]:
    """``stops`` stops of ours a few tokens apart (so they fall at every phase of the progress
    interval) and one browser-only stop, per store, all about a quarter into the reply."""
    first = reply_tokens // 4
    # Tokens streamed per progress interval, shared out between the stops.
    spacing = PROGRESS_INTERVAL * TOKENS_PER_SECOND / stops
    runs: list[StopRun] = []
    for opened in (_sqlite, _appwrite):
        with opened() as backend:
            for number in range(stops):
                stop_at = first + round(number * spacing)
                runs.append(stopped_turn(backend, reply_tokens, stop_at, in_store=True))
            runs.append(stopped_turn(backend, reply_tokens, first, in_store=False))
    return runs


def render(runs: list[StopRun]) -> str:
    table = Table(
        [
            "store",
            "flow",
            "stops",
            "reply tokens",
            "delivered before the stop",
            "charged output",
            "overcharge",
            "reservation",
            "overcharge / reservation",
            "stop to close, s",
            "stop to close, intervals (max)",
            "turn",
        ]
    )
    summary = Table(
        [
            "store",
            "overcharge browser / ours",
            "stop to close browser / ours",
            "charged output browser / ours",
        ]
    )
    for backend in dict.fromkeys(run.backend for run in runs):
        ours = [run for run in runs if run.backend == backend and run.flow == OURS]
        browser = [run for run in runs if run.backend == backend and run.flow == BROWSER]
        means: dict[str, dict[str, float]] = {}
        for flow, group in ((OURS, ours), (BROWSER, browser)):
            figures = {
                "delivered": statistics.fmean(r.delivered for r in group),
                "charged": statistics.fmean(r.charged_output for r in group),
                "overcharge": statistics.fmean(r.overcharge for r in group),
                "reservation": statistics.fmean(r.reservation for r in group),
                "close": statistics.fmean(r.close_seconds for r in group),
                "intervals": statistics.fmean(r.close_intervals for r in group),
                "worst": max(r.close_intervals for r in group),
            }
            means[flow] = figures
            statuses = ", ".join(
                sorted({r.status + (" (estimated)" if r.estimated else "") for r in group})
            )
            table.add(
                backend,
                flow,
                len(group),
                group[0].reply_tokens,
                round(figures["delivered"], 1),
                round(figures["charged"], 1),
                round(figures["overcharge"], 1),
                round(figures["reservation"]),
                f"{100 * figures['overcharge'] / figures['reservation']:.2f}%",
                round(figures["close"], 3),
                f"{figures['intervals']:.2f} ({figures['worst']:.2f})",
                statuses,
            )
        summary.add(
            backend,
            ratio(means[BROWSER]["overcharge"], means[OURS]["overcharge"]),
            ratio(means[BROWSER]["close"], means[OURS]["close"]),
            ratio(means[BROWSER]["charged"], means[OURS]["charged"]),
        )
    heading = (
        f"A reply of one-token deltas at {TOKENS_PER_SECOND} tokens/s, stopped about a quarter"
        " in; means over the stops. Delivered: text tokens the stream had sent when the stop row"
        " was created (for the baseline: when the browser stopped showing them). Overcharge:"
        " charged output minus delivered. Stop to close: from the stop row's creation to the"
        f" model stream's close, also in progress intervals of {PROGRESS_INTERVAL:g} s. On the"
        f" Appwrite emulator each HTTP request of the streaming execution waits {ROUND_TRIP_MS:g}"
        " ms."
    )
    return heading + "\n\n" + table.render() + "\n\n" + summary.render()


def run(quick: bool) -> str:
    return render(measure(reply_tokens=60, stops=1) if quick else measure())
