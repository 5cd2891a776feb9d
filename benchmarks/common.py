"""What every benchmark shares: counting proxies, fake model clients, markdown tables."""

from __future__ import annotations

import random
import threading
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from metering.chat import ChatSettings
from metering.model import (
    STOP_MAX_TOKENS,
    ModelReply,
    ModelRequest,
    TextBlock,
    request_input_bound,
)
from metering.ports import Page
from metering.tokens import TokenUsage

MODEL = "claude-sonnet-5-5"


def chat_settings(system_prompt: str, max_steps: int) -> ChatSettings:
    """The benchmarks' chat: ``MODEL``, up to 1,024 output tokens, at least 16 of room."""
    return ChatSettings(
        model=MODEL,
        max_tokens=1024,
        min_output_tokens=16,
        system_prompt=system_prompt,
        max_steps=max_steps,
    )


class CallCounter:
    """Counts calls by method name (and items returned in pages), safely across threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.calls: Counter[str] = Counter()
        self.rows_read = 0

    def record(self, name: str, result: object) -> None:
        with self._lock:
            self.calls[name] += 1
            if isinstance(result, Page):
                self.rows_read += len(result.items)
            elif result is not None and name.startswith(("get_", "find_", "read_")):
                self.rows_read += 1

    @property
    def total(self) -> int:
        return sum(self.calls.values())


class CountingProxy:
    """Wraps any store and counts every public method call it forwards."""

    def __init__(self, inner: object, counter: CallCounter | None = None) -> None:
        self._inner = inner
        self.counter = counter or CallCounter()

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self._inner, name)
        if name.startswith("_") or not callable(attribute):
            return attribute
        counter = self.counter

        def counted(*args: Any, **kwargs: Any) -> Any:
            result = attribute(*args, **kwargs)
            counter.record(name, result)
            return result

        return counted


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

    def complete(self, request: ModelRequest) -> ModelReply:
        with self._lock:
            delay = self._random.uniform(*self.latency_ms) / 1000
            wanted = self._random.randint(*self.output_tokens)
        time.sleep(delay)
        output = min(wanted, request.max_tokens)
        usage = TokenUsage(
            input_tokens=self.count_tokens(request),
            output_tokens=output,
            steps=1,
        )
        stop = STOP_MAX_TOKENS if wanted > request.max_tokens else "end_turn"
        return ModelReply(blocks=(TextBlock("ok"),), stop_reason=stop, usage=usage, model=MODEL)

    def count_tokens(self, request: ModelRequest) -> int:
        # The provider bills exactly what its counting endpoint says, well under the local bound.
        return max(1, request_input_bound(request) // 2)


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
