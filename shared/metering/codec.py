"""Domain records to the columns of ``appwrite.json`` and back: the one mapping both stores use.
Values are encoded as Appwrite stores them; a NULL column (a legacy row) reads as its fallback.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Generic, TypeVar

from .account import Account, AccountPatch, Level
from .alerts import Notice
from .errors import InvalidRequest, StoreError
from .ledger import LedgerEntry, LedgerPatch, LedgerStatus
from .plans import Plan, PlanCatalog
from .ports import Charges, ClaimOutcome, Payment, PaymentKind, PaymentPatch
from .timeutil import month_start, parse_timestamp
from .tokens import TokenUsage
from .turns import Turn, TurnPatch, TurnStatus

SUBSCRIPTIONS = "subscriptions"
LEDGER = "usage_events"
CLAIMS = "claims"
NOTICES = "notices"
PAYMENTS = "payments"
TURNS = "turns"
TURN_STOPS = "turn_stops"
CURSORS = "cursors"

ROW_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,35}$")
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
PENDING = "pending"
DONE = "done"
OUTCOME_SIZE = 255
TOTAL_TOKENS = "totalTokens"

Row = Mapping[str, Any]
D = TypeVar("D")


def row_key(key: str) -> str:
    """A valid row id for ``key``: itself when it already is one, else a stable hash.

    Appwrite ids are at most 36 characters of ``[A-Za-z0-9._-]`` not starting with a symbol.
    """
    if ROW_ID.match(key):
        return key
    return "h" + hashlib.sha256(key.encode("utf-8")).hexdigest()[:35]


def encode_time(value: datetime) -> str:
    """Appwrite's own datetime format: UTC, milliseconds, an explicit ``+00:00`` offset (fixed
    width, so that text order is time order)."""
    return value.astimezone(UTC).isoformat(timespec="milliseconds")


@dataclass(frozen=True, slots=True)
class Kind:
    """How one kind of value is stored; ``decode`` answers None for NULL."""

    encode: Callable[[Any], Any]
    decode: Callable[[Any], Any]


def _int(value: Any) -> int | None:
    return int(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


INT = Kind(encode=int, decode=_int)
# "" is stored as NULL, so that `isNull` finds every account without a Stripe subscription.
TEXT = Kind(encode=lambda value: value or None, decode=_text)
TIME = Kind(
    encode=lambda value: encode_time(value) if value is not None else None,
    decode=lambda value: parse_timestamp(value) if value else None,
)


def _enum(kind: Callable[[Any], Any]) -> Kind:
    """An enum stored as its value; NULL or "" reads as None."""
    return Kind(
        encode=lambda value: kind(value).value,
        decode=lambda value: kind(value) if value else None,
    )


def _flag(value: Any) -> bool | None:
    # SQLite has no boolean type: it stores 0 and 1.
    if isinstance(value, bool) or value in (0, 1):
        return bool(value)
    return None


FLAG = Kind(encode=bool, decode=_flag)
STATUS = _enum(LedgerStatus)
_CHARGE = re.compile(r"(?P<price>[^,*]+)\*(?P<quantity>[0-9]{1,9})")


def _decode_charges(value: Any) -> Charges | None:
    if not isinstance(value, str) or not value:
        return None
    pairs: list[tuple[str, int]] = []
    for part in value.split(","):
        match = _CHARGE.fullmatch(part)
        if match is None:
            raise ValueError(f"not a charge: {part!r}")
        pairs.append((match["price"], int(match["quantity"])))
    return tuple(pairs)


# (price id, quantity) pairs as "price_a*1,price_b*3"; Stripe ids never hold "," or "*".
CHARGES = Kind(
    encode=lambda value: ",".join(f"{price}*{quantity}" for price, quantity in value) or None,
    decode=_decode_charges,
)


@dataclass(frozen=True, slots=True)
class Field(Generic[D]):
    """One attribute of a record in one column; ``fallback`` is what a NULL column reads as."""

    name: str
    column: str
    kind: Kind
    fallback: Callable[[D], Any] = lambda _: None


@dataclass(frozen=True, slots=True)
class AccountRow:
    """What a NULL column of a ``subscriptions`` row falls back on."""

    plan: Plan
    created: datetime


@dataclass(frozen=True, slots=True)
class LedgerRow:
    """What a NULL column of a ``usage_events`` row falls back on."""

    row_id: str
    created: datetime
    updated: datetime


def _zero(_: object) -> int:
    return 0


@dataclass(frozen=True, slots=True)
class FromPlan:
    """A fallback on the account's plan: what a NULL column reads as, and what the migration's
    backfill writes into it."""

    attribute: str

    def __call__(self, row: AccountRow) -> Any:
        return getattr(row.plan, self.attribute)


ACCOUNT_FIELDS: tuple[Field[AccountRow], ...] = (
    Field("user_id", "userId", TEXT, lambda _: ""),
    Field("plan", "plan", TEXT, FromPlan("id")),
    Field("status", "status", TEXT, lambda _: "none"),
    Field("max_tokens_per_month", "maxTokensPerMonth", INT, FromPlan("tokens_per_month")),
    Field("period_start", "periodStart", TIME, lambda row: month_start(row.created)),
    Field("period_end", "periodEnd", TIME),
    Field("current_tokens_used", "currentTokensUsed", INT, _zero),
    Field("lifetime_tokens_used", "lifetimeTokensUsed", INT, _zero),
    Field("addon_tokens", "addonTokens", INT, _zero),
    Field("topup_tokens", "topupTokens", INT, _zero),
    Field("last_token_reset_at", "lastTokenResetAt", TIME),
    Field("stripe_customer_id", "stripeCustomerId", TEXT),
    Field("stripe_subscription_id", "stripeSubscriptionId", TEXT),
    Field("stripe_updated_at", "stripeUpdatedAt", INT, _zero),
    Field("pending_plan", "pendingPlan", TEXT),
    Field("pending_tokens_per_month", "pendingTokensPerMonth", INT, _zero),
    Field("pending_addon_tokens", "pendingAddonTokens", INT, _zero),
    Field("pending_charges", "pendingCharges", CHARGES, lambda _: ()),
    Field("storage_bytes_used", "storageBytesUsed", INT, _zero),
    Field("storage_bytes_limit", "storageBytesLimit", INT, FromPlan("storage_bytes")),
    Field("bank_connections_used", "bankConnectionsUsed", INT, _zero),
    Field("bank_connections_limit", "bankConnectionsLimit", INT, FromPlan("bank_connections")),
    Field("alert_threshold_sent", "alertThresholdSent", INT, _zero),
)

USAGE_FIELDS: tuple[Field[object], ...] = (
    Field("input_tokens", "inputTokens", INT, _zero),
    Field("cache_creation_input_tokens", "cacheCreationInputTokens", INT, _zero),
    Field("cache_creation_1h_tokens", "cacheCreation1hTokens", INT, _zero),
    Field("cache_read_input_tokens", "cacheReadInputTokens", INT, _zero),
    Field("output_tokens", "outputTokens", INT, _zero),
    Field("steps", "steps", INT, _zero),
)

LEDGER_FIELDS: tuple[Field[LedgerRow], ...] = (
    Field("request_id", "requestId", TEXT, lambda row: row.row_id),
    Field("user_id", "userId", TEXT, lambda _: ""),
    Field("status", "status", STATUS, lambda _: LedgerStatus.SETTLED),
    Field("model", "model", TEXT, lambda _: ""),
    Field("period_start", "periodStart", TIME, lambda row: month_start(row.created)),
    Field("created_at", "startedAt", TIME, lambda row: row.created),
    Field("updated_at", "touchedAt", TIME, lambda row: row.updated),
    Field("held_tokens", "heldTokens", INT, _zero),
    Field("estimated", "estimated", FLAG, lambda _: False),
    Field("cost_micro_usd", "costMicroUsd", INT, _zero),
    Field("price_version", "priceVersion", TEXT, lambda _: ""),
    Field("reply", "reply", TEXT, lambda _: ""),
)
# Rows written before ``heldTokens`` kept a request's holds and charged steps in one column.
LEGACY_RESERVED = "reservedTokens"


def _encode(fields: tuple[Field[D], ...], record: object) -> dict[str, Any]:
    return {field.column: field.kind.encode(getattr(record, field.name)) for field in fields}


def _decode(fields: tuple[Field[D], ...], row: Row, fallbacks: D) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for field in fields:
        value = field.kind.decode(row.get(field.column))
        values[field.name] = field.fallback(fallbacks) if value is None else value
    return values


def _encode_patch(
    what: str, fields: tuple[Field[D], ...], allowed: frozenset[str], patch: Mapping[str, Any]
) -> dict[str, Any]:
    by_name = {field.name: field for field in fields if field.name in allowed}
    data: dict[str, Any] = {}
    for name, value in patch.items():
        field = by_name.get(name)
        if field is None:
            # A caller's bug, not the client's: a 5xx, so that Stripe retries once it is fixed.
            raise StoreError(f"{name!r} is not a patchable {what} field")
        data[field.column] = field.kind.encode(value)
    return data


def _malformed(table: str, row: Row) -> StoreError:
    return StoreError(f"{table} row {row.get('$id')} is malformed")


# -- accounts ----------------------------------------------------------------------------------

ACCOUNT_PATCH_FIELDS = AccountPatch.__optional_keys__ | AccountPatch.__required_keys__
ACCOUNT_FIELD_NAMES = frozenset(field.name for field in ACCOUNT_FIELDS)


def encode_account(account: Account) -> dict[str, Any]:
    """Every column of the account's ``subscriptions`` row."""
    return _encode(ACCOUNT_FIELDS, account)


def encode_account_patch(patch: AccountPatch) -> dict[str, Any]:
    """The columns a patch sets; ``StoreError`` for a field that is not patchable."""
    return _encode_patch("account", ACCOUNT_FIELDS, ACCOUNT_PATCH_FIELDS, patch)


def encode_account_fields(values: Mapping[str, Any]) -> dict[str, Any]:
    """The columns of some of an account's fields, counters included (a store's own writes)."""
    return _encode_patch("account", ACCOUNT_FIELDS, ACCOUNT_FIELD_NAMES, values)


def decode_account(row: Row, plans: PlanCatalog) -> Account:
    """The account of a ``subscriptions`` row (with ``$id`` and ``$createdAt``)."""
    try:
        fallbacks = AccountRow(
            plan=plans.find(_text(row.get("plan"))) or plans.default,
            created=TIME.decode(row.get("$createdAt")) or EPOCH,
        )
        return Account(row_id=str(row["$id"]), **_decode(ACCOUNT_FIELDS, row, fallbacks))
    except (KeyError, ValueError) as exc:
        raise _malformed(SUBSCRIPTIONS, row) from exc


def plan_backfill(row: Row, plans: PlanCatalog) -> dict[str, Any]:
    """The plan's values for the NULL columns of a ``subscriptions`` row that fall back on it: a
    row without a plan gets the default plan; one with an unknown plan gets nothing."""
    raw = row.get("plan")
    plan = plans.default if raw is None else plans.find(raw if isinstance(raw, str) else None)
    if plan is None:
        return {}
    fallbacks = AccountRow(plan=plan, created=EPOCH)
    return {
        field.column: field.fallback(fallbacks)
        for field in ACCOUNT_FIELDS
        if isinstance(field.fallback, FromPlan) and row.get(field.column) is None
    }


# -- the ledger --------------------------------------------------------------------------------

LEDGER_PATCH_FIELDS = LedgerPatch.__optional_keys__ | LedgerPatch.__required_keys__


def encode_usage(usage: TokenUsage) -> dict[str, Any]:
    """The ``usage_events`` columns of a usage, its total included."""
    return {**_encode(USAGE_FIELDS, usage), TOTAL_TOKENS: usage.total_tokens}


def encode_ledger(entry: LedgerEntry) -> dict[str, Any]:
    """Every column of the entry's ``usage_events`` row."""
    return {**_encode(LEDGER_FIELDS, entry), **encode_usage(entry.usage)}


def encode_ledger_patch(patch: LedgerPatch) -> dict[str, Any]:
    """The columns a patch sets; ``StoreError`` for a field that is not patchable."""
    rest = {name: value for name, value in patch.items() if name != "usage"}
    data = _encode_patch("ledger", LEDGER_FIELDS, LEDGER_PATCH_FIELDS, rest)
    if "usage" in patch:
        data.update(encode_usage(patch["usage"]))
    return data


def decode_ledger(row: Row, request_id: str | None = None) -> LedgerEntry:
    """The entry of a ``usage_events`` row (with ``$id``, ``$createdAt`` and ``$updatedAt``);
    ``request_id`` names rows older than their ``requestId`` column."""
    try:
        created = TIME.decode(row.get("startedAt")) or parse_timestamp(row["$createdAt"])
        fallbacks = LedgerRow(
            row_id=request_id or str(row["$id"]),
            created=created,
            updated=TIME.decode(row.get("touchedAt")) or parse_timestamp(row["$updatedAt"]),
        )
        values = _decode(LEDGER_FIELDS, row, fallbacks)
        if request_id:
            values["request_id"] = request_id
        usage = TokenUsage(**_decode(USAGE_FIELDS, row, None))
        if values["status"] is LedgerStatus.RESERVED and not values["held_tokens"]:
            legacy = INT.decode(row.get(LEGACY_RESERVED)) or 0
            values["held_tokens"] = max(0, legacy - usage.total_tokens)
        return LedgerEntry(usage=usage, **values)
    except (KeyError, ValueError, InvalidRequest) as exc:
        raise _malformed(LEDGER, row) from exc


def ledger_counted(entry: LedgerEntry) -> int:
    """What an entry puts on its user's counter: its settled usage and its live hold."""
    return entry.usage.total_tokens + entry.held_tokens


# -- claims ------------------------------------------------------------------------------------


def new_claim(key: str, kind: str, object_id: str, now: datetime) -> dict[str, Any]:
    """A pending claim's row."""
    return {
        "claimKey": key,
        "kind": kind,
        "objectId": object_id,
        "status": PENDING,
        "attempt": 0,
        "claimedAt": encode_time(now),
    }


def completed_claim(outcome: str, now: datetime) -> dict[str, Any]:
    """The columns that complete a claim."""
    return {"status": DONE, "outcome": outcome[:OUTCOME_SIZE], "completedAt": encode_time(now)}


def recorded_claim(key: str, outcome: str, now: datetime) -> dict[str, Any]:
    """A completed claim's row, for an outcome whose pending row is gone."""
    return {"claimKey": key, "claimedAt": encode_time(now), **completed_claim(outcome, now)}


def held_claim(row: Row, now: datetime, lease: timedelta | None) -> ClaimOutcome | None:
    """DONE or IN_PROGRESS for an existing claim row; None when its holder's lease ran out, so
    that the caller may take it over."""
    if row.get("status") == DONE:
        return ClaimOutcome.DONE
    claimed_at = TIME.decode(row.get("claimedAt"))
    if lease is None or (claimed_at is not None and now - claimed_at <= lease):
        return ClaimOutcome.IN_PROGRESS
    return None


def claim_attempt(row: Row) -> int:
    return _int(row.get("attempt")) or 0


# -- payments ----------------------------------------------------------------------------------

PAYMENT_KIND = _enum(PaymentKind)
PAYMENT_FIELDS: tuple[Field[object], ...] = (
    Field("stripe_id", "stripeId", TEXT),
    Field("kind", "kind", PAYMENT_KIND),
    Field("user_id", "userId", TEXT),
    Field("amount", "amount", INT, _zero),
    Field("currency", "currency", TEXT, lambda _: ""),
    Field("paid_at", "paidAt", TIME),
    Field("customer_id", "customerId", TEXT),
    Field("subscription_id", "subscriptionId", TEXT),
    Field("billing_reason", "billingReason", TEXT),
    Field("period_start", "periodStart", TIME),
    Field("period_end", "periodEnd", TIME),
    Field("payment_intent", "paymentIntent", TEXT),
    Field("tokens", "tokens", INT, _zero),
    Field("tokens_revoked", "tokensRevoked", INT, _zero),
    Field("charges", "charges", CHARGES, lambda _: ()),
)
PAYMENT_PATCH_FIELDS = PaymentPatch.__optional_keys__ | PaymentPatch.__required_keys__


def encode_payment(payment: Payment) -> dict[str, Any]:
    """Every column of the payment's ``payments`` row (its row id is ``row_key(stripe_id)``)."""
    return _encode(PAYMENT_FIELDS, payment)


def encode_payment_patch(patch: PaymentPatch) -> dict[str, Any]:
    """The columns a patch sets; ``StoreError`` for a field that is not patchable."""
    return _encode_patch("payment", PAYMENT_FIELDS, PAYMENT_PATCH_FIELDS, patch)


def decode_payment(row: Row) -> Payment:
    """The payment of a ``payments`` row."""
    try:
        values = _decode(PAYMENT_FIELDS, row, None)
    except (KeyError, ValueError) as exc:
        raise _malformed(PAYMENTS, row) from exc
    if None in (values["stripe_id"], values["kind"], values["user_id"], values["paid_at"]):
        raise _malformed(PAYMENTS, row)
    return Payment(**values)


# -- usage alerts ------------------------------------------------------------------------------

LEVEL = _enum(Level)
NOTICE_FIELDS: tuple[Field[object], ...] = (
    Field("user_id", "userId", TEXT),
    Field("threshold", "threshold", INT),
    Field("level", "level", LEVEL),
    Field("message", "message", TEXT, lambda _: ""),
    Field("period_start", "periodStart", TIME),
    Field("created_at", "raisedAt", TIME),
)


def encode_notice(notice: Notice) -> dict[str, Any]:
    """Every column of the notice's ``notices`` row (its id is the row id)."""
    return _encode(NOTICE_FIELDS, notice)


def decode_notice(row: Row) -> Notice:
    """The notice of a ``notices`` row (with ``$id``)."""
    try:
        values = _decode(NOTICE_FIELDS, row, None)
        row_id = str(row["$id"])
    except (KeyError, ValueError) as exc:
        raise _malformed(NOTICES, row) from exc
    # Every column but the message is required: a row without one is not a notice.
    if any(value is None for value in values.values()):
        raise _malformed(NOTICES, row)
    return Notice(id=row_id, **values)


# -- turns -------------------------------------------------------------------------------------

TURN_STATUS = _enum(TurnStatus)
TURN_FIELDS: tuple[Field[object], ...] = (
    Field("request_id", "requestId", TEXT),
    Field("user_id", "userId", TEXT),
    Field("status", "status", TURN_STATUS, lambda _: TurnStatus.PENDING),
    Field("created_at", "startedAt", TIME),
    Field("updated_at", "touchedAt", TIME),
    Field("content", "content", TEXT, lambda _: ""),
    Field("model", "model", TEXT, lambda _: ""),
    Field("stop_reason", "stopReason", TEXT, lambda _: ""),
    Field("truncated", "truncated", FLAG, lambda _: False),
    Field("cost_micro_usd", "costMicroUsd", INT, _zero),
    Field("estimated", "estimated", FLAG, lambda _: False),
)
TURN_PATCH_FIELDS = TurnPatch.__optional_keys__ | TurnPatch.__required_keys__


def turn_permissions(user_id: str) -> list[str]:
    """A turn row is its user's alone (row security): Realtime delivers it to nobody else."""
    return [f'read("user:{user_id}")']


def encode_turn(turn: Turn) -> dict[str, Any]:
    """Every column of the turn's ``turns`` row (its row id is ``row_key(request_id)``)."""
    return {**_encode(TURN_FIELDS, turn), **encode_usage(turn.usage)}


def encode_turn_patch(patch: TurnPatch) -> dict[str, Any]:
    """The columns a patch sets; ``StoreError`` for a field that is not patchable."""
    rest = {name: value for name, value in patch.items() if name != "usage"}
    data = _encode_patch("turn", TURN_FIELDS, TURN_PATCH_FIELDS, rest)
    if "usage" in patch:
        data.update(encode_usage(patch["usage"]))
    return data


def decode_turn(row: Row) -> Turn:
    """The turn of a ``turns`` row."""
    try:
        values = _decode(TURN_FIELDS, row, None)
        usage = TokenUsage(**_decode(USAGE_FIELDS, row, None))
    except (KeyError, ValueError, InvalidRequest) as exc:
        raise _malformed(TURNS, row) from exc
    if None in (values["request_id"], values["user_id"], values["created_at"]):
        raise _malformed(TURNS, row)
    if values["updated_at"] is None:
        values["updated_at"] = values["created_at"]
    return Turn(usage=usage, **values)


def encode_stop(request_id: str, user_id: str, now: datetime) -> dict[str, Any]:
    """The ``turn_stops`` row of a Stop (its row id is ``row_key(request_id)``)."""
    return {"requestId": request_id, "userId": user_id, "requestedAt": encode_time(now)}


# -- where a resumable walk stopped ---------------------------------------------------------------


def encode_cursor(name: str, cursor: str) -> dict[str, Any]:
    """The ``cursors`` row of the walk ``name`` (its row id is ``row_key(name)``)."""
    return {"name": name, "position": cursor}


def decode_cursor(row: Row) -> str | None:
    position = row.get("position")
    return str(position) if position else None
