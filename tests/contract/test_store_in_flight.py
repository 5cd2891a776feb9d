"""The store's count of each user's requests in flight and its bound (the cap on turns in flight),
and the request starts the cap per minute reads: one suite over SQLite and the TablesDB emulation.
"""

from __future__ import annotations

import functools
import sqlite3
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import pytest
from metering.account import new_account
from metering.errors import Conflict, InFlightLimitReached, LimitReached
from metering.ledger import LedgerPatch, LedgerStatus
from metering.plans import load_default_plans
from metering.ports import UsageStore
from metering.tokens import TokenUsage
from metering.turns import Turn, TurnStatus

from localruntime.sqlite_store import SQLiteStore
from tests.support.builders import MARCH, NOW, ledger_entry
from tests.support.threads import run_together

COLUMN = "requestsInFlight"
LIMIT = 100_000
CAP = 3


@dataclass
class Flight:
    """A store, and the raw column its in-flight count lives in (read and, to stand for rows
    written before the column, set)."""

    store: UsageStore
    read: Callable[[str], int]
    write: Callable[[str, int | None], None]


def _sqlite(tmp_path: Path) -> Flight:
    path = str(tmp_path / "flight.sqlite3")
    store = SQLiteStore(path)

    def read(user_id: str) -> int:
        with sqlite3.connect(path) as connection:
            row = connection.execute(
                f"SELECT {COLUMN} FROM subscriptions WHERE userId = ?", (user_id,)
            ).fetchone()
        return int(row[0] or 0)

    def write(user_id: str, value: int | None) -> None:
        with sqlite3.connect(path) as connection:
            connection.execute(
                f"UPDATE subscriptions SET {COLUMN} = ? WHERE userId = ?", (value, user_id)
            )

    return Flight(store, read, write)


@pytest.fixture(params=["sqlite", "appwrite"])
def flight(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Flight]:
    if request.param == "sqlite":
        yield _sqlite(tmp_path)
        return
    from metering.adapters.appwrite_store import AppwriteStore

    from tests.support.appwrite_emulator import emulated_appwrite

    with emulated_appwrite() as emulator:
        store = AppwriteStore.connect(emulator.store_settings(), emulator.api_key)

        def row(user_id: str) -> dict[str, object]:
            [found] = [r for r in emulator.rows("subscriptions") if r.get("userId") == user_id]
            return found

        def read(user_id: str) -> int:
            value = row(user_id).get(COLUMN)
            return int(value) if isinstance(value, int) else 0

        def write(user_id: str, value: int | None) -> None:
            row(user_id)[COLUMN] = value

        yield Flight(store, read, write)


def account(store: UsageStore, user_id: str = "user-1") -> None:
    store.create_account(new_account(user_id, load_default_plans().default, NOW))
    store.update_account(user_id, {"max_tokens_per_month": LIMIT})


def open_(
    store: UsageStore,
    request_id: str,
    *,
    user_id: str = "user-1",
    held: int = 100,
    cap: int | None = CAP,
    turn: bool = False,
) -> None:
    opened = Turn(request_id, user_id, TurnStatus.PENDING, NOW, NOW) if turn else None
    entry = ledger_entry(user_id, request_id, held_tokens=held)
    store.open_request(entry, LIMIT, opened, max_in_flight=cap)


def final(usage: int = 60) -> LedgerPatch:
    return {
        "status": LedgerStatus.SETTLED,
        "held_tokens": 0,
        "usage": TokenUsage(input_tokens=usage, steps=1),
    }


def reserved(store: UsageStore, user_id: str = "user-1") -> int:
    """How many of the user's entries are in flight, as the ledger tells."""
    page = store.list_stale_reservations(NOW + timedelta(days=1), 1000, None)
    return sum(1 for entry in page.items if entry.user_id == user_id)


def used(store: UsageStore, user_id: str = "user-1") -> int:
    found = store.get_account(user_id)
    assert found is not None
    return found.current_tokens_used


def test_opening_counts_the_request_in_flight_up_to_the_cap(flight: Flight) -> None:
    """Each open raises the count by one; the cap is inclusive."""
    account(flight.store)
    for number in range(CAP):
        open_(flight.store, f"req-{number}")
        assert flight.read("user-1") == number + 1
    assert reserved(flight.store) == CAP


def test_opening_past_the_cap_raises_and_changes_nothing(flight: Flight) -> None:
    """At the cap: InFlightLimitReached; no entry, no turn, no hold, the count unchanged."""
    account(flight.store)
    for number in range(CAP):
        open_(flight.store, f"req-{number}")

    with pytest.raises(InFlightLimitReached):
        open_(flight.store, "req-over", turn=True)

    assert flight.read("user-1") == CAP
    assert flight.store.get_ledger("req-over") is None
    assert flight.store.get_turn("req-over") is None
    assert used(flight.store) == CAP * 100


def test_the_cap_is_per_user(flight: Flight) -> None:
    """Another user's requests in flight do not count against this one's cap."""
    account(flight.store, "user-1")
    account(flight.store, "user-2")
    for number in range(CAP):
        open_(flight.store, f"one-{number}", user_id="user-1")

    open_(flight.store, "two-0", user_id="user-2")

    assert (flight.read("user-1"), flight.read("user-2")) == (CAP, 1)


def test_a_user_at_the_cap_is_told_the_cap_before_the_tokens(flight: Flight) -> None:
    """Both bounds passed: the cap in flight is what the refusal names (waiting helps)."""
    account(flight.store)
    for number in range(CAP):
        open_(flight.store, f"req-{number}")

    with pytest.raises(InFlightLimitReached):
        open_(flight.store, "req-over", held=LIMIT)


def test_a_refused_hold_leaves_the_count_alone(flight: Flight) -> None:
    """Below the cap but past the tokens: LimitReached, and the request was not counted."""
    account(flight.store)

    with pytest.raises(LimitReached):
        open_(flight.store, "req-big", held=LIMIT + 1)

    assert flight.read("user-1") == 0


def test_without_a_cap_the_request_is_still_counted(flight: Flight) -> None:
    """No cap (an operator's adjustment): never refused, yet counted, so the count keeps
    equalling the entries in flight."""
    account(flight.store)
    for number in range(CAP + 2):
        open_(flight.store, f"req-{number}", cap=None)

    assert flight.read("user-1") == CAP + 2 == reserved(flight.store)


def test_a_step_settled_keeps_the_request_in_flight_and_the_final_settle_ends_it(
    flight: Flight,
) -> None:
    """A settle without a status (a step of the tool loop) changes no count; the one that sets
    the final status counts the request out, in the same change."""
    account(flight.store)
    open_(flight.store, "req-1")
    step: LedgerPatch = {"held_tokens": 0, "usage": TokenUsage(input_tokens=40, steps=1)}

    flight.store.settle("user-1", "req-1", 60, step)
    assert flight.read("user-1") == 1
    flight.store.hold("user-1", "req-1", 50, LIMIT)
    flight.store.settle("user-1", "req-1", 30, final(60))

    assert flight.read("user-1") == 0 == reserved(flight.store)
    assert used(flight.store) == 60


@pytest.mark.parametrize("status", [LedgerStatus.FAILED, LedgerStatus.RECLAIMED])
def test_a_failed_or_reclaimed_request_leaves_flight(flight: Flight, status: LedgerStatus) -> None:
    """Every way out of ``reserved`` by a settle counts the request out (the cron's reclaim
    included)."""
    account(flight.store)
    open_(flight.store, "req-1")

    flight.store.settle("user-1", "req-1", 100, {"status": status, "held_tokens": 0})

    assert flight.read("user-1") == 0


def test_a_late_settle_after_the_reclaim_counts_nothing_out_again(flight: Flight) -> None:
    """The reclaim ended the request; its own settle arriving later is a Conflict and leaves
    the count of the user's other request alone."""
    account(flight.store)
    open_(flight.store, "req-1")
    open_(flight.store, "req-2")
    flight.store.settle(
        "user-1", "req-1", 100, {"status": LedgerStatus.RECLAIMED, "held_tokens": 0}
    )

    with pytest.raises(Conflict):
        flight.store.settle("user-1", "req-1", 0, final(0))

    assert flight.read("user-1") == 1 == reserved(flight.store)


def test_an_ending_settle_that_gives_nothing_back_still_counts_out(flight: Flight) -> None:
    """Released 0 (an adjustment's settle, a request that used its whole hold): counted out."""
    account(flight.store)
    open_(flight.store, "req-1", held=0, cap=None)

    flight.store.settle("user-1", "req-1", 0, {"status": LedgerStatus.ADJUSTMENT})

    assert flight.read("user-1") == 0


def test_discarding_counts_out_once(flight: Flight) -> None:
    """A discarded request leaves flight; discarding it again, or an unknown one, changes
    nothing."""
    account(flight.store)
    open_(flight.store, "req-1")
    open_(flight.store, "req-2")

    flight.store.discard_request("user-1", "req-1", 100)
    flight.store.discard_request("user-1", "req-1", 100)
    flight.store.discard_request("user-1", "req-unknown", 0)

    assert flight.read("user-1") == 1 == reserved(flight.store)


@pytest.mark.parametrize("stored", [0, None], ids=["zero", "null"])
def test_a_request_opened_before_the_count_existed_ends_at_zero(
    flight: Flight, stored: int | None
) -> None:
    """An entry in flight when the column was added was never counted in: ending it leaves the
    count at zero instead of refusing the settle."""
    account(flight.store)
    open_(flight.store, "req-1")
    open_(flight.store, "req-2")
    flight.write("user-1", stored)

    flight.store.settle("user-1", "req-1", 40, final(60))
    flight.store.discard_request("user-1", "req-2", 100)

    assert flight.read("user-1") == 0
    assert used(flight.store) == 60
    assert flight.store.ledger_total("user-1", MARCH) == 60


def test_concurrent_opens_admit_exactly_the_cap(flight: Flight) -> None:
    """16 requests of one user opened at once: exactly CAP get in, the rest change nothing."""
    account(flight.store)
    admitted: list[str] = []
    refused: list[str] = []
    lock = threading.Lock()

    def attempt(number: int) -> None:
        request_id = f"req-{number}"
        try:
            open_(flight.store, request_id)
        except InFlightLimitReached:
            with lock:
                refused.append(request_id)
            return
        with lock:
            admitted.append(request_id)

    run_together([functools.partial(attempt, number) for number in range(16)])

    assert (len(admitted), len(refused)) == (CAP, 16 - CAP)
    assert flight.read("user-1") == CAP == reserved(flight.store)
    assert used(flight.store) == CAP * 100 == flight.store.ledger_total("user-1", MARCH)


def test_request_starts_are_the_users_newest_later_than_the_bound(flight: Flight) -> None:
    """Newest first, only this user's, strictly later than ``after``, at most ``limit``,
    adjustments left out; settled and in-flight entries alike."""
    account(flight.store, "user-1")
    account(flight.store, "user-2")
    starts = [NOW + timedelta(seconds=seconds) for seconds in (0, 10, 20, 30)]
    for number, start in enumerate(starts):
        entry = ledger_entry("user-1", f"req-{number}", created_at=start, updated_at=start)
        flight.store.open_request(entry, LIMIT, None, max_in_flight=None)
    flight.store.settle("user-1", "req-3", 0, final(0))
    other = ledger_entry("user-2", "other", created_at=starts[3], updated_at=starts[3])
    flight.store.open_request(other, LIMIT, None)
    late = NOW + timedelta(seconds=40)
    adjustment = ledger_entry("user-1", "adjust", created_at=late, updated_at=late)
    flight.store.open_request(adjustment, LIMIT, None)
    flight.store.settle("user-1", "adjust", 0, {"status": LedgerStatus.ADJUSTMENT})

    assert list(flight.store.request_starts("user-1", starts[0], 10)) == starts[:0:-1]
    assert list(flight.store.request_starts("user-1", starts[0], 2)) == starts[:1:-1]
    assert list(flight.store.request_starts("user-1", late, 10)) == []
