"""What the shared store contract cannot see of the SQLite store: its tables are the ones of
``appwrite.json``, it writes the very rows the Appwrite store writes, and a change failing at
any statement is all or nothing."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from metering.account import Level, new_account, plan_reset
from metering.adapters.appwrite_store import AppwriteStore
from metering.alerts import Notice
from metering.errors import StoreError
from metering.ledger import LedgerEntry, LedgerStatus
from metering.plans import load_default_plans
from metering.ports import Payment, PaymentKind, UsageStore
from metering.tokens import TokenUsage
from metering.turns import Turn, TurnStatus

from localruntime.sqlite_store import SYSTEM_COLUMNS, SQLiteStore
from tests.support.appwrite_emulator import emulated_appwrite
from tests.support.builders import ledger_entry
from tools.schema import load_schema

NOW = datetime(2026, 3, 15, 12, 0, tzinfo=UTC)
MARCH = datetime(2026, 3, 1, tzinfo=UTC)
SCHEMA = load_schema()


def _rows(path: Path, table: str) -> list[dict[str, Any]]:
    with sqlite3.connect(path) as connection:
        cursor = connection.execute(f'SELECT * FROM "{table}" ORDER BY seq')
        names = [column[0] for column in cursor.description]
        return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]


def test_the_tables_are_the_ones_of_appwrite_json(tmp_path: Path) -> None:
    """Each table has the columns of appwrite.json (required ones NOT NULL, defaults as
    declared), the store's system columns, and an index per declared index."""
    path = tmp_path / "metering.sqlite3"
    SQLiteStore(str(path))
    with sqlite3.connect(path) as connection:
        for table in SCHEMA.tables:
            info = {
                row[1]: (bool(row[3]), row[4])
                for row in connection.execute(f'PRAGMA table_info("{table.id}")')
            }
            assert set(info) == {c.key for c in table.columns} | set(SYSTEM_COLUMNS.values())
            for column in table.columns:
                required, default = info[column.key]
                assert required == column.required, column.key
                assert (default is None) == (column.default is None), column.key
            indexes = {
                row[1]: bool(row[2])
                for row in connection.execute(f'PRAGMA index_list("{table.id}")')
            }
            for index in table.indexes:
                assert indexes[f"{table.id}_{index.key}"] == (index.type == "unique")


def test_an_older_file_gains_the_columns_it_lacks_and_keeps_its_rows(tmp_path: Path) -> None:
    """A column added to appwrite.json reaches a file made before it: the file gets the column
    (its rows read NULL, as on Appwrite, hence the codec's fallbacks) and nothing is lost."""
    path = tmp_path / "metering.sqlite3"
    with sqlite3.connect(path) as connection:
        connection.execute(
            "CREATE TABLE subscriptions (seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT NOT NULL"
            " UNIQUE, createdAt TEXT NOT NULL, updatedAt TEXT NOT NULL, userId TEXT NOT NULL,"
            " plan TEXT, currentTokensUsed INTEGER DEFAULT 0)"
        )
        connection.execute(
            "INSERT INTO subscriptions (id, createdAt, updatedAt, userId, plan, currentTokensUsed)"
            " VALUES ('r1', ?, ?, 'user-1', 'pro', 7)",
            ("2026-03-02T00:00:00.000+00:00", "2026-03-02T00:00:00.000+00:00"),
        )

    store = SQLiteStore(str(path))

    account = store.get_account("user-1")
    assert account is not None
    assert (account.row_id, account.plan, account.current_tokens_used) == ("r1", "pro", 7)
    assert (account.max_tokens_per_month, account.period_start) == (200_000, MARCH)
    columns = set(_rows(path, "subscriptions")[0])
    assert columns >= {c.key for c in SCHEMA.table("subscriptions").columns}


def _exercise(store: UsageStore) -> None:
    """One of every write a store makes."""
    plans = load_default_plans()
    store.create_account(new_account("user-1", plans.get("starter"), NOW))
    store.update_account("user-1", {"stripe_customer_id": "cus_1", "stripe_subscription_id": ""})
    store.add_topup("user-1", 500)
    entry = LedgerEntry(
        request_id="_retry.1",
        user_id="user-1",
        status=LedgerStatus.RESERVED,
        model="claude-sonnet-5-5",
        period_start=MARCH,
        created_at=NOW,
        updated_at=NOW,
        held_tokens=900,
    )
    turn = Turn("_retry.1", "user-1", TurnStatus.PENDING, NOW, NOW, model="claude-sonnet-5-5")
    # A discarded first attempt, then the retry that claims the same id and replaces its turn.
    store.open_request(entry, 10**6, turn)
    store.discard_request("user-1", "_retry.1", 900, {"status": TurnStatus.FAILED})
    store.open_request(entry, 10**6, turn)
    first = TokenUsage(input_tokens=500, cache_creation_input_tokens=200, steps=1)
    store.settle(
        "user-1",
        "_retry.1",
        200,
        {"held_tokens": 0, "usage": first, "cost_micro_usd": 30},
        {"status": TurnStatus.STREAMING, "content": "Hel", "usage": first},
    )
    store.update_turn("_retry.1", {"content": "Hello", "updated_at": NOW})
    store.hold("user-1", "_retry.1", 300, 10**6)
    usage = first + TokenUsage(output_tokens=100, steps=1)
    store.settle(
        "user-1",
        "_retry.1",
        200,
        {
            "status": LedgerStatus.SETTLED,
            "held_tokens": 0,
            "usage": usage,
            "cost_micro_usd": 42,
            "estimated": True,
            "reply": "",
        },
        {"status": TurnStatus.STOPPED, "usage": usage, "truncated": True, "estimated": True},
    )
    store.request_stop("_retry.1", "user-1", NOW)
    store.request_stop("_retry.1", "user-1", NOW)
    store.claim_event("evt_1", "invoice.paid", "in_1", NOW, timedelta(minutes=2))
    store.complete_event("evt_1", "x" * 300, NOW)
    store.claim_event("topup_1", "topup", "cs_1", NOW, None)
    notice = Notice("alert-1", "user-1", 90, Level.CRITICAL, "90 %", MARCH, NOW)
    store.create_notice(notice)
    store.mark_alert_sent("user-1", MARCH, 90)
    store.update_account(
        "user-1",
        {"pending_plan": "pro", "pending_charges": (("price_pro", 1), ("price_addon", 3))},
    )
    store.remove_topup("user-1", 200)
    paid = Payment("cs_" + "x" * 60, PaymentKind.TOPUP, "user-1", 500, "usd", NOW, tokens=500)
    store.record_payment(paid)
    store.update_payment(paid.stripe_id, {"tokens_revoked": 200})
    store.record_payment(
        Payment("in_1", PaymentKind.INVOICE, "user-1", 900, "usd", NOW, period_start=MARCH)
    )
    store.save_cursor("cron.stripe-lookups", "first-place")
    store.save_cursor("cron.stripe-lookups", "second-place")
    store.save_cursor("cron.reconciliation", "gone")
    store.save_cursor("cron.reconciliation", None)
    fix = ledger_entry("user-1", "admin-fix", status=LedgerStatus.ADJUSTMENT, reply='{"fix":1}')
    store.record_adjustment(fix, -10)
    account = store.get_account("user-1")
    assert account is not None
    reset = plan_reset(account, datetime(2026, 4, 1, tzinfo=UTC), None, NOW)
    assert reset is not None
    assert store.apply_reset(reset, account.period_start) is not None


def test_both_stores_write_the_same_rows(tmp_path: Path) -> None:
    """The same operations leave the same row ids and the same column values, encodings
    included, in the SQLite file and in Appwrite: one codec, one schema."""
    path = tmp_path / "metering.sqlite3"
    _exercise(SQLiteStore(str(path)))
    with emulated_appwrite() as emulator:
        _exercise(AppwriteStore.connect(emulator.store_settings(), emulator.api_key))
        for table in SCHEMA.tables:
            columns = [column.key for column in table.columns]
            on_appwrite = [
                {"id": row["$id"], **{key: row[key] for key in columns}}
                for row in emulator.rows(table.id)
            ]
            on_sqlite = [
                {"id": row["id"], **{key: row[key] for key in columns}}
                for row in _rows(path, table.id)
            ]
            assert on_sqlite == on_appwrite, table.id
            assert on_sqlite, table.id


# -- each change of the hard cap is all or nothing ---------------------------------------------


class FailingConnection:
    """The store's connection, with statement ``at`` failing as a full disk or a busy file
    fails it: before it runs, or, ``after`` it, with its change made but its answer lost."""

    def __init__(self, connection: sqlite3.Connection, at: int, *, after: bool) -> None:
        self._connection = connection
        self._at = at
        self._after = after
        self.statements: list[str] = []

    def execute(self, sql: str, params: Any = ()) -> sqlite3.Cursor:
        failing = len(self.statements) == self._at
        self.statements.append(sql.split(maxsplit=1)[0])
        if failing and not self._after:
            raise sqlite3.OperationalError("disk I/O error")
        cursor = self._connection.execute(sql, params)
        if failing:
            raise sqlite3.OperationalError("disk I/O error")
        return cursor

    def __getattr__(self, name: str) -> Any:
        return getattr(self._connection, name)


def _in_flight(path: Path) -> SQLiteStore:
    """user-1 on Starter with req-1 in flight, holding 500 with its turn."""
    store = SQLiteStore(str(path))
    store.create_account(new_account("user-1", load_default_plans().get("starter"), NOW))
    turn = Turn("req-1", "user-1", TurnStatus.PENDING, NOW, NOW)
    store.open_request(ledger_entry("user-1", "req-1", held_tokens=500), 50_000, turn)
    return store


def _state(store: SQLiteStore) -> tuple[object, ...]:
    account = store.get_account("user-1")
    assert account is not None
    counter = account.current_tokens_used
    assert store.ledger_total("user-1", MARCH) == counter
    requests = ("req-1", "req-2")
    return (counter, *map(store.get_ledger, requests), *map(store.get_turn, requests))


def _failing(
    monkeypatch: pytest.MonkeyPatch, store: SQLiteStore, at: int, *, after: bool
) -> FailingConnection:
    """Make the store's writes and reads on this thread go through a failing connection."""
    connection = FailingConnection(store._connection(), at, after=after)
    monkeypatch.setattr(store, "_connection", lambda: connection)
    return connection


STEP = TokenUsage(input_tokens=300, steps=1)
CHANGES: dict[str, Callable[[SQLiteStore], object]] = {
    "open_request": lambda store: store.open_request(
        ledger_entry("user-1", "req-2", held_tokens=400),
        50_000,
        Turn("req-2", "user-1", TurnStatus.PENDING, NOW, NOW),
    ),
    "settle": lambda store: store.settle(
        "user-1", "req-1", 200, {"held_tokens": 0, "usage": STEP}, {"usage": STEP}
    ),
}


@pytest.mark.parametrize("after", [False, True], ids=["fails", "answer-lost"])
@pytest.mark.parametrize("name", CHANGES)
def test_a_change_failing_at_any_statement_is_all_or_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str, *, after: bool
) -> None:
    """Whichever statement of the change fails: a StoreError, the change made whole (only once
    its COMMIT ran) or not at all, counter == ledger total, and the store works on."""
    change = CHANGES[name]
    clean = _in_flight(tmp_path / "clean.sqlite3")
    before = _state(clean)
    statements = _failing(monkeypatch, clean, -1, after=False).statements
    change(clean)
    monkeypatch.undo()
    applied = _state(clean)
    assert statements[-1] == "COMMIT"
    # BEGIN either opens the transaction or fails: it cannot run and then lose its answer.
    for at in range(1 if after else 0, len(statements)):
        store = _in_flight(tmp_path / f"{at}.sqlite3")
        _failing(monkeypatch, store, at, after=after)
        with pytest.raises(StoreError):
            change(store)
        monkeypatch.undo()
        committed = after and at == len(statements) - 1
        assert _state(store) == (applied if committed else before), statements[at]
        store.request_stop("req-1", "user-1", NOW)
        assert store.stop_requested("req-1")
