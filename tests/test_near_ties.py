"""The teacher with its near ties lost (distill.near_ties)."""

import json
import re

import jax.numpy as jnp
import matplotlib
import numpy as np
import pytest

matplotlib.use("Agg")

from distill import near_ties  # noqa: E402
from distill.config import ConfigError  # noqa: E402


def test_runner_up_swaps_only_the_near_ties():
    q = jnp.array([[1.0, 0.995, 0.0], [1.0, 0.0, 0.5], [0.2, 0.3, 0.29]])  # gaps 0.005, 0.5, 0.01
    out = np.asarray(near_ties.runner_up(q, jnp.float32(0.02)))
    np.testing.assert_allclose(out[0], [0.995, 1.0, 0.0])  # best and second swapped
    np.testing.assert_allclose(out[1], [1.0, 0.0, 0.5])  # a clear decision stays
    np.testing.assert_allclose(out[2], [0.2, 0.29, 0.3], atol=1e-7)
    assert (out.argmax(1) == [1, 0, 2]).all()
    np.testing.assert_array_equal(np.asarray(near_ties.runner_up(q, jnp.float32(0.0))), q)


def test_the_table_is_relative_to_the_teacher_on_the_same_episodes():
    s = np.array([[10.0, 12.0], [5.0, 6.0]])
    rows = near_ties.table("Breakout-MinAtar", [0.0, 0.1], s)
    assert [r["percent_of_teacher"] for r in rows] == pytest.approx([100.0, 50.0])
    assert rows[1]["score"] == 5.5 and rows[0]["se"] == pytest.approx(1.0)


def test_the_shipped_teacher_at_g_zero_is_itself(tmp_path):
    """g = 0 plays exactly the teacher's episodes; a huge g always plays the runner-up."""
    out = tmp_path / "ties.json"
    rows = near_ties.main(
        ["--games", "Breakout-MinAtar", "--gaps", "0,100", "--episodes", "4", "--out", str(out)]
    )
    from distill import checkpoint, paths
    from distill.experiments import paired

    policy = checkpoint.load(paths.shipped_teacher("Breakout-MinAtar"), env_id="Breakout-MinAtar")
    assert rows[0]["score"] == pytest.approx(paired.teacher_scores(policy, 4).mean())
    assert rows[1]["score"] < rows[0]["score"]  # always second best: far worse
    assert out.exists() and "distill.near_ties" in out.read_text()


def test_by_gap_splits_agreement_by_the_teachers_margin():
    q_teacher = np.array([[1.0, 0.995], [1.0, 0.0], [0.0, 1.0], [0.2, 0.0]])  # gaps .005 1 1 .2
    q_students = np.array([[[0.0, 1.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0]]])  # wrong on 0, 3
    rows = near_ties.by_gap(q_teacher, q_students, [0.0, 0.01, 0.5, float("inf")])
    assert [r["states"] for r in rows] == [0.25, 0.25, 0.5]
    assert [r["agreement"] for r in rows] == [0.0, 0.0, 1.0]
    assert [r["share_of_disagreements"] for r in rows] == [0.5, 0.5, 0.0]


def test_students_that_are_not_cached_are_refused_not_trained(tmp_path):

    with pytest.raises(ConfigError, match="no full-budget dataset of Breakout-MinAtar"):
        near_ties.main(["--students", str(tmp_path), "--games", "Breakout-MinAtar"])
    assert not (tmp_path / "datasets").exists()


def test_the_figure_draws_saved_rows_and_refuses_other_files(tmp_path):
    teacher = [
        {"game": "Asterix-MinAtar", "g": g, "score": s, "se": 0.3, "percent_of_teacher": p}
        for g, s, p in ((0.0, 11.0, 100.0), (0.1, 7.4, 67.3))
    ]
    student = [
        {
            "game": "Asterix-MinAtar",
            "loss": "kl",
            "gap": b,
            "agreement": a,
            "states": 0.5,
            "share_of_disagreements": 0.5,
        }
        for b, a in (("[0, 0.1)", 0.6), ("[0.1, inf)", 0.95))
    ]
    files = []
    for name, rows in (("small", teacher), ("students", student)):
        files.append(tmp_path / f"{name}.json")
        files[-1].write_text(json.dumps({"command": "x", "rows": rows}))
    fig = near_ties.figure({"small": teacher, "students": student})
    assert len(fig.axes) == 2
    left, right = fig.axes
    assert "g" in left.get_xlabel() and "%" in left.get_ylabel()
    np.testing.assert_allclose(np.asarray(left.containers[0][0].get_ydata(), float), [100.0, 67.3])
    np.testing.assert_allclose(right.lines[0].get_ydata(), [0.6, 0.95])
    out = tmp_path / "near.png"
    near_ties.main(["--plot", ",".join(map(str, files)), "--figure", str(out)])
    assert out.stat().st_size > 1000
    (tmp_path / "again").mkdir()
    twin = tmp_path / "again" / "small.json"
    twin.write_text(files[0].read_text())
    with pytest.raises(ConfigError, match="a second file named small"):
        near_ties.plot([str(files[0]), str(twin)], str(out))
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"rows": [{**r, "g": 2 * r["g"]} for r in teacher]}))
    with pytest.raises(ConfigError, match="their g values differ"):
        near_ties.plot([str(files[0]), str(other)], str(out))
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ConfigError, match="bad.json"):
        near_ties.plot([str(bad)], str(out))


def test_compressed_students_are_read_by_size_and_drawn_apart(tmp_path, monkeypatch):
    """`--nets net1,...` reads the compression stage's students (refused by name when absent)
    and the figure draws each size as its own line."""
    import matplotlib.pyplot as plt

    with pytest.raises(ConfigError, match="no full-budget dataset of Asterix"):
        near_ties.student_rows(tmp_path, "Asterix-MinAtar", ["kl"], [0, 1], ["net2"], seeds=3)
    # the folder read is the one the large-teacher compression stage writes for its net2
    from sharding_checks import synthetic_minatar

    from distill import dataset, experiments
    from distill.experiments import common, seeds

    data = synthetic_minatar("Asterix-MinAtar")
    where = tmp_path / "datasets" / "d"
    where.mkdir(parents=True)
    (where / "manifest.json").write_text("{}")
    monkeypatch.setattr(common, "dataset_folder", lambda *a: where)
    monkeypatch.setattr(dataset, "load_dataset", lambda *a, **k: data)
    b = experiments.budget("full", teachers="large", seeds=3)
    config = common.student_config(b, loss="kl", net="large-net2")
    expected = tmp_path / "students" / seeds.student_folder_name(config, data, 3)
    with pytest.raises(ConfigError, match=re.escape(f"{expected}: no finished kl net2 students")):
        near_ties.cached_students(
            tmp_path, "Asterix-MinAtar", "kl", "net2", teachers="large", seeds=3
        )
    rows = [
        {"game": "Asterix-MinAtar", "loss": "kl", "net": net, "gap": b, "agreement": a}
        | {"states": 0.5}
        for net in ("teacher", "net3")
        for b, a in (("[0, 0.1)", 0.6), ("[0.1, inf)", 0.9))
    ]
    fig = near_ties.figure({"students": rows})
    labels = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert labels == ["Asterix, students, KL", "Asterix, students, KL, net3"]
    assert [line.get_linestyle() for line in fig.axes[0].lines] == ["-", ":"]
    plt.close(fig)
