"""The ``UsageStore`` contract: one suite that every store implementation must pass."""

from __future__ import annotations

import multiprocessing
import random
import threading
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from metering.account import Account, ResetPlan, apply_reset, new_account, plan_reset
from metering.claims import reset_claim
from metering.errors import (
    AlreadyExists,
    Conflict,
    InvalidRequest,
    LimitReached,
    NotFound,
    StoreError,
)
from metering.ledger import LedgerEntry, LedgerPatch, LedgerStatus
from metering.plans import PlanCatalog, load_default_plans
from metering.ports import AccountQuery, ClaimOutcome, Payment, PaymentKind, UsageStore
from metering.service import get_or_create_account
from metering.tokens import TokenUsage
from metering.turns import Turn, TurnPatch, TurnStatus

from localruntime.sqlite_store import SQLiteStore
from tests.strategies import periods
from tests.support import builders
from tests.support.builders import MARCH, NOW, ledger_entry, token_usage
from tests.support.threads import run_together

APRIL = datetime(2026, 4, 1, tzinfo=UTC)
MAY = datetime(2026, 5, 1, tzinfo=UTC)
UNLIMITED = 10**12
LEASE = timedelta(minutes=5)


@pytest.fixture(scope="module")
def plans() -> PlanCatalog:
    return load_default_plans()


def make_account(store: UsageStore, user_id: str, tokens_per_month: int = 1_000) -> Account:
    """A fresh account on a plan of ``tokens_per_month``, its period starting in March."""
    store.create_account(new_account(user_id, load_default_plans().default, NOW))
    return store.update_account(user_id, {"max_tokens_per_month": tokens_per_month})


def charge(store: UsageStore, user_id: str, request_id: str, tokens: int) -> None:
    """Put ``tokens`` on the user's counter through a settled request of its own."""
    builders.charge(store, user_id, request_id, tokens, NOW)


def used(store: UsageStore, user_id: str) -> int:
    account = store.get_account(user_id)
    assert account is not None
    return account.current_tokens_used


def entry_of(store: UsageStore, request_id: str) -> LedgerEntry:
    entry = store.get_ledger(request_id)
    assert entry is not None
    return entry


def held(store: UsageStore, request_id: str) -> int:
    return entry_of(store, request_id).held_tokens


def balanced(store: UsageStore, user_id: str = "user-1") -> int:
    """The user's counter, once checked to equal what the ledger says it must be."""
    counter = used(store, user_id)
    assert store.ledger_total(user_id, MARCH) == counter
    return counter


def new_turn(request_id: str, user_id: str = "user-1", **fields: Any) -> Turn:
    """A pending turn of ``request_id`` started at ``NOW``; ``fields`` override."""
    turn = Turn(request_id, user_id, TurnStatus.PENDING, NOW, NOW, model="claude-sonnet-5-5")
    return replace(turn, **fields)


def holding(store: UsageStore, tokens: int, *, with_turn: bool = False) -> None:
    """user-1's fresh account and req-1's entry in flight, holding ``tokens`` of its 1,000."""
    make_account(store, "user-1")
    turn = new_turn("req-1") if with_turn else None
    store.open_request(ledger_entry("user-1", "req-1", held_tokens=tokens), 1_000, turn)


def step(usage: TokenUsage, **fields: Any) -> LedgerPatch:
    """The patch of a settled step whose cumulative usage is ``usage``: nothing held after."""
    return LedgerPatch(held_tokens=0, usage=usage, **fields)


def reclaim(store: UsageStore, request_id: str = "req-1", user_id: str = "user-1") -> None:
    """What the cron does to a dead request: give back its hold, the entry ``reclaimed``."""
    patch: LedgerPatch = {"status": LedgerStatus.RECLAIMED, "held_tokens": 0}
    store.settle(user_id, request_id, held(store, request_id), patch)


def charged_and_due(store: UsageStore) -> tuple[Account, ResetPlan]:
    """user-1 with 300 tokens used in March, and the reset of its snapshot to April."""
    make_account(store, "user-1")
    charge(store, "user-1", "req-1", 300)
    snapshot = store.get_account("user-1")
    assert snapshot is not None
    reset = plan_reset(snapshot, APRIL, MAY, NOW)
    assert reset is not None
    return snapshot, reset


# -- accounts ----------------------------------------------------------------------------------


def test_get_or_create_creates_the_default_plan_account_once(
    store: UsageStore, plans: PlanCatalog
) -> None:
    """First touch creates a Demo account with zeroed counters; the next touch finds it."""
    first = get_or_create_account(store, plans, "user-1", NOW)
    again = get_or_create_account(store, plans, "user-1", NOW + timedelta(days=1))

    assert (first.plan, first.max_tokens_per_month) == ("demo", 30)
    assert (first.current_tokens_used, first.lifetime_tokens_used, first.topup_tokens) == (0, 0, 0)
    assert (first.period_start, first.period_end) == (MARCH, APRIL)
    assert again == first
    assert store.get_account("user-1") == first
    assert len(store.list_accounts(AccountQuery(), 10, None).items) == 1


def test_get_account_of_an_unknown_user_is_none(store: UsageStore) -> None:
    """A user without a row has no account (rather than an error)."""
    assert store.get_account("nobody") is None


def test_create_account_that_exists_returns_the_stored_one(store: UsageStore) -> None:
    """Losing a creation race returns the winner's account and writes nothing."""
    winner = make_account(store, "user-1", tokens_per_month=500)
    starter = load_default_plans().get("starter")

    loser = store.create_account(new_account("user-1", starter, NOW))

    assert loser == winner
    assert len(store.list_accounts(AccountQuery(), 10, None).items) == 1


def test_concurrent_creations_leave_one_account(store: UsageStore, plans: PlanCatalog) -> None:
    """Eight simultaneous first touches of one user all see the same single row."""
    results: list[Account] = []
    barrier = threading.Barrier(8)

    def touch() -> None:
        barrier.wait()
        results.append(get_or_create_account(store, plans, "user-1", NOW))

    run_together([touch] * 8)

    assert len(results) == 8
    assert len({account.row_id for account in results}) == 1
    assert len(store.list_accounts(AccountQuery(), 10, None).items) == 1


def test_accounts_are_found_by_stripe_customer_and_subscription(store: UsageStore) -> None:
    """Linked Stripe ids find their account; unknown ids find nothing."""
    make_account(store, "user-1")
    make_account(store, "user-2")
    store.update_account(
        "user-2", {"stripe_customer_id": "cus_2", "stripe_subscription_id": "sub_2"}
    )

    by_customer = store.find_account_by_customer("cus_2")
    by_subscription = store.find_account_by_subscription("sub_2")

    assert by_customer is not None
    assert by_customer.user_id == "user-2"
    assert by_subscription is not None
    assert by_subscription.user_id == "user-2"
    assert store.find_account_by_customer("cus_unknown") is None
    assert store.find_account_by_subscription("sub_unknown") is None


def test_update_account_sets_plain_fields_and_keeps_counters(store: UsageStore) -> None:
    """Every patchable field round-trips, None clears, and counters are left alone."""
    make_account(store, "user-1")
    charge(store, "user-1", "req-1", 40)

    updated = store.update_account(
        "user-1",
        {
            "plan": "pro",
            "status": "active",
            "max_tokens_per_month": 200_000,
            "addon_tokens": 5_000,
            "stripe_customer_id": "cus_1",
            "stripe_subscription_id": "sub_1",
            "stripe_updated_at": 1_770_000_000,
            "period_start": APRIL,
            "period_end": MAY,
            "storage_bytes_limit": 10,
            "bank_connections_limit": 2,
        },
    )
    cleared = store.update_account("user-1", {"stripe_subscription_id": None, "period_end": None})

    assert updated.plan == "pro"
    assert updated.status == "active"
    assert (updated.max_tokens_per_month, updated.addon_tokens) == (200_000, 5_000)
    assert (updated.stripe_customer_id, updated.stripe_subscription_id) == ("cus_1", "sub_1")
    assert updated.stripe_updated_at == 1_770_000_000
    assert (updated.period_start, updated.period_end) == (APRIL, MAY)
    assert (updated.storage_bytes_limit, updated.bank_connections_limit) == (10, 2)
    assert updated.current_tokens_used == 40
    assert store.get_account("user-1") == cleared
    assert (cleared.stripe_subscription_id, cleared.period_end) == (None, None)
    assert cleared.stripe_customer_id == "cus_1"


def test_update_account_of_an_unknown_user_raises_not_found(store: UsageStore) -> None:
    """Patching a user without an account is an error, not an insert."""
    with pytest.raises(NotFound):
        store.update_account("nobody", {"plan": "pro"})
    assert store.get_account("nobody") is None


def test_add_topup_credits_the_balance_cumulatively(store: UsageStore) -> None:
    """Two top-ups add up and raise the limit by their sum."""
    make_account(store, "user-1", tokens_per_month=1_000)

    store.add_topup("user-1", 300)
    account = store.add_topup("user-1", 200)

    assert account.topup_tokens == 500
    assert account.limit == 1_500
    assert store.get_account("user-1") == account


@pytest.mark.parametrize(
    ("record", "patch"),
    [
        pytest.param("account", {"current_tokens_used": 0}, id="account-counter"),
        pytest.param("account", {"plan": "pro", "no_such_field": 1}, id="account-unknown"),
        pytest.param("ledger", {"reserved_tokens": 0}, id="ledger-legacy-hold"),
        pytest.param("ledger", {"reply": "x", "no_such_field": 1}, id="ledger-unknown"),
        pytest.param("turn", {"content": "x", "no_such_field": 1}, id="turn-unknown"),
    ],
)
def test_a_patch_of_a_field_that_cannot_be_patched_is_a_store_error_and_changes_nothing(
    store: UsageStore, record: str, patch: dict[str, Any]
) -> None:
    """A programming error (a counter, the legacy hold, an unknown name), answered 5xx so that
    Stripe retries once it is fixed; nothing is written, not even the valid fields beside it."""
    holding(store, 40, with_turn=True)
    before = (store.get_account("user-1"), store.get_ledger("req-1"), store.get_turn("req-1"))

    writes: dict[str, Callable[[], object]] = {
        "account": lambda: store.update_account("user-1", patch),  # type: ignore[arg-type]
        "ledger": lambda: store.settle("user-1", "req-1", 10, patch),  # type: ignore[arg-type]
        "turn": lambda: store.update_turn("req-1", patch),  # type: ignore[arg-type]
    }

    with pytest.raises(StoreError) as caught:
        writes[record]()

    assert caught.value.status >= 500
    after = (store.get_account("user-1"), store.get_ledger("req-1"), store.get_turn("req-1"))
    assert after == before


def test_an_empty_stripe_id_is_stored_as_none(store: UsageStore) -> None:
    """Cancelling with "" leaves no subscription id; the account lists among the unsubscribed."""
    make_account(store, "user-1")
    store.update_account("user-1", {"stripe_subscription_id": "sub_1"})

    cleared = store.update_account("user-1", {"stripe_subscription_id": ""})

    assert cleared.stripe_subscription_id is None
    page = store.list_accounts(AccountQuery(subscribed=False), 10, None)
    assert [account.user_id for account in page.items] == ["user-1"]


def test_create_account_under_the_row_id_of_another_user_is_a_store_error(
    store: UsageStore,
) -> None:
    """Only the same user's row answers a creation race; another user's is broken data."""
    make_account(store, "user-1")
    intruder = replace(new_account("user-2", load_default_plans().default, NOW), row_id="user-1")

    with pytest.raises(StoreError):
        store.create_account(intruder)

    assert store.get_account("user-2") is None


# -- the hard cap ------------------------------------------------------------------------------


def test_open_request_creates_the_entry_and_the_turn_and_holds_the_tokens(
    store: UsageStore,
) -> None:
    """One change: the entry in flight with its first hold, its turn, and the counter raised."""
    make_account(store, "user-1")
    entry = ledger_entry("user-1", "req-1", held_tokens=300)
    turn = new_turn("req-1")

    store.open_request(entry, 1_000, turn)

    assert store.get_ledger("req-1") == entry
    assert store.get_turn("req-1") == turn
    assert balanced(store) == 300


def test_open_request_up_to_exactly_the_limit_succeeds(store: UsageStore) -> None:
    """The limit is inclusive: used + hold == limit is allowed."""
    holding(store, 600)

    store.open_request(ledger_entry("user-1", "req-2", held_tokens=400), 1_000)

    assert balanced(store) == 1_000


def test_open_request_past_the_limit_raises_and_changes_nothing(store: UsageStore) -> None:
    """One token past the limit is refused with LimitReached: no entry, no turn, no hold."""
    holding(store, 600)

    with pytest.raises(LimitReached):
        store.open_request(
            ledger_entry("user-1", "req-2", held_tokens=401), 1_000, new_turn("req-2")
        )

    assert (store.get_ledger("req-2"), store.get_turn("req-2")) == (None, None)
    assert balanced(store) == 600


def test_open_request_holding_nothing_is_still_refused_past_the_limit(store: UsageStore) -> None:
    """A counter already above the limit (a lowered plan) refuses even an empty hold."""
    holding(store, 600)

    with pytest.raises(LimitReached):
        store.open_request(ledger_entry("user-1", "req-2"), 500)
    store.open_request(ledger_entry("user-1", "req-3"), 600)

    assert store.get_ledger("req-2") is None
    assert held(store, "req-3") == 0
    assert balanced(store) == 600


def test_open_request_twice_raises_already_exists_and_changes_nothing(
    store: UsageStore,
) -> None:
    """The request id is the claim: a second opening keeps the first entry, turn and hold."""
    holding(store, 100, with_turn=True)
    before = (store.get_ledger("req-1"), store.get_turn("req-1"))

    with pytest.raises(AlreadyExists):
        store.open_request(
            ledger_entry("user-1", "req-1", held_tokens=50, model="other"),
            1_000,
            new_turn("req-1", content="second"),
        )

    assert (store.get_ledger("req-1"), store.get_turn("req-1")) == before
    assert balanced(store) == 100


def test_open_request_replaces_the_turn_of_a_discarded_attempt(store: UsageStore) -> None:
    """A retry of a request the provider refused claims its id again, with a fresh turn."""
    holding(store, 100, with_turn=True)
    store.discard_request("user-1", "req-1", 100, {"status": TurnStatus.FAILED})
    retry = new_turn("req-1", created_at=NOW + timedelta(seconds=5))

    store.open_request(ledger_entry("user-1", "req-1", held_tokens=80), 1_000, retry)

    assert store.get_turn("req-1") == retry
    assert balanced(store) == 80


def test_open_request_for_an_unknown_user_raises_not_found(store: UsageStore) -> None:
    """Nothing is held for, and no entry created by, a user without an account."""
    with pytest.raises(NotFound):
        store.open_request(ledger_entry("nobody", "req-1", held_tokens=10), 1_000)

    assert store.get_ledger("req-1") is None
    assert store.get_account("nobody") is None


def test_hold_adds_to_the_counter_and_the_entry(store: UsageStore) -> None:
    """A later step's hold raises the counter and the entry's hold together."""
    holding(store, 300)

    store.hold("user-1", "req-1", 200, 1_000)

    assert held(store, "req-1") == 500
    assert balanced(store) == 500


def test_hold_past_the_limit_raises_and_changes_nothing(store: UsageStore) -> None:
    """One token past the limit is refused with LimitReached; counter and entry stay put."""
    holding(store, 600)

    with pytest.raises(LimitReached):
        store.hold("user-1", "req-1", 401, 1_000)

    assert held(store, "req-1") == 600
    assert balanced(store) == 600


@pytest.mark.parametrize("tokens", [0, 100])
def test_hold_without_a_ledger_entry_raises_not_found_and_holds_nothing(
    store: UsageStore, tokens: int
) -> None:
    """A hold that no entry records could never be given back, so none is taken."""
    make_account(store, "user-1")

    with pytest.raises(NotFound):
        store.hold("user-1", "req-missing", tokens, 1_000)

    assert balanced(store) == 0


def test_settle_charges_the_step_and_gives_back_the_rest(store: UsageStore) -> None:
    """The step's usage goes on the entry, its unused hold back to the counter, and the turn
    shows it, in one change; a later step settles on top."""
    holding(store, 500, with_turn=True)
    first = TokenUsage(input_tokens=300, output_tokens=20, steps=1)

    store.settle(
        "user-1",
        "req-1",
        180,
        step(first),
        {"status": TurnStatus.STREAMING, "content": "Hel", "usage": first},
    )

    entry = entry_of(store, "req-1")
    assert (entry.status, entry.held_tokens, entry.usage) == (LedgerStatus.RESERVED, 0, first)
    turn = store.get_turn("req-1")
    assert turn is not None
    assert (turn.status, turn.content, turn.usage) == (TurnStatus.STREAMING, "Hel", first)
    assert balanced(store) == 320

    store.hold("user-1", "req-1", 400, 1_000)
    both = first + TokenUsage(input_tokens=350, output_tokens=30, steps=1)
    store.settle("user-1", "req-1", 20, step(both, status=LedgerStatus.SETTLED))

    assert entry_of(store, "req-1").status is LedgerStatus.SETTLED
    assert balanced(store) == both.total_tokens == 700


def test_settle_sets_the_patched_fields_only(store: UsageStore) -> None:
    """A final patch sets status, model, usage, cost, reply and the estimate flag; the entry's
    id, user, period and start stay."""
    holding(store, 70)
    usage = TokenUsage(input_tokens=20, output_tokens=30, steps=1)
    later = NOW + timedelta(seconds=3)

    store.settle(
        "user-1",
        "req-1",
        20,
        step(
            usage,
            status=LedgerStatus.SETTLED,
            model="claude-haiku-4-5",
            cost_micro_usd=510,
            price_version="2026-11-01",
            reply="done",
            estimated=True,
            updated_at=later,
        ),
    )

    assert store.get_ledger("req-1") == replace(
        ledger_entry("user-1", "req-1"),
        status=LedgerStatus.SETTLED,
        model="claude-haiku-4-5",
        usage=usage,
        cost_micro_usd=510,
        price_version="2026-11-01",
        reply="done",
        estimated=True,
        updated_at=later,
    )
    assert balanced(store) == 50


def test_settle_leaves_the_hold_alone_when_the_patch_does_not_name_it(store: UsageStore) -> None:
    """Only the patch sets the entry's hold: giving back counter tokens changes no other field."""
    holding(store, 300)

    store.settle("user-1", "req-1", 100, {"reply": "partial"})

    entry = entry_of(store, "req-1")
    assert (entry.held_tokens, entry.reply, entry.status) == (300, "partial", LedgerStatus.RESERVED)
    assert used(store, "user-1") == 200


def test_settle_giving_back_more_than_the_counter_floors_at_zero(store: UsageStore) -> None:
    """An operator's correction lowered the counter under a request in flight: what the
    request gives back afterwards takes the counter to zero, never below."""
    holding(store, 300)
    store.record_adjustment(adjustment("fix-1"), -300)

    store.settle("user-1", "req-1", 250, step(TokenUsage(input_tokens=50, steps=1)))

    assert used(store, "user-1") == 0
    assert entry_of(store, "req-1").usage.total_tokens == 50


@pytest.mark.parametrize("release", [0, 40])
def test_settle_of_an_entry_no_longer_in_flight_raises_conflict_and_changes_nothing(
    store: UsageStore, release: int
) -> None:
    """A late settle after the cron reclaimed the entry is refused: the reclaim gave the hold
    back, and the entry, its turn and the counter stay as the reclaim left them."""
    holding(store, 300, with_turn=True)
    reclaim(store)
    before = (store.get_ledger("req-1"), store.get_turn("req-1"))

    with pytest.raises(Conflict):
        store.settle(
            "user-1",
            "req-1",
            release,
            step(TokenUsage(input_tokens=260, steps=1), status=LedgerStatus.SETTLED),
            {"status": TurnStatus.COMPLETED},
        )

    assert (store.get_ledger("req-1"), store.get_turn("req-1")) == before
    assert balanced(store) == 0


def test_a_late_settle_racing_the_reclaim_applies_exactly_one_of_them(store: UsageStore) -> None:
    """The request's own last settle and the cron's reclaim at once, eight times over: one of
    each pair applies, the other is a Conflict, and the hold is given back once."""
    make_account(store, "user-1", tokens_per_month=UNLIMITED)
    outcomes: list[str] = []
    lock = threading.Lock()

    def attempt(name: str, change: Callable[[], None]) -> None:
        try:
            change()
        except Conflict:
            name = "conflict"
        with lock:
            outcomes.append(name)

    for index in range(8):
        request_id = f"req-{index}"
        store.open_request(ledger_entry("user-1", request_id, held_tokens=500), UNLIMITED)
        usage = TokenUsage(input_tokens=300, steps=1)
        run_together(
            [
                partial(
                    attempt,
                    "settled",
                    partial(
                        store.settle,
                        "user-1",
                        request_id,
                        200,
                        step(usage, status=LedgerStatus.SETTLED),
                    ),
                ),
                partial(attempt, "reclaimed", partial(reclaim, store, request_id)),
            ]
        )

    assert outcomes.count("conflict") == 8
    assert balanced(store) == 300 * outcomes.count("settled")


def test_settle_of_an_unknown_request_raises_conflict_and_creates_nothing(
    store: UsageStore,
) -> None:
    """There is no entry in flight to settle; nothing is given back."""
    holding(store, 300)

    with pytest.raises(Conflict):
        store.settle("user-1", "req-unknown", 100, step(TokenUsage()))

    assert store.get_ledger("req-unknown") is None
    assert balanced(store) == 300


def test_holds_and_settles_keep_the_counter_equal_to_the_ledger(store: UsageStore) -> None:
    """Through a request's steps, each hold and each settle leaves counter == ledger total."""
    rng = random.Random(7)
    make_account(store, "user-1", tokens_per_month=UNLIMITED)
    charge(store, "user-1", "req-earlier", 69)
    store.open_request(ledger_entry("user-1", "req-1", held_tokens=400), UNLIMITED)
    hold, usage = 400, TokenUsage()
    for number in range(6):
        if number:
            hold = rng.randint(1, 400)
            store.hold("user-1", "req-1", hold, UNLIMITED)
            balanced(store)
        charged = rng.randint(0, hold)
        usage += TokenUsage(input_tokens=charged, steps=1)
        store.settle("user-1", "req-1", hold - charged, step(usage))
        balanced(store)

    store.settle("user-1", "req-1", 0, step(usage, status=LedgerStatus.SETTLED))
    assert balanced(store) == 69 + usage.total_tokens


def test_discard_request_gives_back_its_hold_and_forgets_it(store: UsageStore) -> None:
    """A request that charged nothing: its hold returns, its entry goes (a retry may take the
    id again), and its turn ends as told."""
    holding(store, 300, with_turn=True)

    store.discard_request("user-1", "req-1", 300, {"status": TurnStatus.FAILED})

    assert store.get_ledger("req-1") is None
    turn = store.get_turn("req-1")
    assert turn is not None
    assert turn.status is TurnStatus.FAILED
    assert balanced(store) == 0
    store.open_request(ledger_entry("user-1", "req-1", held_tokens=10), 1_000)
    assert balanced(store) == 10


@pytest.mark.parametrize("release", [0, 300])
def test_discard_request_of_an_entry_not_in_flight_keeps_it(
    store: UsageStore, release: int
) -> None:
    """An entry the cron reclaimed, or none at all, is left as it is and nothing is given back;
    the turn still ends as told."""
    holding(store, 300, with_turn=True)
    reclaim(store)
    charge(store, "user-1", "req-2", 50)
    before = store.get_ledger("req-1")

    store.discard_request("user-1", "req-1", release, {"status": TurnStatus.FAILED})
    store.discard_request("user-1", "req-unknown", release)

    assert store.get_ledger("req-1") == before
    turn = store.get_turn("req-1")
    assert turn is not None
    assert turn.status is TurnStatus.FAILED
    assert balanced(store) == 50


def test_negative_amounts_are_refused_and_change_nothing(store: UsageStore) -> None:
    """A negative hold, release or top-up is an error, before anything is written."""
    holding(store, 100)

    with pytest.raises(InvalidRequest):
        store.open_request(ledger_entry("user-1", "req-2", held_tokens=-50), 1_000)
    with pytest.raises(InvalidRequest):
        store.hold("user-1", "req-1", -50, 1_000)
    with pytest.raises(InvalidRequest):
        store.settle("user-1", "req-1", -50, step(TokenUsage()))
    with pytest.raises(InvalidRequest):
        store.discard_request("user-1", "req-1", -50)
    with pytest.raises(InvalidRequest):
        store.add_topup("user-1", -50)

    account = store.get_account("user-1")
    assert account is not None
    assert (account.current_tokens_used, account.topup_tokens) == (100, 0)
    assert entry_of(store, "req-1") == ledger_entry("user-1", "req-1", held_tokens=100)
    assert store.get_ledger("req-2") is None


def test_add_topup_for_an_unknown_user_raises_not_found(store: UsageStore) -> None:
    """Crediting a user without an account is an error, not an insert."""
    with pytest.raises(NotFound):
        store.add_topup("nobody", 10)

    assert store.get_account("nobody") is None


# -- the ledger --------------------------------------------------------------------------------


def test_ledger_entry_round_trips(store: UsageStore) -> None:
    """Every field of an opened entry reads back as written; an unknown id reads None."""
    make_account(store, "user-1")
    entry = ledger_entry(
        "user-1",
        "req-1",
        usage=token_usage(input=10, writes=8, reads=6, output=4, writes_1h=3, steps=2),
        held_tokens=70,
        estimated=True,
        cost_micro_usd=1234,
        price_version="2026-11-01",
        reply="Hello, world",
    )

    store.open_request(entry, UNLIMITED)

    assert store.get_ledger("req-1") == entry
    assert store.get_ledger("req-unknown") is None


def test_list_stale_reservations_pages_through_exactly_the_stale_ones(store: UsageStore) -> None:
    """Old ``reserved`` entries are listed once each across pages; fresh or finished ones never."""
    make_account(store, "user-1")
    make_account(store, "user-2")
    old = NOW - timedelta(hours=1)
    stale = {f"req-stale-{i}" for i in range(7)}
    for request_id in sorted(stale):
        store.open_request(ledger_entry("user-1", request_id, updated_at=old), UNLIMITED)
    store.open_request(ledger_entry("user-1", "req-fresh", updated_at=NOW), UNLIMITED)
    store.open_request(ledger_entry("user-1", "req-settled"), UNLIMITED)
    store.settle(
        "user-1", "req-settled", 0, step(TokenUsage(), status=LedgerStatus.SETTLED, updated_at=old)
    )
    store.open_request(ledger_entry("user-2", "req-reclaimed", updated_at=old), UNLIMITED)
    reclaim(store, "req-reclaimed", "user-2")

    seen: list[str] = []
    cursor: str | None = None
    pages = 0
    while True:
        page = store.list_stale_reservations(NOW - timedelta(minutes=10), 3, cursor)
        pages += 1
        seen.extend(entry.request_id for entry in page.items)
        assert len(page.items) <= 3
        if page.next_cursor is None:
            break
        cursor = page.next_cursor

    assert sorted(seen) == sorted(stale)
    assert pages >= 3


def test_ledger_total_sums_charged_and_held_tokens_of_one_period(store: UsageStore) -> None:
    """The total counts settled usage plus live holds, of this user and period only."""
    make_account(store, "user-1")
    make_account(store, "user-2")
    charge(store, "user-1", "req-settled", 150)
    store.open_request(ledger_entry("user-1", "req-held", held_tokens=45), UNLIMITED)
    charge(store, "user-2", "req-other-user", 1_000)
    february = store.get_account("user-1")
    assert february is not None
    store.update_account("user-1", {"period_start": datetime(2026, 2, 1, tzinfo=UTC)})
    charge(store, "user-1", "req-last-period", 999)
    store.update_account("user-1", {"period_start": MARCH})

    assert entry_of(store, "req-last-period").period_start == datetime(2026, 2, 1, tzinfo=UTC)
    assert store.ledger_total("user-1", MARCH) == 150 + 45
    assert store.ledger_total("user-1", APRIL) == 0


# -- turns and their Stop ----------------------------------------------------------------------


def test_a_turn_round_trips_and_takes_its_progress(store: UsageStore) -> None:
    """An opened turn reads back as written; progress sets the patched fields only."""
    make_account(store, "user-1")
    turn = new_turn("req-1")
    store.open_request(ledger_entry("user-1", "req-1"), UNLIMITED, turn)
    later = NOW + timedelta(seconds=2)
    progress: TurnPatch = {
        "status": TurnStatus.STREAMING,
        "content": "Hello, wor",
        "updated_at": later,
    }

    store.update_turn("req-1", progress)

    assert store.get_turn("req-1") == replace(
        turn, status=TurnStatus.STREAMING, content="Hello, wor", updated_at=later
    )
    assert store.get_turn("req-unknown") is None


def test_update_turn_of_an_unknown_turn_raises_not_found(store: UsageStore) -> None:
    """Progress of a turn nobody opened is an error and creates nothing."""
    with pytest.raises(NotFound):
        store.update_turn("req-unknown", {"content": "x"})

    assert store.get_turn("req-unknown") is None


def test_request_stop_is_recorded_once_and_per_turn(store: UsageStore) -> None:
    """A Stop is seen by its turn only; a second Stop changes nothing and is no error."""
    assert store.stop_requested("req-1") is False

    store.request_stop("req-1", "user-1", NOW)
    store.request_stop("req-1", "user-1", NOW + timedelta(seconds=1))

    assert store.stop_requested("req-1") is True
    assert store.stop_requested("req-2") is False


# -- resets ------------------------------------------------------------------------------------


def test_apply_reset_moves_usage_to_lifetime_and_consumes_topup(store: UsageStore) -> None:
    """The stored result equals the domain's reference ``apply_reset`` of the same plan."""
    make_account(store, "user-1", tokens_per_month=1_000)
    store.add_topup("user-1", 500)
    charge(store, "user-1", "req-1", 1_300)
    snapshot = store.get_account("user-1")
    assert snapshot is not None
    reset = plan_reset(snapshot, APRIL, MAY, NOW)
    assert reset is not None

    result = store.apply_reset(reset, snapshot.period_start)

    expected = apply_reset(snapshot, reset)
    assert result is not None
    assert result.current_tokens_used == expected.current_tokens_used == 0
    assert result.lifetime_tokens_used == expected.lifetime_tokens_used == 1_300
    assert result.topup_tokens == expected.topup_tokens == 200
    assert (result.period_start, result.period_end) == (APRIL, MAY)
    assert result.last_token_reset_at == NOW
    assert store.get_account("user-1") == result


def test_apply_reset_twice_applies_once(store: UsageStore) -> None:
    """Replaying a reset (a duplicate webhook, the cron) returns None and changes nothing."""
    snapshot, reset = charged_and_due(store)
    first = store.apply_reset(reset, snapshot.period_start)

    assert store.apply_reset(reset, snapshot.period_start) is None
    assert store.get_account("user-1") == first


def test_apply_reset_never_moves_a_period_backwards(store: UsageStore) -> None:
    """A reset to a period not after the stored one is refused even when the guard matches."""
    make_account(store, "user-1")
    store.update_account("user-1", {"period_start": APRIL, "period_end": MAY})
    charge(store, "user-1", "req-1", 300)
    before = store.get_account("user-1")
    assert before is not None
    backwards = plan_reset(
        replace(before, period_start=datetime(2026, 1, 1, tzinfo=UTC)), MARCH, APRIL, NOW
    )
    assert backwards is not None

    assert store.apply_reset(backwards, APRIL) is None
    assert store.apply_reset(backwards, MARCH) is None
    assert store.get_account("user-1") == before


def test_apply_reset_from_a_stale_snapshot_changes_nothing(store: UsageStore) -> None:
    """A reset planned before another reset landed is refused, even though it is forward."""
    make_account(store, "user-1")
    charge(store, "user-1", "req-1", 300)
    snapshot = store.get_account("user-1")
    assert snapshot is not None
    to_april = plan_reset(snapshot, APRIL, MAY, NOW)
    to_may = plan_reset(snapshot, MAY, datetime(2026, 6, 1, tzinfo=UTC), NOW)
    assert to_april is not None
    assert to_may is not None
    applied = store.apply_reset(to_april, snapshot.period_start)

    assert store.apply_reset(to_may, snapshot.period_start) is None
    assert store.get_account("user-1") == applied


def test_a_request_settled_between_planning_and_applying_a_reset_counts_in_the_old_period(
    store: UsageStore,
) -> None:
    """The store closes the period on the row as it stands when the reset applies, not on the
    snapshot: a request that ended in March meanwhile is March's usage, and nothing of it stays
    on April's counter."""
    snapshot, reset = charged_and_due(store)
    charge(store, "user-1", "req-late", 120)

    result = store.apply_reset(reset, snapshot.period_start)

    assert result is not None
    assert (result.current_tokens_used, result.lifetime_tokens_used) == (0, 420)
    assert store.ledger_total("user-1", MARCH) == 420
    assert store.ledger_total("user-1", APRIL) == 0


def ended_in_april(store: UsageStore, *, release: int, total: int) -> int:
    """req-2 ends settled at ``total`` tokens, giving ``release`` back; checked to be counted in
    April alone, the answer is what March's ledger keeps."""
    ended = step(TokenUsage(input_tokens=total, steps=1), status=LedgerStatus.SETTLED)
    store.settle("user-1", "req-2", release, ended)
    assert in_april(store) == total
    return store.ledger_total("user-1", MARCH)


def reset_to_april(store: UsageStore) -> Account:
    return builders.reset_now(store, "user-1", APRIL, MAY)


def in_april(store: UsageStore) -> int:
    """user-1's counter, once checked to equal April's ledger with nothing left held."""
    counter = used(store, "user-1")
    assert store.ledger_total("user-1", APRIL) == counter
    account = store.get_account("user-1")
    assert account is not None
    assert account.period_start == APRIL
    return counter


def test_a_request_opened_between_planning_and_applying_a_reset_ends_in_the_new_period(
    store: UsageStore,
) -> None:
    """The reset's snapshot is read, then a request opens in March holding 1,000, then the reset
    applies, then the request settles at 640: its tokens are April's, on the counter and in the
    ledger; March keeps what had ended in it."""
    snapshot, reset = charged_and_due(store)
    store.open_request(ledger_entry("user-1", "req-2", held_tokens=1_000), UNLIMITED)

    result = store.apply_reset(reset, snapshot.period_start)

    assert result is not None
    assert (result.current_tokens_used, result.lifetime_tokens_used) == (1_000, 300)
    assert entry_of(store, "req-2").period_start == APRIL
    assert in_april(store) == 1_000
    assert ended_in_april(store, release=360, total=640) == 300


def test_a_tool_loop_across_a_reset_takes_its_later_holds_in_the_new_period(
    store: UsageStore,
) -> None:
    """A request in flight before the snapshot, its first step settled, is carried over whole;
    its next hold and its last settle land in April beside it."""
    make_account(store, "user-1")
    charge(store, "user-1", "req-1", 200)
    store.open_request(ledger_entry("user-1", "req-2", held_tokens=400), UNLIMITED)
    store.settle("user-1", "req-2", 100, step(TokenUsage(input_tokens=300, steps=1)))

    result = reset_to_april(store)

    assert (result.current_tokens_used, result.lifetime_tokens_used) == (300, 200)
    store.hold("user-1", "req-2", 500, UNLIMITED)
    assert in_april(store) == 800
    assert ended_in_april(store, release=150, total=650) == 200


def test_a_request_that_read_the_account_before_a_reset_ends_in_the_new_period(
    store: UsageStore,
) -> None:
    """The chat read March, the reset applied, then its request opened with March on its entry:
    its hold is on April's counter, and the settle that ends it stamps April."""
    charged_and_due(store)
    reset_to_april(store)

    store.open_request(ledger_entry("user-1", "req-2", held_tokens=1_000), UNLIMITED)
    assert entry_of(store, "req-2").period_start == MARCH
    assert ended_in_april(store, release=360, total=640) == 300
    assert entry_of(store, "req-2").period_start == APRIL


def test_the_reclaim_of_a_request_that_died_across_a_reset_gives_back_in_the_new_period(
    store: UsageStore,
) -> None:
    """A request opened on a stale read and never settled: the cron's reclaim ends it in the
    period its charged step is counted in."""
    charged_and_due(store)
    reset_to_april(store)
    store.open_request(ledger_entry("user-1", "req-2", held_tokens=700), UNLIMITED)
    store.settle("user-1", "req-2", 450, step(TokenUsage(input_tokens=250, steps=1)))
    store.hold("user-1", "req-2", 450, UNLIMITED)

    reclaim(store, "req-2")

    assert entry_of(store, "req-2").status is LedgerStatus.RECLAIMED
    assert in_april(store) == 250


_user_ids = (f"user-prop-{index}" for index in range(10**9))


@settings(
    max_examples=20,
    deadline=None,
    # One store serves every example; each example works on a user of its own.
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    plan_tokens=st.integers(min_value=0, max_value=5_000),
    addon=st.integers(min_value=0, max_value=1_000),
    topup=st.integers(min_value=0, max_value=1_000),
    charged=st.integers(min_value=0, max_value=8_000),
    period=periods(),
)
def test_store_reset_matches_the_reference_and_applies_at_most_once(
    store: UsageStore,
    *,
    plan_tokens: int,
    addon: int,
    topup: int,
    charged: int,
    period: tuple[datetime, datetime],
) -> None:
    """For any state and period: the store does what ``apply_reset`` does, once, only forward."""
    user_id = next(_user_ids)
    make_account(store, user_id, tokens_per_month=plan_tokens)
    store.update_account(user_id, {"addon_tokens": addon})
    if topup:
        store.add_topup(user_id, topup)
    charge(store, user_id, f"req-{user_id}", charged)
    snapshot = store.get_account(user_id)
    assert snapshot is not None
    reset = plan_reset(snapshot, period[0], period[1], NOW)
    if reset is None:
        # Not forward: even an explicit plan for it changes nothing.
        backwards = ResetPlan(user_id, period[0], period[1], NOW)
        assert store.apply_reset(backwards, snapshot.period_start) is None
        assert store.get_account(user_id) == snapshot
        return

    once = store.apply_reset(reset, snapshot.period_start)
    twice = store.apply_reset(reset, snapshot.period_start)

    assert once is not None
    assert twice is None
    assert store.get_account(user_id) == once
    assert once == replace(apply_reset(snapshot, reset), row_id=once.row_id)


def test_a_reset_goes_through_its_claim(store: UsageStore) -> None:
    """While another worker holds the reset's claim the reset does nothing; once that worker
    gives it up without effect, the reset applies."""
    snapshot, reset = charged_and_due(store)
    claim = reset_claim(reset)
    held = store.claim_event(claim.key, claim.kind, claim.object_id, NOW, claim.lease)
    assert held is ClaimOutcome.CLAIMED

    assert store.apply_reset(reset, snapshot.period_start) is None
    assert store.get_account("user-1") == snapshot

    store.release_event(claim.key)
    applied = store.apply_reset(reset, snapshot.period_start)
    assert applied is not None
    assert (applied.period_start, applied.lifetime_tokens_used) == (APRIL, 300)


def test_a_reset_whose_completion_failed_is_applied_once(
    store: UsageStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The change landed but recording it failed, leaving the claim pending as a dead worker
    would: neither a retry during the lease nor the takeover after it changes anything more."""
    snapshot, reset = charged_and_due(store)

    def fail(event_id: str, outcome: str, now: datetime) -> None:
        raise StoreError("recording the outcome failed")

    monkeypatch.setattr(store, "complete_event", fail)
    with pytest.raises(StoreError):
        store.apply_reset(reset, snapshot.period_start)
    monkeypatch.undo()
    applied = store.get_account("user-1")
    assert applied is not None
    assert (applied.period_start, applied.lifetime_tokens_used) == (APRIL, 300)

    lease = reset_claim(reset).lease
    assert lease is not None
    for at in (NOW + timedelta(seconds=1), NOW + lease + timedelta(seconds=1)):
        assert store.apply_reset(replace(reset, reset_at=at), snapshot.period_start) is None
        assert store.get_account("user-1") == applied


# -- listing accounts --------------------------------------------------------------------------


def _collect(store: UsageStore, query: AccountQuery, page_size: int) -> list[str]:
    user_ids: list[str] = []
    cursor: str | None = None
    while True:
        page = store.list_accounts(query, page_size, cursor)
        assert len(page.items) <= page_size
        user_ids.extend(account.user_id for account in page.items)
        if page.next_cursor is None:
            return user_ids
        cursor = page.next_cursor


@pytest.mark.parametrize(
    "query",
    [
        pytest.param(AccountQuery(), id="all"),
        pytest.param(AccountQuery(subscribed=True), id="subscribed"),
        pytest.param(AccountQuery(subscribed=False), id="demo"),
        pytest.param(AccountQuery(period_start_before=APRIL), id="period-started-before"),
        pytest.param(AccountQuery(period_end_before=NOW), id="period-ended-before"),
        pytest.param(
            AccountQuery(subscribed=True, period_end_before=NOW), id="subscribed-and-ended"
        ),
        pytest.param(
            AccountQuery(subscribed=False, period_start_before=APRIL), id="demo-and-started"
        ),
    ],
)
def test_list_accounts_pages_through_exactly_the_matching_accounts(
    store: UsageStore, query: AccountQuery
) -> None:
    """Over more rows than a page, each matching account is listed once and no other."""
    accounts: list[Account] = []
    for index in range(13):
        user_id = f"user-{index:02d}"
        make_account(store, user_id)
        patch: dict[str, object] = {}
        if index % 2:
            patch["stripe_subscription_id"] = f"sub_{index}"
        if index % 3 == 0:
            patch["period_start"] = APRIL
            patch["period_end"] = MAY
        elif index % 3 == 1:
            patch["period_end"] = NOW - timedelta(days=1)
        accounts.append(store.update_account(user_id, patch))  # type: ignore[arg-type]

    def matches(account: Account) -> bool:
        if query.subscribed is not None and account.has_subscription != query.subscribed:
            return False
        if query.period_start_before and not account.period_start < query.period_start_before:
            return False
        end_before = query.period_end_before
        return not end_before or (
            account.period_end is not None and account.period_end < end_before
        )

    listed = _collect(store, query, page_size=4)

    assert sorted(listed) == sorted(account.user_id for account in accounts if matches(account))
    assert len(listed) == len(set(listed))


def test_a_page_limit_below_one_is_a_store_error(store: UsageStore) -> None:
    """The page size comes from the code, never from a request: a bad one is a 5xx."""
    with pytest.raises(StoreError):
        store.list_accounts(AccountQuery(), 0, None)
    with pytest.raises(StoreError):
        store.list_stale_reservations(NOW, 0, None)


def test_list_accounts_order_is_stable(store: UsageStore) -> None:
    """Paging twice yields the same sequence."""
    for index in range(6):
        make_account(store, f"user-{index}")

    assert _collect(store, AccountQuery(), 4) == _collect(store, AccountQuery(), 4)


# -- event claims ------------------------------------------------------------------------------


def test_claim_then_complete_makes_the_event_done(store: UsageStore) -> None:
    """The first claim wins; a claim during the lease waits; a completed event is done for good."""
    assert store.claim_event("evt_1", "invoice.paid", "in_1", NOW, LEASE) is ClaimOutcome.CLAIMED
    assert (
        store.claim_event("evt_1", "invoice.paid", "in_1", NOW + timedelta(seconds=1), LEASE)
        is ClaimOutcome.IN_PROGRESS
    )

    store.complete_event("evt_1", "reset", NOW + timedelta(seconds=2))

    later = NOW + timedelta(days=1)
    assert store.claim_event("evt_1", "invoice.paid", "in_1", later, LEASE) is ClaimOutcome.DONE


def test_released_claim_can_be_claimed_again(store: UsageStore) -> None:
    """Releasing a claim after a failed effect lets the retry claim it at once."""
    store.claim_event("evt_1", "invoice.paid", "in_1", NOW, LEASE)

    store.release_event("evt_1")

    soon = NOW + timedelta(seconds=1)
    assert store.claim_event("evt_1", "invoice.paid", "in_1", soon, LEASE) is ClaimOutcome.CLAIMED


def test_expired_claim_is_taken_over_once(store: UsageStore) -> None:
    """A claim pending past its lease (a dead worker) is taken over, which starts a new lease."""
    store.claim_event("evt_1", "invoice.paid", "in_1", NOW, LEASE)
    within = NOW + LEASE - timedelta(seconds=1)
    after = NOW + LEASE + timedelta(seconds=1)

    assert store.claim_event("evt_1", "t", "in_1", within, LEASE) is ClaimOutcome.IN_PROGRESS
    assert store.claim_event("evt_1", "t", "in_1", after, LEASE) is ClaimOutcome.CLAIMED
    assert (
        store.claim_event("evt_1", "t", "in_1", after + timedelta(seconds=1), LEASE)
        is ClaimOutcome.IN_PROGRESS
    )


def test_claims_of_different_events_are_independent(store: UsageStore) -> None:
    """Completing one event does not affect another."""
    store.claim_event("evt_1", "invoice.paid", "in_1", NOW, LEASE)
    store.complete_event("evt_1", "reset", NOW)

    assert store.claim_event("evt_2", "invoice.paid", "in_1", NOW, LEASE) is ClaimOutcome.CLAIMED


def test_releasing_a_completed_claim_keeps_it_done(store: UsageStore) -> None:
    """A release after the completion (a slow worker's cleanup) must not let a duplicate of the
    event apply its effect again."""
    store.claim_event("evt_1", "invoice.paid", "in_1", NOW, LEASE)
    store.complete_event("evt_1", "reset", NOW)

    store.release_event("evt_1")

    later = NOW + timedelta(days=1)
    assert store.claim_event("evt_1", "invoice.paid", "in_1", later, LEASE) is ClaimOutcome.DONE


def test_a_claim_without_a_lease_is_never_taken_over(store: UsageStore) -> None:
    """A top-up's claim: its holder may have credited before dying, so it stays in progress."""
    assert store.claim_event("topup_1", "topup", "cs_1", NOW, None) is ClaimOutcome.CLAIMED

    years_later = NOW + timedelta(days=3650)
    assert store.claim_event("topup_1", "topup", "cs_1", years_later, None) is (
        ClaimOutcome.IN_PROGRESS
    )
    store.complete_event("topup_1", "credited", years_later)
    assert store.claim_event("topup_1", "topup", "cs_1", years_later, None) is ClaimOutcome.DONE


def test_an_outcome_is_recorded_even_when_its_claim_was_released(store: UsageStore) -> None:
    """A worker that completes after its claim was dropped still makes the event done."""
    store.claim_event("evt_1", "invoice.paid", "in_1", NOW, LEASE)
    store.release_event("evt_1")

    store.complete_event("evt_1", "reset", NOW)

    assert store.claim_event("evt_1", "invoice.paid", "in_1", NOW, LEASE) is ClaimOutcome.DONE


# -- payments and top-up removal ---------------------------------------------------------------


def paid(stripe_id: str, kind: PaymentKind, amount: int, **fields: Any) -> Payment:
    """A payment of ``user-1`` in US cents at ``NOW``; ``fields`` add the kind's own."""
    return Payment(stripe_id, kind, "user-1", amount, "usd", NOW, **fields)


INVOICE_PAID = paid(
    "in_1S2kWqLkdIwHu7ixV2cXyPqA",
    PaymentKind.INVOICE,
    900,
    customer_id="cus_1",
    subscription_id="sub_1",
    billing_reason="subscription_cycle",
    period_start=MARCH,
    period_end=APRIL,
    charges=(("price_addon", 3), ("price_starter", 1)),
)
# A checkout session id is longer than a row id may be.
TOPUP_PAID = paid(
    "cs_test_b1Q9ZkT4mXyR3vN8pWq2LsD6fHj0KcE5uAo7GiBtp",
    PaymentKind.TOPUP,
    500,
    payment_intent="pi_3S2kZxLkdIwHu7ix1Tp9Qa3d",
    tokens=100_000,
)


def test_a_payment_round_trips_and_is_recorded_once(store: UsageStore) -> None:
    """Recording keys a payment by its Stripe id; a second record keeps the first as it was."""
    first = store.record_payment(INVOICE_PAID)
    again = store.record_payment(replace(INVOICE_PAID, amount=1))

    assert (first, again) == (True, False)
    assert store.get_payment(INVOICE_PAID.stripe_id) == INVOICE_PAID
    assert store.get_payment("in_unknown") is None


def test_a_top_up_payment_is_found_by_its_payment_intent(store: UsageStore) -> None:
    """A refund names the payment intent: it finds the top-up it paid for, with no period."""
    store.record_payment(TOPUP_PAID)
    store.record_payment(INVOICE_PAID)

    assert store.find_payment_by_intent("pi_3S2kZxLkdIwHu7ix1Tp9Qa3d") == TOPUP_PAID
    assert store.find_payment_by_intent("pi_other") is None


def test_update_payment_sets_the_revoked_tokens(store: UsageStore) -> None:
    """The tokens a refund took back are kept on the top-up's record."""
    store.record_payment(TOPUP_PAID)

    updated = store.update_payment(TOPUP_PAID.stripe_id, {"tokens_revoked": 25_000})

    assert updated == replace(TOPUP_PAID, tokens_revoked=25_000)
    assert store.get_payment(TOPUP_PAID.stripe_id) == updated


def test_update_payment_of_an_unknown_payment_raises_not_found(store: UsageStore) -> None:
    """There is nothing to revoke on a payment never recorded."""
    with pytest.raises(NotFound):
        store.update_payment("cs_unknown", {"tokens_revoked": 1})


def test_a_payment_patch_of_a_field_that_cannot_be_patched_is_a_store_error(
    store: UsageStore,
) -> None:
    """Only the revoked tokens change after recording: the revenue is what was paid."""
    store.record_payment(INVOICE_PAID)

    with pytest.raises(StoreError):
        store.update_payment(INVOICE_PAID.stripe_id, {"amount": 0})  # type: ignore[typeddict-unknown-key]

    assert store.get_payment(INVOICE_PAID.stripe_id) == INVOICE_PAID


def test_list_payments_pages_through_exactly_one_month(store: UsageStore) -> None:
    """A month's payments: from its first instant, up to (not including) the next month's."""
    paid = {
        "before": MARCH - timedelta(milliseconds=1),
        "first": MARCH,
        "mid": NOW,
        "last": APRIL - timedelta(milliseconds=1),
        "after": APRIL,
    }
    for index, (name, when) in enumerate(paid.items()):
        store.record_payment(replace(INVOICE_PAID, stripe_id=f"in_{index}_{name}", paid_at=when))

    seen: list[str] = []
    cursor: str | None = None
    while True:
        page = store.list_payments(MARCH, APRIL, 2, cursor)
        seen += [payment.stripe_id for payment in page.items]
        cursor = page.next_cursor
        if cursor is None:
            break

    assert seen == ["in_1_first", "in_2_mid", "in_3_last"]


def test_remove_topup_takes_what_is_left_and_never_the_plan(store: UsageStore) -> None:
    """Removing more top-up than is left empties it; the plan's and add-ons' tokens stay."""
    make_account(store, "user-1")
    store.update_account("user-1", {"addon_tokens": 2_000})
    store.add_topup("user-1", 3_000)

    partly = store.remove_topup("user-1", 1_000)
    emptied = store.remove_topup("user-1", 10_000)
    again = store.remove_topup("user-1", 5)

    assert (partly.topup_tokens, emptied.topup_tokens, again.topup_tokens) == (2_000, 0, 0)
    assert (again.max_tokens_per_month, again.addon_tokens) == (1_000, 2_000)


def test_remove_topup_refuses_negative_amounts_and_unknown_users(store: UsageStore) -> None:
    """A negative removal would credit; a user without an account has nothing to remove."""
    make_account(store, "user-1")
    store.add_topup("user-1", 10)

    with pytest.raises(InvalidRequest):
        store.remove_topup("user-1", -5)
    with pytest.raises(NotFound):
        store.remove_topup("nobody", 5)

    account = store.get_account("user-1")
    assert account is not None
    assert account.topup_tokens == 10


def test_a_pending_raise_round_trips_and_clears(store: UsageStore) -> None:
    """What a paid invoice will grant is kept on the account until it is granted or dropped."""
    make_account(store, "user-1")

    pending = store.update_account(
        "user-1",
        {
            "pending_plan": "pro",
            "pending_tokens_per_month": 200_000,
            "pending_addon_tokens": 30_000,
            "pending_charges": (("price_pro", 1), ("price_addon", 3)),
        },
    )
    cleared = store.update_account(
        "user-1",
        {
            "pending_plan": None,
            "pending_tokens_per_month": 0,
            "pending_addon_tokens": 0,
            "pending_charges": (),
        },
    )

    assert (pending.pending_plan, pending.pending_tokens_per_month) == ("pro", 200_000)
    assert pending.pending_charges == (("price_pro", 1), ("price_addon", 3))
    assert store.get_account("user-1") == cleared
    assert (cleared.pending_plan, cleared.pending_charges) == (None, ())


# -- concurrency -------------------------------------------------------------------------------

CONCURRENT_LIMIT = 3_000


def _hold_and_settle(
    store: UsageStore, user_id: str, request_id: str, rounds: int, seed: int
) -> int:
    """Open one request, then hold random amounts and settle each to part of it, as a chat's
    steps do; the total charged."""
    rng = random.Random(seed)
    opened = False
    usage = TokenUsage()
    for _ in range(rounds):
        amount = rng.randint(1, 200)
        try:
            if opened:
                store.hold(user_id, request_id, amount, CONCURRENT_LIMIT)
            else:
                entry = ledger_entry(user_id, request_id, held_tokens=amount)
                store.open_request(entry, CONCURRENT_LIMIT)
                opened = True
        except LimitReached:
            continue
        charged = rng.randint(0, amount)
        usage += TokenUsage(input_tokens=charged, steps=1)
        store.settle(user_id, request_id, amount - charged, step(usage))
    return usage.total_tokens


def test_concurrent_requests_never_pass_the_limit_nor_lose_updates(store: UsageStore) -> None:
    """32 threads holding and settling against one user end with used <= limit and
    used == sum charged == the ledger's total."""
    make_account(store, "user-1", tokens_per_month=CONCURRENT_LIMIT)
    barrier = threading.Barrier(32)
    charged: list[int] = []
    errors: list[BaseException] = []

    def worker(index: int) -> None:
        barrier.wait()
        try:
            charged.append(_hold_and_settle(store, "user-1", f"req-{index}", 6, index))
        except BaseException as exc:  # surfaced below: a thread cannot fail the test itself
            errors.append(exc)

    run_together([partial(worker, index) for index in range(32)])

    assert errors == []
    final = used(store, "user-1")
    assert final <= CONCURRENT_LIMIT
    assert final == sum(charged)
    assert store.ledger_total("user-1", MARCH) == final


def _process_worker(path: str, index: int) -> int:
    return _hold_and_settle(SQLiteStore(path), "user-1", f"req-{index}", 25, index)


@pytest.mark.slow
def test_sqlite_requests_from_several_processes_never_pass_the_limit(tmp_path: Path) -> None:
    """Four processes sharing one SQLite file end with used <= limit and used == sum charged."""
    path = str(tmp_path / "metering.sqlite3")
    store = SQLiteStore(path)
    make_account(store, "user-1", tokens_per_month=CONCURRENT_LIMIT)

    with multiprocessing.get_context("spawn").Pool(4) as pool:
        charged = pool.starmap(_process_worker, [(path, index) for index in range(4)])

    final = used(store, "user-1")
    assert final <= CONCURRENT_LIMIT
    assert final == sum(charged)
    assert store.ledger_total("user-1", MARCH) == final


def test_list_ledger_pages_through_exactly_the_entries_created_in_a_month(
    store: UsageStore,
) -> None:
    """A month's ledger: entries created from its first instant, up to (not including) April."""
    make_account(store, "user-1", tokens_per_month=UNLIMITED)
    created = {
        "before": MARCH - timedelta(milliseconds=1),
        "first": MARCH,
        "mid": NOW,
        "last": APRIL - timedelta(milliseconds=1),
        "after": APRIL,
    }
    for index, (name, when) in enumerate(created.items()):
        entry = ledger_entry("user-1", f"req-{index}-{name}", created_at=when, updated_at=when)
        store.open_request(entry, UNLIMITED)

    seen: list[str] = []
    cursor: str | None = None
    while True:
        page = store.list_ledger(MARCH, APRIL, 2, cursor)
        seen += [entry.request_id for entry in page.items]
        cursor = page.next_cursor
        if cursor is None:
            break

    assert seen == ["req-1-first", "req-2-mid", "req-3-last"]


# -- accounts with usage, resumable walks and operators' adjustments ---------------------------


def test_list_accounts_with_usage_lists_exactly_the_accounts_whose_counter_is_above_zero(
    store: UsageStore,
) -> None:
    """Settled usage and a hold in flight both count; a counter of 0 does not, whatever the
    lifetime counter or the top-up balance say."""
    for index in range(9):
        make_account(store, f"user-{index}")
    charge(store, "user-1", "settled", 30)
    builders.charge(store, "user-4", "in-flight", 5, NOW, settled=False)
    charge(store, "user-7", "settled-7", 1)
    store.add_topup("user-2", 500)

    listed = _collect(store, AccountQuery(with_usage=True), page_size=2)

    assert listed == ["user-1", "user-4", "user-7"]


def test_a_walk_resumed_at_any_item_cursor_lists_exactly_the_rest(store: UsageStore) -> None:
    """Each item of a page names the cursor after it: stopping after any item and resuming
    there, in a later call with the same filter, misses nothing and repeats nothing."""
    for index in range(7):
        make_account(store, f"user-{index}")
    everyone = _collect(store, AccountQuery(), page_size=3)
    first = store.list_accounts(AccountQuery(), 3, None)
    assert len(first.item_cursors) == len(first.items) == 3
    assert first.item_cursors[-1] == first.next_cursor

    for position, resume_at in enumerate(first.item_cursors):
        rest: list[str] = []
        cursor: str | None = resume_at
        while cursor is not None:
            page = store.list_accounts(AccountQuery(), 3, cursor)
            assert len(page.item_cursors) == len(page.items)
            rest += [account.user_id for account in page.items]
            cursor = page.next_cursor
        assert rest == everyone[position + 1 :]


def test_a_cursor_is_kept_per_walk_until_cleared(store: UsageStore) -> None:
    """Saved positions read back, are replaced by the next save, are independent per name, and
    a walk cleared (or never saved) starts from the first row."""
    assert store.get_cursor("cron.reconciliation") is None

    store.save_cursor("cron.reconciliation", "first")
    store.save_cursor("cron.reconciliation", "second")
    store.save_cursor("cron.stripe-lookups", "elsewhere")

    assert store.get_cursor("cron.reconciliation") == "second"
    assert store.get_cursor("cron.stripe-lookups") == "elsewhere"
    store.save_cursor("cron.reconciliation", None)
    store.save_cursor("never-saved", None)
    assert store.get_cursor("cron.reconciliation") is None
    assert store.get_cursor("never-saved") is None
    assert store.get_cursor("cron.stripe-lookups") == "elsewhere"


def adjustment(request_id: str, user_id: str = "user-1") -> LedgerEntry:
    return ledger_entry(user_id, request_id, status=LedgerStatus.ADJUSTMENT, reply='{"fix":1}')


@pytest.mark.parametrize(("tokens", "expected"), [(250, 550), (-120, 180), (-1_000, 0)])
def test_an_adjustment_moves_the_counter_and_leaves_the_ledger_total(
    store: UsageStore, tokens: int, expected: int
) -> None:
    """Up without a limit, down never below zero; the record counts nothing in the ledger."""
    make_account(store, "user-1", tokens_per_month=300)
    charge(store, "user-1", "req-1", 300)

    store.record_adjustment(adjustment("fix-1"), tokens)

    assert used(store, "user-1") == expected
    assert store.ledger_total("user-1", MARCH) == 300
    recorded = entry_of(store, "fix-1")
    assert (recorded.status, recorded.held_tokens, recorded.usage) == (
        LedgerStatus.ADJUSTMENT,
        0,
        TokenUsage(),
    )
    assert recorded.reply == '{"fix":1}'


def test_an_adjustment_recorded_twice_moves_the_counter_once(store: UsageStore) -> None:
    """Its id is its claim: the second one raises AlreadyExists and changes nothing."""
    make_account(store, "user-1")
    charge(store, "user-1", "req-1", 100)
    store.record_adjustment(adjustment("fix-1"), -40)

    with pytest.raises(AlreadyExists):
        store.record_adjustment(adjustment("fix-1"), -40)

    assert used(store, "user-1") == 60


def test_an_adjustment_for_an_unknown_user_raises_not_found_and_records_nothing(
    store: UsageStore,
) -> None:
    with pytest.raises(NotFound):
        store.record_adjustment(adjustment("fix-1", user_id="nobody"), 10)

    assert store.get_ledger("fix-1") is None
