"""Start a user's new period now (the counter to zero, as a renewal does), with the reason
recorded in the ledger."""

from __future__ import annotations

import argparse
from typing import Any

from metering.account import Account, plan_reset
from metering.errors import Conflict
from metering.ports import UsageStore

from tools.admin_commands.context import Context
from tools.admin_commands.manual import add_common_arguments, apply_once


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_common_arguments(parser)


def run(args: argparse.Namespace, context: Context) -> int:
    now = context.clock().replace(microsecond=0)

    def change(store: UsageStore, account: Account) -> dict[str, Any]:
        # The period keeps its end (the subscription's renewal still comes then).
        end = account.period_end if account.period_end and account.period_end > now else None
        reset = plan_reset(account, now, end, now)
        after = store.apply_reset(reset, account.period_start) if reset is not None else None
        if after is None:
            raise Conflict(f"the period of {args.user!r} moved meanwhile; run it again")
        # Only a reset moves tokens to the lifetime counter; what requests in flight hold and
        # charged stays on the counter, in the new period.
        return {
            "used": after.lifetime_tokens_used - account.lifetime_tokens_used,
            "carried": after.current_tokens_used,
            "topupConsumed": max(0, account.topup_tokens - after.topup_tokens),
        }

    return apply_once(
        context,
        args,
        kind="reset",
        details={},
        describe="reset the period's counter to zero",
        change=change,
    )
