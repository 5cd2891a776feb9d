"""Bring an Appwrite project up to ``appwrite.json``: create what is missing, never drop anything.

    python -m tools.migrate migrate|backfill [--dry-run] [--schema appwrite.json]

Reads APPWRITE_ENDPOINT, APPWRITE_PROJECT_ID and APPWRITE_API_KEY from the environment.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

ROOT = Path(__file__).resolve().parent.parent
# The single source of the domain package, as the tests and the local runtime use it.
if str(ROOT / "shared") not in sys.path:
    sys.path.append(str(ROOT / "shared"))

from metering.codec import CLAIMS, SUBSCRIPTIONS  # noqa: E402
from metering.config import EnvReader, Secret  # noqa: E402
from metering.errors import MeteringError, NotFound  # noqa: E402
from metering.plans import PlanCatalog, load_default_plans  # noqa: E402

from tools.schema import APPWRITE_JSON, Schema, load_schema  # noqa: E402
from tools.schema_admin import (  # noqa: E402
    LEGACY_CLAIMS,
    AppwriteSchemaAdmin,
    CreateIndex,
    Step,
    backfill_defaults,
    legacy_claim,
    missing_steps,
)

PAGE_SIZE = 100
# Columns are built asynchronously; indexes can only be created once theirs are available.
POLL_SECONDS = 1.0
MAX_POLLS = 300


@dataclass(frozen=True)
class MigrateSettings:
    endpoint: str
    project_id: str
    api_key: Secret

    @classmethod
    def read(cls, env: EnvReader) -> MigrateSettings:
        settings = cls(
            endpoint=env.text("APPWRITE_ENDPOINT"),
            project_id=env.text("APPWRITE_PROJECT_ID"),
            api_key=env.secret("APPWRITE_API_KEY", required=True),
        )
        if settings.endpoint and not settings.endpoint.startswith(("http://", "https://")):
            env.problems.append("APPWRITE_ENDPOINT must start with http:// or https://")
        env.finish()
        return settings


class Migration:
    """The two operator commands, written against the schema admin port."""

    def __init__(
        self,
        admin: AppwriteSchemaAdmin,
        schema: Schema,
        out: TextIO,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.admin = admin
        self.schema = schema
        self.out = out
        self.sleep = sleep

    def migrate(self, *, dry_run: bool) -> list[Step]:
        steps = missing_steps(self.schema, self.admin.existing(self.schema))
        if not steps:
            self._say("schema is up to date")
            return steps
        prefix = "would " if dry_run else ""
        indexes_started = False
        for step in steps:
            if isinstance(step, CreateIndex) and not indexes_started and not dry_run:
                self._wait_for_columns(steps)
                indexes_started = True
            self._say(prefix + step.describe())
            if not dry_run:
                self.admin.apply(step)
        self._say(f"{len(steps)} change(s) {'planned' if dry_run else 'applied'}")
        return steps

    def _wait_for_columns(self, steps: Sequence[Step]) -> None:
        """Wait until every column an index of this run names is ``available``."""
        needed: dict[tuple[str, str], set[str]] = {}
        for step in steps:
            if isinstance(step, CreateIndex):
                key = (step.table.database_id, step.table.id)
                needed.setdefault(key, set()).update(
                    column for column in step.index.columns if not column.startswith("$")
                )
        for (database_id, table_id), columns in needed.items():
            self._wait_for_table(database_id, table_id, columns)

    def _wait_for_table(self, database_id: str, table_id: str, columns: set[str]) -> None:
        for _ in range(MAX_POLLS):
            statuses = self.admin.column_statuses(database_id, table_id)
            broken = sorted(key for key in columns if statuses.get(key) in ("failed", "stuck"))
            if broken:
                raise MeteringError(f"columns of {table_id} failed to build: {', '.join(broken)}")
            waiting = sorted(key for key in columns if statuses.get(key) != "available")
            if not waiting:
                return
            self._say(f"waiting for {table_id} columns: {', '.join(waiting)}")
            self.sleep(POLL_SECONDS)
        raise MeteringError(f"columns of {table_id} did not become available in time")

    def backfill(self, plans: PlanCatalog, *, dry_run: bool) -> tuple[int, int]:
        """Give rows that predate their columns the values they should have, then copy the
        legacy claims; returns (rows scanned, rows fixed) of ``subscriptions``."""
        table = self.schema.table(SUBSCRIPTIONS)
        database_id = table.database_id
        verb = "to fix" if dry_run else "fixed"

        def fix(row: dict[str, Any]) -> bool:
            patch = backfill_defaults(table, row, plans)
            if patch and not dry_run:
                self.admin.update_row(database_id, SUBSCRIPTIONS, str(row["$id"]), patch)
            return bool(patch)

        counts = self._scan(
            database_id,
            SUBSCRIPTIONS,
            fix,
            lambda scanned, fixed: f"{SUBSCRIPTIONS}: {scanned} rows scanned, {fixed} {verb}",
        )
        self.copy_legacy_claims(dry_run=dry_run)
        return counts

    def copy_legacy_claims(self, *, dry_run: bool) -> tuple[int, int]:
        """Copy every row of a ``stripe_events`` table (the claims' former name) into ``claims``
        under its own id, so that events handled before the rename stay handled; a row already
        copied is left as it is. Returns (rows scanned, rows copied)."""
        claims = self.schema.table(CLAIMS)
        verb = "to copy" if dry_run else "copied"

        def copy(row: dict[str, Any]) -> bool:
            data = legacy_claim(row, claims)
            return dry_run or self.admin.create_row(
                claims.database_id, CLAIMS, str(row["$id"]), data
            )

        return self._scan(
            claims.database_id,
            LEGACY_CLAIMS,
            copy,
            lambda scanned, copied: (
                f"{CLAIMS}: {scanned} {LEGACY_CLAIMS} rows scanned, {copied} {verb}"
            ),
            missing=f"{CLAIMS}: no {LEGACY_CLAIMS} table to copy from",
        )

    def _scan(
        self,
        database_id: str,
        table_id: str,
        visit: Callable[[dict[str, Any]], bool],
        progress: Callable[[int, int], str],
        missing: str | None = None,
    ) -> tuple[int, int]:
        """``visit`` every row of a table, a page at a time, redrawing one progress line after
        each page; returns (rows scanned, rows ``visit`` changed). With ``missing``, a table that
        is not there is not an error: that line is said instead."""
        scanned = changed = 0
        cursor: str | None = None
        while True:
            try:
                page = self.admin.rows(database_id, table_id, PAGE_SIZE, cursor)
            except NotFound:
                if missing is None:
                    raise
                self._say(missing)
                return scanned, changed
            for row in page.items:
                scanned += 1
                if visit(row):
                    changed += 1
            self.out.write(f"\r{progress(scanned, changed)}")
            self.out.flush()
            cursor = page.next_cursor
            if cursor is None:
                break
        self.out.write("\n")
        return scanned, changed

    def _say(self, line: str) -> None:
        self.out.write(line + "\n")
        self.out.flush()


def main(
    argv: Sequence[str] | None = None,
    environ: Mapping[str, str] | None = None,
    out: TextIO | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.migrate", description=__doc__)
    parser.add_argument("command", choices=("migrate", "backfill"))
    parser.add_argument("--dry-run", action="store_true", help="report, change nothing")
    parser.add_argument("--schema", type=Path, default=APPWRITE_JSON)
    args = parser.parse_args(argv)
    stream = out or sys.stderr
    try:
        settings = MigrateSettings.read(EnvReader(environ))
        schema = load_schema(args.schema)
        admin = AppwriteSchemaAdmin.connect(
            settings.endpoint, settings.project_id, settings.api_key.value
        )
        migration = Migration(admin, schema, stream, sleep)
        if args.command == "migrate":
            migration.migrate(dry_run=args.dry_run)
        else:
            migration.backfill(load_default_plans(), dry_run=args.dry_run)
    except MeteringError as exc:
        stream.write(f"error: {exc.message}\n")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
