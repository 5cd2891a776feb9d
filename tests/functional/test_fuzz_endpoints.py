"""Every function's ``main(context)`` fuzzed with arbitrary methods, headers and bodies: a request
that is not validly authenticated gets its JSON 4xx (401, 400, 403) and stores nothing."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from localruntime.context import RuntimeContext, RuntimeRequest, RuntimeResult, execute
from localruntime.sqlite_store import SQLiteStore
from tests.strategies import json_values
from tests.support.function_harness import NOW, Harness, base_environment, running
from tests.support.stripe_events import SECRET, hold, load_app, sign, unload_app

FUZZ = settings(
    max_examples=80,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

methods = st.sampled_from(["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "HEAD"]) | st.text(
    min_size=1, max_size=8
)
_header_names = st.sampled_from(
    [
        "x-appwrite-trigger",
        "X-Appwrite-Trigger",
        "x-appwrite-user-id",
        "x-appwrite-user-jwt",
        "X-Appwrite-User-JWT",
        "x-appwrite-key",
        "x-appwrite-event",
        "stripe-signature",
        "Stripe-Signature",
        "content-type",
        "content-length",
    ]
) | st.text(min_size=1, max_size=20)
_header_values = st.sampled_from(
    [
        "",
        " ",
        "http",
        "event",
        "Schedule",
        " schedule",
        "schedule\n",
        "alice",
        "eyJhbGciOiJIUzI1NiJ9.eyJ1c2VySWQiOiJhbGljZSJ9.c2ln",
        "eyJ bad\njwt",
        "Bearer eyJ",
        "t=1700000000,v1=00",
        "t=,v1=,v0=",
        "application/json",
        "-1",
    ]
) | st.text(max_size=60)
headers = st.dictionaries(_header_names, _header_values, max_size=6)

_json_values = json_values()
_well_shaped = st.sampled_from(
    [
        {"messages": [{"role": "user", "content": "What is my usage?"}], "requestId": "req-1"},
        {"id": "evt_1", "object": "event", "type": "invoice.paid", "data": {"object": {}}},
        {"id": "evt_2", "type": "customer.subscription.deleted", "data": {"object": {"id": 1}}},
        {"userId": "alice", "tokens": 10},
    ]
)
bodies = st.one_of(
    st.binary(max_size=300),
    _json_values.map(lambda value: json.dumps(value).encode()),
    _well_shaped.map(lambda value: json.dumps(value).encode()),
    # Past every size limit, and not UTF-8 at the end.
    st.sampled_from([b"{" * 300_000, b'{"messages": "' + b"x" * 400_000 + b'\xff"}']),
)


@dataclass
class Functions:
    """The four functions over one SQLite file holding an account with usage and a hold."""

    chat: Harness
    usage: Harness
    sqlite_path: Path

    def snapshot(self) -> dict[str, list[tuple[Any, ...]]]:
        return self.chat.snapshot()

    def run(self, function_id: str, environ: dict[str, str], context: RuntimeContext) -> Any:
        store = SQLiteStore(str(self.sqlite_path))
        main = load_app(function_id, {**self.environ(), **environ}, clock=lambda: NOW, store=store)
        try:
            return execute(main, context)
        finally:
            unload_app(function_id)

    def environ(self) -> dict[str, str]:
        return base_environment(self.sqlite_path)


@pytest.fixture
def functions(tmp_path: Path) -> Iterator[Functions]:
    path = tmp_path / "metering.sqlite3"
    with running("chat", path) as chat, running("usage", path) as usage:
        chat.seed("alice", used=123)
        hold(chat.store(), "alice", "req-held", 40, NOW)
        yield Functions(chat, usage, path)


def assert_json_error(result: RuntimeResult, status: int, code: str) -> None:
    assert result.status_code == status, (result.status_code, result.body[:300], result.errors)
    body = json.loads(result.body)
    assert body["error"]["code"] == code
    assert isinstance(body["error"]["message"], str)


def as_executed(sent: dict[str, str]) -> dict[str, str]:
    """The fuzzed headers on top of the ``http`` trigger of a direct execution."""
    return {"x-appwrite-trigger": "http", **sent}


def fuzz_harness(
    functions: Functions, harness: Harness, allowed: str, path: str = "/"
) -> Callable[[str, dict[str, str], bytes], None]:
    def check(method: str, sent: dict[str, str], raw: bytes) -> None:
        before = functions.snapshot()
        result = harness.call(raw, method=method, headers=sent, path=path)
        if method.upper() != allowed:
            assert_json_error(result, 400, "invalid_request")
        else:
            assert_json_error(result, 401, "unauthenticated")
        assert functions.snapshot() == before

    return check


def test_chat_refuses_every_unauthenticated_request_with_a_json_4xx(functions: Functions) -> None:
    """Without a JWT that Appwrite accepts: 401 (400 for a wrong method), no model call, no row."""
    check = fuzz_harness(functions, functions.chat, "POST")

    @FUZZ
    @given(method=methods, sent=headers, raw=bodies)
    # A JWT that cannot be sent on as a header was once answered 503 by the identity check.
    @example(method="POST", sent={"x-appwrite-user-jwt": "0\r0"}, raw=b"")
    def fuzz(method: str, sent: dict[str, str], raw: bytes) -> None:
        check(method, sent, raw)

    fuzz()
    assert functions.chat.model.requests == []


@pytest.mark.parametrize(
    ("path", "allowed"),
    [
        pytest.param("/turns/req-held", "GET", id="read-a-turn"),
        pytest.param("/turns/req-held/stop", "POST", id="stop-a-turn"),
    ],
)
def test_reading_or_stopping_a_turn_refuses_every_unauthenticated_request(
    functions: Functions, path: str, allowed: str
) -> None:
    """A turn's routes without a JWT Appwrite accepts: 401 (400 for a wrong method), no Stop
    recorded, nothing stored."""
    check = fuzz_harness(functions, functions.chat, allowed, path)

    @FUZZ
    @given(method=methods, sent=headers, raw=bodies)
    def fuzz(method: str, sent: dict[str, str], raw: bytes) -> None:
        check(method, sent, raw)

    fuzz()
    assert not functions.chat.store().stop_requested("req-held")


def test_usage_refuses_every_unauthenticated_request_with_a_json_4xx(
    functions: Functions,
) -> None:
    """Without a JWT that Appwrite accepts: 401 (400 for a wrong method), and no account made."""
    check = fuzz_harness(functions, functions.usage, "GET")

    @FUZZ
    @given(method=methods, sent=headers, raw=bodies)
    def fuzz(method: str, sent: dict[str, str], raw: bytes) -> None:
        check(method, sent, raw)

    fuzz()


@st.composite
def signatures(draw: st.DrawFn, raw: bytes) -> str | None:
    """No header, junk, a signature by another secret, or a correct one that is too old."""
    kinds = ["none", "junk"]
    try:
        raw.decode("utf-8")
        kinds += ["other-secret", "stale"]
    except UnicodeDecodeError:
        pass
    kind = draw(st.sampled_from(kinds))
    if kind == "none":
        return None
    if kind == "junk":
        junk: str = draw(_header_values)
        return junk
    if kind == "other-secret":
        return sign(raw, "whsec_not_the_configured_one")
    return sign(raw, SECRET, timestamp=int(time.time()) - 3600)


def test_the_webhook_refuses_every_request_without_a_valid_signature(
    functions: Functions,
) -> None:
    """Unsigned, badly signed or stale deliveries: 400 ``invalid_request``, nothing stored."""

    @FUZZ
    @given(method=methods, sent=headers, raw=bodies, data=st.data())
    def fuzz(method: str, sent: dict[str, str], raw: bytes, data: st.DataObject) -> None:
        before = functions.snapshot()
        sent = {k: v for k, v in sent.items() if k.lower() != "stripe-signature"}
        signature = data.draw(signatures(raw))
        if signature is not None:
            sent["stripe-signature"] = signature
        request = RuntimeRequest(method=method, headers=as_executed(sent), body=raw)
        result = functions.run(
            "stripe-webhook", {"STRIPE_WEBHOOK_SECRET": SECRET}, RuntimeContext(request)
        )
        assert_json_error(result, 400, "invalid_request")
        assert functions.snapshot() == before

    fuzz()


def _not_scheduled(sent: dict[str, str]) -> bool:
    lowered = {key.lower(): value for key, value in sent.items()}
    return lowered.get("x-appwrite-trigger") != "schedule"


def test_the_cron_refuses_every_trigger_but_its_schedule(functions: Functions) -> None:
    """Any method, header or body without the ``schedule`` trigger: 403, nothing touched."""

    @FUZZ
    @given(method=methods, sent=headers.filter(_not_scheduled), raw=bodies)
    def fuzz(method: str, sent: dict[str, str], raw: bytes) -> None:
        before = functions.snapshot()
        request = RuntimeRequest(method=method, headers=sent, body=raw)
        result = functions.run("monthly-reset-cron", {}, RuntimeContext(request))
        assert_json_error(result, 403, "forbidden")
        assert functions.snapshot() == before

    fuzz()
