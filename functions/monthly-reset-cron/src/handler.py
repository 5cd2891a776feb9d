"""One scheduled run: refuse any other trigger, run the safety net, answer its summary."""

from __future__ import annotations

from metering.edge import Answer, LogLine, Request
from metering.errors import Forbidden
from metering.maintenance import Maintenance

from .bootstrap import CronApp


def handle_cron(request: Request, log: LogLine, app: CronApp) -> Answer:
    trigger = request.headers.get("x-appwrite-trigger", "")
    if trigger != "schedule":
        log.add(trigger=trigger)
        raise Forbidden("this function runs on its schedule only")
    store = app.stores(request.headers.get("x-appwrite-key"))
    maintenance = Maintenance(store, app.billing, app.maintenance, app.clock, app.plans)
    summary = maintenance.run().as_json()
    for drift in summary["reconciliation"]["drift"]:
        log.note("cron.drift", **drift)
    log.add(**summary)
    return Answer(summary, outcome="summary")
