"""The schema as code (``appwrite.json``) and ``tools.admin migrate|backfill`` against the
emulated Appwrite."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from metering.codec import row_key
from metering.errors import ConfigurationError
from metering.plans import load_default_plans
from metering.ports import ClaimOutcome

from tests.support.appwrite_emulator import AppwriteEmulator, emulated_appwrite
from tools import admin
from tools.schema import (
    APPWRITE_JSON,
    ColumnSpec,
    IndexSpec,
    Schema,
    TableSpec,
    load_schema,
    parse_schema,
)
from tools.schema_admin import (
    CreateColumn,
    CreateDatabase,
    CreateIndex,
    CreateTable,
    ExistingSchema,
    ExistingTable,
    backfill_defaults,
    missing_steps,
)

SCHEMA = load_schema()
DOCUMENT: dict[str, Any] = json.loads(APPWRITE_JSON.read_text(encoding="utf-8"))


def run(emulator: AppwriteEmulator, *args: str, key: str = "") -> tuple[int, str]:
    """Run the command as an operator would, against the emulator; returns (exit code, what it
    wrote on stdout and stderr)."""
    out, err = io.StringIO(), io.StringIO()
    environ = {
        "APPWRITE_ENDPOINT": emulator.endpoint,
        "APPWRITE_PROJECT_ID": emulator.project_id,
        "APPWRITE_API_KEY": key or emulator.api_key,
    }
    code = admin.main(list(args), environ=environ, out=out, err=err, sleep=lambda _: None)
    return code, out.getvalue() + err.getvalue()


@pytest.fixture
def empty_project() -> Iterator[AppwriteEmulator]:
    """A project with no database yet; columns take two reads to become available."""
    emulator = AppwriteEmulator(processing_polls=2)
    with emulator.running():
        yield emulator


# -- appwrite.json -------------------------------------------------------------------------------


def test_appwrite_json_declares_the_tables_with_zero_default_counters() -> None:
    """Every counter column defaults to 0 and can hold 64-bit values."""
    counters = {
        "subscriptions": ["currentTokensUsed", "lifetimeTokensUsed", "addonTokens", "topupTokens"],
        "usage_events": ["inputTokens", "outputTokens", "totalTokens", "reservedTokens"],
        "payments": ["amount", "tokens", "tokensRevoked"],
    }
    assert {table.id for table in SCHEMA.tables} == {
        "subscriptions",
        "usage_events",
        "claims",
        "notices",
        "payments",
        "turns",
        "turn_stops",
        "cursors",
    }
    for table_id, keys in counters.items():
        for key in keys:
            column = SCHEMA.table(table_id).column(key)
            assert (column.type, column.default, column.max) == ("integer", 0, 2**63 - 1)


def test_appwrite_json_indexes_the_lookups_the_store_makes() -> None:
    """userId is unique on subscriptions; the ledger is indexed by (userId, $createdAt)."""
    indexes = {
        (table.id, index.columns): index.type for table in SCHEMA.tables for index in table.indexes
    }
    assert indexes[("subscriptions", ("userId",))] == "unique"
    assert indexes[("usage_events", ("userId", "$createdAt"))] == "key"
    for column in ("stripeCustomerId", "stripeSubscriptionId", "periodStart", "periodEnd"):
        assert ("subscriptions", (column,)) in indexes
    # A payment is recorded once per Stripe object, found by what a refund names, listed by month.
    assert indexes[("payments", ("stripeId",))] == "unique"
    assert ("payments", ("paymentIntent",)) in indexes
    assert ("payments", ("paidAt",)) in indexes


@pytest.mark.parametrize(
    ("function_id", "execute", "schedule", "timeout"),
    [
        # A streamed turn is an asynchronous execution: it runs up to the function's timeout.
        ("chat", ["users"], "", 300),
        ("usage", ["users"], "", 15),
        ("stripe-webhook", ["any"], "", 30),
        ("monthly-reset-cron", [], "0 * * * *", 300),
        ("billing", ["users"], "", 15),
    ],
    ids=["chat", "usage", "stripe-webhook", "cron", "billing"],
)
def test_appwrite_json_deploys_each_function_with_least_privilege(
    function_id: str, execute: list[str], schedule: str, timeout: int
) -> None:
    """Each function: python-3.12, its own folder, who may execute it, rows scopes only (and
    the chat's one Messaging scope; billing only reads)."""
    function = next(f for f in DOCUMENT["functions"] if f["$id"] == function_id)
    assert function["runtime"] == "python-3.12"
    assert function["path"] == f"functions/{function_id}"
    assert function["entrypoint"] == "src/main.py"
    assert function["commands"] == "pip install -r requirements.txt"
    assert (function["execute"], function["schedule"], function["timeout"]) == (
        execute,
        schedule,
        timeout,
    )
    # The chat sends the usage alerts' emails through Appwrite Messaging; nothing else does.
    messaging = ["messages.write"] if function_id == "chat" else []
    rows = ["rows.read"] if function_id == "billing" else ["rows.read", "rows.write"]
    assert sorted(function["scopes"]) == sorted([*rows, *messaging])
    assert {"__pycache__", "*.pyc", ".venv", "tests"} <= set(function["ignore"])


@pytest.mark.parametrize(
    ("mutation", "message"),
    [
        (lambda doc: doc["tables"][0]["columns"].append({"key": "x", "type": "money"}), "type"),
        (
            lambda doc: doc["tables"][0]["indexes"].append(
                {"key": "i", "type": "key", "columns": ["nope"]}
            ),
            "unknown column",
        ),
        (
            lambda doc: doc["tables"][0]["columns"].append(
                {"key": "y", "type": "integer", "required": True, "default": 0}
            ),
            "default",
        ),
        (lambda doc: doc["tables"][0].update(databaseId="other"), "unknown database"),
        (
            lambda doc: doc["tables"][0]["columns"].append(
                {"key": "userId", "type": "string", "size": 5}
            ),
            "duplicate",
        ),
    ],
    ids=["unknown-type", "index-on-unknown-column", "required-with-default", "unknown-db", "dup"],
)
def test_parse_schema_names_what_is_wrong(mutation: Any, message: str) -> None:
    """A malformed schema is refused with a message saying where, before anything is applied."""
    document = json.loads(json.dumps(DOCUMENT))
    mutation(document)
    with pytest.raises(ConfigurationError, match=message):
        parse_schema(document)


# -- pure diff and defaults ----------------------------------------------------------------------


def test_missing_steps_of_an_empty_project_create_everything_in_order() -> None:
    """Databases, then tables, then columns, then indexes, each exactly once."""
    steps = missing_steps(SCHEMA, ExistingSchema())
    kinds = [type(step) for step in steps]
    order = [CreateDatabase, CreateTable, CreateColumn, CreateIndex]
    assert kinds == sorted(kinds, key=order.index)
    assert sum(isinstance(s, CreateColumn) for s in steps) == sum(
        len(t.columns) for t in SCHEMA.tables
    )
    assert sum(isinstance(s, CreateIndex) for s in steps) == sum(
        len(t.indexes) for t in SCHEMA.tables
    )


def test_missing_steps_of_a_complete_project_are_none() -> None:
    """Nothing exists twice: a project that has it all needs no step."""
    existing = ExistingSchema(
        databases=frozenset(d.id for d in SCHEMA.databases),
        tables={
            (t.database_id, t.id): ExistingTable(
                columns=frozenset(c.key for c in t.columns),
                indexes=frozenset(i.key for i in t.indexes),
            )
            for t in SCHEMA.tables
        },
    )
    assert missing_steps(SCHEMA, existing) == []


@pytest.mark.parametrize(
    ("row", "expected"),
    [
        (
            {"plan": "pro", "maxTokensPerMonth": None, "currentTokensUsed": 5},
            {"maxTokensPerMonth": 200_000},
        ),
        ({"plan": None, "maxTokensPerMonth": None}, {"plan": "demo", "maxTokensPerMonth": 30}),
        ({"plan": "starter", "maxTokensPerMonth": 7}, {}),
    ],
    ids=["plan-allowance", "default-plan", "nothing-null"],
)
def test_subscription_defaults_fill_only_null_columns(
    row: dict[str, Any], expected: dict[str, Any]
) -> None:
    """Backfill sets exactly the NULL columns: counters 0, limits from the plan."""
    subscriptions = SCHEMA.table("subscriptions")
    # Every column set, whatever columns the table has: only `row`'s NULLs are left to fill.
    samples = {"integer": 1, "datetime": "2026-03-01T00:00:00.000+00:00"}
    complete = {column.key: samples.get(column.type, "x") for column in subscriptions.columns}
    assert backfill_defaults(subscriptions, {**complete, **row}, load_default_plans()) == expected


# -- the command against the emulator ------------------------------------------------------------


def test_migrate_creates_everything_in_a_fresh_project(empty_project: AppwriteEmulator) -> None:
    """Database, tables, every column with its type and default, and every index with its
    orders exactly as appwrite.json spells them (`ASC`, not the SDK enum's `asc`)."""
    code, output = run(empty_project, "migrate")
    assert code == 0, output
    for spec in SCHEMA.tables:
        table = empty_project.table(spec.id)
        assert {key: c.spec.type for key, c in table.columns.items()} == {
            c.key: c.type for c in spec.columns
        }
        assert {key: c.spec.default for key, c in table.columns.items()} == {
            c.key: c.default for c in spec.columns
        }
        assert {key: tuple(i.columns) for key, i in table.indexes.items()} == {
            i.key: i.columns for i in spec.indexes
        }
        # As appwrite.json spells them: the CLI compares orders case-sensitively.
        assert {key: tuple(i.orders) for key, i in table.indexes.items()} == {
            i.key: i.orders for i in spec.indexes
        }
    assert "waiting for" in output


def test_migrate_twice_writes_nothing_the_second_time(empty_project: AppwriteEmulator) -> None:
    """Idempotent: a second run only reads and says the schema is up to date."""
    assert run(empty_project, "migrate")[0] == 0
    empty_project.calls.clear()
    code, output = run(empty_project, "migrate")
    assert code == 0
    assert empty_project.writes() == []
    assert empty_project.calls, "the second run must still inspect the project"
    assert "up to date" in output


def test_migrate_adds_exactly_the_missing_columns_and_their_indexes() -> None:
    """An older project gets the columns it lacks, and nothing else is touched or dropped."""
    skip = {"subscriptions": {"topupTokens", "periodEnd"}, "claims": {"attempt"}}
    emulator = AppwriteEmulator()
    emulator.apply_schema(SCHEMA, skip=skip)
    legacy = emulator.insert_row("subscriptions", {"userId": "old", "plan": "pro"}, row_id="r1")
    with emulator.running():
        code, output = run(emulator, "migrate")
    assert code == 0, output
    created = sorted(call.path for call in emulator.writes())
    assert created == [
        "/tablesdb/koffers_db/tables/claims/columns/integer",
        "/tablesdb/koffers_db/tables/subscriptions/columns/datetime",
        "/tablesdb/koffers_db/tables/subscriptions/columns/integer",
        "/tablesdb/koffers_db/tables/subscriptions/indexes",
    ]
    assert set(emulator.table("subscriptions").columns) >= {"topupTokens", "periodEnd"}
    assert "periodEnd" in emulator.table("subscriptions").indexes
    # The existing row keeps its data; the new column reads NULL until the backfill.
    row = emulator.rows("subscriptions")[0]
    assert (row["$id"], row["plan"], row["topupTokens"]) == (legacy["$id"], "pro", None)


def test_migrate_dry_run_lists_the_steps_and_writes_nothing(
    empty_project: AppwriteEmulator,
) -> None:
    """--dry-run reports what it would create without creating it."""
    code, output = run(empty_project, "migrate", "--dry-run")
    assert code == 0
    assert empty_project.writes() == []
    assert "would create database koffers_db" in output
    assert "would create column subscriptions.currentTokensUsed (integer)" in output


def test_migrate_names_every_missing_variable_once_one_is_set() -> None:
    """One of the project's variables alone is a configuration error naming the other two, in
    one line on stderr; nothing is contacted."""
    out, err = io.StringIO(), io.StringIO()
    code = admin.main(
        ["migrate"], environ={"APPWRITE_ENDPOINT": "http://a.test/v1"}, out=out, err=err
    )
    assert code == 1
    assert out.getvalue() == ""
    message = err.getvalue()
    assert message.count("\n") == 1
    for name in ("APPWRITE_PROJECT_ID", "APPWRITE_API_KEY"):
        assert name in message


def test_migrate_reports_a_wrong_api_key_as_an_error(empty_project: AppwriteEmulator) -> None:
    """A 401 from Appwrite is a clean error exit, not a traceback."""
    code, output = run(empty_project, "migrate", key="wrong")
    assert code == 1
    assert "user_unauthorized" in output
    assert empty_project.writes() == []


def _legacy_rows(emulator: AppwriteEmulator, count: int) -> None:
    """Rows as an older schema left them: counters and limits NULL, some without a plan."""
    for number in range(count):
        emulator.insert_row(
            "subscriptions",
            {
                "userId": f"user-{number}",
                "plan": "pro" if number % 2 else None,
                "currentTokensUsed": 42 if number % 3 == 0 else None,
            },
        )


def test_backfill_fixes_null_rows_across_pages() -> None:
    """Every row of several pages gets 0 counters, its plan's allowance, or the default plan;
    values that were set stay as they were."""
    with emulated_appwrite() as emulator:
        _legacy_rows(emulator, 250)
        emulator.calls.clear()
        code, output = run(emulator, "backfill")
        assert code == 0, output
        pages = [
            c
            for c in emulator.calls
            if c.method == "GET" and c.path.endswith("/subscriptions/rows")
        ]
        assert len(pages) == 3
        for number, row in enumerate(emulator.rows("subscriptions")):
            plan, allowance = ("pro", 200_000) if number % 2 else ("demo", 30)
            assert (row["plan"], row["maxTokensPerMonth"]) == (plan, allowance)
            assert row["currentTokensUsed"] == (42 if number % 3 == 0 else 0)
            assert (row["topupTokens"], row["lifetimeTokensUsed"], row["addonTokens"]) == (0, 0, 0)
        assert "250 rows scanned, 250 fixed" in output
        emulator.calls.clear()
        assert run(emulator, "backfill")[0] == 0
        assert emulator.writes() == []


def test_backfilled_counters_count_again() -> None:
    """The point of the backfill: an increment of a NULL counter is lost, of a 0 one is not."""
    with emulated_appwrite() as emulator:
        emulator.insert_row("subscriptions", {"userId": "u"}, row_id="u")
        client_store = _store(emulator)
        client_store.add_topup("u", 5)
        assert emulator.rows("subscriptions")[0]["topupTokens"] is None
        assert run(emulator, "backfill")[0] == 0
        client_store.add_topup("u", 5)
        assert emulator.rows("subscriptions")[0]["topupTokens"] == 5


def test_backfill_dry_run_counts_without_writing() -> None:
    """--dry-run says how many rows it would fix and changes none."""
    with emulated_appwrite() as emulator:
        _legacy_rows(emulator, 3)
        emulator.calls.clear()
        code, output = run(emulator, "backfill", "--dry-run")
        assert code == 0
        assert emulator.writes() == []
        assert "3 rows scanned, 3 to fix" in output


def _store(emulator: AppwriteEmulator) -> Any:
    from metering.adapters.appwrite_store import AppwriteStore

    return AppwriteStore.connect(emulator.store_settings(), emulator.api_key)


# -- the claims' former table --------------------------------------------------------------------

LEGACY_CLAIMS = TableSpec(
    id="stripe_events",
    database_id="koffers_db",
    name="stripe_events",
    columns=(
        ColumnSpec("eventId", "string", required=True, size=255),
        ColumnSpec("type", "string", size=128),
        ColumnSpec("objectId", "string", size=255),
        ColumnSpec("status", "string", size=16),
        ColumnSpec("attempt", "integer", default=0, min=0, max=2**63 - 1),
        ColumnSpec("outcome", "string", size=255),
        ColumnSpec("claimedAt", "datetime"),
        ColumnSpec("completedAt", "datetime"),
    ),
    indexes=(IndexSpec("objectId", "key", ("objectId",), ("ASC",)),),
)
CLAIMED_AT = "2026-03-01T10:00:00.000+00:00"


def _project_with_legacy_claims(emulator: AppwriteEmulator) -> dict[str, str]:
    """Claims as the old functions left them: a handled event, a handled reset (its key too long
    for a row id), a top-up still pending. Returns claim key -> row id."""
    emulator.apply_schema(Schema(databases=SCHEMA.databases, tables=(LEGACY_CLAIMS,)))
    reset_key = "reset:user-1:2026-03-01T00:00:00.000Z"
    rows = {
        "evt_1": ("invoice.paid", "in_1", "done", "reset"),
        reset_key: ("reset", "user-1", "done", "reset"),
        "topup_1": ("topup", "cs_1", "pending", None),
    }
    ids: dict[str, str] = {}
    for key, (kind, object_id, status, outcome) in rows.items():
        done = status == "done"
        row = emulator.insert_row(
            LEGACY_CLAIMS.id,
            {
                "eventId": key,
                "type": kind,
                "objectId": object_id,
                "status": status,
                "attempt": 0,
                "outcome": outcome,
                "claimedAt": CLAIMED_AT,
                "completedAt": CLAIMED_AT if done else None,
            },
            row_id=row_key(key),
        )
        ids[key] = row["$id"]
    return ids


def test_backfill_copies_the_former_claims_so_that_handled_events_stay_handled() -> None:
    """Each `stripe_events` row becomes the `claims` row of the same id and claim: a duplicate of
    an event handled before the rename is still a duplicate, a pending top-up still pending."""
    with emulated_appwrite() as emulator:
        ids = _project_with_legacy_claims(emulator)
        code, output = run(emulator, "backfill")
        assert code == 0, output
        assert "claims: 3 stripe_events rows scanned, 3 copied" in output
        assert {row["$id"] for row in emulator.rows("claims")} == set(ids.values())
        copied = {row["claimKey"]: row for row in emulator.rows("claims")}
        assert (copied["evt_1"]["kind"], copied["evt_1"]["outcome"]) == ("invoice.paid", "reset")
        store = _store(emulator)
        later = datetime(2026, 4, 1, tzinfo=UTC)
        for key in ("evt_1", "reset:user-1:2026-03-01T00:00:00.000Z"):
            assert store.claim_event(key, "t", "o", later, timedelta(minutes=2)) is (
                ClaimOutcome.DONE
            )
        assert store.claim_event("topup_1", "topup", "cs_1", later, None) is (
            ClaimOutcome.IN_PROGRESS
        )


def test_backfill_copies_the_former_claims_once() -> None:
    """A second run copies nothing again and leaves the claims as they are."""
    with emulated_appwrite() as emulator:
        _project_with_legacy_claims(emulator)
        assert run(emulator, "backfill")[0] == 0
        emulator.table("claims").rows[row_key("topup_1")]["status"] = "done"
        before = emulator.rows("claims")
        code, output = run(emulator, "backfill")
        assert code == 0
        assert "3 stripe_events rows scanned, 0 copied" in output
        assert emulator.rows("claims") == before


def test_backfill_dry_run_copies_no_claim() -> None:
    """--dry-run counts the former claims and writes none."""
    with emulated_appwrite() as emulator:
        _project_with_legacy_claims(emulator)
        emulator.calls.clear()
        code, output = run(emulator, "backfill", "--dry-run")
        assert code == 0
        assert emulator.writes() == []
        assert "3 stripe_events rows scanned, 3 to copy" in output
