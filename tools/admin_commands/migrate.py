"""Create what the target lacks of appwrite.json (database, tables, columns, indexes); never
drops anything. A second run changes nothing."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from metering.codec import CLAIMS, SUBSCRIPTIONS
from metering.errors import MeteringError, NotFound
from metering.plans import PlanCatalog

from tools.admin_commands.context import Context
from tools.schema import APPWRITE_JSON, Schema, load_schema
from tools.schema_admin import (
    LEGACY_CLAIMS,
    CreateIndex,
    SchemaAdmin,
    Step,
    backfill_defaults,
    legacy_claim,
    missing_read_permission,
    missing_steps,
)

PAGE_SIZE = 100
# Columns are built asynchronously; indexes can only be created once theirs are available.
POLL_SECONDS = 1.0
MAX_POLLS = 300


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_schema_arguments(parser, "list what is missing, create nothing")


def add_schema_arguments(parser: argparse.ArgumentParser, dry_run_help: str) -> None:
    parser.add_argument("--dry-run", action="store_true", help=dry_run_help)
    parser.add_argument(
        "--schema",
        type=Path,
        default=APPWRITE_JSON,
        metavar="FILE",
        help="the appwrite.json to apply (default: the repository's)",
    )


def run(args: argparse.Namespace, context: Context) -> int:
    migration = Migration(context.schema_admin(), load_schema(args.schema), context)
    migration.migrate(dry_run=args.dry_run)
    return 0


class Migration:
    """``migrate`` and ``backfill``, written against the schema admin port (Appwrite or the
    local SQLite file)."""

    def __init__(self, admin: SchemaAdmin, schema: Schema, context: Context) -> None:
        self.admin = admin
        self.schema = schema
        self.context = context

    def migrate(self, *, dry_run: bool) -> list[Step]:
        say = self.context.say
        say(f"target: {self.admin.where}")
        steps = missing_steps(self.schema, self.admin.existing(self.schema))
        if not steps:
            say("schema is up to date")
            return steps
        prefix = "would " if dry_run else ""
        indexes_started = False
        with self.context.bar(desc="migrate", unit="step", total=len(steps)) as bar:
            for step in steps:
                if isinstance(step, CreateIndex) and not indexes_started and not dry_run:
                    self._wait_for_columns(steps)
                    indexes_started = True
                say(prefix + step.describe())
                if not dry_run:
                    self.admin.apply(step)
                bar.update()
        say(f"{len(steps)} change(s) {'planned' if dry_run else 'applied'}")
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
            self.context.say(f"waiting for {table_id} columns: {', '.join(waiting)}")
            self.context.sleep(POLL_SECONDS)
        raise MeteringError(f"columns of {table_id} did not become available in time")

    def backfill(self, plans: PlanCatalog, *, dry_run: bool) -> tuple[int, int]:
        """Give rows that predate their columns the values they should have, then copy the
        legacy claims; returns (rows scanned, rows fixed) of ``subscriptions``."""
        self.context.say(f"target: {self.admin.where}")
        table = self.schema.table(SUBSCRIPTIONS)
        database_id = table.database_id
        verb = "to fix" if dry_run else "fixed"
        unreadable = 0

        def fix(row: dict[str, Any]) -> bool:
            nonlocal unreadable
            patch = backfill_defaults(table, row, plans)
            permissions = missing_read_permission(row)
            unreadable += permissions is not None
            if (patch or permissions is not None) and not dry_run:
                row_id = str(row["$id"])
                self.admin.update_row(database_id, SUBSCRIPTIONS, row_id, patch, permissions)
            return bool(patch) or permissions is not None

        def summary(scanned: int, fixed: int) -> str:
            line = f"{SUBSCRIPTIONS}: {scanned} rows scanned, {fixed} {verb}"
            if unreadable:
                line += f" ({unreadable} without their user's read permission)"
            return line

        counts = self._scan(database_id, SUBSCRIPTIONS, fix, summary)
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
        summary: Callable[[int, int], str],
        missing: str | None = None,
    ) -> tuple[int, int]:
        """``visit`` every row of a table, a page at a time, under a progress bar; says the
        ``summary`` line at the end and returns (rows scanned, rows ``visit`` changed). With
        ``missing``, a table that is not there is not an error: that line is said instead."""
        scanned = changed = 0
        cursor: str | None = None
        with self.context.bar(desc=table_id, unit="row") as bar:
            while True:
                try:
                    page = self.admin.rows(database_id, table_id, PAGE_SIZE, cursor)
                except NotFound:
                    if missing is None:
                        raise
                    self.context.say(missing)
                    return scanned, changed
                if page.total is not None and bar.total != page.total:
                    bar.total = page.total
                    # Drawn now, not at tqdm's next interval: a short run would end first.
                    bar.refresh()
                for row in page.items:
                    scanned += 1
                    if visit(row):
                        changed += 1
                    bar.update()
                bar.set_postfix_str(f"{changed} changed", refresh=False)
                cursor = page.next_cursor
                if cursor is None:
                    break
        self.context.say(summary(scanned, changed))
        return scanned, changed
