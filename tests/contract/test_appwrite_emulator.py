"""The emulated Appwrite answers the real SDK as Appwrite 1.8 does: wire format, errors, atomics."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import requests
from appwrite.client import Client
from appwrite.exception import AppwriteException
from appwrite.query import Query
from appwrite.services.account import Account
from appwrite.services.tables_db import TablesDB

from tests.support.appwrite_emulator import AppwriteEmulator, emulated_appwrite
from tests.support.threads import run_together

DB = "koffers_db"
SUBS = "subscriptions"


@pytest.fixture
def emulator() -> Iterator[AppwriteEmulator]:
    with emulated_appwrite() as running:
        yield running


class Clock:
    """A clock that moves only when told, a second at a time."""

    def __init__(self, start: datetime) -> None:
        self.now = start

    def __call__(self) -> datetime:
        return self.now

    def advance(self) -> None:
        self.now += timedelta(seconds=1)


def tables(emulator: AppwriteEmulator, key: str | None = None) -> TablesDB:
    client = Client().set_endpoint(emulator.endpoint).set_project(emulator.project_id)
    client.set_key(key if key is not None else emulator.api_key)
    return TablesDB(client)


def error_of(call: Any) -> AppwriteException:
    with pytest.raises(AppwriteException) as caught:
        call()
    return caught.value


def new_subscription(db: TablesDB, row_id: str, user_id: str = "", **data: Any) -> Any:
    return db.create_row(DB, SUBS, row_id, {"userId": user_id or row_id, **data})


def test_rows_carry_the_system_fields_on_the_wire(emulator: AppwriteEmulator) -> None:
    """A row is its columns plus $id, $sequence, $tableId, $databaseId, timestamps, permissions."""
    new_subscription(tables(emulator), "u1")
    response = requests.get(
        f"{emulator.endpoint}/tablesdb/{DB}/tables/{SUBS}/rows/u1",
        headers={"X-Appwrite-Project": emulator.project_id, "X-Appwrite-Key": emulator.api_key},
        timeout=5,
    )
    body = response.json()
    assert response.status_code == 200
    assert {"$id", "$sequence", "$tableId", "$databaseId", "$createdAt", "$updatedAt"} <= set(body)
    assert (body["$id"], body["$tableId"], body["$databaseId"], body["$permissions"]) == (
        "u1",
        SUBS,
        DB,
        [],
    )
    assert body["$createdAt"].endswith("+00:00")


def test_new_rows_take_column_defaults_so_counters_start_at_zero(
    emulator: AppwriteEmulator,
) -> None:
    """Columns left out of a create get the schema default (0 for counters, NULL otherwise)."""
    row = new_subscription(tables(emulator), "u1")
    assert row.data["currentTokensUsed"] == 0
    assert row.data["topupTokens"] == 0
    assert row.data["stripeSubscriptionId"] is None


def test_increment_max_is_inclusive(emulator: AppwriteEmulator) -> None:
    """current + value == max succeeds; current + value > max is a 400 column_limit_exceeded
    that changes nothing."""
    db = tables(emulator)
    new_subscription(db, "u1")
    row = db.increment_row_column(DB, SUBS, "u1", "currentTokensUsed", value=10, max=10)
    assert row.data["currentTokensUsed"] == 10
    error = error_of(
        lambda: db.increment_row_column(DB, SUBS, "u1", "currentTokensUsed", value=1, max=10)
    )
    assert (error.code, error.type) == (400, "column_limit_exceeded")
    assert db.get_row(DB, SUBS, "u1").data["currentTokensUsed"] == 10


def test_decrement_min_is_inclusive(emulator: AppwriteEmulator) -> None:
    """current - value == min succeeds; below min is a 400 column_limit_exceeded."""
    db = tables(emulator)
    new_subscription(db, "u1", currentTokensUsed=5)
    assert (
        db.decrement_row_column(DB, SUBS, "u1", "currentTokensUsed", value=5, min=0).data[
            "currentTokensUsed"
        ]
        == 0
    )
    error = error_of(
        lambda: db.decrement_row_column(DB, SUBS, "u1", "currentTokensUsed", value=1, min=0)
    )
    assert (error.code, error.type) == (400, "column_limit_exceeded")


def test_a_null_counter_is_never_incremented(emulator: AppwriteEmulator) -> None:
    """A row that predates its column reads NULL, and NULL + n stays NULL in storage, although
    the answer (computed from the value read) says 0 + n."""
    emulator.insert_row(SUBS, {"userId": "old"}, row_id="old")
    db = tables(emulator)
    answered = db.increment_row_column(DB, SUBS, "old", "topupTokens", value=5)
    assert answered.data["topupTokens"] == 5
    assert db.get_row(DB, SUBS, "old").data["topupTokens"] is None


def test_an_increment_of_a_missing_row_is_reported_as_a_missing_column(
    emulator: AppwriteEmulator,
) -> None:
    """The database layer's "not found" covers rows and columns, and the server answers it
    as 404 column_not_found; a zero or negative step is a 400 general_argument_invalid."""
    db = tables(emulator)
    error = error_of(lambda: db.increment_row_column(DB, SUBS, "missing", "topupTokens", value=1))
    assert (error.code, error.type) == (404, "column_not_found")
    new_subscription(db, "u1")
    for step in (0, -3):
        error = error_of(
            lambda step=step: db.decrement_row_column(DB, SUBS, "u1", "topupTokens", value=step)
        )
        assert (error.code, error.type) == (400, "general_argument_invalid")


def test_concurrent_bounded_increments_never_pass_the_max(emulator: AppwriteEmulator) -> None:
    """32 threads racing bounded increments: exactly max/value succeed and the counter ends
    at max, because each increment holds the row."""
    db = tables(emulator)
    new_subscription(db, "u1")
    successes: list[int] = []
    refusals: list[str] = []
    lock = threading.Lock()

    def worker() -> None:
        for _ in range(4):
            try:
                db.increment_row_column(DB, SUBS, "u1", "currentTokensUsed", value=7, max=350)
            except AppwriteException as exc:
                with lock:
                    refusals.append(str(exc.type))
            else:
                with lock:
                    successes.append(1)

    run_together([worker] * 32)
    assert len(successes) == 50
    assert set(refusals) == {"column_limit_exceeded"}
    assert db.get_row(DB, SUBS, "u1").data["currentTokensUsed"] == 350


@pytest.mark.parametrize(
    ("call", "status", "error_type"),
    [
        (lambda db: db.get_row(DB, SUBS, "missing"), 404, "row_not_found"),
        (lambda db: db.list_rows(DB, "no_such_table"), 404, "table_not_found"),
        (lambda db: db.get_row("no_such_db", SUBS, "x"), 404, "database_not_found"),
        (lambda db: new_subscription(db, "u1"), 409, "row_already_exists"),
        (lambda db: new_subscription(db, "other", "u1"), 409, "row_already_exists"),
        (
            lambda db: db.create_row(DB, SUBS, "x", {"userId": "x", "bogus": 1}),
            400,
            "row_invalid_structure",
        ),
        (lambda db: db.create_row(DB, SUBS, "x", {"plan": "pro"}), 400, "row_invalid_structure"),
        (
            lambda db: db.create_row(DB, SUBS, "x", {"userId": "x", "topupTokens": "1"}),
            400,
            "row_invalid_structure",
        ),
        (
            lambda db: db.create_row(DB, SUBS, "_bad", {"userId": "x"}),
            400,
            "general_argument_invalid",
        ),
        (
            lambda db: db.list_rows(DB, SUBS, ['{"method":"nope","attribute":"userId"}']),
            400,
            "general_query_invalid",
        ),
        (
            lambda db: db.list_rows(DB, SUBS, [Query.cursor_after("gone")]),
            400,
            "general_cursor_not_found",
        ),
    ],
    ids=[
        "row-not-found",
        "unknown-table",
        "unknown-database",
        "duplicate-id",
        "unique-index",
        "unknown-column",
        "missing-required",
        "wrong-type",
        "invalid-id",
        "bad-query",
        "unknown-cursor",
    ],
)
def test_errors_surface_as_appwrite_exceptions_with_code_and_type(
    emulator: AppwriteEmulator, call: Any, status: int, error_type: str
) -> None:
    """Each failure is Appwrite's error document, which the SDK raises as AppwriteException."""
    db = tables(emulator)
    new_subscription(db, "u1")
    error = error_of(lambda: call(db))
    assert (error.code, error.type) == (status, error_type)


def test_requests_without_the_api_key_are_unauthorized(emulator: AppwriteEmulator) -> None:
    """No key (or a wrong one): 401 user_unauthorized, and nothing is written."""
    error = error_of(lambda: new_subscription(tables(emulator, key="wrong"), "u1"))
    assert (error.code, error.type) == (401, "user_unauthorized")
    assert emulator.rows(SUBS) == []


def test_queries_filter_order_and_page_with_a_cursor(emulator: AppwriteEmulator) -> None:
    """equal, notEqual, lessThan(Equal), greaterThan, isNull/isNotNull, orderDesc, limit and
    cursorAfter combine as on the server; total counts every match."""
    db = tables(emulator)
    for number in range(7):
        new_subscription(
            db,
            f"u{number}",
            plan="pro" if number % 2 else "demo",
            currentTokensUsed=number * 10,
            stripeSubscriptionId=f"sub_{number}" if number < 3 else None,
            periodEnd=f"2025-0{number + 1}-01T00:00:00.000Z",
        )

    def ids(queries: list[str]) -> list[str]:
        return [row.id for row in db.list_rows(DB, SUBS, queries).rows]

    assert ids([Query.equal("plan", "pro")]) == ["u1", "u3", "u5"]
    assert ids([Query.not_equal("plan", "pro"), Query.less_than("currentTokensUsed", 40)]) == [
        "u0",
        "u2",
    ]
    assert ids([Query.greater_than("currentTokensUsed", 40)]) == ["u5", "u6"]
    assert ids([Query.less_than_equal("currentTokensUsed", 10)]) == ["u0", "u1"]
    assert ids([Query.is_null("stripeSubscriptionId")]) == ["u3", "u4", "u5", "u6"]
    assert ids([Query.is_not_null("stripeSubscriptionId")]) == ["u0", "u1", "u2"]
    assert ids([Query.less_than("periodEnd", "2025-03-01T00:00:00+00:00")]) == ["u0", "u1"]
    first = db.list_rows(DB, SUBS, [Query.order_desc("currentTokensUsed"), Query.limit(3)])
    assert [row.id for row in first.rows] == ["u6", "u5", "u4"]
    assert first.total == 7
    after = [Query.order_desc("currentTokensUsed"), Query.limit(3), Query.cursor_after("u4")]
    assert ids(after) == ["u3", "u2", "u1"]


def test_a_transaction_commits_all_or_nothing(emulator: AppwriteEmulator) -> None:
    """Staged operations apply together at commit; one failing bound rolls all of them back."""
    db = tables(emulator)
    new_subscription(db, "u1", currentTokensUsed=5)
    ok = db.create_transaction().id
    db.increment_row_column(DB, SUBS, "u1", "lifetimeTokensUsed", value=5, transaction_id=ok)
    db.decrement_row_column(DB, SUBS, "u1", "currentTokensUsed", value=5, min=0, transaction_id=ok)
    assert db.get_row(DB, SUBS, "u1").data["lifetimeTokensUsed"] == 0
    db.update_transaction(ok, commit=True)
    row = db.get_row(DB, SUBS, "u1").data
    assert (row["currentTokensUsed"], row["lifetimeTokensUsed"]) == (0, 5)

    failing = db.create_transaction().id
    db.update_row(DB, SUBS, "u1", {"plan": "pro"}, transaction_id=failing)
    db.decrement_row_column(
        DB, SUBS, "u1", "currentTokensUsed", value=1, min=0, transaction_id=failing
    )
    error = error_of(lambda: db.update_transaction(failing, commit=True))
    # The commit reports a refused bound with the older attribute error type.
    assert (error.code, error.type) == (400, "attribute_limit_exceeded")
    assert db.get_row(DB, SUBS, "u1").data["plan"] is None
    assert db.get_transaction(failing).status == "failed"
    error = error_of(lambda: db.update_transaction(failing, rollback=True))
    assert error.type == "transaction_not_ready"


def test_a_staged_update_of_a_row_changed_since_is_a_transaction_conflict() -> None:
    """An update staged before the row changed fails the commit with 409 transaction_conflict
    and applies nothing; a staged increment is not checked; a missing row is a 404
    document_not_found at commit."""
    clock = Clock(datetime(2026, 3, 1, tzinfo=UTC))
    with emulated_appwrite(clock=clock) as emulator:
        db = tables(emulator)
        new_subscription(db, "u1")
        stale = db.create_transaction().id
        db.update_row(DB, SUBS, "u1", {"plan": "pro"}, transaction_id=stale)
        db.increment_row_column(DB, SUBS, "u1", "topupTokens", value=2, transaction_id=stale)
        clock.advance()
        db.increment_row_column(DB, SUBS, "u1", "currentTokensUsed", value=1)
        error = error_of(lambda: db.update_transaction(stale, commit=True))
        assert (error.code, error.type) == (409, "transaction_conflict")
        row = db.get_row(DB, SUBS, "u1").data
        assert (row["plan"], row["topupTokens"]) == (None, 0)

        counted = db.create_transaction().id
        db.increment_row_column(DB, SUBS, "u1", "topupTokens", value=2, transaction_id=counted)
        db.update_row(DB, SUBS, "u1", {"plan": "pro"}, transaction_id=counted)
        clock.advance()
        db.increment_row_column(DB, SUBS, "u1", "currentTokensUsed", value=1)
        db.update_transaction(counted, commit=True)
        row = db.get_row(DB, SUBS, "u1").data
        assert (row["plan"], row["topupTokens"], row["currentTokensUsed"]) == ("pro", 2, 2)

        gone = db.create_transaction().id
        db.increment_row_column(DB, SUBS, "nobody", "topupTokens", value=1, transaction_id=gone)
        error = error_of(lambda: db.update_transaction(gone, commit=True))
        assert (error.code, error.type) == (404, "document_not_found")


def test_new_columns_are_processing_until_polled_and_block_indexes() -> None:
    """A created column is `processing` at first; an index on it is refused until `available`."""
    emulator = AppwriteEmulator(processing_polls=1)
    with emulator.running():
        db = tables(emulator)
        db.create(DB, DB)
        db.create_table(DB, "t", "t")
        column = db.create_integer_column(DB, "t", "n", False, default=0)
        assert column.status.value == "processing"
        error = error_of(lambda: db.create_index(DB, "t", "n_idx", "key", ["n"]))
        assert (error.code, error.type) == (400, "column_not_available")
        assert db.get_table(DB, "t").columns[0].status.value == "available"
        assert db.create_index(DB, "t", "n_idx", "key", ["n"]).key == "n_idx"


def test_account_answers_a_registered_jwt_and_refuses_others(emulator: AppwriteEmulator) -> None:
    """GET /v1/account with X-Appwrite-JWT: the user it was issued to, else 401 user_jwt_invalid."""
    emulator.register_user("jwt-1", "user-1", email="one@example.test")

    def account(jwt: str) -> Account:
        client = Client().set_endpoint(emulator.endpoint).set_project(emulator.project_id)
        return Account(client.set_jwt(jwt))

    user = account("jwt-1").get()
    assert (user.id, user.email) == ("user-1", "one@example.test")
    error = error_of(lambda: account("forged").get())
    assert (error.code, error.type) == (401, "user_jwt_invalid")


def test_injected_failures_answer_once_with_the_given_error(emulator: AppwriteEmulator) -> None:
    """fail_next makes the next matching request fail, then the emulator works again."""
    db = tables(emulator)
    emulator.fail_next("POST", r"/rows$", 503, "general_service_disabled")
    error = error_of(lambda: new_subscription(db, "u1"))
    assert (error.code, error.type) == (503, "general_service_disabled")
    assert new_subscription(db, "u1").id == "u1"


def operation(action: str, row_id: str, data: dict[str, Any] | None = None) -> dict[str, Any]:
    """One staged operation of ``create_operations`` on the subscriptions table."""
    return {"action": action, "databaseId": DB, "tableId": SUBS, "rowId": row_id, "data": data}


def test_a_batch_of_operations_commits_all_or_nothing(emulator: AppwriteEmulator) -> None:
    """create_operations stages a batch in one request, answered 201 with the transaction;
    the commit applies it in order, a refused bound rolls all of it back."""
    db = tables(emulator)
    new_subscription(db, "u1", currentTokensUsed=5)
    ok = db.create_transaction().id
    staged = db.create_operations(
        ok,
        [
            operation("create", "u2", {"userId": "u2", "$permissions": ['read("user:u2")']}),
            operation("increment", "u2", {"column": "topupTokens", "value": 7, "max": 7}),
            operation("update", "u1", {"plan": "pro"}),
            operation("decrement", "u1", {"column": "currentTokensUsed", "value": 5, "min": 0}),
        ],
    )
    assert (staged.id, staged.status, staged.operations) == (ok, "pending", 4)
    assert [row["$id"] for row in emulator.rows(SUBS)] == ["u1"]
    db.update_transaction(ok, commit=True)
    created = db.get_row(DB, SUBS, "u2")
    assert (created.data["topupTokens"], created.permissions) == (7, ['read("user:u2")'])
    row = db.get_row(DB, SUBS, "u1").data
    assert (row["plan"], row["currentTokensUsed"]) == ("pro", 0)

    failing = db.create_transaction().id
    db.create_operations(
        failing,
        [
            operation("update", "u1", {"plan": "team"}),
            operation("increment", "u2", {"column": "topupTokens", "value": 1, "max": 7}),
        ],
    )
    error = error_of(lambda: db.update_transaction(failing, commit=True))
    assert (error.code, error.type) == (400, "attribute_limit_exceeded")
    assert db.get_row(DB, SUBS, "u1").data["plan"] == "pro"
    assert db.get_transaction(failing).status == "failed"


def test_a_batch_naming_a_missing_row_is_refused_at_staging_and_stages_nothing(
    emulator: AppwriteEmulator,
) -> None:
    """An update, delete, increment or decrement of a row that neither exists nor is created
    earlier in the transaction is a 404 document_not_found when staged; an empty batch is a
    400 general_bad_request; the transaction stays pending and empty."""
    db = tables(emulator)
    new_subscription(db, "u1")
    transaction = db.create_transaction().id
    for action in ("update", "delete", "increment", "decrement"):
        data = {"column": "topupTokens", "value": 1} if action.endswith("crement") else {}
        batch = [operation("update", "u1", {"plan": "pro"}), operation(action, "nobody", data)]
        error = error_of(lambda batch=batch: db.create_operations(transaction, batch))
        assert (error.code, error.type) == (404, "document_not_found")
    error = error_of(lambda: db.create_operations(transaction, []))
    assert (error.code, error.type) == (400, "general_bad_request")
    assert (db.get_transaction(transaction).status, db.get_transaction(transaction).operations) == (
        "pending",
        0,
    )


def test_a_row_deleted_earlier_in_the_transaction_is_missing_at_the_commit(
    emulator: AppwriteEmulator,
) -> None:
    """Staging reads rows as the transaction's earlier requests left them, so an update after
    a delete staged before is refused at once; in the same batch, the commit refuses it."""
    db = tables(emulator)
    new_subscription(db, "u1")
    earlier = db.create_transaction().id
    db.create_operations(earlier, [operation("delete", "u1")])
    error = error_of(
        lambda: db.create_operations(earlier, [operation("update", "u1", {"plan": "pro"})])
    )
    assert (error.code, error.type) == (404, "document_not_found")
    same = db.create_transaction().id
    db.create_operations(same, [operation("delete", "u1"), operation("update", "u1", {})])
    error = error_of(lambda: db.update_transaction(same, commit=True))
    assert (error.code, error.type) == (404, "document_not_found")
    assert [row["$id"] for row in emulator.rows(SUBS)] == ["u1"]


def test_a_batch_conflicts_as_single_staged_calls_do() -> None:
    """A create of an existing row, and an update or upsert of a row changed since staging,
    fail the commit with 409 transaction_conflict; increments are not checked."""
    clock = Clock(datetime(2026, 3, 1, tzinfo=UTC))
    with emulated_appwrite(clock=clock) as emulator:
        db = tables(emulator)
        new_subscription(db, "u1")
        for batch in (
            [operation("create", "u1", {"userId": "u1"})],
            [operation("update", "u1", {"plan": "pro"})],
            [operation("upsert", "u1", {"userId": "u1", "plan": "pro"})],
        ):
            transaction = db.create_transaction().id
            db.create_operations(transaction, batch)
            clock.advance()
            db.increment_row_column(DB, SUBS, "u1", "currentTokensUsed", value=1)
            error = error_of(
                lambda transaction=transaction: db.update_transaction(transaction, commit=True)
            )
            assert (error.code, error.type) == (409, "transaction_conflict")
        assert db.get_row(DB, SUBS, "u1").data["plan"] is None

        counted = db.create_transaction().id
        db.create_operations(
            counted, [operation("increment", "u1", {"column": "topupTokens", "value": 2})]
        )
        clock.advance()
        db.increment_row_column(DB, SUBS, "u1", "currentTokensUsed", value=1)
        db.update_transaction(counted, commit=True)
        assert db.get_row(DB, SUBS, "u1").data["topupTokens"] == 2


def test_an_upsert_creates_a_row_or_replaces_its_columns_and_permissions(
    emulator: AppwriteEmulator,
) -> None:
    """A staged upsert creates a missing row, and sets the given columns and permissions of
    an existing one."""
    db = tables(emulator)
    new_subscription(db, "u1", plan="demo")
    transaction = db.create_transaction().id
    db.create_operations(
        transaction,
        [
            operation(
                "upsert", "u1", {"userId": "u1", "plan": "pro", "$permissions": ['read("any")']}
            ),
            operation("upsert", "u2", {"userId": "u2", "plan": "team"}),
        ],
    )
    db.update_transaction(transaction, commit=True)
    replaced, created = db.get_row(DB, SUBS, "u1"), db.get_row(DB, SUBS, "u2")
    assert (replaced.data["plan"], replaced.permissions) == ("pro", ['read("any")'])
    assert (created.data["plan"], created.permissions) == ("team", [])


def test_a_cut_connection_fails_the_call_before_or_after_the_server_handled_it(
    emulator: AppwriteEmulator,
) -> None:
    """disconnect_next loses the next matching request, or only its answer: the change then
    happened although the client saw an error."""
    db = tables(emulator)
    emulator.disconnect_next("POST", r"/rows$")
    error_of(lambda: new_subscription(db, "u1"))
    assert emulator.rows(SUBS) == []
    emulator.disconnect_next("POST", r"/rows$", handled=True)
    error_of(lambda: new_subscription(db, "u1"))
    assert [row["$id"] for row in emulator.rows(SUBS)] == ["u1"]
