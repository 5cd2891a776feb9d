"""Realtime over loopback, as the Web SDK's client speaks it: a row change (an account's, a
turn's) reaches the subscribers who may read the row, and only them."""

from __future__ import annotations

import json
import socket
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from metering import codec
from metering.ledger import LedgerStatus
from metering.plans import load_default_plans
from metering.service import get_or_create_account
from metering.tokens import TokenUsage
from metering.turns import Turn, TurnStatus
from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, Request, TextMessage

from localruntime.server import Runtime
from tests.support.builders import ledger_entry
from tests.support.runtime import AppwriteHttp, running

TIMEOUT = 10


@pytest.fixture(scope="module")
def runtime(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Runtime]:
    with running(tmp_path_factory.mktemp("realtime"), functions={}) as started:
        yield started


class Client:
    """A WebSocket client over a plain socket, sending what the SDK 28 client sends."""

    def __init__(self, runtime: Runtime, cookie: str = "", project: str = "local") -> None:
        self.sock = socket.create_connection(("127.0.0.1", runtime.port), timeout=TIMEOUT)
        self.ws = WSConnection(ConnectionType.CLIENT)
        headers = [(b"cookie", cookie.encode())] if cookie else []
        target = f"/v1/realtime?project={project}"
        self.sock.sendall(self.ws.send(Request("127.0.0.1", target, extra_headers=headers)))
        self.pending: list[dict[str, Any]] = []
        self.accepted = False
        while not self.accepted:
            self._pump()

    def _pump(self) -> None:
        self.ws.receive_data(self.sock.recv(65536))
        for event in self.ws.events():
            if isinstance(event, AcceptConnection):
                self.accepted = True
            elif isinstance(event, TextMessage):
                self.pending.append(json.loads(event.data))

    def receive(self) -> dict[str, Any]:
        while not self.pending:
            self._pump()
        return self.pending.pop(0)

    def send(self, message: dict[str, Any]) -> None:
        self.sock.sendall(self.ws.send(TextMessage(json.dumps(message))))

    def subscribe(self, sid: str, channel: str) -> dict[str, Any]:
        self.send({"type": "subscribe", "data": [{"subscriptionId": sid, "channels": [channel]}]})
        return self.receive()

    def ping(self) -> dict[str, Any]:
        self.send({"type": "ping"})
        return self.receive()

    def close(self) -> None:
        self.sock.close()


def _user(runtime: Runtime) -> tuple[str, str]:
    http = AppwriteHttp(runtime.base_url)
    user_id = http.sign_up_and_log_in(f"rt-{uuid.uuid4().hex[:8]}@example.com")
    get_or_create_account(runtime.store, load_default_plans(), user_id, datetime.now(UTC))
    cookie = "; ".join(f"{c.name}={c.value}" for c in http.http.cookies)
    return user_id, cookie


def _row_channel(user_id: str) -> str:
    return f"databases.koffers_db.tables.subscriptions.rows.{user_id}"


def test_owner_receives_row_change_others_do_not(runtime: Runtime) -> None:
    owner_id, owner_cookie = _user(runtime)
    _, other_cookie = _user(runtime)
    owner = Client(runtime, owner_cookie)
    other = Client(runtime, other_cookie)
    guest = Client(runtime)
    try:
        connected = owner.receive()
        assert connected["type"] == "connected"
        assert connected["data"]["user"]["$id"] == owner_id
        assert other.receive()["data"]["user"]["$id"] != owner_id
        assert guest.receive() == {"type": "connected", "data": {"channels": [], "user": None}}
        channel = _row_channel(owner_id)
        ack = owner.subscribe("sub-owner", channel)
        assert ack["type"] == "response"
        assert ack["data"]["to"] == "subscribe"
        assert other.subscribe("sub-other", channel)["data"]["success"] is True
        assert guest.subscribe("sub-guest", channel)["data"]["success"] is True
        before = runtime.store.get_account(owner_id).topup_tokens
        runtime.store.add_topup(owner_id, 1234)
        event = owner.receive()
        assert event["type"] == "event"
        data = event["data"]
        assert data["subscriptions"] == ["sub-owner"]
        assert channel in data["channels"]
        assert f"tablesdb.koffers_db.tables.subscriptions.rows.{owner_id}" in data["channels"]
        assert data["payload"]["topupTokens"] == before + 1234
        assert data["payload"]["$permissions"] == [f'read("user:{owner_id}")']
        assert data["timestamp"]
        # Events are pushed before add_topup returns: the next answer shows nothing came first.
        assert other.ping() == {"type": "pong"}
        assert guest.ping() == {"type": "pong"}
    finally:
        for client in (owner, other, guest):
            client.close()


def test_owner_receives_a_turns_create_and_updates_others_do_not(runtime: Runtime) -> None:
    """Opening a turn publishes its row's create; its progress and its settling, updates with
    the stored row; a user subscribed to the same row receives none of them."""
    owner_id, owner_cookie = _user(runtime)
    _, other_cookie = _user(runtime)
    owner = Client(runtime, owner_cookie)
    other = Client(runtime, other_cookie)
    try:
        owner.receive(), other.receive()  # connected
        request_id = f"turn-{uuid.uuid4().hex[:8]}"
        row_id = codec.row_key(request_id)
        channel = f"databases.koffers_db.tables.turns.rows.{row_id}"
        assert owner.subscribe("sub-turn", channel)["data"]["success"] is True
        assert other.subscribe("sub-spy", channel)["data"]["success"] is True
        account = runtime.store.get_account(owner_id)
        now = datetime.now(UTC)
        entry = ledger_entry(
            owner_id, request_id, held_tokens=20, period_start=account.period_start,
            created_at=now, updated_at=now,
        )  # fmt: skip
        turn = Turn(request_id, owner_id, TurnStatus.PENDING, now, now, model=entry.model)
        usage = TokenUsage(input_tokens=15, output_tokens=3, steps=1)

        runtime.store.open_request(entry, account.limit, turn)
        runtime.store.update_turn(request_id, {"status": TurnStatus.STREAMING, "content": "Hel"})
        runtime.store.update_turn(request_id, {"content": "Hello, wor"})
        runtime.store.settle(
            owner_id,
            request_id,
            20 - usage.total_tokens,
            {"status": LedgerStatus.SETTLED, "usage": usage, "held_tokens": 0},
            {"status": TurnStatus.COMPLETED, "content": "Hello, world.", "usage": usage},
        )

        events = [owner.receive()["data"] for _ in range(4)]
        actions = [event["events"][0].rsplit(".", 1)[1] for event in events]
        assert actions == ["create", "update", "update", "update"]
        assert all(event["subscriptions"] == ["sub-turn"] for event in events)
        assert all(channel in event["channels"] for event in events)
        assert f"tablesdb.koffers_db.tables.turns.rows.{row_id}.create" in events[0]["events"]
        payloads = [event["payload"] for event in events]
        assert [(p["status"], p["content"]) for p in payloads] == [
            ("pending", None),  # the codec stores no text as null, as on Appwrite
            ("streaming", "Hel"),
            ("streaming", "Hello, wor"),
            ("completed", "Hello, world."),
        ]
        final = payloads[-1]
        assert (final["$id"], final["$tableId"], final["requestId"]) == (
            row_id,
            "turns",
            request_id,
        )
        assert final["$permissions"] == [f'read("user:{owner_id}")']
        assert final["totalTokens"] == usage.total_tokens
        # Events are pushed before the writes return: the next answer shows nothing came first.
        assert other.ping() == {"type": "pong"}
    finally:
        owner.close()
        other.close()


def test_authentication_message_names_the_user(runtime: Runtime) -> None:
    user_id, cookie = _user(runtime)
    secret = cookie.split("a_session_local=", 1)[1].split(";", 1)[0]
    client = Client(runtime)
    try:
        assert client.receive()["data"]["user"] is None
        client.send({"type": "authentication", "data": {"session": secret}})
        answer = client.receive()
        assert answer["type"] == "response"
        assert answer["data"]["to"] == "authentication"
        assert answer["data"]["success"] is True
        assert answer["data"]["user"]["$id"] == user_id
        client.send({"type": "authentication", "data": {"session": "wrong"}})
        assert client.receive()["type"] == "error"
    finally:
        client.close()


def test_unknown_project_is_a_policy_violation(runtime: Runtime) -> None:
    client = Client(runtime, project="other")
    try:
        assert client.receive() == {
            "type": "error",
            "data": {"code": 1008, "message": "Missing or unknown project ID"},
        }
    finally:
        client.close()
