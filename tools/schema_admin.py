"""What a project lacks of ``appwrite.json``, the calls that add it (on Appwrite, with a key of
``databases|tables|columns|indexes|rows.*`` scopes, or on the local SQLite file), the backfill,
and what ``appwrite push tables`` would change (the CLI's own comparison, ported).
"""

from __future__ import annotations

import functools
import json
import sqlite3
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from appwrite.enums.tables_db_index_type import TablesDBIndexType
from appwrite.query import Query
from appwrite.services.tables_db import TablesDB
from metering.adapters.appwrite_store import account_permissions, call, connect_tables, document
from metering.codec import encode_time, plan_backfill
from metering.errors import AlreadyExists, NotFound, StoreError
from metering.plans import PlanCatalog

from localruntime.sqlite_store import SYSTEM_COLUMNS, column_ddl, table_ddl
from tools.schema import ColumnSpec, DatabaseSpec, IndexSpec, Schema, TableSpec

# The claims table's former name, and its columns the claims table names otherwise.
LEGACY_CLAIMS = "stripe_events"
RENAMED_CLAIM_COLUMNS = {"eventId": "claimKey", "type": "kind"}


@dataclass(frozen=True, slots=True)
class ExistingTable:
    """What a project already has of one table: column keys and index keys."""

    columns: frozenset[str] = frozenset()
    indexes: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class ExistingSchema:
    databases: frozenset[str] = frozenset()
    # Keyed by (database id, table id).
    tables: Mapping[tuple[str, str], ExistingTable] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class CreateDatabase:
    database: DatabaseSpec

    def describe(self) -> str:
        return f"create database {self.database.id}"


@dataclass(frozen=True, slots=True)
class CreateTable:
    table: TableSpec

    def describe(self) -> str:
        return f"create table {self.table.database_id}.{self.table.id}"


@dataclass(frozen=True, slots=True)
class CreateColumn:
    table: TableSpec
    column: ColumnSpec

    def describe(self) -> str:
        return f"create column {self.table.id}.{self.column.key} ({self.column.type})"


@dataclass(frozen=True, slots=True)
class CreateIndex:
    table: TableSpec
    index: IndexSpec

    def describe(self) -> str:
        columns = ", ".join(self.index.columns)
        return f"create {self.index.type} index {self.table.id}.{self.index.key} ({columns})"


Step = CreateDatabase | CreateTable | CreateColumn | CreateIndex


@dataclass(frozen=True, slots=True)
class RowsPage:
    """One page of raw rows; ``total`` is how many the table holds, when the backend says."""

    items: Sequence[dict[str, Any]]
    next_cursor: str | None
    total: int | None = None


class SchemaAdmin(Protocol):
    """What ``migrate`` and ``backfill`` need of a backend: Appwrite or the local SQLite file."""

    where: str

    def existing(self, schema: Schema) -> ExistingSchema: ...

    def column_statuses(self, database_id: str, table_id: str) -> dict[str, str]: ...

    def apply(self, step: Step) -> None: ...

    def rows(self, database_id: str, table_id: str, limit: int, cursor: str | None) -> RowsPage:
        """One page of raw rows: column values, ``$id``, and ``$permissions`` where the backend
        keeps row permissions (Appwrite; the local store answers for its users itself)."""

    def update_row(
        self,
        database_id: str,
        table_id: str,
        row_id: str,
        data: Mapping[str, Any],
        permissions: Sequence[str] | None = None,
    ) -> None:
        """Set ``data``; given ``permissions`` replace the row's (where the backend keeps any)."""

    def create_row(
        self, database_id: str, table_id: str, row_id: str, data: Mapping[str, Any]
    ) -> bool: ...


def missing_steps(schema: Schema, existing: ExistingSchema) -> list[Step]:
    """What to create, in a workable order: databases, tables, columns, then indexes."""
    steps: list[Step] = [
        CreateDatabase(database)
        for database in schema.databases
        if database.id not in existing.databases
    ]
    column_steps: list[Step] = []
    index_steps: list[Step] = []
    for table in schema.tables:
        current = existing.tables.get((table.database_id, table.id))
        if current is None:
            steps.append(CreateTable(table))
            current = ExistingTable()
        column_steps.extend(
            CreateColumn(table, column)
            for column in table.columns
            if column.key not in current.columns
        )
        index_steps.extend(
            CreateIndex(table, index) for index in table.indexes if index.key not in current.indexes
        )
    return steps + column_steps + index_steps


def backfill_defaults(
    table: TableSpec, row: Mapping[str, Any], plans: PlanCatalog
) -> dict[str, Any]:
    """The columns of a ``subscriptions`` row that predate their column and read NULL, with the
    values they should have: the column's default (counters 0), else the plan's (its limits, the
    default plan for a row without one)."""
    patch = {
        column.key: column.default
        for column in table.columns
        if column.default is not None and row.get(column.key) is None
    }
    return {**patch, **plan_backfill(row, plans)}


def missing_read_permission(row: Mapping[str, Any]) -> list[str] | None:
    """The permissions a ``subscriptions`` row should have when it lacks its user's read, which
    ``AppwriteStore.create_account`` gives every new row (the table has row security: without
    it, Realtime never shows the user their meter); None when nothing is missing or the backend
    keeps no permissions (no ``$permissions``)."""
    current = row.get("$permissions")
    user_id = row.get("userId")
    if current is None or not user_id:
        return None
    missing = [grant for grant in account_permissions(str(user_id)) if grant not in current]
    return [*current, *missing] if missing else None


def legacy_claim(row: Mapping[str, Any], claims: TableSpec) -> dict[str, Any]:
    """A ``stripe_events`` row as a ``claims`` row: the same claim under the new column names."""
    keys = {column.key for column in claims.columns}
    renamed = {RENAMED_CLAIM_COLUMNS.get(key, key): value for key, value in row.items()}
    return {key: value for key, value in renamed.items() if key in keys and value is not None}


# -- Appwrite ------------------------------------------------------------------------------------


class AppwriteSchemaAdmin:
    """Schema and bulk-row operations of the migration, through the store's one call wrapper."""

    def __init__(self, tables: TablesDB, where: str = "Appwrite") -> None:
        self._db = tables
        self.where = where

    @classmethod
    def connect(cls, endpoint: str, project_id: str, api_key: str) -> AppwriteSchemaAdmin:
        return cls(connect_tables(endpoint, project_id, api_key), f"{endpoint} ({project_id})")

    def existing(self, schema: Schema) -> ExistingSchema:
        """What the project already has of ``schema``'s databases and tables (reads only)."""
        databases: set[str] = set()
        for database in schema.databases:
            try:
                call(
                    f"reading database {database.id}", functools.partial(self._db.get, database.id)
                )
            except NotFound:
                continue
            databases.add(database.id)
        tables: dict[tuple[str, str], ExistingTable] = {}
        for table in schema.tables:
            if table.database_id not in databases:
                continue
            described = self._describe(table.database_id, table.id)
            if described is not None:
                tables[(table.database_id, table.id)] = ExistingTable(
                    columns=frozenset(described[0]), indexes=frozenset(described[1])
                )
        return ExistingSchema(databases=frozenset(databases), tables=tables)

    def _describe(
        self, database_id: str, table_id: str
    ) -> tuple[dict[str, str], dict[str, str]] | None:
        """Column and index statuses by key, or None when the table does not exist."""
        try:
            table = call(
                f"reading table {table_id}", lambda: self._db.get_table(database_id, table_id)
            )
        except NotFound:
            return None
        columns = {column.key: _status(column.status) for column in table.columns}
        indexes = {index.key: _status(index.status) for index in table.indexes}
        return columns, indexes

    def column_statuses(self, database_id: str, table_id: str) -> dict[str, str]:
        described = self._describe(database_id, table_id)
        if described is None:
            raise NotFound(f"table {table_id} does not exist")
        return described[0]

    def apply(self, step: Step) -> None:
        """Create one missing database, table, column or index."""
        call(step.describe(), lambda: self._apply(step))

    def _apply(self, step: Step) -> None:
        if isinstance(step, CreateDatabase):
            self._db.create(step.database.id, step.database.name, enabled=step.database.enabled)
        elif isinstance(step, CreateTable):
            table = step.table
            self._db.create_table(
                table.database_id,
                table.id,
                table.name,
                permissions=list(table.permissions),
                row_security=table.row_security,
                enabled=table.enabled,
            )
        elif isinstance(step, CreateColumn):
            self._create_column(step.table, step.column)
        else:
            index = step.index
            # Sent as appwrite.json spells them: the server keeps the case it is given and the
            # CLI compares orders case-sensitively, so `asc` here makes a later `appwrite push
            # tables` delete and recreate the index (the unique one on userId included). The
            # SDK's `OrderBy` enum only has the lower-case values; it passes strings through.
            orders: Any = list(index.orders) or None
            self._db.create_index(
                step.table.database_id,
                step.table.id,
                index.key,
                TablesDBIndexType(index.type),
                list(index.columns),
                orders=orders,
            )

    def _create_column(self, table: TableSpec, column: ColumnSpec) -> None:
        database_id, table_id, key = table.database_id, table.id, column.key
        common: dict[str, Any] = {"required": column.required, "array": column.array or None}
        numeric = {
            "integer": self._db.create_integer_column,
            "bigint": self._db.create_big_int_column,
            "double": self._db.create_float_column,
        }
        if column.type in numeric:
            numeric[column.type](
                database_id,
                table_id,
                key,
                min=column.min,
                max=column.max,
                default=column.default,
                **common,
            )
        elif column.type == "boolean":
            self._db.create_boolean_column(
                database_id, table_id, key, default=column.default, **common
            )
        elif column.type == "datetime":
            self._db.create_datetime_column(
                database_id, table_id, key, default=column.default, **common
            )
        elif column.type == "varchar":
            self._db.create_varchar_column(
                database_id, table_id, key, column.size, default=column.default, **common
            )
        elif column.type in ("text", "mediumtext", "longtext"):
            create = getattr(self._db, f"create_{column.type}_column")
            create(database_id, table_id, key, default=column.default, **common)
        else:
            # `string` is what the Appwrite CLI and 1.8 servers know (1.9 merely deprecates it).
            # The SDK's deprecation wrapper resets the process's warning filters on every call,
            # so the undecorated method is called.
            create_string = TablesDB.create_string_column.__wrapped__
            create_string(
                self._db, database_id, table_id, key, column.size, default=column.default, **common
            )

    def rows(self, database_id: str, table_id: str, limit: int, cursor: str | None) -> RowsPage:
        """One page of raw rows (column values plus ``$id``) in the table's natural order;
        ``NotFound`` when the table does not exist."""
        queries = [Query.limit(limit + 1)]
        if cursor:
            queries.append(Query.cursor_after(cursor))
        result = call(
            f"listing {table_id}", lambda: self._db.list_rows(database_id, table_id, queries)
        )
        rows = [{**document(row), "$permissions": list(row.permissions)} for row in result.rows]
        total = int(result.total)
        if len(rows) > limit:
            rows = rows[:limit]
            return RowsPage(items=rows, next_cursor=str(rows[-1]["$id"]), total=total)
        return RowsPage(items=rows, next_cursor=None, total=total)

    def update_row(
        self,
        database_id: str,
        table_id: str,
        row_id: str,
        data: Mapping[str, Any],
        permissions: Sequence[str] | None = None,
    ) -> None:
        granted = list(permissions) if permissions is not None else None
        call(
            f"updating {table_id}.{row_id}",
            lambda: self._db.update_row(database_id, table_id, row_id, dict(data), granted),
        )

    def create_row(
        self, database_id: str, table_id: str, row_id: str, data: Mapping[str, Any]
    ) -> bool:
        """Create the row unless one with its id exists (then False)."""
        try:
            call(
                f"creating {table_id}.{row_id}",
                lambda: self._db.create_row(database_id, table_id, row_id, dict(data)),
            )
        except AlreadyExists:
            return False
        return True

    # What the Appwrite CLI reads when it pushes: the server's own JSON, not the SDK's models.

    def raw(self, path: str) -> dict[str, Any] | None:
        """``GET path`` as the server answers it; None for a 404."""
        client = self._db.client
        try:
            answer = call(
                f"reading {path}",
                functools.partial(client.call, "get", path, _project_headers(client)),
            )
        except NotFound:
            return None
        return dict(answer)

    def remote_schema(self, database_ids: Iterable[str]) -> RemoteSchema:
        """Every database of the project, and every table (with its columns and indexes) of the
        databases named, as ``appwrite push tables`` reads them."""
        databases = self._every("/tablesdb", "databases")
        present = {str(database.get("$id")) for database in databases}
        tables = {
            database_id: self._every(f"/tablesdb/{database_id}/tables", "tables")
            for database_id in database_ids
            if database_id in present
        }
        return RemoteSchema(databases=databases, tables=tables)

    def _every(self, path: str, key: str) -> list[dict[str, Any]]:
        """Every item of a listing, 100 at a time, as the CLI's ``paginate`` reads it."""
        client = self._db.client
        items: list[dict[str, Any]] = []
        while True:
            queries = [Query.limit(100), Query.offset(len(items))]
            answer = call(
                f"listing {path}",
                functools.partial(
                    client.call, "get", path, _project_headers(client), {"queries": queries}
                ),
            )
            page = list(answer.get(key) or [])
            items.extend(page)
            if len(page) < 100:
                return items


def _project_headers(client: Any) -> dict[str, str]:
    # The SDK's services name the project on every call; its client does not keep a header.
    return {"X-Appwrite-Project": client.get_config("project"), "accept": "application/json"}


def _status(status: Any) -> str:
    return str(getattr(status, "value", status))


# -- the local SQLite file -----------------------------------------------------------------------


class SQLiteSchemaAdmin:
    """The same operations on the embedded store's file (``make dev``'s ``metering.sqlite3``):
    one file is the database, tables and columns are plain SQL, indexes are named
    ``<table>_<key>`` as the store creates them."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.where = f"local SQLite store {path}"

    def _connect(self) -> sqlite3.Connection:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        connection = sqlite3.connect(self.path, isolation_level=None)
        connection.row_factory = sqlite3.Row
        return connection

    def _run(self, what: str, statements: Sequence[tuple[str, Sequence[Any]]]) -> int:
        try:
            with self._connect() as connection:
                changed = 0
                for sql, params in statements:
                    changed += connection.execute(sql, tuple(params)).rowcount
                return changed
        except sqlite3.Error as exc:
            raise StoreError(f"{what} failed: {exc}") from exc

    def _query(self, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
        try:
            with self._connect() as connection:
                return [dict(row) for row in connection.execute(sql, tuple(params))]
        except sqlite3.Error as exc:
            raise StoreError(f"reading {self.path} failed: {exc}") from exc

    def _tables(self) -> set[str]:
        if not self.path.exists():
            return set()
        found = self._query("SELECT name FROM sqlite_master WHERE type = 'table'")
        return {str(row["name"]) for row in found}

    def existing(self, schema: Schema) -> ExistingSchema:
        if not self.path.exists():
            return ExistingSchema()
        present = self._tables()
        tables: dict[tuple[str, str], ExistingTable] = {}
        for table in schema.tables:
            if table.id not in present:
                continue
            columns = {row["name"] for row in self._query(f'PRAGMA table_info("{table.id}")')}
            indexes = {
                str(row["name"]).removeprefix(f"{table.id}_")
                for row in self._query(f'PRAGMA index_list("{table.id}")')
            }
            tables[(table.database_id, table.id)] = ExistingTable(
                columns=frozenset(columns), indexes=frozenset(indexes)
            )
        # The file is the database: it exists as soon as the file does.
        return ExistingSchema(databases=frozenset(d.id for d in schema.databases), tables=tables)

    def column_statuses(self, database_id: str, table_id: str) -> dict[str, str]:
        # SQL columns exist as soon as they are added.
        rows = self._query(f'PRAGMA table_info("{table_id}")')
        return {str(row["name"]): "available" for row in rows}

    def apply(self, step: Step) -> None:
        if isinstance(step, CreateDatabase):
            self._run(step.describe(), [])
        elif isinstance(step, CreateTable):
            self._run(step.describe(), [(table_ddl(step.table)[0], ())])
        elif isinstance(step, CreateColumn):
            # A table created by this run already has every column of appwrite.json.
            if step.column.key not in self.column_statuses("", step.table.id):
                ddl = column_ddl(step.column, added=True)
                self._run(
                    step.describe(), [(f'ALTER TABLE "{step.table.id}" ADD COLUMN {ddl}', ())]
                )
        else:
            position = step.table.indexes.index(step.index)
            self._run(step.describe(), [(table_ddl(step.table)[1 + position], ())])

    def rows(self, database_id: str, table_id: str, limit: int, cursor: str | None) -> RowsPage:
        if table_id not in self._tables():
            raise NotFound(f"table {table_id} does not exist")
        after = int(cursor) if cursor else 0
        found = self._query(
            f'SELECT * FROM "{table_id}" WHERE seq > ? ORDER BY seq LIMIT ?', (after, limit + 1)
        )
        total = int(self._query(f'SELECT COUNT(*) AS n FROM "{table_id}"')[0]["n"])
        names = {name: key for key, name in SYSTEM_COLUMNS.items()}
        rows = [{names.get(key, key): value for key, value in row.items()} for row in found]
        if len(rows) > limit:
            rows = rows[:limit]
            return RowsPage(rows, next_cursor=str(rows[-1]["$sequence"]), total=total)
        return RowsPage(rows, next_cursor=None, total=total)

    def update_row(
        self,
        database_id: str,
        table_id: str,
        row_id: str,
        data: Mapping[str, Any],
        permissions: Sequence[str] | None = None,
    ) -> None:
        # The local store keeps no row permissions: the runtime reads rows for their user.
        values = {**data, "updatedAt": encode_time(datetime.now(UTC))}
        assignments = ", ".join(f'"{key}" = ?' for key in values)
        self._run(
            f"updating {table_id}.{row_id}",
            [(f'UPDATE "{table_id}" SET {assignments} WHERE id = ?', [*values.values(), row_id])],
        )

    def create_row(
        self, database_id: str, table_id: str, row_id: str, data: Mapping[str, Any]
    ) -> bool:
        names = ", ".join(f'"{key}"' for key in ("id", "createdAt", "updatedAt", *data))
        marks = ", ".join("?" for _ in range(len(data) + 3))
        now = encode_time(datetime.now(UTC))
        inserted = self._run(
            f"creating {table_id}.{row_id}",
            [
                (
                    f'INSERT OR IGNORE INTO "{table_id}" ({names}) VALUES ({marks})',
                    [row_id, now, now, *data.values()],
                )
            ],
        )
        return inserted > 0


# -- what `appwrite push tables --force` would change ---------------------------------------------
#
# A port of appwrite-cli 12.0.1 (tools/deploy/package.json pins it), lib/commands/push.js:
# `attributesToCreate` with `checkAttributeChanges`, `compareAttribute`, `isEmpty` and `isEqual`
# for the columns and indexes of a table that exists, `checkAndApplyTablesDBChanges` for the
# databases, and `pushTable`'s "Checking for deleted tables". tests/contract/test_cli_parity.py
# runs the CLI's own functions with node on the same inputs and requires the same answer.

# lib/config.js `KeysAttributes`: the only keys of a remote column or index that are compared
# (for the TablesDB push too, so an index's `columns` are never compared).
CLI_COMPARED_KEYS = frozenset(
    {
        "key",
        "type",
        "required",
        "array",
        "size",
        "default",
        "min",
        "max",
        "format",
        "elements",
        "relatedCollection",
        "relationType",
        "twoWay",
        "twoWayKey",
        "onDelete",
        "side",
        "attributes",
        "orders",
        "encrypt",
    }
)
# push.js `changeableKeys`: a difference there is updated in place; any other compared key
# deletes the column or index and creates it again (the column's data is lost).
CLI_CHANGEABLE_KEYS = frozenset(
    {"status", "required", "xdefault", "elements", "min", "max", "default", "error"}
)


@dataclass(frozen=True, slots=True)
class PlannedChange:
    """One thing the CLI's push would do: ``action`` is ``deleting``, ``recreating``,
    ``changing`` or ``adding``; ``what`` names it (``column subscriptions.userId``)."""

    action: str
    what: str
    reason: str

    @property
    def destructive(self) -> bool:
        return self.action in ("deleting", "recreating")

    def describe(self) -> str:
        return f"{self.action} {self.what}: {self.reason}"


@dataclass(frozen=True, slots=True)
class RemoteSchema:
    """The project as the CLI reads it: every database, and the tables of the file's ones."""

    databases: list[dict[str, Any]]
    tables: dict[str, list[dict[str, Any]]]


class _Undefined:
    """JavaScript's ``undefined``: what the CLI reads for a key the file does not have."""

    def __repr__(self) -> str:
        return "undefined"


UNDEFINED: Any = _Undefined()


def _cli_empty(value: Any) -> bool:
    """``isEmpty``."""
    return (
        value is None
        or value is UNDEFINED
        or (isinstance(value, str) and not value.strip())
        or (isinstance(value, list) and not value)
    )


def _cli_equal(remote: Any, local: Any) -> bool:
    """``isEqual``: JavaScript's ``===``, numbers within ``Number.EPSILON``."""
    if remote is local:
        return True
    # `===` never equates a boolean with a number, nor a number with a string.
    if isinstance(remote, bool) or isinstance(local, bool):
        return isinstance(remote, bool) and isinstance(local, bool) and remote == local
    numbers = (int, float)
    if isinstance(remote, numbers) and isinstance(local, numbers):
        return bool(remote == local or abs(remote - local) < 2.220446049250313e-16)
    if isinstance(remote, str) and isinstance(local, str):
        return remote == local
    # Two objects are never `===`, however alike.
    return False


def _js_string(value: Any) -> str:
    """How a JavaScript template string shows a value (the CLI's reason text)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return ",".join("" if item is None else _js_string(item) for item in value)
    return repr(value) if value is UNDEFINED else str(value)


def _js_json(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def _cli_reason(remote: Any, local: Any, reason: str, key: str) -> str:
    """``compareAttribute``."""
    if _cli_empty(remote) and _cli_empty(local):
        return reason
    if isinstance(remote, list) and isinstance(local, list):
        differs = _js_json(remote) != _js_json(local)
    else:
        differs = not _cli_equal(remote, local)
    if differs:
        line = f"{key} changed from {_js_string(remote)} to {_js_string(local)}"
        reason = line if not reason else f"{reason}\n{line}"
    return reason


def _cli_changes(remote: Mapping[str, Any], local: Mapping[str, Any], *, recreating: bool) -> str:
    """``checkAttributeChanges``: the reason text, empty when nothing differs. Only the keys the
    server answers are compared: a key the file alone has is never looked at."""
    reason = ""
    for key, value in remote.items():
        if key not in CLI_COMPARED_KEYS:
            continue
        if (key in CLI_CHANGEABLE_KEYS) != recreating:
            reason = _cli_reason(value, local.get(key, UNDEFINED), reason, key)
    return reason


def cli_item_changes(
    remote: Sequence[Mapping[str, Any]],
    local: Sequence[Mapping[str, Any]],
    table: str,
    kind: str,
) -> list[PlannedChange]:
    """``attributesToCreate``'s lists for the columns (``kind`` "column") or indexes of one table
    that exists: what it would delete, add, recreate and change in place."""
    by_key = {str(item.get("key")): item for item in local}
    remote_keys = {str(item.get("key")) for item in remote}
    changes: list[PlannedChange] = []
    for item in remote:
        key = str(item.get("key"))
        if key not in by_key:
            changes.append(
                PlannedChange("deleting", f"{kind} {table}.{key}", "not in appwrite.json")
            )
    for item in local:
        key = str(item.get("key"))
        if key not in remote_keys:
            changes.append(PlannedChange("adding", f"{kind} {table}.{key}", "not on the server"))
    for item in remote:
        key = str(item.get("key"))
        mine = by_key.get(key)
        if mine is None:
            continue
        conflict = _cli_changes(item, mine, recreating=True)
        if conflict:
            changes.append(PlannedChange("recreating", f"{kind} {table}.{key}", conflict))
            continue
        change = _cli_changes(item, mine, recreating=False)
        if change:
            changes.append(PlannedChange("changing", f"{kind} {table}.{key}", change))
    return changes


def cli_push_plan(document: Mapping[str, Any], remote: RemoteSchema) -> list[PlannedChange]:
    """Everything ``appwrite push tables --all --force`` would do to the project, given
    ``appwrite.json``'s ``document``: databases and tables it deletes (remote ones the file does
    not list), tables it creates, and the column and index changes of the tables it has."""
    local_databases = {str(db["$id"]) for db in document.get("tablesDB", [])}
    local_tables = list(document.get("tables", []))
    plan: list[PlannedChange] = []
    remote_ids = {str(db.get("$id")) for db in remote.databases}
    for database in remote.databases:
        if str(database.get("$id")) not in local_databases:
            plan.append(
                PlannedChange(
                    "deleting",
                    f"database {database.get('$id')}",
                    "not in appwrite.json (with every table in it)",
                )
            )
    for database_id in sorted(local_databases - remote_ids):
        plan.append(PlannedChange("adding", f"database {database_id}", "not on the server"))
    listed = {(str(t["databaseId"]), str(t["$id"])) for t in local_tables}
    for database_id, tables in remote.tables.items():
        for table in tables:
            if (database_id, str(table.get("$id"))) not in listed:
                plan.append(
                    PlannedChange(
                        "deleting",
                        f"table {database_id}.{table.get('$id')}",
                        "not in appwrite.json",
                    )
                )
    for table in local_tables:
        database_id, table_id = str(table["databaseId"]), str(table["$id"])
        found = next(
            (t for t in remote.tables.get(database_id, []) if t.get("$id") == table_id), None
        )
        if found is None:
            plan.append(
                PlannedChange("adding", f"table {database_id}.{table_id}", "not on the server")
            )
            continue
        plan += cli_item_changes(
            found.get("columns", []), table.get("columns", []), table_id, "column"
        )
        plan += cli_item_changes(
            found.get("indexes", []), table.get("indexes", []), table_id, "index"
        )
    return plan
