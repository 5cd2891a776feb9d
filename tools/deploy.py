"""``make deploy``: vendor the domain into each function, validate ``appwrite.json``, check the
project (its server version, and that ``appwrite push tables`` would destroy nothing), then let
the pinned Appwrite CLI (tools/deploy/package.json) push the tables and the functions,
non-interactively, to the project APPWRITE_ENDPOINT, APPWRITE_PROJECT_ID and APPWRITE_API_KEY
name.

    python tools/deploy.py [--dry-run] [--functions-only] [--allow-destructive]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TextIO

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
if str(ROOT / "shared") not in sys.path:
    sys.path.append(str(ROOT / "shared"))

from metering.config import EnvReader  # noqa: E402
from metering.errors import MeteringError  # noqa: E402

from tools import validate_appwrite, vendor  # noqa: E402
from tools.admin_commands.context import RemoteSettings  # noqa: E402

CLI_FOLDER = ROOT / "tools" / "deploy"
CLI_PACKAGE = "appwrite-cli"
# The CLI reads appwrite.config.json before appwrite.json, walking up from where it runs.
STAGED_CONFIG = "appwrite.config.json"


class DeployError(Exception):
    """A reason to stop before (or instead of) pushing, said in one line."""


def pinned_cli_version(folder: Path = CLI_FOLDER) -> str:
    manifest = json.loads((folder / "package.json").read_text(encoding="utf-8"))
    return str(manifest["dependencies"][CLI_PACKAGE])


def installed_cli_version(folder: Path = CLI_FOLDER) -> str | None:
    manifest = folder / "node_modules" / CLI_PACKAGE / "package.json"
    if not manifest.is_file():
        return None
    return str(json.loads(manifest.read_text(encoding="utf-8")).get("version"))


def install_cli(folder: Path = CLI_FOLDER) -> Path:
    """``npm ci`` of the pinned CLI when it is missing or another version; its folder."""
    if installed_cli_version(folder) != pinned_cli_version(folder):
        npm = shutil.which("npm")
        if npm is None:
            raise DeployError("npm not found: install Node.js 20 or newer (it ships npm)")
        command = [npm, "ci", "--no-audit", "--no-fund", "--loglevel=error"]
        if subprocess.run(command, cwd=folder, check=False).returncode != 0:
            raise DeployError(f"npm ci in {folder} failed")
    return folder / "node_modules" / CLI_PACKAGE


def staged_config(
    document: Mapping[str, Any], settings: RemoteSettings, root: Path
) -> dict[str, Any]:
    """``appwrite.json`` as the CLI should see it for this project: its id and endpoint from
    the environment (the file keeps placeholders), each function's folder absolute so that the
    CLI can run outside the repository (it rewrites the config it finds, and leaves its code
    archives where it runs)."""
    staged: dict[str, Any] = json.loads(json.dumps(document))
    staged["projectId"] = settings.project_id
    staged["endpoint"] = settings.endpoint
    for function in staged.get("functions", []):
        function["path"] = str((root / function["path"]).resolve())
    return staged


def cli_commands(settings: RemoteSettings, *, functions_only: bool) -> list[list[str]]:
    """The CLI's invocations, in order. Tables go first, so that the new code never runs on an
    older schema; ``--all --force`` answer every prompt (the plan was checked before)."""
    commands = [
        [
            "client",
            "--endpoint",
            settings.endpoint,
            "--project-id",
            settings.project_id,
            "--key",
            settings.api_key.value,
        ]
    ]
    if not functions_only:
        commands.append(["push", "tables", "--all", "--force"])
    commands.append(["push", "functions", "--all", "--force"])
    return commands


def preflight(
    settings: RemoteSettings,
    document: Mapping[str, Any],
    say: Callable[[str], None],
    *,
    allow_destructive: bool,
    tables: bool,
) -> None:
    """Refuse a server the functions are unsafe on, and a table push that would delete a
    database, a table, a column or an index, or recreate one (its data is lost)."""
    from tools.admin_commands.doctor import classify
    from tools.schema import parse_schema
    from tools.schema_admin import AppwriteSchemaAdmin, cli_push_plan

    admin = AppwriteSchemaAdmin.connect(
        settings.endpoint, settings.project_id, settings.api_key.value
    )
    answer = admin.raw("/health/version") or {}
    supported, line = classify(str(answer.get("version", "")))
    say(f"deploy: {line}")
    if not supported:
        raise DeployError("the server is not a supported one (docs/deployment.md)")
    if not tables:
        return
    schema = parse_schema(document)
    plan = cli_push_plan(document, admin.remote_schema(d.id for d in schema.databases))
    for change in plan:
        say(f"deploy: push tables will be {change.describe()}".replace("\n", "; "))
    destructive = [change for change in plan if change.destructive]
    if destructive and not allow_destructive:
        raise DeployError(
            f"`appwrite push tables` would delete or recreate {len(destructive)} thing(s) "
            "(listed above): nothing was pushed; see docs/deployment.md, or pass "
            "--allow-destructive once you have made sure"
        )


def run_cli(
    cli: str,
    arguments: Sequence[str],
    cwd: Path,
    environ: Mapping[str, str],
    say: Callable[[str], None],
) -> None:
    """One CLI invocation, its output passed through; a non-zero exit stops the deploy."""
    shown = list(arguments)
    if "--key" in shown:
        shown[shown.index("--key") + 1] = "***"
    say(f"deploy: appwrite {' '.join(shown)}")
    process = subprocess.Popen(
        [cli, *arguments],
        cwd=cwd,
        env=dict(environ),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert process.stdout is not None
    for line in process.stdout:
        say(line.rstrip("\n"))
    if process.wait() != 0:
        raise DeployError(f"`appwrite {arguments[0]} {arguments[1]}` failed ({process.returncode})")


def deploy(
    args: argparse.Namespace,
    environment: Mapping[str, str],
    say: Callable[[str], None],
    stderr: TextIO,
    vendor_step: Callable[[list[str]], int],
) -> None:
    """Vendor, validate, check the project, then run the CLI; a ``DeployError`` stops it."""
    if vendor_step([]) != 0:
        raise DeployError("make vendor failed")
    problems = validate_appwrite.validate_file(args.config)
    if problems:
        for problem in problems:
            stderr.write(problem + "\n")
        raise DeployError(f"{len(problems)} problem(s) in {args.config}: nothing was pushed")
    say(f"deploy: {args.config.name} is valid")
    settings = RemoteSettings.read(EnvReader(environment))
    document = json.loads(args.config.read_text(encoding="utf-8"))
    preflight(
        settings,
        document,
        say,
        allow_destructive=args.allow_destructive,
        tables=not args.functions_only,
    )
    cli = shutil.which("appwrite", path=environment.get("PATH", ""))
    if cli is None:
        raise DeployError(
            "the appwrite CLI is not on PATH: run `make deploy`, which installs the pinned one"
        )
    commands = cli_commands(settings, functions_only=args.functions_only)
    with tempfile.TemporaryDirectory(prefix="deploy-") as scratch:
        stage = Path(scratch)
        staged = staged_config(document, settings, args.config.resolve().parent)
        (stage / STAGED_CONFIG).write_text(json.dumps(staged, indent=4), encoding="utf-8")
        # Its own home: the key stays out of the operator's CLI settings and goes with the
        # folder, and no login session of theirs takes precedence over it.
        (stage / "home").mkdir()
        cli_environ = {**environment, "HOME": str(stage / "home")}
        for arguments in commands:
            if args.dry_run:
                say("deploy: would run appwrite " + " ".join(arguments[:2]) + " ...")
                continue
            run_cli(cli, arguments, stage, cli_environ, say)


def main(
    argv: Sequence[str] | None = None,
    environ: Mapping[str, str] | None = None,
    out: TextIO | None = None,
    err: TextIO | None = None,
    vendor_step: Callable[[list[str]], int] = vendor.main,
) -> int:
    parser = argparse.ArgumentParser(prog="python tools/deploy.py", description=__doc__)
    parser.add_argument(
        "--dry-run", action="store_true", help="check everything, print the CLI calls, push nothing"
    )
    parser.add_argument(
        "--functions-only", action="store_true", help="push the functions, not the tables"
    )
    parser.add_argument(
        "--allow-destructive",
        action="store_true",
        help="push tables even when the CLI would delete or recreate something",
    )
    parser.add_argument(
        "--config", type=Path, default=ROOT / "appwrite.json", help=argparse.SUPPRESS
    )
    args = parser.parse_args(argv)
    stdout, stderr = out or sys.stdout, err or sys.stderr
    environment = dict(os.environ if environ is None else environ)

    def say(line: str) -> None:
        stdout.write(line + "\n")
        stdout.flush()

    try:
        deploy(args, environment, say, stderr, vendor_step)
    except (DeployError, MeteringError) as error:
        message = error.message if isinstance(error, MeteringError) else str(error)
        stderr.write(f"deploy: error: {message}\n")
        return 1
    say("deploy: dry run, nothing pushed" if args.dry_run else "deploy: done")
    return 0


if __name__ == "__main__":
    sys.exit(main())
