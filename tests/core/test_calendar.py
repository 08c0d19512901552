"""The working calendar: working days and hours minus public holidays, for ``bh``/``bd``."""

from __future__ import annotations

import textwrap
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, date, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from leadscore_api.scoring import RuleFileError, load_rules_dir, load_ruleset_text
from leadscore_api.scoring.durations import BusinessCalendar, parse_duration

REPO = Path(__file__).resolve().parents[2]
ROME = ZoneInfo("Europe/Rome")


def rome(year: int, month: int, day: int, hour: int, minute: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=ROME)


def add(calendar: BusinessCalendar, start: datetime, duration: str) -> datetime:
    """``start`` plus ``duration`` on ``calendar``, as a time in Rome."""
    moment = calendar.add(start.timestamp(), parse_duration(duration))
    return datetime.fromtimestamp(moment, UTC).astimezone(ROME)


def calendar_of(holidays: str = "") -> BusinessCalendar:
    """The calendar the engine builds for a small ruleset with ``holidays:`` lines (YAML)."""
    block = textwrap.indent(textwrap.dedent(holidays), "    ")
    text = (
        "ruleset: demo\n"
        "version: 1\n"
        "calendar:\n"
        "  working_hours: ['09:00', '18:00']\n"
        + ("  holidays:\n" + block if holidays else "")
        + "components:\n"
        "  fit: {max: 10, actions: [{id: visit, on: page.viewed, points: 5}]}\n"
    )
    return load_ruleset_text(text, "rules/demo.yaml").scorer.calendar


def problems_of(text: str) -> list[str]:
    with pytest.raises(RuleFileError) as caught:
        load_ruleset_text(textwrap.dedent(text), "rules/demo.yaml")
    return [str(p) for p in caught.value.problems]


ITALY = calendar_of()  # the default: Mon–Fri 09:00–18:00, Italian national holidays


def test_the_default_holidays_are_the_italian_national_ones() -> None:
    days_off = ITALY.days_off(2026)
    assert date(2026, 4, 6) in days_off  # Lunedì dell'Angelo (Easter Monday)
    assert date(2026, 8, 15) in days_off  # Ferragosto
    assert {date(2026, 1, 1), date(2026, 4, 25), date(2026, 6, 2), date(2026, 12, 25)} <= days_off
    assert date(2026, 12, 7) not in days_off  # Sant'Ambrogio is Milan's, not national
    assert date(2026, 6, 29) not in days_off  # Santi Pietro e Paolo is Rome's
    assert ITALY.is_working_day(date(2026, 4, 7))
    assert not ITALY.is_working_day(date(2026, 4, 6))
    assert not ITALY.is_working_day(date(2026, 4, 4))  # a Saturday


def test_four_working_hours_over_a_weekend() -> None:
    # Friday 19 June 2026 16:00: 2 h on Friday, 2 h on Monday from 09:00.
    assert add(ITALY, rome(2026, 6, 19, 16), "4bh") == rome(2026, 6, 22, 11)


def test_four_working_hours_over_easter_monday() -> None:
    # Friday 3 April 2026 17:00: 1 h on Friday, Monday 6 April is Easter Monday, 3 h on Tuesday.
    assert add(ITALY, rome(2026, 4, 3, 17), "4bh") == rome(2026, 4, 7, 12)


def test_four_working_hours_over_ferragosto() -> None:
    # 15 August 2025 is a Friday: Thursday 16:00 + 4bh skips it and the weekend.
    assert add(ITALY, rome(2025, 8, 14, 16), "4bh") == rome(2025, 8, 18, 11)
    # 15 August 2028 is a Tuesday: Monday 17:00 + 4bh lands on Wednesday.
    assert add(ITALY, rome(2028, 8, 14, 17), "4bh") == rome(2028, 8, 16, 12)


def test_working_days_skip_a_holiday() -> None:
    # Thursday 2 April 2026 10:00 + 3bd: Friday 3, (Easter Monday 6 off), Tuesday 7, Wednesday 8.
    assert add(ITALY, rome(2026, 4, 2, 10), "3bd") == rome(2026, 4, 8, 10)
    # Monday 1 June 2026 + 1bd: Tuesday 2 June is Festa della Repubblica.
    assert add(ITALY, rome(2026, 6, 1, 10), "1bd") == rome(2026, 6, 3, 10)
    # Thursday 30 April 2026 + 3bd: Friday 1 May is off.
    assert add(ITALY, rome(2026, 4, 30, 10), "3bd") == rome(2026, 5, 6, 10)


def test_ordinary_days_and_calendar_units_are_unchanged() -> None:
    plain = BusinessCalendar.build(
        "Europe/Rome", ["mon", "tue", "wed", "thu", "fri"], "09:00", "18:00"
    )
    start = rome(2026, 6, 15, 10)  # a Monday without holidays around it
    for text in ("1bh", "4bh", "9bh", "20bh", "1bd", "3bd", "2.5bd"):
        assert add(ITALY, start, text) == add(plain, start, text), text
    assert add(ITALY, start, "4bh") == rome(2026, 6, 15, 14)
    assert add(ITALY, start, "3bd") == rome(2026, 6, 18, 10)
    # Calendar units ignore working time and holidays: Easter Sunday + 24h is Easter Monday.
    easter = rome(2026, 4, 5, 10)
    assert add(ITALY, easter, "24h") == rome(2026, 4, 6, 10)
    assert ITALY.add(easter.timestamp(), parse_duration("30d")) == easter.timestamp() + 30 * 86400


def test_a_patron_saint_day_added_by_extra() -> None:
    milan = calendar_of("extra: ['12-07']\n")
    # Friday 4 December 2026 16:00: Monday 7 (Sant'Ambrogio) and Tuesday 8 (Immacolata) are off.
    assert add(milan, rome(2026, 12, 4, 16), "4bh") == rome(2026, 12, 9, 11)
    assert add(ITALY, rome(2026, 12, 4, 16), "4bh") == rome(2026, 12, 7, 11)
    # A recurring day is off every year: 7 December 2027 is a Tuesday.
    assert add(milan, rome(2027, 12, 6, 10), "1bd") == rome(2027, 12, 9, 10)  # 8th is off too
    rome_city = calendar_of("extra: ['06-29']\n")
    # Friday 26 June 2026 16:00: Monday 29 June (Santi Pietro e Paolo) is off.
    assert add(rome_city, rome(2026, 6, 26, 16), "4bh") == rome(2026, 6, 30, 11)


def test_a_subdivision_brings_its_own_holidays() -> None:
    milan = calendar_of("subdivision: MI\n")
    assert date(2026, 12, 7) in milan.days_off(2026)
    assert add(milan, rome(2026, 12, 4, 16), "4bh") == rome(2026, 12, 9, 11)
    by_name = calendar_of("subdivision: milano\n")
    assert by_name.holiday_rules.subdivision == "MI"
    assert calendar_of("subdivision: RM\n").days_off(2026) - ITALY.days_off(2026) == {
        date(2026, 6, 29)
    }


def test_a_single_date_is_off_only_in_its_year() -> None:
    eve = calendar_of("extra: ['2026-12-24']\n")
    # Wednesday 23 December 2026 17:00: 1 h, then Thursday 24 and Friday 25 are off.
    assert add(eve, rome(2026, 12, 23, 17), "4bh") == rome(2026, 12, 28, 12)
    assert add(ITALY, rome(2026, 12, 23, 17), "4bh") == rome(2026, 12, 24, 12)
    assert eve.is_working_day(date(2027, 12, 24))  # a Friday, and not listed for 2027


@pytest.mark.parametrize("country", ["null", "none", "None"])
def test_no_country_means_plain_weekends(country: str) -> None:
    plain = calendar_of(f"country: {country}\n")
    assert plain.holiday_rules.country is None
    assert plain.days_off(2026) == frozenset()
    # Easter Monday is an ordinary Monday: Friday 17:00 + 4bh = Monday 12:00.
    assert add(plain, rome(2026, 4, 3, 17), "4bh") == rome(2026, 4, 6, 12)
    assert add(plain, rome(2026, 6, 19, 16), "4bh") == rome(2026, 6, 22, 11)


def test_no_country_keeps_the_extra_days() -> None:
    own = calendar_of("country: null\nextra: ['04-06', '2026-04-07']\n")
    assert own.days_off(2026) == {date(2026, 4, 6), date(2026, 4, 7)}
    assert add(own, rome(2026, 4, 3, 17), "4bh") == rome(2026, 4, 8, 12)


def test_an_invalid_country_is_a_rule_file_error_with_its_line() -> None:
    problems = problems_of(
        """\
        ruleset: demo
        version: 1
        calendar:
          holidays:
            country: XX
        components:
          fit: {max: 10, actions: [{id: visit, on: page.viewed, points: 5}]}
        """
    )
    assert len(problems) == 1
    assert problems[0].startswith(
        "rules/demo.yaml:5: calendar.holidays.country: unknown country 'XX' for public holidays"
    )


def test_bad_subdivisions_and_days_are_rule_file_errors_with_their_lines() -> None:
    problems = problems_of(
        """\
        ruleset: demo
        version: 1
        calendar:
          holidays:
            subdivision: Milan
            extra:
              - 12-07
              - 02-30
              - 7 dicembre
        components:
          fit: {max: 10, actions: [{id: visit, on: page.viewed, points: 5}]}
        """
    )
    assert len(problems) == 3
    # the list of codes that follows the hint is the holidays library's
    assert problems[0].startswith(
        "rules/demo.yaml:5: calendar.holidays.subdivision: IT has no subdivision 'Milan' "
        "(did you mean MI?): use one of its codes (AG, "
    )
    assert problems[1:] == [
        "rules/demo.yaml:8: calendar.holidays.extra[1]: '02-30' is not a day of the calendar; "
        "expected a recurring day MM-DD (e.g. 12-07) or a single date YYYY-MM-DD (e.g. 2026-12-24)",
        "rules/demo.yaml:9: calendar.holidays.extra[2]: expected a recurring day MM-DD (e.g. "
        "12-07) or a single date YYYY-MM-DD (e.g. 2026-12-24), got '7 dicembre'",
    ]
    assert problems_of(
        "ruleset: demo\nversion: 1\ncalendar:\n  holidays: {country: null, subdivision: MI}\n"
        "components:\n  fit: {max: 10, actions: [{id: visit, on: page.viewed, points: 5}]}\n"
    ) == [
        "rules/demo.yaml:4: calendar.holidays.subdivision: a subdivision needs a country "
        "(country is null)"
    ]


def test_holidays_are_computed_once_per_year_and_the_calendar_stays_hashable() -> None:
    calendar = calendar_of("extra: ['12-07']\n")
    assert calendar.days_off(2026) is calendar.days_off(2026)
    twin = calendar_of("extra: ['12-07']\n")
    assert twin == calendar and hash(twin) == hash(calendar)  # the memo is not part of either
    assert calendar != ITALY
    with pytest.raises(AttributeError):
        calendar.holiday_rules = ITALY.holiday_rules  # type: ignore[misc]


def test_a_calendar_shared_between_threads_gives_the_same_deadlines() -> None:
    calendar = calendar_of("subdivision: MI\n")
    starts = [rome(year, 12, 4, 16).timestamp() for year in range(2026, 2046)] * 5
    with ThreadPoolExecutor(max_workers=8) as pool:
        shared = list(pool.map(lambda ts: calendar.add(ts, parse_duration("4bh")), starts))
    fresh = calendar_of("subdivision: MI\n")
    assert shared == [fresh.add(ts, parse_duration("4bh")) for ts in starts]
    assert datetime.fromtimestamp(shared[0], UTC).astimezone(ROME) == rome(2026, 12, 9, 11)


def test_the_bundled_rulesets_still_load_with_italian_holidays() -> None:
    loaded = load_rules_dir(REPO / "rules")
    assert {"bant", "pmi-letter-score"} <= set(loaded)
    for ruleset in loaded.values():
        assert ruleset.ruleset.calendar.holidays.country == "IT"
        assert date(2026, 4, 6) in ruleset.scorer.calendar.days_off(2026)
    # The BANT hand-over SLA (4bh) from Friday 3 April 2026 17:00 falls due on Tuesday.
    bant = loaded["bant"].scorer.calendar
    assert add(bant, rome(2026, 4, 3, 17), "4bh") == rome(2026, 4, 7, 12)
