"""One usage execution: the verified caller's UsageStats, created on first touch, with the
usage alerts' notices of the current period."""

from __future__ import annotations

from metering.edge import Answer, LogLine, Request
from metering.identity import caller_id
from metering.service import get_or_create_account
from metering.wire import usage_answer

from .bootstrap import UsageApp


def handle_usage(request: Request, log: LogLine, app: UsageApp) -> Answer:
    # Query parameters are ignored on purpose: nobody can ask for another user's usage.
    user_id = caller_id(request.headers, app.verifier)
    log.add(userId=user_id)
    store = app.stores(request.headers.get("x-appwrite-key"))
    account = get_or_create_account(store, app.plans, user_id, app.clock())
    stats = usage_answer(account, store.list_notices(user_id, account.period_start))
    log.add(used=stats["tokens"]["used"], level=stats["level"])
    return Answer(dict(stats), outcome="read")
