"""Timestamps: always timezone-aware UTC inside the domain, ISO-8601 at the edges."""

from __future__ import annotations

from datetime import UTC, datetime


def parse_timestamp(value: object) -> datetime:
    """Parse ISO-8601 (``Z`` or offset) or a Unix timestamp into an aware UTC datetime."""
    if isinstance(value, bool):
        raise ValueError(f"not a timestamp: {value!r}")
    try:
        if isinstance(value, int | float):
            return datetime.fromtimestamp(value, tz=UTC)
        if not isinstance(value, str) or not value:
            raise ValueError(f"not a timestamp: {value!r}")
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
        if parsed.tzinfo is None:
            raise ValueError(f"timestamp has no timezone: {value!r}")
        return parsed.astimezone(UTC)
    except (OverflowError, OSError) as exc:
        # Out-of-range values are bad input like any other, not a platform failure.
        raise ValueError(f"timestamp out of range: {value!r}") from exc


def format_timestamp(value: datetime) -> str:
    """ISO-8601 in UTC with milliseconds, as Appwrite writes datetimes."""
    return value.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def month_start(at: datetime) -> datetime:
    """Start of the calendar month (UTC) containing ``at``."""
    at = at.astimezone(UTC)
    return datetime(at.year, at.month, 1, tzinfo=UTC)


def next_month_start(at: datetime) -> datetime:
    start = month_start(at)
    if start.month == 12:
        return datetime(start.year + 1, 1, 1, tzinfo=UTC)
    return datetime(start.year, start.month + 1, 1, tzinfo=UTC)
