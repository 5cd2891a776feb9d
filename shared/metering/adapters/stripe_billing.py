"""Stripe, the only module that imports ``stripe``: webhook signatures, the few API reads, and
the billing function's prices, Checkout Sessions and Customer Portal sessions.

Only plain dicts and domain types leave it; Stripe's exceptions become domain errors here.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import stripe

from ..errors import InvalidRequest, UpstreamError, UpstreamUnavailable
from ..ports import CheckoutMode, CheckoutRequest, PortalRequest, Price, SubscriptionSnapshot
from .stripe_events import parse_subscription

SIGNATURE_TOLERANCE_SECONDS = 300


class StripeWebhookVerifier:
    """Checks ``Stripe-Signature`` over the raw body and returns the snapshot event as a dict."""

    def __init__(self, secret: str, tolerance: int = SIGNATURE_TOLERANCE_SECONDS) -> None:
        self._secret = secret.strip()
        self._tolerance = tolerance

    def verify(self, body: bytes, signature: str | None) -> dict[str, Any]:
        try:
            stripe.WebhookSignature.verify_header(body, signature, self._secret, self._tolerance)
            event = json.loads(body)
        except stripe.SignatureVerificationError as exc:
            raise InvalidRequest(f"invalid Stripe signature: {_reason(exc)}") from None
        except ValueError:  # also UnicodeDecodeError: the body is not UTF-8 JSON
            raise InvalidRequest("body is not a JSON Stripe event") from None
        if not isinstance(event, dict):
            raise InvalidRequest("body is not a Stripe event")
        if event.get("object") == "v2.core.event":
            raise InvalidRequest("thin (v2) events are not supported: send snapshot events")
        data = event.get("data")
        if not isinstance(data, dict) or not isinstance(data.get("object"), dict):
            raise InvalidRequest("event has no data.object: send snapshot events")
        return event


def _reason(exc: stripe.SignatureVerificationError) -> str:
    message = str(getattr(exc, "user_message", None) or exc)
    # Stripe's messages never contain the secret; keep them short for the 4xx body.
    return message.split(". ", maxsplit=1)[0][:160]


class StripeBilling:
    """``BillingProvider`` over the Stripe API; product metadata cached for the process's life."""

    def __init__(
        self, api_key: str, api_base: str | None = None, timeout: float = 10.0, retries: int = 1
    ) -> None:
        self._client = stripe_client(api_key, api_base, timeout, retries)
        self._products: dict[str, Mapping[str, str]] = {}

    def get_subscription(self, subscription_id: str) -> SubscriptionSnapshot:
        try:
            subscription = self._client.v1.subscriptions.retrieve(subscription_id)
        except stripe.StripeError as exc:
            raise _translate(exc) from exc
        return parse_subscription(subscription.to_dict())

    def get_product_metadata(self, product_id: str) -> Mapping[str, str]:
        cached = self._products.get(product_id)
        if cached is not None:
            return cached
        try:
            product = self._client.v1.products.retrieve(product_id)
        except stripe.StripeError as exc:
            raise _translate(exc) from exc
        metadata = {str(k): str(v) for k, v in (product.to_dict().get("metadata") or {}).items()}
        self._products[product_id] = metadata
        return metadata


def _translate(exc: stripe.StripeError) -> UpstreamError | UpstreamUnavailable:
    status = exc.http_status or 0
    if isinstance(exc, stripe.APIConnectionError | stripe.RateLimitError) or status >= 500:
        return UpstreamUnavailable(f"Stripe unavailable: {type(exc).__name__}")
    return UpstreamError(f"Stripe refused the request ({status}): {type(exc).__name__}")


# -- selling: prices, Checkout Sessions, Customer Portal sessions (the billing function) ---------

# Stripe's own bound on ``lookup_keys`` in one price list request.
LOOKUP_KEYS_PER_REQUEST = 10
# A price changed in the Dashboard shows on the page within this long.
PRICE_TTL_SECONDS = 300.0


def stripe_client(
    api_key: str, api_base: str | None, timeout: float, retries: int
) -> stripe.StripeClient:
    """A client of the real API, or of ``api_base`` (the local Stripe, a test server)."""
    addresses: Any = {"api": api_base.rstrip("/")} if api_base else None
    return stripe.StripeClient(
        api_key,
        http_client=stripe.RequestsClient(timeout=timeout),
        base_addresses=addresses,
        max_network_retries=retries,
    )


class StripeCheckout:
    """``CheckoutProvider`` over the Stripe API. Each lookup key's price (or its absence) is kept
    for ``ttl_seconds`` per warm instance, so that showing the plans costs no Stripe call."""

    def __init__(
        self,
        api_key: str,
        api_base: str | None = None,
        *,
        # Within billing's 15 s: an attempt and its one retry, after the identity check.
        timeout: float = 5.0,
        retries: int = 1,
        ttl_seconds: float = PRICE_TTL_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._client = stripe_client(api_key, api_base, timeout, retries)
        self._ttl = ttl_seconds
        self._clock = clock
        self._prices: dict[str, tuple[Price | None, float]] = {}
        self._lock = threading.Lock()

    def find_prices(self, lookup_keys: Sequence[str]) -> Mapping[str, Price]:
        wanted = list(dict.fromkeys(lookup_keys))
        now = self._clock()
        with self._lock:
            known = {key: self._prices[key][0] for key in wanted if self._fresh(key, now)}
        missing = [key for key in wanted if key not in known]
        for start in range(0, len(missing), LOOKUP_KEYS_PER_REQUEST):
            batch = missing[start : start + LOOKUP_KEYS_PER_REQUEST]
            found = self._list_prices(batch)
            with self._lock:
                for key in batch:
                    self._prices[key] = (found.get(key), now + self._ttl)
                    known[key] = found.get(key)
        return {key: price for key in wanted if (price := known.get(key)) is not None}

    def create_checkout(self, request: CheckoutRequest) -> str:
        metadata = dict(request.metadata)
        # Built up by mode, so a plain dict: the SDK's TypedDict of it is what the ignore is for.
        params: dict[str, Any] = {
            "mode": request.mode.value,
            "line_items": [{"price": request.price_id, "quantity": 1}],
            "client_reference_id": request.user_id,
            "metadata": metadata,
            "success_url": request.success_url,
            "cancel_url": request.cancel_url,
        }
        if request.mode is CheckoutMode.SUBSCRIPTION:
            params["subscription_data"] = {"metadata": metadata}
        else:
            # On the payment too, so that its charge's refund or dispute names user and pack.
            params["payment_intent_data"] = {"metadata": metadata}
        if request.customer_id:
            params["customer"] = request.customer_id
        elif request.mode is CheckoutMode.PAYMENT:
            # A payment otherwise leaves only a guest customer, which no portal can open.
            params["customer_creation"] = "always"
        try:
            session = self._client.v1.checkout.sessions.create(params=params)  # type: ignore[arg-type]
        except stripe.StripeError as exc:
            raise _translate(exc) from exc
        return _url_of(session.to_dict(), "Checkout Session")

    def create_portal(self, request: PortalRequest) -> str:
        params: dict[str, Any] = {"customer": request.customer_id, "return_url": request.return_url}
        if request.change_subscription:
            params["flow_data"] = {
                "type": "subscription_update",
                "subscription_update": {"subscription": request.change_subscription},
                "after_completion": {
                    "type": "redirect",
                    "redirect": {"return_url": request.return_url},
                },
            }
        try:
            session = self._client.v1.billing_portal.sessions.create(params=params)  # type: ignore[arg-type]
        except stripe.StripeError as exc:
            raise _translate(exc) from exc
        return _url_of(session.to_dict(), "Customer Portal session")

    def _fresh(self, key: str, now: float) -> bool:
        entry = self._prices.get(key)
        return entry is not None and entry[1] > now

    def _list_prices(self, lookup_keys: list[str]) -> dict[str, Price]:
        try:
            listed = self._client.v1.prices.list(
                params={"lookup_keys": lookup_keys, "active": True, "limit": 100}
            )
        except stripe.StripeError as exc:
            raise _translate(exc) from exc
        found: dict[str, Price] = {}
        for item in listed.to_dict().get("data") or ():
            price = parse_price(item)
            if price is not None and price.lookup_key in lookup_keys:
                found[price.lookup_key] = price
        return found


def parse_price(document: object) -> Price | None:
    """A Stripe price object in domain words; None for anything that is not one."""
    if not isinstance(document, Mapping):
        return None
    price_id, key = document.get("id"), document.get("lookup_key")
    currency, amount = document.get("currency"), document.get("unit_amount")
    if not (isinstance(price_id, str) and isinstance(key, str) and isinstance(currency, str)):
        return None
    if isinstance(amount, bool) or not isinstance(amount, int) or amount < 0:
        amount = None
    return Price(
        id=price_id,
        lookup_key=key,
        unit_amount=amount,
        currency=currency,
        recurring=document.get("type") == "recurring",
    )


def _url_of(session: Mapping[str, Any], what: str) -> str:
    url = session.get("url")
    if not isinstance(url, str) or not url.startswith(("https://", "http://")):
        raise UpstreamError(f"Stripe answered a {what} without a URL")
    return url
