"""The one edge every function's ``main`` runs through: the method check, the error map and one
structured log line per outcome."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from .errors import InvalidRequest, MeteringError, RateLimited, TokenLimitExceeded
from .wire import Json, usage_stats

GENERIC_SERVER_MESSAGE = "Something went wrong on our side. Please try again."


class Request(Protocol):
    """What a handler reads of open-runtimes' ``context.req``."""

    @property
    def method(self) -> str: ...

    @property
    def path(self) -> str: ...

    @property
    def headers(self) -> Mapping[str, str]: ...

    @property
    def body_binary(self) -> bytes: ...


class Response(Protocol):
    def json(self, obj: Any, status_code: int = 200, headers: dict[str, str] | None = None) -> Any:
        """open-runtimes' ``context.res.json``."""


class Context(Protocol):
    @property
    def req(self) -> Request: ...

    @property
    def res(self) -> Response: ...

    def log(self, message: Any) -> None: ...

    def error(self, message: Any) -> None: ...


@dataclass
class Answer:
    """What a handler answers: the body, its status and the outcome its log line names."""

    body: Json
    status: int = 200
    outcome: str = "completed"


@dataclass
class LogLine:
    """The fields of the execution's one log line, filled in by the handler as it learns them
    (ids, token counts), so that a refusal is logged with whatever was known by then."""

    fields: dict[str, Any] = field(default_factory=dict)
    # Lines of their own before the outcome's, one per finding an operator greps for (a drift).
    notes: list[dict[str, Any]] = field(default_factory=list)

    def add(self, **fields: Any) -> None:
        self.fields.update(fields)

    def note(self, event: str, **fields: Any) -> None:
        self.notes.append({"event": event, **fields})


Handler = Callable[[Request, LogLine], Answer]


def error_body(error: MeteringError) -> tuple[int, Json]:
    """Status and body for a domain error; server errors never carry exception text."""
    status = error.status
    message = error.message if status < 500 else GENERIC_SERVER_MESSAGE
    code = error.code if status != 500 else "internal"
    body: Json = {"error": {"code": code, "message": message}}
    if error.details and status < 500:
        body["error"]["details"] = error.details
    if isinstance(error, TokenLimitExceeded):
        if error.reason is not None:
            remaining = error.account.remaining if error.account is not None else 0
            body["error"]["details"] = [{"reason": error.reason, "remaining": remaining}]
        if error.account is not None:
            body["usage"] = usage_stats(error.account)
    if isinstance(error, RateLimited):
        body["error"]["retryAfter"] = error.retry_after
        body["error"]["details"] = [{"reason": error.reason, "limit": error.limit}]
    return status, body


def error_headers(error: MeteringError) -> dict[str, str]:
    """Headers a refusal answers beside its body: when a rate-limited request may come again."""
    if isinstance(error, RateLimited):
        return {"retry-after": str(error.retry_after)}
    return {}


def serve(
    context: Context, function: str, methods: tuple[str, ...] | None, handler: Handler
) -> Any:
    """Run ``handler`` for a request with one of ``methods`` (None: any) and always answer JSON:
    domain errors map by their class, anything else is logged with its type and answered as a
    bare 500.
    """
    line = LogLine()
    headers: dict[str, str] = {}
    try:
        _check_method(function, context.req.method, methods)
        answer = handler(context.req, line)
        status, body, outcome = answer.status, answer.body, answer.outcome
    except MeteringError as error:
        status, body = error_body(error)
        headers = error_headers(error)
        outcome = "failed" if status >= 500 else "rejected"
        line.add(code=error.code, status=status)
        if isinstance(error, RateLimited):
            line.add(reason=error.reason, retryAfter=error.retry_after)
        if status >= 500:
            context.error(f"{function} failed: {type(error).__name__}: {error.message}")
    except Exception as error:  # noqa: BLE001 -- the last line of defence: never an empty 500
        context.error(f"{function} crashed: {type(error).__name__}: {error}")
        status, body = error_body(MeteringError())
        outcome = "failed"
        line.add(code="internal", status=status)
    for note in line.notes:
        context.log(_compact(note))
    context.log(_compact({"event": f"{function}.{outcome}", **line.fields}))
    # res.json mutates the headers it is given: a fresh dict every time.
    return context.res.json(body, status, {"cache-control": "no-store", **headers})


def _check_method(function: str, method: str, methods: tuple[str, ...] | None) -> None:
    if methods is not None and method not in methods:
        raise InvalidRequest(f"{function} accepts {' or '.join(methods)} requests only")


def _compact(line: Mapping[str, Any]) -> str:
    return json.dumps(line, separators=(",", ":"), default=str)
