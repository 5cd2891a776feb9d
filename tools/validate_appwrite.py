"""Check ``appwrite.json`` before the Appwrite CLI reads it.

The CLI parses the file without a schema and silently drops what it does not know: a misspelt
key (``tablesDb``, ``scope``), a wrong type (``"timeout": "30"``) or a column on an unknown
database reaches the server as a default, or not at all. This checks the keys and types this
project uses (functions, tablesDB, tables, columns, indexes) and names every problem at once.

    python tools/validate_appwrite.py [appwrite.json]
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

# One list of the column and index types the schema knows, shared with its parser.
from tools.schema import COLUMN_TYPES, INDEX_TYPES

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

APPWRITE_JSON = ROOT / "appwrite.json"

# The keys appwrite-cli 12 (tools/deploy/package.json) reads: lib/config.js `KeysFunction`,
# `KeysDatabase`, `KeysTable`, `KeysColumns`, `KeyIndexesColumns`, plus a function's `ignore`
# (read by the packer, lib/commands/functions.js) and the project's own top-level keys.
TOP_KEYS = frozenset(
    {
        "projectId",
        "projectName",
        "endpoint",
        "settings",
        "functions",
        "sites",
        "tablesDB",
        "tables",
        "databases",
        "collections",
        "buckets",
        "teams",
        "topics",
        "messages",
    }
)
FUNCTION_KEYS = frozenset(
    {
        "path",
        "$id",
        "execute",
        "name",
        "enabled",
        "logging",
        "runtime",
        "specification",
        "scopes",
        "events",
        "schedule",
        "timeout",
        "entrypoint",
        "commands",
        "vars",
        "ignore",
    }
)
DATABASE_KEYS = frozenset({"$id", "name", "enabled"})
TABLE_KEYS = frozenset(
    {"$id", "$permissions", "databaseId", "name", "enabled", "rowSecurity", "columns", "indexes"}
)
COLUMN_KEYS = frozenset(
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
        "relatedTable",
        "relationType",
        "twoWay",
        "twoWayKey",
        "onDelete",
        "side",
        "encrypt",
    }
)
INDEX_KEYS = frozenset({"key", "type", "status", "columns", "orders", "lengths"})

SIZED = frozenset({"string", "varchar"})
NUMERIC = frozenset({"integer", "bigint", "double"})
# The server's spelling; the CLI compares orders case-sensitively against what the server keeps.
ORDERS = frozenset({"ASC", "DESC"})
# Appwrite's custom ids: up to 36 characters, letters, digits, `.`, `-`, `_`, not starting with
# a special character.
APPWRITE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,35}$")
RUNTIME = re.compile(r"^[a-z][a-z0-9]*-\d+(\.\d+)*$")
CRON_FIELD = re.compile(r"^[\d*/,\-A-Za-z]+$")
ROLE = re.compile(
    r"^(any|guests|users|users/[a-z]+|user:[^/]+(/[a-z]+)?|team:[^/]+(/.+)?|label:.+)$"
)
SCOPE = re.compile(r"^[a-z]+(\.[a-z]+)*\.(read|write)$")
MAX_TIMEOUT = 900
INT64 = 2**63


class Problems:
    """Every problem found, each prefixed with where it is."""

    def __init__(self) -> None:
        self.found: list[str] = []

    def add(self, where: str, message: str) -> None:
        self.found.append(f"appwrite.json: {where}: {message}")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_bool(value: Any) -> bool:
    return isinstance(value, bool)


def _is_str(value: Any) -> bool:
    return isinstance(value, str)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _keys(problems: Problems, where: str, entry: Mapping[str, Any], known: frozenset[str]) -> None:
    for key in sorted(set(entry) - known):
        problems.add(where, f"unknown key {key!r} (the CLI ignores it)")


class Entry:
    """One object of the file and where it is, for checking its fields."""

    def __init__(self, problems: Problems, where: str, values: Mapping[str, Any]) -> None:
        self.problems = problems
        self.where = where
        self.values = values

    def add(self, message: str) -> None:
        self.problems.add(self.where, message)

    def field(
        self, key: str, check: Callable[[Any], bool], wanted: str, *, required: bool = False
    ) -> bool:
        """Whether the field is present and passes ``check``; a problem otherwise (a missing
        optional field is no problem, and answers False)."""
        if key not in self.values:
            if required:
                self.add(f"{key} is missing")
            return False
        if not check(self.values[key]):
            self.add(f"{key} must be {wanted}, got {self.values[key]!r}")
            return False
        return True


def _strings(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(item, str) for item in value)


def _text(value: Any) -> bool:
    return isinstance(value, str) and bool(value.strip())


def _list_of_objects(
    problems: Problems, document: Mapping[str, Any], key: str
) -> list[tuple[str, dict[str, Any]]]:
    value = document.get(key, [])
    if not isinstance(value, list):
        problems.add(key, "must be a list")
        return []
    items = []
    for position, item in enumerate(value):
        where = f"{key}[{position}]"
        if isinstance(item, dict):
            items.append((where, item))
        else:
            problems.add(where, "must be an object")
    return items


def _unique(problems: Problems, where: str, values: Iterable[str], what: str) -> None:
    seen: set[str] = set()
    for value in values:
        if value in seen:
            problems.add(where, f"duplicate {what} {value!r}")
        seen.add(value)


def check_functions(problems: Problems, document: Mapping[str, Any], root: Path) -> None:
    functions = _list_of_objects(problems, document, "functions")
    _unique(problems, "functions", (str(f.get("$id")) for _, f in functions), "function id")
    for place, function in functions:
        where = f"{place} ({function.get('$id', '?')})"
        function_ = Entry(problems, where, function)
        _keys(problems, where, function, FUNCTION_KEYS)
        function_.field(
            "$id",
            lambda v: isinstance(v, str) and bool(APPWRITE_ID.match(v)),
            "an Appwrite id",
            required=True,
        )
        function_.field("name", _text, "a non-empty string", required=True)
        function_.field(
            "runtime",
            lambda v: isinstance(v, str) and bool(RUNTIME.match(v)),
            "a runtime like python-3.12",
            required=True,
        )
        function_.field("entrypoint", _text, "a path", required=True)
        function_.field("commands", lambda v: isinstance(v, str), "a string")
        function_.field("specification", _text, "a specification id")
        for key in ("enabled", "logging"):
            function_.field(key, lambda v: isinstance(v, bool), "true or false")
        function_.field(
            "timeout",
            lambda v: _is_int(v) and 1 <= v <= MAX_TIMEOUT,
            f"an integer of seconds from 1 to {MAX_TIMEOUT}",
        )
        function_.field(
            "execute",
            lambda v: _strings(v) and all(ROLE.match(r) for r in v),
            "a list of roles (any, users, guests, user:ID, team:ID, label:NAME)",
            required=True,
        )
        function_.field(
            "scopes",
            lambda v: _strings(v) and all(SCOPE.match(s) for s in v),
            "a list of scopes like rows.read",
            required=True,
        )
        function_.field("events", _strings, "a list of event names")
        # A list: the CLI packs with it instead of the folder's .gitignore.
        function_.field("ignore", _strings, "a list of gitignore patterns")
        function_.field(
            "schedule",
            lambda v: (
                isinstance(v, str)
                and (not v or (len(v.split()) == 5 and all(CRON_FIELD.match(f) for f in v.split())))
            ),
            '"" or a cron expression of 5 fields',
        )
        if function_.field("path", _text, "a folder", required=True):
            folder = root / function["path"]
            if not folder.is_dir():
                problems.add(where, f"path {function['path']!r} is not a folder")
            elif (
                isinstance(function.get("entrypoint"), str)
                and not (folder / function["entrypoint"]).is_file()
            ):
                problems.add(
                    where,
                    f"entrypoint {function['entrypoint']!r} is not a file of {function['path']}",
                )


def check_databases(problems: Problems, document: Mapping[str, Any]) -> set[str]:
    if "tablesDB" not in document and ("tables" in document or "databases" in document):
        problems.add("tablesDB", "is missing: `appwrite push tables` reads the databases there")
    databases = _list_of_objects(problems, document, "tablesDB")
    _unique(problems, "tablesDB", (str(d.get("$id")) for _, d in databases), "database id")
    for where, database in databases:
        database_ = Entry(problems, where, database)
        _keys(problems, where, database, DATABASE_KEYS)
        database_.field(
            "$id",
            lambda v: isinstance(v, str) and bool(APPWRITE_ID.match(v)),
            "an Appwrite id",
            required=True,
        )
        database_.field("name", _text, "a non-empty string", required=True)
        database_.field("enabled", lambda v: isinstance(v, bool), "true or false")
    return {str(database.get("$id")) for _, database in databases}


def check_tables(problems: Problems, document: Mapping[str, Any], databases: set[str]) -> None:
    tables = _list_of_objects(problems, document, "tables")
    _unique(
        problems, "tables", (f"{t.get('databaseId')}.{t.get('$id')}" for _, t in tables), "table"
    )
    for place, table in tables:
        where = f"{place} ({table.get('$id', '?')})"
        table_ = Entry(problems, where, table)
        _keys(problems, where, table, TABLE_KEYS)
        table_.field(
            "$id",
            lambda v: isinstance(v, str) and bool(APPWRITE_ID.match(v)),
            "an Appwrite id",
            required=True,
        )
        table_.field("name", _text, "a non-empty string", required=True)
        if (
            table_.field("databaseId", _text, "a database id", required=True)
            and table["databaseId"] not in databases
        ):
            problems.add(where, f"databaseId {table['databaseId']!r} is not in tablesDB")
        table_.field("$permissions", _strings, "a list of permission strings")
        for key in ("enabled", "rowSecurity"):
            table_.field(key, lambda v: isinstance(v, bool), "true or false")
        columns = [
            (f"{where}.columns[{i}]", c)
            for i, c in enumerate(
                table.get("columns", []) if isinstance(table.get("columns", []), list) else []
            )
        ]
        if not isinstance(table.get("columns", []), list):
            problems.add(where, "columns must be a list")
        keys: list[str] = []
        for column_where, column in columns:
            if not isinstance(column, dict):
                problems.add(column_where, "must be an object")
                continue
            keys.append(str(column.get("key")))
            check_column(problems, f"{column_where} ({column.get('key', '?')})", column)
        _unique(problems, where, keys, "column key")
        indexes = table.get("indexes", [])
        if not isinstance(indexes, list):
            problems.add(where, "indexes must be a list")
            continue
        _unique(
            problems,
            where,
            (str(i.get("key")) for i in indexes if isinstance(i, dict)),
            "index key",
        )
        for position, index in enumerate(indexes):
            index_where = f"{where}.indexes[{position}]"
            if not isinstance(index, dict):
                problems.add(index_where, "must be an object")
                continue
            check_index(problems, f"{index_where} ({index.get('key', '?')})", index, set(keys))


def check_column(problems: Problems, where: str, column: Mapping[str, Any]) -> None:
    column_ = Entry(problems, where, column)
    _keys(problems, where, column, COLUMN_KEYS)
    column_.field(
        "key",
        lambda v: isinstance(v, str) and bool(APPWRITE_ID.match(v)),
        "a column key",
        required=True,
    )
    if not column_.field(
        "type",
        lambda v: v in COLUMN_TYPES,
        f"one of {', '.join(sorted(COLUMN_TYPES))}",
        required=True,
    ):
        return
    kind = column["type"]
    for key in ("required", "array", "encrypt"):
        column_.field(key, lambda v: isinstance(v, bool), "true or false")
    if kind in SIZED:
        column_.field(
            "size",
            lambda v: _is_int(v) and v > 0,
            "a positive integer",
            required=True,
        )
    elif "size" in column:
        problems.add(where, f"size is only for {' and '.join(sorted(SIZED))} columns")
    if kind in NUMERIC:
        number = _is_number if kind == "double" else _is_int
        for key in ("min", "max"):
            column_.field(
                key,
                lambda v: v is None or (number(v) and -INT64 <= v < INT64),
                "a 64-bit number or null",
            )
        low, high = column.get("min"), column.get("max")
        if isinstance(low, int | float) and isinstance(high, int | float) and low > high:
            problems.add(where, f"min {low} is above max {high}")
    else:
        for key in ("min", "max"):
            if key in column:
                problems.add(where, f"{key} is only for numeric columns")
    default = column.get("default")
    if default is not None:
        if column.get("required") is True:
            problems.add(where, "a required column cannot have a default (the server refuses it)")
        valid = {
            "integer": _is_int,
            "bigint": _is_int,
            "double": _is_number,
            "boolean": _is_bool,
        }.get(kind, _is_str)
        if not valid(default):
            problems.add(where, f"default {default!r} does not fit the column type {kind}")
        elif kind in SIZED and len(default) > int(column.get("size") or 0):
            problems.add(where, "default is longer than size")
    column_.field("format", lambda v: isinstance(v, str), "a string")
    column_.field("elements", _strings, "a list of strings")


def check_index(
    problems: Problems, where: str, index: Mapping[str, Any], columns: set[str]
) -> None:
    index_ = Entry(problems, where, index)
    _keys(problems, where, index, INDEX_KEYS)
    index_.field(
        "key",
        lambda v: isinstance(v, str) and bool(APPWRITE_ID.match(v)),
        "an index key",
        required=True,
    )
    index_.field(
        "type",
        lambda v: v in INDEX_TYPES,
        f"one of {', '.join(sorted(INDEX_TYPES))}",
        required=True,
    )
    if not index_.field(
        "columns",
        lambda v: _strings(v) and bool(v),
        "a non-empty list of column keys",
        required=True,
    ):
        return
    for name in index["columns"]:
        if name not in columns and not name.startswith("$"):
            problems.add(where, f"names unknown column {name!r}")
    orders = index_.field(
        "orders",
        lambda v: _strings(v) and all(o in ORDERS for o in v),
        "a list of ASC or DESC (upper case: the CLI compares them as written)",
    )
    if orders and len(index["orders"]) != len(index["columns"]):
        problems.add(where, "orders must name one order per column")


def problems_of(document: Any, root: Path = ROOT) -> list[str]:
    """Every problem of an ``appwrite.json`` document (empty when the CLI can push it as meant);
    function paths are checked relative to ``root``."""
    problems = Problems()
    if not isinstance(document, dict):
        return ["appwrite.json: must be a JSON object"]
    _keys(problems, "top level", document, TOP_KEYS)
    top = Entry(problems, "top level", document)
    for key in ("projectId", "endpoint", "projectName"):
        top.field(key, lambda v: isinstance(v, str), "a string")
    check_functions(problems, document, root)
    databases = check_databases(problems, document)
    check_tables(problems, document, databases)
    if not problems.found:
        # What migrate and the local store read must parse too.
        from metering.errors import ConfigurationError

        from tools.schema import parse_schema

        try:
            parse_schema(document)
        except ConfigurationError as error:
            problems.found.append(f"appwrite.json: {error.message}")
    return problems.found


def validate_file(path: Path) -> list[str]:
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        return [f"{path}: cannot be read as JSON: {exc}"]
    return problems_of(document, path.resolve().parent)


def main(argv: list[str] | None = None) -> int:
    arguments = sys.argv[1:] if argv is None else argv
    path = Path(arguments[0]) if arguments else APPWRITE_JSON
    found = validate_file(path)
    for problem in found:
        print(problem, file=sys.stderr)
    if not found:
        print(f"{path}: valid")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
