"""Stripe event fixtures by name, retargeted and signed with stripe-python's own signer."""

from __future__ import annotations

import importlib
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from types import ModuleType
from typing import Any

import stripe
from metering.ports import UsageStore

from localruntime.context import RuntimeContext, RuntimeRequest
from localruntime.loader import bootstrap_of, load_function, package_name
from tests.support.builders import charge
from tools.stripe_events import FIXTURES_DIR, Event, encode, invoice_id_for, load_event, retarget

__all__ = [
    "CUS",
    "FIXTURES_DIR",
    "SECRET",
    "SUB",
    "Event",
    "FakeClock",
    "at",
    "encode",
    "fixture_names",
    "function_module",
    "hold",
    "invoice_id_for",
    "load_app",
    "load_event",
    "retarget",
    "sign",
    "unload_app",
    "webhook_context",
]

SECRET = "whsec_test_4eC39HqLyjWDarjtT1zdp7dc"
# The subscription and customer every fixture names until it is retargeted.
SUB = "sub_1S2kWqLkdIwHu7ixq8Zr3TtY"
CUS = "cus_SkQ4vX9nTq2LmB"


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


class FakeClock:
    """A clock that moves only when told to."""

    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now

    def advance(self, delta: timedelta) -> None:
        self.now += delta


def use(store: UsageStore, user_id: str, request_id: str, tokens: int, now: datetime) -> None:
    """``tokens`` used this period by a chat request of the user's that ended (no cap)."""
    charge(store, user_id, request_id, tokens, now)


def hold(store: UsageStore, user_id: str, request_id: str, tokens: int, now: datetime) -> None:
    """``tokens`` held on the user's counter by a chat request still in flight (no cap: the
    cap is the chat's concern, not these tests')."""
    charge(store, user_id, request_id, tokens, now, settled=False)


def load_app(function_id: str, environ: dict[str, str], **overrides: Any) -> Callable[..., Any]:
    """Load a function and give it a cold start with ``environ``; returns its ``main``."""
    module = load_function(function_id)
    bootstrap_of(function_id).configure(environ, **overrides)
    main: Callable[..., Any] = module.main
    return main


def unload_app(function_id: str) -> None:
    """Back to a cold start from the process environment."""
    bootstrap_of(function_id).configure()


def function_module(function_id: str, name: str) -> ModuleType:
    """A module of a loaded function, e.g. ``metering.adapters.store_factory``."""
    return importlib.import_module(f"{package_name(function_id)}.src.{name}")
