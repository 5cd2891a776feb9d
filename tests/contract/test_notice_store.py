"""The usage alerts' part of the ``UsageStore`` contract, on SQLite and on Appwrite: notices
kept once and listed per user and period, the alert marker raised only upwards and only in its
own period, reset by a reset; on Appwrite, a notice readable by its user and nobody else."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import requests
import responses
from metering.account import Level, new_account
from metering.adapters.appwrite_store import AppwriteStore
from metering.alerts import Notice
from metering.errors import StoreError
from metering.plans import load_default_plans
from metering.ports import UsageStore

from tests.support.appwrite_emulator import AppwriteEmulator
from tests.support.builders import MARCH, NOW, reset_now
from tests.support.threads import run_together
from tools.schema import load_schema

APRIL = datetime(2026, 4, 1, tzinfo=UTC)
MAY = datetime(2026, 5, 1, tzinfo=UTC)
LEVELS = {75: Level.WARNING, 90: Level.CRITICAL, 100: Level.EXCEEDED}


def notice(
    threshold: int,
    *,
    user_id: str = "user-1",
    period: datetime = MARCH,
    at: datetime = NOW,
    message: str = "",
) -> Notice:
    return Notice(
        id=f"{user_id}-{period:%m}-{threshold}",
        user_id=user_id,
        threshold=threshold,
        level=LEVELS[threshold],
        message=message or f"{threshold} % used",
        period_start=period,
        created_at=at,
    )


def make_account(store: UsageStore, user_id: str = "user-1") -> None:
    store.create_account(new_account(user_id, load_default_plans().get("starter"), NOW))


def sent(store: UsageStore, user_id: str = "user-1") -> int:
    account = store.get_account(user_id)
    assert account is not None
    return account.alert_threshold_sent


def test_a_notice_round_trips(store: UsageStore) -> None:
    """Every field comes back as it was written."""
    written = notice(90, message="You have used 90 % of this period's tokens.")

    store.create_notice(written)

    assert store.list_notices("user-1", MARCH) == [written]


def test_creating_a_notice_twice_keeps_the_first(store: UsageStore) -> None:
    """A retried alert finds its notice there and leaves it as it is: still one."""
    store.create_notice(notice(90, message="first"))
    store.create_notice(notice(90, message="second", at=NOW + timedelta(minutes=1)))

    assert [n.message for n in store.list_notices("user-1", MARCH)] == ["first"]


def test_notices_are_listed_per_user_and_period_newest_first(store: UsageStore) -> None:
    """Only the user's notices of the asked period, the latest first."""
    store.create_notice(notice(75, at=NOW))
    store.create_notice(notice(100, at=NOW + timedelta(hours=2)))
    store.create_notice(notice(90, at=NOW + timedelta(hours=1)))
    store.create_notice(notice(90, user_id="user-2"))
    store.create_notice(notice(75, period=APRIL, at=APRIL))

    listed = store.list_notices("user-1", MARCH)

    assert [n.threshold for n in listed] == [100, 90, 75]
    assert store.list_notices("user-3", MARCH) == []
    assert [n.threshold for n in store.list_notices("user-1", APRIL)] == [75]


def test_the_marker_starts_at_zero_and_only_goes_up(store: UsageStore) -> None:
    """75, then 90; a late 75 does not lower it."""
    make_account(store)
    assert sent(store) == 0

    store.mark_alert_sent("user-1", MARCH, 75)
    assert sent(store) == 75
    store.mark_alert_sent("user-1", MARCH, 90)
    store.mark_alert_sent("user-1", MARCH, 75)

    assert sent(store) == 90


def test_the_marker_of_another_period_changes_nothing(store: UsageStore) -> None:
    """A mark planned in a period that a reset has since ended is dropped."""
    make_account(store)

    store.mark_alert_sent("user-1", APRIL, 90)
    store.mark_alert_sent("user-1", datetime(2026, 2, 1, tzinfo=UTC), 90)

    assert sent(store) == 0


def test_marking_for_a_user_without_an_account_changes_nothing(store: UsageStore) -> None:
    """No account, nothing to mark, no error."""
    store.mark_alert_sent("nobody", MARCH, 90)

    assert store.get_account("nobody") is None


def test_a_reset_sets_the_marker_back_to_zero(store: UsageStore) -> None:
    """The new period's alerts are armed again; the marker no longer applies to March."""
    make_account(store)
    store.mark_alert_sent("user-1", MARCH, 100)

    result = reset_now(store, "user-1", APRIL, MAY)

    assert result.alert_threshold_sent == 0
    assert sent(store) == 0
    store.mark_alert_sent("user-1", MARCH, 90)
    assert sent(store) == 0


def test_concurrent_marks_end_at_the_highest(store: UsageStore) -> None:
    """Requests marking 75, 90 and 100 at once: the marker ends at 100 whatever the order."""
    make_account(store)

    run_together(
        [
            lambda t=threshold: store.mark_alert_sent("user-1", MARCH, t)
            for threshold in (75, 90, 100)
        ]
        * 3
    )

    assert sent(store) == 100


# -- Appwrite only -----------------------------------------------------------------------------


def test_notices_are_a_row_security_table_nobody_reads_as_a_whole() -> None:
    """No table-wide permission: a notice is readable only through its own row's."""
    table = load_schema().table("notices")

    assert (table.row_security, table.permissions) == (True, ())
    assert {column.key for column in table.columns} >= {
        "userId",
        "threshold",
        "level",
        "message",
        "periodStart",
        "raisedAt",
    }


class Recorded:
    """An AppwriteStore on the emulator, with the method, path and JSON body of every write."""

    def __init__(self) -> None:
        self.emulator = AppwriteEmulator(load_schema())
        self.writes: list[tuple[str, str, dict[str, Any]]] = []
        self._mock = responses.RequestsMock(assert_all_requests_are_fired=False)
        pattern = re.compile(re.escape(self.emulator.endpoint) + r"(/.*)?$")
        for method in (responses.GET, responses.POST, responses.PATCH, responses.DELETE):
            self._mock.add_callback(method, pattern, callback=self._record)

    def _record(self, request: requests.PreparedRequest) -> tuple[int, dict[str, str], str]:
        if request.method != "GET":
            body = json.loads(request.body or b"{}")
            self.writes.append((str(request.method), request.path_url, body))
        return self.emulator.handle(request)

    def __enter__(self) -> AppwriteStore:
        self._mock.__enter__()
        return AppwriteStore.connect(self.emulator.store_settings(), self.emulator.api_key)

    def __exit__(self, *exc: object) -> None:
        self._mock.__exit__(None, None, None)


def test_on_appwrite_a_notice_row_is_readable_by_its_user_only() -> None:
    """The create request carries ``read("user:<id>")`` and no other permission."""
    recorded = Recorded()
    with recorded as store:
        store.create_notice(notice(90))

    ((method, path, body),) = recorded.writes
    assert (method, path) == ("POST", "/v1/tablesdb/koffers_db/tables/notices/rows")
    assert body["permissions"] == ['read("user:user-1")']
    assert (body["rowId"], body["data"]["userId"]) == ("user-1-03-90", "user-1")


def test_on_appwrite_the_mark_is_staged_in_a_transaction_never_a_bare_update() -> None:
    """A bare row update writes back the whole row, counters read before it included: the
    mark is staged and committed, so a change in between makes it retry instead."""
    recorded = Recorded()
    with recorded as store:
        make_account(store)
        recorded.writes.clear()
        store.mark_alert_sent("user-1", MARCH, 90)
        assert sent(store) == 90

    updates = [
        body
        for method, path, body in recorded.writes
        if method == "PATCH" and path.endswith("/tables/subscriptions/rows/user-1")
    ]
    assert updates == [
        {"data": {"alertThresholdSent": 90}, "transactionId": updates[0]["transactionId"]}
    ]
    commits = [body for method, path, body in recorded.writes if "/transactions/" in path]
    assert commits == [{"commit": True}]


def test_on_appwrite_a_mark_whose_commit_conflicts_is_tried_again() -> None:
    """A request's increment between staging and commit fails the commit: read, stage again."""
    recorded = Recorded()
    with recorded as store:
        make_account(store)
        recorded.emulator.fail_next(
            "PATCH", r"^/tablesdb/transactions/[^/]+$", 409, "transaction_conflict"
        )
        store.mark_alert_sent("user-1", MARCH, 90)

        assert sent(store) == 90
    commits = [path for method, path, body in recorded.writes if body.get("commit")]
    assert len(commits) == 2


def test_on_appwrite_a_mark_that_keeps_conflicting_is_a_store_error() -> None:
    """After a few conflicts it gives up loudly: the alert's claim is released and retried."""
    recorded = Recorded()
    with recorded as store:
        make_account(store)
        # Each failed commit is rolled back (a PATCH of its own): every one of them fails too.
        for _ in range(10):
            recorded.emulator.fail_next(
                "PATCH", r"^/tablesdb/transactions/[^/]+$", 409, "transaction_conflict"
            )
        with pytest.raises(StoreError, match="kept changing"):
            store.mark_alert_sent("user-1", MARCH, 90)

        assert sent(store) == 0
