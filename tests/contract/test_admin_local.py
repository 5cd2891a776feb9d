"""`python -m tools.admin` with no project variables: migrate and backfill on the local runtime's
SQLite store (make dev's DATA_DIR), the one-line refusals and the --help of every command."""

from __future__ import annotations

import dataclasses
import io
import sqlite3
from pathlib import Path

import pytest
from metering.plans import load_default_plans

from localruntime.sqlite_store import SQLiteStore, table_ddl
from tools import admin
from tools.schema import load_schema

SCHEMA = load_schema()


def run(data_dir: Path, *args: str) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of one command on the store in ``data_dir``."""
    out, err = io.StringIO(), io.StringIO()
    code = admin.main(list(args), environ={"DATA_DIR": str(data_dir)}, out=out, err=err)
    return code, out.getvalue(), err.getvalue()


def older_store(path: Path, without: dict[str, set[str]]) -> None:
    """A store file as an older appwrite.json made it: the tables without some columns (and
    without the indexes on them)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with sqlite3.connect(path) as connection:
        for table in SCHEMA.tables:
            skipped = without.get(table.id, set())
            older = dataclasses.replace(
                table,
                columns=tuple(c for c in table.columns if c.key not in skipped),
                indexes=tuple(i for i in table.indexes if not set(i.columns) & skipped),
            )
            for statement in table_ddl(older):
                connection.execute(statement)


def insert(path: Path, rows: list[dict[str, object]]) -> None:
    with sqlite3.connect(path) as connection:
        for number, row in enumerate(rows):
            values = {"id": f"r{number}", "createdAt": "t", "updatedAt": "t", **row}
            names = ", ".join(f'"{name}"' for name in values)
            marks = ", ".join("?" for _ in values)
            connection.execute(
                f"INSERT INTO subscriptions ({names}) VALUES ({marks})", tuple(values.values())
            )


def test_migrate_creates_the_local_store_that_make_dev_opens(tmp_path: Path) -> None:
    """On a fresh DATA_DIR, migrate makes metering.sqlite3 with every table, column and index;
    the embedded store opens it as is, and a second run changes nothing."""
    code, out, err = run(tmp_path / "data", "migrate")
    assert (code, err) == (0, "")
    assert f"target: local SQLite store {tmp_path / 'data' / 'metering.sqlite3'}" in out
    assert "create unique index subscriptions.userId_unique (userId)" in out
    path = tmp_path / "data" / "metering.sqlite3"
    SQLiteStore(str(path))
    before = path.read_bytes()
    code, out, _ = run(tmp_path / "data", "migrate")
    assert code == 0
    assert "schema is up to date" in out
    assert path.read_bytes() == before


def test_migrate_dry_run_creates_no_file(tmp_path: Path) -> None:
    """--dry-run lists every step and leaves DATA_DIR empty."""
    code, out, _ = run(tmp_path / "data", "migrate", "--dry-run")
    assert code == 0
    assert "would create column subscriptions.topupTokens (integer)" in out
    assert not (tmp_path / "data").exists()


def test_migrate_adds_what_an_older_local_store_lacks(tmp_path: Path) -> None:
    """The columns and indexes an older file lacks are added; its rows keep their values."""
    path = tmp_path / "data" / "metering.sqlite3"
    older_store(path, {"subscriptions": {"topupTokens", "periodEnd"}})
    insert(path, [{"userId": "old", "plan": "pro"}])
    code, out, _ = run(tmp_path / "data", "migrate")
    assert code == 0, out
    assert out.splitlines()[1:] == [
        "create column subscriptions.topupTokens (integer)",
        "create column subscriptions.periodEnd (datetime)",
        "create key index subscriptions.periodEnd (periodEnd)",
        "3 change(s) applied",
    ]
    with sqlite3.connect(path) as connection:
        assert connection.execute("SELECT userId, plan FROM subscriptions").fetchall() == [
            ("old", "pro")
        ]


def test_backfill_fixes_the_local_rows_across_pages_and_a_dry_run_changes_nothing(
    tmp_path: Path,
) -> None:
    """Rows with a NULL plan or allowance get the default plan and the plan's allowance; the
    dry run counts them first and writes nothing; a second backfill finds nothing."""
    path = tmp_path / "data" / "metering.sqlite3"
    older_store(path, {})
    insert(
        path,
        [
            {"userId": f"u{n}", "plan": "pro" if n % 2 else None, "maxTokensPerMonth": None}
            for n in range(250)
        ],
    )
    before = path.read_bytes()
    code, out, _ = run(tmp_path / "data", "backfill", "--dry-run")
    assert code == 0
    assert "subscriptions: 250 rows scanned, 250 to fix" in out
    assert path.read_bytes() == before
    code, out, _ = run(tmp_path / "data", "backfill")
    assert code == 0
    assert "subscriptions: 250 rows scanned, 250 fixed" in out
    assert "claims: no stripe_events table to copy from" in out
    plans = load_default_plans()
    with sqlite3.connect(path) as connection:
        for user, plan, allowance in connection.execute(
            "SELECT userId, plan, maxTokensPerMonth FROM subscriptions"
        ):
            wanted = "pro" if int(user[1:]) % 2 else plans.default.id
            assert (plan, allowance) == (wanted, plans.get(wanted).tokens_per_month)
    assert "250 rows scanned, 0 fixed" in run(tmp_path / "data", "backfill")[1]


def test_a_long_run_draws_a_progress_bar_when_asked(tmp_path: Path) -> None:
    """--progress draws the paging bar on stderr; the summary stays on stdout."""
    path = tmp_path / "data" / "metering.sqlite3"
    older_store(path, {})
    insert(path, [{"userId": f"u{n}"} for n in range(120)])
    code, out, err = run(tmp_path / "data", "--progress", "backfill")
    assert code == 0
    assert "subscriptions:" in err
    assert "/120 " in err
    assert "120 rows scanned" in out


def test_every_command_has_help() -> None:
    """`--help` answers 0 with the command's description, for the entry and each command."""
    for args in (["--help"], *([name, "--help"] for name in admin.COMMANDS)):
        out, err = io.StringIO(), io.StringIO()
        assert admin.main(args, environ={}, out=out, err=err) == 0
        assert "usage: python -m tools.admin" in out.getvalue()
        assert err.getvalue() == ""


@pytest.mark.parametrize(
    "args",
    [[], ["nope"], ["migrate", "--bogus"], ["backfill", "extra"], ["doctor", "--webhook-url"]],
    ids=["no-command", "unknown-command", "unknown-option", "extra-argument", "missing-value"],
)
def test_bad_arguments_are_refused_in_one_line(args: list[str], tmp_path: Path) -> None:
    """Exit 2 and one line on stderr naming the problem and --help; nothing is touched."""
    code, out, err = run(tmp_path / "data", *args)
    assert code == 2
    assert out == ""
    assert err.count("\n") == 1
    assert "error:" in err
    assert "--help" in err
    assert not (tmp_path / "data").exists()


def test_the_commands_read_dotenv_as_make_dev_does(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without an injected environment, DATA_DIR comes from ./.env (the process wins)."""
    for name in ("APPWRITE_ENDPOINT", "APPWRITE_PROJECT_ID", "APPWRITE_API_KEY", "DATA_DIR"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)
    (tmp_path / ".env").write_text("DATA_DIR=from-dotenv\n")
    out = io.StringIO()
    assert admin.main(["migrate", "--dry-run"], out=out, err=io.StringIO()) == 0
    assert "local SQLite store from-dotenv/metering.sqlite3" in out.getvalue()


def test_every_command_module_has_the_interface_the_entry_calls() -> None:
    """Each COMMANDS entry names a module with a docstring, add_arguments and run."""
    for name in admin.COMMANDS:
        module = admin.command_module(name)
        assert module.__doc__
        assert callable(module.add_arguments)
        assert callable(module.run)
