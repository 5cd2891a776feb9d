"""Appwrite entrypoint of ``chat``: POST a conversation, get Claude's reply and the usage."""

from __future__ import annotations

from typing import Any

from metering.edge import Context, serve

from . import bootstrap
from .handler import handle_chat


def main(context: Context) -> Any:
    return serve(
        context, "chat", ("POST",), lambda r, log: handle_chat(r, log, bootstrap.current())
    )
