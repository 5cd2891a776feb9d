"""What every ``python -m tools.admin`` command runs with: its two streams, the environment (the
process's, completed by ``.env`` as for ``make dev``), the target (the local SQLite store, or an
Appwrite project when its variables are set), progress bars and the clock."""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO, TypeVar

from metering import settings as declared
from metering.config import EnvReader, Secret, StoreSettings
from metering.ports import UsageStore
from tqdm import tqdm

from localruntime import settings as runtime_settings

if TYPE_CHECKING:
    from tools.schema_admin import SchemaAdmin

T = TypeVar("T")

# The variables that point the commands at a real project; with none of them set, they work on
# the local runtime's SQLite store.
REMOTE_VARIABLES = (
    declared.APPWRITE_ENDPOINT.name,
    declared.APPWRITE_PROJECT_ID.name,
    declared.APPWRITE_API_KEY.name,
)


@dataclass(frozen=True)
class RemoteSettings:
    """Where a real project is: all three variables, every missing one named at once."""

    endpoint: str
    project_id: str
    api_key: Secret

    @classmethod
    def read(cls, env: EnvReader) -> RemoteSettings:
        settings = cls(
            endpoint=env.read(declared.APPWRITE_ENDPOINT),
            project_id=env.read(declared.APPWRITE_PROJECT_ID),
            api_key=env.read(declared.APPWRITE_API_KEY, required=True),
        )
        if settings.endpoint and not settings.endpoint.startswith(("http://", "https://")):
            env.problems.append("APPWRITE_ENDPOINT must start with http:// or https://")
        env.finish()
        return settings


class Context:
    """Built once per run by ``tools.admin.main``; commands read it, tests build their own."""

    def __init__(
        self,
        environ: Mapping[str, str],
        out: TextIO,
        err: TextIO,
        *,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        progress: bool | None = None,
    ) -> None:
        self.environ = environ
        self.out = out
        self.err = err
        self.sleep = sleep
        self.clock = clock
        # Bars are drawn for a person at a terminal; logs and pipes get the summary lines only.
        self.progress = err.isatty() if progress is None else progress

    # -- the target ------------------------------------------------------------------------------

    @functools.cached_property
    def remote(self) -> RemoteSettings | None:
        """The project's settings, or None for the local store (when none of the three variables
        is set); one of them alone is a ``ConfigurationError`` naming the others."""
        if not any(self.environ.get(name, "").strip() for name in REMOTE_VARIABLES):
            return None
        return RemoteSettings.read(EnvReader(self.environ))

    @property
    def data_dir(self) -> Path:
        """``make dev``'s data folder (``DATA_DIR``, relative to where the command runs)."""
        env = EnvReader(self.environ)
        folder = Path(env.read(runtime_settings.DATA_DIR))
        env.finish()
        return folder

    @property
    def sqlite_path(self) -> Path:
        return self.data_dir / "metering.sqlite3"

    @property
    def where(self) -> str:
        remote = self.remote
        if remote is None:
            return f"local SQLite store {self.sqlite_path}"
        return f"Appwrite project {remote.project_id} at {remote.endpoint}"

    def schema_admin(self) -> SchemaAdmin:
        """Schema and bulk-row access to the target (what ``migrate`` and ``backfill`` use)."""
        from tools.schema_admin import AppwriteSchemaAdmin, SQLiteSchemaAdmin

        remote = self.remote
        if remote is None:
            return SQLiteSchemaAdmin(self.sqlite_path)
        return AppwriteSchemaAdmin.connect(remote.endpoint, remote.project_id, remote.api_key.value)

    def store(self) -> UsageStore:
        """The target's ``UsageStore``, opened as the functions (remote) or ``make dev`` do."""
        remote = self.remote
        if remote is None:
            from localruntime.sqlite_store import SQLiteStore

            return SQLiteStore(str(self.sqlite_path))
        from metering.adapters.appwrite_store import AppwriteStore

        return AppwriteStore.connect(self.store_settings(remote), remote.api_key.value)

    def store_settings(self, remote: RemoteSettings) -> StoreSettings:
        """The functions' table ids (the same variables), on the project the commands target."""
        env = EnvReader(self.environ)
        settings = StoreSettings(
            appwrite_endpoint=remote.endpoint,
            appwrite_project_id=remote.project_id,
            appwrite_api_key=remote.api_key,
            database_id=env.read(declared.APPWRITE_DATABASE_ID),
            subscriptions_table=env.read(declared.APPWRITE_SUBSCRIPTIONS_TABLE),
            usage_events_table=env.read(declared.APPWRITE_USAGE_EVENTS_TABLE),
            claims_table=env.read(declared.APPWRITE_CLAIMS_TABLE),
            notices_table=env.read(declared.APPWRITE_NOTICES_TABLE),
            payments_table=env.read(declared.APPWRITE_PAYMENTS_TABLE),
        )
        env.finish()
        return settings

    # -- output ----------------------------------------------------------------------------------

    def say(self, line: str) -> None:
        """One line of the command's result (stdout)."""
        self.out.write(line + "\n")
        self.out.flush()

    def bar(self, *, desc: str, unit: str, total: int | None = None) -> tqdm[Any]:
        """A progress bar on stderr, shown only to a terminal (see ``progress``)."""
        return tqdm(
            total=total,
            desc=desc,
            unit=unit,
            file=self.err,
            disable=not self.progress,
            leave=False,
            dynamic_ncols=True,
        )

    def each(self, items: Iterable[T], *, desc: str, unit: str, total: int | None = None) -> Any:
        """``items`` with a bar advancing by one per item."""
        return tqdm(
            items,
            total=total,
            desc=desc,
            unit=unit,
            file=self.err,
            disable=not self.progress,
            leave=False,
            dynamic_ncols=True,
        )
