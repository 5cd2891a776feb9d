"""Wiring of the monthly-reset-cron function, done once per cold start."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime

from metering import settings as declared
from metering.adapters.store_factory import StoreOpener, store_opener
from metering.coldstart import ColdStart, utc_now
from metering.config import EnvReader, StoreSettings
from metering.maintenance import MaintenanceSettings
from metering.plans import PlanCatalog, load_default_plans
from metering.ports import BillingProvider, UsageStore


@dataclass(frozen=True)
class CronApp:
    stores: StoreOpener
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
    store: UsageStore | None = None,
) -> CronApp:
    env = EnvReader(environ)
    api_key = env.read(declared.STRIPE_SECRET_KEY)
    api_base = env.read(declared.STRIPE_API_BASE)
    maintenance = MaintenanceSettings.read(env)
    settings = StoreSettings.read(env)
    env.finish()
    if billing is None and api_key:
        # Imported here: without a key the cron never loads the Stripe SDK.
        from metering.adapters.stripe_billing import StripeBilling

        billing = StripeBilling(api_key.value, api_base)
    return CronApp(
        stores=store_opener(settings, store),
        maintenance=maintenance,
        billing=billing,
        clock=clock,
        plans=load_default_plans(),
    )


_cold_start: ColdStart[CronApp] = ColdStart(build)
# The app of this cold start, built on first use from the process environment, or from what the
# local runtime or a test passes to `configure(environ, **overrides)`.
current = _cold_start.current
configure = _cold_start.configure
