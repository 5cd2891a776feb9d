"""Appwrite entrypoint of ``monthly-reset-cron``: the scheduled reset and reconciliation."""

from __future__ import annotations

from typing import Any

from metering.http import run_handler

from . import bootstrap
from .handler import handle_cron


def main(context: Any) -> Any:
    return run_handler(
        context, "monthly-reset-cron", lambda: handle_cron(context, bootstrap.current())
    )
