"""Wiring of the stripe-webhook function, done once per cold start."""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from metering.adapters.stripe_billing import StripeBilling, StripeWebhookVerifier
from metering.billing import BillingProvider
from metering.coldstart import ColdStart, utc_now
from metering.config import EnvReader, StoreSettings
from metering.plans import PlanCatalog, load_default_plans


@dataclass(frozen=True)
class WebhookApp:
    store: StoreSettings
    verifier: StripeWebhookVerifier
    # None without STRIPE_SECRET_KEY: events whose plan is only on the product then fail.
    billing: BillingProvider | None
    plans: PlanCatalog
    clock: Callable[[], datetime]


def build(
    environ: Mapping[str, str],
    *,
    clock: Callable[[], datetime] = utc_now,
    billing: BillingProvider | None = None,
) -> WebhookApp:
    """Raises ConfigurationError (answered 500) without STRIPE_WEBHOOK_SECRET."""
    env = EnvReader(environ)
    secret = env.secret("STRIPE_WEBHOOK_SECRET", required=True)
    api_key = env.secret("STRIPE_SECRET_KEY")
    api_base = env.optional("STRIPE_API_BASE")
    store = StoreSettings.read(env)
    env.finish()
    if billing is None and api_key:
        billing = StripeBilling(api_key.value, api_base)
    return WebhookApp(
        store=store,
        verifier=StripeWebhookVerifier(secret.value),
        billing=billing,
        plans=load_default_plans(),
        clock=clock,
    )


_cold_start: ColdStart[WebhookApp] = ColdStart(functools.partial(build, os.environ))
# The app of this cold start, built from the process environment on first use.
current = _cold_start.current


def configure(environ: Mapping[str, str] | None = None, **overrides: Any) -> None:
    """Start cold again, building from ``environ`` (tests pass a dict; None: the process's)."""
    source = os.environ if environ is None else environ
    _cold_start.rebuild_with(functools.partial(build, source, **overrides))
