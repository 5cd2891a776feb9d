"""Demo accounts, one per plan, created on first start and left alone afterwards."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from metering.plans import PlanCatalog
from metering.ports import UsageStore
from metering.service import get_or_create_account

from .auth import AuthStore


@dataclass(frozen=True)
class DemoAccount:
    user_id: str
    email: str
    plan: str
    tokens_per_month: int


def demo_accounts(plans: PlanCatalog) -> list[DemoAccount]:
    return [
        DemoAccount(f"local-{plan.id}", f"{plan.id}@local.test", plan.id, plan.tokens_per_month)
        for plan in plans.plans.values()
    ]


def seed(
    auth: AuthStore, store: UsageStore, plans: PlanCatalog, password: str, now: datetime
) -> list[DemoAccount]:
    """Create whatever of the demo users and their subscription rows is missing.

    An existing row keeps its plan and counters: a plan changed since (by a sample Stripe event)
    survives a restart.
    """
    accounts = demo_accounts(plans)
    for demo in accounts:
        if auth.user_by_email(demo.email) is None and auth.user(demo.user_id) is None:
            name = f"{plans.get(demo.plan).name} demo"
            auth.create_user(demo.user_id, demo.email, password, name)
        if store.get_account(demo.user_id) is not None:
            continue
        get_or_create_account(store, plans, demo.user_id, now)
        plan = plans.get(demo.plan)
        store.update_account(
            demo.user_id,
            {
                "plan": plan.id,
                "max_tokens_per_month": plan.tokens_per_month,
                "storage_bytes_limit": plan.storage_bytes,
                "bank_connections_limit": plan.bank_connections,
            },
        )
    return accounts
