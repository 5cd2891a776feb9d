"""Stripe, the only module that imports ``stripe``: webhook signatures and the few API reads.

Only plain dicts and domain types leave it; Stripe's exceptions become domain errors here.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import stripe

from ..errors import InvalidRequest, UpstreamError, UpstreamUnavailable
from ..ports import SubscriptionSnapshot
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
        addresses: Any = {"api": api_base.rstrip("/")} if api_base else None
        self._client = stripe.StripeClient(
            api_key,
            http_client=stripe.RequestsClient(timeout=timeout),
            base_addresses=addresses,
            max_network_retries=retries,
        )
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
