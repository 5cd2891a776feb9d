"""What a project lacks of ``appwrite.json``, the Appwrite calls that add it, and the backfill
(for ``tools.migrate``: a key with ``databases|tables|columns|indexes|rows.*`` scopes).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from appwrite.enums.order_by import OrderBy
from appwrite.enums.tables_db_index_type import TablesDBIndexType
from appwrite.query import Query
from appwrite.services.tables_db import TablesDB
from metering.adapters.appwrite_store import call, connect_tables, document
from metering.codec import plan_backfill
from metering.errors import AlreadyExists, NotFound
from metering.plans import PlanCatalog
from metering.ports import Page

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


def legacy_claim(row: Mapping[str, Any], claims: TableSpec) -> dict[str, Any]:
    """A ``stripe_events`` row as a ``claims`` row: the same claim under the new column names."""
    keys = {column.key for column in claims.columns}
    renamed = {RENAMED_CLAIM_COLUMNS.get(key, key): value for key, value in row.items()}
    return {key: value for key, value in renamed.items() if key in keys and value is not None}


class AppwriteSchemaAdmin:
    """Schema and bulk-row operations of the migration, through the store's one call wrapper."""

    def __init__(self, tables: TablesDB) -> None:
        self._db = tables

    @classmethod
    def connect(cls, endpoint: str, project_id: str, api_key: str) -> AppwriteSchemaAdmin:
        return cls(connect_tables(endpoint, project_id, api_key))

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
            self._db.create_index(
                step.table.database_id,
                step.table.id,
                index.key,
                TablesDBIndexType(index.type),
                list(index.columns),
                orders=[OrderBy(order.lower()) for order in index.orders] or None,
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

    def rows(
        self, database_id: str, table_id: str, limit: int, cursor: str | None
    ) -> Page[dict[str, Any]]:
        """One page of raw rows (column values plus ``$id``) in the table's natural order;
        ``NotFound`` when the table does not exist."""
        queries = [Query.limit(limit + 1)]
        if cursor:
            queries.append(Query.cursor_after(cursor))
        result = call(
            f"listing {table_id}", lambda: self._db.list_rows(database_id, table_id, queries)
        )
        rows = [document(row) for row in result.rows]
        if len(rows) > limit:
            rows = rows[:limit]
            return Page(items=rows, next_cursor=str(rows[-1]["$id"]))
        return Page(items=rows, next_cursor=None)

    def update_row(
        self, database_id: str, table_id: str, row_id: str, data: Mapping[str, Any]
    ) -> None:
        call(
            f"updating {table_id}.{row_id}",
            lambda: self._db.update_row(database_id, table_id, row_id, dict(data)),
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


def _status(status: Any) -> str:
    return str(getattr(status, "value", status))
