"""The one edge of every function: codes by class, no exception text in 5xx bodies, the method
check and one log line per outcome."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any

import pytest
from metering.account import new_account
from metering.edge import GENERIC_SERVER_MESSAGE, Answer, LogLine, Request, error_body, serve
from metering.errors import (
    AlreadyExists,
    ConfigurationError,
    Forbidden,
    InvalidRequest,
    LimitReached,
    LimitReason,
    MeteringError,
    NotFound,
    PayloadTooLarge,
    RequestInProgress,
    StoreError,
    TokenLimitExceeded,
    Unauthenticated,
    UpstreamError,
    UpstreamUnavailable,
)
from metering.plans import load_default_plans
from metering.wire import usage_stats

NOW = datetime(2026, 11, 28, tzinfo=UTC)


@pytest.mark.parametrize(
    ("error", "status", "code"),
    [
        pytest.param(InvalidRequest("bad"), 400, "invalid_request", id="400"),
        pytest.param(Unauthenticated("who"), 401, "unauthenticated", id="401"),
        pytest.param(Forbidden("no"), 403, "forbidden", id="403"),
        pytest.param(RequestInProgress("wait"), 409, "request_in_progress", id="409"),
        pytest.param(PayloadTooLarge("big"), 413, "payload_too_large", id="413"),
        pytest.param(TokenLimitExceeded(), 429, "token_limit_exceeded", id="429"),
        pytest.param(UpstreamError("secret detail"), 502, "upstream_error", id="502"),
        pytest.param(UpstreamUnavailable("secret detail"), 503, "upstream_unavailable", id="503"),
        pytest.param(StoreError("secret detail"), 500, "internal", id="store-500"),
        pytest.param(ConfigurationError("secret detail"), 500, "internal", id="config-500"),
        # A store signal that escapes its caller is a bug: never a public 404, 409 or 429.
        pytest.param(LimitReached("limit"), 500, "internal", id="limit-signal-500"),
        pytest.param(AlreadyExists("exists"), 500, "internal", id="exists-signal-500"),
        pytest.param(NotFound("missing"), 500, "internal", id="missing-signal-500"),
    ],
)
def test_error_body_maps_each_error_class(error: MeteringError, status: int, code: str) -> None:
    """Each domain error maps to its status and public code; 5xx bodies hide the message."""
    got_status, body = error_body(error)

    assert got_status == status
    assert body["error"]["code"] == code
    if status >= 500:
        assert body["error"]["message"] == GENERIC_SERVER_MESSAGE
        assert "secret" not in str(body)
    else:
        assert body["error"]["message"] == error.message


def test_client_error_details_are_kept() -> None:
    """Validation details reach the client for 4xx errors."""
    details = [{"field": "messages", "problem": "empty"}]

    _, body = error_body(InvalidRequest("invalid body", details=details))

    assert body["error"]["details"] == details


def test_limit_error_carries_the_usage_document() -> None:
    """A 429 body embeds the caller's UsageStats next to the error."""
    account = new_account("user-1", load_default_plans().get("starter"), NOW)
    account = replace(account, current_tokens_used=account.limit)

    status, body = error_body(TokenLimitExceeded(account=account))

    assert status == 429
    assert body["usage"] == usage_stats(account)
    assert (body["usage"]["userId"], body["usage"]["level"]) == ("user-1", "exceeded")
    assert "details" not in body["error"]


@pytest.mark.parametrize("reason", ["message_too_long", "allowance_spent"])
def test_limit_error_names_its_reason_and_what_is_left(reason: LimitReason) -> None:
    """The 429 says which refusal it is and how many tokens are left; the rest is unchanged."""
    account = new_account("user-1", load_default_plans().get("starter"), NOW)
    account = replace(account, current_tokens_used=account.limit - 2_000)

    status, body = error_body(TokenLimitExceeded(account=account, reason=reason))

    assert status == 429
    assert body == {
        "error": {
            "code": "token_limit_exceeded",
            "message": "Monthly token limit reached",
            "details": [{"reason": reason, "remaining": 2_000}],
        },
        "usage": usage_stats(account),
    }


class FakeResponse:
    def json(self, obj: Any, status_code: int = 200, headers: dict[str, str] | None = None) -> Any:
        return {"body": obj, "statusCode": status_code, "headers": headers}


class FakeContext:
    def __init__(self, method: str = "POST") -> None:
        self.req = SimpleNamespace(method=method, path="/", headers={}, body_binary=b"")
        self.res = FakeResponse()
        self.logs: list[str] = []
        self.errors: list[str] = []

    def log(self, message: Any) -> None:
        self.logs.append(str(message))

    def error(self, message: Any) -> None:
        self.errors.append(str(message))


def test_serve_answers_a_crash_with_a_json_500_and_logs_it() -> None:
    """An unexpected exception is logged and becomes a bare JSON 500, never an empty body."""
    context = FakeContext()

    def crash(request: Request, log: LogLine) -> Answer:
        raise KeyError("api_key=sk-123")

    result = serve(context, "chat", ("POST",), crash)

    assert result["statusCode"] == 500
    assert result["body"] == {"error": {"code": "internal", "message": GENERIC_SERVER_MESSAGE}}
    assert len(context.errors) == 1
    assert "sk-123" not in context.logs[-1]


def test_serve_passes_a_success_through() -> None:
    """A handler's own status and body are answered as they are."""
    result = serve(FakeContext(), "usage", ("POST",), lambda r, log: Answer({"ok": True}))

    assert (result["statusCode"], result["body"]) == (200, {"ok": True})


def test_serve_refuses_another_method_before_the_handler_runs() -> None:
    """A method the function does not accept is a 400 and the handler never runs."""
    ran: list[bool] = []

    def handler(request: Request, log: LogLine) -> Answer:
        ran.append(True)
        return Answer({})

    result = serve(FakeContext("GET"), "chat", ("POST",), handler)

    assert result["statusCode"] == 400
    assert result["body"]["error"]["code"] == "invalid_request"
    assert ran == []


def test_serve_writes_one_line_with_what_the_handler_learnt_before_failing() -> None:
    """A refusal is logged once, with the ids the handler had by then, its code and status."""
    context = FakeContext()

    def handler(request: Request, log: LogLine) -> Answer:
        log.add(userId="u1")
        raise InvalidRequest("bad body")

    serve(context, "chat", ("POST",), handler)

    assert [json.loads(line) for line in context.logs] == [
        {"event": "chat.rejected", "userId": "u1", "code": "invalid_request", "status": 400}
    ]


def test_notes_come_before_the_outcome_line() -> None:
    """Findings an operator greps for are lines of their own, the outcome line last."""
    context = FakeContext()

    def handler(request: Request, log: LogLine) -> Answer:
        log.note("cron.drift", userId="u1", drift=5)
        return Answer({"ok": True}, outcome="summary")

    serve(context, "cron", ("POST",), handler)

    assert [json.loads(line)["event"] for line in context.logs] == ["cron.drift", "cron.summary"]
