"""benchmarks/beam_remote_writes keeps running: its figures' shape at --tiny (never its speed)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

PROJECT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_beam_remote_writes_runs_at_tiny_size_and_every_side_writes_the_same_examples(tmp_path):
    out = tmp_path / "figures.json"
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="")
    process = subprocess.run([sys.executable, "-m", "benchmarks", "--tiny", "--only", "beam_remote_writes",
                              "--json", str(out)], cwd=PROJECT, env=env, capture_output=True, text=True, timeout=600)
    assert process.returncode == 0, process.stdout[-3000:] + process.stderr[-3000:]
    document = json.loads(out.read_text())
    assert document["failed"] == {}, document["failed"]
    result = document["benchmarks"]["beam_remote_writes"]
    figures, ratios = result["figures"], result["ratios"]
    for side in ("local", "upload", "workers_write"):
        assert figures[f"{side}_seconds"]["value"] > 0 and len(result["samples"][side]) == result["settings"]["rounds"]
    assert ratios["workers_write_vs_upload"]["value"] == pytest.approx(
        figures["workers_write_seconds"]["value"] / figures["upload_seconds"]["value"], rel=2e-3)
    assert any("every side wrote the same Examples fingerprints" in note for note in result["notes"])
