"""The chat function through the local runtime over HTTP, as the page reaches it: every upstream
failure mode, truncation near the limit, retries, and bad input, with refused requests changing
nothing. The Anthropic API is a real HTTP server on loopback speaking the Messages wire format."""

from __future__ import annotations

import json
import socket
import threading
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import pytest
import requests
from metering.plans import load_default_plans
from metering.service import get_or_create_account

from localruntime.server import Runtime
from localruntime.sqlite_store import SQLiteStore
from tests.support.anthropic_fake import stream_events
from tests.support.runtime import AppwriteHttp, project_functions, running

# Anthropic's error envelopes, by HTTP status.
ERRORS = {
    400: "invalid_request_error",
    429: "rate_limit_error",
    500: "api_error",
    529: "overloaded_error",
}


class Upstream(BaseHTTPRequestHandler):
    """A Messages API whose behaviour the test sets: answer (streamed when asked), fail with a
    status, hang, or drop."""

    mode: ClassVar[str | int] = "ok"
    wanted_output: ClassVar[int] = 40
    # A hung call holds its connection until the test is over, past the chat's own timeout.
    released: ClassVar[threading.Event] = threading.Event()

    def do_POST(self) -> None:
        length = int(self.headers.get("content-length", "0"))
        request = json.loads(self.rfile.read(length) or b"{}")
        if self.path.endswith("/count_tokens"):
            self._send(200, {"input_tokens": 30})
            return
        mode = Upstream.mode
        if mode == "drop":
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        if mode == "hang":
            Upstream.released.wait(timeout=30)
            return
        if isinstance(mode, int):
            error = {"type": ERRORS[mode], "message": f"upstream said {mode}"}
            self._send(mode, {"type": "error", "error": error})
            return
        output = min(Upstream.wanted_output, int(request["max_tokens"]))
        stop = "max_tokens" if output < Upstream.wanted_output else "end_turn"
        message = {
            "id": "msg_" + uuid.uuid4().hex[:24],
            "type": "message",
            "role": "assistant",
            "model": request["model"],
            "content": [{"type": "text", "text": "A reply from upstream."}],
            "stop_reason": stop,
            "stop_sequence": None,
            "usage": {
                "input_tokens": 30,
                "cache_creation_input_tokens": 0,
                "cache_read_input_tokens": 0,
                "output_tokens": output,
            },
        }
        if request.get("stream"):
            self._stream(message)
        else:
            self._send(200, message)

    def _stream(self, message: dict[str, Any]) -> None:
        """The message as the API's server-sent events; the body ends with the connection."""
        self.send_response(200)
        self.send_header("content-type", "text/event-stream")
        self.send_header("connection", "close")
        self.end_headers()
        for name, data in stream_events(message):
            self.wfile.write(f"event: {name}\ndata: {json.dumps(data)}\n\n".encode())
            self.wfile.flush()

    def _send(self, status: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        return


@pytest.fixture(scope="module")
def upstream() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Upstream)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def runtime(tmp_path_factory: pytest.TempPathFactory, upstream: str) -> Iterator[Runtime]:
    # The functions read their settings from the runtime's environment, as they would from a
    # .env file; one attempt of one second keeps the hang case short.
    env = {
        "ANTHROPIC_API_KEY": "sk-ant-test-local",
        "ANTHROPIC_BASE_URL": upstream,
        "CHAT_TIMEOUT_SECONDS": "1",
        "CHAT_MAX_RETRIES": "0",
    }
    data = tmp_path_factory.mktemp("chat-over-http") / "data"
    with running(data, functions=project_functions(), env=env, warm=True) as started:
        yield started


@pytest.fixture(autouse=True)
def answering_upstream() -> Iterator[None]:
    Upstream.mode, Upstream.wanted_output = "ok", 40
    Upstream.released.clear()
    yield
    Upstream.mode, Upstream.wanted_output = "ok", 40
    Upstream.released.set()


@pytest.fixture
def store(runtime: Runtime) -> SQLiteStore:
    return SQLiteStore(str(runtime.metering_path))


def user(runtime: Runtime, store: SQLiteStore, limit: int = 50_000) -> tuple[AppwriteHttp, str]:
    client = AppwriteHttp(runtime.base_url)
    user_id = client.sign_up_and_log_in(f"chat-{uuid.uuid4().hex[:10]}@example.test")
    get_or_create_account(store, load_default_plans(), user_id, datetime.now(UTC))
    store.update_account(user_id, {"plan": "starter", "max_tokens_per_month": limit})
    return client, user_id


def state(store: SQLiteStore, user_id: str) -> tuple[int, int]:
    """The user's counter and ledger total: together they show any charge or trace."""
    account = store.get_account(user_id)
    assert account is not None
    return account.current_tokens_used, store.ledger_total(user_id, account.period_start)


def chat_body(text: str = "Hello there", request_id: str | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"messages": [{"role": "user", "content": text}]}
    if request_id:
        body["requestId"] = request_id
    return body


@pytest.mark.parametrize(
    ("mode", "status", "code"),
    [
        pytest.param(529, 503, "upstream_unavailable", id="overloaded"),
        pytest.param(429, 503, "upstream_unavailable", id="rate-limited"),
        pytest.param(500, 503, "upstream_unavailable", id="server-error"),
        pytest.param(400, 502, "upstream_error", id="refused"),
        pytest.param("hang", 503, "upstream_unavailable", id="timeout"),
        pytest.param("drop", 503, "upstream_unavailable", id="connection-dropped"),
    ],
)
def test_an_upstream_failure_answers_a_clear_error_and_charges_nothing(
    runtime: Runtime, store: SQLiteStore, mode: str | int, status: int, code: str
) -> None:
    """Every failure of the first model call: a JSON 502/503, the hold released, no trace."""
    client, user_id = user(runtime, store)
    Upstream.mode = mode
    execution = client.execution("chat", chat_body(request_id="fails-" + str(mode)))
    assert (execution.status_code, execution.body["error"]["code"]) == (status, code)
    assert "upstream said" not in execution["responseBody"]
    assert state(store, user_id) == (0, 0)
    # The failed request left nothing behind: its id can be retried once the upstream is back.
    Upstream.mode = "ok"
    retried = client.execution("chat", chat_body(request_id="fails-" + str(mode)))
    assert retried.status_code == 200
    assert state(store, user_id) == (70, 70)


def test_a_reply_near_the_limit_is_capped_and_says_it_was_truncated(
    runtime: Runtime, store: SQLiteStore
) -> None:
    """max_tokens shrinks to what is left; the cut reply is marked and the cap holds."""
    client, user_id = user(runtime, store, limit=500)
    Upstream.wanted_output = 5_000
    message = client.execution("chat", chat_body()).body["message"]
    assert message["truncated"] is True
    assert message["stopReason"] == "max_tokens"
    used, ledger = state(store, user_id)
    assert used == ledger == message["usage"]["totalTokens"] <= 500


def test_the_same_request_id_twice_is_charged_once_with_the_same_reply(
    runtime: Runtime, store: SQLiteStore
) -> None:
    client, user_id = user(runtime, store)
    first = client.execution("chat", chat_body(request_id="twice-1")).body
    second = client.execution("chat", chat_body(request_id="twice-1")).body
    assert second["message"] == first["message"]
    assert state(store, user_id) == (70, 70)


@pytest.mark.parametrize(
    ("body", "status"),
    [
        pytest.param("{not json", 400, id="malformed-json"),
        pytest.param(json.dumps({"messages": "hi"}), 400, id="wrong-type"),
        pytest.param(
            json.dumps({"messages": [{"role": "assistant", "content": "x"}]}),
            400,
            id="last-not-from-user",
        ),
        pytest.param(json.dumps(chat_body(request_id="not/valid")), 400, id="bad-request-id"),
        pytest.param(json.dumps(chat_body("x" * 300_000)), 413, id="oversized"),
    ],
)
def test_bad_input_is_a_clear_4xx_and_changes_nothing(
    runtime: Runtime, store: SQLiteStore, body: str, status: int
) -> None:
    client, user_id = user(runtime, store)
    response = client.execute("chat", body)
    assert response.status_code == 201, response.text
    execution = response.json()
    assert execution["responseStatusCode"] == status
    assert json.loads(execution["responseBody"])["error"]["code"] in {
        "invalid_request",
        "payload_too_large",
    }
    assert state(store, user_id) == (0, 0)


def test_a_caller_without_a_session_cannot_run_chat(runtime: Runtime, tmp_path: Path) -> None:
    """Without a session Appwrite refuses both the execution and the function-domain request
    (chat executes for `users` only), whatever bytes it is sent, with its JSON error."""
    anonymous = AppwriteHttp(runtime.base_url)
    assert anonymous.execute("chat", json.dumps(chat_body())).status_code == 401
    response = requests.post(
        runtime.base_url + "/functions/chat", data=b"\xff\xfe\x00garbage", timeout=30
    )
    assert response.status_code == 401
    assert response.json()["type"] == "user_unauthorized"
