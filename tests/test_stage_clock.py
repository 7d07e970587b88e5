"""`distill reproduce` times a stage over every session that ran it (reproduce.StageClock)."""

import dataclasses
import json
import time

import pytest

from distill import experiments, reproduce
from distill.schema import CheckpointError

KEY = {"suite": "minatar", "budget": {"name": "full"}}


def test_stage_clock_sums_sessions_and_writes_while_running(tmp_path):
    with reproduce.StageClock(tmp_path, KEY, every=0.02) as clock:
        time.sleep(0.2)
        deadline = time.monotonic() + 10  # a loaded machine may run the thread late
        while json.loads((tmp_path / "clock.json").read_text())["wall_s"] < 0.1:
            assert time.monotonic() < deadline, "the clock's thread never rewrote clock.json"
            time.sleep(0.02)
        assert json.loads((tmp_path / "clock.json").read_text())["sessions"] == 1
    first = clock.totals()
    assert first["wall_s"] >= 0.2 and first["cpu_s"] >= 0.0
    assert json.loads((tmp_path / "clock.json").read_text()) == {**first, "key": KEY}
    # a second session (the first one killed and the stage resumed) starts from the first's total
    with reproduce.StageClock(tmp_path, KEY, every=0.02) as again:
        time.sleep(0.3)
    second = again.totals()
    assert second["sessions"] == 2
    assert second["wall_s"] >= first["wall_s"] + 0.2  # 0.3 s more, less two roundings to 0.1 s
    assert json.loads((tmp_path / "clock.json").read_text()) == {**second, "key": KEY}
    # the stage run again for another budget starts its clock from zero
    other = {**KEY, "budget": {"name": "quick"}}
    with reproduce.StageClock(tmp_path, other, every=0.02) as fresh:
        pass
    assert fresh.totals()["sessions"] == 1 and fresh.totals()["wall_s"] < first["wall_s"]


def test_a_clock_keyed_before_a_field_left_the_stage_still_counts(tmp_path):
    """A compression clock written while the stage's key still held `fixed_updates` (before it
    became a multi-task and online field only) is the same stage's clock today; a multi-task
    clock of another `fixed_updates`, or one of another field, is not."""
    budget = json.loads(json.dumps(dataclasses.asdict(experiments.budget("full"))))
    assert budget["fixed_updates"] is not None

    def before(stage: str, **changed) -> float:
        key = {"suite": "minatar", "budget": reproduce._stage_view(budget, stage)}
        then = {**key, "budget": {**key["budget"], "fixed_updates": 123, **changed}}
        clock = {"wall_s": 100.0, "cpu_s": 150.0, "sessions": 1, "key": then}
        (tmp_path / "clock.json").write_text(json.dumps(clock))
        return reproduce.StageClock(tmp_path, key, stage=stage).wall_before

    assert before("compression") == 100.0
    assert before("multitask") == 0.0
    assert before("compression", seeds=7) == 0.0
    # without a stage's name only the same key counts
    key = {"suite": "minatar", "budget": reproduce._stage_view(budget, "compression")}
    (tmp_path / "clock.json").write_text(
        json.dumps({"wall_s": 1.0, "cpu_s": 1.0, "sessions": 1, "key": {**key, "x": 1}})
    )
    assert reproduce.StageClock(tmp_path, key).wall_before == 0.0


@pytest.mark.parametrize(
    "text",
    [
        '{"wall_s": ',
        '{"wall_s": "nan", "cpu_s": 1.0, "sessions": 1}',
        '{"wall_s": -1.0, "cpu_s": 1.0, "sessions": 1}',
        '{"wall_s": 1.0, "cpu_s": 1.0, "sessions": 1.5}',
        '{"wall_s": 1.0, "sessions": 1}',
    ],
)
def test_stage_clock_refuses_a_damaged_file_by_name(tmp_path, text):
    (tmp_path / "clock.json").write_text(text)
    with pytest.raises(CheckpointError, match="clock.json"):
        reproduce.StageClock(tmp_path, KEY)


def test_report_shows_cpu_seconds_where_recorded():
    meta = {"stage_wall_s": {"teachers": 10.0, "losses": 100.0}, "stages": ["teachers", "losses"]}
    assert reproduce._cpu_note(meta) == ""  # an older results.json
    meta["stage_cpu_s"] = {"teachers": 15.0, "losses": 180.0}
    note = reproduce._cpu_note(meta)
    assert "teachers 15, losses 180; total 195" in note
