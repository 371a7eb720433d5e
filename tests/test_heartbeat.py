"""The job's heartbeat: a line whenever the console has been quiet for a while, saying what the job is doing."""

from __future__ import annotations

import logging
import sys
import time

import pytest

from llenergymeasure import heartbeat
from llenergymeasure.heartbeat import Heartbeat
from llenergymeasure.jobs import logging_to


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def test_a_line_only_after_the_quiet_span_naming_phase_time_and_detail():
    clock = Clock()
    beat = Heartbeat("exp cycle 2", print, quiet_s=8, clock=clock)
    beat.phase("thermal gap", total_s=30)
    clock.t += 7.9
    assert beat.due_line() is None  # the console showed something 7.9 s ago
    clock.t += 0.2
    assert beat.due_line() == "exp cycle 2: thermal gap, 8 s so far of 30 s"
    beat.saw_line()  # any line on the console, the heartbeat's own included, restarts the quiet span
    assert beat.due_line() is None
    beat.phase("measuring (window open)")
    beat.detail("12/32 prompts")
    clock.t += 12
    assert beat.due_line() == "exp cycle 2: measuring (window open), 12 s so far; 12/32 prompts"
    beat.phase("closing the engine")  # a new phase clears the detail
    clock.t += 9
    assert beat.due_line() == "exp cycle 2: closing the engine, 9 s so far"


def test_phase_and_detail_reach_only_a_running_heartbeat():
    lines: list[str] = []
    heartbeat.phase("nobody listens")  # no heartbeat runs: nothing happens
    with Heartbeat("job", lines.append, quiet_s=0.05, tick_s=0.01) as beat:
        heartbeat.phase("loading prompts and model m")
        heartbeat.detail("halfway")
        deadline = time.monotonic() + 10
        while not lines and time.monotonic() < deadline:
            time.sleep(0.01)
    assert lines and lines[0].startswith("job: loading prompts and model m, ") and lines[0].endswith("; halfway")
    assert heartbeat._active is None and not beat._thread.is_alive()
    heartbeat.phase("after the job")  # ignored again
    assert beat._phase == "loading prompts and model m"


@pytest.mark.parametrize("verbosity, beats", [("normal", True), ("verbose", True), ("quiet", False)])
def test_a_job_console_gets_heartbeat_lines_unless_quiet(tmp_path, monkeypatch, capsys, verbosity, beats):
    monkeypatch.setattr(heartbeat, "QUIET_S", 0.1)
    monkeypatch.setattr(sys, "stderr", sys.stderr)  # the console handler writes to the captured stderr
    log = tmp_path / "job.log"
    with logging_to(str(log), verbosity, label="exp cycle 1"):
        logging.getLogger("llenergymeasure.progress").info("exp cycle 1: loading prompts and model m")
        heartbeat.phase("loading prompts and model m")
        time.sleep(1.0)
    err = capsys.readouterr().err
    shown = [x for x in err.splitlines() if x.startswith("exp cycle 1: loading prompts and model m, ")]
    assert bool(shown) == beats, err
    if beats:  # and the log keeps them, with their time
        assert "exp cycle 1: loading prompts and model m, " in log.read_text()


def test_a_measurement_job_console_names_the_job_on_every_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(sys, "stderr", sys.stderr)
    say = logging.getLogger("llenergymeasure.progress")
    with logging_to(str(tmp_path / "job.log"), "normal", label="exp cycle 1", labelled=True):
        say.info("warm-up: one untimed pass")  # shared code that does not know the job
        say.info("exp cycle 1: measuring (window open)")  # already names it
    assert capsys.readouterr().err.splitlines() == [
        "exp cycle 1: warm-up: one untimed pass",
        "exp cycle 1: measuring (window open)",
    ]
    assert "INFO llenergymeasure.progress: warm-up: one untimed pass" in (tmp_path / "job.log").read_text()
