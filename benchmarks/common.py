"""What every benchmark shares: counting proxies, fake model clients, scripted streams and
markdown tables."""

from __future__ import annotations

import random
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from metering.chat import ChatSettings
from metering.model import (
    STOP_MAX_TOKENS,
    ModelReply,
    ModelRequest,
    StreamedCall,
    StreamSink,
    TextBlock,
    request_input_bound,
)
from metering.ports import Page
from metering.tokens import TokenUsage

from tests.support.anthropic_fake import Event, message_delta, message_document, usage_document

MODEL = "claude-sonnet-5-5"
# The default of CHAT_PROGRESS_INTERVAL_SECONDS: how often a streaming turn writes and looks.
PROGRESS_INTERVAL = 0.25
# A function and its database in one region: a few milliseconds per HTTP request, taken as fixed
# where a benchmark simulates the network (Appwrite only; SQLite is local).
ROUND_TRIP_MS = 10.0
# The store calls a streaming turn makes between its atomic changes: its text, and the Stop.
PROGRESS_METHODS = frozenset({"update_turn", "stop_requested"})


def chat_settings(
    system_prompt: str, max_steps: int, progress_interval: float = PROGRESS_INTERVAL
) -> ChatSettings:
    """The benchmarks' chat: ``MODEL``, up to 1,024 output tokens, at least 16 of room."""
    return ChatSettings(
        model=MODEL,
        max_tokens=1024,
        min_output_tokens=16,
        system_prompt=system_prompt,
        max_steps=max_steps,
        progress_interval_seconds=progress_interval,
    )


@dataclass(frozen=True)
class StoreCall:
    """One store call as forwarded, with the HTTP requests it made (on the emulator)."""

    name: str
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    http: tuple[Any, ...] = ()
    at: float = 0.0  # time.perf_counter() when it returned


class CallCounter:
    """Counts calls by method name (and items returned in pages), safely across threads; with
    ``keep``, also keeps each call (arguments, HTTP requests) for a closer look."""

    def __init__(self, *, keep: bool = False) -> None:
        self._lock = threading.Lock()
        self.calls: Counter[str] = Counter()
        self.http: Counter[str] = Counter()
        self.rows_read = 0
        self.keep = keep
        self.log: list[StoreCall] = []

    def record(self, name: str, result: object, call: StoreCall | None = None) -> None:
        with self._lock:
            self.calls[name] += 1
            if call is not None:
                self.http[name] += len(call.http)
                if self.keep:
                    self.log.append(call)
            if isinstance(result, Page):
                self.rows_read += len(result.items)
            elif result is not None and name.startswith(("get_", "find_", "read_")):
                self.rows_read += 1

    @property
    def total(self) -> int:
        return sum(self.calls.values())

    def snapshot(self) -> tuple[int, int]:
        """(store calls, HTTP requests) so far."""
        with self._lock:
            return self.total, sum(self.http.values())


class CountingProxy:
    """Wraps any store and counts every public method call it forwards.

    With ``http_log`` (the emulator's list of requests it answered) each call also counts the
    HTTP requests it made; only meaningful while one thread uses the emulator. With
    ``round_trip_seconds`` each call then waits that long per HTTP request it made (per call
    without a log): a network between the function and its database, simulated.
    """

    def __init__(
        self,
        inner: object,
        counter: CallCounter | None = None,
        http_log: Callable[[], Sequence[Any]] | None = None,
        round_trip_seconds: float = 0.0,
    ) -> None:
        self._inner = inner
        self.counter = counter or CallCounter()
        self._http_log = http_log
        self._round_trip = round_trip_seconds

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self._inner, name)
        if name.startswith("_") or not callable(attribute):
            return attribute
        counter = self.counter
        http_log = self._http_log
        round_trip = self._round_trip

        def counted(*args: Any, **kwargs: Any) -> Any:
            before = len(http_log()) if http_log is not None else 0
            result: Any = None
            try:
                result = attribute(*args, **kwargs)
            finally:
                call = _call(name, args, kwargs, http_log, before)
                if round_trip:
                    time.sleep(round_trip * (len(call.http) if http_log is not None else 1))
                counter.record(name, result, call)
            return result

        return counted


def _call(
    name: str,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    http_log: Callable[[], Sequence[Any]] | None,
    before: int,
) -> StoreCall:
    http = tuple(http_log()[before:]) if http_log is not None else ()
    return StoreCall(name, args, kwargs, http, time.perf_counter())


class LatencyModel:
    """A ``ModelClient`` that takes a random few milliseconds and reports a random usage.

    The input it reports is a fraction of the local upper bound (real tokenizers count fewer
    tokens than bytes); the output never exceeds the request's ``max_tokens``, as with the API.
    """

    def __init__(
        self,
        seed: int,
        latency_ms: tuple[float, float] = (2.0, 8.0),
        output_tokens: tuple[int, int] = (50, 1024),
    ) -> None:
        self._random = random.Random(seed)
        self._lock = threading.Lock()
        self.latency_ms = latency_ms
        self.output_tokens = output_tokens

    def stream(
        self, request: ModelRequest, sink: StreamSink, deadline_seconds: float
    ) -> StreamedCall:
        with self._lock:
            delay = self._random.uniform(*self.latency_ms) / 1000
            wanted = self._random.randint(*self.output_tokens)
        time.sleep(delay)
        sink.text("ok")
        sink.should_stop()
        output = min(wanted, request.max_tokens)
        usage = TokenUsage(
            input_tokens=self.count_tokens(request),
            output_tokens=output,
            steps=1,
        )
        stop = STOP_MAX_TOKENS if wanted > request.max_tokens else "end_turn"
        reply = ModelReply(blocks=(TextBlock("ok"),), stop_reason=stop, usage=usage, model=MODEL)
        return StreamedCall(reply=reply, cut=False, output_reported=True)

    def count_tokens(self, request: ModelRequest) -> int:
        # The provider bills exactly what its counting endpoint says, well under the local bound.
        return max(1, request_input_bound(request) // 2)


# -- a long streamed reply from the Anthropic fake -----------------------------------------------

# One text delta is one token: four characters, as ``count_rule`` counts them.
DELTA_TEXT = " tok"


def paced_reply(tokens: int, input_tokens: int = 40) -> tuple[Event, ...]:
    """The SSE events of a reply of ``tokens`` text deltas of one token each; its final usage
    comes, as from the API, only on the closing ``message_delta``."""
    document = message_document([], usage_document(input_tokens, tokens))
    start = {**document, "stop_reason": None, "usage": {**document["usage"], "output_tokens": 1}}
    events: list[Event] = [
        ("message_start", {"type": "message_start", "message": start}),
        (
            "content_block_start",
            {
                "type": "content_block_start",
                "index": 0,
                "content_block": {"type": "text", "text": ""},
            },
        ),
    ]
    delta = {"type": "text_delta", "text": DELTA_TEXT}
    events += [
        ("content_block_delta", {"type": "content_block_delta", "index": 0, "delta": delta})
    ] * tokens
    events.append(("content_block_stop", {"type": "content_block_stop", "index": 0}))
    events.append(message_delta("end_turn", tokens))
    events.append(("message_stop", {"type": "message_stop"}))
    return tuple(events)


def count_rule(body: dict[str, Any]) -> int:
    """The fake's ``count_tokens``: a token per four characters of text, plus framing, so that
    the output of a cut call is measured as the tokens of the text it received."""
    tokens = 10
    for message in body["messages"]:
        content = message["content"]
        blocks = [{"text": content}] if isinstance(content, str) else content
        tokens += sum(
            len(str(block.get("text") or block.get("content") or "")) // 4 for block in blocks
        )
    return tokens


def text_deltas_among(events: Sequence[Event]) -> int:
    """How many of ``events`` are text deltas (tokens, in ``paced_reply``)."""
    return sum(1 for name, _ in events if name == "content_block_delta")


def ratio(numerator: float, denominator: float) -> str:
    """``numerator / denominator`` as ``12.3x``; each table says which way round it divides."""
    if numerator == 0 and denominator == 0:
        return "1.00x"
    if denominator == 0:
        return "inf"
    value = numerator / denominator
    return f"{value:,.0f}x" if value >= 100 else f"{value:.1f}x" if value >= 10 else f"{value:.2f}x"


@dataclass
class Table:
    """A markdown table with right-aligned numbers."""

    headers: Sequence[str]
    rows: list[Sequence[object]] = field(default_factory=list)

    def add(self, *cells: object) -> None:
        self.rows.append(cells)

    def render(self) -> str:
        text = [[_cell(cell) for cell in row] for row in self.rows]
        widths = [
            max([len(header), *(len(row[i]) for row in text)])
            for i, header in enumerate(self.headers)
        ]
        numeric = [
            all(_looks_numeric(row[i]) for row in text) and bool(text)
            for i in range(len(self.headers))
        ]

        def line(cells: Sequence[str]) -> str:
            padded = [
                cell.rjust(width) if right else cell.ljust(width)
                for cell, width, right in zip(cells, widths, numeric, strict=True)
            ]
            return "| " + " | ".join(padded) + " |"

        rule = [
            ("-" * (w - 1) + ":") if right else "-" * w
            for w, right in zip(widths, numeric, strict=True)
        ]
        return "\n".join([line(list(self.headers)), line(rule), *(line(row) for row in text)])


def _cell(value: object) -> str:
    if isinstance(value, float):
        return f"{value:,.1f}" if abs(value) >= 100 else f"{value:,.2f}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return str(value)


def _looks_numeric(text: str) -> bool:
    stripped = text.replace(",", "").replace(".", "").replace("%", "").rstrip("x").lstrip("-+")
    return stripped.isdigit() or text in ("inf", "n/a", "-")
