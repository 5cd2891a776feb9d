"""One usage execution: the verified caller's UsageStats, created on first touch."""

from __future__ import annotations

import json
from typing import Any

from metering.account import usage_stats
from metering.adapters.store_factory import open_store
from metering.errors import InvalidRequest, MeteringError
from metering.http import Json
from metering.identity import caller_id
from metering.service import get_or_create_account

from .bootstrap import UsageApp


def handle_usage(context: Any, app: UsageApp) -> tuple[int, Json]:
    request = context.req
    user_id: str | None = None
    try:
        if request.method != "GET":
            raise InvalidRequest("usage accepts GET requests only")
        # Query parameters are ignored on purpose: nobody can ask for another user's usage.
        user_id = caller_id(request.headers, app.verifier)
        store = open_store(app.store, request.headers.get("x-appwrite-key"))
        account = get_or_create_account(store, app.plans, user_id, app.clock())
    except MeteringError as error:
        _log(context, "usage.rejected", user_id, code=error.code, status=error.status)
        raise
    stats = usage_stats(account)
    _log(context, "usage.read", user_id, used=stats["tokens"]["used"], level=stats["level"])
    return 200, stats


def _log(context: Any, event: str, user_id: str | None, **fields: Any) -> None:
    line = {"event": event, "userId": user_id, **fields}
    context.log(json.dumps(line, separators=(",", ":")))
