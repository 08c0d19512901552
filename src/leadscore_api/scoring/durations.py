"""Durations as rule authors write them (``30d``, ``24h``, ``90m``, ``4bh``, ``3bd``) and the
business calendar that working-hour and working-day durations are counted on.

Business units exist because the seed procedures speak of "4 working hours" and
"3 working days": a hand-over SLA that ignores weekends would be breached every Monday.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, time, timedelta
from zoneinfo import ZoneInfo

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(bd|bh|w|d|h|m|s)\s*$")
_UNIT_SECONDS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}

DURATION_HELP = "a duration like 90m, 24h, 30d, 2w, or in working time 4bh (hours) / 3bd (days)"


@dataclass(frozen=True, slots=True)
class Duration:
    """A parsed duration; ``business`` ones are counted on the ruleset's calendar."""

    amount: float
    unit: str
    text: str

    @property
    def business(self) -> bool:
        return self.unit in ("bh", "bd")

    @property
    def seconds(self) -> float:
        """Calendar length in seconds; business durations have none and raise."""
        if self.business:
            raise ValueError(f"{self.text} is counted in working time and has no fixed length")
        return self.amount * _UNIT_SECONDS[self.unit]

    def __str__(self) -> str:
        return self.text


def parse_duration(text: str | int | float) -> Duration:
    """Parse ``30d``-style text; a bare number is seconds."""
    if isinstance(text, bool):
        raise ValueError(f"expected {DURATION_HELP}, got {text!r}")
    if isinstance(text, int | float):
        if text < 0:
            raise ValueError("a duration cannot be negative")
        return Duration(float(text), "s", f"{text}s")
    match = _DURATION.match(str(text))
    if not match:
        raise ValueError(f"expected {DURATION_HELP}, got {text!r}")
    amount = float(match.group(1))
    if amount <= 0:
        raise ValueError(f"a duration must be longer than zero, got {text!r}")
    return Duration(amount, match.group(2), str(text).strip())


_WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


@dataclass(frozen=True)
class BusinessCalendar:
    """Working days and hours in one time zone."""

    zone: ZoneInfo
    working_days: frozenset[int]  # 0 = Monday
    start: time
    end: time

    @classmethod
    def build(cls, timezone: str, days: list[str], start: str, end: str) -> BusinessCalendar:
        return cls(
            ZoneInfo(timezone),
            frozenset(_WEEKDAYS.index(day) for day in days),
            time.fromisoformat(start),
            time.fromisoformat(end),
        )

    def _is_working_day(self, moment: datetime) -> bool:
        return moment.weekday() in self.working_days

    def add(self, start_ts: float, duration: Duration) -> float:
        """The moment ``duration`` after ``start_ts`` (epoch seconds)."""
        if not duration.business:
            return start_ts + duration.seconds
        local = datetime.fromtimestamp(start_ts, UTC).astimezone(self.zone)
        if duration.unit == "bd":
            return self._add_days(local, duration.amount).timestamp()
        return self._add_hours(local, duration.amount * 3600.0).timestamp()

    def _add_days(self, local: datetime, days: float) -> datetime:
        whole = int(days)
        moment = local
        while whole > 0:
            moment = moment + timedelta(days=1)
            if self._is_working_day(moment):
                whole -= 1
        moment = moment.replace(tzinfo=None).replace(tzinfo=self.zone)
        remainder = days - int(days)
        if remainder:
            day_length = (
                datetime.combine(moment.date(), self.end)
                - datetime.combine(moment.date(), self.start)
            ).total_seconds()
            return self._add_hours(moment, remainder * day_length)
        return moment

    def _add_hours(self, local: datetime, seconds: float) -> datetime:
        moment = self._next_working_moment(local)
        remaining = seconds
        for _ in range(3660):  # bounded: ten years of working days
            day_end = datetime.combine(moment.date(), self.end, tzinfo=self.zone)
            available = (day_end - moment).total_seconds()
            if remaining <= available:
                return moment + timedelta(seconds=remaining)
            remaining -= available
            moment = self._next_working_moment(day_end + timedelta(seconds=1))
        raise ValueError("working-time duration is too long for the calendar")

    def _next_working_moment(self, local: datetime) -> datetime:
        moment = local
        for _ in range(3660):
            day_start = datetime.combine(moment.date(), self.start, tzinfo=self.zone)
            day_end = datetime.combine(moment.date(), self.end, tzinfo=self.zone)
            if self._is_working_day(moment) and moment < day_end:
                return max(moment, day_start)
            next_day = moment.date() + timedelta(days=1)
            moment = datetime.combine(next_day, time(0), tzinfo=self.zone)
        raise ValueError("the calendar has no working time")
