import os
import sys
from pathlib import Path

import pytest

from pipeline.config import load_config
from tests.pipeline import fake_stages

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def _reset_fakes(monkeypatch):
    fake_stages.CALLS.clear()
    fake_stages.FAIL.clear()
    for name in ("FAKE_FAIL", "FAKE_CALLS", "FAKE_BLOCK"):
        monkeypatch.delenv(name, raising=False)
    yield


@pytest.fixture
def make_config():
    def make(*overrides):
        return load_config(None, ["ingest.source.num_examples=5", *overrides])
    return make


@pytest.fixture
def subprocess_env():
    """Environment for a child Python that imports the project and the tests from this checkout."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env["CONVPIPE_PROGRESS"] = "plain"
    return env


PYTHON = sys.executable
