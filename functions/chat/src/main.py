"""Appwrite entrypoint of ``chat``: POST a conversation, get Claude's reply and the usage."""

from __future__ import annotations

from typing import Any

from metering.http import run_handler

from . import bootstrap
from .handler import handle_chat


def main(context: Any) -> Any:
    return run_handler(context, "chat", lambda: handle_chat(context, bootstrap.current()))
