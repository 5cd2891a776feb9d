"""Stripe's ``GET /v1/webhook_endpoints`` at the HTTP edge, in Stripe's wire format (a list
object, cursor paging with ``starting_after`` and ``has_more``, Bearer auth, error bodies),
served through ``responses`` so the real stripe-python runs."""

from __future__ import annotations

import json
import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import responses
from requests import PreparedRequest

from tests.support.stripe_api import API, API_KEY, CREATED, decode_form

Reply = tuple[int, dict[str, str], str]


def endpoint_object(
    url: str, events: Sequence[str], *, status: str = "enabled", endpoint_id: str | None = None
) -> dict[str, Any]:
    """A webhook endpoint as Stripe lists it (its secret is only shown when it is created)."""
    return {
        "id": endpoint_id or f"we_{secrets.token_hex(12)}",
        "object": "webhook_endpoint",
        "api_version": None,
        "application": None,
        "created": CREATED,
        "description": None,
        "enabled_events": list(events),
        "livemode": False,
        "metadata": {},
        "status": status,
        "url": url,
    }


@dataclass
class FakeWebhookEndpoints:
    base: str = API
    api_key: str = API_KEY
    endpoints: list[dict[str, Any]] = field(default_factory=list)
    # The `limit` and `starting_after` of each list call, in order.
    pages: list[dict[str, str]] = field(default_factory=list)

    def register(self, mock: responses.RequestsMock) -> None:
        mock.add_callback(
            responses.GET,
            re.compile(re.escape(f"{self.base}/v1/webhook_endpoints") + r"(\?.*)?$"),
            callback=self._list,
            content_type="application/json",
        )

    def _list(self, request: PreparedRequest) -> Reply:
        query = decode_form(urlsplit(request.url or "").query)
        self.pages.append(query)
        if request.headers.get("Authorization") != f"Bearer {self.api_key}":
            error = {"type": "invalid_request_error", "message": "Invalid API Key provided"}
            return 401, {}, json.dumps({"error": error})
        limit = int(query.get("limit", 10))
        after = query.get("starting_after")
        ids = [endpoint["id"] for endpoint in self.endpoints]
        start = ids.index(after) + 1 if after in ids else 0
        page = self.endpoints[start : start + limit]
        body = {
            "object": "list",
            "data": page,
            "has_more": start + limit < len(self.endpoints),
            "url": "/v1/webhook_endpoints",
        }
        return 200, {"request-id": f"req_{secrets.token_hex(7)}"}, json.dumps(body)
