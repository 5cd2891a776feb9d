"""Appwrite entrypoint of ``stripe-webhook``: verified Stripe events -> plans, top-ups, resets."""

from __future__ import annotations

from typing import Any

from metering.edge import Context, serve

from . import bootstrap
from .handler import handle_webhook


def main(context: Context) -> Any:
    app = bootstrap.current
    return serve(context, "stripe.webhook", ("POST",), lambda r, log: handle_webhook(r, log, app()))
