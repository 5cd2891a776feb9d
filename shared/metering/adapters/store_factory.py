"""Open the ``UsageStore`` of one execution, importing the adapter only when it is used."""

from __future__ import annotations

from collections.abc import Callable

from ..config import StoreSettings
from ..errors import ConfigurationError
from ..ports import UsageStore

# The store of one execution, from the execution's own `x-appwrite-key` (None without one).
StoreOpener = Callable[[str | None], UsageStore]


def store_opener(settings: StoreSettings, store: UsageStore | None = None) -> StoreOpener:
    """How a function opens its store: ``store`` when one is given (the local runtime's embedded
    store, a test's fake), else Appwrite TablesDB."""
    if store is not None:
        return lambda _execution_key: store
    return lambda execution_key: open_appwrite_store(settings, execution_key)


def open_appwrite_store(settings: StoreSettings, execution_key: str | None) -> UsageStore:
    """Authenticated with ``APPWRITE_API_KEY`` when configured, else with the per-execution
    dynamic key Appwrite injects (``x-appwrite-key``)."""
    from .appwrite_store import AppwriteStore

    key = settings.appwrite_api_key.value or execution_key
    if not key:
        # Without a key the function cannot reach its database; this is a deployment fault.
        raise ConfigurationError("no APPWRITE_API_KEY and no x-appwrite-key header")
    return AppwriteStore.connect(settings, key)
