"""Stripe event fixtures by name, retargeted and signed with stripe-python's own signer."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

import stripe

from localruntime.context import RuntimeContext, RuntimeRequest
from tools.stripe_events import FIXTURES_DIR, Event, encode, load_event, retarget

__all__ = [
    "FIXTURES_DIR",
    "SECRET",
    "Event",
    "at",
    "encode",
    "fixture_names",
    "load_event",
    "retarget",
    "sign",
    "webhook_context",
]

SECRET = "whsec_test_4eC39HqLyjWDarjtT1zdp7dc"


def fixture_names() -> list[str]:
    return sorted(path.stem for path in FIXTURES_DIR.glob("*.json"))


def at(year: int, month: int, day: int = 1, hour: int = 0) -> datetime:
    return datetime(year, month, day, hour, tzinfo=UTC)


def sign(payload: bytes, secret: str = SECRET, timestamp: int | None = None) -> str:
    stamp = int(time.time()) if timestamp is None else timestamp
    header: str = stripe.WebhookSignature.generate_signature_header(
        payload.decode("utf-8"), secret, stamp
    )
    return header


def webhook_context(
    event: Event | bytes,
    *,
    secret: str = SECRET,
    signature: str | None = None,
    method: str = "POST",
    headers: dict[str, str] | None = None,
) -> RuntimeContext:
    """A function-domain request carrying ``event`` (signed unless ``signature`` is given)."""
    body = event if isinstance(event, bytes) else encode(event)
    all_headers: dict[str, Any] = {
        "content-type": "application/json",
        "x-appwrite-trigger": "http",
        "stripe-signature": signature if signature is not None else sign(body, secret),
    }
    all_headers.update(headers or {})
    return RuntimeContext(RuntimeRequest(method=method, path="/", headers=all_headers, body=body))
