"""Wiring of the usage function, done once per cold start: configuration and identity."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime

from metering.adapters.appwrite_account import caller_verifier
from metering.adapters.store_factory import StoreOpener, store_opener
from metering.coldstart import ColdStart, utc_now
from metering.config import EnvReader, StoreSettings
from metering.plans import PlanCatalog, load_default_plans
from metering.ports import IdentityVerifier, UsageStore


@dataclass(frozen=True)
class UsageApp:
    stores: StoreOpener
    verifier: IdentityVerifier
    plans: PlanCatalog
    clock: Callable[[], datetime]


def build(
    environ: Mapping[str, str],
    *,
    clock: Callable[[], datetime] = utc_now,
    verifier: IdentityVerifier | None = None,
    store: UsageStore | None = None,
) -> UsageApp:
    env = EnvReader(environ)
    settings = StoreSettings.read(env)
    env.finish()
    return UsageApp(
        stores=store_opener(settings, store),
        verifier=caller_verifier(settings, verifier),
        plans=load_default_plans(),
        clock=clock,
    )


_cold_start: ColdStart[UsageApp] = ColdStart(build)
# The app of this cold start, built on first use from the process environment, or from what the
# local runtime or a test passes to `configure(environ, **overrides)`.
current = _cold_start.current
configure = _cold_start.configure
