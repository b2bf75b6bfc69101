"""What a run prints: the per-step bar (images/s, ETA) only on a terminal, --quiet and --verbose,
and TensorFlow's native start-up notices at most once while real warnings still pass."""
import io
import subprocess
import sys

import pytest

from convpipe import cli
from pipeline.native_stderr import LineFilter
from pipeline.progress import StepBar, use_live_display
from tests.pipeline.conftest import REPO
from tests.pipeline.fake_stages import STAGES


class Terminal(io.StringIO):
    def isatty(self):
        return True


def test_the_step_bar_shows_loss_images_per_second_and_the_eta():
    stream = Terminal()
    bar = StepBar(steps_per_epoch=4, epochs=2, live=True, stream=stream, mininterval=0)
    for step in range(1, 5):
        bar.step(1, step, 32, 0.5)
    bar.close()
    drawn = stream.getvalue()
    assert "epoch 1/2" in drawn and "4/4" in drawn and "images/s" in drawn and "training ETA" in drawn


def test_no_bar_without_a_terminal(monkeypatch, capsys):
    monkeypatch.delenv("CONVPIPE_PROGRESS", raising=False)
    assert not use_live_display()  # pytest's captured stdout is no terminal
    bar = StepBar(steps_per_epoch=2, epochs=1)
    bar.step(1, 1, 8, 1.0)
    bar.close()
    assert capsys.readouterr() == ("", "")
    monkeypatch.setenv("CONVPIPE_PROGRESS", "live")
    assert use_live_display()


def test_quiet_keeps_the_outcome_lines_and_drops_info(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert cli.main(["run", "--root", "r", "--quiet"], stages=STAGES) == 0
    out, err = capsys.readouterr()
    assert "run 1 COMPLETE" in out and "convpipe.runner" not in err
    with pytest.raises(SystemExit):
        cli.main(["run", "--quiet", "--verbose"], stages=STAGES)
    assert "not allowed with argument" in capsys.readouterr().err


def test_each_start_up_notice_passes_once():
    notices = LineFilter()
    line = "I0000 00:00:1796586186.548533   32672 port.cc:153] oneDNN custom operations are on. You may see ..."
    assert notices.keep(line) and not notices.keep(line.replace("32672", "40001"))
    assert notices.keep("W0000 something.cc:12] a warning that matters") and notices.keep("a warning that matters")
    assert not LineFilter(quiet=True).keep(line)


NATIVE = """
import os, sys
from pipeline import native_stderr
cuinit = b"E0000 00:00:1.2 7 cuda_platform.cc:52] failed call to cuInit: INTERNAL: CUDA error\\n"
with native_stderr.once(quiet={quiet}):
    for _ in range(3):
        os.write(2, b"WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\\n")
        os.write(2, cuinit)
    os.write(2, b"W0000 00:00:1.3 7 loader.cc:9] a warning that matters\\n")
    print("python's own stderr", file=sys.stderr)
"""


@pytest.mark.parametrize("quiet", [False, True])
def test_native_notices_at_most_once_in_a_real_process(quiet):
    process = subprocess.run([sys.executable, "-c", NATIVE.format(quiet=quiet)], capture_output=True, text=True,
                             cwd=REPO, timeout=60)
    assert process.returncode == 0, process.stderr
    lines = process.stderr.splitlines()
    assert lines.count("W0000 00:00:1.3 7 loader.cc:9] a warning that matters") == 1
    assert "python's own stderr" in lines
    assert sum("failed call to cuInit" in line for line in lines) == (0 if quiet else 1)
    assert sum("absl::InitializeLog" in line for line in lines) == (0 if quiet else 1)
