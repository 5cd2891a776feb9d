"""The database schema as code: ``appwrite.json``'s ``tablesDB`` and ``tables`` sections, typed.
Pure parsing, for ``tools.migrate`` and the local runtime's SQLite store; functions never ship it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from metering.errors import ConfigurationError

APPWRITE_JSON = Path(__file__).resolve().parent.parent / "appwrite.json"

COLUMN_TYPES = frozenset(
    {
        "string",
        "varchar",
        "text",
        "mediumtext",
        "longtext",
        "integer",
        "bigint",
        "double",
        "boolean",
        "datetime",
    }
)
# "datetime" is what the server reports (and the CLI compares) for a datetime column.
STRING_FORMATS = frozenset({"", "email", "url", "ip", "enum", "datetime"})
INDEX_TYPES = frozenset({"key", "unique", "fulltext"})


@dataclass(frozen=True, slots=True)
class ColumnSpec:
    key: str
    type: str
    required: bool = False
    size: int | None = None
    default: Any = None
    min: int | None = None
    max: int | None = None
    array: bool = False
    format: str = ""
    elements: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class IndexSpec:
    key: str
    type: str
    columns: tuple[str, ...]
    orders: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class TableSpec:
    id: str
    database_id: str
    name: str
    columns: tuple[ColumnSpec, ...]
    indexes: tuple[IndexSpec, ...] = ()
    permissions: tuple[str, ...] = ()
    row_security: bool = False
    enabled: bool = True

    def column(self, key: str) -> ColumnSpec:
        for column in self.columns:
            if column.key == key:
                return column
        raise KeyError(key)


@dataclass(frozen=True, slots=True)
class DatabaseSpec:
    id: str
    name: str
    enabled: bool = True


@dataclass(frozen=True, slots=True)
class Schema:
    databases: tuple[DatabaseSpec, ...]
    tables: tuple[TableSpec, ...]

    def table(self, table_id: str) -> TableSpec:
        for table in self.tables:
            if table.id == table_id:
                return table
        raise KeyError(table_id)


def _object(entry: Any, where: str) -> dict[str, Any]:
    if not isinstance(entry, dict):
        raise ConfigurationError(f"{where} must be an object")
    return entry


def _text(entry: Mapping[str, Any], key: str, where: str) -> str:
    value = entry.get(key)
    if not isinstance(value, str) or not value:
        raise ConfigurationError(f"{where}: {key} must be a non-empty string")
    return value


def _optional_int(entry: Mapping[str, Any], key: str, where: str) -> int | None:
    value = entry.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigurationError(f"{where}: {key} must be an integer, got {value!r}")
    return value


def _strings(entry: Mapping[str, Any], key: str, where: str) -> tuple[str, ...]:
    value = entry.get(key, [])
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise ConfigurationError(f"{where}: {key} must be a list of strings")
    return tuple(value)


def _parse_column(entry: Any, where: str) -> ColumnSpec:
    entry = _object(entry, where)
    key = _text(entry, "key", where)
    column_type = _text(entry, "type", where)
    if column_type not in COLUMN_TYPES:
        raise ConfigurationError(f"{where}: unsupported column type {column_type!r}")
    required = entry.get("required", False)
    if not isinstance(required, bool):
        raise ConfigurationError(f"{where}: required must be true or false")
    default = entry.get("default")
    if required and default is not None:
        raise ConfigurationError(f"{where}: a required column cannot have a default")
    size = _optional_int(entry, "size", where)
    if column_type in ("string", "varchar") and (size is None or size <= 0):
        raise ConfigurationError(f"{where}: {column_type} columns need a positive size")
    column_format = entry.get("format", "") or ""
    if column_format not in STRING_FORMATS:
        raise ConfigurationError(f"{where}: unsupported format {column_format!r}")
    return ColumnSpec(
        key=key,
        type=column_type,
        required=required,
        size=size,
        default=default,
        min=_optional_int(entry, "min", where),
        max=_optional_int(entry, "max", where),
        array=bool(entry.get("array", False)),
        format=column_format,
        elements=_strings(entry, "elements", where),
    )


def _parse_index(entry: Any, where: str, column_keys: set[str]) -> IndexSpec:
    entry = _object(entry, where)
    index_type = _text(entry, "type", where)
    if index_type not in INDEX_TYPES:
        raise ConfigurationError(f"{where}: unsupported index type {index_type!r}")
    columns = _strings(entry, "columns", where)
    if not columns:
        raise ConfigurationError(f"{where}: an index needs at least one column")
    for column in columns:
        if column not in column_keys and not column.startswith("$"):
            raise ConfigurationError(f"{where}: unknown column {column!r}")
    orders = _strings(entry, "orders", where)
    if orders and len(orders) != len(columns):
        raise ConfigurationError(f"{where}: orders must name one order per column")
    return IndexSpec(
        key=_text(entry, "key", where), type=index_type, columns=columns, orders=orders
    )


def _parse_table(entry: Any, where: str, database_ids: set[str]) -> TableSpec:
    entry = _object(entry, where)
    database_id = _text(entry, "databaseId", where)
    if database_id not in database_ids:
        raise ConfigurationError(f"{where}: unknown database {database_id!r}")
    raw_columns = entry.get("columns", [])
    if not isinstance(raw_columns, list):
        raise ConfigurationError(f"{where}: columns must be a list")
    columns = tuple(
        _parse_column(column, f"{where}.columns[{i}]") for i, column in enumerate(raw_columns)
    )
    keys = [column.key for column in columns]
    if len(set(keys)) != len(keys):
        raise ConfigurationError(f"{where}: duplicate column keys")
    raw_indexes = entry.get("indexes", [])
    if not isinstance(raw_indexes, list):
        raise ConfigurationError(f"{where}: indexes must be a list")
    indexes = tuple(
        _parse_index(index, f"{where}.indexes[{i}]", set(keys))
        for i, index in enumerate(raw_indexes)
    )
    if len({index.key for index in indexes}) != len(indexes):
        raise ConfigurationError(f"{where}: duplicate index keys")
    return TableSpec(
        id=_text(entry, "$id", where),
        database_id=database_id,
        name=_text(entry, "name", where),
        columns=columns,
        indexes=indexes,
        permissions=_strings(entry, "$permissions", where),
        row_security=bool(entry.get("rowSecurity", False)),
        enabled=bool(entry.get("enabled", True)),
    )


def parse_schema(document: Mapping[str, Any]) -> Schema:
    """The ``tablesDB`` and ``tables`` sections of an ``appwrite.json`` document."""
    raw_databases = document.get("tablesDB")
    if not isinstance(raw_databases, list) or not raw_databases:
        raise ConfigurationError("appwrite.json: tablesDB must be a non-empty list")
    databases: list[DatabaseSpec] = []
    for i, raw in enumerate(raw_databases):
        where = f"tablesDB[{i}]"
        entry = _object(raw, where)
        databases.append(
            DatabaseSpec(
                id=_text(entry, "$id", where),
                name=_text(entry, "name", where),
                enabled=bool(entry.get("enabled", True)),
            )
        )
    raw_tables = document.get("tables")
    if not isinstance(raw_tables, list):
        raise ConfigurationError("appwrite.json: tables must be a list")
    database_ids = {database.id for database in databases}
    tables = tuple(
        _parse_table(entry, f"tables[{i}]", database_ids) for i, entry in enumerate(raw_tables)
    )
    return Schema(databases=tuple(databases), tables=tables)


def load_schema(path: Path = APPWRITE_JSON) -> Schema:
    """The schema of an ``appwrite.json`` file (the repository's by default)."""
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigurationError(f"cannot read {path}: {exc}") from exc
    return parse_schema(document)
