"""One writer per pipeline root: an inter-process file lock (`fasteners`) on `<root>/.lock`, or,
when the metadata store is Postgres, an advisory lock in that database (`AdvisoryLock`, below):
runs on several machines share one store, and a file lock on one machine's disk cannot stop them.

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

import hashlib
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


# ------------------------------------------------------------------------------ Postgres
ADVISORY_NAMESPACE = 0x636F6E71  # "conq": the first key of every run lock, so other users' locks never collide


def advisory_key(root_label: str) -> int:
    """The second key of the run lock on one root: 31 bits of sha256 of its path or URL."""
    return int.from_bytes(hashlib.sha256(root_label.encode()).digest()[:4], "big") & 0x7FFFFFFF


class AdvisoryLock:
    """The run lock when the metadata store is Postgres: a session advisory lock on (namespace, root).

    Postgres drops a session lock when its connection ends, however the holder ends (SIGKILL,
    a machine that loses power once its TCP connection times out), so like the file lock it can
    never be left behind. The holder names itself in `application_name`; a second run reads it
    from `pg_stat_activity` to say whom it waits for. The lock is per root: two pipelines sharing
    one store run at once; two runs of one root take turns.
    """

    def __init__(self, url: str, root_label: str, wait: bool = False, timeout: Optional[float] = None,
                 poll: float = 0.5):
        from pipeline import database

        self.url, self.root = url, root_label
        self.wait, self.timeout, self.poll = wait, timeout, poll
        self.key = advisory_key(root_label)
        self._engine = database.connect(url)
        self._connection = None

    def read_holder(self) -> Optional[dict]:
        from sqlalchemy import text

        with self._engine.connect() as db:
            row = db.execute(text(
                "SELECT a.application_name, a.client_hostname, a.client_addr, a.backend_start, a.pid "
                "FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid WHERE l.locktype = 'advisory' "
                "AND l.granted AND l.classid::bigint = :ns AND l.objid::bigint = :key AND l.objsubid = 2"),
                {"ns": ADVISORY_NAMESPACE, "key": self.key}).mappings().first()
        if row is None:
            return None
        holder = _parse_application_name(row["application_name"] or "")
        holder.setdefault("host", row["client_hostname"] or (str(row["client_addr"]) if row["client_addr"] else None))
        holder.setdefault("started", row["backend_start"].timestamp() if row["backend_start"] else None)
        holder["backend_pid"] = row["pid"]
        return holder

    def _try(self) -> bool:
        from sqlalchemy import text

        return bool(self._connection.execute(text("SELECT pg_try_advisory_lock(:ns, :key)"),
                                             {"ns": ADVISORY_NAMESPACE, "key": self.key}).scalar())

    def acquire(self) -> None:
        from pipeline import database
        from sqlalchemy import text

        database.reach(self._engine)
        self._connection = self._engine.connect()
        name = f"convpipe pid={os.getpid()} host={socket.gethostname()}"[:63]
        self._connection.execute(text("SELECT set_config('application_name', :name, false)"), {"name": name})
        self._connection.commit()
        try:
            if not self._try():
                if not self.wait:
                    raise LockHeld(self.root, self.read_holder())
                log.info("waiting for the lock on %s, held by %s", self.root, describe_holder(self.read_holder()))
                deadline = None if self.timeout is None else time.monotonic() + self.timeout
                while not self._try():
                    if deadline is not None and time.monotonic() > deadline:
                        raise LockHeld(self.root, self.read_holder())
                    time.sleep(self.poll)
            self._connection.commit()  # the lock is the session's, not the transaction's
        except BaseException:
            self._connection.close()
            self._connection = None
            raise

    def release(self) -> None:
        from sqlalchemy import text

        if self._connection is None:
            return
        try:
            self._connection.execute(text("SELECT pg_advisory_unlock(:ns, :key)"),
                                     {"ns": ADVISORY_NAMESPACE, "key": self.key})
            self._connection.commit()
        finally:
            self._connection.close()
            self._connection = None
            self._engine.dispose()

    def __enter__(self) -> "AdvisoryLock":
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def _parse_application_name(name: str) -> dict:
    """`convpipe pid=12 host=box` -> {"pid": 12, "host": "box"} (what AdvisoryLock.acquire writes)."""
    holder: dict = {}
    if not name.startswith("convpipe "):
        return holder
    for part in name.split()[1:]:
        key, _, value = part.partition("=")
        if key == "pid" and value.isdigit():
            holder["pid"] = int(value)
        elif key == "host" and value:
            holder["host"] = value
    return holder


def run_lock(root: Path | str, metadata_url: Optional[str] = None, root_label: Optional[str] = None,
             wait: bool = False, timeout: Optional[float] = None):
    """The lock a run of `root` takes: advisory in a Postgres store, else the file lock on the local root."""
    from pipeline import database

    if metadata_url and database.is_postgres(metadata_url):
        return AdvisoryLock(metadata_url, root_label or str(Path(root).resolve()), wait=wait, timeout=timeout)
    return RootLock(root, wait=wait, timeout=timeout)
