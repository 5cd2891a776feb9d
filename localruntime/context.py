"""Context objects that behave like open-runtimes' for Python: what ``main(context)`` receives.

The request keeps the raw bytes; ``body_text`` raises on non-UTF-8 and ``body_json`` on bad JSON,
as the real runtime does. Each ``res.*`` call returns the dict ``main`` must return.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import traceback
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl

LOG_LIMIT = 8000


class RuntimeRequest:
    def __init__(
        self,
        *,
        method: str = "GET",
        path: str = "/",
        headers: Mapping[str, str] | None = None,
        body: bytes = b"",
        query_string: str = "",
        scheme: str = "http",
        host: str = "localhost",
        port: int = 80,
    ) -> None:
        self.method = method.upper()
        self.path = path or "/"
        self.headers = {key.lower(): value for key, value in (headers or {}).items()}
        self._body = body
        self.query_string = query_string
        self.query = dict(parse_qsl(query_string, keep_blank_values=True))
        self.scheme = scheme
        self.host = host
        self.port = port

    @property
    def url(self) -> str:
        default_port = (self.scheme == "http" and self.port == 80) or (
            self.scheme == "https" and self.port == 443
        )
        port = "" if default_port else f":{self.port}"
        query = f"?{self.query_string}" if self.query_string else ""
        return f"{self.scheme}://{self.host}{port}{self.path}{query}"

    @property
    def body_binary(self) -> bytes:
        return self._body

    @property
    def body_raw(self) -> str:
        return self.body_text

    @property
    def body_text(self) -> str:
        return self._body.decode("utf-8")

    @property
    def body_json(self) -> Any:
        return json.loads(self.body_text)

    @property
    def body(self) -> Any:
        content_type = self.headers.get("content-type", "")
        if content_type.startswith("application/json"):
            return self.body_json if self._body else {}
        return self.body_text


class RuntimeResponse:
    def binary(
        self, data: bytes, status_code: int = 200, headers: dict[str, str] | None = None
    ) -> dict[str, Any]:
        return {"body": data, "statusCode": status_code, "headers": headers or {}}

    def send(
        self, body: str, status_code: int = 200, headers: dict[str, str] | None = None
    ) -> dict[str, Any]:
        return self.text(body, status_code, headers)

    def text(
        self, body: str, status_code: int = 200, headers: dict[str, str] | None = None
    ) -> dict[str, Any]:
        return self.binary(body.encode("utf-8"), status_code, headers)

    def json(
        self, obj: Any, status_code: int = 200, headers: dict[str, str] | None = None
    ) -> dict[str, Any]:
        # Like the real runtime, this mutates the headers dict it is given.
        headers = {} if headers is None else headers
        headers["content-type"] = "application/json"
        return self.text(json.dumps(obj, separators=(",", ":")), status_code, headers)

    def empty(self) -> dict[str, Any]:
        return self.text("", 204, {})

    def redirect(
        self, url: str, status_code: int = 301, headers: dict[str, str] | None = None
    ) -> dict[str, Any]:
        headers = {} if headers is None else headers
        headers["location"] = url
        return self.text("", status_code, headers)


@dataclass
class RuntimeContext:
    req: RuntimeRequest
    res: RuntimeResponse = field(default_factory=RuntimeResponse)
    logs: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def log(self, message: Any) -> None:
        self.logs.append(_render(message)[:LOG_LIMIT])

    def error(self, message: Any) -> None:
        self.errors.append(_render(message)[:LOG_LIMIT])


def _render(message: Any) -> str:
    if isinstance(message, dict | list):
        return json.dumps(message)
    return str(message)


@dataclass(frozen=True)
class RuntimeResult:
    status_code: int
    body: bytes
    headers: dict[str, str]
    logs: list[str]
    errors: list[str]

    def json(self) -> Any:
        return json.loads(self.body)


def execute(main: Callable[[RuntimeContext], Any], context: RuntimeContext) -> RuntimeResult:
    """Run ``main`` as open-runtimes does: sync or async; an exception or a missing return is an
    empty 500 with the traceback in the error log."""
    try:
        output = main(context)
        if inspect.isawaitable(output):
            output = asyncio.run(_await(output))
    except Exception:  # noqa: BLE001 -- the runtime turns any crash into an empty 500
        context.error(traceback.format_exc())
        output = None
    if not isinstance(output, dict) or "statusCode" not in output:
        if output is None:
            context.error("Return statement missing. return context.res.empty() if no response.")
        return RuntimeResult(500, b"", {}, context.logs, context.errors)
    headers = {str(k).lower(): str(v) for k, v in (output.get("headers") or {}).items()}
    body = output.get("body", b"")
    if isinstance(body, str):
        body = body.encode("utf-8")
    return RuntimeResult(int(output["statusCode"]), body, headers, context.logs, context.errors)


async def _await(awaitable: Any) -> Any:
    return await awaitable
