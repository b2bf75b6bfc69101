"""What every `convpipe` command shares: exit codes, the config a command line names, console logging
and SIGTERM handling. The CLI (convpipe/cli.py) and the scheduler (pipeline/schedule.py) both
use it, so neither imports the other.

Exit codes (documented for cron and schedulers):
    0   success
    1   a stage failed, or the run could not go on (the error is printed and recorded)
    2   invalid configuration or command line (nothing ran)
    75  another run holds the root's lock (EX_TEMPFAIL: try again later, or pass --wait)
    130 / 143  interrupted by SIGINT / SIGTERM (the running execution is recorded FAILED)
"""
from __future__ import annotations

import json
import logging
import signal
import sys
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Optional

from pipeline.config import PipelineConfig, load_config
from pipeline.runner import Interrupted

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_LOCKED = 0, 1, 2, 75
EXIT_SIGINT, EXIT_SIGTERM = 130, 143
DEFAULT_CONFIG = "pipeline_config.json"


def config_path(args) -> Optional[str]:
    if getattr(args, "config", None):
        return args.config
    return DEFAULT_CONFIG if Path(DEFAULT_CONFIG).is_file() else None


def load(args) -> PipelineConfig:
    """The config named by --config (or the default) with --set overrides and --root applied."""
    config = load_config(config_path(args), getattr(args, "set", None) or [])
    if getattr(args, "root", None):
        config.pipeline.root = args.root
    if getattr(args, "metadata", None):
        config.pipeline.metadata = args.metadata
    return config


def root_of(args):
    """The root named by --root or the config: a Path, or the URL string of a remote root."""
    from pipeline.filesystem import is_url
    text = args.root or load(args).pipeline.root
    return text if is_url(text) else Path(text)


def print_json(value) -> None:
    print(json.dumps(value, indent=2, default=str))


@contextmanager
def console_logging(verbose: bool, quiet: bool = False):
    """Our log lines (and others' warnings) on stderr, for the duration of one command: DEBUG and
    up with --verbose, WARNING and up with --quiet, else INFO (the run's log file keeps INFO)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s: %(message)s", "%H:%M:%S"))
    level = logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO
    handler.addFilter(lambda r: r.name.startswith("convpipe") or r.levelno >= logging.WARNING)
    handler.setLevel(level)
    convpipe = logging.getLogger("convpipe")
    previous = convpipe.level
    logging.getLogger().addHandler(handler)
    convpipe.setLevel(level)
    try:
        yield
    finally:
        logging.getLogger().removeHandler(handler)
        convpipe.setLevel(previous)


def raise_interrupted(signum, frame):
    raise Interrupted(f"signal {signal.Signals(signum).name}")


@contextmanager
def sigterm_interrupts():
    """SIGTERM raises Interrupted, so the running execution is recorded FAILED and its temporaries go.

    Only the main thread can set handlers; elsewhere (a scheduler's worker thread) nothing changes.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, raise_interrupted)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
