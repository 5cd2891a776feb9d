"""The embedded ``UsageStore``: the tables of ``appwrite.json`` in one SQLite file, the codec's
rows as on Appwrite; each read-modify-write is one ``BEGIN IMMEDIATE`` transaction.
"""

from __future__ import annotations

import contextlib
import functools
import os
import sqlite3
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

from metering import codec
from metering.account import Account, AccountPatch, ResetPlan, close_period
from metering.alerts import Notice
from metering.claims import reset_applies, reset_once
from metering.errors import (
    AlreadyExists,
    Conflict,
    InFlightLimitReached,
    InvalidRequest,
    LimitReached,
    NotFound,
    StoreError,
)
from metering.ledger import LedgerEntry, LedgerPatch, LedgerStatus
from metering.plans import PlanCatalog, load_default_plans
from metering.ports import AccountQuery, ClaimOutcome, Page, Payment, PaymentPatch
from metering.timeutil import parse_timestamp
from metering.turns import Turn, TurnPatch

from tools.schema import ColumnSpec, TableSpec, load_schema

_BUSY_TIMEOUT_SECONDS = 30.0
# The account's count of its requests in flight (``ports.UsageStore``'s second invariant).
IN_FLIGHT = "requestsInFlight"

T = TypeVar("T")
Document = dict[str, Any]

# The store's own columns for Appwrite's system fields; the codec reads them by the `$` names.
SYSTEM_COLUMNS = {
    "$sequence": "seq",
    "$id": "id",
    "$createdAt": "createdAt",
    "$updatedAt": "updatedAt",
}
_SYSTEM_NAMES = {column: name for name, column in SYSTEM_COLUMNS.items()}
_SYSTEM_DDL = (
    '"seq" INTEGER PRIMARY KEY AUTOINCREMENT',
    '"id" TEXT NOT NULL UNIQUE',
    '"createdAt" TEXT NOT NULL',
    '"updatedAt" TEXT NOT NULL',
)
_SQL_TYPES = {"integer": "INTEGER", "bigint": "INTEGER", "double": "REAL", "boolean": "INTEGER"}


def _literal(value: object) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, int | float):
        return repr(value)
    return "'" + str(value).replace("'", "''") + "'"


def column_ddl(column: ColumnSpec, *, added: bool = False) -> str:
    """A column's definition: its SQL type, NOT NULL when required (unless ``added`` to rows that
    exist, which read NULL, as on Appwrite), and its default."""
    sql = f'"{column.key}" {_SQL_TYPES.get(column.type, "TEXT")}'
    if column.required and not added:
        sql += " NOT NULL"
    if column.default is not None:
        sql += f" DEFAULT {_literal(column.default)}"
    return sql


def table_ddl(table: TableSpec) -> list[str]:
    """The statements creating one table of ``appwrite.json`` and its indexes."""
    clash = {column.key for column in table.columns} & set(_SYSTEM_NAMES)
    if clash:
        raise StoreError(f"{table.id}: columns {sorted(clash)} collide with the system columns")
    columns = ", ".join([*_SYSTEM_DDL, *(column_ddl(column) for column in table.columns)])
    statements = [f'CREATE TABLE IF NOT EXISTS "{table.id}" ({columns})']
    for index in table.indexes:
        orders = index.orders or ("ASC",) * len(index.columns)
        keys = ", ".join(
            f'"{SYSTEM_COLUMNS.get(key, key)}" {order.upper()}'
            for key, order in zip(index.columns, orders, strict=True)
        )
        unique = "UNIQUE " if index.type == "unique" else ""
        statements.append(
            f'CREATE {unique}INDEX IF NOT EXISTS "{table.id}_{index.key}" ON "{table.id}" ({keys})'
        )
    return statements


@functools.cache
def _tables() -> tuple[TableSpec, ...]:
    return load_schema().tables


def _document(cursor: sqlite3.Cursor, values: tuple[Any, ...]) -> Document:
    """A row as the codec reads it: the system columns under Appwrite's ``$`` names."""
    names = (_SYSTEM_NAMES.get(column[0], column[0]) for column in cursor.description)
    return dict(zip(names, values, strict=True))


def _now() -> str:
    return codec.encode_time(datetime.now(UTC))


def _check_limit(limit: int) -> None:
    if limit < 1:
        raise StoreError(f"page limit must be positive, got {limit}")


def _page(rows: Sequence[Document], limit: int, convert: Callable[[Document], T]) -> Page[T]:
    """``limit`` items of ``rows`` (fetched with one extra row to learn whether more follow)."""
    kept = rows[:limit]
    next_cursor = str(rows[limit - 1]["$sequence"]) if len(rows) > limit else None
    cursors = [str(row["$sequence"]) for row in kept]
    return Page(items=[convert(row) for row in kept], next_cursor=next_cursor, item_cursors=cursors)


def _cursor_seq(cursor: str | None) -> int:
    if cursor is None:
        return 0
    try:
        return int(cursor)
    except ValueError:
        raise StoreError(f"invalid page cursor {cursor!r}") from None


def _insert(
    connection: sqlite3.Connection, table: str, row_id: str, data: Mapping[str, Any]
) -> None:
    now = _now()
    values = {"id": row_id, "createdAt": now, "updatedAt": now, **data}
    names = ", ".join(f'"{name}"' for name in values)
    marks = ", ".join("?" for _ in values)
    connection.execute(f"INSERT INTO {table} ({names}) VALUES ({marks})", tuple(values.values()))


def _claim_entry(connection: sqlite3.Connection, entry: LedgerEntry) -> None:
    """Insert the entry: its id is its claim, so an existing one raises ``AlreadyExists``."""
    try:
        _insert(
            connection, codec.LEDGER, codec.row_key(entry.request_id), codec.encode_ledger(entry)
        )
    except sqlite3.IntegrityError as exc:
        raise AlreadyExists(f"ledger entry {entry.request_id!r} exists") from exc


def _update(
    connection: sqlite3.Connection,
    table: str,
    data: Mapping[str, Any],
    where: str,
    params: tuple[object, ...],
) -> int:
    """Set ``data`` on the rows ``where`` selects; the number of rows it matched. Counter changes
    leave ``updatedAt`` alone: a hold taken and given back leaves no trace."""
    values = {**data, "updatedAt": _now()}
    assignments = ", ".join(f'"{name}" = ?' for name in values)
    cursor = connection.execute(
        f"UPDATE {table} SET {assignments} WHERE {where}", (*values.values(), *params)
    )
    return cursor.rowcount


class SQLiteStore:
    """``UsageStore`` over one SQLite file (WAL), one connection per thread and process."""

    def __init__(self, path: str, plans: PlanCatalog | None = None) -> None:
        self.path = path
        self._plans = plans or load_default_plans()
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        with self._write() as connection:
            for table in _tables():
                self._create_table(connection, table)

    # -- plumbing ------------------------------------------------------------------------------

    @staticmethod
    def _create_table(connection: sqlite3.Connection, table: TableSpec) -> None:
        """Create the table, or add the columns an older file lacks (never drops anything)."""
        statements = table_ddl(table)
        connection.execute(statements[0])
        present = {row["name"] for row in connection.execute(f'PRAGMA table_info("{table.id}")')}
        for column in table.columns:
            if column.key not in present:
                ddl = column_ddl(column, added=True)
                connection.execute(f'ALTER TABLE "{table.id}" ADD COLUMN {ddl}')
        for statement in statements[1:]:
            connection.execute(statement)

    def _connection(self) -> sqlite3.Connection:
        # A forked child must not reuse its parent's connection: key it by process too.
        connection: sqlite3.Connection | None = getattr(self._local, "connection", None)
        if connection is not None and self._local.pid == os.getpid():
            return connection
        connection = sqlite3.connect(
            self.path,
            timeout=_BUSY_TIMEOUT_SECONDS,
            isolation_level=None,  # autocommit; transactions are opened explicitly
            check_same_thread=True,
        )
        connection.row_factory = _document
        connection.execute(f"PRAGMA busy_timeout = {int(_BUSY_TIMEOUT_SECONDS * 1000)}")
        connection.execute("PRAGMA journal_mode = WAL")
        connection.execute("PRAGMA synchronous = NORMAL")
        self._local.connection = connection
        self._local.pid = os.getpid()
        return connection

    @contextmanager
    def _errors(self) -> Iterator[None]:
        try:
            yield
        except sqlite3.Error as exc:
            raise StoreError(f"sqlite store failed: {exc}") from exc

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction, holding the database's write lock from its first statement."""
        with self._errors():
            connection = self._connection()
            try:
                connection.execute("BEGIN IMMEDIATE")
                yield connection
                connection.execute("COMMIT")
            except BaseException:
                # A failed COMMIT (busy, I/O) leaves the transaction open on this thread's
                # connection, and some errors end it themselves: roll back what is still open.
                if connection.in_transaction:
                    connection.execute("ROLLBACK")
                raise

    def _read(self, sql: str, params: tuple[object, ...] = ()) -> list[Document]:
        with self._errors():
            return self._connection().execute(sql, params).fetchall()

    def _account(self, row: Document) -> Account:
        return codec.decode_account(row, self._plans)

    def _account_row(self, connection: sqlite3.Connection, user_id: str) -> Document | None:
        found: Document | None = connection.execute(
            "SELECT * FROM subscriptions WHERE userId = ?", (user_id,)
        ).fetchone()
        return found

    def _account_after_write(self, connection: sqlite3.Connection, user_id: str) -> Account:
        row = self._account_row(connection, user_id)
        if row is None:
            raise NotFound(f"no account for user {user_id!r}")
        return self._account(row)

    # -- accounts ------------------------------------------------------------------------------

    def get_account(self, user_id: str) -> Account | None:
        rows = self._read("SELECT * FROM subscriptions WHERE userId = ?", (user_id,))
        return self._account(rows[0]) if rows else None

    def create_account(self, account: Account) -> Account:
        row_id = codec.row_key(account.row_id or account.user_id)
        with self._write() as connection:
            existing = self._account_row(connection, account.user_id)
            if existing is not None:
                return self._account(existing)
            try:
                _insert(connection, codec.SUBSCRIPTIONS, row_id, codec.encode_account(account))
            except sqlite3.IntegrityError as exc:
                raise StoreError(f"row id {row_id} is taken by another user") from exc
            return self._account_after_write(connection, account.user_id)

    def find_account_by_customer(self, stripe_customer_id: str) -> Account | None:
        rows = self._read(
            "SELECT * FROM subscriptions WHERE stripeCustomerId = ? ORDER BY seq LIMIT 1",
            (stripe_customer_id,),
        )
        return self._account(rows[0]) if rows else None

    def find_account_by_subscription(self, stripe_subscription_id: str) -> Account | None:
        rows = self._read(
            "SELECT * FROM subscriptions WHERE stripeSubscriptionId = ? ORDER BY seq LIMIT 1",
            (stripe_subscription_id,),
        )
        return self._account(rows[0]) if rows else None

    def update_account(self, user_id: str, patch: AccountPatch) -> Account:
        data = codec.encode_account_patch(patch)
        with self._write() as connection:
            _update(connection, codec.SUBSCRIPTIONS, data, "userId = ?", (user_id,))
            return self._account_after_write(connection, user_id)

    def add_topup(self, user_id: str, tokens: int) -> Account:
        if tokens < 0:
            raise InvalidRequest("a top-up cannot be negative")
        return self._set_topup(user_id, "topupTokens + ?", tokens)

    def remove_topup(self, user_id: str, tokens: int) -> Account:
        if tokens < 0:
            raise InvalidRequest("cannot remove a negative amount")
        return self._set_topup(user_id, "MAX(0, topupTokens - ?)", tokens)

    def _set_topup(self, user_id: str, expression: str, tokens: int) -> Account:
        # One UPDATE computes the balance from the stored one, so concurrent changes all count.
        with self._write() as connection:
            connection.execute(
                f"UPDATE subscriptions SET topupTokens = {expression} WHERE userId = ?",
                (tokens, user_id),
            )
            return self._account_after_write(connection, user_id)

    def list_accounts(self, query: AccountQuery, limit: int, cursor: str | None) -> Page[Account]:
        _check_limit(limit)
        where = ["seq > ?"]
        params: list[object] = [_cursor_seq(cursor)]
        if query.subscribed is True:
            where.append("COALESCE(stripeSubscriptionId, '') != ''")
        elif query.subscribed is False:
            where.append("COALESCE(stripeSubscriptionId, '') = ''")
        # Timestamps share one fixed-width UTC format, so text order is time order.
        if query.period_start_before is not None:
            where.append("periodStart < ?")
            params.append(codec.encode_time(query.period_start_before))
        if query.period_end_before is not None:
            where.append("periodEnd < ?")
            params.append(codec.encode_time(query.period_end_before))
        if query.with_usage:
            where.append("currentTokensUsed > 0")
        rows = self._read(
            f"SELECT * FROM subscriptions WHERE {' AND '.join(where)} ORDER BY seq LIMIT ?",
            (*params, limit + 1),
        )
        return _page(rows, limit, self._account)

    # -- the hard cap --------------------------------------------------------------------------

    def open_request(
        self,
        entry: LedgerEntry,
        limit: int,
        turn: Turn | None = None,
        *,
        max_in_flight: int | None = None,
    ) -> None:
        tokens = entry.held_tokens
        if tokens < 0:
            raise InvalidRequest("cannot hold a negative amount")
        with self._write() as connection:
            _claim_entry(connection, entry)
            self._count_in(connection, entry.user_id, max_in_flight)
            self._raise_counter(connection, entry.user_id, tokens, limit)
            if turn is not None:
                # The claim is ours: a turn left by a discarded attempt with this id is replaced.
                turn_id = codec.row_key(turn.request_id)
                connection.execute("DELETE FROM turns WHERE id = ?", (turn_id,))
                _insert(connection, codec.TURNS, turn_id, codec.encode_turn(turn))

    def hold(self, user_id: str, request_id: str, tokens: int, limit: int) -> None:
        if tokens < 0:
            raise InvalidRequest("cannot hold a negative amount")
        with self._write() as connection:
            self._raise_counter(connection, user_id, tokens, limit)
            held = connection.execute(
                "UPDATE usage_events SET heldTokens = heldTokens + ? WHERE id = ? AND status = ?",
                (tokens, codec.row_key(request_id), LedgerStatus.RESERVED.value),
            )
            if held.rowcount == 0:
                raise NotFound(f"no reserved ledger entry {request_id!r}")

    def _count_in(
        self, connection: sqlite3.Connection, user_id: str, max_in_flight: int | None
    ) -> None:
        # The bounded count of requests in flight, checked before the tokens: a user at the
        # cap is told to wait, not that the holds of their running turns used the allowance.
        counted = connection.execute(
            f"UPDATE subscriptions SET {IN_FLIGHT} = {IN_FLIGHT} + 1"
            f" WHERE userId = ? AND (? IS NULL OR {IN_FLIGHT} < ?)",
            (user_id, max_in_flight, max_in_flight),
        )
        if counted.rowcount == 0:
            if self._account_row(connection, user_id) is None:
                raise NotFound(f"no account for user {user_id!r}")
            raise InFlightLimitReached(f"{user_id!r} has {max_in_flight} requests in flight")

    @staticmethod
    def _count_out(connection: sqlite3.Connection, user_id: str) -> None:
        # Never below zero: an entry opened before the count existed was never counted in.
        connection.execute(
            f"UPDATE subscriptions SET {IN_FLIGHT} = MAX(0, {IN_FLIGHT} - 1) WHERE userId = ?",
            (user_id,),
        )

    def _raise_counter(
        self, connection: sqlite3.Connection, user_id: str, tokens: int, limit: int
    ) -> None:
        # The bounded atomic increment: the guard and the change are one statement.
        updated = connection.execute(
            "UPDATE subscriptions SET currentTokensUsed = currentTokensUsed + ?"
            " WHERE userId = ? AND currentTokensUsed + ? <= ?",
            (tokens, user_id, tokens, limit),
        )
        if updated.rowcount == 0:
            if self._account_row(connection, user_id) is None:
                raise NotFound(f"no account for user {user_id!r}")
            raise LimitReached(f"holding {tokens} tokens would pass the limit {limit}")

    def settle(
        self,
        user_id: str,
        request_id: str,
        release: int,
        patch: LedgerPatch,
        turn: TurnPatch | None = None,
    ) -> None:
        if release < 0:
            raise InvalidRequest("cannot release a negative amount")
        row_id = codec.row_key(request_id)
        with self._write() as connection:
            # Only a request still in flight settles: the cron's reclaim and a late settle of
            # the same request cannot both apply.
            changed = _update(
                connection,
                codec.LEDGER,
                codec.encode_ledger_patch(patch),
                "id = ? AND status = ?",
                (row_id, LedgerStatus.RESERVED.value),
            )
            if changed == 0:
                raise Conflict(f"ledger entry {request_id!r} is not in flight")
            self._move_counter(connection, user_id, -release)
            if patch.get("status", LedgerStatus.RESERVED) != LedgerStatus.RESERVED:
                self._count_out(connection, user_id)
                # It ends in the period its tokens are counted in now, whatever it read first.
                connection.execute(
                    "UPDATE usage_events SET periodStart = COALESCE((SELECT periodStart"
                    " FROM subscriptions WHERE userId = ?), periodStart) WHERE id = ?",
                    (user_id, row_id),
                )
            if turn is not None:
                _update(connection, codec.TURNS, codec.encode_turn_patch(turn), "id = ?", (row_id,))

    def discard_request(
        self, user_id: str, request_id: str, release: int, turn: TurnPatch | None = None
    ) -> None:
        if release < 0:
            raise InvalidRequest("cannot release a negative amount")
        row_id = codec.row_key(request_id)
        with self._write() as connection:
            deleted = connection.execute(
                "DELETE FROM usage_events WHERE id = ? AND status = ?",
                (row_id, LedgerStatus.RESERVED.value),
            )
            if deleted.rowcount:
                self._move_counter(connection, user_id, -release)
                self._count_out(connection, user_id)
            if turn is not None:
                _update(connection, codec.TURNS, codec.encode_turn_patch(turn), "id = ?", (row_id,))

    @staticmethod
    def _move_counter(connection: sqlite3.Connection, user_id: str, tokens: int) -> bool:
        """Add ``tokens`` (less than zero: take) to the counter, never below zero, as an
        operator's correction may have lowered it meanwhile; False when there is no account."""
        moved = connection.execute(
            "UPDATE subscriptions SET currentTokensUsed = MAX(0, currentTokensUsed + ?)"
            " WHERE userId = ?",
            (tokens, user_id),
        )
        return moved.rowcount > 0

    def apply_reset(self, reset: ResetPlan, previous_period_start: datetime) -> Account | None:
        return reset_once(self, reset, lambda: self._reset_counters(reset, previous_period_start))

    def _reset_counters(self, reset: ResetPlan, previous_period_start: datetime) -> Account | None:
        with self._write() as connection:
            row = self._account_row(connection, reset.user_id)
            if row is None:
                return None
            account = self._account(row)
            if not reset_applies(account, reset, previous_period_start):
                return None
            in_flight = (LedgerStatus.RESERVED.value, reset.user_id)
            entries = connection.execute(
                "SELECT * FROM usage_events WHERE status = ? AND userId = ?", in_flight
            ).fetchall()
            carried = sum(codec.ledger_counted(codec.decode_ledger(entry)) for entry in entries)
            closed = close_period(account, carried)
            connection.execute(
                "UPDATE subscriptions SET currentTokensUsed = currentTokensUsed - ?,"
                " lifetimeTokensUsed = lifetimeTokensUsed + ?,"
                " topupTokens = topupTokens - ? WHERE id = ?",
                (closed.used, closed.used, closed.topup_consumed, row["$id"]),
            )
            # The requests in flight end in the new period, and are counted in it.
            connection.execute(
                "UPDATE usage_events SET periodStart = ? WHERE status = ? AND userId = ?",
                (codec.encode_time(reset.period_start), *in_flight),
            )
            period = codec.encode_account_fields(
                {
                    "period_start": reset.period_start,
                    "period_end": reset.period_end,
                    "last_token_reset_at": reset.reset_at,
                    "alert_threshold_sent": 0,
                }
            )
            _update(connection, codec.SUBSCRIPTIONS, period, "id = ?", (row["$id"],))
            return self._account_after_write(connection, reset.user_id)

    # -- the ledger ----------------------------------------------------------------------------

    def get_ledger(self, request_id: str) -> LedgerEntry | None:
        rows = self._read("SELECT * FROM usage_events WHERE id = ?", (codec.row_key(request_id),))
        return codec.decode_ledger(rows[0], request_id) if rows else None

    def request_starts(self, user_id: str, after: datetime, limit: int) -> Sequence[datetime]:
        _check_limit(limit)
        # Timestamps share one fixed-width UTC format, so text order is time order.
        rows = self._read(
            "SELECT startedAt FROM usage_events WHERE userId = ? AND startedAt > ?"
            " AND status != ? ORDER BY startedAt DESC LIMIT ?",
            (user_id, codec.encode_time(after), LedgerStatus.ADJUSTMENT.value, limit),
        )
        return [parse_timestamp(row["startedAt"]) for row in rows]

    def list_stale_reservations(
        self, updated_before: datetime, limit: int, cursor: str | None
    ) -> Page[LedgerEntry]:
        _check_limit(limit)
        rows = self._read(
            "SELECT * FROM usage_events WHERE seq > ? AND status = ? AND touchedAt < ?"
            " ORDER BY seq LIMIT ?",
            (
                _cursor_seq(cursor),
                LedgerStatus.RESERVED.value,
                codec.encode_time(updated_before),
                limit + 1,
            ),
        )
        return _page(rows, limit, codec.decode_ledger)

    def list_ledger(
        self, created_from: datetime, created_before: datetime, limit: int, cursor: str | None
    ) -> Page[LedgerEntry]:
        _check_limit(limit)
        rows = self._read(
            "SELECT * FROM usage_events WHERE seq > ? AND startedAt >= ? AND startedAt < ?"
            " ORDER BY seq LIMIT ?",
            (
                _cursor_seq(cursor),
                codec.encode_time(created_from),
                codec.encode_time(created_before),
                limit + 1,
            ),
        )
        return _page(rows, limit, codec.decode_ledger)

    def ledger_total(self, user_id: str, period_start: datetime) -> int:
        rows = self._read(
            "SELECT * FROM usage_events WHERE userId = ? AND periodStart = ?",
            (user_id, codec.encode_time(period_start)),
        )
        return sum(codec.ledger_counted(codec.decode_ledger(row)) for row in rows)

    def record_adjustment(self, entry: LedgerEntry, tokens: int) -> None:
        with self._write() as connection:
            _claim_entry(connection, entry)
            if not self._move_counter(connection, entry.user_id, tokens):
                raise NotFound(f"no account for user {entry.user_id!r}")

    # -- resumable walks -----------------------------------------------------------------------

    def get_cursor(self, name: str) -> str | None:
        rows = self._read("SELECT * FROM cursors WHERE id = ?", (codec.row_key(name),))
        return codec.decode_cursor(rows[0]) if rows else None

    def save_cursor(self, name: str, cursor: str | None) -> None:
        row_id = codec.row_key(name)
        with self._write() as connection:
            if cursor is None:
                connection.execute("DELETE FROM cursors WHERE id = ?", (row_id,))
            elif not _update(
                connection, codec.CURSORS, codec.encode_cursor(name, cursor), "id = ?", (row_id,)
            ):
                _insert(connection, codec.CURSORS, row_id, codec.encode_cursor(name, cursor))

    # -- turns ---------------------------------------------------------------------------------

    def get_turn(self, request_id: str) -> Turn | None:
        rows = self._read("SELECT * FROM turns WHERE id = ?", (codec.row_key(request_id),))
        return codec.decode_turn(rows[0]) if rows else None

    def update_turn(self, request_id: str, patch: TurnPatch) -> None:
        data = codec.encode_turn_patch(patch)
        with self._write() as connection:
            if _update(connection, codec.TURNS, data, "id = ?", (codec.row_key(request_id),)) == 0:
                raise NotFound(f"no turn {request_id!r}")

    def request_stop(self, request_id: str, user_id: str, now: datetime) -> None:
        row_id = codec.row_key(request_id)
        # A second Stop finds the row there: nothing to change.
        with self._write() as connection, contextlib.suppress(sqlite3.IntegrityError):
            _insert(
                connection,
                codec.TURN_STOPS,
                row_id,
                codec.encode_stop(request_id, user_id, now),
            )

    def stop_requested(self, request_id: str) -> bool:
        rows = self._read("SELECT id FROM turn_stops WHERE id = ?", (codec.row_key(request_id),))
        return bool(rows)

    # -- claims --------------------------------------------------------------------------------

    def claim_event(
        self, event_id: str, event_type: str, object_id: str, now: datetime, lease: timedelta | None
    ) -> ClaimOutcome:
        row_id = codec.row_key(event_id)
        with self._write() as connection:
            found = connection.execute("SELECT * FROM claims WHERE id = ?", (row_id,))
            row: Document | None = found.fetchone()
            if row is None:
                _insert(
                    connection,
                    codec.CLAIMS,
                    row_id,
                    codec.new_claim(event_id, event_type, object_id, now),
                )
                return ClaimOutcome.CLAIMED
            held = codec.held_claim(row, now, lease)
            if held is not None:
                return held
            # The holder's lease ran out: it died, so this worker takes over.
            connection.execute(
                "UPDATE claims SET attempt = COALESCE(attempt, 0) + 1, claimedAt = ?,"
                " updatedAt = ? WHERE id = ?",
                (codec.encode_time(now), _now(), row_id),
            )
            return ClaimOutcome.CLAIMED

    def complete_event(self, event_id: str, outcome: str, now: datetime) -> None:
        row_id = codec.row_key(event_id)
        with self._write() as connection:
            if _update(
                connection, codec.CLAIMS, codec.completed_claim(outcome, now), "id = ?", (row_id,)
            ):
                return
            # The claim vanished (released by a timed-out worker): record the outcome anyway.
            _insert(connection, codec.CLAIMS, row_id, codec.recorded_claim(event_id, outcome, now))

    def release_event(self, event_id: str) -> None:
        with self._errors():
            self._connection().execute(
                "DELETE FROM claims WHERE id = ? AND status = ?",
                (codec.row_key(event_id), codec.PENDING),
            )

    # -- payments ------------------------------------------------------------------------------

    def record_payment(self, payment: Payment) -> bool:
        row_id = codec.row_key(payment.stripe_id)
        with self._write() as connection:
            if connection.execute("SELECT 1 FROM payments WHERE id = ?", (row_id,)).fetchone():
                return False
            _insert(connection, codec.PAYMENTS, row_id, codec.encode_payment(payment))
            return True

    def get_payment(self, stripe_id: str) -> Payment | None:
        rows = self._read("SELECT * FROM payments WHERE id = ?", (codec.row_key(stripe_id),))
        return codec.decode_payment(rows[0]) if rows else None

    def find_payment_by_intent(self, payment_intent: str) -> Payment | None:
        rows = self._read(
            "SELECT * FROM payments WHERE paymentIntent = ? ORDER BY seq LIMIT 1", (payment_intent,)
        )
        return codec.decode_payment(rows[0]) if rows else None

    def update_payment(self, stripe_id: str, patch: PaymentPatch) -> Payment:
        data = codec.encode_payment_patch(patch)
        row_id = codec.row_key(stripe_id)
        with self._write() as connection:
            _update(connection, codec.PAYMENTS, data, "id = ?", (row_id,))
            found: Document | None = connection.execute(
                "SELECT * FROM payments WHERE id = ?", (row_id,)
            ).fetchone()
            if found is None:
                raise NotFound(f"no payment {stripe_id!r}")
            return codec.decode_payment(found)

    def list_payments(
        self, paid_from: datetime, paid_before: datetime, limit: int, cursor: str | None
    ) -> Page[Payment]:
        _check_limit(limit)
        rows = self._read(
            "SELECT * FROM payments WHERE seq > ? AND paidAt >= ? AND paidAt < ?"
            " ORDER BY seq LIMIT ?",
            (
                _cursor_seq(cursor),
                codec.encode_time(paid_from),
                codec.encode_time(paid_before),
                limit + 1,
            ),
        )
        return _page(rows, limit, codec.decode_payment)

    # -- usage alerts --------------------------------------------------------------------------

    def create_notice(self, notice: Notice) -> None:
        # Who may read a row is Appwrite's business; here the functions read for their caller.
        with self._write() as connection:
            exists = connection.execute(
                "SELECT 1 FROM notices WHERE id = ?", (codec.row_key(notice.id),)
            ).fetchone()
            if exists is None:
                _insert(
                    connection, codec.NOTICES, codec.row_key(notice.id), codec.encode_notice(notice)
                )

    def list_notices(self, user_id: str, period_start: datetime) -> Sequence[Notice]:
        rows = self._read(
            "SELECT * FROM notices WHERE userId = ? AND periodStart = ?"
            " ORDER BY raisedAt DESC, seq DESC",
            (user_id, codec.encode_time(period_start)),
        )
        return [codec.decode_notice(row) for row in rows]

    def mark_alert_sent(self, user_id: str, period_start: datetime, threshold: int) -> None:
        with self._write() as connection:
            connection.execute(
                "UPDATE subscriptions SET alertThresholdSent = ?, updatedAt = ?"
                " WHERE userId = ? AND periodStart = ? AND COALESCE(alertThresholdSent, 0) < ?",
                (threshold, _now(), user_id, codec.encode_time(period_start), threshold),
            )
