"""Wiring of the monthly-reset-cron function, done once per cold start."""

from __future__ import annotations

import functools
import os
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from .metering.billing import BillingProvider
from .metering.config import EnvReader, StoreSettings
from .metering.maintenance import MaintenanceSettings


@dataclass(frozen=True)
class CronApp:
    store: StoreSettings
    maintenance: MaintenanceSettings
    # None without STRIPE_SECRET_KEY: missed renewals are then not looked up (the summary says so).
    billing: BillingProvider | None
    clock: Callable[[], datetime]


def utc_now() -> datetime:
    return datetime.now(UTC)


def build(
    environ: Mapping[str, str],
    *,
    clock: Callable[[], datetime] = utc_now,
    billing: BillingProvider | None = None,
) -> CronApp:
    env = EnvReader(environ)
    api_key = env.secret("STRIPE_SECRET_KEY")
    api_base = env.optional("STRIPE_API_BASE")
    maintenance = MaintenanceSettings.read(env)
    store = StoreSettings.read(env)
    env.finish()
    if billing is None and api_key:
        # Imported here: without a key the cron never loads the Stripe SDK.
        from .metering.adapters.stripe_billing import StripeBilling

        billing = StripeBilling(api_key.value, api_base)
    return CronApp(store=store, maintenance=maintenance, billing=billing, clock=clock)


_app: CronApp | None = None
_build: Callable[[], CronApp] = functools.partial(build, os.environ)
_lock = threading.Lock()


def current() -> CronApp:
    """The app of this cold start, built on first use (from the process environment)."""
    global _app  # noqa: PLW0603 -- module state is what persists across warm executions
    with _lock:
        if _app is None:
            _app = _build()
        return _app


def configure(environ: Mapping[str, str] | None = None, **overrides: Any) -> None:
    """Start cold again, building from ``environ`` (tests pass a dict; None: the process's)."""
    global _app, _build  # noqa: PLW0603
    source = os.environ if environ is None else environ
    with _lock:
        _app = None
        _build = functools.partial(build, source, **overrides)
