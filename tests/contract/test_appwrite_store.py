"""What the shared store contract cannot see of the Appwrite adapter: row ids, legacy rows,
error translation and the wire calls it makes, against the emulated Appwrite."""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable, Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from appwrite.exception import AppwriteException
from hypothesis import given, settings
from hypothesis import strategies as st
from metering.account import Account, ResetPlan, new_account, plan_reset
from metering.adapters.appwrite_store import AppwriteStore
from metering.codec import ROW_ID, row_key
from metering.errors import AlreadyExists, Conflict, NotFound, StoreError
from metering.ledger import LedgerPatch, LedgerStatus
from metering.plans import load_default_plans
from metering.ports import AccountQuery, ClaimOutcome
from metering.tokens import TokenUsage
from metering.turns import Turn, TurnStatus

from tests.support import builders
from tests.support.appwrite_emulator import AppwriteEmulator, emulated_appwrite
from tests.support.builders import MARCH, NOW, ledger_entry
from tests.support.threads import run_together

APRIL = datetime(2026, 4, 1, tzinfo=UTC)
LEASE = timedelta(minutes=5)


@pytest.fixture
def emulator() -> Iterator[AppwriteEmulator]:
    with emulated_appwrite() as running:
        yield running


@pytest.fixture
def ticking() -> Iterator[AppwriteEmulator]:
    """An emulator whose clock moves a millisecond at every reading: changes made one after
    the other never share the server's time, as they may on a fast machine."""
    ticks = itertools.count()
    with emulated_appwrite(clock=lambda: NOW + timedelta(milliseconds=next(ticks))) as running:
        yield running


@pytest.fixture
def store(emulator: AppwriteEmulator) -> AppwriteStore:
    return AppwriteStore.connect(emulator.store_settings(), emulator.api_key)


def starter(store: AppwriteStore, user_id: str) -> None:
    store.create_account(new_account(user_id, load_default_plans().get("starter"), NOW))


def holding(store: AppwriteStore, request_id: str, tokens: int, turn: bool = False) -> None:
    """user-1 on Starter, and ``request_id``'s entry in flight holding ``tokens`` of its
    50,000 (with its turn, when ``turn``)."""
    starter(store, "user-1")
    opened = new_turn(request_id) if turn else None
    store.open_request(ledger_entry("user-1", request_id, held_tokens=tokens), 50_000, opened)


def new_turn(request_id: str) -> Turn:
    return Turn(request_id, "user-1", TurnStatus.PENDING, NOW, NOW)


def counter_and_ledger(store: AppwriteStore) -> tuple[int, int]:
    account = store.get_account("user-1")
    assert account is not None
    return account.current_tokens_used, store.ledger_total("user-1", MARCH)


def due_reset(
    store: AppwriteStore, tokens: int, period_end: datetime | None
) -> tuple[Account, ResetPlan]:
    """user-1 on Starter with ``tokens`` charged in March, and the reset of that snapshot to
    April."""
    starter(store, "user-1")
    builders.charge(store, "user-1", "req-1", tokens, NOW)
    account = store.get_account("user-1")
    assert account is not None
    reset = plan_reset(account, APRIL, period_end, NOW)
    assert reset is not None
    return account, reset


@settings(max_examples=200)
@given(st.text(min_size=1, max_size=80))
def test_row_key_is_always_a_valid_appwrite_id_and_keeps_valid_ones(key: str) -> None:
    """Any key maps to a valid row id, deterministically; valid ids map to themselves."""
    assert ROW_ID.match(row_key(key))
    assert row_key(key) == row_key(key)
    if ROW_ID.match(key):
        assert row_key(key) == key


def test_long_or_odd_ids_are_hashed_apart() -> None:
    """Ids Appwrite would refuse get distinct hashed row ids."""
    long_a, long_b = "evt_" + "a" * 40, "evt_" + "a" * 39 + "b"
    assert len({row_key(long_a), row_key(long_b), row_key("_x"), row_key("-x")}) == 4


def test_a_legacy_row_with_a_random_id_is_found_and_metered_by_user_id(
    emulator: AppwriteEmulator, store: AppwriteStore
) -> None:
    """Seed-era rows have random ids: the adapter finds them by userId and meters on them."""
    emulator.insert_row(
        "subscriptions",
        {
            "userId": "user-1",
            "plan": "starter",
            "status": "active",
            "maxTokensPerMonth": 50_000,
            "currentTokensUsed": 10,
            "lifetimeTokensUsed": 0,
            "addonTokens": 0,
            "topupTokens": 0,
            "periodStart": "2026-03-01T00:00:00.000+00:00",
        },
        row_id="6650f0a2c3d4e5f6a7b8",
    )
    store.open_request(ledger_entry("user-1", "req-1", held_tokens=90), 50_000)
    account = store.add_topup("user-1", 5)
    assert (account.row_id, account.current_tokens_used, account.topup_tokens) == (
        "6650f0a2c3d4e5f6a7b8",
        100,
        5,
    )
    assert [row["$id"] for row in emulator.rows("subscriptions")] == ["6650f0a2c3d4e5f6a7b8"]


def test_request_ids_appwrite_would_refuse_are_kept_under_a_hashed_row_id(
    emulator: AppwriteEmulator, store: AppwriteStore
) -> None:
    """A requestId such as `_retry.1` is a valid idempotency key but not a row id."""
    holding(store, "_retry.1", 40)
    stored = store.get_ledger("_retry.1")
    assert stored is not None
    assert (stored.request_id, stored.held_tokens) == ("_retry.1", 40)
    assert emulator.rows("usage_events")[0]["$id"] == row_key("_retry.1")


def test_a_long_stripe_event_id_is_claimed_once(store: AppwriteStore) -> None:
    """Event ids past 36 characters still claim exactly once."""
    event_id = "evt_" + "1NG8Du2eZvKYlo2CUI79vXWy" * 2
    assert store.claim_event(event_id, "invoice.paid", "in_1", NOW, LEASE) is ClaimOutcome.CLAIMED
    store.complete_event(event_id, "applied", NOW)
    assert store.claim_event(event_id, "invoice.paid", "in_1", NOW, LEASE) is ClaimOutcome.DONE


def test_an_expired_claim_is_taken_over_by_exactly_one_of_many_workers(
    store: AppwriteStore,
) -> None:
    """The takeover is a compare-and-swap: 16 workers racing for a dead claim, one wins."""
    store.claim_event("evt_1", "invoice.paid", "in_1", NOW, LEASE)
    later = NOW + LEASE + timedelta(seconds=1)
    outcomes: list[ClaimOutcome] = []
    lock = threading.Lock()

    def worker() -> None:
        outcome = store.claim_event("evt_1", "invoice.paid", "in_1", later, LEASE)
        with lock:
            outcomes.append(outcome)

    run_together([worker] * 16)
    assert outcomes.count(ClaimOutcome.CLAIMED) == 1
    assert outcomes.count(ClaimOutcome.IN_PROGRESS) == 15


def test_a_settle_after_a_concurrent_lowering_gives_back_only_what_is_left(
    emulator: AppwriteEmulator, store: AppwriteStore
) -> None:
    """The counter went below the release meanwhile: the refused commit is read and tried again
    with what is left, so the counter stops at zero and the step still settles."""
    holding(store, "req-1", 100)
    emulator.table("subscriptions").rows["user-1"]["currentTokensUsed"] = 30
    store.settle("user-1", "req-1", 100, {"held_tokens": 0})
    account = store.get_account("user-1")
    ledger = store.get_ledger("req-1")
    assert account is not None
    assert ledger is not None
    assert (account.current_tokens_used, ledger.held_tokens) == (0, 0)


def test_a_failed_reset_commit_releases_its_claim_so_the_retry_applies_once(
    emulator: AppwriteEmulator, store: AppwriteStore
) -> None:
    """All changes of a reset commit together: after a failed commit nothing changed, and the
    retry moves the usage to lifetime exactly once."""
    account, reset = due_reset(store, 700, datetime(2026, 5, 1, tzinfo=UTC))

    emulator.fail_next("PATCH", r"^/tablesdb/transactions/", 500, "general_unknown")
    with pytest.raises(StoreError):
        store.apply_reset(reset, account.period_start)
    unchanged = store.get_account("user-1")
    assert unchanged is not None
    assert (unchanged.current_tokens_used, unchanged.period_start) == (700, MARCH)

    applied = store.apply_reset(reset, account.period_start)
    assert applied is not None
    assert (applied.current_tokens_used, applied.lifetime_tokens_used) == (0, 700)
    assert store.apply_reset(reset, account.period_start) is None


@pytest.mark.parametrize(
    ("status", "error_type"), [(400, "attribute_limit_exceeded"), (409, "transaction_conflict")]
)
def test_a_reset_commit_refused_because_the_counter_moved_is_retried_and_applied_once(
    emulator: AppwriteEmulator, store: AppwriteStore, status: int, error_type: str
) -> None:
    """A commit refused for a bound or a concurrent change is read again and retried, not a
    failure: the usage moves to lifetime once."""
    account, reset = due_reset(store, 700, datetime(2026, 5, 1, tzinfo=UTC))
    emulator.fail_next("PATCH", r"^/tablesdb/transactions/", status, error_type)
    applied = store.apply_reset(reset, account.period_start)
    assert applied is not None
    assert (applied.current_tokens_used, applied.lifetime_tokens_used) == (0, 700)
    assert store.apply_reset(reset, account.period_start) is None


@pytest.mark.parametrize(
    ("status", "error_type"),
    [
        (400, "attribute_limit_exceeded"),
        (409, "transaction_conflict"),
        (404, "document_not_found"),
    ],
)
def test_a_takeover_whose_commit_loses_the_race_leaves_the_claim_in_progress(
    emulator: AppwriteEmulator, store: AppwriteStore, status: int, error_type: str
) -> None:
    """Another worker took over or released the claim between our read and our commit: the
    commit's refusal means someone else holds it, never a store failure."""
    store.claim_event("evt_1", "invoice.paid", "in_1", NOW, LEASE)
    later = NOW + LEASE + timedelta(seconds=1)
    emulator.fail_next("PATCH", r"^/tablesdb/transactions/", status, error_type)
    assert store.claim_event("evt_1", "invoice.paid", "in_1", later, LEASE) is (
        ClaimOutcome.IN_PROGRESS
    )
    assert store.claim_event("evt_1", "invoice.paid", "in_1", later, LEASE) is (
        ClaimOutcome.CLAIMED
    )


def test_an_increment_of_a_vanished_row_is_not_found_and_of_a_missing_column_a_store_error(
    emulator: AppwriteEmulator, store: AppwriteStore
) -> None:
    """The server reports both as column_not_found: a read tells a deleted row (NotFound)
    from a schema without the column (StoreError)."""
    starter(store, "user-1")
    starter(store, "user-2")
    store.add_topup("user-1", 1)
    del emulator.table("subscriptions").rows["user-1"]
    with pytest.raises(NotFound):
        store.add_topup("user-1", 5)
    emulator.fail_next("PATCH", r"/topupTokens/increment$", 404, "column_not_found")
    with pytest.raises(StoreError):
        store.add_topup("user-2", 5)
    account = store.get_account("user-2")
    assert account is not None
    assert account.topup_tokens == 0


TRANSACTION = [
    ("POST", "/tablesdb/transactions"),
    ("POST", "/tablesdb/transactions/{id}/operations"),
    ("PATCH", "/tablesdb/transactions/{id}"),
]


ACCOUNT_ROW = "/tablesdb/koffers_db/tables/subscriptions/rows/user-1"


def requests_of(emulator: AppwriteEmulator) -> list[tuple[str, str]]:
    """The requests made since ``calls`` was cleared, transaction ids replaced by ``{id}``."""
    ids = set(emulator.transactions)
    return [
        (call.method, "/".join("{id}" if part in ids else part for part in call.path.split("/")))
        for call in emulator.calls
    ]


def test_each_change_of_the_hard_cap_is_one_transaction_of_three_requests(
    emulator: AppwriteEmulator, store: AppwriteStore
) -> None:
    """Opening, holding, settling a step and discarding each create a transaction, stage all
    their changes in one request and commit: three requests, the user's row id known. The
    settle that ends the request also reads the account's row once staged, to stamp the entry
    with the period it is counted in."""
    starter(store, "user-1")
    turn = new_turn("req-1")
    step: LedgerPatch = {"held_tokens": 0, "usage": TokenUsage(input_tokens=300, steps=1)}
    changes: list[Callable[[], object]] = [
        lambda: store.open_request(ledger_entry("user-1", "req-1", held_tokens=500), 50_000, turn),
        lambda: store.settle("user-1", "req-1", 200, step, {"content": "Hi"}),
        lambda: store.hold("user-1", "req-1", 300, 50_000),
        lambda: store.settle("user-1", "req-1", 300, {**step, "status": LedgerStatus.SETTLED}),
        lambda: store.open_request(ledger_entry("user-1", "req-2", held_tokens=40), 50_000),
        lambda: store.discard_request("user-1", "req-2", 40),
    ]
    ending = [*TRANSACTION[:2], ("GET", ACCOUNT_ROW), TRANSACTION[2]]
    for index, change in enumerate(changes):
        emulator.calls.clear()
        change()
        assert requests_of(emulator) == (ending if index == 3 else TRANSACTION)
    assert counter_and_ledger(store) == (300, 300)


def test_a_single_step_chat_costs_eight_requests(
    emulator: AppwriteEmulator, store: AppwriteStore
) -> None:
    """The account read, the request opened, its one step settled (the account's period read
    once that is staged): 1 + 3 + 4 requests."""
    starter(store, "user-1")
    emulator.calls.clear()
    store.get_account("user-1")
    store.open_request(ledger_entry("user-1", "req-1", held_tokens=500), 50_000, new_turn("req-1"))
    usage = TokenUsage(input_tokens=300, output_tokens=50, steps=1)
    store.settle(
        "user-1",
        "req-1",
        150,
        {"status": LedgerStatus.SETTLED, "held_tokens": 0, "usage": usage},
        {"status": TurnStatus.COMPLETED, "usage": usage},
    )
    assert len(emulator.calls) == 8
    assert counter_and_ledger(store) == (350, 350)


def test_a_settle_giving_nothing_back_reads_the_entry_once_staged(
    emulator: AppwriteEmulator, store: AppwriteStore
) -> None:
    """With no hold to take the guard from, the status is read between staging and commit:
    one request more (after the account's period, read by every settle that ends a request)."""
    holding(store, "req-1", 100)
    emulator.calls.clear()
    store.settle("user-1", "req-1", 0, {"status": LedgerStatus.SETTLED})
    assert requests_of(emulator) == [
        *TRANSACTION[:2],
        ("GET", ACCOUNT_ROW),
        ("GET", f"/tablesdb/koffers_db/tables/usage_events/rows/{row_key('req-1')}"),
        TRANSACTION[2],
    ]


OPERATIONS: dict[str, Callable[[AppwriteStore], Any]] = {
    "get_account": lambda s: s.get_account("user-1"),
    "update_account": lambda s: s.update_account("user-1", {"plan": "pro"}),
    "open_request": lambda s: s.open_request(ledger_entry("user-1", "req-2"), 100),
    "hold": lambda s: s.hold("user-1", "req-1", 1, 100),
    "settle": lambda s: s.settle("user-1", "req-1", 1, {"held_tokens": 0}),
    "discard_request": lambda s: s.discard_request("user-1", "req-1", 1),
    "get_ledger": lambda s: s.get_ledger("req-1"),
    "get_turn": lambda s: s.get_turn("req-1"),
    "update_turn": lambda s: s.update_turn("req-1", {"content": "x"}),
    "request_stop": lambda s: s.request_stop("req-1", "user-1", NOW),
    "stop_requested": lambda s: s.stop_requested("req-1"),
    "list_accounts": lambda s: s.list_accounts(AccountQuery(), 10, None),
    "ledger_total": lambda s: s.ledger_total("user-1", MARCH),
    "claim_event": lambda s: s.claim_event("evt_9", "t", "o", NOW, LEASE),
    "release_event": lambda s: s.release_event("evt_9"),
}


@pytest.mark.parametrize("operation", OPERATIONS.values(), ids=OPERATIONS.keys())
def test_appwrite_failures_surface_as_store_errors_only(
    emulator: AppwriteEmulator, store: AppwriteStore, operation: Callable[[AppwriteStore], Any]
) -> None:
    """A 5xx from Appwrite becomes StoreError; no AppwriteException escapes the adapter."""
    holding(store, "req-1", 10, turn=True)
    for method in ("GET", "POST", "PATCH", "DELETE"):
        emulator.fail_next(method, r".", 503, "general_service_disabled")
    with pytest.raises(StoreError) as caught:
        operation(store)
    assert not isinstance(caught.value, AppwriteException)
    assert isinstance(caught.value.__cause__, AppwriteException)


def test_connect_refuses_an_empty_endpoint_rather_than_defaulting_to_cloud(
    emulator: AppwriteEmulator,
) -> None:
    """Without an endpoint the SDK would talk to Appwrite Cloud: refuse instead."""
    without_endpoint = replace(emulator.store_settings(), appwrite_endpoint="")
    with pytest.raises(StoreError):
        AppwriteStore.connect(without_endpoint, "key")


ENDED: LedgerPatch = {"status": LedgerStatus.SETTLED, "held_tokens": 0}


def another_store(emulator: AppwriteEmulator) -> AppwriteStore:
    """A second instance on the same project: another execution of a function."""
    return AppwriteStore.connect(emulator.store_settings(), emulator.api_key)


def reset_to_april(store: AppwriteStore) -> None:
    march = store.get_account("user-1")
    assert march is not None
    reset = plan_reset(march, APRIL, datetime(2026, 5, 1, tzinfo=UTC), NOW)
    assert reset is not None
    assert store.apply_reset(reset, MARCH) is not None


def totals(store: AppwriteStore) -> tuple[int, int, int, int]:
    """user-1's counter and lifetime total, then the ledger's totals of April and of March."""
    account = store.get_account("user-1")
    assert account is not None
    april, march = (store.ledger_total("user-1", start) for start in (APRIL, MARCH))
    return account.current_tokens_used, account.lifetime_tokens_used, april, march


def on_first(
    monkeypatch: pytest.MonkeyPatch, owner: object, name: str, before: Callable[[], object]
) -> None:
    """Run ``before`` once, just before the first call of ``owner.name`` (an SDK method)."""
    original = getattr(owner, name)
    pending = [before]

    def call(*args: Any, **kwargs: Any) -> Any:
        if pending and (name != "update_transaction" or kwargs.get("commit")):
            pending.pop()()
        return original(*args, **kwargs)

    monkeypatch.setattr(owner, name, call)


@pytest.mark.parametrize(
    "moment",
    [
        pytest.param("create_operations", id="opened-before-the-staging"),
        pytest.param("update_transaction", id="opened-before-the-commit"),
    ],
)
def test_a_reset_that_a_request_opens_under_reads_again_and_carries_it(
    ticking: AppwriteEmulator, monkeypatch: pytest.MonkeyPatch, moment: str
) -> None:
    """Another execution opens a request after the reset listed the requests in flight: the
    row read once staged shows it (or the commit conflicts on the period's update), so the
    reset is planned again and carries the new request into April."""
    emulator, store = ticking, another_store(ticking)
    account, reset = due_reset(store, 300, datetime(2026, 5, 1, tzinfo=UTC))
    other = another_store(emulator)
    opened = ledger_entry("user-1", "req-2", held_tokens=1_000)
    on_first(monkeypatch, store._db, moment, lambda: other.open_request(opened, 50_000))

    assert store.apply_reset(reset, account.period_start) is not None

    assert totals(store) == (1_000, 300, 1_000, 300)


def test_an_ending_settle_whose_account_moved_on_is_staged_again_with_the_new_period(
    ticking: AppwriteEmulator,
) -> None:
    """This execution read March; another reset the account to April before the request even
    opened. The settle that ends it stages March, reads April once staged, and stages again
    with April: one transaction rolled back, one committed."""
    emulator, store = ticking, another_store(ticking)
    starter(store, "user-1")
    store.get_account("user-1")
    reset_to_april(another_store(emulator))
    store.open_request(ledger_entry("user-1", "req-1", held_tokens=500), 50_000)
    earlier = len(emulator.transactions)

    usage = TokenUsage(input_tokens=320, steps=1)
    store.settle("user-1", "req-1", 180, {**ENDED, "usage": usage})

    entry = store.get_ledger("req-1")
    assert entry is not None
    assert entry.period_start == APRIL
    account = store.get_account("user-1")
    assert account is not None
    assert (account.current_tokens_used, store.ledger_total("user-1", APRIL)) == (320, 320)
    settling = list(emulator.transactions.values())[earlier:]
    # A rolled-back transaction reads "failed", as on Appwrite.
    assert [transaction.status for transaction in settling] == ["failed", "committed"]


def test_a_reset_landing_while_a_settle_is_staged_fails_that_commit_and_is_followed(
    ticking: AppwriteEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The reset restamps the entry in flight after the settle staged its update of it: that
    commit conflicts, and the settle is staged again in April."""
    emulator, store = ticking, another_store(ticking)
    starter(store, "user-1")
    builders.charge(store, "user-1", "req-0", 200, NOW)
    store.open_request(ledger_entry("user-1", "req-1", held_tokens=500), 50_000)
    other = another_store(emulator)

    on_first(monkeypatch, store._db, "update_transaction", lambda: reset_to_april(other))
    usage = TokenUsage(input_tokens=320, steps=1)
    store.settle("user-1", "req-1", 180, {**ENDED, "usage": usage})

    assert totals(store) == (320, 200, 320, 200)


def test_a_reset_refused_for_a_stale_snapshot_does_not_block_the_fresh_one(
    store: AppwriteStore,
) -> None:
    """The reset claim is released when nothing was applied, so the same period can still be
    reached from an up-to-date snapshot."""
    account, reset = due_reset(store, 300, None)
    assert store.apply_reset(reset, datetime(2026, 2, 1, tzinfo=UTC)) is None
    applied = store.apply_reset(reset, account.period_start)
    assert applied is not None
    assert (applied.period_start, applied.lifetime_tokens_used) == (APRIL, 300)


def test_a_release_keeps_a_claim_completed_while_it_was_being_released(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The release reads the claim once its delete is staged; another worker completing the
    claim before the commit makes the commit conflict, and the claim stays done."""
    now = [NOW]
    with emulated_appwrite(clock=lambda: now[0]) as emulator:
        store = AppwriteStore.connect(emulator.store_settings(), emulator.api_key)
        other = AppwriteStore.connect(emulator.store_settings(), emulator.api_key)
        store.claim_event("evt_1", "invoice.paid", "in_1", NOW, LEASE)
        tables = store._db
        commit = tables.update_transaction

        def complete_first(transaction_id: str, **options: Any) -> Any:
            if options.get("commit"):
                now[0] += timedelta(seconds=1)
                other.complete_event("evt_1", "applied", now[0])
            return commit(transaction_id, **options)

        monkeypatch.setattr(tables, "update_transaction", complete_first)
        store.release_event("evt_1")
        monkeypatch.undo()

        later = NOW + timedelta(days=1)
        assert store.claim_event("evt_1", "invoice.paid", "in_1", later, LEASE) is (
            ClaimOutcome.DONE
        )


# -- the hard cap when requests fail -----------------------------------------------------------

STEP = TokenUsage(input_tokens=250, output_tokens=50, steps=1)
# The requests of a change, as ``disconnect_next`` matches them.
BEGIN = ("POST", r"^/tablesdb/transactions$")
STAGE = ("POST", r"/operations$")
COMMIT = ("PATCH", r"^/tablesdb/transactions/[^/]+$")
READ = ("GET", r"/rows/")
# Each change, from req-1 in flight holding 500 with its turn, and the requests it makes.
CHANGES: dict[str, tuple[Callable[[AppwriteStore], object], list[tuple[str, str]]]] = {
    "open_request": (
        lambda s: s.open_request(
            ledger_entry("user-1", "req-2", held_tokens=400), 50_000, new_turn("req-2")
        ),
        [BEGIN, STAGE, COMMIT],
    ),
    "hold": (lambda s: s.hold("user-1", "req-1", 300, 50_000), [BEGIN, STAGE, COMMIT]),
    "settle": (
        lambda s: s.settle(
            "user-1", "req-1", 200, {"held_tokens": 0, "usage": STEP}, {"usage": STEP}
        ),
        [BEGIN, STAGE, COMMIT],
    ),
    "settle-giving-nothing-back": (
        lambda s: s.settle("user-1", "req-1", 0, {"status": LedgerStatus.SETTLED}),
        [BEGIN, STAGE, READ, COMMIT],
    ),
    "discard_request": (
        lambda s: s.discard_request("user-1", "req-1", 500, {"status": TurnStatus.FAILED}),
        [BEGIN, STAGE, COMMIT],
    ),
}


def snapshot(store: AppwriteStore) -> tuple[object, ...]:
    return (
        counter_and_ledger(store),
        store.get_ledger("req-1"),
        store.get_ledger("req-2"),
        store.get_turn("req-1"),
        store.get_turn("req-2"),
    )


def fault_points() -> list[Any]:
    return [
        pytest.param(name, position, handled, id=f"{name}-http{position + 1}-{when}")
        for name, (_, requests) in CHANGES.items()
        for position in range(len(requests))
        for handled, when in ((False, "lost"), (True, "answer-lost"))
    ]


@pytest.mark.parametrize(("name", "position", "handled"), fault_points())
def test_a_change_whose_request_or_answer_is_lost_is_all_or_nothing(
    name: str, position: int, handled: bool
) -> None:
    """The connection cut at any request of a change, before the server got it or after it
    handled it: a StoreError, and the change applied whole (its commit went through) or not at
    all; either way the counter equals the ledger."""
    change, requests = CHANGES[name]
    states = []
    for fault in (False, True):
        with emulated_appwrite() as emulator:
            store = AppwriteStore.connect(emulator.store_settings(), emulator.api_key)
            holding(store, "req-1", 500, turn=True)
            before = snapshot(store)
            if fault:
                emulator.disconnect_next(*requests[position], handled=handled)
                with pytest.raises(StoreError):
                    change(store)
            else:
                change(store)
            states.append((before, snapshot(store)))
    (before, applied), (_, after) = states
    committed = handled and position == len(requests) - 1
    assert after == (applied if committed else before)
    (counter, ledger), *_ = after
    assert counter == ledger


def test_a_settle_retried_after_its_answer_was_lost_is_refused(
    emulator: AppwriteEmulator, store: AppwriteStore
) -> None:
    """The step settled, but the answer was lost; the request then gives its hold back again
    as it fails: refused (Conflict), so the hold is not given back twice."""
    holding(store, "req-1", 500)
    emulator.disconnect_next(*COMMIT, handled=True)
    with pytest.raises(StoreError):
        store.settle("user-1", "req-1", 200, {"held_tokens": 0, "usage": STEP})
    with pytest.raises(Conflict):
        store.settle("user-1", "req-1", 500, {"status": LedgerStatus.FAILED, "held_tokens": 0})
    assert counter_and_ledger(store) == (300, 300)


def test_open_request_retried_after_its_answer_was_lost_finds_its_claim(
    emulator: AppwriteEmulator, store: AppwriteStore
) -> None:
    """The request was opened, its answer lost: the retry is AlreadyExists, held once."""
    starter(store, "user-1")
    entry = ledger_entry("user-1", "req-1", held_tokens=400)
    emulator.disconnect_next(*COMMIT, handled=True)
    with pytest.raises(StoreError):
        store.open_request(entry, 50_000)
    with pytest.raises(AlreadyExists):
        store.open_request(entry, 50_000)
    assert counter_and_ledger(store) == (400, 400)


@pytest.mark.parametrize("release", [0, 200])
def test_a_reclaim_committed_while_a_settle_was_staged_makes_the_settle_conflict(
    monkeypatch: pytest.MonkeyPatch, release: int
) -> None:
    """The cron's reclaim lands between the settle's staging and its commit: the settle's
    commit is refused (the guard finds the hold gone, or the staged update finds the row
    changed) and nothing is given back twice."""
    now = [NOW]
    with emulated_appwrite(clock=lambda: now[0]) as emulator:
        store = AppwriteStore.connect(emulator.store_settings(), emulator.api_key)
        cron = AppwriteStore.connect(emulator.store_settings(), emulator.api_key)
        holding(store, "req-1", 500)
        cron.get_account("user-1")
        tables = store._db
        commit = tables.update_transaction

        def reclaim_first(transaction_id: str, **options: Any) -> Any:
            if options.get("commit"):
                now[0] += timedelta(seconds=1)
                patch = {"status": LedgerStatus.RECLAIMED, "held_tokens": 0}
                cron.settle("user-1", "req-1", 500, patch)  # type: ignore[arg-type]
            return commit(transaction_id, **options)

        monkeypatch.setattr(tables, "update_transaction", reclaim_first)
        with pytest.raises(Conflict):
            store.settle("user-1", "req-1", release, {"held_tokens": 0, "usage": STEP})
        monkeypatch.undo()
        entry = store.get_ledger("req-1")
        assert entry is not None
        assert (entry.status, entry.usage) == (LedgerStatus.RECLAIMED, TokenUsage())
        assert counter_and_ledger(store) == (0, 0)


def test_a_legacy_entry_in_flight_is_counted_and_reclaimed_from_its_reserved_tokens(
    emulator: AppwriteEmulator, store: AppwriteStore
) -> None:
    """A row written before heldTokens kept holds and charged steps in reservedTokens: it
    counts that, and the cron's reclaim gives back the rest even though heldTokens is NULL."""
    starter(store, "user-1")
    emulator.table("subscriptions").rows["user-1"]["currentTokensUsed"] = 500
    emulator.insert_row(
        "usage_events",
        {
            "requestId": "req-old",
            "userId": "user-1",
            "status": "reserved",
            "periodStart": "2026-03-01T00:00:00.000+00:00",
            "startedAt": "2026-03-15T11:00:00.000+00:00",
            "touchedAt": "2026-03-15T11:00:00.000+00:00",
            "reservedTokens": 500,
            "inputTokens": 200,
            "totalTokens": 200,
            "steps": 1,
        },
        row_id="req-old",
    )
    entry = store.get_ledger("req-old")
    assert entry is not None
    assert entry.held_tokens == 300
    assert counter_and_ledger(store) == (500, 500)

    store.settle("user-1", "req-old", 300, {"status": LedgerStatus.RECLAIMED, "held_tokens": 0})

    assert counter_and_ledger(store) == (200, 200)
    with pytest.raises(Conflict):
        store.settle("user-1", "req-old", 300, {"status": LedgerStatus.RECLAIMED})
