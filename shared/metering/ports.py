"""The interfaces the domain needs from outside systems, in domain words only.

Adapters implement them; no vendor type crosses them. Every method may raise ``StoreError`` (or
another ``MeteringError``) for failures the caller cannot fix.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Generic, Protocol, TypedDict, TypeVar

from .account import Account, AccountPatch, ResetPlan
from .alerts import Email, Notice
from .ledger import LedgerEntry, LedgerPatch
from .model import ModelRequest, StreamedCall, StreamSink
from .turns import Turn, TurnPatch

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Page(Generic[T]):
    items: Sequence[T]
    # Opaque; pass it back to get the next page. None when this page is the last.
    next_cursor: str | None
    # Where the store can name one, the cursor after each item (as many as ``items``): a walk
    # that stops after ``items[i]`` resumes at ``item_cursors[i]``, even on another day.
    item_cursors: Sequence[str] = ()


@dataclass(frozen=True, slots=True)
class AccountQuery:
    """Filters for paging through accounts due for maintenance (all given filters apply)."""

    subscribed: bool | None = None  # True: has a Stripe subscription id; False: has none
    period_start_before: datetime | None = None
    period_end_before: datetime | None = None
    # True: only accounts whose counter is above zero (usage this period, or holds in flight).
    with_usage: bool = False


class ClaimOutcome(StrEnum):
    CLAIMED = "claimed"  # the caller owns it now: act, then complete or release
    DONE = "done"  # already handled: do nothing
    IN_PROGRESS = "in_progress"  # another worker holds an unexpired claim


class PaymentKind(StrEnum):
    INVOICE = "invoice"  # a paid invoice (a subscription's, or any other of a linked customer)
    TOPUP = "topup"  # a paid top-up checkout


# (price id, quantity) pairs: what an invoice charged, or what a pending raise needs charged.
Charges = tuple[tuple[str, int], ...]


@dataclass(frozen=True, slots=True)
class Payment:
    """Money received, recorded once per Stripe object (the revenue the operator reports on);
    a top-up's record also says how many of its tokens refunds and lost disputes took back."""

    stripe_id: str  # the invoice id, or the top-up's checkout session id
    kind: PaymentKind
    user_id: str
    amount: int  # minor units (cents) actually paid
    currency: str
    paid_at: datetime
    customer_id: str | None = None
    subscription_id: str | None = None
    billing_reason: str | None = None
    # The service period an invoice pays for (from its subscription lines).
    period_start: datetime | None = None
    period_end: datetime | None = None
    payment_intent: str | None = None
    tokens: int = 0  # a top-up's credited tokens
    tokens_revoked: int = 0
    charges: Charges = ()


class PaymentPatch(TypedDict, total=False):
    tokens_revoked: int


class UsageStore(Protocol):
    """Subscriptions, the usage ledger and event claims.

    Counters (``current_tokens_used``, ``lifetime_tokens_used``, ``topup_tokens`` and a ledger
    entry's ``held_tokens``) change only through the atomic operations below, never through a
    read-modify-write by the caller.
    """

    # -- accounts ------------------------------------------------------------------------------

    def get_account(self, user_id: str) -> Account | None:
        """The account of ``user_id`` (rows are found by their ``userId`` column)."""

    def create_account(self, account: Account) -> Account:
        """Insert ``account``; if the user already has one (a race), return that one instead."""

    def find_account_by_customer(self, stripe_customer_id: str) -> Account | None: ...

    def find_account_by_subscription(self, stripe_subscription_id: str) -> Account | None: ...

    def update_account(self, user_id: str, patch: AccountPatch) -> Account:
        """Set plain fields; raises ``NotFound`` when the user has no account."""

    def add_topup(self, user_id: str, tokens: int) -> Account:
        """Atomically credit ``tokens`` of one-time top-up balance."""

    def remove_topup(self, user_id: str, tokens: int) -> Account:
        """Atomically take back up to ``tokens`` of top-up balance, never below zero (what is
        left of a refunded pack); the plan's and add-ons' tokens are untouched."""

    def list_accounts(self, query: AccountQuery, limit: int, cursor: str | None) -> Page[Account]:
        """One page of matching accounts in a stable order (the order rows were created in),
        with ``item_cursors``; a cursor stays valid across runs and filters. ``NotFound`` when
        ``cursor`` names a row that no longer exists (Appwrite's cursors are row ids): start
        again from None."""

    # -- the hard cap and the ledger: every change of both is one atomic change ---------------
    #
    # Invariant, whatever fails when: the counter equals the sum over the period's entries of
    # their settled ``usage`` plus their ``held_tokens``. Each method below changes the counter and
    # the entry (and the turn, when given) together or not at all: a TablesDB transaction on
    # Appwrite, a transaction on SQLite.
    #
    # Second invariant: the account's in-flight counter (``requestsInFlight``) equals the number
    # of the user's entries in status ``reserved``. ``open_request`` raises it in the change that
    # creates the entry; the change that takes an entry out of ``reserved`` (a settle that sets
    # another status, ``discard_request``) lowers it, never below zero (entries opened before the
    # counter existed were never counted).

    def apply_reset(self, reset: ResetPlan, previous_period_start: datetime) -> Account | None:
        """Apply a period reset once, and only forward.

        Closes the old period on the row as it stands in the change itself
        (``account.close_period``): what the user's requests in flight charged and hold stays on
        the counter and their entries take the new period's start; the rest moves to the
        lifetime counter and consumes top-up balance past the allowance. The period fields are
        set, but only if the stored period still starts at ``previous_period_start``. Returns the
        updated account, or None when the reset was already applied or is no longer forward.
        Every store runs it as ``claims.reset_once``: the reset's claim, then its own atomic,
        conditional change of the counters.
        """

    def open_request(
        self,
        entry: LedgerEntry,
        limit: int,
        turn: Turn | None = None,
        *,
        max_in_flight: int | None = None,
    ) -> None:
        """Create ``entry`` (status ``reserved``, ``held_tokens`` its first hold) and ``turn``, add
        the hold to the user's counter unless that passes ``limit``, and count the request in
        flight unless that makes more than ``max_in_flight`` (None: no cap; operators'
        adjustments pass none). Raises ``AlreadyExists`` when the request id has an entry,
        ``LimitReached`` when the hold does not fit, ``InFlightLimitReached`` when the user has
        ``max_in_flight`` requests in flight already; whichever, nothing changed. Creating the
        entry is the request's claim; a turn left by a discarded earlier attempt with the same id
        (the provider refused it) is replaced."""

    def hold(self, user_id: str, request_id: str, tokens: int, limit: int) -> None:
        """Add ``tokens`` to the user's counter unless that passes ``limit``, and to the entry's
        ``held_tokens``; ``LimitReached`` changes nothing."""

    def settle(
        self,
        user_id: str,
        request_id: str,
        release: int,
        patch: LedgerPatch,
        turn: TurnPatch | None = None,
    ) -> None:
        """Give back ``release`` tokens of the counter (never below zero), apply ``patch`` to the
        entry (a settled step sets ``held_tokens`` 0 and the new cumulative ``usage``) and
        ``turn`` to the request's turn; a ``patch`` whose status is not ``reserved`` ends the
        request, and the same change counts it out of flight and sets the entry's period start
        to the account's current one (the period its tokens are on the counter of). ``Conflict``
        when the entry changed meanwhile (the cron reclaimed it): nothing changed."""

    def discard_request(
        self, user_id: str, request_id: str, release: int, turn: TurnPatch | None = None
    ) -> None:
        """Give back ``release`` tokens and delete the entry of a request that charged nothing
        (the provider refused before generating), so a retry with its id can run, counting it
        out of flight; ``turn`` is applied to its turn. No-op for the entry (and the in-flight
        count) when it does not exist or is no longer in flight."""

    def get_ledger(self, request_id: str) -> LedgerEntry | None: ...

    def request_starts(self, user_id: str, after: datetime, limit: int) -> Sequence[datetime]:
        """When the user's newest requests started (their entries' ``created_at``, operators'
        adjustments left out), those later than ``after``, newest first, at most ``limit``: one
        query, for the cap on requests per minute."""

    def list_stale_reservations(
        self, updated_before: datetime, limit: int, cursor: str | None
    ) -> Page[LedgerEntry]:
        """Entries still ``reserved`` whose last update is older than ``updated_before``."""

    def list_ledger(
        self, created_from: datetime, created_before: datetime, limit: int, cursor: str | None
    ) -> Page[LedgerEntry]:
        """One page, in a stable order, of the entries created from ``created_from`` (inclusive)
        to ``created_before`` (exclusive): a month's usage, for the operator's report."""

    def ledger_total(self, user_id: str, period_start: datetime) -> int:
        """Sum over the user's entries of that period of their charged ``usage`` total plus their
        ``held_tokens``: what the counter must equal."""

    def record_adjustment(self, entry: LedgerEntry, tokens: int) -> None:
        """Create ``entry`` (an operator's correction: status ``adjustment``, no usage, no hold)
        and move the user's counter by ``tokens`` in the same change: up without a limit, or
        down (a negative ``tokens``) never below zero. The counter is thereby set right without
        the ledger's total moving. ``AlreadyExists`` when the id has an entry: nothing changed."""

    # -- resumable walks (the cron's passes, each remembered by name between runs) -------------

    def get_cursor(self, name: str) -> str | None:
        """Where the walk ``name`` stopped (a page cursor), or None to start from the first row."""

    def save_cursor(self, name: str, cursor: str | None) -> None:
        """Remember where the walk ``name`` stopped; None forgets it (the walk starts over)."""

    # -- turns (the streamed reply its user reads) and their Stop ------------------------------

    def get_turn(self, request_id: str) -> Turn | None: ...

    def update_turn(self, request_id: str, patch: TurnPatch) -> None:
        """Progress of a streaming turn (its text so far); only its own execution writes it."""

    def request_stop(self, request_id: str, user_id: str, now: datetime) -> None:
        """Record that the user asked the turn to stop, in a row only this path writes
        (idempotent: a second Stop changes nothing)."""

    def stop_requested(self, request_id: str) -> bool: ...

    # -- claims (Stripe events, top-ups, resets: effects that must happen once) ----------------

    def claim_event(
        self, event_id: str, event_type: str, object_id: str, now: datetime, lease: timedelta | None
    ) -> ClaimOutcome:
        """Claim by id: creating the row is the claim. A claim left ``pending`` longer than
        ``lease`` (its worker died) may be taken over; with ``lease`` None, never."""

    def complete_event(self, event_id: str, outcome: str, now: datetime) -> None:
        """Record the outcome: the claim is done for good (recorded even if its row is gone)."""

    def release_event(self, event_id: str) -> None:
        """Drop a pending claim so that a retry can run (the effect did not happen). A completed
        claim is kept: dropping it would let a duplicate apply the effect again."""

    # -- payments (revenue, and the top-ups a refund takes back) -------------------------------

    def record_payment(self, payment: Payment) -> bool:
        """Insert ``payment`` keyed by its Stripe id; False (the stored one kept) when it exists."""

    def get_payment(self, stripe_id: str) -> Payment | None: ...

    def find_payment_by_intent(self, payment_intent: str) -> Payment | None:
        """The payment its PaymentIntent paid (the one a charge, refund or dispute names)."""

    def update_payment(self, stripe_id: str, patch: PaymentPatch) -> Payment:
        """Set plain fields; raises ``NotFound`` when there is no such payment."""

    def list_payments(
        self, paid_from: datetime, paid_before: datetime, limit: int, cursor: str | None
    ) -> Page[Payment]:
        """One page, in a stable order, of the payments made from ``paid_from`` (inclusive) to
        ``paid_before`` (exclusive): a month's revenue."""

    # -- usage alerts (the in-app notices and the highest threshold sent) ------------------------

    def create_notice(self, notice: Notice) -> None:
        """Insert ``notice`` keyed by its id, readable by its user only; one that exists already
        is kept as it is (a retried alert)."""

    def list_notices(self, user_id: str, period_start: datetime) -> Sequence[Notice]:
        """The user's notices of the period starting at ``period_start``, newest first."""

    def mark_alert_sent(self, user_id: str, period_start: datetime, threshold: int) -> None:
        """Raise the account's ``alert_threshold_sent`` to ``threshold``, only if its stored
        period still starts at ``period_start`` (a reset in between wins) and only upwards; no
        change for a user without an account."""


class IdentityVerifier(Protocol):
    """Turns an execution's JWT into the verified user id."""

    def verify(self, jwt: str) -> str:
        """The user id the JWT belongs to; raises ``Unauthenticated`` when it is not valid."""


class ModelClient(Protocol):
    """The model provider; every call streams, so that a call can be cut at any moment.
    Failures surface as ``UpstreamError`` (the provider refused) or ``UpstreamUnavailable``
    (overloaded, rate limited, timed out, unreachable)."""

    def stream(
        self, request: ModelRequest, sink: StreamSink, deadline_seconds: float
    ) -> StreamedCall:
        """One model call, streamed into ``sink`` for at most ``deadline_seconds``.

        Raises ``UpstreamError`` / ``UpstreamUnavailable`` only when the provider refused before
        generating (nothing to charge). Once generation started, every ending is returned, cut or
        not, and never retried: the provider bills what it generated.
        """

    def count_tokens(self, request: ModelRequest) -> int:
        """The input tokens ``request`` would use (the provider's free count)."""


# -- the billing system ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SubscriptionItem:
    price_id: str
    lookup_key: str | None
    price_metadata: Mapping[str, str]
    product_id: str | None
    # None when the price names its product by id only (or the product carries no plan keys).
    product_metadata: Mapping[str, str] | None
    quantity: int


@dataclass(frozen=True, slots=True)
class SubscriptionSnapshot:
    """A subscription as the billing system tells it, in domain words."""

    id: str
    customer_id: str | None
    status: str
    period_start: datetime | None
    period_end: datetime | None
    items: tuple[SubscriptionItem, ...]
    # When an ended subscription ended (Stripe's ``ended_at``); None while it runs.
    ended_at: datetime | None = None


class BillingProvider(Protocol):
    """Reads from the billing system what events leave out."""

    def get_subscription(self, subscription_id: str) -> SubscriptionSnapshot:
        """The subscription as it is now; raises ``UpstreamError``/``UpstreamUnavailable``."""

    def get_product_metadata(self, product_id: str) -> Mapping[str, str]: ...


# -- selling: prices, hosted checkout and the customer portal (the billing function) -----------


@dataclass(frozen=True, slots=True)
class Price:
    """A price as the billing system holds it, found by its lookup key."""

    id: str
    lookup_key: str
    # Minor units (cents); None when the price has no fixed amount (tiers, customer-chosen).
    unit_amount: int | None
    currency: str
    recurring: bool


class CheckoutMode(StrEnum):
    SUBSCRIPTION = "subscription"
    PAYMENT = "payment"


@dataclass(frozen=True, slots=True)
class CheckoutRequest:
    """A hosted checkout of one unit of one price for one user, every field decided by the server.

    ``metadata`` goes on the session and on what it creates (the subscription, or the payment
    of a top-up), so that each later event names its user and pack by itself.
    """

    mode: CheckoutMode
    price_id: str
    user_id: str
    # The caller's linked customer, reused so that one user stays one customer.
    customer_id: str | None
    metadata: Mapping[str, str]
    success_url: str
    cancel_url: str


@dataclass(frozen=True, slots=True)
class PortalRequest:
    customer_id: str
    return_url: str
    # Open the portal at this subscription's plan change rather than at its home page.
    change_subscription: str | None = None


class CheckoutProvider(Protocol):
    """Where users pay. Failures surface as ``UpstreamError`` (refused) or
    ``UpstreamUnavailable`` (overloaded, timed out, unreachable)."""

    def find_prices(self, lookup_keys: Sequence[str]) -> Mapping[str, Price]:
        """The active price of each lookup key that has one; keys without one are left out."""

    def create_checkout(self, request: CheckoutRequest) -> str:
        """The URL of a new hosted checkout page for ``request``."""

    def create_portal(self, request: PortalRequest) -> str:
        """The URL of a new customer portal session for ``request``."""


# -- notifications -----------------------------------------------------------------------------


class Notifier(Protocol):
    """Sends a user the emails the domain decides on (usage alerts)."""

    def send_email(self, email: Email) -> None:
        """Send ``email`` to its user. An id already sent is not sent again and is no error, so a
        retry after a lost answer is safe; other failures raise ``UpstreamError`` (refused) or
        ``UpstreamUnavailable`` (unreachable)."""
