"""Usage alerts at 75, 90 and 100 % of the limit: which one an account has newly reached, and
what its in-app notice and its email say. Pure; ``alert_service`` sends them once.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from .account import CRITICAL_PERCENT, WARNING_PERCENT, Account, Level
from .timeutil import format_timestamp

EXCEEDED_PERCENT = 100
THRESHOLDS = (WARNING_PERCENT, CRITICAL_PERCENT, EXCEEDED_PERCENT)
LEVELS = {
    WARNING_PERCENT: Level.WARNING,
    CRITICAL_PERCENT: Level.CRITICAL,
    EXCEEDED_PERCENT: Level.EXCEEDED,
}
_MONTHS = (
    "January", "February", "March", "April", "May", "June",
    "July", "August", "September", "October", "November", "December",
)  # fmt: skip

_SUBJECTS = {
    WARNING_PERCENT: "You have used 75 % of your tokens",
    CRITICAL_PERCENT: "You have used 90 % of your tokens",
    EXCEEDED_PERCENT: "You have used all of your tokens",
}
_MESSAGES = {
    WARNING_PERCENT: "You have used 75 % of this period's tokens.",
    CRITICAL_PERCENT: (
        "You have used 90 % of this period's tokens. A top-up pack or a bigger plan keeps you "
        "chatting when they run out."
    ),
    EXCEEDED_PERCENT: (
        "You have used all of this period's tokens: new messages are refused until the "
        "allowance resets. A top-up pack or a bigger plan lets you chat again now."
    ),
}


@dataclass(frozen=True, slots=True)
class Notice:
    """One in-app notice: the row its user may read, one per threshold and period."""

    id: str
    user_id: str
    threshold: int
    level: Level
    message: str
    period_start: datetime
    created_at: datetime


@dataclass(frozen=True, slots=True)
class Email:
    """One email to a user; ``message_id`` makes a resend of the same email a no-op."""

    message_id: str
    user_id: str
    subject: str
    content: str


def reached(used: int, limit: int) -> int:
    """The highest threshold ``used`` has reached (0 for none), by the rule of ``level``: a
    zero limit counts as reached only once something was used."""
    if used <= 0:
        return 0
    highest = 0
    for threshold in THRESHOLDS:
        # Integer comparisons: 74.99 % must not round up into an alert.
        if limit <= 0 or used * 100 >= limit * threshold:
            highest = threshold
    return highest


def due(account: Account) -> int | None:
    """The threshold to alert now: the highest one reached, when it is above the highest one
    already sent this period. Lower thresholds crossed in the same step are not sent on their
    own: the higher notice says more, and three emails at once say nothing more."""
    threshold = reached(account.current_tokens_used, account.limit)
    return threshold if threshold > account.alert_threshold_sent else None


def alert_key(user_id: str, period_start: datetime, threshold: int) -> str:
    """The claim key of one alert: per user, period and threshold, so a reset re-arms it."""
    return f"alert:{user_id}:{format_timestamp(period_start)}:{threshold}"


def threshold_notice(account: Account, threshold: int, now: datetime, notice_id: str) -> Notice:
    """The notice of ``threshold`` for the account's current period."""
    if threshold not in LEVELS:
        raise ValueError(f"no alert at {threshold} %")
    return Notice(
        id=notice_id,
        user_id=account.user_id,
        threshold=threshold,
        level=LEVELS[threshold],
        message=_MESSAGES[threshold] + _resets(account.resets_at),
        period_start=account.period_start,
        created_at=now,
    )


def notice_email(notice: Notice) -> Email:
    """The email that goes with ``notice``, sent under the notice's own id."""
    content = (
        f"{notice.message}\n\n"
        "You get this email once per period for each of 75 %, 90 % and 100 % of your "
        "allowance; the same notice is on the chat page."
    )
    return Email(
        message_id=notice.id,
        user_id=notice.user_id,
        subject=_SUBJECTS[notice.threshold],
        content=content,
    )


def _resets(at: datetime | None) -> str:
    if at is None:
        return ""
    at = at.astimezone(UTC)
    return f" Usage resets on {at.day} {_MONTHS[at.month - 1]} {at.year} (UTC)."
