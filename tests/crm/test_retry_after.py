"""A receiver's ``Retry-After`` header decides how long a CRM connector's or an outbound
webhook's messages wait: odd values must not hold them back forever or make the wait negative."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from leadscore_api.retry_after import MAX_RETRY_AFTER_SECONDS, retry_after_seconds

NOW = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("header", "seconds"),
    [
        ("30", 30.0),
        (" 2.5 ", 2.5),
        ("-10", 0.0),
        ("Fri, 27 Nov 2026 12:01:00 GMT", 60.0),
        ("Fri, 27 Nov 2026 12:01:00 -0000", 60.0),
        ("Thu, 26 Nov 2026 12:00:00 GMT", 0.0),
        ("1e12", MAX_RETRY_AFTER_SECONDS),
        ("Sun, 27 Nov 2050 12:00:00 GMT", MAX_RETRY_AFTER_SECONDS),
    ],
)
def test_a_retry_after_header_is_a_bounded_wait(header: str, seconds: float) -> None:
    assert retry_after_seconds(header, NOW) == seconds


@pytest.mark.parametrize("header", [None, "", "soon", "inf", "-inf", "nan", "Fri, 99 Nov"])
def test_a_retry_after_header_that_is_no_time_is_ignored(header: str | None) -> None:
    assert retry_after_seconds(header, NOW) is None
