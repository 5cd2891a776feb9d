"""One webhook delivery: verify the signature over the raw body, apply the event once."""

from __future__ import annotations

import json
from typing import Any

from metering.adapters.store_factory import open_store
from metering.billing_service import BillingService
from metering.errors import InvalidRequest, MeteringError
from metering.http import Json

from .bootstrap import WebhookApp


def handle_webhook(context: Any, app: WebhookApp) -> tuple[int, Json]:
    request = context.req
    event_id = event_type = None
    try:
        if request.method != "POST":
            raise InvalidRequest("the Stripe webhook accepts POST requests only")
        event = app.verifier.verify(request.body_binary, request.headers.get("stripe-signature"))
        event_id, event_type = event.get("id"), event.get("type")
        store = open_store(app.store, request.headers.get("x-appwrite-key"))
        service = BillingService(store, app.plans, app.billing)
        handled = service.handle(event, app.clock())
    except MeteringError as error:
        outcome = "rejected" if error.status < 500 else "failed"
        _log(context, outcome, event_id, event_type, code=error.code, reason=error.message)
        raise
    _log(context, handled.outcome, handled.event_id, handled.type)
    return 200, {"received": True}


def _log(context: Any, outcome: str, event_id: Any, event_type: Any, **fields: Any) -> None:
    line = {"event": "stripe.webhook", "eventId": event_id, "type": event_type, "outcome": outcome}
    context.log(json.dumps({**line, **fields}, separators=(",", ":")))
