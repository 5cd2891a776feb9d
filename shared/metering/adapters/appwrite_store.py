"""``UsageStore`` on Appwrite TablesDB (SDK 27): the codec's rows, Appwrite's atomic operations.
Every SDK call goes through ``call``: one table maps Appwrite's error types to domain signals.
"""

from __future__ import annotations

import contextlib
import functools
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, TypeVar

from appwrite.client import Client
from appwrite.exception import AppwriteException
from appwrite.permission import Permission
from appwrite.query import Query
from appwrite.role import Role
from appwrite.services.tables_db import TablesDB

from .. import codec
from ..account import Account, AccountPatch, ResetPlan, close_period
from ..alerts import Notice
from ..claims import reset_applies, reset_once
from ..config import StoreSettings
from ..errors import (
    AlreadyExists,
    Conflict,
    InFlightLimitReached,
    InvalidRequest,
    LimitReached,
    MeteringError,
    NotFound,
    StoreError,
)
from ..ledger import LedgerEntry, LedgerPatch, LedgerStatus
from ..plans import PlanCatalog, load_default_plans
from ..ports import AccountQuery, ClaimOutcome, Page, Payment, PaymentPatch
from ..timeutil import parse_timestamp
from ..turns import Turn, TurnPatch

T = TypeVar("T")

PAGE_SIZE = 100
MAX_PAGE = 1000
# Attempts at a change that concurrent changes of the same counter keep refusing.
ATTEMPTS = 5
# The counters the hard cap moves: the user's, and the entry's hold of its call in flight.
USED = "currentTokensUsed"
HELD = "heldTokens"
# The account's count of its requests in flight (``ports.UsageStore``'s second invariant).
IN_FLIGHT = "requestsInFlight"
# What a reset moves besides the counter.
LIFETIME = "lifetimeTokensUsed"
TOPUP = "topupTokens"
# What tells that an account's row changed: its time, and the counters (changes within the
# server's millisecond share a time).
_ROW_VERSION = ("$updatedAt", USED, IN_FLIGHT, TOPUP)

# One staged change of a transaction, in the wire format of ``create_operations``.
Operation = dict[str, Any]


class _PeriodMoved(StoreError):
    """Once staged, an ending settle found its account in another period than it stamped."""


class TransactionConflict(StoreError):
    """A commit found a row changed since one of its operations was staged (or a row it
    creates already there)."""


class ColumnMissing(StoreError):
    """The server's "not found" of a counter change: the column's, or the row's (a read tells)."""


# Appwrite's error types and the domain signal each one is; any other failure is a StoreError.
SIGNALS: Mapping[str, type[MeteringError]] = {
    "row_not_found": NotFound,
    # A commit names a row that is gone `document_not_found`, whatever API staged the operation.
    "document_not_found": NotFound,
    "database_not_found": NotFound,
    "table_not_found": NotFound,
    "row_already_exists": AlreadyExists,
    # A bounded increment or decrement refused: `column_limit_exceeded` when called directly;
    # a commit reports the same refusal under the older `attribute_limit_exceeded`.
    "column_limit_exceeded": LimitReached,
    "attribute_limit_exceeded": LimitReached,
    "transaction_conflict": TransactionConflict,
    # An increment of a missing row fails inside the database layer as "not found", which the
    # server reports as a missing column.
    "column_not_found": ColumnMissing,
    "attribute_not_found": ColumnMissing,
    # `cursorAfter` names a row that is gone: the walk starts again from the first row.
    "general_cursor_not_found": NotFound,
}


def call(what: str, action: Callable[[], T]) -> T:
    """Run one SDK call; a failure becomes the signal its type maps to, else a ``StoreError``."""
    try:
        return action()
    except AppwriteException as exc:
        signal = SIGNALS.get(str(exc.type), StoreError)
        raise signal(f"{what} failed: {exc.code} {exc.type}: {exc.message}") from exc


def connect_tables(endpoint: str, project_id: str, api_key: str) -> TablesDB:
    """The TablesDB service of a project, authenticated with a server key."""
    if not endpoint:
        # The SDK would otherwise talk to Appwrite Cloud.
        raise StoreError("no Appwrite endpoint configured")
    client = Client()
    call("setting the Appwrite endpoint", lambda: client.set_endpoint(endpoint))
    client.set_project(project_id)
    client.set_key(api_key)
    return TablesDB(client)


def account_permissions(user_id: str) -> list[str]:
    """A subscriptions row is readable by its user alone (row security), so Realtime shows the
    page its meter; ``backfill`` gives older rows the same."""
    return [Permission.read(Role.user(user_id))]


def document(row: Any) -> dict[str, Any]:
    """The columns of an SDK row model plus the system fields the codec reads."""
    data = dict(row.data) if isinstance(row.data, dict) else {}
    data["$id"] = row.id
    data["$createdAt"] = row.createdat
    data["$updatedAt"] = row.updatedat
    return data


@dataclass
class _Settlement:
    """The change that settles or discards an entry, adjusted as commits refuse it."""

    ledger: dict[str, Any]  # the entry's columns to set
    turn: dict[str, Any] | None  # the turn's columns to set
    release: int  # what the request gives back
    keeps_hold: bool  # the patch leaves the entry's hold as it is
    account_row: str | None  # the counter's row; None when the user has none
    counts_out: bool  # the change ends the request: one fewer in flight
    period: str | None = None  # the period an ending change stamps on the entry
    give_back: int = field(init=False)  # what the counter gives back: never below zero
    guarded: bool = field(init=False)  # whether ``_guard`` holds the entry, else ``_check``

    def __post_init__(self) -> None:
        self.give_back = self.release
        self.guarded = self.release > 0


def _same_time(left: object, right: object) -> bool:
    return parse_timestamp(left) == parse_timestamp(right)


@functools.cache
def _default_plans() -> PlanCatalog:
    # A store is opened per execution; the packaged plans are read once per warm instance.
    return load_default_plans()


class AppwriteStore:
    """Subscriptions, the ledger, turns, claims, payments and notices in TablesDB tables."""

    def __init__(
        self, tables: TablesDB, settings: StoreSettings, plans: PlanCatalog | None = None
    ) -> None:
        self._db = tables
        self._database = settings.database_id
        self._subscriptions = settings.subscriptions_table
        self._ledger = settings.usage_events_table
        self._claims = settings.claims_table
        self._payments = settings.payments_table
        self._notices = settings.notices_table
        self._turns = codec.TURNS
        self._turn_stops = codec.TURN_STOPS
        self._cursors = codec.CURSORS
        self._plans = plans or _default_plans()
        # Row ids never change, so a user's row id is looked up once per warm instance.
        self._row_ids: dict[str, str] = {}
        # The period each user's row was last seen in: what an ending settle stamps first.
        self._periods: dict[str, str] = {}
        self._row_ids_lock = threading.Lock()

    @classmethod
    def connect(cls, settings: StoreSettings, api_key: str) -> AppwriteStore:
        tables = connect_tables(settings.appwrite_endpoint, settings.appwrite_project_id, api_key)
        return cls(tables, settings)

    # -- rows ------------------------------------------------------------------------------------

    def _get(self, table: str, row_id: str) -> dict[str, Any] | None:
        try:
            row = call(f"reading {table}", lambda: self._db.get_row(self._database, table, row_id))
        except NotFound:
            return None
        return document(row)

    def _require(self, table: str, row_id: str) -> None:
        if self._get(table, row_id) is None:
            raise NotFound(f"no row {row_id} in {table}")

    def _create(
        self,
        table: str,
        row_id: str,
        data: Mapping[str, Any],
        permissions: list[str] | None = None,
    ) -> dict[str, Any]:
        create = functools.partial(
            self._db.create_row, self._database, table, row_id, dict(data), permissions
        )
        return document(call(f"creating a row of {table}", create))

    def _update(self, table: str, row_id: str, data: Mapping[str, Any]) -> dict[str, Any]:
        update = functools.partial(self._db.update_row, self._database, table, row_id, dict(data))
        return document(call(f"updating {table}", update))

    def _delete(self, table: str, row_id: str) -> None:
        with contextlib.suppress(NotFound):
            call(
                f"deleting from {table}", lambda: self._db.delete_row(self._database, table, row_id)
            )

    def _list(self, table: str, queries: list[str]) -> list[dict[str, Any]]:
        result = call(
            f"listing {table}", lambda: self._db.list_rows(self._database, table, queries)
        )
        return [document(row) for row in result.rows]

    def _page(
        self, table: str, filters: list[str], limit: int, cursor: str | None
    ) -> tuple[list[dict[str, Any]], str | None]:
        if limit < 1:
            raise StoreError(f"page limit must be positive, got {limit}")
        # A shorter page with a cursor is still a page; Appwrite caps `limit` itself.
        limit = min(limit, MAX_PAGE)
        # One row more than asked tells whether another page follows, without an extra call.
        queries = [*filters, Query.limit(limit + 1)]
        if cursor:
            queries.append(Query.cursor_after(cursor))
        rows = self._list(table, queries)
        if len(rows) > limit:
            rows = rows[:limit]
            return rows, str(rows[-1]["$id"])
        return rows, None

    def _all(self, table: str, filters: list[str]) -> Iterator[dict[str, Any]]:
        cursor: str | None = None
        while True:
            rows, cursor = self._page(table, filters, PAGE_SIZE, cursor)
            yield from rows
            if cursor is None:
                return

    def _transaction(
        self,
        what: str,
        steps: Sequence[Callable[..., object]],
        abandon: Callable[[], bool] = lambda: False,
    ) -> bool:
        """Stage ``steps`` (SDK calls that take a ``transaction_id``) and commit them together,
        unless ``abandon()``, asked once they are staged, says not to (then False). A refusal is
        raised as its signal, after the rollback."""
        transaction = call("starting a transaction", self._db.create_transaction).id
        try:
            for step in steps:
                call(what, functools.partial(step, transaction_id=transaction))
            if abandon():
                self._rollback(transaction)
                return False
            commit = functools.partial(self._db.update_transaction, transaction, commit=True)
            call(what, commit)
        except MeteringError:
            self._rollback(transaction)
            raise
        return True

    def _rollback(self, transaction: str) -> None:
        # An uncommitted transaction expires on its own if the rollback fails too.
        rollback = functools.partial(self._db.update_transaction, transaction, rollback=True)
        with contextlib.suppress(MeteringError):
            call("rolling back a transaction", rollback)

    # -- accounts --------------------------------------------------------------------------------

    def _account(self, row: Mapping[str, Any]) -> Account:
        return codec.decode_account(row, self._plans)

    def _find_account_row(self, column: str, value: str) -> dict[str, Any] | None:
        rows = self._list(self._subscriptions, [Query.equal(column, value), Query.limit(1)])
        if not rows:
            return None
        if column == "userId":
            self._remember(value, rows[0])
        return rows[0]

    def _remember(self, user_id: str, row: Mapping[str, Any]) -> None:
        with self._row_ids_lock:
            self._row_ids[user_id] = str(row["$id"])
            self._periods[user_id] = str(row.get("periodStart"))

    def _row_id(self, user_id: str) -> str:
        """The row id of the user's subscription; raises ``NotFound`` when there is none."""
        with self._row_ids_lock:
            cached = self._row_ids.get(user_id)
        if cached is not None:
            return cached
        row = self._find_account_row("userId", user_id)
        if row is None:
            raise NotFound(f"no account for user {user_id}")
        return str(row["$id"])

    def get_account(self, user_id: str) -> Account | None:
        row = self._find_account_row("userId", user_id)
        return self._account(row) if row is not None else None

    def create_account(self, account: Account) -> Account:
        row_id = codec.row_key(account.row_id or account.user_id)
        try:
            row = self._create(
                self._subscriptions,
                row_id,
                codec.encode_account(account),
                account_permissions(account.user_id),
            )
        except AlreadyExists as exc:
            # Lost a race (same row id, or the unique userId index): the winner's row counts.
            existing = self.get_account(account.user_id)
            if existing is None:
                raise StoreError(f"row id {row_id} is taken by another user") from exc
            return existing
        self._remember(account.user_id, row)
        return self._account(row)

    def find_account_by_customer(self, stripe_customer_id: str) -> Account | None:
        if not stripe_customer_id:
            return None
        row = self._find_account_row("stripeCustomerId", stripe_customer_id)
        return self._account(row) if row is not None else None

    def find_account_by_subscription(self, stripe_subscription_id: str) -> Account | None:
        if not stripe_subscription_id:
            return None
        row = self._find_account_row("stripeSubscriptionId", stripe_subscription_id)
        return self._account(row) if row is not None else None

    def update_account(self, user_id: str, patch: AccountPatch) -> Account:
        data = codec.encode_account_patch(patch)
        return self._account(self._update(self._subscriptions, self._row_id(user_id), data))

    def add_topup(self, user_id: str, tokens: int) -> Account:
        if tokens < 0:
            raise InvalidRequest("a top-up cannot be negative")
        row_id = self._row_id(user_id)
        if tokens == 0:
            row = self._get(self._subscriptions, row_id)
            if row is None:
                raise NotFound(f"no account for user {user_id}")
            return self._account(row)
        return self._account(self._increment(self._subscriptions, row_id, TOPUP, tokens))

    def remove_topup(self, user_id: str, tokens: int) -> Account:
        if tokens < 0:
            raise InvalidRequest("cannot remove a negative amount")
        row_id = self._row_id(user_id)
        if tokens > 0:
            self._decrement_floored(self._subscriptions, row_id, TOPUP, tokens)
        row = self._get(self._subscriptions, row_id)
        if row is None:
            raise NotFound(f"no account for user {user_id}")
        return self._account(row)

    def list_accounts(self, query: AccountQuery, limit: int, cursor: str | None) -> Page[Account]:
        filters: list[str] = []
        if query.subscribed is True:
            filters.append(Query.is_not_null("stripeSubscriptionId"))
        elif query.subscribed is False:
            filters.append(Query.is_null("stripeSubscriptionId"))
        if query.period_start_before is not None:
            filters.append(
                Query.less_than("periodStart", codec.encode_time(query.period_start_before))
            )
        if query.period_end_before is not None:
            filters.append(Query.less_than("periodEnd", codec.encode_time(query.period_end_before)))
        if query.with_usage:
            filters.append(Query.greater_than(USED, 0))
        rows, next_cursor = self._page(self._subscriptions, filters, limit, cursor)
        return Page(
            items=[self._account(row) for row in rows],
            next_cursor=next_cursor,
            item_cursors=[str(row["$id"]) for row in rows],
        )

    # -- counters --------------------------------------------------------------------------------

    def _increment(
        self, table: str, row_id: str, column: str, tokens: int, limit: int | None = None
    ) -> dict[str, Any]:
        increment = functools.partial(
            self._db.increment_row_column,
            self._database,
            table,
            row_id,
            column,
            value=tokens,
            max=limit,
        )
        try:
            return document(call(f"incrementing {table}.{column}", increment))
        except ColumnMissing:
            self._require(table, row_id)
            raise

    def _decrement_floored(self, table: str, row_id: str, column: str, tokens: int) -> None:
        """Subtract ``tokens`` but never go below zero, even when the column went down
        concurrently (a refund's top-up removal racing another): then subtract what is left."""
        amount = tokens
        for _ in range(ATTEMPTS * 2):
            if amount <= 0:
                return
            # The server refuses (LimitReached) rather than take the column below zero.
            decrement = functools.partial(
                self._db.decrement_row_column,
                self._database,
                table,
                row_id,
                column,
                value=amount,
                min=0,
            )
            try:
                call(f"decrementing {table}.{column}", decrement)
            except ColumnMissing:
                self._require(table, row_id)
                raise
            except LimitReached as exc:
                row = self._get(table, row_id)
                if row is None:
                    raise NotFound(f"no row {row_id} in {table}") from exc
                # Less is left than asked: take what is left (or all, if it went up meanwhile).
                amount = min(amount, codec.INT.decode(row.get(column)) or 0)
                continue
            return
        raise StoreError(f"{table}.{column} kept changing while being decremented")

    # -- one transaction per change of the hard cap ----------------------------------------------

    def _operation(
        self, action: str, table: str, row_id: str, data: Mapping[str, Any] | None = None
    ) -> Operation:
        return {
            "action": action,
            "databaseId": self._database,
            "tableId": table,
            "rowId": row_id,
            "data": dict(data or {}),
        }

    def _add(
        self, table: str, row_id: str, column: str, tokens: int, limit: int | None = None
    ) -> list[Operation]:
        """Add ``tokens`` to the column; with a ``limit``, the commit is refused (LimitReached)
        when the sum passes it."""
        if tokens > 0:
            data: dict[str, Any] = {"column": column, "value": tokens}
            if limit is not None:
                data["max"] = limit
            return [self._operation("increment", table, row_id, data)]
        if limit is None:
            return []
        # Adding nothing must still be refused past the limit, as the bounded add of SQLite is:
        # one token up within limit + 1, and back down.
        return [
            self._operation(
                "increment", table, row_id, {"column": column, "value": 1, "max": limit + 1}
            ),
            self._operation("decrement", table, row_id, {"column": column, "value": 1}),
        ]

    def _take(self, table: str, row_id: str, column: str, tokens: int) -> list[Operation]:
        """Subtract ``tokens`` from the column; the commit is refused (LimitReached) rather than
        take it below zero."""
        if tokens <= 0:
            return []
        data = {"column": column, "value": tokens, "min": 0}
        return [self._operation("decrement", table, row_id, data)]

    def _commit(
        self,
        what: str,
        operations: Sequence[Operation],
        still_wanted: Callable[[], bool] | None = None,
    ) -> bool:
        """Stage ``operations`` in one request and commit them together: three requests, and
        all of them apply or none. ``still_wanted``, asked once they are staged, may abandon
        them (then False): a change committed after the staging fails the commit, so what it
        reads holds until the commit."""
        transaction = call("starting a transaction", self._db.create_transaction).id
        try:
            stage = functools.partial(self._db.create_operations, transaction, list(operations))
            call(what, stage)
            if still_wanted is not None and not still_wanted():
                self._rollback(transaction)
                return False
        except MeteringError:
            # A refused batch stages nothing, yet the transaction stays open until it expires.
            self._rollback(transaction)
            raise
        # A refused commit fails the transaction itself: there is nothing to roll back.
        call(what, functools.partial(self._db.update_transaction, transaction, commit=True))
        return True

    def _account_row_id(self, user_id: str) -> str | None:
        try:
            return self._row_id(user_id)
        except NotFound:
            return None

    def _counter(self, account_row: str) -> int:
        return self._counters(account_row)[0]

    def _counters(self, account_row: str) -> tuple[int, int]:
        """The account's tokens used and requests in flight, as stored now."""
        row = self._get(self._subscriptions, account_row)
        if row is None:
            raise NotFound(f"no row {account_row} in {self._subscriptions}")
        return codec.INT.decode(row.get(USED)) or 0, codec.INT.decode(row.get(IN_FLIGHT)) or 0

    def _in_flight(self, ledger_row: str) -> dict[str, Any] | None:
        """The entry's row while it is ``reserved``, else None."""
        row = self._get(self._ledger, ledger_row)
        return row if row is not None and row.get("status") == LedgerStatus.RESERVED.value else None

    def open_request(
        self,
        entry: LedgerEntry,
        limit: int,
        turn: Turn | None = None,
        *,
        max_in_flight: int | None = None,
    ) -> None:
        if entry.held_tokens < 0:
            raise InvalidRequest("cannot hold a negative amount")
        account_row = self._row_id(entry.user_id)
        ledger_row = codec.row_key(entry.request_id)
        # Creating the entry is the claim: when it exists the commit fails and nothing applies.
        operations = [
            self._operation("create", self._ledger, ledger_row, codec.encode_ledger(entry))
        ]
        if turn is not None:
            # An upsert replaces the turn a discarded attempt with this id left behind.
            data = {
                **codec.encode_turn(turn),
                "$permissions": codec.turn_permissions(turn.user_id),
            }
            operations.append(
                self._operation("upsert", self._turns, codec.row_key(turn.request_id), data)
            )
        operations += self._add(self._subscriptions, account_row, IN_FLIGHT, 1, max_in_flight)
        operations += self._add(self._subscriptions, account_row, USED, entry.held_tokens, limit)
        for _ in range(ATTEMPTS):
            try:
                self._commit("opening a request", operations)
            except LimitReached as exc:
                # One refusal for either bound: the stored count tells which (checked first,
                # as on SQLite, so that a user at the cap is told to wait).
                if max_in_flight is not None and self._counters(account_row)[1] >= max_in_flight:
                    raise InFlightLimitReached(
                        f"{entry.user_id!r} has {max_in_flight} requests in flight"
                    ) from exc
                raise
            except TransactionConflict as exc:
                # The commit reports an existing row and a row changed since staging alike.
                if self._get(self._ledger, ledger_row) is not None:
                    raise AlreadyExists(f"ledger entry {entry.request_id!r} exists") from exc
                continue  # the old turn changed since staging: stage again
            return
        raise StoreError(f"the turn of {entry.request_id!r} kept changing while it was opened")

    def hold(self, user_id: str, request_id: str, tokens: int, limit: int) -> None:
        if tokens < 0:
            raise InvalidRequest("cannot hold a negative amount")
        account_row = self._row_id(user_id)
        ledger_row = codec.row_key(request_id)
        operations = self._add(self._subscriptions, account_row, USED, tokens, limit)
        # The entry's status is not checked: only its own request holds, between its own
        # settles, and the cron reclaims an entry only long after that request's timeout.
        # Staging any change of a missing entry is refused (NotFound): with nothing to add,
        # one token up and back down still asks for it.
        if tokens > 0:
            operations += self._add(self._ledger, ledger_row, HELD, tokens)
        else:
            operations += [
                *self._add(self._ledger, ledger_row, HELD, 1),
                self._operation(
                    "decrement", self._ledger, ledger_row, {"column": HELD, "value": 1}
                ),
            ]
        self._commit("holding tokens", operations)

    def settle(
        self,
        user_id: str,
        request_id: str,
        release: int,
        patch: LedgerPatch,
        turn: TurnPatch | None = None,
    ) -> None:
        if release < 0:
            raise InvalidRequest("cannot release a negative amount")
        ends = patch.get("status", LedgerStatus.RESERVED) != LedgerStatus.RESERVED
        change = _Settlement(
            ledger=codec.encode_ledger_patch(patch),
            turn=codec.encode_turn_patch(turn) if turn is not None else None,
            release=release,
            keeps_hold="held_tokens" not in patch,
            account_row=self._account_row_id(user_id) if release or ends else None,
            counts_out=ends,
        )
        ledger_row = codec.row_key(request_id)
        if ends and change.account_row is not None:
            change.period = self._seen_period(user_id, change.account_row)
        for _ in range(ATTEMPTS):
            operations = self._stamp(ledger_row, change)
            operations += self._guard(ledger_row, change)
            operations.append(self._operation("update", self._ledger, ledger_row, change.ledger))
            operations += self._give_back(change)
            operations += self._turn_update(request_id, change)
            try:
                if self._commit("settling a request", operations, self._wanted(ledger_row, change)):
                    return
            except _PeriodMoved:
                continue  # staged again with the account's period
            except (LimitReached, NotFound, TransactionConflict) as exc:
                row = self._in_flight(ledger_row)
                if row is not None and self._refused(change, exc, row):
                    continue
                raise Conflict(f"ledger entry {request_id!r} is not in flight") from exc
            raise Conflict(f"ledger entry {request_id!r} is not in flight")
        raise StoreError(f"ledger entry {request_id!r} kept changing while it was settled")

    def discard_request(
        self, user_id: str, request_id: str, release: int, turn: TurnPatch | None = None
    ) -> None:
        if release < 0:
            raise InvalidRequest("cannot release a negative amount")
        change = _Settlement(
            ledger={},
            turn=codec.encode_turn_patch(turn) if turn is not None else None,
            release=release,
            keeps_hold=False,
            account_row=self._account_row_id(user_id),
            counts_out=True,
        )
        ledger_row = codec.row_key(request_id)
        for _ in range(ATTEMPTS):
            operations = self._guard(ledger_row, change)
            operations.append(self._operation("delete", self._ledger, ledger_row))
            operations += self._give_back(change)
            operations += self._turn_update(request_id, change)
            try:
                if self._commit(
                    "discarding a request", operations, self._check(ledger_row, change)
                ):
                    return
            except (LimitReached, NotFound, TransactionConflict) as exc:
                row = self._in_flight(ledger_row)
                if row is not None and self._refused(change, exc, row):
                    continue
            break
        else:
            raise StoreError(f"ledger entry {request_id!r} kept changing while it was discarded")
        # The entry is gone or settled, and stays as it is; its turn still ends as told.
        if change.turn is not None:
            with contextlib.suppress(NotFound):
                self._update(self._turns, codec.row_key(request_id), change.turn)

    def _guard(self, ledger_row: str, change: _Settlement) -> list[Operation]:
        """What makes the commit apply only while the entry is in flight, at no request more.

        Every way out of ``reserved`` (settled, failed, reclaimed, discarded) zeroes the entry's
        hold, and a request in flight holds at least what it gives back. So taking ``release``
        from the hold (never below zero) fails the commit once the entry left flight, however
        long ago: a late settle after the cron's reclaim, or a second reclaim. The commit then
        sets the hold the patch says, or puts back what the guard took.

        Without tokens to give back, or for a row written before ``heldTokens`` (its hold is
        in ``reservedTokens``), the guard is ``_check``: a read of the status once the change
        is staged, one request more."""
        if not change.guarded:
            return []
        operations = self._take(self._ledger, ledger_row, HELD, change.release)
        if change.keeps_hold:
            operations += self._add(self._ledger, ledger_row, HELD, change.release)
        return operations

    def _check(self, ledger_row: str, change: _Settlement) -> Callable[[], bool] | None:
        if change.guarded:
            return None
        return lambda: self._in_flight(ledger_row) is not None

    def _stamp(self, ledger_row: str, change: _Settlement) -> list[Operation]:
        """A change that ends the request first stamps the entry with the period its tokens are
        counted in. First, so that the commit checks it against changes since the staging: a
        reset landing meanwhile restamps the entry, and so fails the commit."""
        if change.period is None:
            return []
        return [self._operation("update", self._ledger, ledger_row, {"periodStart": change.period})]

    def _wanted(self, ledger_row: str, change: _Settlement) -> Callable[[], bool] | None:
        """What a settle asks once staged: ``_check``, and for a change that stamps the entry,
        that the account is still in that period (a reset that landed before the staging)."""
        check = self._check(ledger_row, change)
        stamp, account_row = change.period, change.account_row
        if stamp is None or account_row is None:
            return check

        def wanted() -> bool:
            row = self._get(self._subscriptions, account_row)
            current = row.get("periodStart") if row is not None else None
            if current is not None and not _same_time(current, stamp):
                change.period = str(current)
                raise _PeriodMoved(f"the account of {ledger_row} moved to the period {current}")
            return check is None or check()

        return wanted

    def _seen_period(self, user_id: str, account_row: str) -> str:
        """The period the user's row was last seen in, read when this instance has not."""
        with self._row_ids_lock:
            seen = self._periods.get(user_id)
        if seen is not None:
            return seen
        row = self._get(self._subscriptions, account_row)
        if row is None:
            raise NotFound(f"no row {account_row} in {self._subscriptions}")
        return str(row.get("periodStart"))

    def _give_back(self, change: _Settlement) -> list[Operation]:
        if change.account_row is None:
            return []  # nobody's counter holds anything to give back
        operations = self._take(self._subscriptions, change.account_row, USED, change.give_back)
        if change.counts_out:
            operations += self._take(self._subscriptions, change.account_row, IN_FLIGHT, 1)
        return operations

    def _turn_update(self, request_id: str, change: _Settlement) -> list[Operation]:
        if change.turn is None:
            return []
        return [self._operation("update", self._turns, codec.row_key(request_id), change.turn)]

    def _refused(self, change: _Settlement, refusal: MeteringError, row: Mapping[str, Any]) -> bool:
        """Adjust ``change`` to a commit's refusal while the entry (``row``) is still in flight;
        False when the entry cannot take it at all."""
        if isinstance(refusal, NotFound):
            if change.turn is None:
                raise refusal  # the account's row is gone
            change.turn = None  # the turn's row is gone: the accounting still settles
        elif isinstance(refusal, LimitReached):
            if change.guarded and (codec.INT.decode(row.get(HELD)) or 0) < change.release:
                if codec.decode_ledger(row).held_tokens < change.release:
                    # Its hold was given back already: a settle applied once whose answer was
                    # lost. Giving it back again would take the counter below the ledger.
                    return False
                # A row written before heldTokens keeps its hold in reservedTokens.
                change.guarded = False
            # Or the counter is below what is given back (a reset lowered it): give back what
            # is left, never going below zero; and an entry opened before the count of requests
            # in flight existed (it reads zero) was never counted in.
            if change.account_row is not None:
                used, in_flight = self._counters(change.account_row)
                change.give_back = min(change.give_back, used)
                change.counts_out = change.counts_out and in_flight > 0
        # A conflict: a row changed since staging; staged again, it is read afresh.
        return True

    def apply_reset(self, reset: ResetPlan, previous_period_start: datetime) -> Account | None:
        return reset_once(self, reset, lambda: self._reset_counters(reset, previous_period_start))

    def _reset_counters(self, reset: ResetPlan, previous_period_start: datetime) -> Account | None:
        """Read the row and the user's requests in flight, stage the change they call for, and
        commit it only if the row is still as read once staged: a change of the row after the
        staging fails the commit (the period's update conflicts), one before it shows here."""
        row_id = self._account_row_id(reset.user_id)
        for _ in range(ATTEMPTS):
            row = self._get(self._subscriptions, row_id) if row_id is not None else None
            if row is None:
                return None
            account = self._account(row)
            if not reset_applies(account, reset, previous_period_start):
                return None
            in_flight = list(self._all(self._ledger, self._in_flight_of(reset.user_id)))
            operations = self._reset_operations(reset, account, in_flight)
            try:
                unchanged = functools.partial(self._as_read, row)
                if self._commit("committing a reset", operations, unchanged):
                    return self.get_account(reset.user_id)
            except (LimitReached, NotFound, TransactionConflict):
                pass  # a request changed its entry or the counter under the staging
        raise StoreError("the counter kept changing during a reset")

    @staticmethod
    def _in_flight_of(user_id: str) -> list[str]:
        return [
            Query.equal("userId", user_id),
            Query.equal("status", LedgerStatus.RESERVED.value),
        ]

    def _as_read(self, row: Mapping[str, Any]) -> bool:
        """The account's row has not changed since ``row`` was read."""
        now = self._get(self._subscriptions, str(row["$id"]))
        return now is not None and all(now.get(key) == row.get(key) for key in _ROW_VERSION)

    def _reset_operations(
        self, reset: ResetPlan, account: Account, in_flight: Sequence[Mapping[str, Any]]
    ) -> list[Operation]:
        """One reset's changes, to commit together: the counters, the period, and the new
        period's start on every entry in flight (they end, and are counted, in it)."""
        table, row_id = self._subscriptions, account.row_id
        carried = sum(codec.ledger_counted(codec.decode_ledger(entry)) for entry in in_flight)
        closed = close_period(account, carried)
        period = codec.encode_account_fields(
            {
                "period_start": reset.period_start,
                "period_end": reset.period_end,
                "last_token_reset_at": reset.reset_at,
                "alert_threshold_sent": 0,
            }
        )
        started = {"periodStart": codec.encode_time(reset.period_start)}
        # The update first: a commit checks an update against changes made since the staging
        # only while the commit itself has not yet changed that row.
        return [
            self._operation("update", table, row_id, period),
            *self._take(table, row_id, USED, closed.used),
            *self._add(table, row_id, LIFETIME, closed.used),
            *self._take(table, row_id, TOPUP, closed.topup_consumed),
            *(self._operation("update", self._ledger, str(e["$id"]), started) for e in in_flight),
        ]

    # -- the ledger ------------------------------------------------------------------------------

    def get_ledger(self, request_id: str) -> LedgerEntry | None:
        row = self._get(self._ledger, codec.row_key(request_id))
        return codec.decode_ledger(row, request_id) if row is not None else None

    def request_starts(self, user_id: str, after: datetime, limit: int) -> Sequence[datetime]:
        if limit < 1:
            raise StoreError(f"limit must be positive, got {limit}")
        queries = [
            Query.equal("userId", user_id),
            Query.greater_than("startedAt", codec.encode_time(after)),
            Query.not_equal("status", LedgerStatus.ADJUSTMENT.value),
            Query.order_desc("startedAt"),
            Query.limit(min(limit, MAX_PAGE)),
        ]
        rows = self._list(self._ledger, queries)
        starts = (codec.TIME.decode(row.get("startedAt")) for row in rows)
        return [start for start in starts if start is not None]

    def list_stale_reservations(
        self, updated_before: datetime, limit: int, cursor: str | None
    ) -> Page[LedgerEntry]:
        filters = [
            Query.equal("status", LedgerStatus.RESERVED.value),
            Query.less_than("touchedAt", codec.encode_time(updated_before)),
        ]
        rows, next_cursor = self._page(self._ledger, filters, limit, cursor)
        return Page(items=[codec.decode_ledger(row) for row in rows], next_cursor=next_cursor)

    def list_ledger(
        self, created_from: datetime, created_before: datetime, limit: int, cursor: str | None
    ) -> Page[LedgerEntry]:
        filters = [
            Query.greater_than_equal("startedAt", codec.encode_time(created_from)),
            Query.less_than("startedAt", codec.encode_time(created_before)),
        ]
        rows, next_cursor = self._page(self._ledger, filters, limit, cursor)
        return Page(items=[codec.decode_ledger(row) for row in rows], next_cursor=next_cursor)

    def ledger_total(self, user_id: str, period_start: datetime) -> int:
        filters = [
            Query.equal("userId", user_id),
            Query.equal("periodStart", codec.encode_time(period_start)),
        ]
        rows = self._all(self._ledger, filters)
        return sum(codec.ledger_counted(codec.decode_ledger(row)) for row in rows)

    def record_adjustment(self, entry: LedgerEntry, tokens: int) -> None:
        account_row = self._row_id(entry.user_id)
        ledger_row = codec.row_key(entry.request_id)
        create = self._operation("create", self._ledger, ledger_row, codec.encode_ledger(entry))
        lower = -tokens
        for _ in range(ATTEMPTS):
            if tokens >= 0:
                change = self._add(self._subscriptions, account_row, USED, tokens)
            else:
                change = self._take(self._subscriptions, account_row, USED, lower)
            try:
                self._commit("recording an adjustment", [create, *change])
            except TransactionConflict as exc:
                if self._get(self._ledger, ledger_row) is not None:
                    raise AlreadyExists(f"ledger entry {entry.request_id!r} exists") from exc
                continue
            except LimitReached:
                # The counter went down meanwhile: take what is left, never below zero.
                lower = min(lower, self._counter(account_row))
                continue
            return
        raise StoreError(f"the counter of {entry.user_id!r} kept changing during an adjustment")

    # -- resumable walks -------------------------------------------------------------------------

    def get_cursor(self, name: str) -> str | None:
        row = self._get(self._cursors, codec.row_key(name))
        return codec.decode_cursor(row) if row is not None else None

    def save_cursor(self, name: str, cursor: str | None) -> None:
        row_id = codec.row_key(name)
        if cursor is None:
            self._delete(self._cursors, row_id)
            return
        data = codec.encode_cursor(name, cursor)
        try:
            self._update(self._cursors, row_id, data)
        except NotFound:
            try:
                self._create(self._cursors, row_id, data)
            except AlreadyExists:
                self._update(self._cursors, row_id, data)  # another run saved it first

    # -- turns -----------------------------------------------------------------------------------

    def get_turn(self, request_id: str) -> Turn | None:
        row = self._get(self._turns, codec.row_key(request_id))
        return codec.decode_turn(row) if row is not None else None

    def update_turn(self, request_id: str, patch: TurnPatch) -> None:
        self._update(self._turns, codec.row_key(request_id), codec.encode_turn_patch(patch))

    def request_stop(self, request_id: str, user_id: str, now: datetime) -> None:
        stop = codec.encode_stop(request_id, user_id, now)
        # A second Stop finds the row there: nothing to change.
        with contextlib.suppress(AlreadyExists):
            self._create(self._turn_stops, codec.row_key(request_id), stop)

    def stop_requested(self, request_id: str) -> bool:
        return self._get(self._turn_stops, codec.row_key(request_id)) is not None

    # -- claims ----------------------------------------------------------------------------------

    def claim_event(
        self, event_id: str, event_type: str, object_id: str, now: datetime, lease: timedelta | None
    ) -> ClaimOutcome:
        row_id = codec.row_key(event_id)
        for _ in range(3):
            try:
                self._create(
                    self._claims, row_id, codec.new_claim(event_id, event_type, object_id, now)
                )
            except AlreadyExists:
                row = self._get(self._claims, row_id)
            else:
                return ClaimOutcome.CLAIMED
            if row is None:
                continue  # released between our attempt and the read: try again
            held = codec.held_claim(row, now, lease)
            return (
                held if held is not None else self._take_over(row_id, codec.claim_attempt(row), now)
            )
        return ClaimOutcome.IN_PROGRESS

    def _take_over(self, row_id: str, attempt: int, now: datetime) -> ClaimOutcome:
        """The holder died. Taking over is a compare-and-swap committed together with the new
        lease: the bounded increment of ``attempt`` succeeds for exactly one of the workers that
        saw this attempt, and nobody sees the new attempt with the old, expired lease."""
        db, database, table = self._db, self._database, self._claims
        steps = [
            functools.partial(
                db.increment_row_column,
                database,
                table,
                row_id,
                "attempt",
                value=1,
                max=attempt + 1,
            ),
            functools.partial(
                db.update_row, database, table, row_id, {"claimedAt": codec.encode_time(now)}
            ),
        ]
        try:
            self._transaction("taking over a claim", steps)
        except (LimitReached, NotFound, TransactionConflict):
            # Another worker took over (or released) first: its claim stands.
            return ClaimOutcome.IN_PROGRESS
        return ClaimOutcome.CLAIMED

    def complete_event(self, event_id: str, outcome: str, now: datetime) -> None:
        row_id = codec.row_key(event_id)
        try:
            self._update(self._claims, row_id, codec.completed_claim(outcome, now))
        except NotFound:
            # The claim vanished (released by a timed-out worker): record the outcome anyway.
            self._create(self._claims, row_id, codec.recorded_claim(event_id, outcome, now))

    def release_event(self, event_id: str) -> None:
        row_id = codec.row_key(event_id)

        def settled() -> bool:
            row = self._get(self._claims, row_id)
            return row is None or row.get("status") == codec.DONE

        delete = functools.partial(self._db.delete_row, self._database, self._claims, row_id)
        # Read once the delete is staged: a completion or a takeover after the read makes the
        # commit conflict, so a completed claim is never dropped.
        with contextlib.suppress(NotFound, TransactionConflict):
            self._transaction("releasing a claim", [delete], abandon=settled)

    # -- payments --------------------------------------------------------------------------------

    def record_payment(self, payment: Payment) -> bool:
        row_id = codec.row_key(payment.stripe_id)
        try:
            self._create(self._payments, row_id, codec.encode_payment(payment))
        except AlreadyExists:
            return False
        return True

    def get_payment(self, stripe_id: str) -> Payment | None:
        row = self._get(self._payments, codec.row_key(stripe_id))
        return codec.decode_payment(row) if row is not None else None

    def find_payment_by_intent(self, payment_intent: str) -> Payment | None:
        if not payment_intent:
            return None
        filters = [Query.equal("paymentIntent", payment_intent), Query.limit(1)]
        rows = self._list(self._payments, filters)
        return codec.decode_payment(rows[0]) if rows else None

    def update_payment(self, stripe_id: str, patch: PaymentPatch) -> Payment:
        data = codec.encode_payment_patch(patch)
        return codec.decode_payment(self._update(self._payments, codec.row_key(stripe_id), data))

    def list_payments(
        self, paid_from: datetime, paid_before: datetime, limit: int, cursor: str | None
    ) -> Page[Payment]:
        filters = [
            Query.greater_than_equal("paidAt", codec.encode_time(paid_from)),
            Query.less_than("paidAt", codec.encode_time(paid_before)),
        ]
        rows, next_cursor = self._page(self._payments, filters, limit, cursor)
        return Page(items=[codec.decode_payment(row) for row in rows], next_cursor=next_cursor)

    # -- usage alerts ----------------------------------------------------------------------------

    def create_notice(self, notice: Notice) -> None:
        # The table has row security: this permission is the only way anyone reads the row.
        permissions = [Permission.read(Role.user(notice.user_id))]
        create = functools.partial(
            self._db.create_row,
            self._database,
            self._notices,
            codec.row_key(notice.id),
            codec.encode_notice(notice),
            permissions,
        )
        with contextlib.suppress(AlreadyExists):
            call(f"creating a row of {self._notices}", create)

    def list_notices(self, user_id: str, period_start: datetime) -> Sequence[Notice]:
        filters = [
            Query.equal("userId", user_id),
            Query.equal("periodStart", codec.encode_time(period_start)),
            Query.order_desc("raisedAt"),
            Query.limit(PAGE_SIZE),
        ]
        return [codec.decode_notice(row) for row in self._list(self._notices, filters)]

    def mark_alert_sent(self, user_id: str, period_start: datetime, threshold: int) -> None:
        try:
            row_id = self._row_id(user_id)
        except NotFound:
            return
        period = codec.encode_time(period_start)
        # Not a bare update_row, which writes back the whole merged row and could undo the
        # increment of a request in flight: staged, its commit fails if the row changed since.
        update = functools.partial(
            self._db.update_row,
            self._database,
            self._subscriptions,
            row_id,
            codec.encode_account_fields({"alert_threshold_sent": threshold}),
        )

        def needless() -> bool:
            row = self._get(self._subscriptions, row_id)
            if row is None:
                return True
            account = self._account(row)
            moved = codec.encode_time(account.period_start) != period
            return moved or account.alert_threshold_sent >= threshold

        for _ in range(ATTEMPTS):
            try:
                self._transaction("marking an alert sent", [update], abandon=needless)
            except TransactionConflict:
                continue  # a request in flight changed the row: read it again
            return
        raise StoreError("the account kept changing while an alert was marked sent")
