"""`python -m tools.admin reconcile`: counters against the ledger (fixed only with --apply,
each fix recorded) on SQLite and the Appwrite emulation, and the ledger per model and hour
against Anthropic's usage report, faked at HTTP."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

import pytest
import responses
from metering.account import new_account
from metering.adapters.appwrite_store import AppwriteStore
from metering.ledger import LedgerStatus
from metering.plans import load_default_plans
from metering.ports import UsageStore
from metering.tokens import TokenUsage

from localruntime.sqlite_store import SQLiteStore
from tests.support import builders
from tests.support.admin import STORES, admin_store, run_admin
from tests.support.appwrite_emulator import AppwriteEmulator
from tests.support.appwrite_http_bridge import served
from tests.support.builders import ledger_entry
from tools.admin_commands.reconcile import USAGE_REPORT_URL
from tools.schema import load_schema

NOW = datetime(2026, 3, 20, 9, 30, tzinfo=UTC)
PLANS = load_default_plans()


@pytest.fixture(params=STORES)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[UsageStore]:
    with admin_store(request.param, tmp_path) as opened:
        yield opened


def admin_run(
    store: UsageStore, monkeypatch: pytest.MonkeyPatch, *args: str, **environ: str
) -> tuple[int, str, str]:
    return run_admin(store, monkeypatch, ["reconcile", *args], now=NOW, environ=environ)


def drifted(store: UsageStore) -> None:
    """high: counter 15 over an empty ledger; low: counter 0 under a ledger of 300; ok: 700 both."""
    store.create_account(replace(new_account("high", PLANS.default, NOW), current_tokens_used=15))
    store.create_account(new_account("low", PLANS.default, NOW))
    store.open_request(ledger_entry("low", "low-1", usage=TokenUsage(input_tokens=300)), 10**9)
    store.create_account(new_account("ok", PLANS.default, NOW))
    builders.charge(store, "ok", "ok-1", 700, NOW)


def counters(store: UsageStore) -> dict[str, tuple[int, int]]:
    result = {}
    for user_id in ("high", "low", "ok"):
        account = store.get_account(user_id)
        assert account is not None
        ledger = store.ledger_total(user_id, account.period_start)
        result[user_id] = (account.current_tokens_used, ledger)
    return result


def test_drift_is_reported_and_nothing_changes_without_apply(
    store: UsageStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without --apply: each drifted user named, exit 1, the counters as they were."""
    drifted(store)
    code, out, _ = admin_run(store, monkeypatch)

    assert code == 1
    assert "drift high: counter 15, ledger 0 (run with --apply to fix)" in out
    assert "drift low: counter 0, ledger 300" in out
    assert "counters: 3 accounts, 3 with usage this period, 2 drifted" in out
    assert counters(store) == {"high": (15, 0), "low": (0, 300), "ok": (700, 700)}


def test_apply_sets_a_counter_too_low_and_one_too_high_to_its_ledger_and_records_each_fix(
    store: UsageStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--apply: a counter below its ledger is raised to it, one above is lowered to it, each
    with one adjustment record that counts nothing in the ledger; exit 0, a rerun finds none."""
    drifted(store)
    code, out, _ = admin_run(store, monkeypatch, "--apply")
    again = admin_run(store, monkeypatch)

    assert code == 0
    assert "drift low: counter 0, ledger 300: fixed" in out
    assert "drift high: counter 15, ledger 0: fixed" in out
    assert "2 drifted, 2 fixed" in out
    assert counters(store) == {"high": (0, 0), "low": (300, 300), "ok": (700, 700)}
    assert again[0] == 0
    assert "0 drifted" in again[1]
    everything = (datetime(2000, 1, 1, tzinfo=UTC), datetime(2100, 1, 1, tzinfo=UTC))
    page = store.list_ledger(*everything, 100, None)
    fixes = [json.loads(e.reply) for e in page.items if e.status == LedgerStatus.ADJUSTMENT]
    assert sorted((fix["counter"], fix["ledger"]) for fix in fixes) == [(0, 300), (15, 0)]


def test_apply_lowers_a_counter_that_holds_tokens_in_flight_only_by_its_drift(
    store: UsageStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A counter 40 over a ledger that holds 100 for a request in flight goes down by 40 only:
    the hold stays on it, and settling the request later balances."""
    store.create_account(replace(new_account("u1", PLANS.default, NOW), current_tokens_used=40))
    builders.charge(store, "u1", "in-flight", 100, NOW, settled=False)

    code, out, _ = admin_run(store, monkeypatch, "--apply")

    assert code == 0
    assert "drift u1: counter 140, ledger 100: fixed" in out
    assert counters_of(store, "u1") == (100, 100)


def test_apply_twice_fixes_once(store: UsageStore, monkeypatch: pytest.MonkeyPatch) -> None:
    """A second --apply finds nothing to fix and records nothing more."""
    drifted(store)
    admin_run(store, monkeypatch, "--apply")
    code, out, _ = admin_run(store, monkeypatch, "--apply")

    assert code == 0
    assert "0 drifted" in out
    everything = (datetime(2000, 1, 1, tzinfo=UTC), datetime(2100, 1, 1, tzinfo=UTC))
    page = store.list_ledger(*everything, 100, None)
    assert sum(e.status == LedgerStatus.ADJUSTMENT for e in page.items) == 2


def counters_of(store: UsageStore, user_id: str) -> tuple[int, int]:
    account = store.get_account(user_id)
    assert account is not None
    return account.current_tokens_used, store.ledger_total(user_id, account.period_start)


def test_bad_arguments_fail_in_one_line(store: UsageStore, monkeypatch: pytest.MonkeyPatch) -> None:
    """An unknown option: exit 2 and one stderr line."""
    code, _, err = admin_run(store, monkeypatch, "--fix")

    assert code == 2
    assert err.count("\n") == 1


def usage_bucket(start: str, end: str, model: str, **tokens: int) -> dict[str, Any]:
    """One 1h bucket as the usage report returns it."""
    return {
        "starting_at": start,
        "ending_at": end,
        "results": [
            {
                "uncached_input_tokens": tokens.get("input", 0),
                "cache_creation": {
                    "ephemeral_1h_input_tokens": 0,
                    "ephemeral_5m_input_tokens": tokens.get("cache_writes", 0),
                },
                "cache_read_input_tokens": tokens.get("cache_reads", 0),
                "output_tokens": tokens.get("output", 0),
                "server_tool_use": {"web_search_requests": 0},
                "api_key_id": None,
                "workspace_id": None,
                "model": model,
                "service_tier": None,
                "context_window": None,
            }
        ],
    }


@pytest.fixture(params=["sqlite", "appwrite"])
def comparison_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[UsageStore]:
    """The store of the Anthropic comparison. The emulation answers over real HTTP here, so that
    the faked Anthropic API (``responses``) lets its requests pass instead of taking them."""
    if request.param == "sqlite":
        yield SQLiteStore(str(tmp_path / "metering.sqlite3"))
        return
    with served(lambda endpoint: AppwriteEmulator(load_schema(), endpoint=endpoint)) as emulator:
        responses.add_passthru(emulator.endpoint)
        yield AppwriteStore.connect(emulator.store_settings(), emulator.api_key)


@responses.activate
def test_the_ledger_is_compared_with_anthropic_per_model_and_hour(
    comparison_store: UsageStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two pages of the report: the matching hour passes, the differing one is named, exit 1."""
    store = comparison_store
    store.create_account(new_account("u1", PLANS.default, NOW))
    for request_id, hour, usage in (
        ("a", 3, TokenUsage(input_tokens=100, cache_creation_input_tokens=20, output_tokens=50)),
        ("b", 7, TokenUsage(input_tokens=10, output_tokens=5)),
    ):
        at = NOW.replace(day=2, hour=hour, minute=12)
        store.open_request(
            ledger_entry("u1", request_id, usage=usage, created_at=at, updated_at=at), 10**9
        )
    model = "claude-sonnet-5-5"
    first_hour = usage_bucket(
        "2026-03-02T03:00:00Z", "2026-03-02T04:00:00Z", model, input=100, cache_writes=20, output=50
    )
    later_hour = usage_bucket(
        "2026-03-02T07:00:00Z", "2026-03-02T08:00:00Z", model, input=10, output=9
    )
    # The second page first: the request naming `page_2` matches it, the first request falls
    # through to the first page.
    responses.get(
        USAGE_REPORT_URL,
        json={"data": [later_hour], "has_more": False, "next_page": None},
        match=[responses.matchers.query_param_matcher({"page": "page_2"}, strict_match=False)],
    )
    responses.get(
        USAGE_REPORT_URL, json={"data": [first_hour], "has_more": True, "next_page": "page_2"}
    )

    code, out, err = admin_run(store, monkeypatch, ANTHROPIC_ADMIN_KEY="sk-ant-admin01-test")

    assert err == ""
    assert code == 1
    assert f"anthropic 2026-03-02T07:00Z {model}: ledger vs report: output 5 vs 9" in out
    assert "2 hour-and-model buckets" in out
    assert "1 differing" in out
    first = responses.calls[0].request
    assert first.headers["x-api-key"] == "sk-ant-admin01-test"
    assert first.headers["anthropic-version"] == "2023-06-01"
    query = parse_qs(urlparse(first.url).query)
    assert query["bucket_width"] == ["1h"]
    assert query["group_by[]"] == ["model"]
    assert query["starting_at"] == ["2026-03-01T00:00:00Z"]
    assert query["ending_at"] == ["2026-03-20T09:00:00Z"]
    assert parse_qs(urlparse(responses.calls[1].request.url).query)["page"] == ["page_2"]


@responses.activate
def test_a_refused_usage_report_fails_in_one_line(
    comparison_store: UsageStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """HTTP 401 from Anthropic: exit 1 and one stderr line naming it."""
    responses.get(USAGE_REPORT_URL, status=401, json={"error": {"type": "authentication_error"}})

    code, _, err = admin_run(comparison_store, monkeypatch, ANTHROPIC_ADMIN_KEY="bad")

    assert code == 1
    assert "HTTP 401" in err
    assert err.count("\n") == 1
