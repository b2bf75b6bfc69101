"""`convpipe schedule`: the pipeline on a cron schedule, unattended.

Every firing is `python -m convpipe.cli run ...` (the `convpipe` program, started as a process: the
framework imports no part of it) in a fresh process: the same code path as
`convpipe run` (lock, per-run log under `<root>/logs/`, cache, exit codes), and TensorFlow's state
never outlives a run. The exit code says what happened: 0 done, 75 another run holds the root (this
firing is skipped, not an error: the next one will find the work cached or do it), anything else a
failure whose details are in the run's log.

Three ways to host the schedule, all firing the same command:
    convpipe schedule --cron "0 3 * * *"                    a long-running service (APScheduler)
    convpipe schedule --cron "0 3 * * *" --print crontab    the equivalent crontab line
    convpipe schedule --cron "0 3 * * *" --print systemd    a systemd service + timer pair

The service keeps one firing at a time (`max_instances=1`), runs a firing that is late by up to
`--grace` seconds (after a suspend, or while the previous run was still going) once, however many
were missed (`coalesce=True`), and stops cleanly on SIGTERM or SIGINT: the running `convpipe run`
gets SIGTERM, records its execution FAILED (so the next firing resumes there) and the service
exits 0. The child runs in its own session, so a Ctrl-C in the terminal reaches it only once,
through the service.
"""
from __future__ import annotations

import logging
import os
import shlex
import signal
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Optional, Sequence

from pipeline.console import DEFAULT_CONFIG, EXIT_FAILED, EXIT_LOCKED, EXIT_OK, EXIT_USAGE, load
from pipeline.config import ConfigError
from pipeline.cron import CronExpression
from pipeline.filesystem import RemoteRoot, is_url

DEFAULT_GRACE_S = 3600
STOP_TIMEOUT_S = 120.0
SCHEDULE_LOG = "schedule.log"
CRON_LOG = "cron.log"
JOB_ID = "convpipe-run"

log = logging.getLogger("convpipe.schedule")


# ------------------------------------------------------------------------------ the command
def run_arguments(args, root: Path | str) -> list[str]:
    """`run` and its options, with the config and root as absolute paths (cron starts elsewhere); a
    remote root stays its URL, and --metadata goes along when given (else the config's is used)."""
    config = args.config or (DEFAULT_CONFIG if Path(DEFAULT_CONFIG).is_file() else None)
    arguments = ["run"]
    if config:
        arguments += ["--config", str(Path(config).resolve())]
    for assignment in args.set or []:
        arguments += ["--set", assignment]
    arguments += ["--root", str(root)]
    if getattr(args, "metadata", None):
        arguments += ["--metadata", args.metadata]
    if args.from_stage:
        arguments += ["--from", args.from_stage]
    if args.to_stage:
        arguments += ["--to", args.to_stage]
    return arguments


def convpipe_program() -> list[str]:
    """The `convpipe` script of this Python's environment (a venv's bin/), else `python -m convpipe.cli`."""
    script = Path(sys.executable).parent / "convpipe"    # not resolved: a venv's python is a symlink
    if script.is_file() and os.access(script, os.X_OK):
        return [str(script)]
    return [sys.executable, "-m", "convpipe.cli"]


def logs_dir(root: Path | str) -> Path:
    """Where the scheduler's own logs go: `<root>/logs`, or the local working copy's of a remote root
    (each run's log is copied to the bucket by the run itself)."""
    if is_url(root):
        return RemoteRoot(str(root)).local / "logs"
    return Path(root) / "logs"


def crontab_line(cron: CronExpression, arguments: Sequence[str], root: Path | str, workdir: Path) -> str:
    """One crontab line: cd to the project, the venv's convpipe, output appended to <root>/logs/cron.log."""
    logs = logs_dir(root)
    command = (f"cd {shlex.quote(str(workdir))} && mkdir -p {shlex.quote(str(logs))} && "
               f"{shlex.join([*convpipe_program(), *arguments])} >> {shlex.quote(str(logs / CRON_LOG))} 2>&1")
    command = command.replace("%", r"\%")     # cron turns an unescaped % into a newline
    return (f"# convpipe on {root} (the cron daemon's local time; exit 75: skipped, another run held the root)\n"
            f"{cron.text} {command}")


def systemd_units(cron: CronExpression, arguments: Sequence[str], root: Path | str, workdir: Path,
                  name: str = "convpipe") -> str:
    """A oneshot service running one firing, and a timer starting it on the cron schedule."""
    def escape(text: str) -> str:
        return text.replace("%", "%%")     # systemd expands %-specifiers in unit files

    exec_start = escape(shlex.join([*convpipe_program(), *arguments]))
    calendars = "\n".join(f"OnCalendar={line}" for line in cron.on_calendar())
    either = ("# cron fires on a day matching day-of-month OR day-of-week: one OnCalendar= for each\n"
              if cron.either_day else "")
    return f"""\
# ---- /etc/systemd/system/{name}.service (or ~/.config/systemd/user/ for `systemctl --user`)
[Unit]
Description=convpipe pipeline run on {escape(str(root))}

[Service]
Type=oneshot
WorkingDirectory={escape(str(workdir))}
ExecStart={exec_start}
# 75: another run holds the root's lock; this firing is skipped, not failed
SuccessExitStatus=75
# the run's own log: {logs_dir(root)}/run-<id>.log; its output: journalctl -u {name}

# ---- /etc/systemd/system/{name}.timer; then: systemctl daemon-reload && systemctl enable --now {name}.timer
[Unit]
Description=convpipe pipeline on "{escape(cron.text)}"

[Timer]
{either}{calendars}
# a firing missed while the machine was off runs once at the next boot
Persistent=true

[Install]
WantedBy=timers.target
"""


# ------------------------------------------------------------------------------ the service
def describe_exit(code: int) -> str:
    if code == EXIT_OK:
        return "finished"
    if code == EXIT_LOCKED:
        return "skipped: another run holds the root's lock"
    if code == EXIT_USAGE:
        return "did not start: invalid configuration or command line"
    if code in (130, 143):
        return "interrupted"
    if code < 0:
        return f"killed by {signal.Signals(-code).name}"
    return "failed"


class ScheduledRuns:
    """Fires `command` on `trigger`, one firing at a time, in a child process per firing."""

    def __init__(self, command: Sequence[str], trigger=None, *, grace: float = DEFAULT_GRACE_S,
                 logs: Optional[Path] = None, stop_timeout: float = STOP_TIMEOUT_S):
        self.command = list(command)
        self.trigger = trigger
        self.grace = grace
        self.logs = logs
        self.stop_timeout = stop_timeout
        self.firings: list[int] = []        # exit codes, in order
        self._child: Optional[subprocess.Popen] = None
        self._stopping = False
        self._idle = threading.Event()
        self._idle.set()
        self._scheduler = None

    # one firing
    def fire(self) -> Optional[int]:
        """Run the command once and log how it ended; None when the service is stopping."""
        self._idle.clear()
        try:
            if self._stopping:
                return None
            started = time.monotonic()
            log.info("firing: %s", shlex.join(self.command))
            child = subprocess.Popen(self.command, start_new_session=True)
            self._child = child
            if self._stopping:            # stop() ran between the check above and Popen
                child.terminate()
            code = child.wait()
            self._child = None
            self.firings.append(code)
            where = f"; see {self.logs}" if self.logs and code not in (EXIT_OK, EXIT_LOCKED) else ""
            level = logging.INFO if code in (EXIT_OK, EXIT_LOCKED) or self._stopping else logging.ERROR
            log.log(level, "run %s (exit %d) after %.1f s%s", describe_exit(code), code,
                    time.monotonic() - started, where)
            if self.trigger is not None and not self._stopping:
                log.info("next run at %s", self.next_run())
            return code
        finally:
            self._idle.set()

    def next_run(self) -> Optional[datetime]:
        now = datetime.now(self.trigger.timezone) if hasattr(self.trigger, "timezone") else datetime.now().astimezone()
        return self.trigger.get_next_fire_time(None, now)

    # the service
    def serve(self, run_now: bool = False) -> int:
        """Fire on the trigger until SIGTERM or SIGINT (or `stop()`); 0 after a clean stop."""
        from apscheduler.events import EVENT_JOB_MAX_INSTANCES, EVENT_JOB_MISSED
        from apscheduler.schedulers.blocking import BlockingScheduler

        scheduler = BlockingScheduler()
        self._scheduler = scheduler
        scheduler.add_listener(self._on_event, EVENT_JOB_MISSED | EVENT_JOB_MAX_INSTANCES)
        extra = {"next_run_time": datetime.now().astimezone()} if run_now else {}
        scheduler.add_job(self.fire, self.trigger, id=JOB_ID, name="convpipe run", max_instances=1,
                          coalesce=True, misfire_grace_time=int(self.grace), **extra)
        log.info("scheduled: %s; next run at %s", shlex.join(self.command),
                 "now" if run_now else self.next_run())
        with self._signals_stop():
            if not self._stopping:
                scheduler.start()
        self._finish_running_firing()
        log.info("stopped")
        return EXIT_OK

    def stop(self, signum: Optional[int] = None) -> None:
        """Stop firing; a running firing gets SIGTERM (it records its execution FAILED and exits 143)."""
        if signum is not None:
            log.info("%s: stopping", signal.Signals(signum).name)
        self._stopping = True
        child = self._child
        if child is not None and child.poll() is None:
            log.info("sending SIGTERM to the running firing (pid %d)", child.pid)
            child.terminate()
        scheduler = self._scheduler
        if scheduler is not None and scheduler.running:
            scheduler.shutdown(wait=False)

    def _finish_running_firing(self) -> None:
        if self._idle.wait(self.stop_timeout):
            return
        child = self._child
        if child is not None and child.poll() is None:
            log.error("the running firing (pid %d) did not stop within %.0f s of SIGTERM; killing it",
                      child.pid, self.stop_timeout)
            child.kill()
        self._idle.wait(10.0)

    @contextmanager
    def _signals_stop(self):
        """SIGTERM and SIGINT call stop() (only the main thread can set handlers)."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        handler = lambda signum, frame: self.stop(signum)    # noqa: E731
        previous = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGINT)}
        try:
            yield
        finally:
            for s, old in previous.items():
                signal.signal(s, old)

    def _on_event(self, event) -> None:
        from apscheduler.events import EVENT_JOB_MISSED

        when = event.scheduled_run_time.isoformat(sep=" ", timespec="seconds")
        if event.code == EVENT_JOB_MISSED:
            log.warning("missed the run due at %s (more than %ds late, --grace)", when, int(self.grace))
        else:
            log.warning("skipped the run due at %s: the previous run is still going", when)


# ---------------------------------------------------------------------------------- command
@contextmanager
def _logging_to(logs: Optional[Path]):
    """Our lines on stderr, and in <root>/logs/schedule.log when serving or firing."""
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if logs is not None:
        logs.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(logs / SCHEDULE_LOG))
    for handler in handlers:
        handler.setFormatter(logging.Formatter("%(asctime)s %(name)s: %(message)s", "%Y-%m-%d %H:%M:%S"))
        log.addHandler(handler)
    previous, log.propagate = log.level, False
    log.setLevel(logging.INFO)
    try:
        yield
    finally:
        for handler in handlers:
            log.removeHandler(handler)
            handler.close()
        log.setLevel(previous)
        log.propagate = True


def cmd_schedule(args) -> int:
    if args.cron is None and not args.once:
        raise ConfigError("convpipe schedule: --cron is required (except with --once), e.g. --cron \"0 3 * * *\"")
    if args.once and args.print:
        raise ConfigError("convpipe schedule: --once and --print do not go together")
    if not args.grace >= 1:
        raise ConfigError(f"convpipe schedule: --grace: expected a number of seconds >= 1, got {args.grace:g}")
    cron = CronExpression.parse(args.cron) if args.cron is not None else None
    root_text = load(args).pipeline.root                 # validates the config before anything is scheduled
    root = root_text if is_url(root_text) else Path(root_text).resolve()
    arguments = run_arguments(args, root)
    workdir = Path.cwd()
    if args.print == "crontab":
        print(crontab_line(cron, arguments, root, workdir))
        return EXIT_OK
    if args.print == "systemd":
        print(systemd_units(cron, arguments, root, workdir), end="")
        return EXIT_OK

    command = [sys.executable, "-m", "convpipe.cli", *arguments]
    logs = logs_dir(root)
    with _logging_to(logs):
        service = ScheduledRuns(command, cron.trigger() if cron else None, grace=args.grace, logs=logs)
        if args.once:
            with service._signals_stop():
                code = service.fire()
            if code is None:
                return EXIT_FAILED
            return 128 - code if code < 0 else code     # killed by a signal: 128 + its number, as shells do
        return service.serve(run_now=args.now)
