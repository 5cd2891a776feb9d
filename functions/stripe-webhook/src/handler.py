"""One webhook delivery: verify the signature over the raw body, apply the event once."""

from __future__ import annotations

from metering.billing_service import INVALID, BillingService
from metering.edge import Answer, LogLine, Request

from .bootstrap import WebhookApp


def _shown(value: object) -> str | None:
    """An event's id or type for the log line, however absurd the signed event's is."""
    if value is None or isinstance(value, str):
        return value[:255] if value else value
    return repr(value)[:64]


def handle_webhook(request: Request, log: LogLine, app: WebhookApp) -> Answer:
    payload = app.verifier.verify(request.body_binary, request.headers.get("stripe-signature"))
    log.add(eventId=_shown(payload.get("id")), type=_shown(payload.get("type")))
    store = app.stores(request.headers.get("x-appwrite-key"))
    event = app.events.read(payload)
    handled = BillingService(store, app.plans).handle(event, app.clock())
    if handled.outcome == INVALID:
        # Signed, so Stripe's: no retry makes it valid. 200 stops the retries; the operator
        # learns of it from this line.
        log.add(level="error")
    log.add(**handled.detail)
    return Answer({"received": True}, outcome=handled.outcome)
