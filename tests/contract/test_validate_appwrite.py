"""tools/validate_appwrite.py checks what the Appwrite CLI would silently drop or mistype in
appwrite.json, naming each problem with where it is."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from typing import Any

import pytest

from tools import validate_appwrite
from tools.schema import APPWRITE_JSON

DOCUMENT: dict[str, Any] = json.loads(APPWRITE_JSON.read_text(encoding="utf-8"))


def test_the_repository_appwrite_json_is_valid() -> None:
    """The file the deploy pushes passes every check (and parses for migrate)."""
    assert validate_appwrite.validate_file(APPWRITE_JSON) == []
    assert validate_appwrite.main([str(APPWRITE_JSON)]) == 0


def _function(doc: dict[str, Any], function_id: str) -> dict[str, Any]:
    return next(f for f in doc["functions"] if f["$id"] == function_id)


def _table(doc: dict[str, Any], table_id: str) -> dict[str, Any]:
    return next(t for t in doc["tables"] if t["$id"] == table_id)


Edit = Callable[[dict[str, Any]], object]
CASES: dict[str, tuple[Edit, str]] = {
    "misspelt-top-key": (
        lambda d: d.update(tablesDb=d.pop("tablesDB")),
        "top level: unknown key 'tablesDb' (the CLI ignores it)",
    ),
    "misspelt-function-key": (
        lambda d: _function(d, "usage").update(scope=["rows.read"]),
        "functions[1] (usage): unknown key 'scope' (the CLI ignores it)",
    ),
    "timeout-as-text": (
        lambda d: _function(d, "chat").update(timeout="30"),
        "functions[0] (chat): timeout must be an integer of seconds from 1 to 900, got '30'",
    ),
    "timeout-too-long": (
        lambda d: _function(d, "chat").update(timeout=901),
        "timeout must be an integer of seconds from 1 to 900, got 901",
    ),
    "ignore-as-text": (
        lambda d: _function(d, "chat").update(ignore="tests"),
        "ignore must be a list of gitignore patterns",
    ),
    "bad-scope": (
        lambda d: _function(d, "chat").update(scopes=["rows"]),
        "scopes must be a list of scopes like rows.read",
    ),
    "bad-role": (
        lambda d: _function(d, "chat").update(execute=["everyone"]),
        "execute must be a list of roles",
    ),
    "bad-schedule": (
        lambda d: _function(d, "monthly-reset-cron").update(schedule="hourly"),
        'schedule must be "" or a cron expression of 5 fields',
    ),
    "missing-folder": (
        lambda d: _function(d, "chat").update(path="functions/nope"),
        "path 'functions/nope' is not a folder",
    ),
    "missing-entrypoint": (
        lambda d: _function(d, "chat").update(entrypoint="src/nope.py"),
        "entrypoint 'src/nope.py' is not a file of functions/chat",
    ),
    "duplicate-function": (
        lambda d: d["functions"].append(copy.deepcopy(d["functions"][0])),
        "functions: duplicate function id 'chat'",
    ),
    "unknown-database": (
        lambda d: _table(d, "claims").update(databaseId="other"),
        "databaseId 'other' is not in tablesDB",
    ),
    "row-security-as-text": (
        lambda d: _table(d, "claims").update(rowSecurity="no"),
        "rowSecurity must be true or false, got 'no'",
    ),
    "string-without-size": (
        lambda d: _table(d, "claims")["columns"][0].pop("size"),
        "(claimKey): size is missing",
    ),
    "unknown-column-type": (
        lambda d: _table(d, "claims")["columns"][0].update(type="money"),
        "type must be one of",
    ),
    "default-of-another-type": (
        lambda d: _table(d, "claims")["columns"][4].update(default="0"),
        "(attempt): default '0' does not fit the column type integer",
    ),
    "required-with-default": (
        lambda d: _table(d, "claims")["columns"][0].update(default="x"),
        "a required column cannot have a default",
    ),
    "min-above-max": (
        lambda d: _table(d, "claims")["columns"][4].update(min=10, max=1),
        "min 10 is above max 1",
    ),
    "misspelt-column-key": (
        lambda d: _table(d, "claims")["columns"][4].update(defualt=0),
        "unknown key 'defualt' (the CLI ignores it)",
    ),
    "lower-case-order": (
        lambda d: _table(d, "claims")["indexes"][0].update(orders=["asc", "ASC"]),
        "orders must be a list of ASC or DESC (upper case",
    ),
    "orders-count": (
        lambda d: _table(d, "claims")["indexes"][0].update(orders=["ASC"]),
        "orders must name one order per column",
    ),
    "index-on-unknown-column": (
        lambda d: _table(d, "claims")["indexes"][0].update(columns=["nope", "claimedAt"]),
        "names unknown column 'nope'",
    ),
    "duplicate-index": (
        lambda d: _table(d, "claims")["indexes"].append(
            copy.deepcopy(_table(d, "claims")["indexes"][0])
        ),
        "duplicate index key 'status_claimedAt'",
    ),
}


@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
def test_each_problem_is_named_with_where_it_is(case: str) -> None:
    """One mistake of the kinds the CLI lets through gives one line saying where and what."""
    edit, expected = CASES[case]
    document = copy.deepcopy(DOCUMENT)
    edit(document)
    found = validate_appwrite.problems_of(document, APPWRITE_JSON.parent)
    assert found, "the mistake went through"
    assert any(expected in problem for problem in found), found
    assert all(problem.startswith("appwrite.json: ") for problem in found)


def test_every_problem_is_named_at_once() -> None:
    """Several mistakes give several lines, not just the first."""
    document = copy.deepcopy(DOCUMENT)
    _function(document, "chat").update(timeout="30")
    _table(document, "claims")["indexes"][0].update(orders=["asc", "asc"])
    assert len(validate_appwrite.problems_of(document, APPWRITE_JSON.parent)) == 2


def test_a_file_that_is_not_json_is_one_problem(tmp_path: Any) -> None:
    """Unreadable JSON is reported, not raised."""
    broken = tmp_path / "appwrite.json"
    broken.write_text("{")
    assert len(validate_appwrite.validate_file(broken)) == 1
    assert validate_appwrite.main([str(broken)]) == 1
