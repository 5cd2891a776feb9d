"""The usage function through ``main(context)``: the verified caller's UsageStats, nobody else's."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.function_harness import Harness, modules_after_build, running


@pytest.fixture
def usage(tmp_path: Path) -> Iterator[Harness]:
    with running("usage", tmp_path / "metering.sqlite3") as harness:
        yield harness


def test_a_new_user_gets_demo_stats_and_a_demo_row(usage: Harness) -> None:
    """First touch creates the Demo account; the answer is its UsageStats."""
    result = usage.call(method="GET", user="newcomer")

    assert result.status_code == 200, result.body
    stats = result.json()
    assert (stats["userId"], stats["plan"], stats["level"]) == ("newcomer", "demo", "ok")
    assert stats["tokens"]["limit"] == 30
    assert stats["tokens"]["resetsAt"] == "2026-12-01T00:00:00.000Z"
    assert set(stats) == {"userId", "plan", "level", "tokens", "storage", "banks", "notices"}
    assert stats["notices"] == []
    assert usage.store().get_account("newcomer") is not None


def test_stats_reflect_the_stored_counters(usage: Harness) -> None:
    """Used, remaining, percent and level come from the caller's row, top-ups included."""
    usage.seed("alice", used=46_000, topup_tokens=0)

    stats = usage.call(method="GET", user="alice").json()

    assert stats["tokens"]["used"] == 46_000
    assert stats["tokens"]["remaining"] == 4_000
    assert stats["tokens"]["percent"] == 92.0
    assert stats["level"] == "critical"


def test_no_parameter_can_name_another_user(usage: Harness) -> None:
    """A userId in the query is ignored: the answer is always the JWT's user."""
    usage.seed("alice", used=5)
    usage.seed("bob", used=999)

    stats = usage.call(method="GET", user="alice", query_string="userId=bob&user=bob").json()

    assert (stats["userId"], stats["tokens"]["used"]) == ("alice", 5)


def test_a_forged_user_id_header_is_403(usage: Harness) -> None:
    """A user-id header that differs from the JWT's user is refused."""
    usage.seed("victim", used=7)
    jwt = usage.jwt("attacker")
    before = usage.snapshot()

    result = usage.call(
        method="GET", headers={"x-appwrite-user-jwt": jwt, "x-appwrite-user-id": "victim"}
    )

    assert result.status_code == 403
    assert "victim" not in result.body.decode()
    assert usage.snapshot() == before


@pytest.mark.parametrize(
    "headers",
    [{}, {"x-appwrite-user-id": "alice"}, {"x-appwrite-user-jwt": "eyJnot-issued"}],
    ids=["nothing", "user-id-only", "unknown-jwt"],
)
def test_without_a_valid_jwt_the_answer_is_401(usage: Harness, headers: dict[str, str]) -> None:
    """No JWT, or one Appwrite does not accept: unauthenticated, nothing created."""
    before = usage.snapshot()

    result = usage.call(method="GET", headers=headers)

    assert result.status_code == 401
    assert result.json()["error"]["code"] == "unauthenticated"
    assert usage.snapshot() == before


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE"])
def test_other_methods_get_a_json_400(usage: Harness, method: str) -> None:
    """Only GET reads usage; anything else is a JSON invalid_request and stores nothing."""
    before = usage.snapshot()

    result = usage.call(b'{"userId": "bob"}', method=method, user="alice")

    assert result.status_code == 400
    assert result.json()["error"]["code"] == "invalid_request"
    assert usage.snapshot() == before


def test_an_identity_outage_is_a_json_503(usage: Harness) -> None:
    """When the Account API fails, the caller gets a retryable JSON error, not a 500 page."""
    usage.accounts.failing_status = 503

    result = usage.call(method="GET", user="alice")

    assert result.status_code == 503
    assert result.json()["error"]["code"] == "upstream_unavailable"


@pytest.mark.slow
def test_usage_never_imports_the_anthropic_sdk() -> None:
    """Loading and wiring the usage function leaves anthropic out of the process."""
    loaded = modules_after_build("usage")
    assert "appwrite" in loaded
    assert not {"anthropic", "httpx2", "stripe"} & loaded
