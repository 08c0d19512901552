"""Durations as rule authors write them (``30d``, ``24h``, ``90m``, ``4bh``, ``3bd``) and the
business calendar that working-hour and working-day durations are counted on.

Business units exist because the seed procedures speak of "4 working hours" and
"3 working days": a hand-over SLA that ignores weekends would be breached every Monday, and one
that ignores public holidays would be breached every Easter Monday and every Ferragosto.
Public holidays come from the maintained ``holidays`` library (Italian national holidays by
default, see :class:`leadscore_api.scoring.model.Holidays`); a ruleset can add its own days.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from functools import lru_cache
from zoneinfo import ZoneInfo

import holidays

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

# --- public holidays ---------------------------------------------------------------------------

HOLIDAY_DAY_HELP = (
    "a recurring day MM-DD (e.g. 12-07) or a single date YYYY-MM-DD (e.g. 2026-12-24)"
)
_MONTH_DAY = re.compile(r"^(\d{2})-(\d{2})$")
_FULL_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")


def parse_holiday_day(text: str) -> tuple[int, int] | date:
    """``MM-DD`` as ``(month, day)``, every year; ``YYYY-MM-DD`` as that one date."""
    value = text.strip()
    month_day = _MONTH_DAY.match(value)
    try:
        if month_day:
            month, day = int(month_day.group(1)), int(month_day.group(2))
            date(2000, month, day)  # a leap year: 02-29 is a valid recurring day
            return (month, day)
        if _FULL_DATE.match(value):
            return date.fromisoformat(value)
    except ValueError:
        raise ValueError(
            f"{text!r} is not a day of the calendar; expected {HOLIDAY_DAY_HELP}"
        ) from None
    raise ValueError(f"expected {HOLIDAY_DAY_HELP}, got {text!r}")


def check_holiday_day(text: str) -> str:
    """``text`` itself, once :func:`parse_holiday_day` accepts it (for rule-file validation)."""
    parse_holiday_day(text)
    return text


def holiday_country(code: str | None) -> str | None:
    """The country whose public holidays apply, checked against the ``holidays`` library.

    ``None`` or ``"none"`` means no public holidays. Codes are ISO 3166-1 (``IT``); the
    result is upper-case.
    """
    if code is None or code.strip().lower() == "none":
        return None
    value = code.strip().upper()
    if value not in holidays.list_supported_countries():
        raise ValueError(
            f"unknown country {code!r} for public holidays: use an ISO 3166-1 code that the "
            "holidays library knows (e.g. IT), or null for no public holidays"
        )
    return value


def holiday_subdivision(country: str, subdivision: str) -> str:
    """The library's code for a subdivision of ``country`` (a province or region: ``MI``,
    ``RM``), given as its code or its name (``Milano``), in any case."""
    entity = holidays.country_holidays(country)
    codes: tuple[str, ...] = tuple(entity.subdivisions)
    aliases: dict[str, str] = dict(getattr(entity, "subdivisions_aliases", {}) or {})
    wanted = subdivision.strip()
    if wanted in codes:
        return wanted
    by_key = {code.casefold(): code for code in codes}
    by_key.update({alias.casefold(): code for alias, code in aliases.items()})
    found = by_key.get(wanted.casefold())
    if found is not None:
        return found
    if not codes:
        raise ValueError(f"the holidays library has no subdivisions for {country}")
    close = difflib.get_close_matches(wanted.casefold(), list(by_key), n=1, cutoff=0.75)
    hint = f" (did you mean {by_key[close[0]]}?)" if close else ""
    shown = ", ".join(codes[:10]) + (f", … {len(codes)} in all" if len(codes) > 10 else "")
    raise ValueError(
        f"{country} has no subdivision {subdivision!r}{hint}: use one of its codes ({shown}) "
        "or names"
    )


@lru_cache(maxsize=512)
def public_holidays(country: str, subdivision: str | None, year: int) -> frozenset[date]:
    """The public holidays of one year, from the ``holidays`` library (computed once a year
    per region and process; the library's own objects are not shared between threads)."""
    return frozenset(holidays.country_holidays(country, subdiv=subdivision, years=year).keys())


@dataclass(frozen=True, slots=True)
class HolidayRules:
    """Which days are off besides the weekend: a country's public holidays (optionally of one
    subdivision) plus recurring ``(month, day)`` days and single dates."""

    country: str | None = None
    subdivision: str | None = None
    recurring: frozenset[tuple[int, int]] = frozenset()
    dates: frozenset[date] = frozenset()

    @classmethod
    def build(
        cls, country: str | None, subdivision: str | None = None, extra: Iterable[str] = ()
    ) -> HolidayRules:
        """Check and normalise the rule-file values (``ValueError`` on a bad one)."""
        code = holiday_country(country)
        if subdivision is not None and code is None:
            raise ValueError("a holiday subdivision needs a country")
        sub = holiday_subdivision(code, subdivision) if code and subdivision else None
        recurring: set[tuple[int, int]] = set()
        dates: set[date] = set()
        for text in extra:
            day = parse_holiday_day(text)
            if isinstance(day, date):
                dates.add(day)
            else:
                recurring.add(day)
        return cls(code, sub, frozenset(recurring), frozenset(dates))

    def days_off(self, year: int) -> frozenset[date]:
        """Every holiday of ``year``."""
        days: set[date] = set()
        if self.country is not None:
            days |= public_holidays(self.country, self.subdivision, year)
        for month, day in self.recurring:
            if month == 2 and day == 29 and not _is_leap(year):
                continue
            days.add(date(year, month, day))
        days.update(d for d in self.dates if d.year == year)
        return frozenset(days)


def _is_leap(year: int) -> bool:
    return year % 4 == 0 and (year % 100 != 0 or year % 400 == 0)


# --- the business calendar ---------------------------------------------------------------------


@dataclass(frozen=True)
class BusinessCalendar:
    """Working days and hours in one time zone, minus holidays (public ones and the ruleset's).

    Immutable and hashable (the per-year holiday memo is left out of equality and hash), and
    safe to share between threads: a year's holidays are computed the first time a deadline
    falls in it, and a race only computes the same frozen set twice.
    """

    zone: ZoneInfo
    working_days: frozenset[int]  # 0 = Monday
    start: time
    end: time
    holiday_rules: HolidayRules = HolidayRules()
    _memo: dict[int, frozenset[date]] = field(
        default_factory=dict, init=False, repr=False, compare=False, hash=False
    )

    @classmethod
    def build(
        cls,
        timezone: str,
        days: list[str],
        start: str,
        end: str,
        *,
        country: str | None = None,
        subdivision: str | None = None,
        extra: Iterable[str] = (),
    ) -> BusinessCalendar:
        """A calendar from rule-file values; without ``country`` there are no public holidays."""
        return cls(
            ZoneInfo(timezone),
            frozenset(_WEEKDAYS.index(day) for day in days),
            time.fromisoformat(start),
            time.fromisoformat(end),
            HolidayRules.build(country, subdivision, extra),
        )

    def days_off(self, year: int) -> frozenset[date]:
        """The holidays of ``year`` (not the weekly days off), computed once per year."""
        days = self._memo.get(year)
        if days is None:
            days = self.holiday_rules.days_off(year)
            self._memo[year] = days
        return days

    def is_working_day(self, day: date) -> bool:
        return day.weekday() in self.working_days and day not in self.days_off(day.year)

    def _is_working_day(self, moment: datetime) -> bool:
        return self.is_working_day(moment.date())

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
