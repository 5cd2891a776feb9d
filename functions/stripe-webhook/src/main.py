"""Appwrite entrypoint of ``stripe-webhook``: verified Stripe events -> plans, top-ups, resets."""

from __future__ import annotations

from typing import Any

from metering.http import run_handler

from . import bootstrap
from .handler import handle_webhook


def main(context: Any) -> Any:
    return run_handler(
        context, "stripe-webhook", lambda: handle_webhook(context, bootstrap.current())
    )
