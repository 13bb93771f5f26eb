"""A 5-field cron schedule (minute hour day-of-month month day-of-week), evaluated in UTC.

Garbage collection needs only "when is the next run after this instant": a small pure parser does that
without a new dependency. It follows Vixie cron, which CronJob users know: `*`, numbers, ranges `a-b`,
steps `*/n` and `a-b/n`, lists `a,b`; day of week 0-7 with 0 and 7 both Sunday; and when both day fields
are restricted a day matches if *either* does. Names (`MON`, `JAN`) and macros (`@daily`) are not accepted:
the CRD's pattern refuses them, and refusing beats guessing.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

# (low, high) of each field, in order.
_BOUNDS = ((0, 59), (0, 23), (1, 31), (1, 12), (0, 7))
_NAMES = ("minute", "hour", "day of month", "month", "day of week")
# No schedule repeats over a longer span than this (leap days, weekdays: a 28-year cycle is enough; 5 covers
# any satisfiable one): a field set such as "30 February" that never matches ends the search instead of
# looping forever.
_HORIZON_DAYS = 366 * 5


def _field(text: str, low: int, high: int, name: str) -> frozenset[int]:
    out: set[int] = set()
    for part in text.split(","):
        base, _, step_text = part.partition("/")
        step = int(step_text) if step_text.isdigit() else (1 if not step_text else 0)
        if step < 1:
            raise ValueError(f"{name}: bad step in {part!r}")
        if base == "*":
            start, end = low, high
        elif "-" in base:
            a, _, b = base.partition("-")
            if not (a.isdigit() and b.isdigit()):
                raise ValueError(f"{name}: bad range {base!r}")
            start, end = int(a), int(b)
        elif base.isdigit():
            start = int(base)
            end = high if step_text else start  # `5/15`: from 5 to the end, as Vixie cron reads it
        else:
            raise ValueError(f"{name}: {base!r} is not a number, range or *")
        if not low <= start <= end <= high:
            raise ValueError(f"{name}: {part!r} is outside {low}-{high}")
        out.update(range(start, end + 1, step))
    return frozenset(out)


@dataclass(frozen=True)
class Cron:
    minutes: frozenset[int]
    hours: frozenset[int]
    days: frozenset[int]
    months: frozenset[int]
    weekdays: frozenset[int]  # 0 = Sunday
    any_day: bool  # day of month is `*`
    any_weekday: bool  # day of week is `*`

    @classmethod
    def parse(cls, text: str) -> Cron:
        fields = text.split()
        if len(fields) != 5:
            raise ValueError(f"a schedule has 5 fields (minute hour day month weekday), not {len(fields)}")
        parsed = [_field(f, lo, hi, n) for f, (lo, hi), n in zip(fields, _BOUNDS, _NAMES, strict=True)]
        return cls(
            minutes=parsed[0], hours=parsed[1], days=parsed[2], months=parsed[3],
            weekdays=frozenset(d % 7 for d in parsed[4]),
            any_day=fields[2].startswith("*"), any_weekday=fields[4].startswith("*"),
        )

    def _day_matches(self, day: dt.date) -> bool:
        in_month = day.day in self.days
        in_week = (day.isoweekday() % 7) in self.weekdays
        if self.any_day or self.any_weekday:  # Vixie cron: a `*` field does not widen the other one
            return in_month and in_week
        return in_month or in_week

    def matches(self, when: dt.datetime) -> bool:
        """Whether `when` (UTC, to the minute) is a tick of this schedule."""
        return (when.second == 0 and when.microsecond == 0 and when.minute in self.minutes
                and when.hour in self.hours and when.month in self.months and self._day_matches(when.date()))

    def next_after(self, when: dt.datetime) -> dt.datetime | None:
        """The first tick strictly after `when` (an aware datetime), in UTC; None if there is none."""
        start = when.astimezone(dt.UTC).replace(second=0, microsecond=0) + dt.timedelta(minutes=1)
        day = start.date()
        for _ in range(_HORIZON_DAYS):
            if day.month in self.months and self._day_matches(day):
                first = start if day == start.date() else None
                for hour in sorted(self.hours):
                    if first and hour < first.hour:
                        continue
                    for minute in sorted(self.minutes):
                        if first and hour == first.hour and minute < first.minute:
                            continue
                        return dt.datetime(day.year, day.month, day.day, hour, minute, tzinfo=dt.UTC)
            day += dt.timedelta(days=1)
        return None
