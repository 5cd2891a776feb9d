"""The one place where errors become HTTP responses, and the JSON shapes of error bodies."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from .errors import MeteringError, TokenLimitExceeded

Json = dict[str, Any]
GENERIC_SERVER_MESSAGE = "Something went wrong on our side. Please try again."


class Response(Protocol):
    def json(self, obj: Any, status_code: int = 200, headers: dict[str, str] | None = None) -> Any:
        """open-runtimes' ``context.res.json``."""


class Context(Protocol):
    @property
    def res(self) -> Response: ...

    def log(self, message: Any) -> None: ...

    def error(self, message: Any) -> None: ...


def error_body(error: MeteringError) -> tuple[int, Json]:
    """Status and body for a domain error; server errors never carry exception text."""
    status = error.status
    message = error.message if status < 500 else GENERIC_SERVER_MESSAGE
    code = error.code if status != 500 else "internal"
    body: Json = {"error": {"code": code, "message": message}}
    if error.details and status < 500:
        body["error"]["details"] = error.details
    if isinstance(error, TokenLimitExceeded) and error.usage is not None:
        body["usage"] = error.usage
    return status, body


def respond(context: Context, status: int, body: Json) -> Any:
    # res.json mutates the headers it is given: a fresh dict every time.
    return context.res.json(body, status, {"cache-control": "no-store"})


def run_handler(context: Context, event: str, handler: Callable[[], tuple[int, Json]]) -> Any:
    """Run ``handler`` and always answer JSON: domain errors map by their class, anything else is
    logged with its traceback and answered as a bare 500."""
    try:
        status, body = handler()
    except MeteringError as error:
        status, body = error_body(error)
        if status >= 500:
            context.error(f"{event} failed: {type(error).__name__}: {error.message}")
    except Exception as error:  # noqa: BLE001 -- the last line of defence: never an empty 500
        context.error(f"{event} crashed: {type(error).__name__}: {error}")
        status, body = error_body(MeteringError())
    return respond(context, status, body)
