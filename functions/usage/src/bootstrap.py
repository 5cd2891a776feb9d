"""Wiring of the usage function, done once per cold start: configuration and identity."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime

from metering.adapters.appwrite_account import AppwriteAccountVerifier
from metering.coldstart import ColdStart, utc_now
from metering.config import EnvReader, StoreSettings
from metering.identity import CachedVerifier
from metering.plans import PlanCatalog, load_default_plans
from metering.ports import IdentityVerifier


@dataclass(frozen=True)
class UsageApp:
    store: StoreSettings
    verifier: IdentityVerifier
    plans: PlanCatalog
    clock: Callable[[], datetime]


def build(
    environ: Mapping[str, str],
    *,
    clock: Callable[[], datetime] = utc_now,
    verifier: IdentityVerifier | None = None,
) -> UsageApp:
    env = EnvReader(environ)
    store = StoreSettings.read(env)
    env.finish()
    identity = verifier or AppwriteAccountVerifier(
        store.appwrite_endpoint, store.appwrite_project_id
    )
    return UsageApp(
        store=store, verifier=CachedVerifier(identity), plans=load_default_plans(), clock=clock
    )


_cold_start: ColdStart[UsageApp] = ColdStart(lambda: build(os.environ))
# The app of this cold start, built from the process environment on first use.
current = _cold_start.current
# Tests build an app from a dict, and install it.
install = _cold_start.install
