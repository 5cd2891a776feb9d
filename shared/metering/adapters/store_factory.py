"""Open the configured ``UsageStore``, importing only the adapter that is used."""

from __future__ import annotations

import threading
from collections.abc import Callable

from ..config import StoreSettings
from ..errors import ConfigurationError
from ..ports import UsageStore

# The store of one execution, from the execution's own `x-appwrite-key` (None without one).
StoreOpener = Callable[[str | None], UsageStore]

_sqlite_stores: dict[str, UsageStore] = {}
_lock = threading.Lock()


def store_opener(settings: StoreSettings, store: UsageStore | None = None) -> StoreOpener:
    """How a function opens its store: ``store`` when one is given (the local runtime's embedded
    store, a test's fake), else the configured backend."""
    if store is not None:
        return lambda _execution_key: store
    return lambda execution_key: open_store(settings, execution_key)


def open_store(settings: StoreSettings, execution_key: str | None) -> UsageStore:
    """The store for one execution.

    Appwrite: authenticated with ``APPWRITE_API_KEY`` when configured, else with the per-execution
    dynamic key Appwrite injects (``x-appwrite-key``). SQLite: one shared instance per file,
    reused across warm executions.
    """
    if settings.backend == "sqlite":
        with _lock:
            store = _sqlite_stores.get(settings.sqlite_path)
            if store is None:
                from .sqlite_store import SQLiteStore

                store = SQLiteStore(settings.sqlite_path)
                _sqlite_stores[settings.sqlite_path] = store
            return store
    from .appwrite_store import AppwriteStore

    key = settings.appwrite_api_key.value or execution_key
    if not key:
        # Without a key the function cannot reach its database; this is a deployment fault.
        raise ConfigurationError("no APPWRITE_API_KEY and no x-appwrite-key header")
    return AppwriteStore.connect(settings, key)
