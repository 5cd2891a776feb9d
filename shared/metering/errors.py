"""One hierarchy of domain errors, each with a stable code and the HTTP status it maps to."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from .account import Account

# Why a chat request was refused, as the page words it: "message_too_long" when a minimal
# request would still fit in what is left (a shorter message goes through), "allowance_spent"
# when nothing fits.
LimitReason = Literal["message_too_long", "allowance_spent"]


class MeteringError(Exception):
    """Base of every error the domain raises; ``code`` and ``status`` are the public contract."""

    code = "internal"
    status = 500

    def __init__(self, message: str = "", *, details: list[dict[str, Any]] | None = None) -> None:
        super().__init__(message or self.code)
        self.message = message or self.code
        self.details = details


class InvalidRequest(MeteringError):
    code = "invalid_request"
    status = 400


class Unauthenticated(MeteringError):
    code = "unauthenticated"
    status = 401


class Forbidden(MeteringError):
    code = "forbidden"
    status = 403


class PathNotFound(MeteringError):
    """What the path names does not exist for the caller (another user's turn included: the
    answer never tells whether it exists)."""

    code = "not_found"
    status = 404


class RequestInProgress(MeteringError):
    """A request with the same idempotency key is still running."""

    code = "request_in_progress"
    status = 409


class Conflict(MeteringError):
    """The request contradicts the caller's state (buying the plan one has, a portal without a
    billing account): retrying the same request cannot succeed."""

    code = "conflict"
    status = 409


class PayloadTooLarge(MeteringError):
    code = "payload_too_large"
    status = 413


class TokenLimitExceeded(MeteringError):
    """Nothing could be reserved for the request. ``account`` is the account the refusal was
    decided on; the edge answers its usage figures beside the error. ``reason`` says whether a
    shorter message would still fit, so the client need not guess; None when undecided."""

    code = "token_limit_exceeded"
    status = 429

    def __init__(
        self,
        message: str = "",
        *,
        account: Account | None = None,
        reason: LimitReason | None = None,
    ) -> None:
        super().__init__(message or "Monthly token limit reached")
        self.account = account
        self.reason = reason


# Which per-user cap refused a chat request: too many of the user's turns running at once, or
# too many requests started in the last minute.
RateLimitReason = Literal["turns_in_flight", "requests_per_minute"]


class RateLimited(MeteringError):
    """The user's own pace is over a cap (turns in flight, requests per minute), not their
    allowance: nothing was stored, and the same request may be sent again after ``retry_after``
    seconds. The edge answers that as ``Retry-After`` and ``retryAfter``."""

    code = "rate_limited"
    status = 429

    def __init__(
        self, message: str = "", *, retry_after: int, reason: RateLimitReason, limit: int
    ) -> None:
        super().__init__(message or "Too many requests; try again shortly")
        self.retry_after = max(1, retry_after)
        self.reason = reason
        self.limit = limit


class UpstreamError(MeteringError):
    """The model provider (or another upstream) answered with an error."""

    code = "upstream_error"
    status = 502


class UpstreamUnavailable(MeteringError):
    """The upstream is overloaded, rate limited, timed out or unreachable: try again later."""

    code = "upstream_unavailable"
    status = 503


class InternalError(MeteringError):
    code = "internal"
    status = 500


# Errors below describe broken data or configuration; they are never shown to end users.


class ConfigurationError(InternalError):
    """Configuration is missing or invalid; raised once, at cold start."""


class PlanError(InternalError):
    """A plans file is malformed or names an unknown plan."""


class PricingError(InternalError):
    """A price table is malformed, or a model has no price."""


class StoreError(InternalError):
    """The store failed in a way the caller cannot fix."""


class AccountNotLinked(InternalError):
    """A Stripe object names a customer no account is linked to yet (its checkout event has not
    been applied): failing makes Stripe deliver the event again later."""


# Signals a store gives its caller about one operation. The caller decides what each means; one
# that escapes is a bug and answers a bare 500, never a public 404, 409 or 429 (Stripe would
# read a 409 as "handled" and stop retrying).


class StoreSignal(InternalError):
    """Base of the signals a ``UsageStore`` raises; never mapped to its own status."""


class LimitReached(StoreSignal):
    """A bounded increment would pass the limit; the store changed nothing."""


class InFlightLimitReached(StoreSignal):
    """Opening the request would pass the user's cap on requests in flight; nothing changed."""


class AlreadyExists(StoreSignal):
    """A row keyed by an idempotency key already exists."""


class NotFound(StoreSignal):
    """The row an operation names does not exist."""
