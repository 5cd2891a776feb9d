"""Account operations every function shares, written against the ``UsageStore`` port."""

from __future__ import annotations

from datetime import datetime

from .account import Account, new_account
from .plans import PlanCatalog
from .ports import UsageStore


def get_or_create_account(
    store: UsageStore, plans: PlanCatalog, user_id: str, now: datetime
) -> Account:
    """The user's account, created on first touch with the default plan."""
    account = store.get_account(user_id)
    if account is not None:
        return account
    return store.create_account(new_account(user_id, plans.default, now))
