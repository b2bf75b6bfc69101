"""A cron expression, parsed once, and the same schedule for APScheduler and systemd.

Users write cron (`0 3 * * *`); three things must fire on exactly the times cron would: the crontab
line itself, `convpipe schedule` (APScheduler) and a systemd timer (`OnCalendar=`). Two of them
read cron differently from cron, so we never hand them the user's text:

- APScheduler 3's `CronTrigger.from_crontab` numbers weekdays from Monday (its 0 is Monday, cron's
  0 is Sunday; apscheduler issue 286), so weekdays are passed by name (`mon,fri`).
- When both day-of-month and day-of-week are restricted, cron fires on a day matching *either*
  (`0 3 1 * mon`: the 1st, and every Monday); APScheduler and `OnCalendar=` require both. That case
  becomes two triggers (an `OrTrigger`) and two `OnCalendar=` lines. As in Vixie cron, a field
  that starts with `*` (`*`, `*/2`) does not count as restricted for this rule.

Accepted: the five standard fields with numbers, names (jan-dec, sun-sat; 0 and 7 are Sunday),
`*`, ranges `a-b`, steps `*/n`, `a-b/n`, `a/n`, comma lists, and the macros `@hourly`, `@daily`,
`@midnight`, `@weekly`, `@monthly`, `@yearly`, `@annually`. Anything else (seconds, years,
Quartz's `L`, `W`, `#` and `?`, `@reboot`) is an error that names the field.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Optional

from pipeline.config import ConfigError

MACROS = {"@yearly": "0 0 1 1 *", "@annually": "0 0 1 1 *", "@monthly": "0 0 1 * *",
          "@weekly": "0 0 * * 0", "@daily": "0 0 * * *", "@midnight": "0 0 * * *", "@hourly": "0 * * * *"}
_MONTHS = ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec")
_WEEKDAYS = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")     # cron numbering: 0 = Sunday
_SYSTEMD_WEEKDAYS = ("Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat")
_MONDAY_FIRST = (1, 2, 3, 4, 5, 6, 0)                              # systemd's ranges run Mon..Sun


@dataclass(frozen=True)
class _Field:
    name: str
    low: int
    high: int
    names: tuple[str, ...] = ()     # names[i] means low + i
    expected: str = ""


_FIELDS = (
    _Field("minute", 0, 59, expected="0-59"),
    _Field("hour", 0, 23, expected="0-23"),
    _Field("day-of-month", 1, 31, expected="1-31"),
    _Field("month", 1, 12, _MONTHS, expected="1-12 or jan-dec"),
    _Field("day-of-week", 0, 7, _WEEKDAYS, expected="0-7 or sun-sat (0 and 7 are Sunday)"),
)
_SYNTAX = "*, N, N-M, */S, N-M/S, N/S or a comma list of these"
_QUARTZ = re.compile(r"(\d*|[a-z]{3})(L|W|LW)|\?|.*#.*", re.IGNORECASE)


class CronError(ConfigError):
    """A cron expression that cron, APScheduler or systemd would not read as written."""


@dataclass(frozen=True)
class CronExpression:
    text: str
    minutes: frozenset[int]
    hours: frozenset[int]
    days: frozenset[int]
    months: frozenset[int]
    weekdays: frozenset[int]            # 0 = Sunday .. 6 = Saturday
    day_restricted: bool                # the day-of-month field does not start with '*'
    weekday_restricted: bool            # the day-of-week field does not start with '*'

    @classmethod
    def parse(cls, text: str) -> "CronExpression":
        text = " ".join(text.split())
        fields = MACROS.get(text.lower(), text).split()
        if text.lower() == "@reboot":
            raise CronError(f'cron expression "{text}": @reboot is not a time schedule; '
                            "run `convpipe run` from a boot-time unit instead")
        if len(fields) != 5:
            raise CronError(f'cron expression "{text}": expected 5 fields (minute hour day-of-month month '
                            f"day-of-week) or a macro such as @daily, got {len(fields)} field(s)")
        values = [_parse_field(text, spec, field) for spec, field in zip(_FIELDS, fields)]
        weekdays = frozenset(v % 7 for v in values[4])
        return cls(text, *values[:4], weekdays, not fields[2].startswith("*"), not fields[4].startswith("*"))

    @property
    def either_day(self) -> bool:
        """True when cron fires on a day matching day-of-month OR day-of-week (both restricted)."""
        return self.day_restricted and self.weekday_restricted

    # ------------------------------------------------------------------------- APScheduler
    def trigger(self, timezone=None):
        """An APScheduler trigger that fires when cron would."""
        from apscheduler.triggers.combining import OrTrigger
        from apscheduler.triggers.cron import CronTrigger

        def crontab(days: str, weekdays: str) -> CronTrigger:
            return CronTrigger.from_crontab(
                f"{_numbers(self.minutes, 0, 59)} {_numbers(self.hours, 0, 23)} {days} "
                f"{_numbers(self.months, 1, 12)} {weekdays}", timezone=timezone)

        days = _numbers(self.days, 1, 31)
        weekdays = "*" if len(self.weekdays) == 7 else ",".join(_WEEKDAYS[d] for d in sorted(self.weekdays))
        if self.either_day:
            return OrTrigger([crontab(days, "*"), crontab("*", weekdays)])
        return crontab(days, weekdays)

    # ----------------------------------------------------------------------------- systemd
    def on_calendar(self) -> list[str]:
        """`OnCalendar=` values (one per line; a timer with several fires on any of them)."""
        time = f"{_systemd(self.hours, 0, 23)}:{_systemd(self.minutes, 0, 59)}:00"

        def line(days: frozenset[int], weekdays: frozenset[int]) -> str:
            prefix = "" if len(weekdays) == 7 else _systemd_weekdays(weekdays) + " "
            return f"{prefix}*-{_systemd(self.months, 1, 12)}-{_systemd(days, 1, 31)} {time}"

        every_day, every_weekday = frozenset(range(1, 32)), frozenset(range(7))
        if self.either_day:
            return [line(self.days, every_weekday), line(every_day, self.weekdays)]
        return [line(self.days, self.weekdays)]


# ------------------------------------------------------------------------------- parsing
def _parse_field(text: str, spec: _Field, field: str) -> frozenset[int]:
    def fail(item: str, expected: str, note: str = "") -> CronError:
        return CronError(f'cron expression "{text}": {spec.name} field "{field}": expected {expected}, '
                         f'got "{item}"{note}')

    def value(token: str, item: str) -> int:
        if token.isdigit():
            number = int(token)
        elif token.lower() in spec.names:
            number = spec.low + spec.names.index(token.lower())
        elif _QUARTZ.fullmatch(token):
            raise fail(item, f"{spec.expected} ({_SYNTAX})", " (L, W, # and ? are Quartz extensions, not cron)")
        else:
            raise fail(item, f"{spec.expected} ({_SYNTAX})")
        if not spec.low <= number <= spec.high:
            raise fail(item, spec.expected)
        return number

    result: set[int] = set()
    for item in field.split(","):
        base, slash, step_text = item.partition("/")
        if slash and not (step_text.isdigit() and int(step_text) >= 1):
            raise fail(item, "a step /S with S a whole number >= 1")
        step = int(step_text) if slash else 1
        if base == "*":
            low, high = spec.low, spec.high
        elif "-" in base:
            first, _, last = base.partition("-")
            low, high = value(first, item), value(last, item)
            if low > high:
                raise fail(item, "a range N-M with N <= M (cron ranges do not wrap around)")
        else:
            low = value(base, item)
            high = spec.high if slash else low
        result.update(range(low, high + 1, step))
    return frozenset(result)


# ----------------------------------------------------------------------------- rendering
def _runs(values: list[int]) -> list[tuple[int, int]]:
    """Consecutive runs of sorted values: [1, 2, 3, 7] -> [(1, 3), (7, 7)]."""
    runs: list[tuple[int, int]] = []
    for v in values:
        if runs and v == runs[-1][1] + 1:
            runs[-1] = (runs[-1][0], v)
        else:
            runs.append((v, v))
    return runs


def _numbers(values: frozenset[int], low: int, high: int) -> str:
    """Cron syntax for APScheduler: '*' or a comma list of values and ranges."""
    if values == frozenset(range(low, high + 1)):
        return "*"
    return ",".join(f"{a}" if a == b else f"{a}-{b}" for a, b in _runs(sorted(values)))


def _step(values: list[int], high: int) -> Optional[int]:
    """S when values are v0, v0+S, ... up to the last one before `high` (systemd's `v0/S`)."""
    if len(values) < 3:
        return None
    step = values[1] - values[0]
    if step > 1 and values == list(range(values[0], high + 1, step)):
        return step
    return None


def _systemd(values: frozenset[int], low: int, high: int) -> str:
    if values == frozenset(range(low, high + 1)):
        return "*"
    ordered = sorted(values)
    step = _step(ordered, high)
    if step:
        return f"{ordered[0]:02d}/{step}"
    return ",".join(f"{a:02d}" if a == b else (f"{a:02d},{b:02d}" if b == a + 1 else f"{a:02d}..{b:02d}")
                    for a, b in _runs(ordered))


def _systemd_weekdays(weekdays: frozenset[int]) -> str:
    positions = [i for i, day in enumerate(_MONDAY_FIRST) if day in weekdays]
    names = [_SYSTEMD_WEEKDAYS[_MONDAY_FIRST[i]] for i in range(7)]
    return ",".join(names[a] if a == b else (f"{names[a]},{names[b]}" if b == a + 1 else f"{names[a]}..{names[b]}")
                    for a, b in _runs(positions))
