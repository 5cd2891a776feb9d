"""Apply billing events through the ports: each event once, each effect once, in any order."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime, timedelta

from . import billing
from .account import Account, AccountPatch
from .claims import Claim, Done, run_once
from .errors import AccountNotLinked, RequestInProgress
from .plans import PlanCatalog
from .ports import ClaimOutcome, UsageStore
from .service import get_or_create_account

# Longer than a webhook execution may run: a claim older than this belongs to a dead worker.
CLAIM_LEASE = timedelta(minutes=2)
# A top-up claim is never taken over: its holder may have credited before dying, and a second
# credit is worse than a pending one an operator can see (a claim row of type "topup").
TOPUP_LEASE = None
TOPUP_OUTCOMES = {
    ClaimOutcome.CLAIMED: "topup_credited",
    ClaimOutcome.DONE: "topup_already_credited",
    # Credited, or being credited by another delivery for this session: never twice.
    ClaimOutcome.IN_PROGRESS: "topup_claimed_elsewhere",
}


def topup_claim_id(session_id: str) -> str:
    """A store-safe key (36 characters of [a-z0-9_]) for the top-up of one checkout session."""
    return "topup_" + hashlib.sha256(session_id.encode("utf-8")).hexdigest()[:30]


def cancel_subscription(
    store: UsageStore,
    plans: PlanCatalog,
    account: Account,
    command: billing.CancelSubscription,
    now: datetime,
) -> bool:
    """Apply a cancellation (the webhook's and the cron's): close the paid period, then return
    the account to the default plan; False when the cancellation changes nothing.

    The reset comes first because it must count usage against the paid allowance. If the patch
    then fails, the retry decides again on a row whose period already moved: its reset is no
    longer forward (a no-op) and the patch still applies, so both paths converge.
    """
    patch = billing.decide_cancel(account, command, plans)
    if not patch:
        return False
    reset = billing.close_paid_period(account, command, now)
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

    def __init__(self, store: UsageStore, plans: PlanCatalog) -> None:
        self.store = store
        self.plans = plans

    def handle(self, event: billing.BillingEvent, now: datetime) -> Handled:
        header = event.header
        outcome: list[str] = []  # set once the command is applied

        def apply() -> Done[None]:
            outcome.append(self.apply(event.read_command(), header, now))
            return Done(None, outcome[0])

        claim = Claim(header.id, header.type, header.object_id, CLAIM_LEASE)
        try:
            once = run_once(self.store, claim, now, apply)
        except BaseException:
            if outcome:
                # Its effects are idempotent (state set from the source, forward-only resets,
                # top-ups claimed by session): a failed completion releases the claim too, so
                # that Stripe's next retry applies the event instead of waiting for the lease.
                self.store.release_event(header.id)
            raise
        if once.state is ClaimOutcome.DONE:
            return Handled(header.id, header.type, "duplicate")
        if once.state is ClaimOutcome.IN_PROGRESS:
            raise RequestInProgress(f"event {header.id} is being applied")
        return Handled(header.id, header.type, outcome[0])

    def apply(self, command: billing.Command, header: billing.EventHeader, now: datetime) -> str:
        match command:
            case billing.LinkCustomer():
                account = get_or_create_account(self.store, self.plans, command.user_id, now)
                return self._patch(
                    account, billing.decide_link(account, command, header.created), "linked"
                )
            case billing.CreditTopup():
                return self._credit_topup(command, header, now)
            case billing.SetSubscription():
                account = self._find(command.subscription_id, command.customer_id)
                return self._patch(
                    account, billing.decide_subscription(account, command), "plan_set"
                )
            case billing.CancelSubscription():
                account = self._find(command.subscription_id, command.customer_id)
                if cancel_subscription(self.store, self.plans, account, command, now):
                    return "canceled"
                return "unchanged"
            case billing.RecordPaymentFailed():
                account = self._find(command.subscription_id, command.customer_id)
                patch = billing.decide_payment_failed(account, command)
                return self._patch(account, patch, "past_due")
            case billing.ResetPeriod():
                account = self._find(command.subscription_id, command.customer_id)
                return self._reset(account, command, now)
            case billing.Ignore():
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

    def _reset(self, account: Account, command: billing.ResetPeriod, now: datetime) -> str:
        reset = billing.decide_reset(account, command, now)
        if reset is None:
            return "reset_not_forward"
        # Forward-only in the store too: a concurrent reset of the same period wins once.
        applied = self.store.apply_reset(reset, account.period_start)
        return "reset" if applied is not None else "reset_already_applied"

    def _credit_topup(
        self, command: billing.CreditTopup, header: billing.EventHeader, now: datetime
    ) -> str:
        account = get_or_create_account(self.store, self.plans, command.user_id, now)
        if command.customer_id and not account.stripe_customer_id:
            self.store.update_account(account.user_id, {"stripe_customer_id": command.customer_id})
        claim = Claim(topup_claim_id(command.session_id), "topup", command.session_id, TOPUP_LEASE)

        def credit() -> Done[None]:
            self.store.add_topup(account.user_id, command.tokens)
            return Done(None, f"credited {command.tokens} ({header.id})")

        return TOPUP_OUTCOMES[run_once(self.store, claim, now, credit).state]
