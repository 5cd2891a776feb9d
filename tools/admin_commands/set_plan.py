"""Put a user on a plan of the catalog (its monthly tokens too), with the reason recorded in the
ledger."""

from __future__ import annotations

import argparse
from typing import Any

from metering.account import Account
from metering.errors import InvalidRequest
from metering.plans import load_default_plans
from metering.ports import UsageStore

from tools.admin_commands.context import Context
from tools.admin_commands.manual import add_common_arguments, apply_once


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--plan", required=True, help=f"one of {', '.join(load_default_plans().plans)}"
    )
    add_common_arguments(parser)


def run(args: argparse.Namespace, context: Context) -> int:
    plan = load_default_plans().find(args.plan)
    if plan is None:
        names = ", ".join(load_default_plans().plans)
        raise InvalidRequest(f"no plan {args.plan!r} (the catalog has {names})")

    def change(store: UsageStore, account: Account) -> dict[str, Any]:
        store.update_account(
            args.user, {"plan": plan.id, "max_tokens_per_month": plan.tokens_per_month}
        )
        return {
            "planBefore": account.plan,
            "maxTokensPerMonthBefore": account.max_tokens_per_month,
            "maxTokensPerMonth": plan.tokens_per_month,
        }

    return apply_once(
        context,
        args,
        kind="set-plan",
        details={"plan": plan.id},
        describe=f"set plan {plan.id} ({plan.tokens_per_month} tokens a month)",
        change=change,
    )
