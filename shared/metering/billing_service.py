"""Apply Stripe events through the ports: each event once, each effect once, in any order."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta

from .account import Account
from .billing import (
    BillingProvider,
    CancelSubscription,
    Command,
    CreditTopup,
    EventHeader,
    Ignore,
    LinkCustomer,
    RecordPaymentFailed,
    ResetPeriod,
    SetSubscription,
    close_paid_period,
    decide_cancel,
    decide_link,
    decide_payment_failed,
    decide_reset,
    decide_subscription,
    event_header,
    parse_command,
    subscription_products,
)
from .errors import AccountNotLinked, ConfigurationError, RequestInProgress
from .plans import PlanCatalog
from .ports import AccountPatch, ClaimOutcome, UsageStore
from .service import get_or_create_account

# Longer than a webhook execution may run: a claim older than this belongs to a dead worker.
CLAIM_LEASE = timedelta(minutes=2)
# A top-up claim is never taken over: its holder may have credited before dying, and a second
# credit is worse than a pending one an operator can see (stripe_events row of type "topup").
TOPUP_LEASE = timedelta(days=36500)


def topup_claim_id(session_id: str) -> str:
    """A store-safe key (36 characters of [a-z0-9_]) for the top-up of one checkout session."""
    return "topup_" + hashlib.sha256(session_id.encode("utf-8")).hexdigest()[:30]


def cancel_subscription(
    store: UsageStore,
    plans: PlanCatalog,
    account: Account,
    command: CancelSubscription,
    now: datetime,
) -> bool:
    """Apply a cancellation (the webhook's and the cron's): close the paid period, then return
    the account to the default plan; False when the cancellation changes nothing.

    The reset comes first because it must count usage against the paid allowance. If the patch
    then fails, the retry decides again on a row whose period already moved: its reset is no
    longer forward (a no-op) and the patch still applies, so both paths converge.
    """
    patch = decide_cancel(account, command, plans)
    if not patch:
        return False
    reset = close_paid_period(account, command, now)
    if reset is not None:
        # Forward-only in the store: a concurrent cancellation of the same end resets once.
        store.apply_reset(reset, account.period_start)
    store.update_account(account.user_id, patch)
    return True


@dataclass(frozen=True, slots=True)
class Handled:
    event_id: str
    type: str
    outcome: str


class BillingService:
    """Claim the event, apply its command, complete; on failure release so that Stripe retries."""

    def __init__(
        self, store: UsageStore, plans: PlanCatalog, billing: BillingProvider | None = None
    ) -> None:
        self.store = store
        self.plans = plans
        self.billing = billing

    def handle(self, payload: Mapping[str, object], now: datetime) -> Handled:
        header = event_header(payload)
        claim = self.store.claim_event(header.id, header.type, header.object_id, now, CLAIM_LEASE)
        if claim == ClaimOutcome.DONE:
            return Handled(header.id, header.type, "duplicate")
        if claim == ClaimOutcome.IN_PROGRESS:
            raise RequestInProgress(f"event {header.id} is being applied")
        try:
            command = parse_command(header, self.plans, self._products(payload))
            outcome = self.apply(command, header, now)
            self.store.complete_event(header.id, outcome, now)
        except BaseException:
            # Effects are idempotent (state set from the source, forward-only resets, top-ups
            # keyed by session), so a retry after a failed completion changes nothing twice.
            self.store.release_event(header.id)
            raise
        return Handled(header.id, header.type, outcome)

    def _products(self, payload: Mapping[str, object]) -> dict[str, Mapping[str, str]]:
        wanted = subscription_products(payload, self.plans)
        if not wanted:
            return {}
        if self.billing is None:
            raise ConfigurationError("price metadata is on the product: STRIPE_SECRET_KEY needed")
        return {product: self.billing.get_product_metadata(product) for product in sorted(wanted)}

    def apply(self, command: Command, header: EventHeader, now: datetime) -> str:
        match command:
            case LinkCustomer():
                account = get_or_create_account(self.store, self.plans, command.user_id, now)
                return self._patch(account, decide_link(account, command, header.created), "linked")
            case CreditTopup():
                return self._credit_topup(command, header, now)
            case SetSubscription():
                account = self._find(command.subscription_id, command.customer_id)
                return self._patch(account, decide_subscription(account, command), "plan_set")
            case CancelSubscription():
                account = self._find(command.subscription_id, command.customer_id)
                if cancel_subscription(self.store, self.plans, account, command, now):
                    return "canceled"
                return "unchanged"
            case RecordPaymentFailed():
                account = self._find(command.subscription_id, command.customer_id)
                patch = decide_payment_failed(account, command)
                return self._patch(account, patch, "past_due")
            case ResetPeriod():
                account = self._find(command.subscription_id, command.customer_id)
                return self._reset(account, command, now)
            case Ignore():
                return "ignored"

    def _find(self, subscription_id: str, customer_id: str | None) -> Account:
        account = self.store.find_account_by_subscription(subscription_id)
        if account is None and customer_id:
            account = self.store.find_account_by_customer(customer_id)
        if account is None:
            raise AccountNotLinked(f"no account for subscription {subscription_id}")
        return account

    def _patch(self, account: Account, patch: AccountPatch, outcome: str) -> str:
        if not patch:
            return "unchanged"
        self.store.update_account(account.user_id, patch)
        return outcome

    def _reset(self, account: Account, command: ResetPeriod, now: datetime) -> str:
        reset = decide_reset(account, command, now)
        if reset is None:
            return "reset_not_forward"
        # Forward-only in the store too: a concurrent reset of the same period wins once.
        applied = self.store.apply_reset(reset, account.period_start)
        return "reset" if applied is not None else "reset_already_applied"

    def _credit_topup(self, command: CreditTopup, header: EventHeader, now: datetime) -> str:
        account = get_or_create_account(self.store, self.plans, command.user_id, now)
        if command.customer_id and not account.stripe_customer_id:
            self.store.update_account(account.user_id, {"stripe_customer_id": command.customer_id})
        key = topup_claim_id(command.session_id)
        claim = self.store.claim_event(key, "topup", command.session_id, now, TOPUP_LEASE)
        if claim == ClaimOutcome.DONE:
            return "topup_already_credited"
        if claim == ClaimOutcome.IN_PROGRESS:
            # Credited, or being credited by another delivery for this session: never twice.
            return "topup_claimed_elsewhere"
        try:
            self.store.add_topup(account.user_id, command.tokens)
        except BaseException:
            # The credit did not happen: let the retry claim it again.
            self.store.release_event(key)
            raise
        self.store.complete_event(key, f"credited {command.tokens} ({header.id})", now)
        return "topup_credited"
