"""The 5-field cron parser: which instants are ticks, the next one after any instant, and what is refused."""

import datetime as dt

import pytest

from registry_operator.cron import Cron


def at(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text).replace(tzinfo=dt.UTC)


@pytest.mark.parametrize(("schedule", "after", "expected"), [
    ("* * * * *", "2026-12-01T10:00:30", "2026-12-01T10:01:00"),
    ("0 3 * * *", "2026-12-01T03:00:00", "2026-12-02T03:00:00"),  # strictly after
    ("0 3 * * *", "2026-12-01T02:59:59", "2026-12-01T03:00:00"),
    ("*/15 * * * *", "2026-12-01T10:16:00", "2026-12-01T10:30:00"),
    ("5/20 * * * *", "2026-12-01T10:26:00", "2026-12-01T10:45:00"),  # 5, 25, 45
    ("0 9-17/4 * * *", "2026-12-01T10:00:00", "2026-12-01T13:00:00"),  # 9, 13, 17
    ("30 2 1,15 * *", "2026-12-02T00:00:00", "2026-12-15T02:30:00"),
    ("0 0 * * 0", "2026-12-01T00:00:00", "2026-12-06T00:00:00"),  # 2026-12-01 is a Tuesday; Sunday next
    ("0 0 * * 7", "2026-12-01T00:00:00", "2026-12-06T00:00:00"),  # 7 is Sunday too
    ("0 0 29 2 *", "2026-03-01T00:00:00", "2028-02-29T00:00:00"),  # the next leap day
    ("59 23 31 12 *", "2026-12-31T23:59:00", "2027-12-31T23:59:00"),  # year rollover
    # Both day fields restricted: either matches (the 13th, or any Friday).
    ("0 0 13 * 5", "2026-12-01T00:00:00", "2026-12-04T00:00:00"),
    ("0 0 13 * 5", "2026-12-11T00:00:00", "2026-12-13T00:00:00"),
])
def test_next_after(schedule, after, expected):
    assert Cron.parse(schedule).next_after(at(after)) == at(expected)


def test_next_after_converts_other_zones_to_utc():
    plus_two = dt.timezone(dt.timedelta(hours=2))
    assert Cron.parse("0 3 * * *").next_after(dt.datetime(2026, 12, 1, 4, 0, tzinfo=plus_two)) == at(
        "2026-12-01T03:00:00")


def test_impossible_schedule_has_no_next_tick():
    assert Cron.parse("0 0 30 2 *").next_after(at("2026-01-01T00:00:00")) is None


def test_matches_only_ticks():
    cron = Cron.parse("0 3 * * 1-5")
    assert cron.matches(at("2026-12-01T03:00:00"))  # Tuesday
    assert not cron.matches(at("2026-12-06T03:00:00"))  # Sunday
    assert not cron.matches(at("2026-12-01T03:00:01"))
    assert not cron.matches(at("2026-12-01T03:01:00"))


@pytest.mark.parametrize("bad", [
    "", "* * * *", "* * * * * *", "60 * * * *", "* 24 * * *", "* * 0 * *", "* * * 13 *", "* * * * 8",
    "*/0 * * * *", "5-1 * * * *", "MON * * * *", "@daily", "1-x * * * *", "*/a * * * *",
])
def test_refused(bad):
    with pytest.raises(ValueError):
        Cron.parse(bad)
