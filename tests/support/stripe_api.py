"""Stripe's API at the HTTP edge for the billing function: prices by lookup key, Checkout
Sessions and Customer Portal sessions, in Stripe's wire format (form-encoded requests, JSON
objects and errors), served through ``responses`` so the real stripe-python runs."""

from __future__ import annotations

import json
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import responses
from requests import PreparedRequest

API = "http://stripe.billing.test"
API_KEY = "sk_test_billing_4eC39HqLyjWDarjtT1zdp7dc"
CREATED = 1_764_547_200

Reply = tuple[int, dict[str, str], str]


def price_object(
    lookup_key: str,
    amount: int | None,
    *,
    recurring: bool,
    currency: str = "usd",
    price_id: str | None = None,
    metadata: dict[str, str] | None = None,
) -> dict[str, Any]:
    """A price as ``GET /v1/prices`` lists it (API 2026-10-28)."""
    return {
        "id": price_id or f"price_{lookup_key}_{secrets.token_hex(4)}",
        "object": "price",
        "active": True,
        "billing_scheme": "per_unit" if amount is not None else "tiered",
        "created": CREATED,
        "currency": currency,
        "custom_unit_amount": None,
        "livemode": False,
        "lookup_key": lookup_key,
        "metadata": metadata or {},
        "nickname": None,
        "product": f"prod_{lookup_key}",
        "recurring": (
            {
                "interval": "month",
                "interval_count": 1,
                "meter": None,
                "trial_period_days": None,
                "usage_type": "licensed",
            }
            if recurring
            else None
        ),
        "tax_behavior": "unspecified",
        "tiers_mode": None if amount is not None else "graduated",
        "transform_quantity": None,
        "type": "recurring" if recurring else "one_time",
        "unit_amount": amount,
        "unit_amount_decimal": None if amount is None else str(amount),
    }


def default_prices() -> dict[str, dict[str, Any]]:
    """The prices docs/stripe-setup.md describes, by lookup key."""
    return {
        "starter": price_object("starter", 900, recurring=True, metadata={"plan": "starter"}),
        "pro": price_object("pro", 2900, recurring=True, metadata={"plan": "pro"}),
        "business": price_object("business", 9900, recurring=True, metadata={"plan": "business"}),
        "topup_25k": price_object("topup_25k", 500, recurring=False),
        "topup_100k": price_object("topup_100k", 1500, recurring=False),
    }


def decode_form(body: object) -> dict[str, Any]:
    """A form body as stripe-python encodes it (``a[b][0][c]=v``) back into nested values."""
    text = body.decode() if isinstance(body, bytes) else body if isinstance(body, str) else ""
    root: dict[str, Any] = {}
    for key, value in parse_qsl(text, keep_blank_values=True):
        head, _, rest = key.partition("[")
        path = [head, *(part.rstrip("]") for part in rest.split("[") if rest)]
        node = root
        for part in path[:-1]:
            node = node.setdefault(part, {})
        node[path[-1]] = value
    decoded: dict[str, Any] = _lists(root)
    return decoded


def _lists(value: Any) -> Any:
    if not isinstance(value, dict):
        return value
    items = {key: _lists(inner) for key, inner in value.items()}
    if items and all(key.isdigit() for key in items):
        return [items[key] for key in sorted(items, key=int)]
    return items


@dataclass
class FakeStripe:
    """Holds prices; records every request as Stripe received it (the decoded form)."""

    base: str = API
    api_key: str = API_KEY
    prices: dict[str, dict[str, Any]] = field(default_factory=default_prices)
    # The lookup keys each price list asked for, in order.
    price_lists: list[list[str]] = field(default_factory=list)
    sessions: list[dict[str, Any]] = field(default_factory=list)
    portals: list[dict[str, Any]] = field(default_factory=list)
    # Set to a status to make every call fail with it (Stripe's error body for that status).
    failing_status: int | None = None
    # Customers Stripe knows; a session naming another one is refused as Stripe does.
    customers: set[str] = field(default_factory=set)

    @property
    def calls(self) -> int:
        return len(self.price_lists) + len(self.sessions) + len(self.portals)

    def register(self, mock: responses.RequestsMock) -> None:
        routes = (
            (responses.GET, "/v1/prices", self._list_prices),
            (responses.POST, "/v1/checkout/sessions", self._create_session),
            (responses.POST, "/v1/billing_portal/sessions", self._create_portal),
        )
        for method, path, callback in routes:
            mock.add_callback(
                method, f"{self.base}{path}", callback=callback, content_type="application/json"
            )

    def _refusal(self, request: PreparedRequest) -> Reply | None:
        if request.headers.get("Authorization") != f"Bearer {self.api_key}":
            return _error(401, "invalid_request_error", "Invalid API Key provided")
        if self.failing_status is not None:
            kind = "api_error" if self.failing_status >= 500 else "invalid_request_error"
            return _error(self.failing_status, kind, "fake failure")
        return None

    def _list_prices(self, request: PreparedRequest) -> Reply:
        query = decode_form(urlsplit(request.url or "").query)
        self.price_lists.append(list(query.get("lookup_keys", [])))
        refused = self._refusal(request)
        if refused is not None:
            return refused
        keys = query.get("lookup_keys", [])
        if len(keys) > 10:
            return _error(400, "invalid_request_error", "lookup_keys: at most 10", "lookup_keys")
        data = [
            price
            for key in keys
            if (price := self.prices.get(key)) is not None
            and (query.get("active") != "true" or price["active"])
        ]
        return _ok({"object": "list", "data": data, "has_more": False, "url": "/v1/prices"})

    def _create_session(self, request: PreparedRequest) -> Reply:
        return self._for_customer(request, self.sessions, "cs_test_", "checkout.session", _session)

    def _create_portal(self, request: PreparedRequest) -> Reply:
        return self._for_customer(request, self.portals, "bps_", "billing_portal.session", _portal)

    def _for_customer(
        self,
        request: PreparedRequest,
        calls: list[dict[str, Any]],
        prefix: str,
        kind: str,
        fields: Callable[[dict[str, Any], str], dict[str, Any]],
    ) -> Reply:
        """Log the call's form in ``calls``; refuse it, or answer a new ``kind`` object."""
        form = decode_form(request.body)
        calls.append(form)
        refused = self._refusal(request) or self._unknown_customer(form)
        if refused is not None:
            return refused
        object_id = f"{prefix}{secrets.token_hex(12)}"
        return _ok({"id": object_id, "object": kind, **fields(form, object_id)})

    def _unknown_customer(self, form: dict[str, Any]) -> Reply | None:
        customer = form.get("customer")
        if customer is None or customer in self.customers:
            return None
        return _error(400, "invalid_request_error", f"No such customer: '{customer}'", "customer")


def _session(form: dict[str, Any], session_id: str) -> dict[str, Any]:
    return {
        "cancel_url": form.get("cancel_url"),
        "client_reference_id": form.get("client_reference_id"),
        "created": CREATED,
        "customer": form.get("customer"),
        "customer_creation": form.get("customer_creation"),
        "expires_at": CREATED + 86_400,
        "livemode": False,
        "metadata": form.get("metadata", {}),
        "mode": form.get("mode"),
        "payment_status": "unpaid",
        "status": "open",
        "success_url": form.get("success_url"),
        "url": f"https://checkout.stripe.com/c/pay/{session_id}",
    }


def _portal(form: dict[str, Any], portal_id: str) -> dict[str, Any]:
    return {
        "configuration": "bpc_default",
        "created": CREATED,
        "customer": form.get("customer"),
        "flow": None,
        "livemode": False,
        "locale": None,
        "on_behalf_of": None,
        "return_url": form.get("return_url"),
        "url": f"https://billing.stripe.com/p/session/test_{portal_id}",
    }


def _ok(body: dict[str, Any]) -> Reply:
    return 200, {"request-id": f"req_{secrets.token_hex(7)}"}, json.dumps(body)


def _error(status: int, kind: str, message: str, param: str | None = None) -> Reply:
    error: dict[str, Any] = {"type": kind, "message": message}
    if param is not None:
        error.update(code="resource_missing", param=param)
    return status, {"request-id": f"req_{secrets.token_hex(7)}"}, json.dumps({"error": error})
