"""Appwrite entrypoint of ``chat``: POST a conversation (a turn, with a requestId), read or stop
a turn at ``/turns/{requestId}``."""

from __future__ import annotations

from typing import Any

from metering.edge import Context, serve

from . import bootstrap
from .handler import handle


def main(context: Context) -> Any:
    return serve(
        context, "chat", ("GET", "POST"), lambda r, log: handle(r, log, bootstrap.current())
    )
