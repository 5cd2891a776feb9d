"""`python -m tools.admin backfill` against the Appwrite emulation: subscriptions rows older than
``create_account``'s permission get their user's read (row security hides them otherwise)."""

from __future__ import annotations

import io

from metering.account import new_account
from metering.adapters.appwrite_store import AppwriteStore
from metering.plans import load_default_plans

from tests.support.appwrite_emulator import AppwriteEmulator, emulated_appwrite
from tests.support.builders import MARCH
from tools import admin
from tools.schema import load_schema
from tools.schema_admin import backfill_defaults

PLANS = load_default_plans()
SCHEMA = load_schema()


def run(emulator: AppwriteEmulator, *args: str) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of the command against the emulated project."""
    out, err = io.StringIO(), io.StringIO()
    environ = {
        "APPWRITE_ENDPOINT": emulator.endpoint,
        "APPWRITE_PROJECT_ID": emulator.project_id,
        "APPWRITE_API_KEY": emulator.api_key,
    }
    code = admin.main(list(args), environ=environ, out=out, err=err, sleep=lambda _: None)
    return code, out.getvalue(), err.getvalue()


def complete_row(user_id: str) -> dict[str, object]:
    """A subscriptions row with every value the backfill fills, so that only its permissions
    can be missing."""
    row: dict[str, object] = {"userId": user_id, "plan": "demo"}
    return {**row, **backfill_defaults(SCHEMA.table("subscriptions"), row, PLANS)}


def legacy_project(emulator: AppwriteEmulator, count: int) -> None:
    """``count`` rows from before the permission: none, or another role's only."""
    for number in range(count):
        values = complete_row(f"user-{number}")
        if number % 2:
            values["$permissions"] = ['read("team:support")']
        emulator.insert_row("subscriptions", values, row_id=f"row-{number}")


def read_permission(user_id: str) -> str:
    return f'read("user:{user_id}")'


def test_backfill_gives_each_older_row_its_users_read_permission_across_pages() -> None:
    """Every row of three pages gets read for its user, other grants kept; a row that
    create_account wrote already has it and is not written; a second run writes nothing."""
    with emulated_appwrite() as emulator:
        legacy_project(emulator, 230)
        store = AppwriteStore.connect(emulator.store_settings(), emulator.api_key)
        store.create_account(new_account("fresh", PLANS.default, MARCH))
        emulator.calls.clear()

        code, out, _ = run(emulator, "backfill")

        assert code == 0, out
        assert "231 rows scanned, 230 fixed (230 without their user's read permission)" in out
        rows = {row["userId"]: row["$permissions"] for row in emulator.rows("subscriptions")}
        for number in range(230):
            others = ['read("team:support")'] if number % 2 else []
            assert rows[f"user-{number}"] == [*others, read_permission(f"user-{number}")]
        assert rows["fresh"] == [read_permission("fresh")]
        written = {call.path.rsplit("/", 1)[-1] for call in emulator.writes()}
        assert "fresh" not in written
        assert len(written) == 230

        emulator.calls.clear()
        again = run(emulator, "backfill")
        assert again[0] == 0
        assert "231 rows scanned, 0 fixed" in again[1]
        assert emulator.writes() == []


def test_backfill_dry_run_counts_the_rows_without_their_permission_and_writes_nothing() -> None:
    """--dry-run says how many rows lack the permission and changes none."""
    with emulated_appwrite() as emulator:
        legacy_project(emulator, 5)
        emulator.calls.clear()

        code, out, _ = run(emulator, "backfill", "--dry-run")

        assert code == 0
        assert "5 rows scanned, 5 to fix (5 without their user's read permission)" in out
        assert emulator.writes() == []
        assert all(
            read_permission(row["userId"]) not in row.get("$permissions", [])
            for row in emulator.rows("subscriptions")
        )


def test_backfill_draws_its_progress_bar_when_asked() -> None:
    """--progress draws the paging bar on stderr, as the other long runs do."""
    with emulated_appwrite() as emulator:
        legacy_project(emulator, 120)

        code, out, err = run(emulator, "--progress", "backfill")

        assert code == 0
        assert "subscriptions:" in err
        assert "/120 " in err
        assert "120 rows scanned" in out
