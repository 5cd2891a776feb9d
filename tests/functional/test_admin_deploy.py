"""`make deploy`'s script (tools/deploy.py) with a fake `appwrite` on PATH recording each call:
vendor, then validation, then the project's checks, then the CLI pushes tables and functions
non-interactively; any refusal stops it before the first push."""

from __future__ import annotations

import copy
import io
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.appwrite_admin_emulator import AppwriteAdminEmulator, remote_environ
from tools import admin, deploy
from tools.schema import APPWRITE_JSON

ROOT = APPWRITE_JSON.parent
# Records its arguments, where it ran and what it was given; fails when told to.
FAKE_CLI = """#!{python}
import json, os, sys
record = {{"args": sys.argv[1:], "cwd": os.getcwd(), "home": os.environ.get("HOME")}}
config = os.path.join(os.getcwd(), "appwrite.config.json")
if os.path.exists(config):
    record["config"] = json.load(open(config))
with open(os.environ["FAKE_APPWRITE_LOG"], "a") as log:
    log.write(json.dumps(record) + "\\n")
print("fake appwrite", " ".join(sys.argv[1:3]))
sys.exit(1 if " ".join(sys.argv[1:3]) == os.environ.get("FAKE_APPWRITE_FAIL") else 0)
"""


def small_document() -> dict[str, Any]:
    """The repository's functions (absolute folders) with one table that states what the
    server answers, so that a migrated project gives the CLI nothing to recreate."""
    document = json.loads(APPWRITE_JSON.read_text(encoding="utf-8"))
    for function in document["functions"]:
        function["path"] = str(ROOT / function["path"])
    document["tables"] = [
        {
            "$id": "accounts",
            "$permissions": [],
            "databaseId": "koffers_db",
            "name": "accounts",
            "enabled": True,
            "rowSecurity": False,
            "columns": [
                {"key": "userId", "type": "string", "size": 36, "required": True,
                 "array": False, "default": None, "encrypt": False},
            ],
            "indexes": [
                {"key": "userId_unique", "type": "unique", "status": "available",
                 "columns": ["userId"], "orders": ["ASC"]},
            ],
        }
    ]  # fmt: skip
    return document


class Deploy:
    def __init__(self, tmp_path: Path, emulator: AppwriteAdminEmulator) -> None:
        self.emulator = emulator
        self.log = tmp_path / "appwrite.log"
        bin_dir = tmp_path / "bin"
        bin_dir.mkdir()
        fake = bin_dir / "appwrite"
        fake.write_text(FAKE_CLI.format(python=sys.executable))
        fake.chmod(0o755)
        self.config = tmp_path / "appwrite.json"
        self.document = small_document()
        self.config.write_text(json.dumps(self.document))
        self.environ = remote_environ(
            emulator, PATH=f"{bin_dir}:/usr/bin:/bin", FAKE_APPWRITE_LOG=str(self.log)
        )
        self.steps: list[str] = []

    def vendor(self, argv: list[str]) -> int:
        self.steps.append("vendor")
        return 0

    def run(self, *args: str) -> tuple[int, str, str]:
        out, err = io.StringIO(), io.StringIO()
        code = deploy.main(
            ["--config", str(self.config), *args],
            environ=self.environ,
            out=out,
            err=err,
            vendor_step=self.vendor,
        )
        return code, out.getvalue(), err.getvalue()

    def calls(self) -> list[dict[str, Any]]:
        if not self.log.exists():
            return []
        return [json.loads(line) for line in self.log.read_text().splitlines()]


@pytest.fixture
def project(tmp_path: Path) -> Iterator[Deploy]:
    emulator = AppwriteAdminEmulator(processing_polls=0)
    with emulator.running():
        built = Deploy(tmp_path, emulator)
        out = io.StringIO()
        migrated = admin.main(
            ["migrate", "--schema", str(built.config)],
            environ=remote_environ(emulator),
            out=out,
            err=out,
        )
        assert migrated == 0, out.getvalue()
        emulator.calls.clear()
        yield built


@pytest.mark.slow
def test_deploy_vendors_validates_checks_then_pushes_tables_and_functions(
    project: Deploy,
) -> None:
    """The CLI is configured from the environment, then pushes tables before functions with
    every prompt answered, in a staging folder of its own: the repository is left as it was."""
    before = APPWRITE_JSON.read_bytes()
    code, out, err = project.run()
    assert (code, err) == (0, ""), out
    assert project.steps == ["vendor"]
    calls = project.calls()
    assert [call["args"] for call in calls] == [
        [
            "client",
            "--endpoint",
            project.emulator.endpoint,
            "--project-id",
            project.emulator.project_id,
            "--key",
            project.emulator.api_key,
        ],
        ["push", "tables", "--all", "--force"],
        ["push", "functions", "--all", "--force"],
    ]
    staged = calls[1]["config"]
    assert (staged["projectId"], staged["endpoint"]) == (
        project.emulator.project_id,
        project.emulator.endpoint,
    )
    assert staged["functions"][0]["path"] == str(ROOT / "functions" / "chat")
    assert staged["functions"][0]["ignore"] == project.document["functions"][0]["ignore"]
    assert all(Path(call["cwd"]) != ROOT and call["home"].startswith(call["cwd"]) for call in calls)
    assert not Path(calls[0]["cwd"]).exists(), "the staging folder is removed"
    assert APPWRITE_JSON.read_bytes() == before
    assert project.emulator.api_key not in out, "the key is never printed"
    assert "deploy: done" in out


@pytest.mark.slow
def test_an_invalid_appwrite_json_stops_before_anything_is_pushed(project: Deploy) -> None:
    """Validation runs before any contact: a mistyped field stops the deploy, names the
    problem, and neither the CLI nor the project is called."""
    broken = copy.deepcopy(project.document)
    broken["functions"][0]["timeout"] = "30"
    project.config.write_text(json.dumps(broken))
    code, _out, err = project.run()
    assert code == 1
    assert "timeout must be an integer" in err
    assert (
        err.splitlines()[-1]
        == f"deploy: error: 1 problem(s) in {project.config}: nothing was pushed"
    )
    assert project.calls() == []
    assert project.emulator.calls == []
    assert project.steps == ["vendor"]


@pytest.mark.slow
def test_a_push_that_would_destroy_is_refused_unless_allowed(project: Deploy) -> None:
    """A table the file does not list (the CLI deletes it with --force) stops the deploy;
    --allow-destructive lets the operator go on once they have made sure."""
    emulator = project.emulator
    emulator.databases["koffers_db"].tables["stripe_events"] = copy.copy(emulator.table("accounts"))
    emulator.databases["koffers_db"].tables["stripe_events"].id = "stripe_events"
    code, out, err = project.run()
    assert code == 1
    assert "push tables will be deleting table koffers_db.stripe_events" in out
    assert "would delete or recreate 1 thing(s)" in err
    assert project.calls() == []
    assert project.run("--allow-destructive")[0] == 0
    assert len(project.calls()) == 3


@pytest.mark.slow
def test_an_unsafe_server_is_refused(project: Deploy) -> None:
    """A 1.8 server is refused before the CLI runs."""
    project.emulator.version = "1.8.2"
    code, out, _err = project.run()
    assert code == 1
    assert "Appwrite 1.8.2: refused" in out
    assert project.calls() == []


@pytest.mark.slow
def test_functions_only_and_dry_run(project: Deploy) -> None:
    """--functions-only pushes no tables; --dry-run pushes nothing at all."""
    assert project.run("--functions-only")[0] == 0
    assert [call["args"][:2] for call in project.calls()] == [
        ["client", "--endpoint"],
        ["push", "functions"],
    ]
    project.log.unlink()
    code, out, _ = project.run("--dry-run")
    assert code == 0
    assert project.calls() == []
    assert "would run appwrite push tables" in out


@pytest.mark.slow
def test_a_failed_push_stops_the_deploy(project: Deploy) -> None:
    """When the CLI fails to push the tables, the functions are not pushed."""
    project.environ["FAKE_APPWRITE_FAIL"] = "push tables"
    code, _, err = project.run()
    assert code == 1
    assert "`appwrite push tables` failed" in err
    assert [call["args"][:2] for call in project.calls()][-1] == ["push", "tables"]


def test_missing_settings_and_a_missing_cli_are_one_line_each(project: Deploy) -> None:
    """Without the project's variables, or without the CLI on PATH, the deploy says so."""
    del project.environ["APPWRITE_API_KEY"]
    code, _, err = project.run()
    assert code == 1
    assert err == "deploy: error: invalid configuration: APPWRITE_API_KEY is required\n"
    project.environ["APPWRITE_API_KEY"] = project.emulator.api_key
    project.environ["PATH"] = "/nonexistent"
    code, _, err = project.run()
    assert code == 1
    assert "the appwrite CLI is not on PATH" in err
