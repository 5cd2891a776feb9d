"""What the ``python -m tools.admin`` tests share: the store each runs against (the local SQLite
file or the Appwrite emulation) and one run of the entry with that store and a fixed clock."""

from __future__ import annotations

import io
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from metering.ports import UsageStore

from localruntime.sqlite_store import SQLiteStore
from tools import admin
from tools.admin_commands.context import Context

STORES = ["sqlite", "appwrite"]


@contextmanager
def admin_store(kind: str, folder: Path) -> Iterator[UsageStore]:
    """The ``kind`` of store (one of ``STORES``), fresh, for the commands to work on."""
    if kind == "sqlite":
        yield SQLiteStore(str(folder / "metering.sqlite3"))
        return
    from tests.support.appwrite_emulator import emulated_appwrite_store

    with emulated_appwrite_store() as appwrite_store:
        yield appwrite_store


def run_admin(
    store: UsageStore,
    monkeypatch: pytest.MonkeyPatch,
    args: Sequence[str],
    *,
    now: datetime | None = None,
    environ: dict[str, str] | None = None,
) -> tuple[int, str, str]:
    """``python -m tools.admin ARGS`` on ``store`` (at ``now``, when given): exit code, stdout,
    stderr."""
    monkeypatch.setattr(Context, "store", lambda self: store)
    if now is not None:
        original = Context.__init__

        def at_now(self: Context, *args: Any, **kwargs: Any) -> None:
            original(self, *args, **kwargs)
            self.clock = lambda: now

        monkeypatch.setattr(Context, "__init__", at_now)
    out, err = io.StringIO(), io.StringIO()
    code = admin.main(
        list(args), environ={"DATA_DIR": "unused", **(environ or {})}, out=out, err=err
    )
    return code, out.getvalue(), err.getvalue()
