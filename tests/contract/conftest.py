"""The ``store`` fixture: every contract test runs once per ``UsageStore`` implementation."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from metering.ports import UsageStore

from localruntime.sqlite_store import SQLiteStore

STORES = ["sqlite", "appwrite"]


@pytest.fixture(params=STORES)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[UsageStore]:
    """A fresh, empty store of each kind."""
    if request.param == "sqlite":
        yield SQLiteStore(str(tmp_path / "data" / "metering.sqlite3"))
        return
    # Imported here so that the SQLite half runs without the Appwrite SDK loaded.
    from tests.support.appwrite_emulator import emulated_appwrite_store

    with emulated_appwrite_store() as appwrite_store:
        yield appwrite_store
