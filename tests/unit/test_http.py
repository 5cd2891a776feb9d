"""Errors become JSON bodies in one place: codes by class, no exception text in 5xx bodies."""

from __future__ import annotations

from typing import Any

import pytest
from metering.errors import (
    ConfigurationError,
    Forbidden,
    InvalidRequest,
    MeteringError,
    PayloadTooLarge,
    RequestInProgress,
    StoreError,
    TokenLimitExceeded,
    Unauthenticated,
    UpstreamError,
    UpstreamUnavailable,
)
from metering.http import GENERIC_SERVER_MESSAGE, error_body, run_handler


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
    usage = {"userId": "user-1", "level": "exceeded"}

    status, body = error_body(TokenLimitExceeded(usage=usage))

    assert status == 429
    assert body["usage"] == usage


class FakeResponse:
    def json(self, obj: Any, status_code: int = 200, headers: dict[str, str] | None = None) -> Any:
        return {"body": obj, "statusCode": status_code, "headers": headers}


class FakeContext:
    def __init__(self) -> None:
        self.res = FakeResponse()
        self.errors: list[str] = []

    def log(self, message: Any) -> None:
        pass

    def error(self, message: Any) -> None:
        self.errors.append(str(message))


def test_run_handler_answers_a_crash_with_a_json_500_and_logs_it() -> None:
    """An unexpected exception is logged and becomes a bare JSON 500, never an empty body."""
    context = FakeContext()

    def crash() -> tuple[int, dict[str, Any]]:
        raise KeyError("api_key=sk-123")

    result = run_handler(context, "chat", crash)

    assert result["statusCode"] == 500
    assert result["body"] == {"error": {"code": "internal", "message": GENERIC_SERVER_MESSAGE}}
    assert len(context.errors) == 1


def test_run_handler_passes_a_success_through() -> None:
    """A handler's own status and body are answered as they are."""
    result = run_handler(FakeContext(), "usage", lambda: (200, {"ok": True}))

    assert (result["statusCode"], result["body"]) == (200, {"ok": True})
