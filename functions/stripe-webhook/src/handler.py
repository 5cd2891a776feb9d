"""One webhook delivery: verify the signature over the raw body, apply the event once."""

from __future__ import annotations

from metering.billing_service import BillingService
from metering.edge import Answer, LogLine, Request

from .bootstrap import WebhookApp


def handle_webhook(request: Request, log: LogLine, app: WebhookApp) -> Answer:
    event = app.verifier.verify(request.body_binary, request.headers.get("stripe-signature"))
    log.add(eventId=event.get("id"), type=event.get("type"))
    store = app.stores(request.headers.get("x-appwrite-key"))
    handled = BillingService(store, app.plans, app.billing).handle(event, app.clock())
    return Answer({"received": True}, outcome=handled.outcome)
