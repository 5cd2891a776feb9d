"""The local Appwrite Messaging: the emails the functions send land in an outbox (one SQLite file)
that the operator reads as Appwrite's REST list and as a page; nothing leaves the machine.
"""

from __future__ import annotations

import html
import json
import re
import secrets
import sqlite3
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

from .wire import AppwriteError, Reply, Request, invalid_param, json_reply, timestamp

# Appwrite's own limits of `createEmail` (its `Text` and `CustomId` validators).
SUBJECT_MAX = 998
CONTENT_MAX = 64230
LIST_LIMIT_MAX = 5000
_CUSTOM_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,35}$")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS messages (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    document TEXT NOT NULL
);
"""

Routes = list[tuple[str, re.Pattern[str], Callable[..., Reply]]]


def _missing_scope() -> AppwriteError:
    # What Appwrite answers a request without a key: a guest lacks the scope.
    return AppwriteError(
        401, "general_unauthorized_scope", 'User (role: guests) missing scopes (["messages.write"])'
    )


class Outbox:
    """``POST /v1/messaging/messages/email`` and ``GET /v1/messaging/messages`` in Appwrite's
    wire format (the SDK's ``Message`` and ``MessageList``), and the ``/outbox`` page.

    An email to ``users`` is delivered at once to their addresses (looked up with ``email_of``);
    a user without one is a delivery error, as on Appwrite. Every call must carry an API key,
    as a function's execution key does.
    """

    def __init__(
        self,
        path: Path,
        *,
        email_of: Callable[[str], str | None],
        clock: Callable[[], datetime],
    ) -> None:
        self._path = path
        self._email_of = email_of
        self._clock = clock
        self._lock = threading.Lock()
        with self._connection() as db:
            db.executescript(_SCHEMA)

    def routes(self) -> Routes:
        return [
            ("POST", re.compile(r"/v1/messaging/messages/email"), self.create_email),
            ("GET", re.compile(r"/v1/messaging/messages"), self.list_messages),
        ]

    # -- the REST surface ----------------------------------------------------------------------

    def create_email(self, request: Request) -> Reply:
        _require_key(request)
        params = request.json()
        message_id = _text(params, "messageId")
        if message_id == "unique()":
            message_id = secrets.token_hex(10)
        if not _CUSTOM_ID.match(message_id):
            raise invalid_param(
                "messageId",
                "Parameter must contain at most 36 chars. Valid chars are a-z, A-Z, 0-9, period, "
                "hyphen, and underscore. Can't start with a special char",
            )
        subject = _text(params, "subject", limit=SUBJECT_MAX)
        content = _text(params, "content", limit=CONTENT_MAX)
        users, topics, targets = (_ids(params, name) for name in ("users", "topics", "targets"))
        draft, is_html = _flag(params, "draft"), _flag(params, "html")
        if params.get("scheduledAt"):
            raise invalid_param("scheduledAt", "the local runtime sends messages at once")
        if not draft and not (users or topics or targets):
            raise AppwriteError(
                400,
                "message_missing_target",
                "Message with the requested ID has no recipients (topics or users or targets).",
            )
        document = self._document(
            message_id,
            subject=subject,
            content=content,
            is_html=is_html,
            users=users,
            topics=topics,
            targets=targets,
        )
        if draft:
            document.update(status="draft", deliveredAt=None, deliveredTotal=0)
        with self._connection() as db:
            try:
                db.execute(
                    "INSERT INTO messages (id, document) VALUES (?, ?)",
                    (message_id, json.dumps(document)),
                )
            except sqlite3.IntegrityError:
                raise AppwriteError(
                    409, "message_already_exists", "Message with the requested ID already exists."
                ) from None
        return json_reply(201, document)

    def list_messages(self, request: Request) -> Reply:
        _require_key(request)
        limit, offset, newest_first = _list_queries(request.query_string)
        documents = self.messages(newest_first=newest_first)
        page = documents[offset : offset + limit]
        return json_reply(200, {"total": len(documents), "messages": page})

    # -- the operator's page -------------------------------------------------------------------

    def page(self) -> Reply:
        rows = "".join(_page_row(document) for document in self.messages(newest_first=True))
        if not rows:
            rows = '<tr><td colspan="4">No email yet.</td></tr>'
        body = (
            '<!doctype html><html lang="en"><head><meta charset="utf-8">'
            "<title>Outbox (local)</title><style>"
            "body{font-family:system-ui,sans-serif;margin:2rem}table{border-collapse:collapse}"
            "td,th{border:1px solid #ccc;padding:.4rem .6rem;text-align:left;vertical-align:top}"
            "pre{white-space:pre-wrap;margin:0;max-width:60ch}"
            "</style></head><body><h1>Outbox</h1>"
            "<p>The emails the functions sent through Appwrite Messaging, newest first. This is "
            "the local runtime: nothing was delivered outside this machine.</p>"
            "<table><thead><tr><th>Sent</th><th>To</th><th>Subject</th><th>Content</th></tr>"
            f"</thead><tbody>{rows}</tbody></table></body></html>"
        )
        headers = [("Content-Type", "text/html; charset=utf-8"), ("Cache-Control", "no-store")]
        return Reply(200, body.encode("utf-8"), headers)

    def messages(self, *, newest_first: bool = False) -> list[dict[str, Any]]:
        """Every message document, in the order they were created (or the reverse)."""
        order = "DESC" if newest_first else "ASC"
        with self._connection() as db:
            rows = db.execute(f"SELECT document FROM messages ORDER BY seq {order}").fetchall()
        return [json.loads(row[0]) for row in rows]

    # -- plumbing ------------------------------------------------------------------------------

    def _document(
        self,
        message_id: str,
        *,
        subject: str,
        content: str,
        is_html: bool,
        users: list[str],
        topics: list[str],
        targets: list[str],
    ) -> dict[str, Any]:
        now = timestamp(self._clock())
        delivered, errors = [], []
        for user_id in users:
            address = self._email_of(user_id)
            if address:
                delivered.append(address)
            else:
                errors.append(f"User with ID {user_id} has no email target")
        # Topics and targets name nothing locally: they are kept, and reported undelivered.
        errors += [f"Topic {topic} is not served locally" for topic in topics]
        errors += [f"Target {target} is not served locally" for target in targets]
        return {
            "$id": message_id,
            "$createdAt": now,
            "$updatedAt": now,
            "providerType": "email",
            "topics": topics,
            "users": users,
            "targets": targets,
            "scheduledAt": None,
            "deliveredAt": now if delivered else None,
            "deliveryErrors": errors,
            "deliveredTotal": len(delivered),
            "data": {
                "subject": subject,
                "content": content,
                "html": is_html,
                "cc": [],
                "bcc": [],
                "attachments": [],
                # Not in Appwrite's document: the addresses the local delivery used.
                "to": delivered,
            },
            "status": "sent" if delivered else "failed",
        }

    @contextmanager
    def _connection(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            connection = sqlite3.connect(self._path)
            try:
                with connection:
                    yield connection
            finally:
                connection.close()


def _require_key(request: Request) -> None:
    if not request.header("x-appwrite-key"):
        raise _missing_scope()


def _text(params: Mapping[str, Any], name: str, *, limit: int | None = None) -> str:
    value = params.get(name)
    if value is None:
        raise AppwriteError(400, "general_argument_invalid", f'Param "{name}" is not optional.')
    if not isinstance(value, str) or (limit is not None and len(value) > limit):
        bound = f" and no longer than {limit} chars" if limit is not None else ""
        raise invalid_param(name, f"Value must be a valid string{bound}")
    return value


def _ids(params: Mapping[str, Any], name: str) -> list[str]:
    value = params.get(name, [])
    if not isinstance(value, list) or not all(
        isinstance(item, str) and _CUSTOM_ID.match(item) for item in value
    ):
        raise invalid_param(name, "Value must be a valid array of valid IDs")
    return list(value)


def _flag(params: Mapping[str, Any], name: str) -> bool:
    value = params.get(name, False)
    if not isinstance(value, bool):
        raise invalid_param(name, "Value must be a valid boolean")
    return value


def _list_queries(query_string: str) -> tuple[int, int, bool]:
    """``limit``, ``offset`` and the order (by creation) of the SDK's JSON queries."""
    limit, offset, newest_first = 25, 0, False
    for key, raw in parse_qsl(query_string, keep_blank_values=True):
        if not re.fullmatch(r"queries\[\d*\]", key):
            continue
        try:
            query = json.loads(raw)
            method, values = query["method"], query.get("values") or []
        except (ValueError, KeyError, TypeError):
            raise AppwriteError(400, "general_query_invalid", f"Invalid query: {raw}") from None
        if method in ("limit", "offset") and values and isinstance(values[0], int):
            number = values[0]
            if method == "limit" and 0 <= number <= LIST_LIMIT_MAX:
                limit = number
                continue
            if method == "offset" and number >= 0:
                offset = number
                continue
        if method in ("orderAsc", "orderDesc") and query.get("attribute") in (
            "$createdAt",
            "$sequence",
        ):
            newest_first = method == "orderDesc"
            continue
        raise AppwriteError(
            400, "general_query_invalid", f"Invalid query: the local outbox does not serve {raw}"
        )
    return limit, offset, newest_first


def _page_row(document: Mapping[str, Any]) -> str:
    data = document.get("data", {})
    recipients = data.get("to") or document.get("users", [])
    cells = (
        html.escape(str(document.get("$createdAt", ""))),
        html.escape(", ".join(str(item) for item in recipients)),
        html.escape(str(data.get("subject", ""))),
        f"<pre>{html.escape(str(data.get('content', '')))}</pre>",
    )
    return "<tr>" + "".join(f"<td>{cell}</td>" for cell in cells) + "</tr>"
