"""One writer per pipeline root: an inter-process file lock (`fasteners`) on `<root>/.lock`.

The holder writes who it is (pid, host, start time, command line) to `<root>/.lock.holder` after
taking the lock, so a second run can say whom it is waiting for. The lock itself is the kernel's
(`fcntl.lockf`): it is released when the holder exits, however it exits, so a SIGKILLed run never
leaves the root locked. A stale holder file is harmless: it is only read while the lock is held,
and its pid is checked against the living processes.

POSIX record locks belong to a process, not to a file handle: a second lock on the same root in
the same process would succeed, and releasing it would drop the first. `RootLock` therefore also
refuses a root that this process already holds.
"""
from __future__ import annotations

import json
import logging
import os
import socket
import sys
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Optional

import fasteners

LOCK_FILE = ".lock"
HOLDER_FILE = ".lock.holder"

_held_in_this_process: set[Path] = set()
_guard = threading.Lock()
log = logging.getLogger("convpipe.lock")


class LockHeld(RuntimeError):
    """Another process (or this one) holds the root; `holder` says who, as far as is known."""

    def __init__(self, root: Path, holder: Optional[dict]):
        self.root = root
        self.holder = holder or {}
        super().__init__(f"another convpipe run holds the lock on {root}: {describe_holder(holder)}; "
                         "rerun with --wait to wait for it")


def describe_holder(holder: Optional[dict]) -> str:
    if not holder or "pid" not in holder:
        return "holder unknown (it has not yet written its pid)"
    text = f"pid {holder['pid']}"
    if holder.get("host"):
        text += f" on {holder['host']}"
    if holder.get("started"):
        text += f", since {datetime.fromtimestamp(holder['started']).isoformat(sep=' ', timespec='seconds')}"
    if holder.get("argv"):
        text += f" ({' '.join(holder['argv'])})"
    return text


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class RootLock:
    """`with RootLock(root, wait=False):` holds the root or raises `LockHeld` at once."""

    def __init__(self, root: Path | str, wait: bool = False, timeout: Optional[float] = None):
        self.root = Path(root).resolve()
        self.wait = wait
        self.timeout = timeout
        self._lock = fasteners.InterProcessLock(str(self.root / LOCK_FILE))

    @property
    def holder_path(self) -> Path:
        return self.root / HOLDER_FILE

    def read_holder(self) -> Optional[dict]:
        """The holder's record, retried briefly: the holder writes it just after taking the lock."""
        for _ in range(20):
            try:
                holder = json.loads(self.holder_path.read_text())
                if holder.get("host") != socket.gethostname() or _alive(int(holder["pid"])):
                    return holder
            except (OSError, ValueError, KeyError):
                pass
            time.sleep(0.05)
        return None

    def acquire(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        with _guard:
            if self.root in _held_in_this_process:
                raise LockHeld(self.root, {"pid": os.getpid(), "host": socket.gethostname(),
                                           "argv": ["(this process)"]})
            _held_in_this_process.add(self.root)
        try:
            if not self._lock.acquire(blocking=False):
                if not self.wait:
                    raise LockHeld(self.root, self.read_holder())
                log.info("waiting for the lock on %s, held by %s", self.root, describe_holder(self.read_holder()))
                if not self._lock.acquire(blocking=True, max_delay=1.0, timeout=self.timeout):
                    raise LockHeld(self.root, self.read_holder())
        except BaseException:
            with _guard:
                _held_in_this_process.discard(self.root)
            raise
        record = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time(),
                  "argv": [Path(sys.argv[0]).name, *sys.argv[1:]]}
        tmp = self.holder_path.with_name(f"{HOLDER_FILE}.{os.getpid()}")
        tmp.write_text(json.dumps(record))
        os.replace(tmp, self.holder_path)

    def release(self) -> None:
        try:
            self.holder_path.unlink(missing_ok=True)
        finally:
            self._lock.release()
            with _guard:
                _held_in_this_process.discard(self.root)

    def __enter__(self) -> "RootLock":
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()
