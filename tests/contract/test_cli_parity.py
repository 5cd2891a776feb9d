"""`migrate` and the Appwrite CLI agree: after a migrate, the pinned CLI's own comparison (its
functions from lib/commands/push.js, run with node) of appwrite.json against the project finds
nothing to delete, recreate or change; and the port of that comparison the doctor and the
deploy use answers as the CLI does."""

from __future__ import annotations

import copy
import io
import json
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.support.appwrite_admin_emulator import AppwriteAdminEmulator, remote_environ
from tools import admin
from tools.deploy import install_cli
from tools.schema import APPWRITE_JSON
from tools.schema_admin import AppwriteSchemaAdmin, cli_item_changes

COMPARE = Path(__file__).resolve().parents[1] / "support" / "cli_push_compare.js"
DOCUMENT: dict[str, Any] = json.loads(APPWRITE_JSON.read_text(encoding="utf-8"))

Found = dict[str, dict[str, dict[str, Any]]]


@pytest.fixture(scope="module")
def migrated() -> list[dict[str, Any]]:
    """The tables of a fresh project after `python -m tools.admin migrate`, as the server's JSON."""
    emulator = AppwriteAdminEmulator()
    with emulator.running():
        out = io.StringIO()
        code = admin.main(
            ["migrate"], environ=remote_environ(emulator), out=out, err=out, sleep=lambda _: None
        )
        assert code == 0, out.getvalue()
        admin_port = AppwriteSchemaAdmin.connect(
            emulator.endpoint, emulator.project_id, emulator.api_key
        )
        return admin_port.remote_schema(["koffers_db"]).tables["koffers_db"]


def cli_compare(config: dict[str, Any], remote: list[dict[str, Any]], tmp_path: Path) -> Found:
    """What the CLI's own functions say `push tables` would do to each table."""
    cli = install_cli()
    (tmp_path / "config.json").write_text(json.dumps(config))
    (tmp_path / "remote.json").write_text(json.dumps(remote))
    completed = subprocess.run(
        [
            "node",
            str(COMPARE),
            str(cli),
            str(tmp_path / "config.json"),
            str(tmp_path / "remote.json"),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr
    found: Found = json.loads(completed.stdout)
    return found


def port_compare(config: dict[str, Any], remote: list[dict[str, Any]]) -> Found:
    """The same question put to the port in tools.schema_admin."""
    found: Found = {}
    for table in remote:
        local = next(t for t in config["tables"] if t["$id"] == table["$id"])
        result: dict[str, dict[str, Any]] = {}
        for kind, label in (("columns", "column"), ("indexes", "index")):
            changes = cli_item_changes(table[kind], local[kind], table["$id"], label)
            key = {change.what: change.what.rpartition(".")[2] for change in changes}
            result[kind] = {
                "deleting": [key[c.what] for c in changes if c.action == "deleting"],
                "adding": [key[c.what] for c in changes if c.action == "adding"],
                "recreating": {key[c.what]: c.reason for c in changes if c.action == "recreating"},
                "changing": {key[c.what]: c.reason for c in changes if c.action == "changing"},
            }
        found[table["$id"]] = result
    return found


def pending(found: Found, kind: str) -> dict[str, Any]:
    """Every table's non-empty findings for ``kind`` (columns or indexes)."""
    return {
        f"{table}.{action}": items
        for table, kinds in found.items()
        for action, items in kinds[kind].items()
        if items
    }


@pytest.mark.slow
def test_after_migrate_the_cli_recreates_no_index(
    migrated: list[dict[str, Any]], tmp_path: Path
) -> None:
    """Index orders are created as appwrite.json spells them (`ASC`), so the CLI, which
    compares them case-sensitively, neither deletes nor recreates any index."""
    assert pending(cli_compare(DOCUMENT, migrated, tmp_path), "indexes") == {}


@pytest.mark.slow
def test_after_migrate_the_cli_recreates_no_column(
    migrated: list[dict[str, Any]], tmp_path: Path
) -> None:
    """No column is deleted, recreated (its data lost) or changed by a push after a migrate."""
    assert pending(cli_compare(DOCUMENT, migrated, tmp_path), "columns") == {}


def _table(document: dict[str, Any], table_id: str) -> dict[str, Any]:
    return next(t for t in document["tables"] if t["$id"] == table_id)


def _column(document: dict[str, Any], table_id: str, key: str) -> dict[str, Any]:
    return next(c for c in _table(document, table_id)["columns"] if c["key"] == key)


Mutation = Callable[[dict[str, Any], list[dict[str, Any]]], None]
MUTATIONS: dict[str, Mutation] = {
    "as-is": lambda local, remote: None,
    "lower-case-orders": lambda local, remote: _table(local, "subscriptions")["indexes"][0].update(
        orders=["asc"]
    ),
    "index-type": lambda local, remote: _table(local, "claims")["indexes"][1].update(type="unique"),
    "index-columns-only": lambda local, remote: _table(local, "claims")["indexes"][1].update(
        columns=["kind"]
    ),
    "size": lambda local, remote: _column(local, "subscriptions", "plan").update(size=64),
    "required": lambda local, remote: _column(local, "subscriptions", "plan").update(required=True),
    "default": lambda local, remote: _column(local, "subscriptions", "topupTokens").update(
        default=5
    ),
    "max": lambda local, remote: _column(local, "subscriptions", "topupTokens").update(max=10**12),
    "array": lambda local, remote: _column(local, "claims", "attempt").update(array=True),
    "type": lambda local, remote: _column(local, "claims", "attempt").update(type="double"),
    "encrypt-stated": lambda local, remote: (
        [
            column.update(encrypt=False)
            for column in _table(local, "claims")["columns"]
            if column["type"] == "string"
        ]
        and None
    ),
    "datetime-format-stated": lambda local, remote: _column(local, "claims", "claimedAt").update(
        format="datetime"
    ),
    "remote-extra-column": lambda local, remote: remote[2]["columns"].append(
        {**remote[2]["columns"][1], "key": "legacy"}
    ),
    "local-extra-column": lambda local, remote: _table(local, "claims")["columns"].append(
        {"key": "added", "type": "integer", "required": False, "array": False}
    ),
    "remote-extra-index": lambda local, remote: remote[2]["indexes"].append(
        {**remote[2]["indexes"][0], "key": "old_index"}
    ),
}


@pytest.mark.slow
@pytest.mark.parametrize("mutation", list(MUTATIONS), ids=list(MUTATIONS))
def test_the_port_answers_as_the_cli_does(
    migrated: list[dict[str, Any]], tmp_path: Path, mutation: str
) -> None:
    """For each kind of difference, the port finds the same deletions, additions, recreations
    and in-place changes as the CLI's own functions, with the same reasons."""
    local, remote = copy.deepcopy(DOCUMENT), copy.deepcopy(migrated)
    MUTATIONS[mutation](local, remote)
    assert port_compare(local, remote) == cli_compare(local, remote, tmp_path)


@pytest.mark.slow
def test_the_real_cli_pushes_nothing_to_a_project_migrate_made(tmp_path: Path) -> None:
    """The pinned CLI itself, run as `make deploy` runs it (a staged config, a home of its own,
    `client` then `push tables --all --force`), changes nothing on a project that `migrate`
    made from a file stating what the server answers."""
    from tests.functional.test_admin_deploy import small_document
    from tests.support.appwrite_http_bridge import served
    from tools.admin_commands.context import RemoteSettings
    from tools.deploy import STAGED_CONFIG, cli_commands, staged_config

    document = small_document()
    (tmp_path / "appwrite.json").write_text(json.dumps(document))
    cli = install_cli() / "index.js"
    with served(lambda endpoint: AppwriteAdminEmulator(endpoint=endpoint)) as emulator:
        out = io.StringIO()
        environ = remote_environ(emulator)
        code = admin.main(
            ["migrate", "--schema", str(tmp_path / "appwrite.json")],
            environ=environ,
            out=out,
            err=out,
            sleep=lambda _: None,
        )
        assert code == 0, out.getvalue()
        emulator.calls.clear()
        settings = RemoteSettings(emulator.endpoint, emulator.project_id, _secret(emulator))
        stage = tmp_path / "stage"
        (stage / "home").mkdir(parents=True)
        staged = staged_config(document, settings, tmp_path)
        (stage / STAGED_CONFIG).write_text(json.dumps(staged))
        configure = cli_commands(settings, functions_only=True)[0]
        for arguments in (configure, ["push", "tables", "--all", "--force"]):
            completed = subprocess.run(
                ["node", str(cli), *arguments],
                cwd=stage,
                env={"PATH": "/usr/bin:/bin", "HOME": str(stage / "home")},
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=120,
                check=False,
            )
            assert completed.returncode == 0, completed.stdout + completed.stderr
        assert "Successfully pushed 0 tables" in completed.stdout
        assert emulator.writes() == []


def _secret(emulator: AppwriteAdminEmulator) -> Any:
    from metering.config import Secret

    return Secret(emulator.api_key)
