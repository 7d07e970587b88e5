"""Teacher sizes (issue 20): the budget's `teachers` field picks the shipped small or large
teacher and the student nets of that size in every experiment, a missing large teacher is
refused in one line, and the multi-task experiment runs on all five MinAtar games with the
paper's wider 10-game trunk. Smoke-size runs on Breakout-MinAtar's shipped large teacher."""

from __future__ import annotations

import dataclasses
import json
import re

import jax
import numpy as np
import pytest

from distill import checkpoint, cli, cliconf, families, networks, paths, reproduce, teacher
from distill import multitask as mt
from distill.config import ConfigError
from distill.experiments import (
    common,
    multitask_distillation,
    multitask_students,
    paired,
    policy_compression,
)

GAME = "Breakout-MinAtar"
FIVE = common.MINATAR_FIVE
LARGE = common.budget(
    "smoke",
    teachers="large",
    updates=100,
    eval_every=100,
    seeds=2,
    eval_episodes=4,
    dataset_states=1_024,
)


def test_net_of_maps_the_papers_sizes_to_the_budgets_teacher_size():
    small = common.budget("smoke")
    assert small.teachers == "small" and small.multitask_net == "teacher"  # today's defaults
    for size in ("teacher", "net1", "net2", "net3", "wide"):
        assert common.net_of(small, size) == size
        assert common.net_of(LARGE, size) == f"large-{size}"
        assert common.net_of(LARGE, size) in families.of(GAME).nets


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"teachers": "huge"}, "teachers='huge'"),
        ({"multitask_net": "widest"}, "multitask_net='widest'"),
        ({"teachers": "large", "games": ("ALE/Pong-v5",)}, "ALE/Pong-v5 has no large nets"),
    ],
)
def test_a_bad_teacher_size_or_trunk_is_refused(fields, message):
    with pytest.raises(ConfigError, match=message):
        common.budget("smoke", **fields)


def test_teachers_and_multitask_net_are_options_of_reproduce(tmp_path):
    argv = ["reproduce", "--budget", "smoke", "--teachers", "large", "--multitask-net", "wide"]
    args = cli.build_parser().parse_args([*argv, "--games", ",".join(FIVE), "--out", "x"])
    given = cliconf.budget_overrides(args, common)
    assert given == {"games": FIVE, "teachers": "large", "multitask_net": "wide"}
    # the report names the teacher size in its title and its budget line
    out = reproduce.reproduce(
        "minatar", "smoke", tmp_path, progress=False, only=(), overrides={"teachers": "large"}
    )
    report = (out / "report.md").read_text()
    assert report.splitlines()[0].endswith("smoke budget, large teachers")
    assert "teachers=large" in report and "--teachers large" in report
    assert json.loads((out / "results.json").read_text())["meta"]["budget"]["teachers"] == "large"


def test_the_shipped_large_teacher_and_its_reference():
    """data/teachers/Breakout-MinAtar-large: a large-teacher network far above random, with its
    reference beside it (se within 3 %) whose first episodes are the paired episodes."""
    folder = paths.shipped_teacher(GAME, "large")
    assert folder.name == "Breakout-MinAtar-large"
    assert paths.shipped_teacher(GAME) == paths.data_dir() / "teachers" / GAME  # small: as before
    policy = common.ensure_teacher(GAME, LARGE, paths.runs_dir(), progress=False)
    assert policy.path == str(folder) and policy.net == "large-teacher"
    spec = families.net_spec(GAME, "large-teacher")
    assert networks.count_params(policy.params) == networks.param_count(spec, (10, 10, 4), 3)
    assert policy.manifest["env_steps"] >= 999_000
    assert policy.manifest["evaluation"]["mean"] > 10 * policy.manifest["random_evaluation"]["mean"]
    assert paired.reference_path(policy, paths.runs_dir()) == folder / paired.REFERENCE_FILE
    ref = paired.teacher_reference(policy, paths.runs_dir(), compute=False)
    assert ref["se"] <= paired.REL_SE * ref["mean"]
    np.testing.assert_array_equal(ref["episode_scores"][:4], paired.teacher_scores(policy, 4))


def test_a_missing_large_teacher_is_refused_in_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("DISTILL_DATA", str(tmp_path / "data"))

    def no_training(*args, **kwargs):
        raise AssertionError("a large teacher is not trained inside an experiment")

    monkeypatch.setattr(teacher, "fit", no_training)
    with pytest.raises(ConfigError, match="no large teacher shipped for Breakout-MinAtar"):
        common.ensure_teacher(GAME, LARGE, tmp_path / "runs", progress=False)
    argv = ["reproduce", "--budget", "smoke", "--teachers", "large", "--out", str(tmp_path / "o")]
    assert cli.main(argv) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert "Breakout-MinAtar" in line
    assert "distill teacher --env Breakout-MinAtar --net large-teacher" in line
    assert not (tmp_path / "runs").exists()


@pytest.mark.long
def test_compression_with_large_teachers_trains_the_large_nets(tmp_path):
    """The same-size and smallest students of the large teacher: large-teacher and large-net3
    networks, scored on the large teacher's paired episodes, at 100 % and about 4 %."""
    b = dataclasses.replace(LARGE, compression_nets=("teacher", "net3"))
    result = policy_compression.compression(b, runs_dir=tmp_path, progress=False)
    policy = checkpoint.load(paths.shipped_teacher(GAME, "large"), env_id=GAME)
    (t,) = result["teachers"]
    assert t["teacher_episode_scores"] == paired.teacher_scores(policy, 4).tolist()
    assert t["reference_score"] == pytest.approx(21.02, abs=0.01)  # the shipped reference
    rows = {(r["net"], r["seed"]): r for r in result["rows"]}
    assert set(rows) == {("teacher", 0), ("teacher", 1), ("net3", 0), ("net3", 1)}
    assert rows["teacher", 0]["params"] == networks.param_count(
        families.net_spec(GAME, "large-teacher"), (10, 10, 4), 3
    )
    assert rows["teacher", 0]["params_percent"] == 100.0
    assert rows["net3", 0]["params_percent"] == pytest.approx(3.78, abs=0.01)
    names = sorted(p.name.split("_")[1] for p in (tmp_path / "students").iterdir())
    assert names == ["large-net3", "large-teacher"]
    assert "Teachers: large" in "\n".join(policy_compression.report_section(result))
    assert result["budget"]["teachers"] == "large"


# ---------------------------------------------------------------------------- multi-task


def _multitask_params(games, net: str) -> int:
    return multitask_distillation.multitask_params(tuple(games), net)


def test_the_wide_multitask_trunk_is_about_four_times_the_teacher():
    """The paper's 10-game net (64-64-64, fc1500, a fc2 of 128 and a controller per game) is
    4.0x its teacher; the five-game MinAtar nets keep that ratio, at either teacher size."""
    paper = 6_756_721 / 1_693_362
    for size in ("small", "large"):
        b = common.budget("smoke", teachers=size)
        teacher_params = networks.param_count(
            families.net_spec(GAME, common.net_of(b, "teacher")), (10, 10, 4), 3
        )
        ratio = _multitask_params(FIVE, common.net_of(b, "wide")) / teacher_params
        assert 0.9 * paper < ratio < 1.15 * paper, (size, ratio)
        # wider than the 3-game net (the teacher's own trunk), which stays the default
        assert _multitask_params(FIVE, common.net_of(b, "wide")) > 2 * _multitask_params(
            FIVE, common.net_of(b, "teacher")
        )
    assert networks.MINATAR_MULTITASK_NETS["large-wide"].describe() == (
        "conv64x3/1 conv64x3/1 conv64x3/1 fc1500 +LN"
    )


@pytest.mark.long
def test_five_game_multitask_with_the_wide_trunk(tmp_path, monkeypatch):
    """All five MinAtar games (Seaquest's 10 channels pad the others) in one wide student: a
    row per method, game and seed, every head's scores finite, the report naming the shape.
    The multi-task DQN gets the same trunk (checked on its config; not trained here)."""
    seen = {}

    def dqn_stub(games, steps, eval_episodes, runs_dir, progress=True, mesh=None, net="x", seed=0):
        seen.update(games=games, net=net)
        return np.zeros((len(games), eval_episodes))

    monkeypatch.setattr(multitask_distillation, "multitask_dqn_scores", dqn_stub)
    b = common.budget(
        "smoke",
        games=FIVE,
        multitask_net="wide",
        dataset_states=1_024,
        updates=20,
        eval_every=20,
        seeds=2,
        eval_episodes=2,
    )
    md = multitask_distillation
    result = md.multitask(b, runs_dir=tmp_path, progress=False, keep_students=True)
    assert seen == {"games": FIVE, "net": "wide"}
    # each loss's students are kept (a stage stopped after NLL resumes at KL) and read back
    kept = sorted((tmp_path / "students").glob("multitask_*_s2"))
    assert [p.name.split("_")[-3] for p in kept] == ["kl", "nll"]

    def no_training(*args):
        raise AssertionError("trained again")

    monkeypatch.setattr(multitask_students.StudentsJob, "advance", no_training)
    again = md.multitask(b, runs_dir=tmp_path, progress=False, keep_students=True)
    same = jax.tree_util.tree_map(np.array_equal, again["students"], result["students"])
    assert all(jax.tree_util.tree_leaves(same)) and again["rows"] == result["rows"]
    manifest = json.loads((kept[0] / "manifest.json").read_text())
    (kept[0] / "manifest.json").write_text(json.dumps({**manifest, "games": FIVE[:4]}))
    with pytest.raises(
        checkpoint.CheckpointError, match=re.escape(kept[0].name) + ".*another config"
    ):
        md.multitask(b, runs_dir=tmp_path, progress=False)
    assert result["net"] == "wide" and result["channels_padded_to"] == 10
    assert result["params"] == _multitask_params(FIVE, "wide")
    rows = result["rows"]
    assert len(rows) == 2 * 5 * 2 + 5  # NLL and KL: games x seeds; the stub DQN: one seed
    assert {r["game"] for r in rows} == set(FIVE)
    assert all(np.isfinite(r["episode_scores"]).all() for r in rows)
    text = "\n".join(multitask_distillation.report_section(result))
    assert "One network for 5 games" in text and "wide: conv32x3/1 fc192 +LN" in text
    assert f"{result['params']:,} parameters" in text
    assert multitask_distillation.multitask_table(result)[-1] == {
        "game": "paper (10 Atari games, wider net)",
        "distilled-kl": 89.3,
    }


def test_the_multitask_dqn_takes_the_trunk():
    """The baseline's config carries the trunk, so its network is the student's."""
    config = teacher.default_config(FIVE[0], total_steps=20_000, net="large-wide")
    network = mt.build(FIVE, config.net)
    assert network.spec == networks.MINATAR_MULTITASK_NETS["large-wide"]
    assert network.num_actions == tuple(families.envs.spec(g).num_actions for g in FIVE)
    assert dataclasses.replace(config, net="teacher").net == "teacher"
    shapes = jax.eval_shape(lambda k: mt.init_params(network, k, FIVE), jax.random.PRNGKey(0))
    assert networks.count_params(shapes) == _multitask_params(FIVE, "large-wide")


@pytest.mark.parametrize(
    "folder", sorted((paths.data_dir() / "teachers").glob("*-large")), ids=lambda p: p.name
)
def test_every_shipped_large_teacher_has_its_reference(folder):
    """Each data/teachers/<env>-large: a complete large-teacher run with a reference beside it
    that matches its parameters (se within 3 % of the mean, or the cap)."""
    manifest = checkpoint.read_manifest(folder)
    assert manifest["status"] == "complete" and manifest["net"] == "large-teacher"
    policy = checkpoint.load(folder, env_id=manifest["env_id"])
    assert paths.shipped_teacher(policy.env_id, "large") == folder
    ref = paired.teacher_reference(policy, paths.runs_dir(), compute=False)
    assert ref["episodes"] == len(ref["episode_scores"]) >= paired.BATCH[True]
    assert ref["se"] <= paired.REL_SE * abs(ref["mean"]) or ref["episodes"] == paired.CAP[True]
