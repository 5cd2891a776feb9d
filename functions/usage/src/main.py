"""Appwrite entrypoint of ``usage``: GET the caller's token, storage and bank usage."""

from __future__ import annotations

from typing import Any

from metering.http import run_handler

from . import bootstrap
from .handler import handle_usage


def main(context: Any) -> Any:
    return run_handler(context, "usage", lambda: handle_usage(context, bootstrap.current()))
