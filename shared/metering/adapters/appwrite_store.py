"""``UsageStore`` on Appwrite TablesDB (SDK 27), and the schema operations of ``tools.migrate``.

Every ``AppwriteException`` is translated here; nothing above this module sees an Appwrite type.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import re
import threading
from collections.abc import Callable, Iterator, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from appwrite.client import Client
from appwrite.enums.order_by import OrderBy
from appwrite.enums.tables_db_index_type import TablesDBIndexType
from appwrite.exception import AppwriteException
from appwrite.query import Query
from appwrite.services.tables_db import TablesDB

from ..account import Account, ResetPlan
from ..columns import ACCOUNT_PATCH_COLUMNS, usage_columns
from ..config import StoreSettings
from ..errors import AlreadyExists, InvalidRequest, LimitReached, NotFound, StoreError
from ..ledger import LedgerEntry, LedgerStatus
from ..plans import PlanCatalog, load_default_plans
from ..ports import (
    AccountPatch,
    AccountQuery,
    ClaimOutcome,
    LedgerPatch,
    Page,
)
from ..schema import (
    ColumnSpec,
    CreateColumn,
    CreateDatabase,
    CreateTable,
    ExistingSchema,
    ExistingTable,
    Schema,
    Step,
    TableSpec,
)
from ..timeutil import format_timestamp, month_start, parse_timestamp
from ..tokens import TokenUsage

T = TypeVar("T")

ROW_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,35}$")
# A bounded increment or decrement refused: `column_limit_exceeded` when called directly;
# a transaction's commit reports the same refusal under the older `attribute_limit_exceeded`.
LIMIT_EXCEEDED = frozenset({"column_limit_exceeded", "attribute_limit_exceeded"})
# A commit names a row that is gone `document_not_found`, whatever API staged the operation.
ROW_GONE = frozenset({"row_not_found", "document_not_found"})
# A commit whose row changed after an update was staged is refused as a whole.
CONFLICT = "transaction_conflict"
# An increment of a missing row fails inside the database layer as "not found", which the
# server reports as a missing column: only a read tells the two apart.
COLUMN_MISSING = frozenset({"column_not_found", "attribute_not_found"})
PAGE_SIZE = 100
MAX_PAGE = 1000
# A reset claim whose worker died is taken over after this long.
RESET_LEASE = timedelta(minutes=10)
# Attempts at a reset transaction that a concurrent change of the counter made fail.
RESET_ATTEMPTS = 5
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
PENDING = "pending"
DONE = "done"


def row_key(key: str) -> str:
    """A valid Appwrite row id for ``key``: itself when it already is one, else a stable hash.

    Appwrite ids are at most 36 characters of ``[A-Za-z0-9._-]`` not starting with a symbol.
    """
    if ROW_ID.match(key):
        return key
    return "h" + hashlib.sha256(key.encode("utf-8")).hexdigest()[:35]


def _ms(value: datetime) -> datetime:
    """Appwrite keeps datetimes to the millisecond: compare at that precision."""
    value = value.astimezone(UTC)
    return value.replace(microsecond=value.microsecond // 1000 * 1000)


def _time(value: datetime | None) -> str | None:
    return format_timestamp(value) if value is not None else None


def _optional_time(value: Any) -> datetime | None:
    return parse_timestamp(value) if value else None


def _int(value: Any) -> int:
    return int(value) if isinstance(value, int | float) and not isinstance(value, bool) else 0


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


class AppwriteStore:
    """Subscriptions, the ledger and event claims in three TablesDB tables."""

    def __init__(
        self, tables: TablesDB, settings: StoreSettings, plans: PlanCatalog | None = None
    ) -> None:
        self._db = tables
        self._database = settings.database_id
        self._subscriptions = settings.subscriptions_table
        self._ledger = settings.usage_events_table
        self._events = settings.claims_table
        self._plans = plans or _default_plans()
        # Row ids never change, so a user's row id is looked up once per warm instance.
        self._row_ids: dict[str, str] = {}
        self._row_ids_lock = threading.Lock()

    @classmethod
    def connect(cls, settings: StoreSettings, api_key: str) -> AppwriteStore:
        if not settings.appwrite_endpoint:
            # The SDK would otherwise talk to Appwrite Cloud.
            raise StoreError("no Appwrite endpoint configured")
        client = Client()
        try:
            client.set_endpoint(settings.appwrite_endpoint)
        except AppwriteException as exc:
            raise StoreError(f"invalid Appwrite endpoint: {exc.message}") from exc
        client.set_project(settings.appwrite_project_id)
        client.set_key(api_key)
        return cls(TablesDB(client), settings)

    # -- calls -----------------------------------------------------------------------------------

    def _call(self, what: str, action: Callable[[], T]) -> T:
        """Run one SDK call; any failure not handled by the caller becomes a ``StoreError``."""
        try:
            return action()
        except AppwriteException as exc:
            raise _failure(what, exc) from exc

    def _try(self, what: str, action: Callable[[], T], **expected: type[Exception]) -> T:
        """Like ``_call`` but Appwrite error types in ``expected`` become those domain errors."""
        try:
            return action()
        except AppwriteException as exc:
            error = expected.get(str(exc.type))
            if error is not None:
                raise error(f"{what}: {exc.type}") from exc
            raise _failure(what, exc) from exc

    def _get(self, table: str, row_id: str) -> dict[str, Any] | None:
        try:
            row = self._db.get_row(self._database, table, row_id)
        except AppwriteException as exc:
            if exc.type == "row_not_found":
                return None
            raise _failure(f"reading {table}", exc) from exc
        return _document(row)

    def _list(self, table: str, queries: list[str]) -> list[dict[str, Any]]:
        result = self._call(
            f"listing {table}", lambda: self._db.list_rows(self._database, table, queries)
        )
        return [_document(row) for row in result.rows]

    def _page(
        self, table: str, filters: list[str], limit: int, cursor: str | None
    ) -> tuple[list[dict[str, Any]], str | None]:
        if limit <= 0:
            raise InvalidRequest("limit must be positive")
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

    # -- accounts --------------------------------------------------------------------------------

    def _account(self, row: Mapping[str, Any]) -> Account:
        plan = self._plans.find(_text(row.get("plan"))) or self._plans.default
        max_tokens = row.get("maxTokensPerMonth")
        created = _optional_time(row.get("$createdAt")) or EPOCH
        return Account(
            user_id=str(row.get("userId", "")),
            row_id=str(row["$id"]),
            plan=_text(row.get("plan")) or plan.id,
            status=_text(row.get("status")) or "none",
            max_tokens_per_month=(
                _int(max_tokens) if max_tokens is not None else plan.tokens_per_month
            ),
            period_start=_optional_time(row.get("periodStart")) or month_start(created),
            period_end=_optional_time(row.get("periodEnd")),
            current_tokens_used=_int(row.get("currentTokensUsed")),
            lifetime_tokens_used=_int(row.get("lifetimeTokensUsed")),
            addon_tokens=_int(row.get("addonTokens")),
            topup_tokens=_int(row.get("topupTokens")),
            last_token_reset_at=_optional_time(row.get("lastTokenResetAt")),
            stripe_customer_id=_text(row.get("stripeCustomerId")),
            stripe_subscription_id=_text(row.get("stripeSubscriptionId")),
            stripe_updated_at=_int(row.get("stripeUpdatedAt")),
            storage_bytes_used=_int(row.get("storageBytesUsed")),
            storage_bytes_limit=(
                _int(row["storageBytesLimit"])
                if row.get("storageBytesLimit") is not None
                else plan.storage_bytes
            ),
            bank_connections_used=_int(row.get("bankConnectionsUsed")),
            bank_connections_limit=(
                _int(row["bankConnectionsLimit"])
                if row.get("bankConnectionsLimit") is not None
                else plan.bank_connections
            ),
        )

    def _find_account_row(self, column: str, value: str) -> dict[str, Any] | None:
        rows = self._list(self._subscriptions, [Query.equal(column, value), Query.limit(1)])
        if not rows:
            return None
        if column == "userId":
            self._remember(value, str(rows[0]["$id"]))
        return rows[0]

    def _remember(self, user_id: str, row_id: str) -> None:
        with self._row_ids_lock:
            self._row_ids[user_id] = row_id

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
        row_id = row_key(account.row_id or account.user_id)
        data = {
            "userId": account.user_id,
            "plan": account.plan,
            "status": account.status,
            "stripeCustomerId": account.stripe_customer_id or None,
            "stripeSubscriptionId": account.stripe_subscription_id or None,
            "currentTokensUsed": account.current_tokens_used,
            "lifetimeTokensUsed": account.lifetime_tokens_used,
            "lastTokenResetAt": _time(account.last_token_reset_at),
            "maxTokensPerMonth": account.max_tokens_per_month,
            "addonTokens": account.addon_tokens,
            "topupTokens": account.topup_tokens,
            "periodStart": _time(account.period_start),
            "periodEnd": _time(account.period_end),
            "stripeUpdatedAt": account.stripe_updated_at,
            "storageBytesUsed": account.storage_bytes_used,
            "storageBytesLimit": account.storage_bytes_limit,
            "bankConnectionsUsed": account.bank_connections_used,
            "bankConnectionsLimit": account.bank_connections_limit,
        }
        try:
            row = self._db.create_row(self._database, self._subscriptions, row_id, data)
        except AppwriteException as exc:
            if exc.type != "row_already_exists":
                raise _failure("creating an account", exc) from exc
            # Lost a race (same row id, or the unique userId index): the winner's row counts.
            existing = self.get_account(account.user_id)
            if existing is None:
                raise StoreError(f"row id {row_id} is taken by another user") from exc
            return existing
        self._remember(account.user_id, row_id)
        return self._account(_document(row))

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
        data: dict[str, Any] = {}
        for field, given in patch.items():
            column = ACCOUNT_PATCH_COLUMNS.get(field)
            if column is None:
                raise InvalidRequest(f"{field} cannot be patched")
            value: Any = given
            if isinstance(given, datetime):
                value = format_timestamp(given)
            elif field in ("stripe_customer_id", "stripe_subscription_id"):
                # Stored as NULL, never "", so that `isNull` finds every unsubscribed account.
                value = given or None
            data[column] = value
        row_id = self._row_id(user_id)
        row = self._try(
            "updating an account",
            lambda: self._db.update_row(self._database, self._subscriptions, row_id, data),
            row_not_found=NotFound,
        )
        return self._account(_document(row))

    def add_topup(self, user_id: str, tokens: int) -> Account:
        if tokens < 0:
            raise InvalidRequest("a top-up cannot be negative")
        row_id = self._row_id(user_id)
        if tokens == 0:
            row = self._get(self._subscriptions, row_id)
            if row is None:
                raise NotFound(f"no account for user {user_id}")
            return self._account(row)
        updated = self._increment(self._subscriptions, row_id, "topupTokens", tokens)
        return self._account(updated)

    def list_accounts(self, query: AccountQuery, limit: int, cursor: str | None) -> Page[Account]:
        filters: list[str] = []
        if query.subscribed is True:
            filters.append(Query.is_not_null("stripeSubscriptionId"))
        elif query.subscribed is False:
            filters.append(Query.is_null("stripeSubscriptionId"))
        if query.period_start_before is not None:
            filters.append(
                Query.less_than("periodStart", format_timestamp(query.period_start_before))
            )
        if query.period_end_before is not None:
            filters.append(Query.less_than("periodEnd", format_timestamp(query.period_end_before)))
        rows, next_cursor = self._page(self._subscriptions, filters, limit, cursor)
        return Page(items=[self._account(row) for row in rows], next_cursor=next_cursor)

    # -- the hard cap ----------------------------------------------------------------------------

    def _increment(
        self, table: str, row_id: str, column: str, tokens: int, limit: int | None = None
    ) -> dict[str, Any]:
        try:
            row = self._db.increment_row_column(
                self._database, table, row_id, column, value=tokens, max=limit
            )
        except AppwriteException as exc:
            if exc.type in LIMIT_EXCEEDED:
                raise LimitReached(f"incrementing {table}.{column}: {exc.type}") from exc
            raise self._counter_failure(
                f"incrementing {table}.{column}", table, row_id, exc
            ) from exc
        return _document(row)

    def _counter_failure(
        self, what: str, table: str, row_id: str, exc: AppwriteException
    ) -> StoreError | NotFound:
        """``NotFound`` when the row of a failed increment or decrement does not exist."""
        if exc.type == "row_not_found" or (
            exc.type in COLUMN_MISSING and self._get(table, row_id) is None
        ):
            return NotFound(f"no row {row_id} in {table}")
        return _failure(what, exc)

    def _decrement_floored(self, table: str, row_id: str, column: str, tokens: int) -> None:
        """Subtract ``tokens`` but never go below zero, even when the counter went down
        concurrently (a reset): then subtract what is left."""
        amount = tokens
        for _ in range(RESET_ATTEMPTS * 2):
            if amount <= 0:
                return
            try:
                self._db.decrement_row_column(
                    self._database, table, row_id, column, value=amount, min=0
                )
            except AppwriteException as exc:
                if exc.type not in LIMIT_EXCEEDED:
                    what = f"decrementing {table}.{column}"
                    raise self._counter_failure(what, table, row_id, exc) from exc
                row = self._get(table, row_id)
                if row is None:
                    raise NotFound(f"no row {row_id} in {table}") from exc
                left = _int(row.get(column))
                if left >= amount:
                    continue  # it went up again meanwhile: the full amount fits now
                amount = left
                continue
            return
        raise StoreError(f"{table}.{column} kept changing while being decremented")

    def reserve(self, user_id: str, request_id: str, tokens: int, limit: int) -> int:
        if tokens < 0:
            raise InvalidRequest("cannot reserve a negative amount")
        row_id = self._row_id(user_id)
        if tokens == 0:
            account = self._get(self._subscriptions, row_id)
            used = _int(account.get("currentTokensUsed")) if account else 0
            if used > limit:
                raise LimitReached("the limit is already passed")
            return used
        # The counter first: refusing is the common failure, and it changes nothing.
        row = self._increment(self._subscriptions, row_id, "currentTokensUsed", tokens, limit)
        try:
            self._increment(self._ledger, row_key(request_id), "reservedTokens", tokens)
        except Exception:
            # Without its ledger entry the hold could never be released: give it back now.
            self._decrement_floored(self._subscriptions, row_id, "currentTokensUsed", tokens)
            raise
        return _int(row.get("currentTokensUsed"))

    def release(self, user_id: str, request_id: str, tokens: int) -> None:
        if tokens <= 0:
            return
        # The counter first: a crash in between leaves a hold that the cron gives back again,
        # which errs in the user's favour rather than charging tokens that were never used.
        self._decrement_floored(
            self._subscriptions, self._row_id(user_id), "currentTokensUsed", tokens
        )
        self._decrement_floored(self._ledger, row_key(request_id), "reservedTokens", tokens)

    def apply_reset(self, reset: ResetPlan, previous_period_start: datetime) -> Account | None:
        claim_id = f"reset:{reset.user_id}:{format_timestamp(reset.period_start)}"
        outcome = self.claim_event(claim_id, "reset", reset.user_id, reset.reset_at, RESET_LEASE)
        if outcome is not ClaimOutcome.CLAIMED:
            return None
        try:
            applied = self._apply_reset_claimed(reset, previous_period_start, row_key(claim_id))
        except Exception:
            self.release_event(claim_id)
            raise
        if applied is None:
            # Planned from a stale snapshot, or no longer forward: nothing happened, so a reset
            # to the same period planned from a fresh snapshot must still be able to run.
            self.release_event(claim_id)
        return applied

    def _apply_reset_claimed(
        self, reset: ResetPlan, previous_period_start: datetime, claim_row: str
    ) -> Account | None:
        for _ in range(RESET_ATTEMPTS):
            row = self._find_account_row("userId", reset.user_id)
            if row is None:
                return None
            account = self._account(row)
            if _ms(account.period_start) != _ms(previous_period_start):
                return None
            if _ms(reset.period_start) <= _ms(account.period_start):
                return None
            if self._commit_reset(reset, account, claim_row):
                return self.get_account(reset.user_id)
        raise StoreError("the counter kept changing during a reset")

    def _commit_reset(self, reset: ResetPlan, account: Account, claim_row: str) -> bool:
        """All changes of one reset in one transaction, the claim's completion included, so
        that it happens entirely or not at all. False when the counter moved under it."""
        database, table, row_id = self._database, self._subscriptions, account.row_id
        # A concurrent release may have lowered the counter below the snapshot: never below 0.
        used = min(reset.used, account.current_tokens_used)
        topup = min(reset.topup_consumed, account.topup_tokens)
        transaction = self._call("starting a transaction", self._db.create_transaction)
        tx = transaction.id
        steps: list[Callable[[], object]] = []
        if used > 0:
            steps.append(
                lambda: self._db.decrement_row_column(
                    database,
                    table,
                    row_id,
                    "currentTokensUsed",
                    value=used,
                    min=0,
                    transaction_id=tx,
                )
            )
        if reset.used > 0:
            steps.append(
                lambda: self._db.increment_row_column(
                    database,
                    table,
                    row_id,
                    "lifetimeTokensUsed",
                    value=reset.used,
                    transaction_id=tx,
                )
            )
        if topup > 0:
            steps.append(
                lambda: self._db.decrement_row_column(
                    database, table, row_id, "topupTokens", value=topup, min=0, transaction_id=tx
                )
            )
        period = {
            "periodStart": format_timestamp(reset.period_start),
            "periodEnd": _time(reset.period_end),
            "lastTokenResetAt": format_timestamp(reset.reset_at),
        }
        steps.append(
            lambda: self._db.update_row(database, table, row_id, period, transaction_id=tx)
        )
        done = {"status": DONE, "outcome": "reset", "completedAt": format_timestamp(reset.reset_at)}
        steps.append(
            lambda: self._db.update_row(database, self._events, claim_row, done, transaction_id=tx)
        )
        try:
            for step in steps:
                step()
            self._db.update_transaction(tx, commit=True)
        except AppwriteException as exc:
            self._rollback(tx)
            # The counter moved under the snapshot: read it again and retry.
            if exc.type in LIMIT_EXCEEDED or exc.type == CONFLICT:
                return False
            raise _failure("committing a reset", exc) from exc
        return True

    def _rollback(self, transaction_id: str) -> None:
        # An uncommitted transaction expires on its own if the rollback fails too.
        with contextlib.suppress(AppwriteException):
            self._db.update_transaction(transaction_id, rollback=True)

    # -- the ledger ------------------------------------------------------------------------------

    def create_ledger(self, entry: LedgerEntry) -> None:
        data = {
            "requestId": entry.request_id,
            "userId": entry.user_id,
            "status": entry.status.value,
            "model": entry.model,
            "periodStart": format_timestamp(entry.period_start),
            "startedAt": format_timestamp(entry.created_at),
            "touchedAt": format_timestamp(entry.updated_at),
            "reservedTokens": entry.reserved_tokens,
            "costMicroUsd": entry.cost_micro_usd,
            "priceVersion": entry.price_version,
            "reply": entry.reply,
            **usage_columns(entry.usage),
        }
        self._try(
            "creating a ledger entry",
            lambda: self._db.create_row(
                self._database, self._ledger, row_key(entry.request_id), data
            ),
            row_already_exists=AlreadyExists,
        )

    def get_ledger(self, request_id: str) -> LedgerEntry | None:
        row = self._get(self._ledger, row_key(request_id))
        return _ledger_entry(row, request_id) if row is not None else None

    def discard_ledger(self, request_id: str) -> None:
        try:
            self._db.delete_row(self._database, self._ledger, row_key(request_id))
        except AppwriteException as exc:
            if exc.type != "row_not_found":
                raise _failure("discarding a ledger entry", exc) from exc

    def update_ledger(self, request_id: str, patch: LedgerPatch) -> LedgerEntry:
        data: dict[str, Any] = {}
        if "status" in patch:
            data["status"] = LedgerStatus(patch["status"]).value
        if "model" in patch:
            data["model"] = patch["model"]
        if "usage" in patch:
            data.update(usage_columns(patch["usage"]))
        if "cost_micro_usd" in patch:
            data["costMicroUsd"] = patch["cost_micro_usd"]
        if "price_version" in patch:
            data["priceVersion"] = patch["price_version"]
        if "reply" in patch:
            data["reply"] = patch["reply"]
        if "updated_at" in patch:
            data["touchedAt"] = format_timestamp(patch["updated_at"])
        row = self._try(
            "updating a ledger entry",
            lambda: self._db.update_row(self._database, self._ledger, row_key(request_id), data),
            row_not_found=NotFound,
        )
        return _ledger_entry(_document(row), request_id)

    def list_stale_reservations(
        self, updated_before: datetime, limit: int, cursor: str | None
    ) -> Page[LedgerEntry]:
        filters = [
            Query.equal("status", LedgerStatus.RESERVED.value),
            Query.less_than("touchedAt", format_timestamp(updated_before)),
        ]
        rows, next_cursor = self._page(self._ledger, filters, limit, cursor)
        return Page(items=[_ledger_entry(row) for row in rows], next_cursor=next_cursor)

    def ledger_total(self, user_id: str, period_start: datetime) -> int:
        filters = [
            Query.equal("userId", user_id),
            Query.equal("periodStart", format_timestamp(period_start)),
        ]
        # A finished entry's usage is what it charged; its hold then equals that usage.
        return sum(
            _int(row.get("reservedTokens"))
            if row.get("status") == LedgerStatus.RESERVED.value
            else _int(row.get("totalTokens"))
            for row in self._all(self._ledger, filters)
        )

    # -- event claims ----------------------------------------------------------------------------

    def claim_event(
        self, event_id: str, event_type: str, object_id: str, now: datetime, lease: timedelta
    ) -> ClaimOutcome:
        row_id = row_key(event_id)
        data = {
            "eventId": event_id,
            "type": event_type,
            "objectId": object_id,
            "status": PENDING,
            "attempt": 0,
            "claimedAt": format_timestamp(now),
        }
        for _ in range(3):
            try:
                self._db.create_row(self._database, self._events, row_id, data)
            except AppwriteException as exc:
                if exc.type != "row_already_exists":
                    raise _failure("claiming an event", exc) from exc
            else:
                return ClaimOutcome.CLAIMED
            row = self._get(self._events, row_id)
            if row is None:
                continue  # released between our attempt and the read: try again
            return self._existing_claim(row_id, row, now, lease)
        return ClaimOutcome.IN_PROGRESS

    def _existing_claim(
        self, row_id: str, row: Mapping[str, Any], now: datetime, lease: timedelta
    ) -> ClaimOutcome:
        if row.get("status") == DONE:
            return ClaimOutcome.DONE
        claimed_at = _optional_time(row.get("claimedAt"))
        if claimed_at is not None and claimed_at + lease > now:
            return ClaimOutcome.IN_PROGRESS
        # The worker died. Taking over is a compare-and-swap committed together with the new
        # lease: the bounded increment of `attempt` succeeds for exactly one of the workers that
        # saw this attempt, and nobody sees the new attempt with the old, expired lease.
        attempt = _int(row.get("attempt"))
        database, table = self._database, self._events
        tx = self._call("starting a transaction", self._db.create_transaction).id
        try:
            self._db.increment_row_column(
                database, table, row_id, "attempt", value=1, max=attempt + 1, transaction_id=tx
            )
            self._db.update_row(
                database, table, row_id, {"claimedAt": format_timestamp(now)}, transaction_id=tx
            )
            self._db.update_transaction(tx, commit=True)
        except AppwriteException as exc:
            self._rollback(tx)
            # Another worker took over (or released) first: its claim stands.
            if exc.type in LIMIT_EXCEEDED | ROW_GONE | {CONFLICT}:
                return ClaimOutcome.IN_PROGRESS
            raise _failure("taking over a claim", exc) from exc
        return ClaimOutcome.CLAIMED

    def complete_event(self, event_id: str, outcome: str, now: datetime) -> None:
        row_id = row_key(event_id)
        data = {"status": DONE, "outcome": outcome[:255], "completedAt": format_timestamp(now)}
        try:
            self._db.update_row(self._database, self._events, row_id, data)
        except AppwriteException as exc:
            if exc.type != "row_not_found":
                raise _failure("completing an event", exc) from exc
            # The claim vanished (released by a timed-out worker): record the outcome anyway.
            self._call(
                "recording an event",
                lambda: self._db.create_row(
                    self._database,
                    self._events,
                    row_id,
                    {"eventId": event_id, "claimedAt": format_timestamp(now), **data},
                ),
            )

    def release_event(self, event_id: str) -> None:
        try:
            self._db.delete_row(self._database, self._events, row_key(event_id))
        except AppwriteException as exc:
            if exc.type != "row_not_found":
                raise _failure("releasing an event", exc) from exc


@functools.cache
def _default_plans() -> PlanCatalog:
    # A store is opened per execution; the packaged plans are read once per warm instance.
    return load_default_plans()


def _failure(what: str, exc: AppwriteException) -> StoreError:
    """The domain error for an Appwrite failure: what was attempted, the HTTP code and type."""
    return StoreError(f"{what} failed: {exc.code} {exc.type}")


def _document(row: Any) -> dict[str, Any]:
    """The columns of an SDK row model plus the system fields this adapter reads."""
    data = dict(row.data) if isinstance(row.data, dict) else {}
    data["$id"] = row.id
    data["$createdAt"] = row.createdat
    data["$updatedAt"] = row.updatedat
    return data


def _ledger_entry(row: Mapping[str, Any], request_id: str | None = None) -> LedgerEntry:
    created = _optional_time(row.get("startedAt")) or parse_timestamp(row["$createdAt"])
    updated = _optional_time(row.get("touchedAt")) or parse_timestamp(row["$updatedAt"])
    try:
        return LedgerEntry(
            request_id=request_id or _text(row.get("requestId")) or str(row["$id"]),
            user_id=str(row.get("userId", "")),
            status=LedgerStatus(row.get("status") or LedgerStatus.SETTLED.value),
            model=str(row.get("model") or ""),
            period_start=_optional_time(row.get("periodStart")) or month_start(created),
            created_at=created,
            updated_at=updated,
            usage=TokenUsage(
                input_tokens=_int(row.get("inputTokens")),
                cache_creation_input_tokens=_int(row.get("cacheCreationInputTokens")),
                cache_read_input_tokens=_int(row.get("cacheReadInputTokens")),
                output_tokens=_int(row.get("outputTokens")),
                cache_creation_1h_tokens=_int(row.get("cacheCreation1hTokens")),
                steps=_int(row.get("steps")),
            ),
            reserved_tokens=_int(row.get("reservedTokens")),
            cost_micro_usd=_int(row.get("costMicroUsd")),
            price_version=str(row.get("priceVersion") or ""),
            reply=str(row.get("reply") or ""),
        )
    except (ValueError, InvalidRequest) as exc:
        raise StoreError(f"ledger row {row.get('$id')} is malformed") from exc


class AppwriteSchemaAdmin:
    """Schema and bulk-row operations for the operator's migrate command (needs a key with
    ``databases.*``, ``tables.*``, ``columns.*``, ``indexes.*`` and ``rows.*`` scopes)."""

    def __init__(self, tables: TablesDB) -> None:
        self._db = tables

    @classmethod
    def connect(cls, endpoint: str, project_id: str, api_key: str) -> AppwriteSchemaAdmin:
        client = Client()
        try:
            client.set_endpoint(endpoint)
        except AppwriteException as exc:
            raise StoreError(f"invalid Appwrite endpoint: {exc.message}") from exc
        client.set_project(project_id)
        client.set_key(api_key)
        return cls(TablesDB(client))

    def existing(self, schema: Schema) -> ExistingSchema:
        """What the project already has of ``schema``'s databases and tables (reads only)."""
        databases: set[str] = set()
        for database in schema.databases:
            try:
                self._db.get(database.id)
            except AppwriteException as exc:
                if exc.type != "database_not_found":
                    raise _failure(f"reading database {database.id}", exc) from exc
                continue
            databases.add(database.id)
        tables: dict[tuple[str, str], ExistingTable] = {}
        for table in schema.tables:
            if table.database_id not in databases:
                continue
            described = self._describe(table.database_id, table.id)
            if described is not None:
                tables[(table.database_id, table.id)] = ExistingTable(
                    columns=frozenset(described[0]), indexes=frozenset(described[1])
                )
        return ExistingSchema(databases=frozenset(databases), tables=tables)

    def _describe(
        self, database_id: str, table_id: str
    ) -> tuple[dict[str, str], dict[str, str]] | None:
        """Column and index statuses by key, or None when the table does not exist."""
        try:
            table = self._db.get_table(database_id, table_id)
        except AppwriteException as exc:
            if exc.type == "table_not_found":
                return None
            raise _failure(f"reading table {table_id}", exc) from exc
        columns = {column.key: _status(column.status) for column in table.columns}
        indexes = {index.key: _status(index.status) for index in table.indexes}
        return columns, indexes

    def column_statuses(self, database_id: str, table_id: str) -> dict[str, str]:
        described = self._describe(database_id, table_id)
        if described is None:
            raise NotFound(f"table {table_id} does not exist")
        return described[0]

    def apply(self, step: Step) -> None:
        """Create one missing database, table, column or index."""
        try:
            self._apply(step)
        except AppwriteException as exc:
            raise _failure(f"{step.describe()}", exc) from exc

    def _apply(self, step: Step) -> None:
        if isinstance(step, CreateDatabase):
            self._db.create(step.database.id, step.database.name, enabled=step.database.enabled)
        elif isinstance(step, CreateTable):
            table = step.table
            self._db.create_table(
                table.database_id,
                table.id,
                table.name,
                permissions=list(table.permissions),
                row_security=table.row_security,
                enabled=table.enabled,
            )
        elif isinstance(step, CreateColumn):
            self._create_column(step.table, step.column)
        else:
            index = step.index
            self._db.create_index(
                step.table.database_id,
                step.table.id,
                index.key,
                TablesDBIndexType(index.type),
                list(index.columns),
                orders=[OrderBy(order.lower()) for order in index.orders] or None,
            )

    def _create_column(self, table: TableSpec, column: ColumnSpec) -> None:
        database_id, table_id, key = table.database_id, table.id, column.key
        common: dict[str, Any] = {"required": column.required, "array": column.array or None}
        numeric = {
            "integer": self._db.create_integer_column,
            "bigint": self._db.create_big_int_column,
            "double": self._db.create_float_column,
        }
        if column.type in numeric:
            numeric[column.type](
                database_id,
                table_id,
                key,
                min=column.min,
                max=column.max,
                default=column.default,
                **common,
            )
        elif column.type == "boolean":
            self._db.create_boolean_column(
                database_id, table_id, key, default=column.default, **common
            )
        elif column.type == "datetime":
            self._db.create_datetime_column(
                database_id, table_id, key, default=column.default, **common
            )
        elif column.type == "varchar":
            self._db.create_varchar_column(
                database_id, table_id, key, column.size, default=column.default, **common
            )
        elif column.type in ("text", "mediumtext", "longtext"):
            create = getattr(self._db, f"create_{column.type}_column")
            create(database_id, table_id, key, default=column.default, **common)
        else:
            # `string` is what the Appwrite CLI and 1.8 servers know (1.9 merely deprecates it).
            # The SDK's deprecation wrapper resets the process's warning filters on every call,
            # so the undecorated method is called.
            create_string = TablesDB.create_string_column.__wrapped__
            create_string(
                self._db, database_id, table_id, key, column.size, default=column.default, **common
            )

    def rows(
        self, database_id: str, table_id: str, limit: int, cursor: str | None
    ) -> Page[dict[str, Any]]:
        """One page of raw rows (column values plus ``$id``) in the table's natural order."""
        queries = [Query.limit(limit + 1)]
        if cursor:
            queries.append(Query.cursor_after(cursor))
        try:
            result = self._db.list_rows(database_id, table_id, queries)
        except AppwriteException as exc:
            raise _failure(f"listing {table_id}", exc) from exc
        rows = [_document(row) for row in result.rows]
        if len(rows) > limit:
            rows = rows[:limit]
            return Page(items=rows, next_cursor=str(rows[-1]["$id"]))
        return Page(items=rows, next_cursor=None)

    def update_row(
        self, database_id: str, table_id: str, row_id: str, data: Mapping[str, Any]
    ) -> None:
        try:
            self._db.update_row(database_id, table_id, row_id, dict(data))
        except AppwriteException as exc:
            raise _failure(f"updating {table_id}.{row_id}", exc) from exc


def _status(status: Any) -> str:
    return str(getattr(status, "value", status))
