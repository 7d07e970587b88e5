"""TensorBoard logs: the event-file encoding against the format's references, the job runner's
hook, and a student run whose event files read back into its metrics."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest
from test_jobs import Counter

from distill import cli, jobs, tb

TEACHER = "data/teachers/Breakout-MinAtar"


def test_crc32c_matches_the_reference_check_value():
    assert tb.crc32c(b"123456789") == 0xE3069283  # the CRC catalogue's check value for CRC-32C
    assert tb.crc32c(b"") == 0


def test_a_record_is_length_crc_data_crc():
    data = b"hello"
    rec = tb.record(data)
    assert len(rec) == 8 + 4 + len(data) + 4
    assert struct.unpack("<Q", rec[:8])[0] == len(data) and rec[12:17] == data
    assert list(tb.records(rec + tb.record(b""))) == [data, b""]


def test_scalars_read_back_and_non_finite_ones_are_left_out(tmp_path):
    with tb.EventWriter(tmp_path) as w:
        w.scalars({"charts/a": 1.5, "losses/b": float("nan")}, step=3)
        w.scalars({"charts/a": -2.25}, step=1 << 40)
    assert tb.read_scalars(tmp_path) == {"charts/a": [(3, 1.5), (1 << 40, -2.25)]}
    (path,) = tmp_path.glob("events.out.tfevents.*")
    first = tb.parse_message(next(tb.records(path.read_bytes())))
    assert first[3] == [tb.FILE_VERSION]


def test_a_damaged_event_file_is_refused(tmp_path):
    with tb.EventWriter(tmp_path) as w:
        w.scalars({"x": 1.0}, 0)
    (path,) = tmp_path.glob("events.out.tfevents.*")
    blob = bytearray(path.read_bytes())
    blob[-6] ^= 0xFF
    path.write_bytes(bytes(blob))
    with pytest.raises(ValueError, match="bad data CRC"):
        tb.read_scalars(tmp_path)
    path.write_bytes(bytes(blob[:-3]))
    with pytest.raises(ValueError, match="cut"):
        tb.read_scalars(tmp_path)


@pytest.mark.parametrize(
    "kind, row, expected",
    [
        (
            "teacher",
            {"env_steps": 800, "episodes": 3, "mean_return": 2.5, "loss": 0.1, "epsilon": 0.5},
            {
                "charts/episodes": 3.0,
                "charts/episodic_return": 2.5,
                "losses/td_loss": 0.1,
                "charts/epsilon": 0.5,
            },
        ),
        (
            "student",
            {"updates": 20, "loss": 0.3, "agreement": 0.75, "score": 4.0, "wall_s": 1.0},
            {"losses/distill_loss": 0.3, "charts/agreement": 0.75, "charts/episodic_return": 4.0},
        ),
        (
            "dataset",
            {"shard": "x", "states": 64, "episodes": 2, "episode_steps": 50, "t_counts": [1, 2]},
            {"charts/episodes": 2.0, "charts/mean_episode_length": 25.0},
        ),
        (
            "multitask-dqn",
            {"iteration": 5, "loss": 0.2, "return Breakout-MinAtar": 1.0},
            {"losses/td_loss": 0.2, "charts/episodic_return/Breakout-MinAtar": 1.0},
        ),
    ],
)
def test_metric_rows_get_cleanrl_names(kind, row, expected):
    assert tb.row_scalars(row, kind) == expected


def test_the_runner_logs_every_row_with_its_steps_per_second(tmp_path):
    jobs.run(Counter(), tmp_path / "c", progress=False)
    logged = tb.read_scalars(tmp_path / "c" / tb.FOLDER)
    assert logged["charts/x"] == [(3, 4.5), (6, 9.0), (9, 13.5), (10, 15.0)]
    assert [s for s, _ in logged["charts/SPS"]] == [3, 6, 9, 10]
    assert all(v > 0 for _, v in logged["charts/SPS"])


def test_no_tb_and_in_memory_runs_write_no_logs(tmp_path, monkeypatch):
    jobs.run(Counter(), tmp_path / "c", progress=False, tb=False)
    assert not (tmp_path / "c" / tb.FOLDER).exists()
    monkeypatch.chdir(tmp_path)
    jobs.run(Counter(), None, progress=False)
    assert not (tmp_path / tb.FOLDER).exists()


def test_no_tb_is_an_option_of_every_long_job():
    parser = cli.build_parser()
    for argv in (
        ["teacher", "--env", "Breakout-MinAtar", "--out", "t"],
        ["dataset", "--teacher", TEACHER, "--out", "d"],
        ["student", "--dataset", TEACHER, "--out", "s"],
    ):
        assert parser.parse_args(argv).tb is True
        assert parser.parse_args([*argv, "--no-tb"]).tb is False


@pytest.fixture(scope="module")
def student_run(tmp_path_factory):
    """A tiny dataset of the shipped Breakout teacher and a net2 student on it, by the CLI."""
    root = tmp_path_factory.mktemp("tb")
    data, out = root / "d", root / "s"
    argv = ["dataset", "--teacher", TEACHER, "--states", "512", "--num-envs", "32"]
    assert cli.main([*argv, "--stagger", "0", "--out", str(data)]) == 0
    argv = ["student", "--dataset", str(data), "--net", "net2", "--updates", "40"]
    argv += ["--eval-every", "20", "--eval-episodes", "2", "--batch-size", "32"]
    assert cli.main([*argv, "--out", str(out)]) == 0
    assert cli.main([*argv, "--out", str(root / "quiet"), "--no-tb"]) == 0
    return root


def test_a_student_run_logs_its_metrics_for_tensorboard(student_run):
    rows = json.loads((student_run / "s" / "metrics.json").read_text())
    logged = tb.read_scalars(student_run / "s" / tb.FOLDER)
    f32 = lambda x: float(np.float32(x))  # noqa: E731  (simple_value is a float32)
    assert logged["losses/distill_loss"] == [(r["updates"], f32(r["loss"])) for r in rows]
    assert logged["charts/agreement"] == [(r["updates"], f32(r["agreement"])) for r in rows]
    assert logged["charts/episodic_return"] == [(r["updates"], f32(r["score"])) for r in rows]
    assert [s for s, _ in logged["charts/SPS"]] == [20, 40]
    data_logged = tb.read_scalars(student_run / "d" / tb.FOLDER)
    assert "charts/SPS" in data_logged and "charts/episodes" in data_logged
    assert not (student_run / "quiet" / tb.FOLDER).exists()


def test_tensorboards_own_reader_reads_the_logs(student_run):
    event_accumulator = pytest.importorskip(
        "tensorboard.backend.event_processing.event_accumulator"
    )
    acc = event_accumulator.EventAccumulator(str(student_run / "s" / tb.FOLDER))
    acc.Reload()
    ours = tb.read_scalars(student_run / "s" / tb.FOLDER)
    assert set(acc.Tags()["scalars"]) == set(ours)
    for tag, values in ours.items():
        assert [(e.step, e.value) for e in acc.Scalars(tag)] == values


def test_a_reproduce_stage_logs_its_wall_time_and_point_estimates(tmp_path):
    point = lambda v: {"point": v, "lo": v - 1, "hi": v + 1}  # noqa: E731
    summary = {
        "groups": {
            "kl": {
                "geometric_mean": point(90.0),
                "iqm": point(92.0),
                "normalised_mean": point(0.75),
            }
        }
    }
    tb.log_stage(tmp_path, 2, "losses", 12.5, summary)
    tb.log_stage(tmp_path, 1, "teachers", 3.0, None)
    assert tb.read_scalars(tmp_path) == {
        "reproduce/wall_s/losses": [(2, 12.5)],
        "losses/geometric_mean/kl": [(2, 90.0)],
        "losses/iqm/kl": [(2, 92.0)],
        "losses/normalised_mean/kl": [(2, 0.75)],
        "reproduce/wall_s/teachers": [(1, 3.0)],
    }


def test_online_rounds_are_logged(tmp_path):
    from distill.experiments import online_distillation

    rows = [
        {"env_steps": 100 * (i + 1), "teacher_score": float(i), "student_score": 2.0 * i}
        | {"student_loss": 0.5 / (i + 1), "agreement": 0.9}
        for i in range(3)
    ]
    online_distillation.log_rounds({"rows": rows}, tmp_path / "online")
    scalars = tb.read_scalars(tmp_path / "online")
    assert scalars["charts/episodic_return"] == [(100, 0.0), (200, 2.0), (300, 4.0)]
    assert [s for s, _ in scalars["losses/distill_loss"]] == [100, 200, 300]
