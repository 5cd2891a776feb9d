"""One scheduled run: refuse any other trigger, run the safety net, answer its summary."""

from __future__ import annotations

import json
from typing import Any

from metering.adapters.store_factory import open_store
from metering.errors import Forbidden
from metering.http import Json
from metering.maintenance import Maintenance

from .bootstrap import CronApp


def handle_cron(context: Any, app: CronApp) -> tuple[int, Json]:
    request = context.req
    trigger = request.headers.get("x-appwrite-trigger", "")
    if trigger != "schedule":
        _log(context, {"event": "cron.rejected", "trigger": trigger})
        raise Forbidden("this function runs on its schedule only")
    store = open_store(app.store, request.headers.get("x-appwrite-key"))
    maintenance = Maintenance(store, app.billing, app.maintenance, app.clock, app.plans)
    summary = maintenance.run().as_json()
    for drift in summary["reconciliation"]["drift"]:
        _log(context, {"event": "cron.drift", **drift})
    _log(context, {"event": "cron.summary", **summary})
    return 200, summary


def _log(context: Any, line: dict[str, Any]) -> None:
    context.log(json.dumps(line, separators=(",", ":")))
