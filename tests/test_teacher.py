"""DQN teacher: config validation, exploration, the pure training run (jit, vmap, chunks), and
`fit` with its files, refusals, interruption and bit-identical resume, on CartPole.

Compiling a training scan is the expensive part here, so a few builders are shared: the small
run's `Trainer` is built once, and so its jitted functions compile once per shape.
"""

import functools
import json
import os
import signal
import threading
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import distill
from distill import checkpoint, envs, evaluate, paths, runs, teacher, teacher_jobs
from distill.config import ConfigError

ENV = "CartPole-v1"
# 500 vector steps of 8 envs; updates start at step 100 (learning_starts 800 env steps).
SMALL = dict(total_steps=4_000, learning_starts=800)
CHUNK = 50


@functools.cache
def cached_make_train(config: teacher.DQNConfig) -> teacher.Trainer:
    return teacher.make_train(config)


def small_config() -> teacher.DQNConfig:
    return teacher.default_config(ENV, **SMALL)


def leaves(tree):
    return [np.asarray(x) for x in jax.tree_util.tree_leaves(tree)]


def npz_arrays(path):
    with np.load(path) as archive:
        return {k: archive[k] for k in archive.files}


# ---------------------------------------------------------------------------- config


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("total_steps", -5),
        ("total_steps", 4),  # fewer than num_envs = 8
        ("total_steps", True),
        ("gamma", 1.5),
        ("net", "net9"),
        ("buffer_size", 39),  # must hold num_envs * (n_step + 2) = 40
        ("n_step", 0),
        ("learning_starts", -1),
        ("eps_end", -0.1),
        ("lr", 0.0),
    ],
)
def test_config_rejects_bad_values_naming_the_field(field, value):
    with pytest.raises(ConfigError, match=rf"^{field}="):
        teacher.DQNConfig(env_id=ENV, num_envs=8, **{field: value})


def test_config_accepts_the_smallest_buffer():
    assert (
        teacher.DQNConfig(
            env_id=ENV, num_envs=8, n_step=3, buffer_size=40, batch_size=32
        ).buffer_size
        == 40
    )


def test_config_unknown_env_lists_close_matches():
    with pytest.raises(ValueError, match="Breakout-MinAtar") as err:
        teacher.DQNConfig(env_id="Breakout-Minatar")
    assert "close matches" in str(err.value)


def test_default_config_presets():
    cart = teacher.default_config(ENV)
    assert (cart.total_steps, cart.num_envs, cart.buffer_size, cart.lr) == (60_000, 8, 50_000, 1e-3)
    minatar = teacher.default_config("Breakout-MinAtar")
    assert minatar.updates_per_step == 2
    assert minatar.num_envs == teacher.DQNConfig.num_envs
    pong = teacher.default_config("ALE/Pong-v5")
    assert (pong.total_steps, pong.batch_size, pong.target_update_every) == (2_000_000, 32, 2_000)
    assert [envs.spec(e).family for e in (ENV, "Breakout-MinAtar", "ALE/Pong-v5")] == [
        "vector",
        "minatar",
        "atari",
    ]
    over = teacher.default_config(ENV, lr=3e-4, seed=7)
    assert (over.lr, over.seed, over.num_envs) == (3e-4, 7, 8)
    assert over.iterations == 60_000 // 8


def test_default_config_unknown_field():
    with pytest.raises(ConfigError, match="learning_rate"):
        teacher.default_config(ENV, learning_rate=1e-3)


def test_default_config_validates_overrides():
    with pytest.raises(ConfigError, match="^gamma="):
        teacher.default_config(ENV, gamma=1.5)


# ---------------------------------------------------------------------------- exploration


def test_epsilon_schedule():
    config = teacher.default_config(ENV)  # decays over 0.3 * 60,000 = 18,000 env steps
    steps = jnp.array([0, 9_000, 18_000, 30_000, 60_000])
    np.testing.assert_allclose(
        teacher.epsilon_at(config, steps), [1.0, 0.505, 0.01, 0.01, 0.01], rtol=1e-6
    )
    instant = teacher.default_config(ENV, eps_decay_fraction=0.0, eps_start=0.5, eps_end=0.1)
    np.testing.assert_allclose(teacher.epsilon_at(instant, jnp.array([0, 1, 100])), [0.5, 0.1, 0.1])


def test_epsilon_greedy_greedy_and_uniform():
    q = jax.random.normal(jax.random.PRNGKey(0), (4_000, 4))
    key = jax.random.PRNGKey(1)
    epsilon_greedy = jax.jit(teacher.epsilon_greedy)  # one compile instead of op-by-op dispatch
    np.testing.assert_array_equal(epsilon_greedy(key, q, 0.0), jnp.argmax(q, axis=-1))
    actions = np.asarray(epsilon_greedy(key, q, 1.0))
    counts = np.bincount(actions, minlength=4)
    assert counts.sum() == 4_000 and np.all(np.abs(counts - 1_000) < 150), counts
    # at epsilon 1 the action ignores Q: it agrees with argmax only by chance (about 1 in 4)
    assert 0.2 < np.mean(actions == np.asarray(jnp.argmax(q, axis=-1))) < 0.3


# ---------------------------------------------------------------------------- pure training run


@pytest.fixture(scope="module")
def single_runs():
    """jit(train) on two keys: ([2] keys, [(state, metrics)] per key)."""
    trainer = cached_make_train(small_config())
    train = jax.jit(trainer.train)
    keys = jax.random.split(jax.random.PRNGKey(0), 2)
    return keys, [jax.block_until_ready(train(k)) for k in keys]


def test_train_runs_jitted(single_runs):
    config = small_config()
    _, [(state, metrics), _] = single_runs
    for field in metrics:
        assert field.shape == (config.iterations,)
    assert int(state.iteration) == config.iterations == 500
    start = config.learning_starts // config.num_envs  # first iteration with an update
    assert int(state.updates) == config.iterations - start
    loss = np.asarray(metrics.loss)
    assert np.isnan(loss[:start]).all() and np.isfinite(loss[start:]).all()
    eps = np.asarray(metrics.epsilon)
    assert eps[0] == 1.0 and np.all(np.diff(eps) <= 0)
    assert int(np.sum(metrics.episodes)) > 0 and float(np.sum(metrics.return_sum)) > 0
    assert all(np.isfinite(x).all() for x in leaves(state.params))
    assert int(state.replay.pos) == config.iterations


def test_vmap_over_seeds_matches_single_runs(single_runs):
    keys, singles = single_runs
    trainer = cached_make_train(small_config())
    state, metrics = jax.jit(jax.vmap(trainer.train))(keys)
    assert metrics.loss.shape == (2, small_config().iterations)
    per_seed = [leaves(jax.tree_util.tree_map(lambda x, i=i: x[i], state.params)) for i in (0, 1)]
    assert not all(np.allclose(a, b) for a, b in zip(*per_seed, strict=True))
    for i, (single_state, _) in enumerate(singles):
        for got, want in zip(per_seed[i], leaves(single_state.params), strict=True):
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_chunked_run_equals_whole_train(single_runs):
    keys, [(whole, whole_metrics), _] = single_runs
    trainer = cached_make_train(small_config())
    run = jax.jit(trainer.run, static_argnums=1)
    state = trainer.init(keys[0])
    losses = []
    for _ in range(small_config().iterations // CHUNK):
        state, metrics = run(state, CHUNK)
        losses.append(np.asarray(metrics.loss))
    for got, want in zip(leaves(state), leaves(whole), strict=True):
        np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(np.concatenate(losses), whole_metrics.loss)


def test_make_train_refuses_atari():
    with pytest.raises(ConfigError, match="fit_atari"):
        teacher.make_train(teacher.default_config("ALE/Pong-v5"))


# ---------------------------------------------------------------------------- fit


class _ScriptedAtari:
    """send/recv of a 2-env AtariVectorEnv that replays `steps` (rewards, terminated, lives),
    returned in reverse env-id order as ale-py's threads may."""

    def __init__(self, steps):
        self.steps = iter(steps)

    def send(self, action):
        pass

    def recv(self):
        reward, terminated, lives = (np.array(x)[::-1] for x in next(self.steps))
        info = {"env_id": np.array([1, 0]), "lives": lives}
        return np.zeros((2, 4, 84, 84), np.uint8), reward, terminated, np.zeros(2, bool), info


def test_a_lost_life_cuts_replay_but_not_the_game():
    class Train(NamedTuple):
        params: tuple = ()
        key: jax.Array = jax.random.PRNGKey(0)
        replay: tuple = ()

    env = _ScriptedAtari(
        [  # env 0 loses a life at step 2 and its game ends at step 3; env 1 plays on
            ([1.0, 0.0], [False, False], [5, 3]),
            ([0.0, 1.0], [False, False], [4, 3]),
            ([2.0, 0.0], [True, False], [5, 3]),
        ]
    )
    ended = []
    store = lambda replay, frame, action, reward, done: (*replay, done.tolist())  # noqa: E731
    s = teacher_jobs.HostLoop(Train(), 0, np.zeros((2, 4, 84, 84), np.uint8), np.zeros(2))
    act = lambda params, obs, key, it: np.zeros(2, np.int32)  # noqa: E731
    for _ in range(3):
        ended.append(teacher_jobs.act_step_record(env, act, store, s, lambda *_: None))
    assert list(s.train.replay) == [[False, False], [True, False], [True, False]]
    assert ended == [[], [], [3.0]]  # the whole game's return, past the lost life
    assert s.episode_return.tolist() == [0.0, 1.0] and s.lives.tolist() == [5, 3]


def test_fit_atari_init_from_continues_a_teacher_whose_checkpoint_is_lost(tmp_path):
    """`init_from`: the shipped Pong teacher's parameters and env steps start the run, replay is
    refilled for `learning_starts` env steps, then the updates move the parameters by Adam-sized
    steps (a fresh network would sit orders of magnitude away)."""
    source = checkpoint.load(paths.shipped_teacher("ALE/Pong-v5"))
    steps = source.manifest["env_steps"]  # 554,840: 69,355 vector steps of 8
    config = teacher.default_config(
        "ALE/Pong-v5",
        total_steps=steps + 96,
        buffer_size=320,
        learning_starts=64,
        target_update_every=20,
        init_from=source.path,
    )
    out = str(tmp_path / "t")
    policy = teacher.fit_atari(config, out, eval_episodes=1, progress=False, log_every=4)
    rows = policy.manifest["metrics"][len(source.manifest["metrics"]) :]
    assert policy.manifest["metrics"][: -len(rows)] == source.manifest["metrics"]  # carried on
    assert policy.manifest["wall_s"] > source.manifest["wall_s"]  # 11,222 s, and this run's
    assert policy.manifest["env_steps"] == steps + 96
    assert [r["env_steps"] for r in rows] == [554_848, 554_880, 554_912, steps + 96]
    # replay refilled for 64 env steps (8 vector steps) first: updates in the last 4 only (8)
    assert np.isnan([r["loss"] for r in rows[:2]]).all() and np.isfinite(rows[2]["loss"])
    assert policy.manifest["config"]["init_from"] == source.path
    pairs = zip(leaves(policy.params), leaves(source.params), strict=True)
    moved = [np.max(np.abs(a - b)) for a, b in pairs]
    assert 0 < max(moved) <= 8 * config.lr * 1.01, moved  # Adam: each step at most about lr


def test_init_from_is_refused_where_it_cannot_hold(tmp_path):
    pong = str(paths.shipped_teacher("ALE/Pong-v5"))
    with pytest.raises(ConfigError, match="only Atari"):
        teacher.fit(
            teacher.default_config(ENV, **SMALL, init_from=pong),
            str(tmp_path / "g"),
            progress=False,
        )
    breakout = teacher.default_config("ALE/Breakout-v5", init_from=pong)
    with pytest.raises(checkpoint.CheckpointError, match="made for env 'ALE/Pong-v5'"):
        teacher.fit_atari(breakout, str(tmp_path / "b"), progress=False)
    short = teacher.default_config("ALE/Pong-v5", total_steps=30_000, init_from=pong)
    with pytest.raises(ConfigError, match="env_steps 554840 must be a count below"):
        teacher.fit_atari(short, str(tmp_path / "s"), progress=False)


@pytest.fixture(scope="module")
def cartpole_teacher(tmp_path_factory):
    """The CartPole preset (60k env steps) trained by `fit`: (folder, policy)."""
    folder = tmp_path_factory.mktemp("teacher") / "t"
    policy = teacher.fit(teacher.default_config(ENV), str(folder), progress=False, eval_episodes=50)
    return folder, policy


def test_fit_teacher_beats_random(cartpole_teacher):
    _, policy = cartpole_teacher
    ev, rnd = policy.manifest["evaluation"], policy.manifest["random_evaluation"]
    assert ev["episodes"] == rnd["episodes"] == 50
    assert ev["epsilon"] == evaluate.EVAL_EPSILON and rnd["epsilon"] == 1.0
    assert 10 < rnd["mean"] < 40
    assert ev["mean"] > 2 * rnd["mean"], (ev, rnd)


def test_fit_writes_a_finished_checkpoint(cartpole_teacher):
    folder, policy = cartpole_teacher
    names = {p.name for p in folder.iterdir()}
    params_file = checkpoint.path_of(folder, "params.npz").name
    assert names == {"manifest.json", params_file, "metrics.csv", "metrics.json", "tb"}
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["status"] == "complete"
    assert manifest["env_steps"] == 60_000
    assert set(manifest["files"]) == {"params.npz"}
    assert manifest["config"] == distill.config.to_dict(teacher.default_config(ENV))
    rows = json.loads((folder / "metrics.json").read_text())
    assert len(rows) == 60_000 // 8 // 100  # one row per chunk of 100 vector steps
    assert rows[-1]["env_steps"] == 60_000
    header = (folder / "metrics.csv").read_text().splitlines()[0]
    assert set(header.split(",")) == set(rows[0]) >= {"env_steps", "mean_return", "loss"}
    assert policy.kind == "teacher" and policy.env_id == ENV


def test_fit_refuses_a_finished_folder(cartpole_teacher):
    folder, _ = cartpole_teacher
    with pytest.raises(ConfigError, match="already holds a finished teacher"):
        teacher.fit(teacher.default_config(ENV), str(folder), progress=False)


def test_fit_resume_on_a_finished_folder_loads_it(cartpole_teacher):
    folder, policy = cartpole_teacher
    again = teacher.fit(teacher.default_config(ENV), str(folder), resume=True, progress=False)
    for a, b in zip(leaves(again.params), leaves(policy.params), strict=True):
        np.testing.assert_array_equal(a, b)


def test_loaded_teacher_q_values(cartpole_teacher):
    folder, _ = cartpole_teacher
    policy = distill.load(folder)
    obs = jax.random.normal(jax.random.PRNGKey(0), (5, 4))
    q = policy.q_values(obs)
    assert q.shape == (5, 2) and np.isfinite(np.asarray(q)).all()
    np.testing.assert_allclose(jax.jit(policy.q_values)(obs), q, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(jax.jit(policy.apply)(policy.params, obs), q, rtol=1e-5, atol=1e-6)


@pytest.fixture
def fast_fit(monkeypatch):
    """`fit` reusing one Trainer per config (so one compile) and skipping evaluation.

    Evaluation is covered by the CartPole teacher above; here only the training state matters.
    """
    monkeypatch.setattr(teacher, "make_train", cached_make_train)

    def scores(*args, **kwargs):
        return evaluate.Scores(ENV, np.array([1.0, 2.0]), 0.05)

    monkeypatch.setattr(evaluate, "evaluate_gymnax", scores)
    monkeypatch.setattr(evaluate, "evaluate_random", scores)


def test_fit_interrupted_then_resumed_is_bit_identical(tmp_path, monkeypatch, fast_fit):
    if threading.current_thread() is not threading.main_thread():
        pytest.skip("signal handlers need the main thread")
    config = small_config()
    kw = dict(chunk_iterations=CHUNK, progress=False)

    # SIGTERM arrives during the first chunk: fit saves a checkpoint after it and stops
    chunk_rows = teacher_jobs.chunk_rows
    handler_before = signal.getsignal(signal.SIGTERM)
    calls = []

    def chunk_rows_then_sigterm(*args, **kwargs):
        if not calls:
            os.kill(os.getpid(), signal.SIGTERM)
        calls.append(1)
        return chunk_rows(*args, **kwargs)

    with monkeypatch.context() as m:
        m.setattr(teacher_jobs, "chunk_rows", chunk_rows_then_sigterm)
        with pytest.raises(runs.Interrupted, match="^SIGTERM: checkpoint saved at env step 400"):
            teacher.fit(config, str(tmp_path / "cut"), **kw)
    assert signal.getsignal(signal.SIGTERM) == handler_before  # fit restored the handler
    manifest = json.loads((tmp_path / "cut" / "manifest.json").read_text())
    assert manifest["status"] == "running" and manifest["env_steps"] == CHUNK * 8
    assert set(manifest["files"]) == {"params.npz", "train_state.npz"}
    assert checkpoint.path_of(tmp_path / "cut", "train_state.npz").is_file()
    assert len(json.loads((tmp_path / "cut" / "metrics.json").read_text())) == 1

    with pytest.raises(ConfigError, match="--resume"):
        teacher.fit(config, str(tmp_path / "cut"), **kw)
    with pytest.raises(distill.CheckpointError, match="another config"):
        teacher.fit(config, str(tmp_path / "cut"), resume=True, chunk_iterations=25)

    resumed = teacher.fit(config, str(tmp_path / "cut"), resume=True, **kw)
    whole = teacher.fit(config, str(tmp_path / "whole"), **kw)

    for folder in ("cut", "whole"):
        manifest = json.loads((tmp_path / folder / "manifest.json").read_text())
        assert manifest["status"] == "complete" and manifest["env_steps"] == config.total_steps
        assert not list((tmp_path / folder).glob("train_state*.npz"))
        assert len(manifest["metrics"]) == config.iterations // CHUNK
    cut, full = (
        npz_arrays(checkpoint.path_of(tmp_path / "cut", "params.npz")),
        npz_arrays(checkpoint.path_of(tmp_path / "whole", "params.npz")),
    )
    assert cut.keys() == full.keys()
    for name in cut:
        assert np.array_equal(cut[name], full[name]), name
    for a, b in zip(leaves(resumed.params), leaves(whole.params), strict=True):
        np.testing.assert_array_equal(a, b)

    def metric_rows(folder):  # the same chunks in the same order; only wall_s may differ
        rows = json.loads((tmp_path / folder / "metrics.json").read_text())
        return [{k: v for k, v in row.items() if k != "wall_s"} for row in rows]

    assert metric_rows("cut") == metric_rows("whole")
