"""The Atari multi-task student (`distill.multitask_atari`): the paper's 3-game network counted by
hand, each game's frame stacks in its minibatches, a longer run continuing a shorter one bit for
bit, a missing teacher refused before any work, heads scored on their games' paired episodes, and
the experiment end to end at a smoke budget."""

from __future__ import annotations

import dataclasses
import io
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import killed_after

from distill import (
    checkpoint,
    cli,
    dataset,
    envs,
    multitask_atari,
    networks,
    plateau,
    student,
    teacher,
)
from distill import multitask as mt
from distill.config import ConfigError
from distill.experiments import common
from distill.experiments import multitask_distillation as md

PONG, BREAKOUT, INVADERS = common.ATARI_GAMES
TWO = (PONG, BREAKOUT)


def _conv(k: int, c_in: int, c_out: int) -> int:
    return k * k * c_in * c_out + c_out


def _dense(n_in: int, n_out: int) -> int:
    return n_in * n_out + n_out


def test_the_three_game_atari_network_counted_by_hand():
    """Trunk (Nature DQN convs + fc 512) + per game fc2 of 128 + a controller of its minimal
    action set (the teachers'): Pong 6, Breakout 4, Space Invaders 6."""
    trunk = _conv(8, 4, 32) + _conv(4, 32, 64) + _conv(3, 64, 64) + _dense(7 * 7 * 64, 512)
    assert trunk == 1_684_128 and _dense(512, 128) == 65_664
    actions = [envs.spec(g).num_actions for g in common.ATARI_GAMES]
    assert actions == [6, 4, 6]
    want = trunk + 3 * 65_664 + 129 * sum(actions)
    assert want == 1_883_184
    assert md.multitask_params(common.ATARI_GAMES, "teacher") == want
    # the paper's 1,882,668 fits 12 actions in all; 18 each would give 1,888,086
    assert want - 129 * (sum(actions) - 12) == 1_882_668
    assert trunk + 3 * 65_664 + 129 * 54 == 1_888_086


def test_atari_heads_take_frame_stacks_as_they_are():
    """No padding on Atari (every game's observations are uint8 [4, 84, 84]); one kind of game
    per network."""
    assert mt.on_host(TWO) and not mt.on_host(("Breakout-MinAtar",))
    obs = jnp.arange(2 * 4 * 84 * 84, dtype=jnp.uint8).reshape(2, 4, 84, 84)
    assert mt.to_input(TWO)(obs) is obs
    with pytest.raises(ConfigError, match="one kind"):
        mt.build((PONG, "Breakout-MinAtar"))
    network = mt.build(common.ATARI_GAMES, conv_grad="native")
    assert network.num_actions == (6, 4, 6) and network.spec == networks.ATARI_NETS["teacher"]


def test_each_game_samples_its_own_frame_stacks():
    """An Atari game's minibatch rebuilds stacks of 4 consecutive frames from single stored
    frames, none from the 3 history rows alone, zeros before an episode's start; a MinAtar
    game's minibatch takes whole maps."""
    rows, n = 12, 3
    frames = np.broadcast_to(
        np.arange(rows, dtype=np.uint8)[:, None, None, None], (rows, n, 84, 84)
    )
    done = np.zeros((rows, n), bool)
    done[6, 1] = True  # env 1's episode ends at row 6: its row 7 starts a new one
    data = {
        "obs": jnp.asarray(frames),
        "q": jnp.asarray(np.arange(rows * n * 4, dtype=np.float32).reshape(rows, n, 4)),
        "action": jnp.zeros((rows, n), jnp.int32),
        "reward": jnp.zeros((rows, n), jnp.float32),
        "done": jnp.asarray(done),
    }
    obs, q = mt.sample_game(data, jax.random.PRNGKey(0), 256, BREAKOUT)
    obs, q = np.asarray(obs), np.asarray(q)
    assert obs.shape == (256, 4, 84, 84) and obs.dtype == np.uint8 and q.shape == (256, 4)
    t = obs[:, -1, 0, 0].astype(int)  # the newest frame holds its row
    env = (q[:, 0].astype(int) // 4) % n
    assert t.min() >= 3 and set(t) == set(range(3, rows))
    for i in range(256):
        want = np.arange(t[i] - 3, t[i] + 1)
        if env[i] == 1 and t[i] >= 7:
            want = np.where(want >= 7, want, 0)  # frames of the episode before are blanked
        np.testing.assert_array_equal(obs[i, :, 0, 0], want)
    minatar = {**data, "obs": jnp.zeros((rows, n, 10, 10, 4), bool)}
    obs, _ = mt.sample_game(minatar, jax.random.PRNGKey(0), 8, "Breakout-MinAtar")
    assert obs.shape == (8, 10, 10, 4)


def _atari_dataset(folder, game: str, rows: int = 8, n: int = 2) -> dataset.Dataset:
    """A finished dataset of random single frames and Q-values, as `generate` writes one."""
    rng, actions = np.random.default_rng(len(game)), envs.spec(game).num_actions
    arrays = {
        "obs": rng.integers(0, 255, (rows, n, 84, 84), dtype=np.uint8),
        "q": rng.normal(size=(rows, n, actions)).astype(np.float32),
        "action": rng.integers(0, actions, (rows, n)).astype(np.int32),
        "reward": np.zeros((rows, n), np.float32),
        "done": np.zeros((rows, n), bool),
        "history_obs": np.zeros((3, n, 84, 84), np.uint8),  # the 3 frames before the first row
        "history_done": np.ones((3, n), bool),
    }
    buf, name = io.BytesIO(), f"shard_00000_{rows}.npz"
    np.savez(buf, **arrays)
    manifest = {
        **{"kind": "dataset", "status": "complete", "env_id": game, "num_actions": actions},
        **{"obs_shape": [4, 84, 84], "stack": 4, "shards": [name], "rows": rows},
        **{"num_envs": n, "teacher": {"path": "t"}, "config": {}, "metrics": [], "wall_s": 0.0},
    }
    checkpoint.write_checkpoint(folder, {name: buf.getvalue()}, manifest)
    return dataset.load_dataset(str(folder))


def test_a_longer_run_continues_a_shorter_one_bit_for_bit(tmp_path, monkeypatch):
    """A student of 8 updates continued from the same config's run of 4 in the cache, stopped
    after 2 more and resumed, ends with the parameters and learning curve of one trained 8
    updates from the start, and says what it continued; a shorter run of another config is not
    continued."""
    sets = [_atari_dataset(tmp_path / g.replace("/", "-"), g) for g in TWO]
    config = student.StudentConfig(loss="kl", net="net3", updates=8, eval_every=2, batch_size=4)
    short = dataclasses.replace(config, updates=4)

    def trained(cache, c):
        params = multitask_atari.distil_seeds(c, sets, 1, cache, progress=False)
        return params, checkpoint.read_manifest(multitask_atari.seed_folder(cache, c, sets, 0))

    want, whole = trained(tmp_path / "whole", config)
    assert "continued_from" not in whole and whole["updates"] == 8
    _, first = trained(tmp_path / "parts", short)
    shorter = multitask_atari.shorter_run(tmp_path / "parts", config, sets, 0)
    assert shorter == multitask_atari.seed_folder(tmp_path / "parts", short, sets, 0)
    folder = multitask_atari.seed_folder(tmp_path / "parts", config, sets, 0)
    with monkeypatch.context() as m:  # killed after its first checkpoint (6 updates)
        m.setattr(checkpoint, "write_checkpoint", killed_after(1, checkpoint.write_checkpoint, []))
        with pytest.raises(KeyboardInterrupt):
            multitask_atari.fit(
                config, sets, folder, progress=False, checkpoint_every_s=0, start_from=shorter
            )
    assert checkpoint.read_manifest(folder)["updates"] == 6
    got, then = trained(tmp_path / "parts", config)  # resumed without being told what it continues
    assert then["continued_from"] == str(shorter)
    assert then["updates"] == 8 and then["wall_s"] > first["wall_s"]
    for a, b in zip(jax.tree_util.tree_leaves(want), jax.tree_util.tree_leaves(got), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert [r["updates"] for r in then["metrics"]] == [2, 4, 6, 8]
    assert then["metrics"][:2] == first["metrics"]  # carried over, then 4 more updates trained
    assert _timeless(then["metrics"]) == _timeless(whole["metrics"])
    other = dataclasses.replace(config, lr=config.lr / 2)
    assert multitask_atari.shorter_run(tmp_path / "parts", other, sets, 0) is None
    assert multitask_atari.shorter_run(tmp_path / "parts", short, sets, 0) is None


def test_each_head_is_still_learning_when_its_agreement_still_rose():
    """Per seed and game, from the training curve's last two blocks (`plateau.RISE`)."""
    rise = plateau.RISE
    rows = [
        {"seed": 0, "updates": 4, f"agreement {PONG}": 0.5, f"agreement {BREAKOUT}": 0.7},
        {
            "seed": 0,
            "updates": 8,
            f"agreement {PONG}": 0.6,
            f"agreement {BREAKOUT}": 0.7 + rise / 2,
        },
        {"seed": 1, "updates": 4, f"agreement {PONG}": 0.9, f"agreement {BREAKOUT}": 0.2},
    ]
    assert multitask_atari.still_learning(rows, TWO) == {(0, PONG): True, (0, BREAKOUT): False}


def _timeless(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k != "wall_s"} for r in rows]


def test_a_missing_atari_teacher_is_refused_before_any_work(tmp_path, monkeypatch, capsys):
    """Quick and full need shipped teachers: each missing game named, with the command that
    trains it, in one line, before any folder or training; smoke trains its own tiny ones."""
    monkeypatch.setenv("DISTILL_DATA", str(tmp_path / "data"))
    (tmp_path / "data" / "teachers" / "ALE-Pong-v5").mkdir(parents=True)
    (tmp_path / "data" / "teachers" / "ALE-Pong-v5" / "manifest.json").write_text("{}")

    def no_training(*args, **kwargs):
        raise AssertionError("an Atari teacher is not trained inside a quick experiment")

    monkeypatch.setattr(teacher, "fit_atari", no_training)
    for name in ("quick", "full"):
        b = common.ATARI_BUDGETS[name]
        assert common.missing_teachers(b.games, b) == [BREAKOUT, INVADERS]
        out = tmp_path / name
        argv = ["reproduce", "--suite", "atari", "--budget", name, "--out", str(out)]
        assert cli.main(argv) == 2
        (line,) = capsys.readouterr().err.strip().splitlines()
        assert "no teacher shipped for ALE/Breakout-v5, ALE/SpaceInvaders-v5" in line
        for game, folder in ((BREAKOUT, "ALE-Breakout-v5"), (INVADERS, "ALE-SpaceInvaders-v5")):
            assert f"`distill teacher --env {game} --seed 0 --out runs/teachers/{folder}`" in line
        assert not out.exists()
    with pytest.raises(ConfigError, match="no teacher shipped for ALE/Breakout-v5"):
        common.ensure_teacher(BREAKOUT, common.ATARI_BUDGETS["quick"], tmp_path / "runs")
    smoke = dataclasses.replace(common.ATARI_BUDGETS["smoke"], games=common.ATARI_GAMES)
    assert common.missing_teachers(smoke.games, smoke) == []


def test_multitask_dqn_steps_are_refused_on_atari_before_any_stage(tmp_path, capsys):
    """The multi-task DQN has no Atari form: a number of its steps is refused by the multi-task
    stage, and by `distill reproduce` before its first stage; other stages take the budget."""
    b = dataclasses.replace(common.ATARI_BUDGETS["smoke"], games=TWO, multitask_dqn_steps=1000)
    with pytest.raises(ConfigError, match="multitask_dqn_steps=1000: .*MinAtar only"):
        md.multitask(b, runs_dir=tmp_path / "runs")
    md.check_budget(dataclasses.replace(b, multitask_dqn_steps=None))
    for field, value, hint in (
        ("regime", "dagger", "--regime offline"),
        ("multitask_net", "wide", "--multitask-net teacher"),
    ):
        with pytest.raises(ConfigError, match=f"{field}='{value}'.*{hint}"):
            md.check_budget(dataclasses.replace(b, multitask_dqn_steps=None, **{field: value}))
    argv = ["reproduce", "--suite", "atari", "--budget", "smoke", "--out", str(tmp_path / "o")]
    argv += ["--games", ",".join(TWO), "--multitask-dqn-steps", "1000"]
    assert cli.main(argv) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert "--multitask-dqn-steps none" in line
    assert not (tmp_path / "runs").exists() and not (tmp_path / "o" / "teachers").exists()


# two seeds' heads play a whole Pong and Breakout game each: 31 s under a load of 13 on 2 cores
def test_atari_heads_are_scored_per_seed_game_and_episode():
    network = mt.build(TWO)
    keys = jax.random.split(jax.random.PRNGKey(0), 2)
    params = jax.vmap(lambda k: mt.init_params(network, k, TWO))(keys)
    scores = md.heads_scores(network, params, TWO, episodes=1)
    assert scores.shape == (2, 2, 1) and np.isfinite(scores).all()
    assert np.abs(scores[:, 0]).max() <= 21  # Pong's score range
    assert scores[:, 1].min() >= 0  # Breakout's


@pytest.mark.long  # tiny teachers and datasets of two games, and their students: minutes
def test_atari_multitask_smoke(tmp_path, monkeypatch):
    b = dataclasses.replace(common.ATARI_BUDGETS["smoke"], games=TWO)
    result = md.multitask(b, runs_dir=tmp_path, progress=False)
    assert result["params"] == 1_684_128 + 2 * 65_664 + 129 * (6 + 4)
    assert result["channels_padded_to"] is None and result["multitask_dqn_steps"] is None
    assert result["actions"] == [6, 4]
    rows = result["rows"]
    for method in ("distilled-nll", "distilled-kl"):
        for game in TWO:
            mine = [r for r in rows if r["method"] == method and r["game"] == game]
            assert [r["seed"] for r in mine] == list(range(b.seeds))
            for r in mine:
                assert len(r["episode_scores"]) == b.eval_episodes
                assert np.isfinite(r["score"]) and np.isfinite(r["teacher_score"])
    assert len(rows) == 2 * len(TWO) * b.seeds
    assert all(isinstance(r["still_learning"], bool) for r in rows)  # from 2 blocks of curve
    assert [s["method"] for s in result["summary"]] == ["distilled-nll", "distilled-kl"]
    section = "\n".join(md.report_section(result))
    assert md.DQN_ON_ATARI in section and "Pong-v5 6, ALE/Breakout-v5 4" in section
    # the students' learning curves: a row per loss, seed and block of eval_every x games updates
    curve = result["training"]
    blocks = b.fixed_student_updates // b.eval_every
    assert len(curve) == 2 * b.seeds * blocks
    assert [r["updates"] for r in curve[:blocks]] == [
        (i + 1) * b.eval_every * len(TWO) for i in range(blocks)
    ]
    for r in curve:
        assert r["student_loss"] in ("nll", "kl") and np.isfinite(r["training_loss"])
        assert all(0 <= r[f"agreement {g}"] <= 1 for g in TWO)
    assert "![training agreement](multitask/training_agreement.png)" in section
    md.write_multitask(result, tmp_path / "multitask")
    for name in ("multitask.png", "training_agreement.png", "training_agreement.csv"):
        assert (tmp_path / "multitask" / name).stat().st_size > 100
    # the students were cached (one folder per loss): a second run reads them back
    students = sorted((tmp_path / "students").glob("multitask_Pong-v5+Breakout-v5_teacher_*"))
    assert len(students) == 2
    monkeypatch.setattr(multitask_atari.MultiStudentJob, "advance", _no_training)
    again = md.multitask(b, runs_dir=tmp_path, progress=False)
    assert json.dumps(again["rows"]) == json.dumps(rows)  # (a teacher's 0 gives nan %)


def _no_training(*args):
    raise AssertionError("a finished multi-task student trained again")
