"""The embedded ``UsageStore``: one SQLite file, safe across threads and processes.

Tables mirror the Appwrite schema; each read-modify-write is one ``BEGIN IMMEDIATE`` transaction.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

from metering.account import Account, ResetPlan
from metering.columns import ACCOUNT_PATCH_COLUMNS, usage_columns
from metering.errors import (
    AlreadyExists,
    InvalidRequest,
    LimitReached,
    MeteringError,
    NotFound,
    StoreError,
)
from metering.ledger import LedgerEntry, LedgerStatus
from metering.ports import (
    AccountPatch,
    AccountQuery,
    ClaimOutcome,
    LedgerPatch,
    Page,
)
from metering.timeutil import format_timestamp, parse_timestamp
from metering.tokens import TokenUsage

_BUSY_TIMEOUT_SECONDS = 30.0

T = TypeVar("T")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS subscriptions (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    userId TEXT NOT NULL UNIQUE,
    plan TEXT NOT NULL,
    status TEXT NOT NULL,
    stripeCustomerId TEXT,
    stripeSubscriptionId TEXT,
    stripeUpdatedAt INTEGER NOT NULL DEFAULT 0,
    currentTokensUsed INTEGER NOT NULL DEFAULT 0,
    lifetimeTokensUsed INTEGER NOT NULL DEFAULT 0,
    lastTokenResetAt TEXT,
    maxTokensPerMonth INTEGER NOT NULL DEFAULT 0,
    addonTokens INTEGER NOT NULL DEFAULT 0,
    topupTokens INTEGER NOT NULL DEFAULT 0,
    periodStart TEXT NOT NULL,
    periodEnd TEXT,
    storageBytesUsed INTEGER NOT NULL DEFAULT 0,
    storageBytesLimit INTEGER NOT NULL DEFAULT 0,
    bankConnectionsUsed INTEGER NOT NULL DEFAULT 0,
    bankConnectionsLimit INTEGER NOT NULL DEFAULT 0,
    createdAt TEXT NOT NULL,
    updatedAt TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS subscriptions_customer ON subscriptions (stripeCustomerId);
CREATE INDEX IF NOT EXISTS subscriptions_subscription ON subscriptions (stripeSubscriptionId);
CREATE INDEX IF NOT EXISTS subscriptions_period_end ON subscriptions (periodEnd);
CREATE TABLE IF NOT EXISTS usage_events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    userId TEXT NOT NULL,
    model TEXT NOT NULL,
    status TEXT NOT NULL,
    inputTokens INTEGER NOT NULL DEFAULT 0,
    cacheCreationInputTokens INTEGER NOT NULL DEFAULT 0,
    cacheCreation1hTokens INTEGER NOT NULL DEFAULT 0,
    cacheReadInputTokens INTEGER NOT NULL DEFAULT 0,
    outputTokens INTEGER NOT NULL DEFAULT 0,
    totalTokens INTEGER NOT NULL DEFAULT 0,
    steps INTEGER NOT NULL DEFAULT 0,
    reservedTokens INTEGER NOT NULL DEFAULT 0,
    costMicroUsd INTEGER NOT NULL DEFAULT 0,
    priceVersion TEXT NOT NULL DEFAULT '',
    reply TEXT NOT NULL DEFAULT '',
    periodStart TEXT NOT NULL,
    createdAt TEXT NOT NULL,
    updatedAt TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS usage_events_user ON usage_events (userId, createdAt);
CREATE INDEX IF NOT EXISTS usage_events_status ON usage_events (status, updatedAt);
CREATE TABLE IF NOT EXISTS stripe_events (
    id TEXT PRIMARY KEY,
    type TEXT NOT NULL,
    objectId TEXT NOT NULL,
    status TEXT NOT NULL,
    outcome TEXT NOT NULL DEFAULT '',
    claimedAt TEXT NOT NULL,
    completedAt TEXT
);
"""


_PENDING = "pending"
_DONE = "done"


def _ts(value: datetime | None) -> str | None:
    return None if value is None else format_timestamp(value)


def _dt(value: str | None) -> datetime | None:
    return None if value is None else parse_timestamp(value)


def _column_value(value: object) -> object:
    return format_timestamp(value) if isinstance(value, datetime) else value


def _account(row: sqlite3.Row) -> Account:
    return Account(
        user_id=row["userId"],
        row_id=row["id"],
        plan=row["plan"],
        status=row["status"],
        max_tokens_per_month=row["maxTokensPerMonth"],
        period_start=parse_timestamp(row["periodStart"]),
        period_end=_dt(row["periodEnd"]),
        current_tokens_used=row["currentTokensUsed"],
        lifetime_tokens_used=row["lifetimeTokensUsed"],
        addon_tokens=row["addonTokens"],
        topup_tokens=row["topupTokens"],
        last_token_reset_at=_dt(row["lastTokenResetAt"]),
        stripe_customer_id=row["stripeCustomerId"],
        stripe_subscription_id=row["stripeSubscriptionId"],
        stripe_updated_at=row["stripeUpdatedAt"],
        storage_bytes_used=row["storageBytesUsed"],
        storage_bytes_limit=row["storageBytesLimit"],
        bank_connections_used=row["bankConnectionsUsed"],
        bank_connections_limit=row["bankConnectionsLimit"],
    )


def _entry(row: sqlite3.Row) -> LedgerEntry:
    return LedgerEntry(
        request_id=row["id"],
        user_id=row["userId"],
        status=LedgerStatus(row["status"]),
        model=row["model"],
        period_start=parse_timestamp(row["periodStart"]),
        created_at=parse_timestamp(row["createdAt"]),
        updated_at=parse_timestamp(row["updatedAt"]),
        usage=TokenUsage(
            input_tokens=row["inputTokens"],
            cache_creation_input_tokens=row["cacheCreationInputTokens"],
            cache_read_input_tokens=row["cacheReadInputTokens"],
            output_tokens=row["outputTokens"],
            cache_creation_1h_tokens=row["cacheCreation1hTokens"],
            steps=row["steps"],
        ),
        reserved_tokens=row["reservedTokens"],
        cost_micro_usd=row["costMicroUsd"],
        price_version=row["priceVersion"],
        reply=row["reply"],
    )


def _page(rows: Sequence[sqlite3.Row], limit: int, convert: Callable[[sqlite3.Row], T]) -> Page[T]:
    """``limit`` items of ``rows`` (fetched with one extra row to learn whether more follow)."""
    if limit < 1:
        raise StoreError(f"page limit must be positive, got {limit}")
    items = [convert(row) for row in rows[:limit]]
    next_cursor = str(rows[limit - 1]["seq"]) if len(rows) > limit else None
    return Page(items=items, next_cursor=next_cursor)


def _cursor_seq(cursor: str | None) -> int:
    if cursor is None:
        return 0
    try:
        return int(cursor)
    except ValueError:
        raise StoreError(f"invalid page cursor {cursor!r}") from None


class SQLiteStore:
    """``UsageStore`` over one SQLite file (WAL), one connection per thread and process."""

    def __init__(self, path: str) -> None:
        self.path = path
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        with self._errors():
            self._connection().executescript(_SCHEMA)

    # -- plumbing ------------------------------------------------------------------------------

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
        connection.row_factory = sqlite3.Row
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
        except MeteringError:
            raise
        except sqlite3.Error as exc:
            raise StoreError(f"sqlite store failed: {exc}") from exc

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction, holding the database's write lock from its first statement."""
        with self._errors():
            connection = self._connection()
            connection.execute("BEGIN IMMEDIATE")
            try:
                yield connection
            except BaseException:
                connection.execute("ROLLBACK")
                raise
            connection.execute("COMMIT")

    def _read(self, sql: str, params: tuple[object, ...] = ()) -> list[sqlite3.Row]:
        with self._errors():
            return self._connection().execute(sql, params).fetchall()

    @staticmethod
    def _account_row(connection: sqlite3.Connection, user_id: str) -> Account | None:
        row = connection.execute("SELECT * FROM subscriptions WHERE userId = ?", (user_id,))
        found = row.fetchone()
        return None if found is None else _account(found)

    @staticmethod
    def _entry_row(connection: sqlite3.Connection, request_id: str) -> LedgerEntry | None:
        found = connection.execute("SELECT * FROM usage_events WHERE id = ?", (request_id,))
        row = found.fetchone()
        return None if row is None else _entry(row)

    def _account_after_write(self, connection: sqlite3.Connection, user_id: str) -> Account:
        account = self._account_row(connection, user_id)
        if account is None:
            raise NotFound(f"no account for user {user_id!r}")
        return account

    # -- accounts ------------------------------------------------------------------------------

    def get_account(self, user_id: str) -> Account | None:
        rows = self._read("SELECT * FROM subscriptions WHERE userId = ?", (user_id,))
        return _account(rows[0]) if rows else None

    def create_account(self, account: Account) -> Account:
        now = format_timestamp(datetime.now(UTC))
        columns: dict[str, object] = {
            "id": account.row_id or uuid.uuid4().hex,
            "userId": account.user_id,
            "plan": account.plan,
            "status": account.status,
            "stripeCustomerId": account.stripe_customer_id,
            "stripeSubscriptionId": account.stripe_subscription_id,
            "stripeUpdatedAt": account.stripe_updated_at,
            "currentTokensUsed": account.current_tokens_used,
            "lifetimeTokensUsed": account.lifetime_tokens_used,
            "lastTokenResetAt": _ts(account.last_token_reset_at),
            "maxTokensPerMonth": account.max_tokens_per_month,
            "addonTokens": account.addon_tokens,
            "topupTokens": account.topup_tokens,
            "periodStart": format_timestamp(account.period_start),
            "periodEnd": _ts(account.period_end),
            "storageBytesUsed": account.storage_bytes_used,
            "storageBytesLimit": account.storage_bytes_limit,
            "bankConnectionsUsed": account.bank_connections_used,
            "bankConnectionsLimit": account.bank_connections_limit,
            "createdAt": now,
            "updatedAt": now,
        }
        names = ", ".join(columns)
        marks = ", ".join("?" for _ in columns)
        with self._write() as connection:
            existing = self._account_row(connection, account.user_id)
            if existing is not None:
                return existing
            try:
                connection.execute(
                    f"INSERT INTO subscriptions ({names}) VALUES ({marks})",
                    tuple(columns.values()),
                )
            except sqlite3.IntegrityError as exc:
                raise AlreadyExists(f"row id {columns['id']!r} is taken") from exc
            return self._account_after_write(connection, account.user_id)

    def find_account_by_customer(self, stripe_customer_id: str) -> Account | None:
        rows = self._read(
            "SELECT * FROM subscriptions WHERE stripeCustomerId = ? ORDER BY seq LIMIT 1",
            (stripe_customer_id,),
        )
        return _account(rows[0]) if rows else None

    def find_account_by_subscription(self, stripe_subscription_id: str) -> Account | None:
        rows = self._read(
            "SELECT * FROM subscriptions WHERE stripeSubscriptionId = ? ORDER BY seq LIMIT 1",
            (stripe_subscription_id,),
        )
        return _account(rows[0]) if rows else None

    def update_account(self, user_id: str, patch: AccountPatch) -> Account:
        values: dict[str, Any] = dict(patch)
        unknown = set(values) - set(ACCOUNT_PATCH_COLUMNS)
        if unknown:
            raise StoreError(f"not patchable account fields: {sorted(unknown)}")
        assignments = [f"{ACCOUNT_PATCH_COLUMNS[name]} = ?" for name in values]
        params = [_column_value(value) for value in values.values()]
        with self._write() as connection:
            if assignments:
                connection.execute(
                    f"UPDATE subscriptions SET {', '.join(assignments)} WHERE userId = ?",
                    (*params, user_id),
                )
            return self._account_after_write(connection, user_id)

    def add_topup(self, user_id: str, tokens: int) -> Account:
        if tokens < 0:
            raise InvalidRequest("a top-up cannot be negative")
        with self._write() as connection:
            connection.execute(
                "UPDATE subscriptions SET topupTokens = topupTokens + ? WHERE userId = ?",
                (tokens, user_id),
            )
            return self._account_after_write(connection, user_id)

    def list_accounts(self, query: AccountQuery, limit: int, cursor: str | None) -> Page[Account]:
        where = ["seq > ?"]
        params: list[object] = [_cursor_seq(cursor)]
        if query.subscribed is True:
            where.append("COALESCE(stripeSubscriptionId, '') != ''")
        elif query.subscribed is False:
            where.append("COALESCE(stripeSubscriptionId, '') = ''")
        # Timestamps share one fixed-width UTC format, so text order is time order.
        if query.period_start_before is not None:
            where.append("periodStart < ?")
            params.append(format_timestamp(query.period_start_before))
        if query.period_end_before is not None:
            where.append("periodEnd IS NOT NULL AND periodEnd < ?")
            params.append(format_timestamp(query.period_end_before))
        rows = self._read(
            f"SELECT * FROM subscriptions WHERE {' AND '.join(where)} ORDER BY seq LIMIT ?",
            (*params, limit + 1),
        )
        return _page(rows, limit, _account)

    # -- the hard cap --------------------------------------------------------------------------

    def reserve(self, user_id: str, request_id: str, tokens: int, limit: int) -> int:
        if tokens < 0:
            raise InvalidRequest("cannot reserve a negative amount")
        with self._write() as connection:
            updated = connection.execute(
                "UPDATE subscriptions SET currentTokensUsed = currentTokensUsed + ?"
                " WHERE userId = ? AND currentTokensUsed + ? <= ?",
                (tokens, user_id, tokens, limit),
            )
            if updated.rowcount == 0:
                if self._account_row(connection, user_id) is None:
                    raise NotFound(f"no account for user {user_id!r}")
                raise LimitReached(f"reserving {tokens} tokens would pass the limit {limit}")
            held = connection.execute(
                "UPDATE usage_events SET reservedTokens = reservedTokens + ? WHERE id = ?",
                (tokens, request_id),
            )
            if held.rowcount == 0:
                raise NotFound(f"no ledger entry {request_id!r}")
            return self._account_after_write(connection, user_id).current_tokens_used

    def release(self, user_id: str, request_id: str, tokens: int) -> None:
        if tokens <= 0:
            # A negative release would raise the counter past any limit.
            return
        with self._write() as connection:
            connection.execute(
                "UPDATE subscriptions SET currentTokensUsed = MAX(0, currentTokensUsed - ?)"
                " WHERE userId = ?",
                (tokens, user_id),
            )
            connection.execute(
                "UPDATE usage_events SET reservedTokens = MAX(0, reservedTokens - ?) WHERE id = ?",
                (tokens, request_id),
            )

    def apply_reset(self, reset: ResetPlan, previous_period_start: datetime) -> Account | None:
        with self._write() as connection:
            updated = connection.execute(
                "UPDATE subscriptions SET"
                " currentTokensUsed = MAX(0, currentTokensUsed - ?),"
                " lifetimeTokensUsed = lifetimeTokensUsed + ?,"
                " topupTokens = MAX(0, topupTokens - ?),"
                " periodStart = ?, periodEnd = ?, lastTokenResetAt = ?, updatedAt = ?"
                " WHERE userId = ? AND periodStart = ? AND periodStart < ?",
                (
                    reset.used,
                    reset.used,
                    reset.topup_consumed,
                    format_timestamp(reset.period_start),
                    _ts(reset.period_end),
                    format_timestamp(reset.reset_at),
                    format_timestamp(reset.reset_at),
                    reset.user_id,
                    format_timestamp(previous_period_start),
                    format_timestamp(reset.period_start),
                ),
            )
            if updated.rowcount == 0:
                return None
            return self._account_after_write(connection, reset.user_id)

    # -- the ledger ----------------------------------------------------------------------------

    def create_ledger(self, entry: LedgerEntry) -> None:
        columns: dict[str, object] = {
            "id": entry.request_id,
            "userId": entry.user_id,
            "model": entry.model,
            "status": entry.status.value,
            **usage_columns(entry.usage),
            "reservedTokens": entry.reserved_tokens,
            "costMicroUsd": entry.cost_micro_usd,
            "priceVersion": entry.price_version,
            "reply": entry.reply,
            "periodStart": format_timestamp(entry.period_start),
            "createdAt": format_timestamp(entry.created_at),
            "updatedAt": format_timestamp(entry.updated_at),
        }
        names = ", ".join(columns)
        marks = ", ".join("?" for _ in columns)
        with self._errors():
            try:
                self._connection().execute(
                    f"INSERT INTO usage_events ({names}) VALUES ({marks})",
                    tuple(columns.values()),
                )
            except sqlite3.IntegrityError as exc:
                raise AlreadyExists(f"ledger entry {entry.request_id!r} exists") from exc

    def get_ledger(self, request_id: str) -> LedgerEntry | None:
        rows = self._read("SELECT * FROM usage_events WHERE id = ?", (request_id,))
        return _entry(rows[0]) if rows else None

    def discard_ledger(self, request_id: str) -> None:
        with self._errors():
            self._connection().execute("DELETE FROM usage_events WHERE id = ?", (request_id,))

    def update_ledger(self, request_id: str, patch: LedgerPatch) -> LedgerEntry:
        columns: dict[str, object] = {}
        for name, value in patch.items():
            if name == "usage":
                assert isinstance(value, TokenUsage)
                columns.update(usage_columns(value))
            elif name == "status":
                columns["status"] = LedgerStatus(str(value)).value
            elif name == "model":
                columns["model"] = value
            elif name == "cost_micro_usd":
                columns["costMicroUsd"] = value
            elif name == "price_version":
                columns["priceVersion"] = value
            elif name == "reply":
                columns["reply"] = value
            elif name == "updated_at":
                columns["updatedAt"] = _column_value(value)
            else:
                raise StoreError(f"not a patchable ledger field: {name!r}")
        with self._write() as connection:
            if columns:
                connection.execute(
                    f"UPDATE usage_events SET {', '.join(f'{c} = ?' for c in columns)}"
                    " WHERE id = ?",
                    (*columns.values(), request_id),
                )
            entry = self._entry_row(connection, request_id)
            if entry is None:
                raise NotFound(f"no ledger entry {request_id!r}")
            return entry

    def list_stale_reservations(
        self, updated_before: datetime, limit: int, cursor: str | None
    ) -> Page[LedgerEntry]:
        rows = self._read(
            "SELECT * FROM usage_events WHERE seq > ? AND status = ? AND updatedAt < ?"
            " ORDER BY seq LIMIT ?",
            (
                _cursor_seq(cursor),
                LedgerStatus.RESERVED.value,
                format_timestamp(updated_before),
                limit + 1,
            ),
        )
        return _page(rows, limit, _entry)

    def ledger_total(self, user_id: str, period_start: datetime) -> int:
        rows = self._read(
            # A finished entry's usage is what it charged; its hold then equals that usage.
            "SELECT COALESCE(SUM(CASE WHEN status = ? THEN reservedTokens ELSE totalTokens END),"
            " 0) AS total FROM usage_events WHERE userId = ? AND periodStart = ?",
            (LedgerStatus.RESERVED.value, user_id, format_timestamp(period_start)),
        )
        return int(rows[0]["total"])

    # -- event claims --------------------------------------------------------------------------

    def claim_event(
        self, event_id: str, event_type: str, object_id: str, now: datetime, lease: timedelta
    ) -> ClaimOutcome:
        with self._write() as connection:
            row = connection.execute(
                "SELECT status, claimedAt FROM stripe_events WHERE id = ?", (event_id,)
            ).fetchone()
            if row is None:
                connection.execute(
                    "INSERT INTO stripe_events (id, type, objectId, status, claimedAt)"
                    " VALUES (?, ?, ?, ?, ?)",
                    (event_id, event_type, object_id, _PENDING, format_timestamp(now)),
                )
                return ClaimOutcome.CLAIMED
            if row["status"] == _DONE:
                return ClaimOutcome.DONE
            if now - parse_timestamp(row["claimedAt"]) <= lease:
                return ClaimOutcome.IN_PROGRESS
            # The previous worker's lease ran out: it died, so this worker takes over.
            connection.execute(
                "UPDATE stripe_events SET claimedAt = ? WHERE id = ?",
                (format_timestamp(now), event_id),
            )
            return ClaimOutcome.CLAIMED

    def complete_event(self, event_id: str, outcome: str, now: datetime) -> None:
        with self._errors():
            self._connection().execute(
                "INSERT INTO stripe_events (id, type, objectId, status, outcome, claimedAt,"
                " completedAt) VALUES (?, '', '', ?, ?, ?, ?)"
                " ON CONFLICT (id) DO UPDATE SET status = excluded.status,"
                " outcome = excluded.outcome, completedAt = excluded.completedAt",
                (event_id, _DONE, outcome, format_timestamp(now), format_timestamp(now)),
            )

    def release_event(self, event_id: str) -> None:
        with self._errors():
            self._connection().execute(
                "DELETE FROM stripe_events WHERE id = ? AND status = ?", (event_id, _PENDING)
            )
