"""Faults injected at random, from a seeded RNG, into the store the functions use and into the
offline model, each one counted and named so that a 5xx it causes can be attributed to it.

``FaultyStore`` delegates every ``UsageStore`` method to the real store and, at a rate, either
raises ``StoreError`` before the call (nothing happened) or runs the call and raises after it
(it happened, its answer was lost). ``FaultyModel`` is the offline model refusing a call before
generating (529 overloaded, 500 api error) or breaking a stream mid-way (cut without
``message_stop``, or an ``error`` event). A fault remembers the execution it happened in (the
runtime runs each execution in a thread named ``exec-<execution id>``) and, for the model, the
soak request ids its prompt names.
"""

from __future__ import annotations

import functools
import json
import random
import re
import threading
from collections import Counter
from collections.abc import Callable, Generator, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, TypeVar

from metering.errors import StoreError
from metering.ports import UsageStore

from localruntime.offline_model import ModelApiError, OfflineModel

T = TypeVar("T")

# How a soak names its chat requests inside the prompt, so that a model fault finds them.
REQUEST_ID_PATTERN = re.compile(r"\bsoak-[0-9a-f]{8,32}\b")
_EXECUTION_THREAD = "exec-"


class FaultKind(StrEnum):
    STORE_BEFORE = "store_before"  # the call never ran
    STORE_AFTER = "store_after"  # the call ran, its answer was lost
    MODEL_OVERLOADED = "model_529"  # refused before generating: nothing to charge
    MODEL_ERROR = "model_500"
    MODEL_CUT = "model_cut"  # the stream ends mid-way without message_stop
    MODEL_ERROR_EVENT = "model_error_event"  # an error event mid-stream

    @property
    def refusal(self) -> bool:
        """A refusal before generating: the only model faults a 5xx may follow from."""
        return self in (FaultKind.MODEL_OVERLOADED, FaultKind.MODEL_ERROR)


@dataclass(frozen=True)
class InjectedFault:
    number: int
    kind: FaultKind
    target: str  # the store method, or the model call
    execution_id: str | None  # the execution whose thread it happened in
    request_ids: tuple[str, ...] = ()  # the soak request ids the model call's prompt names


def current_execution_id() -> str | None:
    """The execution the calling thread runs, when it is an execution's thread."""
    name = threading.current_thread().name
    return name[len(_EXECUTION_THREAD) :] if name.startswith(_EXECUTION_THREAD) else None


class Faults:
    """The seeded dice and the record of every fault injected; off until ``enabled``."""

    def __init__(self, seed: int, *, store_rate: float, model_rate: float) -> None:
        self.store_rate = store_rate
        self.model_rate = model_rate
        self.enabled = False
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self._injected: list[InjectedFault] = []

    def roll(self, rate: float) -> bool:
        with self._lock:
            return self.enabled and self._rng.random() < rate

    def choose(self, kinds: Sequence[FaultKind]) -> FaultKind:
        with self._lock:
            return self._rng.choice(kinds)

    def randint(self, low: int, high: int) -> int:
        with self._lock:
            return self._rng.randint(low, high)

    def record(
        self, kind: FaultKind, target: str, request_ids: tuple[str, ...] = ()
    ) -> InjectedFault:
        with self._lock:
            fault = InjectedFault(
                len(self._injected) + 1, kind, target, current_execution_id(), request_ids
            )
            self._injected.append(fault)
            return fault

    @property
    def injected(self) -> list[InjectedFault]:
        with self._lock:
            return list(self._injected)

    def by_kind(self) -> Counter[str]:
        return Counter(fault.kind.value for fault in self.injected)

    def explains(self, execution_id: str, request_id: str | None) -> InjectedFault | None:
        """A fault that can have made this execution fail: one injected in its own thread, or a
        model refusal of a call made for its request."""
        for fault in self.injected:
            if fault.execution_id == execution_id:
                return fault
            if request_id is not None and fault.kind.refusal and request_id in fault.request_ids:
                return fault
        return None


class InjectedStoreFault(StoreError):
    """What the store raises for an injected fault; the message names the fault."""


class FaultyStore:
    """A ``UsageStore`` that delegates every method to ``inner`` and fails at random (see the
    module). Delegating by name, as ``PublishingStore`` does, keeps it whole while the port
    grows: every public method of the store can fail."""

    def __init__(self, inner: UsageStore, faults: Faults) -> None:
        self._inner = inner
        self._faults = faults

    def __getattr__(self, name: str) -> Any:
        target = getattr(self._inner, name)
        if name.startswith("_") or not callable(target):
            return target

        @functools.wraps(target)
        def call(*args: Any, **kwargs: Any) -> Any:
            return self._call(name, lambda: target(*args, **kwargs))

        return call

    def _call(self, name: str, call: Callable[[], T]) -> T:
        faults = self._faults
        if not faults.roll(faults.store_rate):
            return call()
        kind = faults.choose((FaultKind.STORE_BEFORE, FaultKind.STORE_AFTER))
        if kind is FaultKind.STORE_AFTER:
            call()
        fault = faults.record(kind, name)
        raise InjectedStoreFault(f"injected fault #{fault.number}: {kind.value} {name}")


_REFUSALS: Mapping[FaultKind, tuple[int, str, str]] = {
    FaultKind.MODEL_OVERLOADED: (529, "overloaded_error", "Overloaded"),
    FaultKind.MODEL_ERROR: (500, "api_error", "Internal server error"),
}
_MODEL_KINDS = (
    FaultKind.MODEL_OVERLOADED,
    FaultKind.MODEL_ERROR,
    FaultKind.MODEL_CUT,
    FaultKind.MODEL_ERROR_EVENT,
)
# A broken stream breaks after this many events at the most (a reply is a few dozen).
_MAX_EVENTS_BEFORE_BREAK = 40


class FaultyModel(OfflineModel):
    """The offline model, failing streamed calls at ``faults.model_rate`` (see the module)."""

    def __init__(self, faults: Faults, tokens_per_second: float = 0.0) -> None:
        super().__init__(tokens_per_second)
        self._faults = faults

    def stream_message(self, request: dict[str, Any]) -> Generator[bytes, None, None]:
        faults = self._faults
        if not faults.roll(faults.model_rate):
            return super().stream_message(request)
        kind = faults.choose(_MODEL_KINDS)
        request_ids = _request_ids(request)
        refusal = _REFUSALS.get(kind)
        if refusal is not None:
            fault = faults.record(kind, "messages", request_ids)
            status, error_type, message = refusal
            raise ModelApiError(status, error_type, f"{message} (injected fault #{fault.number})")
        events = super().stream_message(request)
        return self._broken(events, kind, request_ids, faults.randint(2, _MAX_EVENTS_BEFORE_BREAK))

    def _broken(
        self,
        events: Generator[bytes, None, None],
        kind: FaultKind,
        request_ids: tuple[str, ...],
        break_after: int,
    ) -> Generator[bytes, None, None]:
        try:
            for sent, event in enumerate(events):
                if sent == break_after:
                    fault = self._faults.record(kind, "messages", request_ids)
                    if kind is FaultKind.MODEL_ERROR_EVENT:
                        body = {
                            "type": "error",
                            "error": {
                                "type": "overloaded_error",
                                "message": f"Overloaded (injected fault #{fault.number})",
                            },
                        }
                        yield f"event: error\ndata: {json.dumps(body)}\n\n".encode()
                    return
                yield event
        finally:
            events.close()


def _request_ids(request: Mapping[str, Any]) -> tuple[str, ...]:
    """The soak request ids named anywhere in the call's messages."""
    found = REQUEST_ID_PATTERN.findall(json.dumps(request.get("messages", [])))
    return tuple(dict.fromkeys(found))
