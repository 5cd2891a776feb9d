"""Appwrite entrypoint of ``usage``: GET the caller's token, storage and bank usage."""

from __future__ import annotations

from typing import Any

from metering.edge import Context, serve

from . import bootstrap
from .handler import handle_usage


def main(context: Context) -> Any:
    return serve(
        context, "usage", ("GET",), lambda r, log: handle_usage(r, log, bootstrap.current())
    )
