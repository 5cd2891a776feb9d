"""Wiring of the billing function, done once per cold start: configuration, identity, Stripe."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from metering import settings as declared
from metering.adapters.appwrite_account import caller_verifier
from metering.adapters.store_factory import StoreOpener, store_opener
from metering.adapters.stripe_billing import StripeCheckout
from metering.checkout import ReturnUrls, return_urls
from metering.coldstart import ColdStart
from metering.config import EnvReader, StoreSettings
from metering.plans import PlanCatalog, load_default_plans
from metering.ports import CheckoutProvider, IdentityVerifier, UsageStore


@dataclass(frozen=True)
class BillingApp:
    stores: StoreOpener
    verifier: IdentityVerifier
    plans: PlanCatalog
    # Prices stay cached in it across warm executions.
    checkout: CheckoutProvider
    urls: ReturnUrls


def build(
    environ: Mapping[str, str],
    *,
    verifier: IdentityVerifier | None = None,
    store: UsageStore | None = None,
) -> BillingApp:
    """Raises ConfigurationError (answered 500) without STRIPE_SECRET_KEY or BILLING_RETURN_URL."""
    env = EnvReader(environ)
    api_key = env.read(declared.STRIPE_SECRET_KEY, required=True)
    api_base = env.read(declared.STRIPE_API_BASE)
    page = env.read(declared.BILLING_RETURN_URL)
    settings = StoreSettings.read(env)
    urls = _return_urls(env, page)
    env.finish()
    return BillingApp(
        stores=store_opener(settings, store),
        verifier=caller_verifier(settings, verifier),
        plans=load_default_plans(),
        checkout=StripeCheckout(api_key.value, api_base),
        urls=urls,
    )


def _return_urls(env: EnvReader, page: str) -> ReturnUrls:
    """Checked with the other settings: a URL that is no page URL is one more problem reported."""
    try:
        return return_urls(page)
    except ValueError as exc:
        if page:  # an unset one is reported as required already
            env.problems.append(f"{declared.BILLING_RETURN_URL.name}: {exc}")
        # Never used: finish() raises for the problem.
        return ReturnUrls(page, page, page)


_cold_start: ColdStart[BillingApp] = ColdStart(build)
# The app of this cold start, built on first use from the process environment, or from what the
# local runtime or a test passes to `configure(environ, **overrides)`.
current = _cold_start.current
configure = _cold_start.configure
