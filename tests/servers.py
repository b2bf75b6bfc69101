"""Real servers for the tests, started from packages in setup.py's test extras (no Docker, no network).

    postgres_server   one Postgres (pgserver ships the binaries) for the session; `postgres_url`
                      gives each test a database of its own on it
    s3_server         moto in server mode, in a child process on a free port: a real HTTP S3
                      endpoint that a test may kill and restart (`S3Server.kill`, `.start`)

A server that cannot start skips the tests that need it, and says why on stderr as well as in the
skip reason, so a CI log never hides that they did not run.
"""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

S3_ENV = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}


def _skip(what: str, exc: BaseException) -> None:
    reason = f"{what} could not start: {type(exc).__name__}: {exc}"
    print(f"\nSKIPPING: {reason}", file=sys.stderr)
    pytest.skip(reason)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ------------------------------------------------------------------------------- Postgres
@pytest.fixture(scope="session")
def postgres_server(tmp_path_factory):
    """A Postgres server for the session; its URL (sqlalchemy form, no database) and the handle."""
    try:
        import pgserver
        server = pgserver.get_server(str(tmp_path_factory.mktemp("pgdata")), cleanup_mode="stop")
        server.psql("SELECT 1;")
    except Exception as exc:
        _skip("Postgres (pgserver)", exc)
    uri = server.get_uri()  # postgresql://postgres:@/postgres?host=<socket dir>
    yield server, uri.replace("postgresql://", "postgresql+psycopg://", 1)
    server.cleanup()


@pytest.fixture
def postgres_url(postgres_server):
    """A fresh, empty database on the session's server, as a `postgresql+psycopg://` URL."""
    server, base = postgres_server
    name = f"t_{uuid.uuid4().hex[:12]}"
    server.psql(f"CREATE DATABASE {name};")
    return base.replace("/postgres?", f"/{name}?", 1)


# ------------------------------------------------------------------------------------- S3
class S3Server:
    """`moto_server` on 127.0.0.1:<port> in a child process; its state lives in that process."""

    def __init__(self, port: int):
        self.port = port
        self.endpoint = f"http://127.0.0.1:{port}"
        self.process = None

    def start(self, timeout: float = 30.0) -> None:
        self.process = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return
            except OSError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"moto_server on port {self.port} did not come up "
                                       f"(exit code {self.process.poll()})")
                time.sleep(0.1)

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def make_bucket(self, name: str) -> None:
        import boto3
        boto3.client("s3", endpoint_url=self.endpoint, **_boto_credentials()).create_bucket(Bucket=name)

    def env(self) -> dict:
        """What a process needs to reach this server: the standard AWS variables only."""
        return {**S3_ENV, "AWS_ENDPOINT_URL": self.endpoint}


def _boto_credentials() -> dict:
    return {"aws_access_key_id": S3_ENV["AWS_ACCESS_KEY_ID"], "aws_secret_access_key": S3_ENV["AWS_SECRET_ACCESS_KEY"],
            "region_name": S3_ENV["AWS_DEFAULT_REGION"]}


@pytest.fixture
def s3_server(monkeypatch):
    """A moto S3 server for one test (so a test may kill it), with the AWS variables pointing at it."""
    server = S3Server(free_port())
    try:
        import moto.server  # noqa: F401  (moto[server] in the test extras)
        server.start()
    except Exception as exc:
        _skip("the S3 server (moto_server)", exc)
    for key, value in server.env().items():
        monkeypatch.setenv(key, value)
    try:
        import s3fs
        s3fs.S3FileSystem.clear_instance_cache()  # an instance cached for an earlier server's port
    except ImportError:
        pass
    yield server
    server.kill()


@pytest.fixture
def remote_cache(tmp_path, monkeypatch) -> Path:
    """The local working copies of remote roots, per test (CONVPIPE_CACHE)."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("CONVPIPE_CACHE", str(cache))
    return cache
