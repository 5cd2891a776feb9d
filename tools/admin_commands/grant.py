"""Credit a user top-up tokens, once, with the reason recorded in the ledger."""

from __future__ import annotations

import argparse
from typing import Any

from metering.account import Account
from metering.ports import UsageStore

from tools.admin_commands.context import Context
from tools.admin_commands.manual import add_common_arguments, apply_once


def positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive whole number of tokens")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--tokens", required=True, type=positive, help="tokens to credit")
    add_common_arguments(parser)


def run(args: argparse.Namespace, context: Context) -> int:
    def change(store: UsageStore, account: Account) -> dict[str, Any]:
        after = store.add_topup(args.user, args.tokens)
        return {"topupBefore": account.topup_tokens, "topupAfter": after.topup_tokens}

    return apply_once(
        context,
        args,
        kind="grant",
        details={"tokens": args.tokens},
        describe=f"credit {args.tokens} top-up tokens",
        change=change,
    )
