"""`distill reproduce` times a stage over every session that ran it (reproduce.StageClock)."""

import json
import time

import pytest

from distill import reproduce
from distill.schema import CheckpointError


def test_stage_clock_sums_sessions_and_writes_while_running(tmp_path):
    with reproduce.StageClock(tmp_path, every=0.02) as clock:
        time.sleep(0.1)
        running = json.loads((tmp_path / "clock.json").read_text())
        assert 0.0 <= running["wall_s"] < 5.0 and running["sessions"] == 1  # written meanwhile
    first = clock.totals()
    assert first["wall_s"] >= 0.1 and first["cpu_s"] >= 0.0
    # a second session (the first one killed and the stage resumed) starts from the first's total
    with reproduce.StageClock(tmp_path, every=0.02) as again:
        time.sleep(0.3)
    second = again.totals()
    assert second["sessions"] == 2
    assert second["wall_s"] >= first["wall_s"] + 0.2  # 0.3 s more, less two roundings to 0.1 s
    assert json.loads((tmp_path / "clock.json").read_text()) == second


def test_stage_clock_refuses_a_damaged_file_by_name(tmp_path):
    (tmp_path / "clock.json").write_text('{"wall_s": ')
    with pytest.raises(CheckpointError, match="clock.json"):
        reproduce.StageClock(tmp_path)


def test_report_shows_cpu_seconds_where_recorded():
    meta = {"stage_wall_s": {"teachers": 10.0, "losses": 100.0}, "stages": ["teachers", "losses"]}
    assert reproduce._cpu_note(meta) == ""  # an older results.json
    meta["stage_cpu_s"] = {"teachers": 15.0, "losses": 180.0}
    note = reproduce._cpu_note(meta)
    assert "teachers 15, losses 180; total 195" in note
