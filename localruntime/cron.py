"""Standard five-field cron expressions (minute hour day-of-month month day-of-week), as
Appwrite schedules take them, and a scheduler thread that runs a job on one."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

log = logging.getLogger("localruntime")

_NAMES = {
    "month": ["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"],
    "dow": ["sun", "mon", "tue", "wed", "thu", "fri", "sat"],
}
_BOUNDS = {"minute": (0, 59), "hour": (0, 23), "dom": (1, 31), "month": (1, 12), "dow": (0, 7)}
_SEARCH_LIMIT = timedelta(days=366 * 5)


def _value(text: str, field: str) -> int:
    names = _NAMES.get(field)
    if names and text.lower() in names:
        return names.index(text.lower()) + (1 if field == "month" else 0)
    if not text.isdigit():
        raise ValueError(f"{field}: {text!r} is not a number")
    return int(text)


def _field(text: str, field: str) -> frozenset[int]:
    low, high = _BOUNDS[field]
    values: set[int] = set()
    for item in text.split(","):
        body, _, step_text = item.partition("/")
        step = _value(step_text, field) if step_text else 1
        if step < 1:
            raise ValueError(f"{field}: step must be at least 1")
        if body == "*":
            start, end = low, high
        elif "-" in body:
            first, last = body.split("-", 1)
            start, end = _value(first, field), _value(last, field)
        else:
            start = _value(body, field)
            end = high if step_text else start
        if not (low <= start <= high and low <= end <= high and start <= end):
            raise ValueError(f"{field}: {item!r} is outside {low}-{high}")
        values.update(range(start, end + 1, step))
    if field == "dow" and 7 in values:
        values = (values - {7}) | {0}
    return frozenset(values)


@dataclass(frozen=True)
class CronExpression:
    text: str
    minutes: frozenset[int]
    hours: frozenset[int]
    days: frozenset[int]
    months: frozenset[int]
    weekdays: frozenset[int]
    days_restricted: bool
    weekdays_restricted: bool

    @classmethod
    def parse(cls, text: str) -> CronExpression:
        """Parse ``*``, numbers, names, ranges, steps and lists; ValueError when malformed."""
        fields = text.split()
        if len(fields) != 5:
            raise ValueError(f"a cron expression has 5 fields, got {len(fields)}: {text!r}")
        minute, hour, dom, month, dow = fields
        return cls(
            text=text,
            minutes=_field(minute, "minute"),
            hours=_field(hour, "hour"),
            days=_field(dom, "dom"),
            months=_field(month, "month"),
            weekdays=_field(dow, "dow"),
            days_restricted=not dom.startswith("*"),
            weekdays_restricted=not dow.startswith("*"),
        )

    def _day_matches(self, at: datetime) -> bool:
        in_days = at.day in self.days
        in_weekdays = (at.weekday() + 1) % 7 in self.weekdays
        # Classic cron: when both day fields are restricted, either one may match.
        if self.days_restricted and self.weekdays_restricted:
            return in_days or in_weekdays
        return in_days and in_weekdays

    def next_after(self, after: datetime) -> datetime:
        """The first matching minute strictly after ``after`` (UTC)."""
        at = after.astimezone(UTC).replace(second=0, microsecond=0) + timedelta(minutes=1)
        limit = at + _SEARCH_LIMIT
        while at < limit:
            if at.month not in self.months:
                at = (at.replace(day=1, hour=0, minute=0) + timedelta(days=32)).replace(day=1)
            elif not self._day_matches(at):
                at = at.replace(hour=0, minute=0) + timedelta(days=1)
            elif at.hour not in self.hours:
                at = at.replace(minute=0) + timedelta(hours=1)
            elif at.minute not in self.minutes:
                at += timedelta(minutes=1)
            else:
                return at
        raise ValueError(f"{self.text!r} never matches")


class Scheduler:
    """Runs ``job`` once at start and then at every matching minute, until stopped."""

    def __init__(
        self,
        expression: CronExpression,
        job: Callable[[], None],
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._expression = expression
        self._job = job
        self._clock = clock
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="cron", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _loop(self) -> None:
        self._run()
        while not self._stop.is_set():
            due = self._expression.next_after(self._clock())
            if self._stop.wait(max(0.0, (due - self._clock()).total_seconds())):
                return
            self._run()

    def _run(self) -> None:
        try:
            self._job()
        except Exception:  # a failed run must not stop the schedule
            log.exception("scheduled run failed")
