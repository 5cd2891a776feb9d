"""The pure parts of the per-user caps: how long a user waits under the cap per minute, and how
the edge answers a ``RateLimited`` (its own code, 429, ``Retry-After`` and ``retryAfter``)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from metering.chat import RATE_WINDOW, pace_wait
from metering.edge import Answer, LogLine, Request, error_body, error_headers, serve
from metering.errors import RateLimited, TokenLimitExceeded

NOW = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)


def ago(seconds: float) -> datetime:
    return NOW - timedelta(seconds=seconds)


@pytest.mark.parametrize(
    ("starts", "cap", "wait"),
    [
        ([], 3, None),
        ([ago(1), ago(2)], 3, None),
        ([ago(1), ago(2), ago(30)], 3, 30),
        ([ago(1), ago(2), ago(59.5)], 3, 1),
        ([ago(0.2), ago(0.1), ago(0.3)], 3, 60),
        ([ago(10)], 1, 50),
        ([ago(30), ago(10), ago(50)], 2, 30),
        ([ago(1), ago(2), ago(3)], 0, None),
        # Another instance's clock ahead of this one: never longer than the window.
        ([NOW + timedelta(seconds=5)], 1, 60),
    ],
    ids=[
        "none",
        "below-cap",
        "at-cap",
        "almost-out",
        "just-in",
        "cap-one",
        "unordered",
        "no-cap",
        "clock-ahead",
    ],
)
def test_the_wait_is_until_the_oldest_counted_start_leaves_the_window(
    starts: list[datetime], cap: int, wait: int | None
) -> None:
    assert pace_wait(starts, cap, NOW) == wait


@given(
    offsets=st.lists(st.floats(min_value=0.001, max_value=59.999), min_size=1, max_size=40),
    cap=st.integers(min_value=1, max_value=40),
)
def test_after_the_wait_fewer_than_the_cap_remain_in_the_window(
    offsets: list[float], cap: int
) -> None:
    """Whatever the starts, waiting the answer leaves room for one more request; a shorter
    wait by a whole second would not (the answer is the shortest whole-second wait)."""
    starts = sorted((ago(offset) for offset in offsets), reverse=True)[:cap]
    wait = pace_wait(starts, cap, NOW)
    if len(starts) < cap:
        assert wait is None
        return
    assert wait is not None
    assert 1 <= wait <= 60

    def in_window(seconds: int) -> int:
        later = NOW + timedelta(seconds=seconds)
        return sum(1 for start in starts if start > later - RATE_WINDOW)

    assert in_window(wait) < cap
    if wait > 1:
        assert in_window(wait - 1) == cap


@pytest.mark.parametrize("reason", ["turns_in_flight", "requests_per_minute"])
def test_a_rate_limited_answer_carries_its_code_the_wait_and_the_cap(reason: Any) -> None:
    error = RateLimited("slow down", retry_after=7, reason=reason, limit=3)

    status, body = error_body(error)

    assert status == 429
    assert body == {
        "error": {
            "code": "rate_limited",
            "message": "slow down",
            "retryAfter": 7,
            "details": [{"reason": reason, "limit": 3}],
        }
    }
    assert error_headers(error) == {"retry-after": "7"}


def test_a_wait_is_at_least_a_second() -> None:
    assert RateLimited(retry_after=0, reason="turns_in_flight", limit=1).retry_after == 1


def test_the_token_limit_stays_its_own_refusal_without_a_retry_after() -> None:
    status, body = error_body(TokenLimitExceeded())
    assert (status, body["error"]["code"]) == (429, "token_limit_exceeded")
    assert "retryAfter" not in body["error"]
    assert error_headers(TokenLimitExceeded()) == {}


class _Request:
    def __init__(self) -> None:
        self.method = "POST"
        self.path = "/"
        self.headers: dict[str, str] = {}
        self.body_binary = b"{}"


class _Response:
    def json(self, obj: Any, status_code: int = 200, headers: dict[str, str] | None = None) -> Any:
        return {"body": obj, "statusCode": status_code, "headers": dict(headers or {})}


class _Context:
    def __init__(self) -> None:
        self.req = _Request()
        self.res = _Response()
        self.logs: list[str] = []

    def log(self, message: Any) -> None:
        self.logs.append(str(message))

    def error(self, message: Any) -> None:
        self.logs.append(str(message))


def test_the_edge_answers_retry_after_beside_no_store_and_logs_the_reason() -> None:
    def refuse(request: Request, log: LogLine) -> Answer:
        raise RateLimited(retry_after=2, reason="turns_in_flight", limit=3)

    context = _Context()
    answer = serve(context, "chat", ("POST",), refuse)

    assert answer["statusCode"] == 429
    assert answer["headers"] == {"cache-control": "no-store", "retry-after": "2"}
    assert '"reason":"turns_in_flight"' in context.logs[-1]
    assert '"event":"chat.rejected"' in context.logs[-1]
