"""Appwrite entrypoint of ``monthly-reset-cron``: the scheduled reset and reconciliation."""

from __future__ import annotations

from typing import Any

from metering.edge import Context, serve

from . import bootstrap
from .handler import handle_cron


def main(context: Context) -> Any:
    # Any method: the trigger header, not the method, says whether the scheduler is calling.
    return serve(context, "cron", None, lambda r, log: handle_cron(r, log, bootstrap.current()))
