"""An in-process Appwrite (1.8 TablesDB and Account) speaking the real REST wire format, built on
``responses`` callbacks so that the unchanged SDK runs against it (see ``AppwriteEmulator``).
"""

from __future__ import annotations

import json
import re
import secrets
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cmp_to_key
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

import requests
import responses
from metering.adapters.appwrite_store import AppwriteStore
from metering.codec import CLAIMS, LEDGER, SUBSCRIPTIONS
from metering.config import Secret, StoreSettings
from metering.timeutil import parse_timestamp
from requests import PreparedRequest

from tests.support.identity import user_document
from tools.schema import ColumnSpec, Schema, TableSpec, load_schema

ENDPOINT = "http://appwrite.emulator.test/v1"
PROJECT_ID = "emulated-project"
API_KEY = "emulated-api-key"
SERVER_VERSION = "1.9.5"
DEFAULT_LIMIT = 25
MAX_LIMIT = 5000
ROW_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,35}$")
NUMERIC_TYPES = frozenset({"integer", "bigint", "double"})
SYSTEM_COLUMNS = ("$id", "$sequence", "$createdAt", "$updatedAt")

Row = dict[str, Any]
# Rows a transaction works on, keyed by (database id, table id, row id); None once deleted.
StagedRows = dict[tuple[str, str, str], Row | None]
Response = tuple[int, dict[str, str], str]


class ApiError(Exception):
    """An Appwrite error document: ``{"message", "code", "type", "version"}``."""

    def __init__(self, status: int, error_type: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.error_type = error_type
        self.message = message


def format_datetime(value: datetime) -> str:
    """Appwrite's own datetime format: milliseconds and an explicit +00:00 offset."""
    return value.astimezone(UTC).isoformat(timespec="milliseconds")


@dataclass
class Column:
    spec: ColumnSpec
    status: str
    created_at: str
    # Reads of the table's columns still to come before a `processing` column is `available`.
    polls_left: int

    def document(self) -> dict[str, Any]:
        spec = self.spec
        document: dict[str, Any] = {
            "key": spec.key,
            "type": spec.type,
            "status": self.status,
            "error": "",
            "required": spec.required,
            "array": spec.array,
            "description": "",
            "$createdAt": self.created_at,
            "$updatedAt": self.created_at,
            "default": spec.default,
        }
        if spec.type in ("string", "varchar"):
            document["size"] = spec.size
        if spec.type in NUMERIC_TYPES:
            document["min"] = spec.min
            document["max"] = spec.max
        if spec.type == "datetime":
            document["format"] = "datetime"
        elif spec.format:
            document["format"] = spec.format
        if spec.elements:
            document["elements"] = list(spec.elements)
        return document


@dataclass
class Index:
    key: str
    type: str
    columns: list[str]
    orders: list[str]
    status: str
    created_at: str
    polls_left: int

    def document(self) -> dict[str, Any]:
        return {
            "$id": self.key,
            "key": self.key,
            "type": self.type,
            "status": self.status,
            "error": "",
            "columns": self.columns,
            "lengths": [],
            "orders": self.orders,
            "description": "",
            "$createdAt": self.created_at,
            "$updatedAt": self.created_at,
        }


@dataclass
class Table:
    id: str
    database_id: str
    name: str
    created_at: str
    columns: dict[str, Column] = field(default_factory=dict)
    indexes: dict[str, Index] = field(default_factory=dict)
    rows: dict[str, Row] = field(default_factory=dict)
    sequence: int = 0

    def document(self) -> dict[str, Any]:
        return {
            "$id": self.id,
            "$createdAt": self.created_at,
            "$updatedAt": self.created_at,
            "$permissions": [],
            "databaseId": self.database_id,
            "name": self.name,
            "description": "",
            "enabled": True,
            "rowSecurity": False,
            "columns": [column.document() for column in self.columns.values()],
            "indexes": [index.document() for index in self.indexes.values()],
            "bytesMax": 0,
            "bytesUsed": 0,
        }


@dataclass
class Database:
    id: str
    name: str
    created_at: str
    tables: dict[str, Table] = field(default_factory=dict)

    def document(self) -> dict[str, Any]:
        return {
            "$id": self.id,
            "name": self.name,
            "description": "",
            "$createdAt": self.created_at,
            "$updatedAt": self.created_at,
            "enabled": True,
            "type": "tablesdb",
        }


@dataclass
class Transaction:
    id: str
    created_at: str
    operations: list[Callable[[StagedRows, set[tuple[str, str, str]]], None]] = field(
        default_factory=list
    )
    touched: set[tuple[str, str, str]] = field(default_factory=set)
    # Whether each row it stages a create, upsert or delete of exists once those apply, so that
    # a batch may work on a row it creates (the server's transaction-aware read).
    staged_rows: dict[tuple[str, str, str], bool] = field(default_factory=dict)
    status: str = "pending"

    def document(self) -> dict[str, Any]:
        return {
            "$id": self.id,
            "$createdAt": self.created_at,
            "$updatedAt": self.created_at,
            "status": self.status,
            "operations": len(self.operations),
            "expiresAt": self.created_at,
        }


@dataclass(frozen=True)
class Call:
    method: str
    path: str

    @property
    def is_write(self) -> bool:
        return self.method != "GET"


class AppwriteEmulator:
    """One emulated Appwrite project. ``schema`` pre-creates databases, tables, columns and
    indexes (all ``available``); without it the project starts empty, as before a migration.

    It keeps the server semantics the metering relies on: paths, JSON queries, row and error
    documents, bounded atomic increments with an inclusive max, 404/409 error types, column
    defaults, unique indexes, columns that are ``processing`` before ``available``, transactions
    (staged call by call or in one batch) that commit all or nothing and report failures with
    the commit's own error types, and row permissions."""

    def __init__(
        self,
        schema: Schema | None = None,
        *,
        endpoint: str = ENDPOINT,
        project_id: str = PROJECT_ID,
        api_key: str = API_KEY,
        clock: Callable[[], datetime] | None = None,
        processing_polls: int = 1,
    ) -> None:
        self.endpoint = endpoint.rstrip("/")
        self.project_id = project_id
        self.api_key = api_key
        self.clock = clock or (lambda: datetime.now(UTC))
        self.processing_polls = processing_polls
        self.databases: dict[str, Database] = {}
        self.transactions: dict[str, Transaction] = {}
        self.users_by_jwt: dict[str, dict[str, Any]] = {}
        self.calls: list[Call] = []
        self._failures: list[tuple[str, re.Pattern[str], int, str, int]] = []
        self._disconnects: list[tuple[str, re.Pattern[str], bool]] = []
        self._meta_lock = threading.RLock()
        self._row_locks: dict[tuple[str, str, str], threading.Lock] = {}
        self._base_path = urlsplit(self.endpoint).path
        if schema is not None:
            self.apply_schema(schema)

    # -- set-up and inspection (direct, not through HTTP) ----------------------------------------

    def apply_schema(self, schema: Schema, *, skip: Mapping[str, set[str]] | None = None) -> None:
        """Create what ``schema`` describes, already available; ``skip`` leaves out columns."""
        skip = skip or {}
        now = self._now()
        for spec in schema.databases:
            self.databases.setdefault(spec.id, Database(spec.id, spec.name, now))
        for table_spec in schema.tables:
            self._create_table_from_spec(table_spec, skip.get(table_spec.id, set()), now)

    def _create_table_from_spec(self, spec: TableSpec, skipped: set[str], now: str) -> None:
        database = self.databases[spec.database_id]
        table = database.tables.setdefault(
            spec.id, Table(spec.id, spec.database_id, spec.name, now)
        )
        for column in spec.columns:
            if column.key not in skipped:
                table.columns[column.key] = Column(column, "available", now, 0)
        for index in spec.indexes:
            if not set(index.columns) & skipped:
                table.indexes[index.key] = Index(
                    index.key,
                    index.type,
                    list(index.columns),
                    list(index.orders),
                    "available",
                    now,
                    0,
                )

    def register_user(self, jwt: str, user_id: str, email: str = "", name: str = "") -> None:
        """Make ``GET /v1/account`` with ``X-Appwrite-JWT: jwt`` answer this user."""
        self.users_by_jwt[jwt] = user_document(user_id, self._now(), name or user_id, email)

    def table(self, table_id: str, database_id: str = "koffers_db") -> Table:
        return self.databases[database_id].tables[table_id]

    def rows(self, table_id: str, database_id: str = "koffers_db") -> list[Row]:
        table = self.table(table_id, database_id)
        return [dict(row) for row in sorted(table.rows.values(), key=lambda r: r["$sequence"])]

    def insert_row(self, table_id: str, values: Mapping[str, Any], row_id: str = "") -> Row:
        """Insert a row as stored, bypassing defaults and validation (legacy data, NULLs)."""
        table = self.table(table_id)
        with self._meta_lock:
            row = self._new_row(table, row_id or secrets.token_hex(10))
            row.update(dict.fromkeys(table.columns))
            row.update(values)
            table.rows[row["$id"]] = row
            return dict(row)

    def writes(self) -> list[Call]:
        return [call for call in self.calls if call.is_write]

    def fail_next(
        self, method: str, path_pattern: str, status: int = 500, error_type: str = "general_unknown"
    ) -> None:
        """Answer the next matching request with an error instead of handling it."""
        self._failures.append((method.upper(), re.compile(path_pattern), status, error_type, 1))

    def disconnect_next(self, method: str, path_pattern: str, *, handled: bool = False) -> None:
        """Cut the connection of the next matching request: before the server sees it, or, when
        ``handled``, after the server applied it (the client never gets the answer)."""
        self._disconnects.append((method.upper(), re.compile(path_pattern), handled))

    def store_settings(self) -> StoreSettings:
        return StoreSettings(
            appwrite_endpoint=self.endpoint,
            appwrite_project_id=self.project_id,
            appwrite_api_key=Secret(self.api_key),
            database_id="koffers_db",
            subscriptions_table=SUBSCRIPTIONS,
            usage_events_table=LEDGER,
            claims_table=CLAIMS,
        )

    @contextmanager
    def running(self) -> Iterator[AppwriteEmulator]:
        """Route every request to ``endpoint`` here while the block runs."""
        mock = responses.RequestsMock(assert_all_requests_are_fired=False)
        pattern = re.compile(re.escape(self.endpoint) + r"(/.*)?$")
        for method in (responses.GET, responses.POST, responses.PATCH, responses.PUT):
            mock.add_callback(method, pattern, callback=self.handle)
        mock.add_callback(responses.DELETE, pattern, callback=self.handle)
        with mock:
            yield self

    # -- HTTP ------------------------------------------------------------------------------------

    def handle(self, request: PreparedRequest) -> Response:
        method = (request.method or "GET").upper()
        url = urlsplit(request.url or "")
        path = unquote(url.path)[len(self._base_path) :]
        self.calls.append(Call(method, path))
        handled = self._disconnect(method, path)
        if handled is False:
            raise requests.ConnectionError(f"connection lost before {method} {path}")
        answer = self._answer(request, method, url.query, path)
        if handled:
            raise requests.ConnectionError(f"connection lost after {method} {path}")
        return answer

    def _disconnect(self, method: str, path: str) -> bool | None:
        """None when the request goes through, else whether it is cut after being handled."""
        with self._meta_lock:
            for position, (want_method, pattern, handled) in enumerate(self._disconnects):
                if want_method == method and pattern.search(path):
                    del self._disconnects[position]
                    return handled
        return None

    def _answer(self, request: PreparedRequest, method: str, query: str, path: str) -> Response:
        try:
            self._inject_failure(method, path)
            headers = {key.lower(): str(value) for key, value in request.headers.items()}
            body = request.body if isinstance(request.body, str | bytes) else None
            params = self._params(method, query, body)
            if path == "/account" and method == "GET":
                return self._json(200, self._account(headers))
            self._authorize(headers)
            status, body = self._route(method, path, params)
            if status == 204:
                return 204, {"Content-Type": "text/html; charset=UTF-8"}, ""
            return self._json(status, body)
        except ApiError as error:
            return self._json(
                error.status,
                {
                    "message": error.message,
                    "code": error.status,
                    "type": error.error_type,
                    "version": SERVER_VERSION,
                },
            )

    def _inject_failure(self, method: str, path: str) -> None:
        with self._meta_lock:
            for position, (want_method, pattern, status, error_type, _) in enumerate(
                self._failures
            ):
                if want_method == method and pattern.search(path):
                    del self._failures[position]
                    raise ApiError(status, error_type, "Injected failure")

    @staticmethod
    def _json(status: int, body: Any) -> Response:
        return status, {"Content-Type": "application/json"}, json.dumps(body)

    @staticmethod
    def _params(method: str, query: str, body: str | bytes | None) -> dict[str, Any]:
        if method == "GET":
            params: dict[str, Any] = {}
            queries: list[tuple[int, str]] = []
            for key, value in parse_qsl(query, keep_blank_values=True):
                match = re.fullmatch(r"queries\[(\d+)\]", key)
                if match:
                    queries.append((int(match.group(1)), value))
                else:
                    params[key] = value
            params["queries"] = [value for _, value in sorted(queries)]
            return params
        if not body:
            return {}
        text = body.decode("utf-8") if isinstance(body, bytes) else body
        try:
            parsed = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ApiError(400, "general_argument_invalid", "Invalid JSON body") from exc
        if not isinstance(parsed, dict):
            raise ApiError(400, "general_argument_invalid", "Invalid JSON body")
        return parsed

    def _account(self, headers: Mapping[str, str]) -> dict[str, Any]:
        jwt = headers.get("x-appwrite-jwt", "")
        user = self.users_by_jwt.get(jwt)
        if not jwt:
            raise ApiError(401, "general_unauthorized_scope", "User (role: guests) missing scope")
        if user is None:
            raise ApiError(401, "user_jwt_invalid", "Invalid token passed in the request.")
        return user

    def _authorize(self, headers: Mapping[str, str]) -> None:
        if headers.get("x-appwrite-project") != self.project_id:
            raise ApiError(404, "project_not_found", "Project with the requested ID not found.")
        if headers.get("x-appwrite-key") != self.api_key:
            raise ApiError(
                401,
                "user_unauthorized",
                "The current user is not authorized to perform the requested action.",
            )

    def _route(self, method: str, path: str, params: dict[str, Any]) -> tuple[int, Any]:
        parts = [part for part in path.split("/") if part]
        if not parts or parts[0] != "tablesdb":
            raise ApiError(404, "general_route_not_found", "The requested route was not found.")
        rest = parts[1:]
        if rest and rest[0] == "transactions":
            return self._route_transactions(method, rest[1:], params)
        if not rest:
            if method == "POST":
                return 201, self._create_database(params)
            raise ApiError(405, "general_route_not_found", "Route not found.")
        database = self._database(rest[0])
        if len(rest) == 1:
            if method == "GET":
                return 200, database.document()
            raise ApiError(405, "general_route_not_found", "Route not found.")
        if rest[1] != "tables":
            raise ApiError(404, "general_route_not_found", "The requested route was not found.")
        if len(rest) == 2:
            if method == "POST":
                return 201, self._create_table(database, params)
            if method == "GET":
                tables = [table.document() for table in database.tables.values()]
                return 200, {"total": len(tables), "tables": tables}
            raise ApiError(405, "general_route_not_found", "Route not found.")
        table = self._table(database, rest[2])
        tail = rest[3:]
        if not tail:
            if method == "GET":
                self._poll(table)
                return 200, table.document()
            raise ApiError(405, "general_route_not_found", "Route not found.")
        if tail[0] == "columns":
            return self._route_columns(method, table, tail[1:], params)
        if tail[0] == "indexes":
            return self._route_indexes(method, table, tail[1:], params)
        if tail[0] == "rows":
            return self._route_rows(method, table, tail[1:], params)
        raise ApiError(404, "general_route_not_found", "The requested route was not found.")

    # -- schema ----------------------------------------------------------------------------------

    def _database(self, database_id: str) -> Database:
        database = self.databases.get(database_id)
        if database is None:
            raise ApiError(404, "database_not_found", "Database not found")
        return database

    @staticmethod
    def _table(database: Database, table_id: str) -> Table:
        table = database.tables.get(table_id)
        if table is None:
            raise ApiError(
                404, "table_not_found", "Table with the requested ID could not be found."
            )
        return table

    def _create_database(self, params: Mapping[str, Any]) -> dict[str, Any]:
        database_id = _required_id(params, "databaseId")
        with self._meta_lock:
            if database_id in self.databases:
                raise ApiError(409, "database_already_exists", "Database already exists")
            database = Database(database_id, str(params.get("name", database_id)), self._now())
            self.databases[database_id] = database
            return database.document()

    def _create_table(self, database: Database, params: Mapping[str, Any]) -> dict[str, Any]:
        table_id = _required_id(params, "tableId")
        with self._meta_lock:
            if table_id in database.tables:
                raise ApiError(409, "table_already_exists", "A table with the requested ID exists.")
            table = Table(table_id, database.id, str(params.get("name", table_id)), self._now())
            database.tables[table_id] = table
            return table.document()

    def _poll(self, table: Table) -> None:
        """Reading a table's schema lets time pass for columns and indexes being built."""
        with self._meta_lock:
            items: list[Column | Index] = [*table.columns.values(), *table.indexes.values()]
            for item in items:
                if item.status == "processing":
                    item.polls_left -= 1
                    if item.polls_left <= 0:
                        item.status = "available"

    def _route_columns(
        self, method: str, table: Table, tail: list[str], params: dict[str, Any]
    ) -> tuple[int, Any]:
        if len(tail) == 1 and method == "POST":
            return 202, self._create_column(table, tail[0], params)
        return self._read_schema(method, table, tail, table.columns, ("column", "columns"))

    def _read_schema(
        self,
        method: str,
        table: Table,
        tail: list[str],
        items: Mapping[str, Column | Index],
        kind: tuple[str, str],
    ) -> tuple[int, Any]:
        """``GET`` a table's columns or its indexes, or one of them by key; ``kind`` names one
        and many (``("column", "columns")``)."""
        one, many = kind
        if method != "GET" or len(tail) > 1:
            raise ApiError(404, "general_route_not_found", "The requested route was not found.")
        self._poll(table)
        if not tail:
            documents = [item.document() for item in items.values()]
            return 200, {"total": len(documents), many: documents}
        item = items.get(tail[0])
        if item is None:
            message = f"{one.capitalize()} with the requested ID not found."
            raise ApiError(404, f"{one}_not_found", message)
        return 200, item.document()

    def _create_column(self, table: Table, kind: str, params: Mapping[str, Any]) -> dict[str, Any]:
        kinds = {
            "string": ("string", ""),
            "varchar": ("varchar", ""),
            "text": ("text", ""),
            "mediumtext": ("mediumtext", ""),
            "longtext": ("longtext", ""),
            "integer": ("integer", ""),
            "bigint": ("bigint", ""),
            "float": ("double", ""),
            "boolean": ("boolean", ""),
            "datetime": ("datetime", ""),
            "email": ("string", "email"),
            "url": ("string", "url"),
            "ip": ("string", "ip"),
            "enum": ("string", "enum"),
        }
        if kind not in kinds:
            raise ApiError(404, "general_route_not_found", f"No column type {kind}")
        column_type, column_format = kinds[kind]
        key = params.get("key")
        if not isinstance(key, str) or not key or key.startswith("$"):
            raise ApiError(400, "general_argument_invalid", "Invalid key param")
        required = params.get("required")
        if not isinstance(required, bool):
            raise ApiError(400, "general_argument_invalid", "Param required is not optional.")
        default = params.get("default")
        if required and default is not None:
            raise ApiError(
                400, "column_default_unsupported", "Cannot set default value for required column"
            )
        size = params.get("size")
        if column_type in ("string", "varchar") and not isinstance(size, int | float):
            raise ApiError(400, "general_argument_invalid", "Param size is not optional.")
        spec = ColumnSpec(
            key=key,
            type=column_type,
            required=required,
            size=int(size) if isinstance(size, int | float) else None,
            default=default,
            min=_int_or_none(params.get("min")),
            max=_int_or_none(params.get("max")),
            array=bool(params.get("array", False)),
            format=column_format,
            elements=tuple(params.get("elements", ())),
        )
        with self._meta_lock:
            if key in table.columns:
                raise ApiError(
                    409, "column_already_exists", "Column with the requested key exists."
                )
            column = Column(spec, "processing", self._now(), self.processing_polls)
            if self.processing_polls <= 0:
                column.status = "available"
            table.columns[key] = column
            # Existing rows read NULL: the default applies only to rows created from now on.
            for row in table.rows.values():
                row.setdefault(key, None)
            return column.document()

    def _route_indexes(
        self, method: str, table: Table, tail: list[str], params: dict[str, Any]
    ) -> tuple[int, Any]:
        if not tail and method == "POST":
            return 202, self._create_index(table, params)
        return self._read_schema(method, table, tail, table.indexes, ("index", "indexes"))

    def _create_index(self, table: Table, params: Mapping[str, Any]) -> dict[str, Any]:
        key = params.get("key")
        index_type = params.get("type")
        columns = params.get("columns")
        if not isinstance(key, str) or not key:
            raise ApiError(400, "general_argument_invalid", "Invalid key param")
        if index_type not in ("key", "unique", "fulltext"):
            raise ApiError(400, "general_argument_invalid", "Invalid type param")
        if not isinstance(columns, list) or not columns:
            raise ApiError(400, "general_argument_invalid", "Invalid columns param")
        with self._meta_lock:
            if key in table.indexes:
                raise ApiError(409, "index_already_exists", "Index with the requested key exists.")
            for name in columns:
                if name in SYSTEM_COLUMNS:
                    continue
                column = table.columns.get(name)
                if column is None:
                    raise ApiError(400, "column_unknown", f"Unknown column: {name}")
                if column.status != "available":
                    raise ApiError(400, "column_not_available", f"Column not available: {name}")
            orders = params.get("orders") or []
            index = Index(
                key,
                str(index_type),
                list(columns),
                [str(order) for order in orders],
                "processing",
                self._now(),
                self.processing_polls,
            )
            if self.processing_polls <= 0:
                index.status = "available"
            table.indexes[key] = index
            return index.document()

    # -- rows ------------------------------------------------------------------------------------

    def _route_rows(
        self, method: str, table: Table, tail: list[str], params: dict[str, Any]
    ) -> tuple[int, Any]:
        transaction_id = params.get("transactionId")
        if not tail:
            if method == "GET":
                return 200, self._list_rows(table, params.get("queries", []))
            if method == "POST":
                if transaction_id:
                    return 201, self._stage(transaction_id, table, "create", params)
                return 201, self._create_row(table, params)
        elif len(tail) == 1:
            row_id = tail[0]
            if method == "GET":
                return 200, self._public(table, self._get_row(table, row_id))
            if transaction_id and method in ("PATCH", "DELETE"):
                return 200, self._stage(transaction_id, table, method, params, row_id=row_id)
            if method == "PATCH":
                return 200, self._update_row(
                    table, row_id, params.get("data") or {}, params.get("permissions")
                )
            if method == "DELETE":
                self._delete_row(table, row_id)
                return 204, None
        elif len(tail) == 3 and tail[2] in ("increment", "decrement") and method == "PATCH":
            row_id, column = tail[0], tail[1]
            if transaction_id:
                return 200, self._stage(
                    transaction_id, table, tail[2], params, row_id=row_id, column=column
                )
            return 200, self._change(table, row_id, column, tail[2], params)
        raise ApiError(404, "general_route_not_found", "The requested route was not found.")

    def _now(self) -> str:
        return format_datetime(self.clock())

    def _lock(self, table: Table, row_id: str) -> threading.Lock:
        key = (table.database_id, table.id, row_id)
        with self._meta_lock:
            lock = self._row_locks.get(key)
            if lock is None:
                lock = self._row_locks[key] = threading.Lock()
            return lock

    def _new_row(self, table: Table, row_id: str) -> Row:
        table.sequence += 1
        now = self._now()
        return {
            "$id": row_id,
            "$sequence": table.sequence,
            "$createdAt": now,
            "$updatedAt": now,
        }

    def _public(self, table: Table, row: Row) -> dict[str, Any]:
        document = dict(row)
        document["$sequence"] = str(row["$sequence"])
        document["$tableId"] = table.id
        document["$databaseId"] = table.database_id
        document["$permissions"] = list(row.get("$permissions") or [])
        return document

    def _get_row(self, table: Table, row_id: str) -> Row:
        row = table.rows.get(row_id)
        if row is None:
            raise ApiError(404, "row_not_found", "Row with the requested ID could not be found.")
        return row

    def _validate(self, table: Table, data: Mapping[str, Any], *, creating: bool) -> Row:
        clean: Row = {}
        for key, value in data.items():
            column = table.columns.get(key)
            if column is None:
                raise ApiError(
                    400,
                    "row_invalid_structure",
                    f'Invalid document structure: Unknown attribute: "{key}"',
                )
            clean[key] = _checked_value(column.spec, value)
        if creating:
            for column in table.columns.values():
                if column.spec.required and clean.get(column.spec.key) is None:
                    key = column.spec.key
                    raise ApiError(
                        400,
                        "row_invalid_structure",
                        f'Invalid document structure: Missing required attribute "{key}"',
                    )
        return clean

    def _check_unique(self, table: Table, candidate: Row) -> None:
        for index in table.indexes.values():
            if index.type != "unique":
                continue
            values = tuple(candidate.get(name) for name in index.columns)
            if any(value is None for value in values):
                continue
            for other in table.rows.values():
                if other["$id"] != candidate["$id"] and all(
                    other.get(name) == value
                    for name, value in zip(index.columns, values, strict=True)
                ):
                    raise ApiError(
                        409, "row_already_exists", "Row with the requested ID already exists."
                    )

    def _create_row(self, table: Table, params: Mapping[str, Any]) -> dict[str, Any]:
        with self._meta_lock:
            row = self._prepare_create(table, params)
            table.rows[row["$id"]] = row
            return self._public(table, row)

    def _prepare_create(self, table: Table, params: Mapping[str, Any]) -> Row:
        row_id = params.get("rowId")
        if row_id == "unique()":
            row_id = secrets.token_hex(10)
        if not isinstance(row_id, str) or not ROW_ID.match(row_id):
            raise ApiError(400, "general_argument_invalid", "Invalid `rowId` param: UID invalid")
        data = params.get("data")
        if not isinstance(data, dict):
            raise ApiError(400, "row_missing_data", "The row data is missing.")
        columns, permissions = _split_permissions(data, params.get("permissions"))
        clean = self._validate(table, columns, creating=True)
        if row_id in table.rows:
            raise ApiError(409, "row_already_exists", "Row with the requested ID already exists.")
        row = self._new_row(table, row_id)
        for column in table.columns.values():
            row[column.spec.key] = column.spec.default
        row.update(clean)
        row["$permissions"] = permissions
        self._check_unique(table, row)
        return row

    def _update_row(
        self, table: Table, row_id: str, data: Mapping[str, Any], permissions: Any = None
    ) -> dict[str, Any]:
        """Set ``data``; given ``permissions`` replace the row's, else it keeps its own."""
        clean = self._validate(table, data, creating=False)
        if permissions is not None:
            _, permissions = _split_permissions({}, permissions)
        with self._lock(table, row_id), self._meta_lock:
            row = self._get_row(table, row_id)
            updated = {**row, **clean}
            if permissions is not None:
                updated["$permissions"] = permissions
            self._check_unique(table, updated)
            updated["$updatedAt"] = self._now()
            row.update(updated)
            return self._public(table, row)

    def _delete_row(self, table: Table, row_id: str) -> None:
        with self._lock(table, row_id), self._meta_lock:
            self._get_row(table, row_id)
            del table.rows[row_id]

    def _change(
        self, table: Table, row_id: str, column_key: str, direction: str, params: Mapping[str, Any]
    ) -> dict[str, Any]:
        with self._lock(table, row_id):
            row = table.rows.get(row_id)
            if row is None:
                # The database layer's "not found" covers rows and columns alike, and the
                # server reports it as a missing column.
                raise ApiError(404, "column_not_found", "Column with the requested ID not found.")
            answered = self._apply_change(table, row, column_key, direction, params)
            return {**self._public(table, row), column_key: answered}

    def _apply_change(
        self,
        table: Table,
        row: Row,
        column_key: str,
        direction: str,
        params: Mapping[str, Any],
        *,
        limit_type: str = "column_limit_exceeded",
    ) -> Any:
        """Apply the change to ``row``; returns the value the server answers for the column."""
        column = table.columns.get(column_key)
        if column is None:
            raise ApiError(404, "column_not_found", "Column with the requested ID not found.")
        if column.spec.type not in NUMERIC_TYPES or column.spec.array:
            raise ApiError(400, "column_type_invalid", "Column must be numeric")
        value = params.get("value", 1)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ApiError(400, "general_argument_invalid", "Invalid `value` param")
        if value <= 0:
            raise ApiError(
                400, "general_argument_invalid", "Value must be numeric and greater than 0"
            )
        current = row.get(column_key)
        # The server checks the bound against NULL as 0, but SQL leaves `NULL + n` NULL.
        base = current if current is not None else 0
        if direction == "increment":
            new = base + value
            bound = params.get("max")
            if bound is not None and new > bound:
                raise ApiError(
                    400,
                    limit_type,
                    f'Column "{column_key}" has reached the maximum value of {bound}',
                )
        else:
            new = base - value
            bound = params.get("min")
            if bound is not None and new < bound:
                raise ApiError(
                    400,
                    limit_type,
                    f'Column "{column_key}" has reached the minimum value of {bound}',
                )
        if current is not None:
            row[column_key] = new
        row["$updatedAt"] = self._now()
        # The answer is computed from the value read, so a NULL column answers `0 + n`.
        return new

    # -- queries ---------------------------------------------------------------------------------

    def _list_rows(self, table: Table, raw_queries: list[str]) -> dict[str, Any]:
        queries = [_parse_query(raw) for raw in raw_queries]
        limit, offset, cursor = DEFAULT_LIMIT, 0, None
        filters: list[dict[str, Any]] = []
        orders: list[tuple[str, bool]] = []
        for query in queries:
            method = query["method"]
            values = query.get("values") or []
            if method == "limit":
                limit = int(values[0])
                if not 0 <= limit <= MAX_LIMIT:
                    raise ApiError(400, "general_query_invalid", "Invalid limit")
            elif method == "offset":
                offset = int(values[0])
            elif method == "cursorAfter":
                cursor = str(values[0])
            elif method in ("orderAsc", "orderDesc"):
                orders.append((str(query.get("attribute")), method == "orderAsc"))
            elif method in FILTERS:
                self._check_attribute(table, query.get("attribute"))
                filters.append(query)
            else:
                raise ApiError(400, "general_query_invalid", f"Invalid query method: {method}")
        with self._meta_lock:
            snapshot = [dict(row) for row in table.rows.values()]
        matching = [row for row in snapshot if all(self._matches(table, row, q) for q in filters)]
        compare = self._comparator(table, orders)
        matching.sort(key=cmp_to_key(compare))
        total = len(matching)
        if cursor is not None:
            anchor = table.rows.get(cursor)
            if anchor is None:
                raise ApiError(400, "general_cursor_not_found", "Cursor not found")
            matching = [row for row in matching if compare(row, anchor) > 0]
        page = matching[offset : offset + limit]
        return {"total": total, "rows": [self._public(table, row) for row in page]}

    def _check_attribute(self, table: Table, attribute: Any) -> None:
        if attribute in SYSTEM_COLUMNS:
            return
        if not isinstance(attribute, str) or attribute not in table.columns:
            raise ApiError(
                400, "general_query_invalid", f"Attribute not found in schema: {attribute}"
            )

    def _typed(self, table: Table, attribute: str, value: Any) -> Any:
        column = table.columns.get(attribute)
        is_datetime = attribute in ("$createdAt", "$updatedAt") or (
            column is not None and column.spec.type == "datetime"
        )
        if is_datetime and value is not None:
            return parse_timestamp(value)
        return value

    def _matches(self, table: Table, row: Row, query: Mapping[str, Any]) -> bool:
        method = query["method"]
        attribute = str(query["attribute"])
        stored = row.get(attribute)
        if method == "isNull":
            return stored is None
        if method == "isNotNull":
            return stored is not None
        if stored is None:
            return False  # SQL: comparisons with NULL are never true
        value = self._typed(table, attribute, stored)
        wanted = [self._typed(table, attribute, item) for item in query.get("values") or []]
        return bool(FILTERS[method](value, wanted))

    def _comparator(
        self, table: Table, orders: list[tuple[str, bool]]
    ) -> Callable[[Row, Row], int]:
        keys = [*orders, ("$sequence", orders[-1][1] if orders else True)]

        def compare(left: Row, right: Row) -> int:
            for attribute, ascending in keys:
                a = self._typed(table, attribute, left.get(attribute))
                b = self._typed(table, attribute, right.get(attribute))
                if a == b:
                    continue
                # NULLs sort first in ascending order, as in MariaDB.
                if a is None:
                    result = -1
                elif b is None:
                    result = 1
                else:
                    result = -1 if a < b else 1
                return result if ascending else -result
            return 0

        return compare

    # -- transactions ----------------------------------------------------------------------------

    def _route_transactions(
        self, method: str, tail: list[str], params: Mapping[str, Any]
    ) -> tuple[int, Any]:
        if not tail and method == "POST":
            created = Transaction(secrets.token_hex(10), self._now())
            with self._meta_lock:
                self.transactions[created.id] = created
            return 201, created.document()
        if len(tail) == 2 and tail[1] == "operations" and method == "POST":
            transaction = self.transactions.get(tail[0])
            if transaction is None:
                raise ApiError(404, "transaction_not_found", "Transaction not found")
            self._stage_operations(transaction, params.get("operations"))
            return 201, transaction.document()
        if len(tail) == 1:
            transaction = self.transactions.get(tail[0])
            if transaction is None:
                raise ApiError(404, "transaction_not_found", "Transaction not found")
            if method == "GET":
                return 200, transaction.document()
            if method == "PATCH" and params.get("commit"):
                self._commit(transaction)
                return 200, transaction.document()
            if method == "PATCH" and params.get("rollback"):
                if transaction.status != "pending":
                    raise ApiError(400, "transaction_not_ready", "Transaction is not ready.")
                transaction.status = "failed"
                transaction.operations.clear()
                return 200, transaction.document()
            if method == "PATCH":
                raise ApiError(400, "general_bad_request", "Either commit or rollback must be true")
            if method == "DELETE":
                transaction.status = "failed"
                transaction.operations.clear()
                return 204, None
        raise ApiError(404, "general_route_not_found", "The requested route was not found.")

    def _stage_operations(self, transaction: Transaction, operations: Any) -> None:
        """Stage a batch: every operation is checked first, so that a refused batch stages
        nothing; then each is staged as its single call would be."""
        if not isinstance(operations, list) or not operations:
            raise ApiError(400, "general_bad_request", "Operations array cannot be empty")
        if transaction.status != "pending":
            raise ApiError(400, "general_bad_request", "Invalid or non-pending transaction")
        presence = dict(transaction.staged_rows)
        staged: list[tuple[Table, str, dict[str, Any], str, str]] = []
        for operation in operations:
            if not isinstance(operation, dict):
                raise ApiError(400, "general_argument_invalid", "Invalid `operations` param")
            action = operation.get("action")
            if action not in BATCH_ACTIONS:
                raise ApiError(400, "general_bad_request", f"Invalid action: {action}")
            table = self._table(
                self._database(str(operation.get("databaseId"))), str(operation.get("tableId"))
            )
            row_id = str(operation.get("rowId") or "")
            data = operation.get("data") or {}
            if not isinstance(data, dict):
                raise ApiError(400, "general_argument_invalid", "Invalid `data` param")
            key = (table.database_id, table.id, row_id)
            exists = presence.get(key, row_id in table.rows)
            if action not in ("create", "upsert") and not exists:
                raise ApiError(404, "document_not_found", "Document not found.")
            # Within one batch only its creates count (the server reads the rows as the
            # transaction's earlier requests left them): a delete shows at the commit.
            if action in ("create", "upsert"):
                presence[key] = True
            staged.append((table, *_single_call(action, row_id, data)))
        for table, single, params, row_id, column in staged:
            self._stage(transaction.id, table, single, params, row_id=row_id, column=column)

    def _stage(
        self,
        transaction_id: str,
        table: Table,
        action: str,
        params: Mapping[str, Any],
        *,
        row_id: str = "",
        column: str = "",
    ) -> dict[str, Any]:
        transaction = self.transactions.get(transaction_id)
        if transaction is None or transaction.status != "pending":
            raise ApiError(400, "general_bad_request", "Invalid or non-pending transaction")
        if action in ("create", "upsert"):
            row_id = str(params.get("rowId"))
        key = (table.database_id, table.id, row_id)
        if action in ("create", "upsert"):
            transaction.staged_rows[key] = True
        elif action == "DELETE":
            transaction.staged_rows[key] = False
        # Kept at the server's millisecond precision.
        staged_at = parse_timestamp(self._now())

        def operation(rows: StagedRows, written: set[tuple[str, str, str]]) -> None:
            # Failures are reported with the commit's own types, not the row API's.
            key = (table.database_id, table.id, row_id)
            row = rows.get(key)
            if action == "create" or (action == "upsert" and row is None):
                if row is not None:
                    raise ApiError(409, "transaction_conflict", "Transaction conflict.")
                rows[key] = self._prepare_create(table, params)
                written.add(key)
                return
            if row is None:
                raise ApiError(404, "document_not_found", "Document not found.")
            # Updates, upserts and deletes of a row this commit has not written yet must find
            # it unchanged since they were staged; increments are not checked.
            changed = parse_timestamp(row["$updatedAt"]) > staged_at
            if action in ("DELETE", "PATCH", "upsert") and key not in written and changed:
                raise ApiError(409, "transaction_conflict", "Transaction conflict.")
            if action == "upsert":
                columns, permissions = _split_permissions(
                    params.get("data") or {}, params.get("permissions")
                )
                row.update(self._validate(table, columns, creating=False))
                row["$permissions"] = permissions
                row["$updatedAt"] = self._now()
                written.add(key)
                return
            if action == "DELETE":
                rows[key] = None
                written.discard(key)
                return
            if action == "PATCH":
                row.update(self._validate(table, params.get("data") or {}, creating=False))
                row["$updatedAt"] = self._now()
            else:
                self._apply_change(
                    table, row, column, action, params, limit_type="attribute_limit_exceeded"
                )
            written.add(key)

        transaction.operations.append(operation)
        transaction.touched.add((table.database_id, table.id, row_id))
        return {"$id": row_id, "$tableId": table.id, "$databaseId": table.database_id}

    def _commit(self, transaction: Transaction) -> None:
        """Apply every staged operation to copies, then publish them all, or none."""
        if transaction.status != "pending":
            raise ApiError(400, "transaction_not_ready", "Transaction is not pending")
        keys = sorted(transaction.touched)
        locks = [
            self._lock(self.databases[database_id].tables[table_id], row_id)
            for database_id, table_id, row_id in keys
        ]
        for lock in locks:
            lock.acquire()
        try:
            with self._meta_lock:
                rows: StagedRows = {}
                for database_id, table_id, row_id in keys:
                    existing = self.databases[database_id].tables[table_id].rows.get(row_id)
                    rows[(database_id, table_id, row_id)] = dict(existing) if existing else None
                written: set[tuple[str, str, str]] = set()
                try:
                    for operation in transaction.operations:
                        operation(rows, written)
                except ApiError as error:
                    transaction.status = "failed"
                    status, error_type = COMMIT_ERRORS.get(
                        error.error_type, (error.status, error.error_type)
                    )
                    raise ApiError(status, error_type, error.message) from error
                for (database_id, table_id, row_id), row in rows.items():
                    table = self.databases[database_id].tables[table_id]
                    if row is None:
                        table.rows.pop(row_id, None)
                    else:
                        table.rows[row_id] = row
                transaction.status = "committed"
        finally:
            for lock in reversed(locks):
                lock.release()


# The actions a batch of operations may stage.
BATCH_ACTIONS = frozenset({"create", "update", "upsert", "delete", "increment", "decrement"})


def _single_call(
    action: str, row_id: str, data: dict[str, Any]
) -> tuple[str, dict[str, Any], str, str]:
    """A batch operation as the single staged call it stands for: (its action as ``_stage``
    names it, the call's parameters, the row id, the column of an increment or decrement)."""
    if action in ("create", "upsert"):
        return action, {"rowId": row_id, "data": data}, row_id, ""
    if action == "update":
        return "PATCH", {"data": data}, row_id, ""
    if action == "delete":
        return "DELETE", {}, row_id, ""
    change = {name: value for name, value in data.items() if name in ("value", "max", "min")}
    return action, change, row_id, str(data.get("column") or data.get("attribute") or "")


def _split_permissions(data: Mapping[str, Any], given: Any) -> tuple[dict[str, Any], list[str]]:
    """A row's columns, and its permissions: the call's ``permissions``, or ``$permissions`` in
    the data of a staged operation."""
    columns = {name: value for name, value in data.items() if name != "$permissions"}
    permissions = given if given is not None else data.get("$permissions")
    if permissions is None:
        return columns, []
    if not isinstance(permissions, list) or not all(isinstance(p, str) for p in permissions):
        raise ApiError(400, "general_argument_invalid", "Invalid `permissions` param")
    return columns, list(permissions)


# How a commit reports what the row API would have answered with its own types.
COMMIT_ERRORS = {
    "row_already_exists": (409, "transaction_conflict"),
    "row_invalid_structure": (400, "document_invalid_structure"),
}


def _less(value: Any, wanted: list[Any]) -> bool:
    return bool(value < wanted[0])


FILTERS: dict[str, Callable[[Any, list[Any]], bool]] = {
    "equal": lambda value, wanted: value in wanted,
    "notEqual": lambda value, wanted: value not in wanted,
    "lessThan": _less,
    "lessThanEqual": lambda value, wanted: bool(value <= wanted[0]),
    "greaterThan": lambda value, wanted: bool(value > wanted[0]),
    "greaterThanEqual": lambda value, wanted: bool(value >= wanted[0]),
    "isNull": lambda value, wanted: value is None,
    "isNotNull": lambda value, wanted: value is not None,
}


def _parse_query(raw: Any) -> dict[str, Any]:
    try:
        query = json.loads(raw) if isinstance(raw, str) else None
    except json.JSONDecodeError:
        query = None
    if not isinstance(query, dict) or not isinstance(query.get("method"), str):
        raise ApiError(400, "general_query_invalid", f"Invalid query: {raw!r}")
    return query


def _required_id(params: Mapping[str, Any], name: str) -> str:
    value = params.get(name)
    if value == "unique()":
        return secrets.token_hex(10)
    if not isinstance(value, str) or not ROW_ID.match(value):
        raise ApiError(400, "general_argument_invalid", f"Invalid `{name}` param: UID invalid")
    return value


def _int_or_none(value: Any) -> int | None:
    return int(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _checked_value(spec: ColumnSpec, value: Any) -> Any:
    """The value as stored, or a 400 ``row_invalid_structure`` as Appwrite's validator gives."""

    def invalid(reason: str) -> ApiError:
        return ApiError(
            400,
            "row_invalid_structure",
            f'Invalid document structure: Attribute "{spec.key}" has invalid type. {reason}',
        )

    if value is None:
        return None
    if spec.type in ("integer", "bigint"):
        if isinstance(value, bool) or not isinstance(value, int):
            raise invalid("Value must be a valid integer")
        if (spec.min is not None and value < spec.min) or (
            spec.max is not None and value > spec.max
        ):
            raise invalid("Value out of range")
        return value
    if spec.type == "double":
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise invalid("Value must be a valid float")
        return value
    if spec.type == "boolean":
        if not isinstance(value, bool):
            raise invalid("Value must be a valid boolean")
        return value
    if spec.type == "datetime":
        try:
            return format_datetime(parse_timestamp(value))
        except ValueError as exc:
            raise invalid("Value must be a valid date") from exc
    if not isinstance(value, str):
        raise invalid("Value must be a valid string")
    if spec.size is not None and len(value) > spec.size:
        raise invalid(f"Value must be a valid string and no longer than {spec.size} chars")
    return value


@contextmanager
def emulated_appwrite(schema: Schema | None = None, **options: Any) -> Iterator[AppwriteEmulator]:
    """An emulator with the repository's schema applied, routed while the block runs."""
    emulator = AppwriteEmulator(schema or load_schema(), **options)
    with emulator.running():
        yield emulator


@contextmanager
def emulated_appwrite_store() -> Iterator[AppwriteStore]:
    """An ``AppwriteStore`` on a fresh emulated project with the schema of ``appwrite.json``."""
    with emulated_appwrite() as emulator:
        yield AppwriteStore.connect(emulator.store_settings(), emulator.api_key)
