"""Appwrite Realtime at ``/v1/realtime``: the Web SDK's realtime client subscribes to rows over
one WebSocket and receives their changes, each only if its user may read the row.

wsproto does the WebSocket framing over the socket the HTTP server hands over after the upgrade
request; this module speaks the SDK 28 client's JSON messages on top of it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import socket
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qs, urlsplit

from metering import codec
from metering.account import Account, AccountPatch, ResetPlan
from metering.ledger import LedgerEntry, LedgerPatch
from metering.turns import Turn, TurnPatch
from wsproto import ConnectionType, WSConnection
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Ping,
    RejectConnection,
    TextMessage,
)
from wsproto.events import Request as WsRequest
from wsproto.utilities import LocalProtocolError, RemoteProtocolError

log = logging.getLogger("localruntime.realtime")

PATH = "/v1/realtime"
# The SDK stops reconnecting after an error with this code (a policy violation).
POLICY_VIOLATION = 1008
# What Appwrite answers a message it cannot act on; the connection stays open.
INVALID_MESSAGE = 1003
RECV_BYTES = 65536
# Messages the SDK sends are small (subscribe rows, a session secret): more is not a client.
MAX_MESSAGE = 1024 * 1024
_READ = re.compile(r'^read\("(?P<role>[^"]+)"\)$')

UserDocument = dict[str, Any]


@dataclass(frozen=True)
class Event:
    """One row change as the SDK receives it; ``permissions`` decide who receives it."""

    events: list[str]
    channels: list[str]
    payload: dict[str, Any]
    permissions: list[str]


def may_read(user_id: str | None, permissions: Iterable[str]) -> bool:
    """Appwrite's read roles: ``any``, ``guests`` (no user), ``users`` and ``user:<id>``."""
    for permission in permissions:
        found = _READ.match(permission)
        if found is None:
            continue
        role = found["role"]
        if role == "any" or (role == "guests" and user_id is None):
            return True
        if user_id is not None and role in ("users", f"user:{user_id}"):
            return True
    return False


def row_channels(database_id: str, table_id: str, row_id: str) -> list[str]:
    """Every name a subscriber may know the row by: the TablesDB channels (``tablesdb.`` is
    what the SDK's ``Channel.tablesdb(...)`` builds), the ``databases.`` ones and the shortcuts."""
    channels = ["rows", "documents"]
    for prefix, table, row in (
        ("tablesdb", "tables", "rows"),
        ("databases", "tables", "rows"),
        ("databases", "collections", "documents"),
    ):
        base = f"{prefix}.{database_id}.{table}.{table_id}.{row}"
        channels += [base, f"{base}.{row_id}"]
    return channels


def row_events(database_id: str, table_id: str, row_id: str, action: str) -> list[str]:
    return [
        f"{prefix}.{database_id}.{table}.{table_id}.{row}.{row_id}.{action}"
        for prefix, table, row in (
            ("tablesdb", "tables", "rows"),
            ("databases", "tables", "rows"),
            ("databases", "collections", "documents"),
        )
    ]


class Connection:
    """One client's socket: its user, its subscriptions, and a lock so that the hub's pushes
    and the reader's answers never interleave their frames."""

    def __init__(self, sock: socket.socket, ws: WSConnection, user: UserDocument | None) -> None:
        self.sock = sock
        self.ws = ws
        self.user = user
        # subscriptionId -> channels; "" holds the channels named in the handshake's query.
        self.subscriptions: dict[str, set[str]] = {}
        self._lock = threading.Lock()
        self.closed = False

    @property
    def user_id(self) -> str | None:
        return None if self.user is None else str(self.user["$id"])

    def send(self, message: dict[str, Any]) -> None:
        with self._lock:
            if self.closed:
                return
            try:
                self.sock.sendall(self.ws.send(TextMessage(data=json.dumps(message, default=str))))
            except (OSError, LocalProtocolError):
                self.closed = True

    def send_raw(self, data: bytes) -> None:
        with self._lock:
            if self.closed:
                return
            try:
                self.sock.sendall(data)
            except OSError:
                self.closed = True

    def error(self, code: int, message: str) -> None:
        self.send({"type": "error", "data": {"code": code, "message": message}})

    def matching(self, channels: Iterable[str]) -> tuple[list[str], bool]:
        """The ids of the subscriptions an event on ``channels`` reaches, and whether any does."""
        names = set(channels)
        ids = [sid for sid, wanted in self.subscriptions.items() if sid and wanted & names]
        return ids, bool(ids) or bool(self.subscriptions.get("", set()) & names)


@dataclass
class Hub:
    """The open connections; ``publish`` delivers an event to each whose user may read it.

    ``identify`` names the user of an upgrade request (its session cookie or JWT) and
    ``authenticate`` the user of a session secret sent in an ``authentication`` message.
    """

    project: str
    identify: Callable[[list[tuple[str, str]], str | None], UserDocument | None]
    authenticate: Callable[[str], UserDocument | None]
    _connections: set[Connection] = field(default_factory=set)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def publish(self, event: Event) -> None:
        with self._lock:
            connections = list(self._connections)
        timestamp = codec.encode_time(datetime.now(UTC))
        for connection in connections:
            if not may_read(connection.user_id, event.permissions):
                continue
            ids, reached = connection.matching(event.channels)
            if not reached:
                continue
            connection.send(
                {
                    "type": "event",
                    "data": {
                        "events": event.events,
                        "channels": event.channels,
                        "timestamp": timestamp,
                        "payload": event.payload,
                        "subscriptions": ids,
                    },
                }
            )

    def close(self) -> None:
        """Drop every connection (the runtime is stopping): their readers see the end."""
        with self._lock:
            connections = list(self._connections)
        for connection in connections:
            connection.closed = True
            with contextlib.suppress(OSError):
                connection.sock.shutdown(socket.SHUT_RDWR)

    def serve(self, sock: socket.socket, handshake: bytes, headers: list[tuple[str, str]]) -> None:
        """Run one connection to its end: ``handshake`` is the upgrade request as received."""
        ws = WSConnection(ConnectionType.SERVER)
        ws.receive_data(handshake)
        request = next((e for e in ws.events() if isinstance(e, WsRequest)), None)
        if request is None:
            sock.sendall(ws.send(RejectConnection(status_code=400)))
            return
        sock.sendall(ws.send(AcceptConnection()))
        sock.settimeout(None)
        query = parse_qs(urlsplit(request.target).query)
        connection = Connection(sock, ws, None)
        if query.get("project", [""])[0] != self.project:
            connection.error(POLICY_VIOLATION, "Missing or unknown project ID")
            connection.send_raw(ws.send(CloseConnection(code=POLICY_VIOLATION)))
            return
        connection.user = self.identify(headers, query.get("jwt", [None])[0])
        channels = set(query.get("channels[]", []))
        if channels:
            connection.subscriptions[""] = channels
        with self._lock:
            self._connections.add(connection)
        try:
            connection.send(
                {
                    "type": "connected",
                    "data": {"channels": sorted(channels), "user": connection.user},
                }
            )
            self._read(connection)
        finally:
            with self._lock:
                self._connections.discard(connection)
            connection.closed = True

    def _read(self, connection: Connection) -> None:
        ws = connection.ws
        parts: list[str] = []
        while not connection.closed:
            try:
                data = connection.sock.recv(RECV_BYTES)
            except OSError:
                return
            try:
                ws.receive_data(data or None)
                for event in ws.events():
                    if isinstance(event, TextMessage):
                        parts.append(event.data)
                        if sum(map(len, parts)) > MAX_MESSAGE:
                            connection.send_raw(ws.send(CloseConnection(code=1009)))
                            return
                        if event.message_finished:
                            self._message(connection, "".join(parts))
                            parts.clear()
                    elif isinstance(event, BytesMessage):
                        connection.error(INVALID_MESSAGE, "Messages must be JSON text.")
                    elif isinstance(event, Ping):
                        connection.send_raw(ws.send(event.response()))
                    elif isinstance(event, CloseConnection):
                        connection.send_raw(ws.send(event.response()))
                        return
            except (LocalProtocolError, RemoteProtocolError):
                return
            if not data:
                return

    def _message(self, connection: Connection, text: str) -> None:
        try:
            message = json.loads(text)
        except ValueError:
            message = None
        if not isinstance(message, dict):
            connection.error(INVALID_MESSAGE, "Message format is not valid.")
            return
        kind = message.get("type")
        data = message.get("data")
        if kind == "ping":
            connection.send({"type": "pong"})
        elif kind == "authentication":
            self._authentication(connection, data)
        elif kind == "subscribe":
            self._subscribe(connection, data)
        elif kind == "unsubscribe":
            self._unsubscribe(connection, data)
        else:
            connection.error(INVALID_MESSAGE, "Message type is not valid.")

    def _authentication(self, connection: Connection, data: Any) -> None:
        secret = data.get("session") if isinstance(data, dict) else None
        user = self.authenticate(secret) if isinstance(secret, str) and secret else None
        if user is None:
            connection.error(INVALID_MESSAGE, "Session is not valid.")
            return
        connection.user = user
        connection.send(
            {
                "type": "response",
                "data": {"to": "authentication", "success": True, "user": user},
            }
        )

    def _subscribe(self, connection: Connection, data: Any) -> None:
        rows = data if isinstance(data, list) else []
        accepted: list[dict[str, Any]] = []
        for row in rows:
            if not isinstance(row, dict):
                continue
            sid, channels = row.get("subscriptionId"), row.get("channels")
            if not isinstance(sid, str) or not sid or not isinstance(channels, list):
                continue
            names = [name for name in channels if isinstance(name, str)]
            connection.subscriptions[sid] = set(names)
            queries = row.get("queries")
            accepted.append(
                {
                    "subscriptionId": sid,
                    "channels": names,
                    "queries": queries if isinstance(queries, list) else [],
                }
            )
        if not accepted:
            connection.error(INVALID_MESSAGE, "Subscribe rows are not valid.")
            return
        connection.send(
            {
                "type": "response",
                "data": {"to": "subscribe", "success": True, "subscriptions": accepted},
            }
        )

    def _unsubscribe(self, connection: Connection, data: Any) -> None:
        rows = data if isinstance(data, list) else []
        removed = [
            row["subscriptionId"]
            for row in rows
            if isinstance(row, dict)
            and connection.subscriptions.pop(str(row.get("subscriptionId")), None) is not None
        ]
        connection.send(
            {
                "type": "response",
                "data": {
                    "to": "unsubscribe",
                    "success": True,
                    "subscriptions": [{"subscriptionId": sid} for sid in removed],
                },
            }
        )


class PublishingStore:
    """The store the functions get, publishing the account row after each write to it, so
    that a page following its row sees a top-up, a plan change or a reset as it happens, and
    the turn row after each write to a turn, so that its page sees the reply stream in.

    Every other method goes straight through to the wrapped store.
    """

    def __init__(self, store: Any, hub: Hub, database_id: str) -> None:
        self._store = store
        self._hub = hub
        self._database_id = database_id

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    def create_account(self, account: Account) -> Account:
        return self._published(self._store.create_account(account), "create")

    def update_account(self, user_id: str, patch: AccountPatch) -> Account:
        return self._published(self._store.update_account(user_id, patch), "update")

    def add_topup(self, user_id: str, tokens: int) -> Account:
        return self._published(self._store.add_topup(user_id, tokens), "update")

    def remove_topup(self, user_id: str, tokens: int) -> Account:
        return self._published(self._store.remove_topup(user_id, tokens), "update")

    def apply_reset(self, reset: ResetPlan, previous_period_start: datetime) -> Account | None:
        account: Account | None = self._store.apply_reset(reset, previous_period_start)
        return None if account is None else self._published(account, "update")

    def open_request(
        self,
        entry: LedgerEntry,
        limit: int,
        turn: Turn | None = None,
        *,
        max_in_flight: int | None = None,
    ) -> None:
        self._store.open_request(entry, limit, turn, max_in_flight=max_in_flight)
        if turn is not None:
            self._published_turn(turn.request_id, "create")

    def update_turn(self, request_id: str, patch: TurnPatch) -> None:
        self._store.update_turn(request_id, patch)
        self._published_turn(request_id, "update")

    def settle(
        self,
        user_id: str,
        request_id: str,
        release: int,
        patch: LedgerPatch,
        turn: TurnPatch | None = None,
    ) -> None:
        self._store.settle(user_id, request_id, release, patch, turn)
        if turn is not None:
            self._published_turn(request_id, "update")

    def discard_request(
        self, user_id: str, request_id: str, release: int, turn: TurnPatch | None = None
    ) -> None:
        self._store.discard_request(user_id, request_id, release, turn)
        if turn is not None:
            self._published_turn(request_id, "update")

    def _published(self, account: Account, action: str) -> Account:
        row_id = codec.row_key(account.row_id or account.user_id)
        self._publish(
            codec.SUBSCRIPTIONS,
            row_id,
            [f'read("user:{account.user_id}")'],
            codec.encode_account(account),
            action,
        )
        return account

    def _published_turn(self, request_id: str, action: str) -> None:
        # The row as stored, so that the payload is exactly what a read of the row gives.
        try:
            turn: Turn | None = self._store.get_turn(request_id)
        except Exception:
            log.exception("reading the turn %s to publish it failed", request_id)
            return
        if turn is None:
            return
        row = {
            "$createdAt": codec.encode_time(turn.created_at),
            "$updatedAt": codec.encode_time(turn.updated_at),
            **codec.encode_turn(turn),
        }
        self._publish(
            codec.TURNS,
            codec.row_key(request_id),
            codec.turn_permissions(turn.user_id),
            row,
            action,
        )

    def _publish(
        self, table_id: str, row_id: str, permissions: list[str], row: dict[str, Any], action: str
    ) -> None:
        payload = {
            "$id": row_id,
            "$databaseId": self._database_id,
            "$tableId": table_id,
            "$permissions": permissions,
            **row,
        }
        try:
            self._hub.publish(
                Event(
                    events=row_events(self._database_id, table_id, row_id, action),
                    channels=row_channels(self._database_id, table_id, row_id),
                    payload=payload,
                    permissions=permissions,
                )
            )
        except Exception:
            # The write has happened; a subscriber missing it must not fail the function.
            log.exception("publishing row %s of %s failed", row_id, table_id)
