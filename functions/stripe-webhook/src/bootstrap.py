"""Wiring of the stripe-webhook function, done once per cold start."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime

from metering import settings as declared
from metering.adapters.store_factory import StoreOpener, store_opener
from metering.adapters.stripe_billing import StripeBilling, StripeWebhookVerifier
from metering.adapters.stripe_events import StripeEvents
from metering.coldstart import ColdStart, utc_now
from metering.config import EnvReader, StoreSettings
from metering.plans import PlanCatalog, load_default_plans
from metering.ports import BillingProvider, UsageStore


@dataclass(frozen=True)
class WebhookApp:
    stores: StoreOpener
    verifier: StripeWebhookVerifier
    # Without STRIPE_SECRET_KEY, events whose plan is only on the product fail.
    events: StripeEvents
    plans: PlanCatalog
    clock: Callable[[], datetime]


def build(
    environ: Mapping[str, str],
    *,
    clock: Callable[[], datetime] = utc_now,
    billing: BillingProvider | None = None,
    store: UsageStore | None = None,
) -> WebhookApp:
    """Raises ConfigurationError (answered 500) without STRIPE_WEBHOOK_SECRET, or with the
    public development secret outside the local runtime (which injects its ``store``)."""
    env = EnvReader(environ)
    secret = env.read(declared.STRIPE_WEBHOOK_SECRET)
    api_key = env.read(declared.STRIPE_SECRET_KEY)
    api_base = env.read(declared.STRIPE_API_BASE)
    max_tokens = env.read(declared.STRIPE_MAX_TOKENS)
    settings = StoreSettings.read(env)
    if secret.value == declared.DEV_WEBHOOK_SECRET and store is None:
        # Anyone can sign with it: only the embedded store of `make dev` may trust it.
        env.problems.append(
            "STRIPE_WEBHOOK_SECRET is the public development secret, accepted only by the local"
            " runtime: set the endpoint's own signing secret"
        )
    env.finish()
    if billing is None and api_key:
        billing = StripeBilling(api_key.value, api_base)
    plans = load_default_plans()
    return WebhookApp(
        stores=store_opener(settings, store),
        verifier=StripeWebhookVerifier(secret.value),
        events=StripeEvents(plans, billing, max_tokens),
        plans=plans,
        clock=clock,
    )


_cold_start: ColdStart[WebhookApp] = ColdStart(build)
# The app of this cold start, built on first use from the process environment, or from what the
# local runtime or a test passes to `configure(environ, **overrides)`.
current = _cold_start.current
configure = _cold_start.configure
