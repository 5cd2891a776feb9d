"""Appwrite entrypoint of ``billing``: the caller's plans and packs, Checkout, the portal."""

from __future__ import annotations

from typing import Any

from metering.edge import Context, serve

from . import bootstrap
from .handler import handle_billing


def main(context: Context) -> Any:
    app = bootstrap.current
    return serve(context, "billing", ("GET", "POST"), lambda r, log: handle_billing(r, log, app()))
