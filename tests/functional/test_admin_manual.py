"""`grant`, `set-plan` and `reset`: each applied once, recorded in the ledger with its reason
without changing what the ledger counts, dry runs changing nothing, bad input failing in one
line."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from metering.account import new_account
from metering.ledger import LedgerStatus
from metering.plans import load_default_plans
from metering.ports import UsageStore

from tests.support import builders
from tests.support.admin import STORES, admin_store, run_admin

NOW = datetime(2026, 3, 20, 9, tzinfo=UTC)


@pytest.fixture(params=STORES)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[UsageStore]:
    with admin_store(request.param, tmp_path) as opened:
        yield opened


@pytest.fixture
def user(store: UsageStore) -> str:
    """user-1 on the default plan since March 1st, 700 tokens used."""
    store.create_account(new_account("user-1", load_default_plans().default, NOW))
    store.update_account("user-1", {"max_tokens_per_month": 10_000})
    builders.charge(store, "user-1", "chat-1", 700, NOW)
    return "user-1"


def admin_run(
    store: UsageStore, monkeypatch: pytest.MonkeyPatch, *args: str
) -> tuple[int, str, str]:
    return run_admin(store, monkeypatch, args, now=NOW)


def records(store: UsageStore, user_id: str) -> list[dict[str, object]]:
    account = store.get_account(user_id)
    assert account is not None
    start = datetime(2000, 1, 1, tzinfo=UTC)
    page = store.list_ledger(start, datetime(2100, 1, 1, tzinfo=UTC), 100, None)
    return [
        json.loads(entry.reply)
        for entry in page.items
        if entry.status == LedgerStatus.ADJUSTMENT and entry.user_id == user_id
    ]


def test_grant_credits_once_and_records_its_reason(
    store: UsageStore, user: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two identical grants credit once; the record has the reason and the ledger total stays."""
    first = admin_run(
        store, monkeypatch, "grant", "--user", user, "--tokens", "500", "--reason", "outage"
    )
    second = admin_run(
        store, monkeypatch, "grant", "--user", user, "--tokens", "500", "--reason", "outage"
    )

    account = store.get_account(user)
    assert account is not None
    assert (first[0], second[0]) == (0, 0), first[2]
    assert "already applied" in second[1]
    assert account.topup_tokens == 500
    assert store.ledger_total(user, account.period_start) == account.current_tokens_used == 700
    [record] = records(store, user)
    assert (record["kind"], record["reason"], record["tokens"]) == ("grant", "outage", 500)


def test_a_grant_with_another_key_applies_again(
    store: UsageStore, user: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--key tells a second, wanted grant from a repeated one."""
    for key in ("ticket-1", "ticket-2", "ticket-2"):
        admin_run(
            store,
            monkeypatch,
            "grant",
            "--user",
            user,
            "--tokens",
            "100",
            "--reason",
            "r",
            "--key",
            key,
        )

    account = store.get_account(user)
    assert account is not None
    assert account.topup_tokens == 200


def test_dry_runs_change_nothing(
    store: UsageStore, user: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--dry-run on each command: the account and the ledger are as before."""
    before = store.get_account(user)
    for args in (
        ["grant", "--tokens", "5"],
        ["set-plan", "--plan", "pro"],
        ["reset"],
    ):
        code, out, _ = admin_run(
            store, monkeypatch, *args, "--user", user, "--reason", "r", "--dry-run"
        )
        assert code == 0
        assert "dry run" in out

    assert store.get_account(user) == before
    assert records(store, user) == []


def test_set_plan_sets_the_catalog_allowance_once(
    store: UsageStore, user: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """set-plan pro: plan and maxTokensPerMonth from the catalog, one record however often run."""
    for _ in range(2):
        code, _, _ = admin_run(
            store, monkeypatch, "set-plan", "--user", user, "--plan", "pro", "--reason", "upgrade"
        )
        assert code == 0

    account = store.get_account(user)
    assert account is not None
    pro = load_default_plans().get("pro")
    assert (account.plan, account.max_tokens_per_month) == ("pro", pro.tokens_per_month)
    assert [record["kind"] for record in records(store, user)] == ["set-plan"]


def test_reset_zeroes_the_counter_once(
    store: UsageStore, user: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """reset: the counter to zero into the lifetime counter, a new period from now, once."""
    for _ in range(2):
        code, _, err = admin_run(store, monkeypatch, "reset", "--user", user, "--reason", "support")
        assert (code, err) == (0, "")

    account = store.get_account(user)
    assert account is not None
    assert (account.current_tokens_used, account.lifetime_tokens_used) == (0, 700)
    assert account.period_start == NOW
    assert store.ledger_total(user, account.period_start) == 0
    [record] = records(store, user)
    assert (record["kind"], record["used"]) == ("reset", 700)


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["grant", "--user", "user-1", "--tokens", "-3", "--reason", "r"], 2, "positive"),
        (["grant", "--user", "user-1", "--tokens", "x", "--reason", "r"], 2, "positive"),
        (["grant", "--user", "user-1", "--tokens", "3"], 2, "--reason"),
        (["grant", "--user", "nobody", "--tokens", "3", "--reason", "r"], 1, "no account"),
        (["grant", "--user", "user-1", "--tokens", "3", "--reason", " "], 1, "--reason"),
        (["set-plan", "--user", "user-1", "--plan", "gold", "--reason", "r"], 1, "no plan 'gold'"),
        (["reset", "--user", "nobody", "--reason", "r"], 1, "no account"),
    ],
)
def test_bad_input_fails_in_one_line(
    *,
    store: UsageStore,
    user: str,
    monkeypatch: pytest.MonkeyPatch,
    args: list[str],
    code: int,
    message: str,
) -> None:
    """Each bad argument: its exit code, one stderr line naming it, nothing changed."""
    before = store.get_account(user)
    result = admin_run(store, monkeypatch, *args)

    assert result[0] == code
    assert message in result[2]
    assert result[2].count("\n") == 1
    assert store.get_account(user) == before


def test_a_run_that_died_between_record_and_change_is_not_applied_blindly(
    store: UsageStore, user: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The process dies after writing the record: a rerun neither reports "already applied" nor
    grants a second time; it says what to check, and exits non-zero."""
    grant = ("grant", "--user", user, "--tokens", "500", "--reason", "x")

    def dies(*args: object) -> None:
        raise KeyboardInterrupt  # the operator's Ctrl-C, or the process killed

    with monkeypatch.context() as dying:
        dying.setattr(type(store), "add_topup", dies)
        # A killed process runs no clean-up: the record stays.
        dying.setattr(type(store), "discard_request", lambda *args: None)
        interrupted = admin_run(store, monkeypatch, *grant)
    code, out, err = admin_run(store, monkeypatch, *grant)

    account = store.get_account(user)
    assert account is not None
    assert interrupted[0] != 0
    assert code != 0
    assert "did not finish" in err
    assert "already applied" not in out
    assert account.topup_tokens == 0
    assert records(store, user) == []
