"""Apply billing events through the ports: each event once, each effect once, in any order."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from . import billing
from .account import Account, AccountPatch
from .claims import Claim, Done, run_once
from .errors import AccountNotLinked, RequestInProgress
from .plans import PlanCatalog
from .ports import ClaimOutcome, PaymentKind, UsageStore
from .service import get_or_create_account
from .timeutil import parse_timestamp

# Longer than a webhook execution may run: a claim older than this belongs to a dead worker.
CLAIM_LEASE = timedelta(minutes=2)
# A top-up claim is never taken over: its holder may have credited before dying, and a second
# credit is worse than a pending one an operator can see (a claim row of type "topup"). The
# same holds for taking a refunded pack back.
TOPUP_LEASE = None
TOPUP_OUTCOMES = {
    ClaimOutcome.CLAIMED: "topup_credited",
    ClaimOutcome.DONE: "topup_already_credited",
    # Credited, or being credited by another delivery for this session: never twice.
    ClaimOutcome.IN_PROGRESS: "topup_claimed_elsewhere",
}
REVOKE_OUTCOMES = {
    ClaimOutcome.CLAIMED: "topup_revoked",
    ClaimOutcome.DONE: "topup_already_revoked",
    ClaimOutcome.IN_PROGRESS: "topup_revoke_claimed_elsewhere",
}
INVALID = "invalid"


def _claim_key(prefix: str, text: str) -> str:
    """A store-safe key (36 characters of [a-z0-9_]) for one effect on ``text``."""
    return prefix + hashlib.sha256(text.encode("utf-8")).hexdigest()[: 36 - len(prefix)]


def topup_claim_id(session_id: str) -> str:
    """The claim of the top-up of one checkout session."""
    return _claim_key("topup_", session_id)


def revoke_claim_id(payment_intent: str, tokens: int) -> str:
    """The claim of taking back ``tokens`` in all of the pack ``payment_intent`` paid for."""
    return _claim_key("revoke_", f"{payment_intent}:{tokens}")


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
class Outcome:
    """What applying a command did: its name (the log line's event) and the facts to log."""

    name: str
    detail: Mapping[str, str | int] = field(default_factory=dict)


def invalid(reason: str) -> Outcome:
    return Outcome(INVALID, {"reason": reason})


@dataclass(frozen=True, slots=True)
class Handled:
    event_id: str
    type: str
    outcome: str
    detail: Mapping[str, str | int] = field(default_factory=dict)


class BillingService:
    """Claim the event, apply its command, complete; on failure release so that Stripe retries.
    An invalid event changes nothing: its claim is let go and it is answered as handled."""

    def __init__(self, store: UsageStore, plans: PlanCatalog) -> None:
        self.store = store
        self.plans = plans

    def handle(self, event: billing.BillingEvent, now: datetime) -> Handled:
        header = event.header
        if event.problem is not None:
            return Handled(header.id, header.type, INVALID, {"reason": event.problem})
        outcome: list[Outcome] = []  # set once the command is applied

        def apply() -> Done[None]:
            outcome.append(self.apply(event.read_command(), header, now))
            name = outcome[0].name
            return Done(None, None if name == INVALID else name)

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
        return Handled(header.id, header.type, outcome[0].name, outcome[0].detail)

    def apply(
        self, command: billing.Command, header: billing.EventHeader, now: datetime
    ) -> Outcome:
        match command:
            case billing.LinkCustomer():
                return self._link(command, header, now)
            case billing.CreditTopup():
                return self._credit_topup(command, header, now)
            case billing.SetSubscription():
                return self._set_subscription(command, now)
            case billing.CancelSubscription():
                account = self._find(
                    command.user_id, command.subscription_id, command.customer_id, now
                )
                if cancel_subscription(self.store, self.plans, account, command, now):
                    return Outcome("canceled")
                return Outcome("unchanged")
            case billing.RecordPaymentFailed():
                account = self._find(
                    command.user_id, command.subscription_id, command.customer_id, now
                )
                patch = billing.decide_payment_failed(account, command)
                return self._patch(account, patch, "past_due")
            case billing.InvoicePaid():
                return self._invoice_paid(command, now)
            case billing.RevokeTopup():
                return self._revoke_topup(command, header, now)
            case billing.Ignore():
                return Outcome("ignored", {"reason": command.reason})
            case billing.Invalid():
                return invalid(command.reason)

    def _find(
        self,
        user_id: str | None,
        subscription_id: str | None,
        customer_id: str | None,
        now: datetime,
    ) -> Account:
        """The account an object of the billing function's names in its metadata; else the
        one following the subscription, else the one linked to the customer."""
        if user_id:
            return get_or_create_account(self.store, self.plans, user_id, now)
        account = (
            self.store.find_account_by_subscription(subscription_id) if subscription_id else None
        )
        if account is None and customer_id:
            account = self.store.find_account_by_customer(customer_id)
        if account is None:
            raise AccountNotLinked(f"no account for subscription {subscription_id}")
        return account

    def _patch(self, account: Account, patch: AccountPatch, outcome: str) -> Outcome:
        if not patch:
            return Outcome("unchanged")
        self.store.update_account(account.user_id, patch)
        return Outcome(outcome)

    def _link(
        self, command: billing.LinkCustomer, header: billing.EventHeader, now: datetime
    ) -> Outcome:
        account = get_or_create_account(self.store, self.plans, command.user_id, now)
        if billing.relinks(account, command.customer_id):
            return invalid(
                f"user {command.user_id} has a granting subscription of another customer:"
                " not relinked"
            )
        return self._patch(account, billing.decide_link(account, command, header.created), "linked")

    def _set_subscription(self, command: billing.SetSubscription, now: datetime) -> Outcome:
        account = self._find(command.user_id, command.subscription_id, command.customer_id, now)
        patch = billing.decide_subscription(account, command)
        if billing.is_pending(patch) and command.latest_invoice:
            # Its invoice may have been paid (and recorded) before this event arrived.
            paid = self.store.get_payment(command.latest_invoice)
            patch = billing.decide_subscription(account, command, paid)
        if not patch:
            return Outcome("unchanged")
        self.store.update_account(account.user_id, patch)
        if billing.is_pending(patch):
            return Outcome("plan_pending", {"pending": command.plan})
        return Outcome("plan_set")

    def _invoice_paid(self, command: billing.InvoicePaid, now: datetime) -> Outcome:
        try:
            account = self._find(command.user_id, command.subscription_id, command.customer_id, now)
        except AccountNotLinked:
            if command.subscription_id is not None:
                raise  # its checkout has not been applied yet: Stripe retries
            return Outcome("ignored", {"reason": "invoice of a customer no account is linked to"})
        recorded = self.store.record_payment(billing.invoice_payment(account.user_id, command))
        detail: dict[str, str | int] = {"revenue": "recorded" if recorded else "already_recorded"}
        name = "invoice_recorded"
        if billing.starts_period(command):
            name = self._reset(account, command, now)
        grant = billing.decide_grant(account, command)
        if grant:
            self.store.update_account(account.user_id, grant)
            detail["granted"] = account.pending_plan or ""
            if name == "invoice_recorded":
                name = "plan_granted"
        return Outcome(name, detail)

    def _reset(self, account: Account, command: billing.InvoicePaid, now: datetime) -> str:
        reset = billing.decide_reset(account, command, now)
        if reset is None:
            return "reset_not_forward"
        # Forward-only in the store too: a concurrent reset of the same period wins once.
        applied = self.store.apply_reset(reset, account.period_start)
        return "reset" if applied is not None else "reset_already_applied"

    def _credit_topup(
        self, command: billing.CreditTopup, header: billing.EventHeader, now: datetime
    ) -> Outcome:
        account = get_or_create_account(self.store, self.plans, command.user_id, now)
        if command.customer_id and not account.stripe_customer_id:
            self.store.update_account(account.user_id, {"stripe_customer_id": command.customer_id})
        # Recorded before the credit, so that a refund always finds the pack it paid for.
        self.store.record_payment(billing.topup_payment(command, parse_timestamp(header.created)))
        claim = Claim(topup_claim_id(command.session_id), "topup", command.session_id, TOPUP_LEASE)

        def credit() -> Done[None]:
            self.store.add_topup(account.user_id, command.tokens)
            return Done(None, f"credited {command.tokens} ({header.id})")

        state = run_once(self.store, claim, now, credit).state
        return Outcome(TOPUP_OUTCOMES[state], {"tokens": command.tokens})

    def _revoke_topup(
        self, command: billing.RevokeTopup, header: billing.EventHeader, now: datetime
    ) -> Outcome:
        payment = self.store.find_payment_by_intent(command.payment_intent)
        if payment is None and command.names_topup:
            # A top-up refunded before its checkout event was applied: wait for the credit.
            raise AccountNotLinked(f"no top-up credited yet for {command.payment_intent}")
        if payment is None or payment.kind is not PaymentKind.TOPUP:
            return Outcome("ignored", {"reason": f"{command.cause} of no top-up"})
        target = billing.tokens_to_revoke(payment, command)
        owed = target - payment.tokens_revoked
        if owed <= 0:
            return Outcome("topup_already_revoked")
        claim = Claim(
            revoke_claim_id(command.payment_intent, target),
            "revoke",
            payment.stripe_id,
            TOPUP_LEASE,
        )

        def revoke() -> Done[None]:
            # Never below zero and never the plan's tokens: what is left of the pack goes.
            self.store.remove_topup(payment.user_id, owed)
            return Done(None, f"revoked up to {owed} ({command.cause}, {header.id})")

        state = run_once(self.store, claim, now, revoke).state
        if state is not ClaimOutcome.IN_PROGRESS:
            # After the removal, which its claim keeps from happening twice; set again by a
            # retry whose claim is done, should this write have failed.
            self.store.update_payment(payment.stripe_id, {"tokens_revoked": target})
        return Outcome(REVOKE_OUTCOMES[state], {"tokens": owed, "cause": command.cause})
