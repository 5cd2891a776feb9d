"""Wiring of the monthly-reset-cron function, done once per cold start."""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from metering.billing import BillingProvider
from metering.coldstart import ColdStart, utc_now
from metering.config import EnvReader, StoreSettings
from metering.maintenance import MaintenanceSettings
from metering.plans import PlanCatalog, load_default_plans


@dataclass(frozen=True)
class CronApp:
    store: StoreSettings
    maintenance: MaintenanceSettings
    # None without STRIPE_SECRET_KEY: missed renewals are then not looked up (the summary says so).
    billing: BillingProvider | None
    clock: Callable[[], datetime]
    # The default plan a subscription Stripe reports ended returns to.
    plans: PlanCatalog


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
        from metering.adapters.stripe_billing import StripeBilling

        billing = StripeBilling(api_key.value, api_base)
    return CronApp(
        store=store,
        maintenance=maintenance,
        billing=billing,
        clock=clock,
        plans=load_default_plans(),
    )


_cold_start: ColdStart[CronApp] = ColdStart(functools.partial(build, os.environ))
# The app of this cold start, built from the process environment on first use.
current = _cold_start.current


def configure(environ: Mapping[str, str] | None = None, **overrides: Any) -> None:
    """Start cold again, building from ``environ`` (tests pass a dict; None: the process's)."""
    source = os.environ if environ is None else environ
    _cold_start.rebuild_with(functools.partial(build, source, **overrides))
