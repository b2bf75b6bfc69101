"""Cron expressions: parsing, and the same firing times from cron's rules, APScheduler and systemd."""
import shutil
import subprocess
from datetime import datetime, timedelta, timezone

import pytest
from apscheduler.triggers.cron import CronTrigger

from pipeline.config import ConfigError
from pipeline.cron import CronExpression

BASE = datetime(2026, 1, 1, tzinfo=timezone.utc)      # a Thursday


def cron_times(cron: CronExpression, n: int, start: datetime = BASE) -> list[datetime]:
    """The first n times after `start` by cron's own rule (man 5 crontab), day by day.

    A day qualifies when its month is listed and, if both day fields are restricted (neither
    starts with '*'), its day-of-month OR its weekday is listed, else both are.
    """
    times, day = [], start.replace(hour=0, minute=0)
    while len(times) < n:
        weekday = day.isoweekday() % 7                   # cron: 0 = Sunday
        in_days, in_weekdays = day.day in cron.days, weekday in cron.weekdays
        if day.month in cron.months and ((in_days or in_weekdays) if cron.either_day else (in_days and in_weekdays)):
            times += [t for h in sorted(cron.hours) for m in sorted(cron.minutes)
                      if (t := day.replace(hour=h, minute=m)) > start]
        day += timedelta(days=1)
    return times[:n]


def trigger_times(trigger, n: int, start: datetime = BASE) -> list[datetime]:
    times, previous, now = [], None, start + timedelta(microseconds=1)
    while len(times) < n:
        previous = trigger.get_next_fire_time(previous, now)
        times.append(previous)
        now = previous + timedelta(microseconds=1)
    return times


def systemd_times(on_calendar: list[str], n: int) -> list[datetime]:
    """`systemd-analyze calendar` on each OnCalendar= value, merged (a timer fires on any of them)."""
    times = set()
    for spec in on_calendar:
        out = subprocess.run(["systemd-analyze", "calendar", f"--iterations={n}", "--base-time=2026-01-01 00:00:00 UTC",
                              spec], env={"TZ": "UTC", "PATH": "/usr/bin:/bin"}, capture_output=True, text=True,
                             check=True).stdout
        for line in out.splitlines():
            if line.strip().startswith(("Next elapse:", "Iter. #")):
                stamp = line.split(":", 1)[1].strip()            # "Thu 2026-01-01 03:00:00 UTC"
                times.add(datetime.strptime(stamp[4:23], "%Y-%m-%d %H:%M:%S").replace(tzinfo=timezone.utc))
    return sorted(times)[:n]


EXPRESSIONS = [
    "0 3 * * *", "*/15 9-17 * * 1-5", "0 3 * * 0", "5 4 * * sun,7", "0 3 1 * mon", "30 2 */2 * 1",
    "0 0 1-10/3 jan,jul *", "0 12 * * 5-7", "@weekly", "@monthly", "0 22 31 * *", "7/20 */5 * * *",
]


# ---------------------------------------------------------------------------- parsing
def test_fields_are_parsed_to_the_values_cron_means():
    cron = CronExpression.parse("*/20 9-17/4 1,15 jan-mar mon-fri")
    assert cron.minutes == {0, 20, 40}
    assert cron.hours == {9, 13, 17}
    assert cron.days == {1, 15}
    assert cron.months == {1, 2, 3}
    assert cron.weekdays == {1, 2, 3, 4, 5}
    assert cron.either_day                       # 1,15 and mon-fri: either matches

    cron = CronExpression.parse("7/20 0 */2 * SUN,6-7")
    assert cron.minutes == {7, 27, 47}                  # N/S: from N to the end of the range
    assert cron.days == set(range(1, 32, 2))
    assert cron.weekdays == {0, 6}                      # 7 is Sunday, like 0
    assert not cron.either_day                          # */2 starts with '*': both must match (Vixie cron)

    daily, explicit = CronExpression.parse("@daily"), CronExpression.parse("0  0 * * *")
    assert (daily.text, explicit.text) == ("@daily", "0 0 * * *")
    assert (daily.minutes, daily.hours, daily.days, daily.months, daily.weekdays) == (
        {0}, {0}, set(range(1, 32)), set(range(1, 13)), set(range(7)))
    assert daily.on_calendar() == explicit.on_calendar() == ["*-*-* 00:00:00"]


@pytest.mark.parametrize("text, message", [
    ("0 3 * *", 'cron expression "0 3 * *": expected 5 fields (minute hour day-of-month month day-of-week) '
                "or a macro such as @daily, got 4 field(s)"),
    ("61 3 * * *", 'minute field "61": expected 0-59, got "61"'),
    ("0 3 * * 8", 'day-of-week field "8": expected 0-7 or sun-sat (0 and 7 are Sunday), got "8"'),
    ("0 5-3 * * *", 'hour field "5-3": expected a range N-M with N <= M (cron ranges do not wrap around), got "5-3"'),
    ("0 3 L * *", 'day-of-month field "L": expected 1-31'),
    ("0 3 * * 5#2", "L, W, # and ? are Quartz extensions, not cron"),
    ("0 3 * july *", 'month field "july": expected 1-12 or jan-dec'),
    ("*/0 3 * * *", 'minute field "*/0": expected a step /S with S a whole number >= 1, got "*/0"'),
    ("0 0 0 3 * * *", "expected 5 fields"),
    ("@reboot", "@reboot is not a time schedule"),
])
def test_errors_name_the_field_and_what_was_expected(text, message):
    with pytest.raises(ConfigError) as error:
        CronExpression.parse(text)
    assert message in str(error.value)


# ------------------------------------------------------- APScheduler and systemd agree with cron
def test_hand_computed_firings():
    def times(text, n):
        return [t.strftime("%a %Y-%m-%d %H:%M") for t in trigger_times(CronExpression.parse(text).trigger(timezone.utc), n)]

    assert times("0 3 * * 0", 2) == ["Sun 2026-01-04 03:00", "Sun 2026-01-11 03:00"]
    # the 1st OR any Monday (cron's rule when both day fields are restricted)
    assert times("0 3 1 * mon", 4) == ["Thu 2026-01-01 03:00", "Mon 2026-01-05 03:00", "Mon 2026-01-12 03:00",
                                       "Mon 2026-01-19 03:00"]
    # odd days AND Mondays (the day field starts with '*')
    assert times("30 2 */2 * 1", 3) == ["Mon 2026-01-05 02:30", "Mon 2026-01-19 02:30", "Mon 2026-02-09 02:30"]
    assert times("0 22 31 * *", 3) == ["Sat 2026-01-31 22:00", "Tue 2026-03-31 22:00", "Sun 2026-05-31 22:00"]


def test_apscheduler_from_crontab_alone_would_fire_on_the_wrong_day():
    """Why the expression is translated: APScheduler 3 reads weekday 0 as Monday."""
    wrong = trigger_times(CronTrigger.from_crontab("0 3 * * 0", timezone=timezone.utc), 1)
    assert wrong[0].strftime("%a") == "Mon"
    assert trigger_times(CronExpression.parse("0 3 * * 0").trigger(timezone.utc), 1)[0].strftime("%a") == "Sun"


@pytest.mark.parametrize("text", EXPRESSIONS)
def test_apscheduler_trigger_fires_when_cron_would(text):
    cron = CronExpression.parse(text)
    assert trigger_times(cron.trigger(timezone.utc), 12) == cron_times(cron, 12)


@pytest.mark.parametrize("text, expected", [
    ("0 3 * * *", ["*-*-* 03:00:00"]),
    ("*/15 9-17 * * 1-5", ["Mon..Fri *-*-* 09..17:00/15:00"]),
    ("0 3 * * 0", ["Sun *-*-* 03:00:00"]),
    ("0 12 * * 5-7", ["Fri..Sun *-*-* 12:00:00"]),
    ("0 3 1 * mon", ["*-*-01 03:00:00", "Mon *-*-* 03:00:00"]),
    ("30 2 */2 * 1", ["Mon *-*-01/2 02:30:00"]),
    ("0 0 1-10/3 jan,jul *", ["*-01,07-01,04,07,10 00:00:00"]),
    ("@monthly", ["*-*-01 00:00:00"]),
])
def test_on_calendar_values(text, expected):
    assert CronExpression.parse(text).on_calendar() == expected


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
@pytest.mark.parametrize("text", EXPRESSIONS)
def test_systemd_fires_when_cron_would(text):
    cron = CronExpression.parse(text)
    assert systemd_times(cron.on_calendar(), 12) == cron_times(cron, 12)
