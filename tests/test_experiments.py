"""Experiments: score normalisation and the geometric mean against hand values, summaries and
tables, budgets, the teacher and dataset caches, and a tiny end-to-end loss comparison on
CartPole with the shared teacher. Its dataset and students have the shapes of conftest's dataset
and test_student.py's runs, so the compiled programs are shared within a session.
"""

import argparse
import dataclasses
import json
import math
import re
import shutil

import jax
import matplotlib
import numpy as np
import pytest
from conftest import DATASET_CONFIG, ENV, killed_after
from sharding_checks import MULTI_GAMES
from sharding_checks import TEACHER as TINY_DQN

from distill import checkpoint, cli, experiments, plotting, report, teacher, xla
from distill import multitask as mt
from distill.config import ConfigError

matplotlib.use("Agg")

TINY = experiments.Budget(
    name="t",
    games=(ENV,),
    teacher_steps=60_000,
    dataset_states=DATASET_CONFIG.states,
    updates=2_000,
    eval_every=1_000,
    seeds=2,
    eval_episodes=20,
    multitask_dqn_steps=None,
    online_teacher_steps=60_000,
    online_rounds=2,
)


# ---------------------------------------------------------------------------- numbers


def test_percent_of_teacher():
    assert experiments.percent_of_teacher(50.0, 200.0) == 25.0
    assert experiments.percent_of_teacher(216.6, 200.0) == pytest.approx(108.3)
    assert experiments.percent_of_teacher(-3.0, -6.0) == 50.0
    assert math.isnan(experiments.percent_of_teacher(5.0, 0.0))


def test_random_normalised():
    assert experiments.random_normalised(60.0, 110.0, 10.0) == 0.5
    assert experiments.random_normalised(10.0, 110.0, 10.0) == 0.0
    assert experiments.random_normalised(110.0, 110.0, 10.0) == 1.0
    assert experiments.random_normalised(-21.0, 0.0, -21.0) == 0.0  # Pong: random loses 21-0
    assert experiments.random_normalised(130.0, 110.0, 10.0) == pytest.approx(1.2)
    assert math.isnan(experiments.random_normalised(5.0, 7.0, 7.0))


def test_geometric_mean_of_the_papers_compression_results():
    values = [108.3, 101.7, 83.9]
    want = (108.3 * 101.7 * 83.9) ** (1 / 3)
    assert experiments.geometric_mean(values) == pytest.approx(want, rel=1e-12)
    assert experiments.geometric_mean(values) == pytest.approx(97.4, abs=0.05)
    assert experiments.geometric_mean(np.array([2.0, 8.0])) == pytest.approx(4.0)
    assert experiments.geometric_mean(v for v in (3.0,)) == pytest.approx(3.0)  # any iterable


@pytest.mark.parametrize(
    "values", [[100.0, 0.0], [100.0, -5.0], [], [100.0, float("nan")], [float("inf"), 1.0]]
)
def test_geometric_mean_undefined_is_nan(values):
    assert math.isnan(experiments.geometric_mean(values))


def test_summarise_groups_and_averages():
    rows = [
        {"game": "A", "loss": "kl", "score": 10.0, "percent_of_teacher": 90.0},
        {"game": "A", "loss": "kl", "score": 14.0, "percent_of_teacher": 110.0},
        {"game": "A", "loss": "mse", "score": 4.0, "percent_of_teacher": 40.0},
        {"game": "B", "loss": "kl", "score": 7.0, "percent_of_teacher": 70.0},
    ]
    for r in rows:
        r["random_normalised"] = r["percent_of_teacher"] / 100 - 0.1
    summary = experiments.summarise(rows, ("game", "loss"))
    assert [(s["game"], s["loss"], s["seeds"]) for s in summary] == [
        ("A", "kl", 2),
        ("A", "mse", 1),
        ("B", "kl", 1),
    ]
    a_kl = summary[0]
    assert a_kl["score_mean"] == 12.0
    assert a_kl["percent_mean"] == pytest.approx(100.0) and a_kl["percent_std"] == pytest.approx(
        10.0
    )
    assert a_kl["normalised_mean"] == pytest.approx(0.9)
    assert a_kl["normalised_std"] == pytest.approx(0.1)
    assert summary[1]["percent_std"] == 0.0
    by_loss = experiments.summarise(rows, ("loss",))
    assert [(s["loss"], s["seeds"]) for s in by_loss] == [("kl", 3), ("mse", 1)]
    assert by_loss[0]["percent_mean"] == pytest.approx(90.0)
    assert experiments.summarise([], ("game",)) == []


def test_markdown_table():
    rows = [
        {"game": "Pong", "loss": "kl", "score": 1234.5, "percent": 97.44, "ratio": 0.5},
        {"game": "Breakout", "loss": "mse", "score": float("nan"), "percent": 8.0, "ratio": -0.25},
    ]
    lines = report.markdown_table(rows, ["game", "loss", "score", "percent", "ratio"]).splitlines()
    assert lines == [
        "| game | loss | score | percent | ratio |",
        "|---|---|---|---|---|",
        "| Pong | kl | 1,234.5 | 97.4 | 0.50 |",
        "| Breakout | mse | – | 8.00 | -0.25 |",
    ]
    # columns default to the first row's keys; a missing value is an empty cell
    assert report.markdown_table([{"a": 1, "b": "x"}, {"a": 2}]).splitlines() == [
        "| a | b |",
        "|---|---|",
        "| 1 | x |",
        "| 2 |  |",
    ]
    assert report.markdown_table([]) == "(no rows)"


def test_budgets():
    with pytest.raises(ValueError, match="budget='nope'.*smoke"):
        experiments.budget("nope")
    smoke, quick, full = (experiments.budget(n) for n in ("smoke", "quick", "full"))
    assert smoke.name == "smoke" and smoke.games == ("Breakout-MinAtar",)
    assert quick.games == experiments.MINATAR_GAMES  # four: the demo's and notebooks' time
    assert full.games == (*experiments.MINATAR_GAMES, "Seaquest-MinAtar")  # issue 20: all five
    for b in (smoke, quick, full):
        assert b.updates % b.eval_every == 0 and b.seeds >= 2
    assert smoke.updates < quick.updates < full.updates
    assert full.seeds >= 5 and full.eval_episodes >= 100  # issue 17: enough runs and episodes


def test_budget_is_built_by_keyword():
    with pytest.raises(TypeError):
        experiments.Budget("t", (ENV,), 1, 2, 3, 4, 5, 6, None, 7, 8)
    assert dataclasses.replace(TINY, seeds=3).seeds == 3
    for suite in experiments.SUITES.values():
        assert list(suite) == ["smoke", "quick", "full"]
        assert all(b.name == name for name, b in suite.items())


# ---------------------------------------------------------------------------- registry


def test_every_experiment_is_registered_and_on_the_command_line():
    assert list(experiments.EXPERIMENTS) == [
        "losses",
        "compression",
        "multitask",
        "online",
        "regimes",
    ]
    for name, e in experiments.EXPERIMENTS.items():
        assert e.name == name and e.help and callable(e.run) and callable(e.write)
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    (name_arg,) = [a for a in sub.choices["experiment"]._actions if a.dest == "name"]
    assert name_arg.choices == list(experiments.EXPERIMENTS)
    assert "compression: KL students at 100/25/7/4 %% size" in name_arg.help


def test_a_new_experiment_is_one_module(tmp_path, monkeypatch):
    """`discover` finds every module that defines EXPERIMENT, in order, and nothing else."""
    package = tmp_path / "throwaway_experiments"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "helpers.py").write_text("VALUE = 1\n")
    entry = (
        "from distill.experiments.registry import Experiment\n"
        "EXPERIMENT = Experiment(name={name!r}, help='h', run=dict, write=print, "
        "console_table=str, report_section=list, order={order})\n"
    )
    (package / "second.py").write_text(entry.format(name="second", order=2))
    (package / "first.py").write_text(entry.format(name="first", order=1))
    monkeypatch.syspath_prepend(str(tmp_path))
    import throwaway_experiments

    found = experiments.registry.discover(throwaway_experiments)
    assert list(found) == ["first", "second"]
    assert found["first"].suites == ("minatar", "atari") and found["first"].applies(TINY)
    (package / "again.py").write_text(entry.format(name="first", order=3))
    with pytest.raises(ValueError, match="share a name"):
        experiments.registry.discover(throwaway_experiments)


def test_online_refuses_a_mesh(capsys):
    argv = ["experiment", "online", "--budget", "smoke", "--mesh", "seeds=1", "--out", "x"]
    assert cli.main(argv) == 2
    assert "experiment online runs on one device" in capsys.readouterr().err


def test_multitask_figure_shows_the_table():
    """One bar per method for each game and for the geometric mean, as multitask_table says."""
    import matplotlib.pyplot as plt

    games = ("Breakout-MinAtar", "Asterix-MinAtar")
    methods = ("multi-dqn", "distilled-nll", "distilled-kl")
    rows = [
        {"method": m, "game": g, "seed": s, "percent_of_teacher": 10.0 * (i + 1) + j + s}
        for i, m in enumerate(methods)
        for j, g in enumerate(games)
        for s in (0, 1)
    ]
    result = {
        "rows": rows,
        "teachers": [{"game": g} for g in games],
        "summary": experiments.multitask_distillation.multitask_summary(rows),
    }
    table = experiments.multitask_table(result)[:-1]  # without the paper's row
    fig = plotting.multitask_figure(result)
    (ax,) = fig.axes
    heights = [p.get_height() for p in ax.patches]
    assert heights == [r[m] for m in methods for r in table]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["Breakout", "Asterix", "geometric mean"]
    assert experiments.multitask_figure is plotting.multitask_figure  # the old name still works
    plt.close(fig)
    fig = plotting.multitask_figure(result, {"distilled-kl": 89.3})  # a star at the paper's level
    (ax,) = fig.axes
    stars = [line for line in ax.lines if line.get_marker() == "*" and len(line.get_ydata())]
    assert [float(line.get_ydata()[0]) for line in stars] == [89.3]
    assert float(stars[0].get_xdata()[0]) == pytest.approx(2 + 0.27)  # over the KL bar
    plt.close(fig)


# ---------------------------------------------------------------------------- ingredients


def test_ensure_teacher_prefers_the_shipped_one(tmp_path, monkeypatch, trained_cartpole):
    shipped = tmp_path / "data" / "teachers" / "CartPole-v1"
    shutil.copytree(trained_cartpole[0], shipped)
    monkeypatch.setenv("DISTILL_DATA", str(tmp_path / "data"))

    def no_training(*args, **kwargs):
        raise AssertionError("a shipped teacher must not be retrained")

    monkeypatch.setattr(teacher, "fit", no_training)
    policy = experiments.ensure_teacher(ENV, TINY, tmp_path / "runs", progress=False)
    assert policy.path == str(shipped) and policy.kind == "teacher"
    assert not (tmp_path / "runs").exists()


# ---------------------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def comparison(tmp_path_factory, trained_cartpole):
    """loss_comparison at the TINY budget with the shared teacher: (result, runs_dir)."""
    runs_dir = tmp_path_factory.mktemp("runs")
    with pytest.MonkeyPatch.context() as m:
        m.setattr(experiments.common, "ensure_teacher", lambda *a, **k: trained_cartpole[1])
        result = experiments.loss_comparison(TINY, runs_dir=runs_dir, progress=False)
    return result, runs_dir


def test_ensure_dataset_generates_once(comparison, trained_cartpole, cartpole_dataset):
    _, runs_dir = comparison
    _, policy = trained_cartpole
    sha = policy.manifest["files"]["params.npz"][:10]
    folder = runs_dir / "datasets" / f"CartPole-v1_{sha}_40000_staggered"
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["status"] == "complete"
    assert manifest["config"] == dataclasses.asdict(DATASET_CONFIG)
    # the same teacher, config and seed: the same shards as conftest's dataset, bit for bit
    shared = json.loads((cartpole_dataset / "manifest.json").read_text())
    assert manifest["files"] == shared["files"]
    stamp = (folder / "manifest.json").stat().st_mtime_ns
    data = experiments.ensure_dataset(policy, TINY, runs_dir, progress=False)
    assert (folder / "manifest.json").stat().st_mtime_ns == stamp  # reused, not regenerated
    assert data.path == str(folder) and data.q.shape == (625, 64, 2)


def test_loss_comparison_rows_and_curves(comparison):
    result, _ = comparison
    rows, curves = result["rows"], result["curves"]
    assert len(rows) == 1 * 3 * 2  # games x losses x seeds
    assert [(r["loss"], r["seed"]) for r in rows] == [
        (loss, seed) for loss in ("nll", "mse", "kl") for seed in (0, 1)
    ]
    [t] = result["teachers"]
    assert t["game"] == ENV and t["teacher_score"] > 2 * t["random_score"] > 0
    for r in rows:
        assert r["game"] == ENV and r["net"] == "teacher"
        assert np.isfinite(r["score"]) and 0 <= r["agreement"] <= 1
        assert r["percent_of_teacher"] == pytest.approx(100 * r["score"] / t["teacher_score"])
        assert r["random_normalised"] == pytest.approx(
            (r["score"] - t["random_score"]) / (t["teacher_score"] - t["random_score"])
        )
    assert len(curves) == 3 and [c["loss"] for c in curves] == ["nll", "mse", "kl"]
    for c in curves:
        assert c["updates"] == [1_000, 2_000]
        assert len(c["score_mean"]) == len(c["score_std"]) == 2
        final = [r["score"] for r in rows if r["loss"] == c["loss"]]
        assert c["score_mean"][-1] == pytest.approx(np.mean(final))
    assert result["budget"]["name"] == "t" and result["budget"]["games"] == (ENV,)


def test_loss_comparison_keeps_paired_episode_scores(comparison):
    result, runs_dir = comparison
    [t] = result["teachers"]
    n = TINY.eval_episodes
    assert len(t["teacher_episode_scores"]) == len(t["random_episode_scores"]) == n
    assert t["teacher_score"] == pytest.approx(np.mean(t["teacher_episode_scores"]))
    assert t["random_score"] == pytest.approx(np.mean(t["random_episode_scores"]))
    # the high-precision reference: cached in the run (not a shipped teacher), its first n
    # episodes the ones every student was scored on
    assert t["reference_episodes"] >= 100 and t["reference_se"] >= 0
    [cached] = (runs_dir / "references").iterdir()
    first = json.loads(cached.read_text())["episode_scores"][:n]
    assert first == pytest.approx(t["teacher_episode_scores"])
    for r in result["rows"]:
        assert len(r["episode_scores"]) == n and r["eval_seed"] == t["eval_seed"]
        assert r["score"] == pytest.approx(np.mean(r["episode_scores"]))
        assert r["teacher_episode_scores"] == t["teacher_episode_scores"]


def test_loss_comparison_records_how_decided_the_teacher_is(comparison):
    result, _ = comparison
    (m,) = result["margins"]
    assert m["game"] == TINY.games[0] and m["median_q_gap"] >= 0
    assert 0 <= m["near_ties"] <= 1 and 0 <= m["soft_targets"] <= 1
    assert sum(m["best_action_shares"]) == pytest.approx(1.0)
    section = "\n".join(experiments.losses.report_section(result))
    assert "How decided the teachers are" in section and "near ties" in section
    # and how the students do on their own states, labelled by the teacher
    for r in result["rows"]:
        assert 0 <= r["own_agreement"] <= 1 and r["own_regret"] >= 0
        assert r["own_regret"] > 0 or r["own_agreement"] == 1  # a disagreement costs something
    assert "own-state regret" in section


def test_write_loss_comparison(tmp_path, comparison):
    import matplotlib.pyplot as plt

    folder = experiments.write_loss_comparison(comparison[0], tmp_path / "out")
    plt.close("all")
    assert folder == tmp_path / "out"
    assert {p.name for p in folder.iterdir()} == {
        "loss_comparison.json",
        "loss_comparison.md",
        "loss_comparison.png",
    }
    saved = json.loads((folder / "loss_comparison.json").read_text())
    assert len(saved["rows"]) == 6 and len(saved["curves"]) == 3
    assert [(s["game"], s["loss"], s["seeds"]) for s in saved["summary"]] == [
        (ENV, loss, 2) for loss in ("nll", "mse", "kl")
    ]
    lines = (folder / "loss_comparison.md").read_text().splitlines()
    assert lines[0].startswith("| game | loss | seeds | score_mean | percent_mean |")
    assert len(lines) == 2 + 3
    assert (folder / "loss_comparison.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# ---------------------------------------------------------------------------- multi-task DQN


@pytest.mark.parametrize(
    "iterations, chunks, size", [(200, 4, 50), (10, 3, 2), (7, 50, 1), (13, 2, 1), (12, 1, 12)]
)
def test_chunk_size_divides_the_run(iterations, chunks, size):
    assert mt.chunk_size(iterations, chunks) == size
    assert iterations % size == 0


def test_multitask_dqn_in_chunks_equals_one_call_and_resumes(tmp_path, monkeypatch):
    """The experiment runs the multi-task DQN in chunks (a progress bar, checkpoints): the same
    result as one call, also when the process dies after a checkpoint and the run continues."""
    games = MULTI_GAMES
    config = teacher.default_config(games[0], **TINY_DQN)  # 200 iterations of 2 games x 4 envs
    _, init, run, iterations = mt.make_multitask_train(config, games)
    key = jax.random.PRNGKey(0)
    whole, _ = xla.jit(lambda k: run(init(k), iterations))(key)
    template = xla.jit(init)(key)

    def assert_same(state):
        leaves = zip(
            jax.tree_util.tree_leaves(state), jax.tree_util.tree_leaves(whole), strict=True
        )
        for a, b in leaves:
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))

    chunked = mt.train_in_chunks(run, template, iterations, games, chunks=4, progress=False)
    assert iterations == 200 and int(chunked.updates) > 0
    assert int(chunked.iteration) == iterations
    assert_same(chunked)

    folder, identity = tmp_path / "dqn", {"games": games}  # a tuple, stored as a list
    resumable = dict(chunks=4, progress=False, folder=folder, identity=identity)
    saved, write = [], checkpoint.write_checkpoint
    killed = killed_after(2, write, saved, lambda args: args[2]["iteration"])
    monkeypatch.setattr(checkpoint, "write_checkpoint", killed)
    with pytest.raises(KeyboardInterrupt):
        mt.train_in_chunks(run, template, iterations, games, checkpoint_every_s=0, **resumable)
    monkeypatch.undo()
    manifest = checkpoint.read_manifest(folder)
    assert saved == [50, 100] and (manifest["iteration"], manifest["status"]) == (100, "running")
    assert_same(mt.train_in_chunks(run, template, iterations, games, **resumable))
    assert checkpoint.read_manifest(folder)["status"] == "complete"
    assert_same(mt.train_in_chunks(run, template, iterations, games, **resumable))  # read back
    with pytest.raises(checkpoint.CheckpointError, match="another config"):
        mt.train_in_chunks(
            run, template, iterations, games, **{**resumable, "identity": {"games": []}}
        )


@pytest.mark.long  # two multi-task DQNs compiled and evaluated: about 90 s cold on 2 cores
def test_multitask_dqn_runs_one_folder_per_seed(tmp_path):
    """The multi-task DQN baseline has runs (one per seed) so that the distilled student's lead
    over it carries an interval; seed 0 keeps the folder it had before runs had seeds."""
    from distill.experiments import multitask_distillation as md

    steps = 12_000  # just past the default learning_starts (10,000): a few updates
    for seed in (0, 1):
        scores = md.multitask_dqn_scores(MULTI_GAMES, steps, 2, tmp_path, False, seed=seed)
        assert scores.shape == (2, 2) and np.isfinite(scores).all()
    folders = sorted(tmp_path.glob("multitask-dqn_*"))
    assert len(folders) == 2
    identities = [checkpoint.read_manifest(f)["identity"] for f in folders]
    # seed 0's identity has no seed: the folder an earlier single-run version wrote
    assert sorted(str(i.get("seed", "none")) for i in identities) == ["1", "none"]


def test_budget_compression_nets_are_the_papers_sizes():
    """`--compression-nets net1,net2,net3` (the paper's Table 2 without the same-size student)
    is a budget; an unknown size is refused by name."""
    b = experiments.budget("full", compression_nets=("net1", "net2", "net3"))
    assert b.compression_nets == ("net1", "net2", "net3")
    assert experiments.budget("full").compression_nets == ("teacher", "net1", "net2", "net3")
    with pytest.raises(ConfigError, match="compression_nets=.*net4"):
        experiments.budget("full", compression_nets=("net1", "net4"))
    with pytest.raises(ConfigError, match="compression_nets"):
        experiments.budget("full", compression_nets=())
    with pytest.raises(ConfigError, match="distinct"):
        experiments.budget("full", compression_nets=("net1", "net1"))


def test_online_seeds_are_combined_and_shown_per_seed():
    import matplotlib.pyplot as plt

    from distill.experiments import online_distillation as od

    def result(seed, base):
        rows = [
            {"round": i + 1, "env_steps": 100 * (i + 1), "teacher_score": base + i}
            | {"student_score": base + i / 2, "student_loss": 0.1, "agreement": 0.9}
            for i in range(4)
        ]
        teacher = {"spread": 1.0 + seed, "worst_drop": 0.0, "final": base + 3, "best": base + 3}
        student = {"spread": 0.5, "worst_drop": 0.0, "final": base + 1.5, "best": base + 1.5}
        return {"env_id": ENV, "rows": rows, "teacher": teacher, "student": student}

    one = result(0, 1.0)
    assert od.combine_seeds([one]) is one and len(od.online_table(one)) == 2
    both = od.combine_seeds([one, result(1, 3.0)])
    assert [r["seed"] for r in both["rows"]] == [0] * 4 + [1] * 4
    assert both["teacher"] == one["teacher"] and [r["seed"] for r in both["runs"]] == [0, 1]
    table = od.online_table(both)
    assert [(r["policy"], r["seed"]) for r in table][-2:] == [
        ("teacher", "mean"),
        ("student", "mean"),
    ]
    assert table[-2]["spread"] == 1.5 and table[-1]["final"] == 3.5
    fig = experiments.online_figure(both)
    assert len(fig.axes[0].lines) == 4
    assert [t.get_text() for t in fig.axes[0].get_legend().get_texts()] == [
        "teacher (2 seeds)",
        "student (2 seeds)",
    ]
    plt.close(fig)


def test_online_stage_runs_each_seed(tmp_path):
    from distill.experiments import online_distillation as od

    b = dataclasses.replace(TINY, online_teacher_steps=20_000, online_seeds=2)
    result = od.run(b, runs_dir=tmp_path, progress=False)
    first = od.online(b, progress=False)
    assert [r["seed"] for r in result["rows"]] == [0, 0, 1, 1]
    assert [r["teacher_score"] for r in result["rows"][:2]] == [
        r["teacher_score"] for r in first["rows"]
    ]
    scores = [(r["teacher_score"], r["student_score"]) for r in result["rows"]]
    assert scores[2:] != scores[:2]  # seed 1 is another run
    assert (tmp_path / "tb" / "online" / "seed1").is_dir()
    # each seed is kept: a stage stopped after seed 0 resumes at seed 1, reading seed 0 back
    kept = sorted((tmp_path / "online-seeds").glob("*.json"))
    assert [p.name.split("_")[1] for p in kept] == ["s0", "s1"]
    kept[1].unlink()
    logs = lambda: sorted((tmp_path / "tb" / "online").rglob("*tfevents*"))  # noqa: E731
    before, ran, real = logs(), [], od.online
    od_online = lambda b, **kw: ran.append(kw["seed"]) or real(b, **kw)  # noqa: E731
    with pytest.MonkeyPatch.context() as m:
        m.setattr(od, "online", od_online)
        again = od.run(b, runs_dir=tmp_path, progress=False)
    assert ran == [1] and again["rows"] == json.loads(json.dumps(result["rows"]))
    assert len(logs()) == len(before) + 1  # seed 1 logged again, seed 0 (read back) not
    # a damaged one is refused by name
    kept[0].write_text("{")
    with pytest.raises(checkpoint.CheckpointError, match=f"{kept[0].name} is damaged"):
        od.run(b, runs_dir=tmp_path, progress=False)


def test_multitask_students_train_in_chunks_resume_and_are_kept(tmp_path, monkeypatch):
    """A MinAtar multi-task stage trains its students in chunks (a progress bar, checkpoints):
    the params of one compiled call (to rounding), and the same bit for bit when the process dies
    after a checkpoint and the run continues; a finished run is read back, not trained again;
    another config is refused."""
    from sharding_checks import MULTI_STUDENT, synthetic_minatar

    from distill import student
    from distill.experiments import multitask_distillation as md
    from distill.experiments import multitask_students as ms

    config = student.StudentConfig(**{**MULTI_STUDENT, "updates": 40})  # 4 blocks of 10
    sets = [synthetic_minatar(g) for g in MULTI_GAMES]
    arrays = tuple(d.arrays() for d in sets)
    whole, _ = md.distil_multitask_students(config, MULTI_GAMES, arrays, 2)
    monkeypatch.setattr(ms, "CHUNKS", 4)  # a block a chunk
    monkeypatch.setattr(ms.StudentsJob, "checkpoint_every_s", 0.0)  # a checkpoint every chunk
    chunked = ms.trained(config, MULTI_GAMES, sets, 2, progress=False)
    pairs = lambda a, b: zip(*map(jax.tree_util.tree_leaves, (a, b)), strict=True)  # noqa: E731
    for a, b in pairs(chunked, whole):  # other programs, so not bit for bit: within 1e-5
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-7)

    def assert_same(params):  # a resumed or read-back run: bit for bit
        for a, b in pairs(params, chunked):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))

    saved, write = [], checkpoint.write_checkpoint
    killed = killed_after(2, write, saved, lambda args: args[2]["updates"])
    with monkeypatch.context() as m:
        m.setattr(checkpoint, "write_checkpoint", killed)
        with pytest.raises(KeyboardInterrupt):
            ms.trained(config, MULTI_GAMES, sets, 2, tmp_path, progress=False)
    (folder,) = tmp_path.iterdir()
    assert folder.name.startswith("multitask_Breakout-MinAtar+SpaceInvaders")
    assert folder.name.endswith("_s2") and saved == [10, 20]
    assert checkpoint.read_manifest(folder)["status"] == "running"
    assert_same(ms.trained(config, MULTI_GAMES, sets, 2, tmp_path, progress=False))
    manifest = checkpoint.read_manifest(folder)
    assert manifest["status"] == "complete" and manifest["updates"] == 40
    assert [r["updates"] for r in manifest["metrics"]] == [10, 20, 30, 40]

    def no_training(*args):
        raise AssertionError("trained again")

    monkeypatch.setattr(ms.StudentsJob, "advance", no_training)
    assert_same(ms.trained(config, MULTI_GAMES, sets, 2, tmp_path, progress=False))
    monkeypatch.setattr(ms, "CHUNKS", 2)  # a finished run is read back whatever its chunks
    assert_same(ms.trained(config, MULTI_GAMES, sets, 2, tmp_path, progress=False))
    (folder / "manifest.json").write_text(json.dumps({**manifest, "seeds": 3}))
    with pytest.raises(checkpoint.CheckpointError, match=re.escape(str(folder))):
        ms.trained(config, MULTI_GAMES, sets, 2, tmp_path, progress=False)
