"""Requests and replies as the runtime's routes see them, and Appwrite's error format."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

APPWRITE_VERSION = "1.9.5"
JSON_TYPE = "application/json"

Headers = list[tuple[str, str]]


class AppwriteError(Exception):
    """An Appwrite API error: ``{"message", "code", "type", "version"}`` with its status."""

    def __init__(self, status: int, error_type: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.type = error_type
        self.message = message

    def reply(self) -> Reply:
        body = {
            "message": self.message,
            "code": self.status,
            "type": self.type,
            "version": APPWRITE_VERSION,
        }
        return json_reply(self.status, body)


def invalid_param(name: str, reason: str) -> AppwriteError:
    return AppwriteError(400, "general_argument_invalid", f"Invalid `{name}` param: {reason}")


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    query_string: str
    # As received, in order, with their original case (duplicates kept).
    headers: Headers
    body: bytes
    client_ip: str

    def header(self, name: str) -> str | None:
        """The first header called ``name`` (any case)."""
        wanted = name.lower()
        for key, value in self.headers:
            if key.lower() == wanted:
                return value
        return None

    def cookie(self, name: str) -> str | None:
        # Split by hand: a browser on localhost carries other apps' cookies, and one value that
        # http.cookies finds malformed must not hide ours.
        for header in (value for key, value in self.headers if key.lower() == "cookie"):
            for pair in header.split(";"):
                key, sep, value = pair.strip().partition("=")
                if sep and key == name:
                    return value.strip().strip('"')
        return None

    def json(self) -> dict[str, Any]:
        """The body as a JSON object; an empty body is an empty object."""
        if not self.body.strip():
            return {}
        try:
            document = json.loads(self.body)
        except (UnicodeDecodeError, ValueError):
            raise AppwriteError(
                400, "general_argument_invalid", "The request body is not valid JSON."
            ) from None
        if not isinstance(document, dict):
            raise AppwriteError(
                400, "general_argument_invalid", "The request body must be a JSON object."
            )
        return document


@dataclass
class Reply:
    status: int
    body: bytes = b""
    headers: Headers = field(default_factory=list)


def json_reply(status: int, obj: Any, headers: Headers | None = None) -> Reply:
    body = json.dumps(obj, separators=(",", ":")).encode("utf-8")
    return Reply(status, body, [("Content-Type", JSON_TYPE), *(headers or [])])


def timestamp(at: datetime) -> str:
    """ISO-8601 with milliseconds and an explicit offset, as Appwrite writes dates."""
    return at.astimezone(UTC).isoformat(timespec="milliseconds")
