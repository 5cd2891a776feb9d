"""One webhook delivery: verify the signature over the raw body, apply the event once."""

from __future__ import annotations

from metering.billing_service import BillingService
from metering.edge import Answer, LogLine, Request

from .bootstrap import WebhookApp


def handle_webhook(request: Request, log: LogLine, app: WebhookApp) -> Answer:
    payload = app.verifier.verify(request.body_binary, request.headers.get("stripe-signature"))
    log.add(eventId=payload.get("id"), type=payload.get("type"))
    store = app.stores(request.headers.get("x-appwrite-key"))
    event = app.events.read(payload)
    handled = BillingService(store, app.plans).handle(event, app.clock())
    return Answer({"received": True}, outcome=handled.outcome)
