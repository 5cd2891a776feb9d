"""Billing events in domain words: the commands an event asks for and the pure decisions on them.

No I/O and no vendor format: ``adapters/stripe_events.py`` turns Stripe's events into commands.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime

from .account import Account, AccountPatch, ResetPlan, plan_reset
from .errors import PlanError
from .plans import PlanCatalog
from .ports import SubscriptionItem, SubscriptionSnapshot
from .timeutil import next_month_start

# Statuses in which a subscription grants its plan; ended ones return the user to the default plan.
GRANTING_STATUSES = frozenset({"active", "trialing", "past_due"})
ENDED_STATUSES = frozenset({"canceled", "incomplete_expired"})
# Statuses in which the safety net may reset a period Stripe has moved (never unpaid periods).
RESETTABLE_STATUSES = frozenset({"active", "trialing"})
PLAN_KEYS = ("tokens_per_month", "plan", "addon_tokens")
# Appwrite's user id rule: a checkout naming anything else can never belong to a user.
USER_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,35}")


# -- commands ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LinkCustomer:
    user_id: str
    customer_id: str | None
    subscription_id: str | None


@dataclass(frozen=True, slots=True)
class CreditTopup:
    user_id: str
    customer_id: str | None
    tokens: int
    session_id: str


@dataclass(frozen=True, slots=True)
class SetSubscription:
    subscription_id: str
    customer_id: str | None
    plan: str
    tokens_per_month: int
    addon_tokens: int
    status: str
    period_start: datetime | None
    period_end: datetime | None
    created: int


@dataclass(frozen=True, slots=True)
class CancelSubscription:
    subscription_id: str
    customer_id: str | None
    created: int
    # When the subscription ended, which closes its paid period; None when unknown.
    at: datetime | None = None


@dataclass(frozen=True, slots=True)
class ResetPeriod:
    subscription_id: str
    customer_id: str | None
    period_start: datetime
    period_end: datetime | None


@dataclass(frozen=True, slots=True)
class RecordPaymentFailed:
    subscription_id: str
    customer_id: str | None
    created: int


@dataclass(frozen=True, slots=True)
class Ignore:
    type: str
    reason: str = "unhandled type"


Command = (
    LinkCustomer
    | CreditTopup
    | SetSubscription
    | CancelSubscription
    | ResetPeriod
    | RecordPaymentFailed
    | Ignore
)


@dataclass(frozen=True, slots=True)
class EventHeader:
    """What claiming an event needs: its id, its type, when it was sent, what it is about."""

    id: str
    type: str
    created: int
    object_id: str


@dataclass(frozen=True, slots=True)
class BillingEvent:
    """A verified event: its header, and its command, read only once the event is claimed
    (reading may ask the billing API, which a duplicate delivery must not)."""

    header: EventHeader
    read_command: Callable[[], Command]


# -- plans from metadata -----------------------------------------------------------------------


def has_plan_keys(metadata: Mapping[str, str]) -> bool:
    return any(key in metadata for key in PLAN_KEYS)


def metadata_count(value: str, key: str) -> int:
    """A token count an operator wrote in metadata; anything else is a ``PlanError``."""
    try:
        number = int(value.strip())
    except ValueError:
        number = -1
    if number < 0:
        raise PlanError(f"metadata {key} must be a non-negative integer, got {value!r}")
    return number


def _names_plan(item: SubscriptionItem, plans: PlanCatalog) -> bool:
    return has_plan_keys(item.price_metadata) or plans.find(item.lookup_key) is not None


def products_to_fetch(snapshot: SubscriptionSnapshot, plans: PlanCatalog) -> frozenset[str]:
    """Products whose metadata must come from the billing API: their prices say nothing."""
    return frozenset(
        item.product_id
        for item in snapshot.items
        if item.product_id and item.product_metadata is None and not _names_plan(item, plans)
    )


@dataclass(frozen=True, slots=True)
class Entitlement:
    plan: str
    tokens_per_month: int
    addon_tokens: int


def entitlement(
    snapshot: SubscriptionSnapshot,
    plans: PlanCatalog,
    products: Mapping[str, Mapping[str, str]],
) -> Entitlement:
    """Plan and add-on tokens from the items' price metadata, falling back to the product's."""
    plan: Entitlement | None = None
    addon = 0
    for item in snapshot.items:
        metadata = {**(item.product_metadata or products.get(item.product_id or "", {}))}
        metadata.update(item.price_metadata)
        if "addon_tokens" in metadata:
            addon += metadata_count(metadata["addon_tokens"], "addon_tokens") * item.quantity
            continue
        if plan is not None:
            continue
        name = metadata.get("plan") or item.lookup_key
        named = plans.find(name)
        if "tokens_per_month" in metadata:
            tokens = metadata_count(metadata["tokens_per_month"], "tokens_per_month")
            plan = Entitlement((named.id if named else name or item.price_id).lower(), tokens, 0)
        elif named is not None:
            plan = Entitlement(named.id, named.tokens_per_month, 0)
        elif "plan" in metadata:
            raise PlanError(f"price {item.price_id} names unknown plan {metadata['plan']!r}")
    if plan is None:
        raise PlanError(f"subscription {snapshot.id} has no item whose metadata names a plan")
    return Entitlement(plan.plan, plan.tokens_per_month, addon)


# -- decisions: current state + command -> change ----------------------------------------------


def _may_follow(account: Account, subscription_id: str) -> bool:
    """Events of another subscription than the account's current one change nothing."""
    return account.stripe_subscription_id in (None, "", subscription_id)


def decide_link(account: Account, command: LinkCustomer, created: int) -> AccountPatch:
    patch: AccountPatch = {}
    if command.customer_id and command.customer_id != account.stripe_customer_id:
        patch["stripe_customer_id"] = command.customer_id
    # A subscription event newer than this checkout (e.g. its deletion) already decided.
    if (
        command.subscription_id
        and not account.stripe_subscription_id
        and created >= account.stripe_updated_at
    ):
        patch["stripe_subscription_id"] = command.subscription_id
    return patch


def decide_subscription(account: Account, command: SetSubscription) -> AccountPatch:
    """Set state from the subscription object; an update older than the one applied loses."""
    if command.created < account.stripe_updated_at:
        return {}
    # A second subscription that grants nothing (e.g. its first payment failed) must not take
    # the account away from the one it follows: its later expiry would then end the paid plan.
    if command.status not in GRANTING_STATUSES and not _may_follow(
        account, command.subscription_id
    ):
        return {}
    patch: AccountPatch = {
        "status": command.status,
        "stripe_subscription_id": command.subscription_id,
        "stripe_updated_at": command.created,
    }
    if command.customer_id:
        patch["stripe_customer_id"] = command.customer_id
    if command.status in GRANTING_STATUSES:
        patch["plan"] = command.plan
        patch["max_tokens_per_month"] = command.tokens_per_month
        patch["addon_tokens"] = command.addon_tokens
    return patch


def decide_cancel(
    account: Account, command: CancelSubscription, plans: PlanCatalog
) -> AccountPatch:
    """Back to the default plan: add-ons cleared, the remaining top-up kept. Applied after
    ``close_paid_period``, which ends the paid period (its usage moves to lifetime; top-up is
    consumed only for usage beyond the paid allowance) and starts a Demo period at the
    cancellation."""
    if command.created < account.stripe_updated_at or not _may_follow(
        account, command.subscription_id
    ):
        return {}
    default = plans.default
    return {
        "plan": default.id,
        "status": "canceled",
        "max_tokens_per_month": default.tokens_per_month,
        "addon_tokens": 0,
        "stripe_subscription_id": None,
        "stripe_updated_at": command.created,
    }


def close_paid_period(
    account: Account, command: CancelSubscription, now: datetime
) -> ResetPlan | None:
    """The reset a cancellation starts with, computed with the paid allowance still on the
    account: a Demo period from the end to the next calendar month, then the usual Demo rollover.
    None when the end is unknown or not after the period start (forward only, so every
    cancellation of one subscription, dated by the same end, closes its period once)."""
    if command.at is None:
        return None
    return plan_reset(account, command.at, next_month_start(command.at), now)


def decide_payment_failed(account: Account, command: RecordPaymentFailed) -> AccountPatch:
    # Does not claim `stripe_updated_at`: it carries no plan, so later plan updates still apply.
    if command.created < account.stripe_updated_at or not _may_follow(
        account, command.subscription_id
    ):
        return {}
    return {"status": "past_due"} if account.status != "past_due" else {}


def decide_reset(account: Account, command: ResetPeriod, now: datetime) -> ResetPlan | None:
    """The forward-only reset to the invoice's period, or None."""
    if not _may_follow(account, command.subscription_id):
        return None
    return plan_reset(account, command.period_start, command.period_end, now)


def decide_recovered_reset(
    account: Account, snapshot: SubscriptionSnapshot, now: datetime
) -> ResetPlan | None:
    """The safety net: reset to Stripe's current period if it moved and is paid for."""
    if snapshot.status not in RESETTABLE_STATUSES or snapshot.period_start is None:
        return None
    if not _may_follow(account, snapshot.id):
        return None
    return plan_reset(account, snapshot.period_start, snapshot.period_end, now)


def recovered_cancel(account: Account, snapshot: SubscriptionSnapshot) -> CancelSubscription | None:
    """The safety net: the cancellation a missed ``customer.subscription.deleted`` would have
    asked for, dated when the subscription ended (as that event is); None while it runs."""
    if snapshot.status not in ENDED_STATUSES:
        return None
    ended = snapshot.ended_at
    # Without an end date it claims nothing newer than what the account already applied, and
    # leaves the period to the calendar-month rollover.
    created = int(ended.timestamp()) if ended is not None else account.stripe_updated_at
    return CancelSubscription(snapshot.id, snapshot.customer_id, created, ended)
