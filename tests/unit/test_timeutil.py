"""Timestamps: parsing to aware UTC, formatting as Appwrite does, calendar-month arithmetic."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from metering.timeutil import format_timestamp, month_start, next_month_start, parse_timestamp


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        pytest.param("2026-03-15T12:00:00Z", datetime(2026, 3, 15, 12, tzinfo=UTC), id="zulu"),
        pytest.param(
            "2026-03-15T14:00:00+02:00", datetime(2026, 3, 15, 12, tzinfo=UTC), id="offset"
        ),
        pytest.param(
            "2026-03-15T12:00:00.250Z",
            datetime(2026, 3, 15, 12, 0, 0, 250_000, tzinfo=UTC),
            id="milliseconds",
        ),
        pytest.param(1_773_576_000, datetime(2026, 3, 15, 12, tzinfo=UTC), id="unix-seconds"),
    ],
)
def test_parse_timestamp_yields_aware_utc(raw: object, expected: datetime) -> None:
    """ISO-8601 with a zone and Unix seconds parse to the same UTC instant."""
    parsed = parse_timestamp(raw)

    assert parsed == expected
    assert parsed.utcoffset() == timedelta(0)


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param("2026-03-15T12:00:00", id="naive"),
        pytest.param("", id="empty"),
        pytest.param("next tuesday", id="prose"),
        pytest.param(None, id="none"),
        pytest.param(True, id="bool"),
        pytest.param(10**20, id="unix-seconds-out-of-range"),
        pytest.param(float("inf"), id="infinite"),
        pytest.param("9999-12-31T23:59:59-01:00", id="iso-past-year-9999-in-utc"),
    ],
)
def test_parse_timestamp_refuses_ambiguous_or_garbage_input(raw: object) -> None:
    """Anything without a definite instant is a ValueError."""
    with pytest.raises(ValueError):  # noqa: PT011 -- the message varies by what was wrong
        parse_timestamp(raw)


def test_format_timestamp_writes_utc_milliseconds_with_z() -> None:
    """Datetimes leave the domain in Appwrite's own format."""
    local = datetime(2026, 3, 15, 14, 0, 0, 123_456, tzinfo=timezone(timedelta(hours=2)))

    assert format_timestamp(local) == "2026-03-15T12:00:00.123Z"


@pytest.mark.parametrize(
    ("at", "start", "following"),
    [
        pytest.param(
            datetime(2026, 3, 15, 12, tzinfo=UTC),
            datetime(2026, 3, 1, tzinfo=UTC),
            datetime(2026, 4, 1, tzinfo=UTC),
            id="mid-month",
        ),
        pytest.param(
            datetime(2026, 12, 31, 23, 59, tzinfo=UTC),
            datetime(2026, 12, 1, tzinfo=UTC),
            datetime(2027, 1, 1, tzinfo=UTC),
            id="december-rolls-the-year",
        ),
        pytest.param(
            datetime(2026, 4, 1, 1, tzinfo=timezone(timedelta(hours=3))),
            datetime(2026, 3, 1, tzinfo=UTC),
            datetime(2026, 4, 1, tzinfo=UTC),
            id="months-are-utc-months",
        ),
    ],
)
def test_calendar_months_are_utc(at: datetime, start: datetime, following: datetime) -> None:
    """Demo periods run from the first of a UTC month to the first of the next."""
    assert month_start(at) == start
    assert next_month_start(at) == following
