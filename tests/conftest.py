"""Test-wide settings: quiet TensorFlow, a CPU split into two logical devices (for MirroredStrategy)."""
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
os.environ.setdefault("MPLBACKEND", "Agg")

# The servers some tests start (tests/servers.py), defined here once so that one Postgres serves the session.
from tests.servers import postgres_server, postgres_url, remote_cache, s3_server  # noqa: E402,F401
