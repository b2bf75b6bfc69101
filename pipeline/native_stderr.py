"""TensorFlow's start-up notices at most once per command, everything else on stderr untouched.

TensorFlow 2.21 writes its loading notices from C++ straight to file descriptor 2, before
absl::InitializeLog and so regardless of TF_CPP_MIN_LOG_LEVEL ("oneDNN custom operations are
on", "Could not find cuda drivers", "failed call to cuInit", ...), and writes them again for
every library that loads its own copy of the runtime and every child process (Beam workers, the
export checks): a run printed them four to six times. While a command runs, `once()` points fd 2
at a pipe and a thread copies it to the real stderr line by line, dropping a known notice it has
already passed (all of them with `quiet`); any other line, a real warning or error included, is
passed on as it comes. Python's own `sys.stderr` (our log lines, progress bars) is pointed at the
real stderr directly, so it never waits on the thread.

Only when stderr is the process's own (not a test's capture) and has a file descriptor.
"""
from __future__ import annotations

import io
import os
import re
import sys
import threading
from contextlib import contextmanager

NOTICES = {
    "absl preamble": re.compile(r"WARNING: All log messages before absl::InitializeLog\(\) is called"),
    "oneDNN on": re.compile(r"oneDNN custom operations are on"),
    "no CUDA drivers": re.compile(r"Could not find cuda drivers on your machine"),
    "cuInit": re.compile(r"failed call to cuInit"),
    "CUDA factories": re.compile(r"Unable to register cu(DNN|FFT|BLAS) factory"),
    "computation placer": re.compile(r"computation placer already registered"),
    "CPU instructions": re.compile(r"This TensorFlow binary is optimized to use available CPU instructions|"
                                   r"To enable the following instructions: .* rebuild TensorFlow"),
    "TF-TRT": re.compile(r"TF-TRT Warning: Could not find TensorRT"),
    "oneDNN int64": re.compile(r"oneDNN supports DT_INT64 only on platforms with AVX-512"),
    "XNNPACK": re.compile(r"Created TensorFlow Lite XNNPACK delegate for CPU"),
}
"""Lines TensorFlow prints at start-up on every machine, each shown once (none when quiet)."""


class LineFilter:
    """Decides, line by line, what reaches the terminal."""

    def __init__(self, quiet: bool = False):
        self.quiet = quiet
        self.seen: set[str] = set()

    def keep(self, line: str) -> bool:
        for name, pattern in NOTICES.items():
            if pattern.search(line):
                if self.quiet or name in self.seen:
                    return False
                self.seen.add(name)
                return True
        return True


def _usable() -> bool:
    if sys.stderr is not sys.__stderr__ or sys.__stderr__ is None:
        return False  # a test's capture, or no stderr at all
    try:
        return sys.stderr.fileno() == 2
    except (AttributeError, ValueError, io.UnsupportedOperation):
        return False


@contextmanager
def once(quiet: bool = False, enabled: bool = True):
    """For the duration of a command: known start-up notices once (never when `quiet`)."""
    if not enabled or not _usable():
        yield
        return
    sys.stderr.flush()
    real = os.dup(2)
    read_end, write_end = os.pipe()
    os.dup2(write_end, 2)
    os.close(write_end)
    previous = sys.stderr
    # Line-buffered: a line of ours reaches the terminal in one write, never split by a copied one.
    sys.stderr = open(os.dup(real), "w", buffering=1, encoding=previous.encoding, errors="backslashreplace")
    line_filter = LineFilter(quiet)

    def copy():
        with os.fdopen(read_end, "rb") as source:
            for raw in source:
                if line_filter.keep(raw.decode("utf-8", "replace")):
                    os.write(real, raw)

    thread = threading.Thread(target=copy, name="native-stderr", daemon=True)
    thread.start()
    try:
        yield
    finally:
        os.dup2(real, 2)  # the pipe's last writer in this process goes: the thread reads to its end
        thread.join(timeout=5)
        ours, sys.stderr = sys.stderr, previous
        ours.close()
        os.close(real)
