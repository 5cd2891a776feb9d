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
from .ports import Charges, Payment, PaymentKind, SubscriptionItem, SubscriptionSnapshot
from .timeutil import next_month_start

# Statuses in which a subscription grants its plan; ended ones return the user to the default plan.
GRANTING_STATUSES = frozenset({"active", "trialing", "past_due"})
ENDED_STATUSES = frozenset({"canceled", "incomplete_expired"})
# Statuses in which the safety net may reset a period Stripe has moved (never unpaid periods).
RESETTABLE_STATUSES = frozenset({"active", "trialing"})
# Invoices that start a service period: a subscription's first, and each renewal.
RESET_REASONS = frozenset({"subscription_create", "subscription_cycle"})
# Invoices that charge for an allowance, and so grant a raise they charged for once paid.
GRANT_REASONS = RESET_REASONS | {"subscription_update"}
PLAN_KEYS = ("tokens_per_month", "plan", "addon_tokens")
# Appwrite's user id rule: a checkout naming anything else can never belong to a user.
USER_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,35}")
# The plan column's size: a plan named otherwise is not one the store can keep.
PLAN_ID_SIZE = 32
# A count an operator writes in metadata: ASCII digits only (int() also takes other scripts'
# digits, signs and underscores).
_COUNT = re.compile(r"[0-9]{1,18}")


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
    # What a refund or dispute of the payment names, and what the payment brought in.
    payment_intent: str | None = None
    amount: int = 0
    currency: str = ""
    paid_at: datetime | None = None


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
    # The user the billing function named in the subscription's metadata, if any.
    user_id: str | None = None
    # What a paid invoice must charge for a raise of the plan's or the add-ons' tokens.
    plan_charges: Charges = ()
    addon_charges: Charges = ()
    # The subscription's newest invoice: a raise it already charged (and was paid) is granted.
    latest_invoice: str | None = None


@dataclass(frozen=True, slots=True)
class CancelSubscription:
    subscription_id: str
    customer_id: str | None
    created: int
    # When the subscription ended, which closes its paid period; None when unknown.
    at: datetime | None = None
    user_id: str | None = None


@dataclass(frozen=True, slots=True)
class InvoicePaid:
    """A paid invoice: revenue to record, and for a subscription's, a new period to reset to
    (its first or a renewal) and a pending raise it may have charged for."""

    invoice_id: str
    subscription_id: str | None
    customer_id: str | None
    user_id: str | None
    billing_reason: str | None
    amount_paid: int
    currency: str
    paid_at: datetime
    # The service period, from the invoice's subscription lines; None without such lines.
    period_start: datetime | None = None
    period_end: datetime | None = None
    # The prices its subscription lines charged (credits left out), with their quantities.
    charges: Charges = ()


@dataclass(frozen=True, slots=True)
class RecordPaymentFailed:
    subscription_id: str
    customer_id: str | None
    created: int
    user_id: str | None = None


@dataclass(frozen=True, slots=True)
class RevokeTopup:
    """A refund (``refunded`` of ``amount`` minor units, cumulative) or a lost dispute of the
    payment ``payment_intent``: what is left of the top-up it paid for goes."""

    payment_intent: str
    refunded: int
    amount: int
    cause: str  # "refund" or "dispute"
    # The charge says it paid a top-up: one not credited yet is waited for, not skipped.
    names_topup: bool = False


@dataclass(frozen=True, slots=True)
class Ignore:
    type: str
    reason: str = "unhandled type"


@dataclass(frozen=True, slots=True)
class Invalid:
    """A signed event whose values no retry can make valid: it changes nothing, and the
    operator is told why."""

    type: str
    reason: str


Command = (
    LinkCustomer
    | CreditTopup
    | SetSubscription
    | CancelSubscription
    | InvoicePaid
    | RecordPaymentFailed
    | RevokeTopup
    | Ignore
    | Invalid
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
    (reading may ask the billing API, which a duplicate delivery must not). ``problem`` says
    why a header cannot even be claimed (an absurd id, type or time): nothing is stored."""

    header: EventHeader
    read_command: Callable[[], Command]
    problem: str | None = None


# -- plans from metadata -----------------------------------------------------------------------


def has_plan_keys(metadata: Mapping[str, str]) -> bool:
    return any(key in metadata for key in PLAN_KEYS)


def metadata_count(value: str, key: str, maximum: int) -> int:
    """A token count an operator wrote in metadata, at most ``maximum``; anything else is a
    ``PlanError``."""
    text = value.strip(" ")
    if not _COUNT.fullmatch(text):
        raise PlanError(f"metadata {key} must be a count in ASCII digits, got {value[:40]!r}")
    number = int(text)
    if number > maximum:
        raise PlanError(f"metadata {key} is {number}, above the maximum of {maximum}")
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
    # The item that carries the plan, and those that carry add-ons, as (price, quantity).
    plan_charges: Charges = ()
    addon_charges: Charges = ()


def entitlement(
    snapshot: SubscriptionSnapshot,
    plans: PlanCatalog,
    products: Mapping[str, Mapping[str, str]],
    max_tokens: int,
) -> Entitlement:
    """Plan and add-on tokens from the items' price metadata, falling back to the product's;
    no amount may pass ``max_tokens``."""
    plan: Entitlement | None = None
    addon = 0
    addon_charges: list[tuple[str, int]] = []
    for item in snapshot.items:
        metadata = {**(item.product_metadata or products.get(item.product_id or "", {}))}
        metadata.update(item.price_metadata)
        if "addon_tokens" in metadata:
            addon += metadata_count(metadata["addon_tokens"], "addon_tokens", max_tokens) * (
                item.quantity
            )
            if addon > max_tokens:
                raise PlanError(f"add-on tokens {addon} are above the maximum of {max_tokens}")
            if item.quantity > 0:
                addon_charges.append((item.price_id, item.quantity))
            continue
        if plan is not None:
            continue
        name = metadata.get("plan") or item.lookup_key
        named = plans.find(name)
        charge = ((item.price_id, max(item.quantity, 1)),)
        if "tokens_per_month" in metadata:
            tokens = metadata_count(metadata["tokens_per_month"], "tokens_per_month", max_tokens)
            plan_id = (named.id if named else name or item.price_id).lower()
            if len(plan_id) > PLAN_ID_SIZE:
                raise PlanError(f"plan name {plan_id[:40]!r} is longer than {PLAN_ID_SIZE}")
            plan = Entitlement(plan_id, tokens, 0, charge)
        elif named is not None:
            plan = Entitlement(named.id, named.tokens_per_month, 0, charge)
        elif "plan" in metadata:
            raise PlanError(f"price {item.price_id} names unknown plan {metadata['plan'][:40]!r}")
    if plan is None:
        raise PlanError(f"subscription {snapshot.id} has no item whose metadata names a plan")
    return Entitlement(
        plan.plan, plan.tokens_per_month, addon, plan.plan_charges, tuple(sorted(addon_charges))
    )


# -- decisions: current state + command -> change ----------------------------------------------

NO_PENDING: AccountPatch = {
    "pending_plan": None,
    "pending_tokens_per_month": 0,
    "pending_addon_tokens": 0,
    "pending_charges": (),
}


def _may_follow(account: Account, subscription_id: str) -> bool:
    """Events of another subscription than the account's current one change nothing."""
    return account.stripe_subscription_id in (None, "", subscription_id)


def holds_granting_subscription(account: Account) -> bool:
    return account.has_subscription and account.status in GRANTING_STATUSES


def relinks(account: Account, customer_id: str | None) -> bool:
    """Whether linking ``customer_id`` would take an account that a customer's granting
    subscription holds away from that customer: never done by an event."""
    return bool(
        customer_id
        and account.stripe_customer_id
        and customer_id != account.stripe_customer_id
        and holds_granting_subscription(account)
    )


def decide_link(account: Account, command: LinkCustomer, created: int) -> AccountPatch:
    if relinks(account, command.customer_id):
        return {}
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


def covers(charged: Charges, needed: Charges) -> bool:
    """Whether an invoice that charged ``charged`` paid for every (price, quantity) needed."""
    paid: dict[str, int] = {}
    for price, quantity in charged:
        paid[price] = max(paid.get(price, 0), quantity)
    return all(paid.get(price, -1) >= quantity for price, quantity in needed)


def paid_for(payment: Payment | None, subscription_id: str, needed: Charges) -> bool:
    """Whether ``payment`` is a paid invoice of the subscription that charged ``needed``."""
    return (
        payment is not None
        and payment.kind is PaymentKind.INVOICE
        and payment.subscription_id == subscription_id
        and payment.billing_reason in GRANT_REASONS
        and covers(payment.charges, needed)
    )


def decide_subscription(
    account: Account, command: SetSubscription, paid: Payment | None = None
) -> AccountPatch:
    """Set state from the subscription object; an update older than the one applied loses.
    A raise of the allowance waits, as pending, for the invoice that charges it, unless
    ``paid`` (the subscription's latest invoice, when it is recorded) already did."""
    if command.created < account.stripe_updated_at:
        return {}
    # A second subscription that grants nothing (e.g. its first payment failed) must not take
    # the account away from the one it follows: its later expiry would then end the paid plan.
    if command.status not in GRANTING_STATUSES and not _may_follow(
        account, command.subscription_id
    ):
        return {}
    if relinks(account, command.customer_id):
        return {}
    patch: AccountPatch = {
        "status": command.status,
        "stripe_subscription_id": command.subscription_id,
        "stripe_updated_at": command.created,
    }
    if command.customer_id:
        patch["stripe_customer_id"] = command.customer_id
    if command.status in GRANTING_STATUSES:
        patch.update(_allowance(account, command, paid))
    return patch


def _allowance(account: Account, command: SetSubscription, paid: Payment | None) -> AccountPatch:
    raises_plan = command.tokens_per_month > account.max_tokens_per_month
    raises_addon = command.addon_tokens > account.addon_tokens
    needed = (command.plan_charges if raises_plan else ()) + (
        command.addon_charges if raises_addon else ()
    )
    if not (raises_plan or raises_addon) or paid_for(paid, command.subscription_id, needed):
        return {
            "plan": command.plan,
            "max_tokens_per_month": command.tokens_per_month,
            "addon_tokens": command.addon_tokens,
            **NO_PENDING,
        }
    # What lowers applies now; what raises waits for its invoice, which grants it all.
    patch: AccountPatch = {
        "pending_plan": command.plan,
        "pending_tokens_per_month": command.tokens_per_month,
        "pending_addon_tokens": command.addon_tokens,
        "pending_charges": needed,
    }
    if not raises_plan:
        patch["plan"] = command.plan
        patch["max_tokens_per_month"] = command.tokens_per_month
    if not raises_addon:
        patch["addon_tokens"] = command.addon_tokens
    return patch


def is_pending(patch: AccountPatch) -> bool:
    return patch.get("pending_plan") is not None


def decide_grant(account: Account, invoice: InvoicePaid) -> AccountPatch:
    """The pending raise a paid invoice of the account's subscription charged for, or {}."""
    if account.pending_plan is None or invoice.billing_reason not in GRANT_REASONS:
        return {}
    if not invoice.subscription_id or invoice.subscription_id != account.stripe_subscription_id:
        return {}
    if not covers(invoice.charges, account.pending_charges):
        return {}
    return {
        "plan": account.pending_plan,
        "max_tokens_per_month": account.pending_tokens_per_month,
        "addon_tokens": account.pending_addon_tokens,
        **NO_PENDING,
    }


def decide_cancel(
    account: Account, command: CancelSubscription, plans: PlanCatalog
) -> AccountPatch:
    """Back to the default plan: add-ons and a pending raise cleared, the remaining top-up
    kept. Applied after ``close_paid_period``, which ends the paid period (its usage moves to
    lifetime; top-up is consumed only for usage beyond the paid allowance) and starts a Demo
    period at the cancellation."""
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
        **NO_PENDING,
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


def starts_period(invoice: InvoicePaid) -> bool:
    return invoice.billing_reason in RESET_REASONS and invoice.period_start is not None


def decide_reset(account: Account, invoice: InvoicePaid, now: datetime) -> ResetPlan | None:
    """The forward-only reset to the period a first or renewal invoice pays for, or None."""
    if not starts_period(invoice) or invoice.period_start is None:
        return None
    if not invoice.subscription_id or not _may_follow(account, invoice.subscription_id):
        return None
    return plan_reset(account, invoice.period_start, invoice.period_end, now)


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


# -- payments ----------------------------------------------------------------------------------


def invoice_payment(user_id: str, invoice: InvoicePaid) -> Payment:
    return Payment(
        stripe_id=invoice.invoice_id,
        kind=PaymentKind.INVOICE,
        user_id=user_id,
        amount=invoice.amount_paid,
        currency=invoice.currency,
        paid_at=invoice.paid_at,
        customer_id=invoice.customer_id,
        subscription_id=invoice.subscription_id,
        billing_reason=invoice.billing_reason,
        period_start=invoice.period_start,
        period_end=invoice.period_end,
        charges=invoice.charges,
    )


def topup_payment(command: CreditTopup, paid_at: datetime) -> Payment:
    return Payment(
        stripe_id=command.session_id,
        kind=PaymentKind.TOPUP,
        user_id=command.user_id,
        amount=command.amount,
        currency=command.currency,
        paid_at=command.paid_at or paid_at,
        customer_id=command.customer_id,
        payment_intent=command.payment_intent,
        tokens=command.tokens,
    )


def tokens_to_revoke(payment: Payment, command: RevokeTopup) -> int:
    """How many of the pack's tokens a refund or lost dispute takes back in all: the whole pack
    for a dispute or a full refund, the refunded share (rounded up) of a partial one."""
    if command.cause == "dispute" or command.amount <= 0 or command.refunded >= command.amount:
        return payment.tokens
    return min(payment.tokens, -(-payment.tokens * command.refunded // command.amount))
