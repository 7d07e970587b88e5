"""Tests for distill.envs: specs, id errors, the pure-JAX gymnax path and ale-py's Atari envs."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from distill import envs

# env id -> (observation shape, actions).
GYMNAX = {
    "Breakout-MinAtar": ((10, 10, 4), 3),
    "SpaceInvaders-MinAtar": ((10, 10, 6), 4),
    "Asterix-MinAtar": ((10, 10, 4), 5),
    "Freeway-MinAtar": ((10, 10, 7), 3),
    "Seaquest-MinAtar": ((10, 10, 10), 6),
    "CartPole-v1": ((4,), 2),
}
# The paper's ten games and their minimal action sets.
PAPER_ATARI = {
    "ALE/Breakout-v5": 4,
    "ALE/BeamRider-v5": 9,
    "ALE/Enduro-v5": 9,
    "ALE/Freeway-v5": 3,
    "ALE/MsPacman-v5": 9,
    "ALE/Pong-v5": 6,
    "ALE/Qbert-v5": 6,
    "ALE/Riverraid-v5": 18,
    "ALE/Seaquest-v5": 18,
    "ALE/SpaceInvaders-v5": 6,
}
# Compiling a MinAtar step takes 1-2 s for these and 4-7 s for Asterix, Freeway and Seaquest on a
# 2-core machine; the slow three are traced (shapes and dtypes through jit/vmap/scan), not run.
EXECUTED = ["Breakout-MinAtar", "SpaceInvaders-MinAtar", "CartPole-v1"]
TRACED = [e for e in GYMNAX if e not in EXECUTED]


def test_id_tables_cover_the_paper():
    assert set(envs.GYMNAX_IDS) == set(GYMNAX)
    assert set(envs.PAPER_ATARI_IDS) == set(PAPER_ATARI)


@pytest.mark.parametrize("env_id", list(GYMNAX))
def test_gymnax_spec_and_reset(env_id):
    obs_shape, num_actions = GYMNAX[env_id]
    s = envs.spec(env_id)
    assert s.env_id == env_id
    assert s.backend == "gymnax" and not s.is_atari
    assert s.obs_shape == obs_shape
    assert s.obs_dtype == "float32"
    assert s.num_actions == num_actions
    assert s.max_episode_steps > 0

    env = envs.make(env_id)
    key = jax.random.PRNGKey(0)
    # The rollout test below resets the EXECUTED envs for real; Freeway's reset alone takes 2 s to
    # compile. The others are traced: the same shapes and dtypes, without running.
    real = env_id in TRACED and env_id != "Freeway-MinAtar"
    obs = env.reset(key)[0] if real else jax.eval_shape(env.reset, key)[0]
    assert obs.shape == obs_shape
    assert obs.dtype == jnp.dtype(s.obs_dtype)


@pytest.mark.parametrize(
    "bad, suggestion",
    [("Breakout-Minatar", "Breakout-MinAtar"), ("ALE/Pongg-v5", "ALE/Pong-v5")],
)
def test_unknown_id_suggests_close_match(bad, suggestion):
    # The message also lists every supported id; the suggestion must come first among the matches.
    with pytest.raises(ValueError, match=rf"{bad!r}; close matches: {suggestion}\b"):
        envs.spec(bad)
    with pytest.raises(ValueError, match=rf"close matches: {suggestion}\b"):
        envs.make(bad)


@pytest.mark.parametrize("bad", ["NoSuchGame", "ALE/pong-v5", "ALE/Pong-v4", 3])
def test_unknown_id_raises(bad):
    with pytest.raises(ValueError, match="env id"):
        envs.spec(bad)


@pytest.mark.parametrize("env_id", list(PAPER_ATARI))
def test_paper_atari_specs(env_id):
    s = envs.spec(env_id)
    assert s.backend == "ale" and s.is_atari
    assert s.num_actions == PAPER_ATARI[env_id]
    assert s.obs_shape == (4, 84, 84)
    assert s.obs_dtype == "uint8"
    assert s.max_episode_steps == 108_000 // 4
    assert s.safe_name == env_id.replace("/", "-")
    assert "/" not in s.safe_name


def test_make_refuses_atari():
    with pytest.raises(ValueError, match="make_atari"):
        envs.make("ALE/Pong-v5")


# --- the gymnax path: jit, vmap, scan -------------------------------------------------------------

NUM_ENVS, NUM_STEPS = 8, 50


def _random_rollout(env, key):
    """Reset NUM_ENVS envs and take NUM_STEPS uniform random actions, all in one lax.scan."""
    n = env.spec.num_actions
    reset_key, scan_key = jax.random.split(key)
    obs0, state = jax.vmap(env.reset)(jax.random.split(reset_key, NUM_ENVS))

    def body(state, key):
        action_key, step_key = jax.random.split(key)
        action = jax.random.randint(action_key, (NUM_ENVS,), 0, n)
        obs, state, reward, done, info = jax.vmap(env.step)(
            jax.random.split(step_key, NUM_ENVS), state, action
        )
        return state, (obs, reward, done, info["terminated"], info["truncated"])

    _, traj = jax.lax.scan(body, state, jax.random.split(scan_key, NUM_STEPS))
    return obs0, traj


# XLA's backend optimisations take half the compile time of a MinAtar step and buy nothing for
# one 50-step rollout.
FAST_COMPILE = {"xla_backend_optimization_level": 0}


@functools.cache
def _jitted_rollout(env_id):
    """The jitted rollout of one env id and its result for key 0, compiled once per session."""
    env = envs.make(env_id)
    key = jax.random.PRNGKey(0)
    compiled = jax.jit(lambda k: _random_rollout(env, k)).lower(key).compile(FAST_COMPILE)
    return env, jax.device_get(compiled(key))


def _check_rollout(env, obs0, obs, reward, done, terminated, truncated):
    shape = env.spec.obs_shape
    assert obs0.shape == (NUM_ENVS, *shape)
    assert obs.shape == (NUM_STEPS, NUM_ENVS, *shape)
    assert obs.dtype == obs0.dtype == jnp.dtype(env.spec.obs_dtype)
    assert reward.shape == done.shape == (NUM_STEPS, NUM_ENVS)
    assert reward.dtype == jnp.float32
    for flag in (done, terminated, truncated):
        assert flag.shape == (NUM_STEPS, NUM_ENVS)
        assert flag.dtype == jnp.bool_


@pytest.mark.parametrize("env_id", TRACED)
def test_gymnax_jit_vmap_scan_traced(env_id):
    env = envs.make(env_id)
    obs0, traj = jax.eval_shape(jax.jit(lambda k: _random_rollout(env, k)), jax.random.PRNGKey(0))
    _check_rollout(env, obs0, *traj)


@pytest.mark.parametrize("env_id", EXECUTED)
def test_gymnax_jit_vmap_scan(env_id):
    env, (obs0, (obs, reward, done, terminated, truncated)) = _jitted_rollout(env_id)
    _check_rollout(env, obs0, obs, reward, done, terminated, truncated)
    assert np.all(np.isfinite(reward))
    assert np.all(np.isfinite(obs))
    np.testing.assert_array_equal(done, terminated | truncated)
    # The envs move: frames change over the rollout and differ from the first one.
    assert not np.array_equal(obs[-1], obs0)


def test_cartpole_rollout_resets_and_vmap_matches_single():
    env, (_, (obs, reward, done, *_)) = _jitted_rollout("CartPole-v1")
    # A random policy drops the pole within 50 steps in most of 8 envs.
    assert done.any()
    np.testing.assert_array_equal(reward, 1.0)
    # Automatic reset: after a done, obs is a fresh start state, uniform in [-0.05, 0.05]^4.
    assert np.all(np.abs(obs[done]) <= 0.05)

    # Vectorising changes nothing: a vmapped step equals each env stepped on its own.
    key = jax.random.PRNGKey(1)
    obs0, state = jax.jit(jax.vmap(env.reset))(jax.random.split(key, 4))
    assert len(np.unique(np.asarray(obs0), axis=0)) == 4
    keys, action = jax.random.split(key, 4), jnp.array([0, 1, 0, 1])
    batched = jax.jit(jax.vmap(env.step))(keys, state, action)
    single_step = jax.jit(env.step)
    for i in range(4):
        state_i = jax.tree_util.tree_map(lambda x, i=i: x[i], state)
        single = single_step(keys[i], state_i, action[i])
        for a, b in zip(
            jax.tree_util.tree_leaves(single), jax.tree_util.tree_leaves(batched), strict=True
        ):
            np.testing.assert_allclose(a, b[i], rtol=1e-6)


# --- Atari (ale-py) ------------------------------------------------------------------------------


def test_atari_pong_steps():
    env = envs.make_atari("ALE/Pong-v5", 2, training=True)
    try:
        assert env.single_action_space.n == 6
        obs, info = env.reset(seed=0)
        assert obs.shape == (2, 4, 84, 84)
        assert obs.dtype == np.uint8
        np.testing.assert_array_equal(np.sort(info["env_id"]), [0, 1])
        rng = np.random.default_rng(0)
        for _ in range(20):
            obs, reward, terminated, truncated, info = env.step(rng.integers(0, 6, 2))
            assert obs.shape == (2, 4, 84, 84) and obs.dtype == np.uint8
            assert np.all((reward >= -1) & (reward <= 1))
            assert terminated.dtype == truncated.dtype == np.bool_
        assert obs.any()  # frames are not blank
    finally:
        env.close()


def _space_invaders_rewards(training):
    env = envs.make_atari("ALE/SpaceInvaders-v5", 2, training=training)
    try:
        env.reset(seed=0)
        rng = np.random.default_rng(0)
        return np.concatenate([env.step(rng.integers(0, 6, 2))[1] for _ in range(100)])
    finally:
        env.close()


def test_atari_reward_clipping_in_training_only():
    # Space Invaders pays 5..30 points per invader: clipping is visible, unlike in Pong.
    assert _space_invaders_rewards(training=False).max() > 1
    train = _space_invaders_rewards(training=True)
    assert train.max() == 1
    assert np.all((train >= -1) & (train <= 1))


def test_atari_training_game_goes_on_after_a_lost_life():
    # ale-py's episodic_life resets the whole game on a life loss; training envs must not use it:
    # Breakout's lives fall 5 -> 4 with no episode end, and the frame count keeps growing.
    env = envs.make_atari("ALE/Breakout-v5", 1, training=True)
    try:
        _, info = env.reset(seed=0)
        assert envs.lives_in_env_order(info).tolist() == [5]
        for _ in range(2_000):  # FIRE then random play: the ball is lost within a few hundred
            _, _, terminated, truncated, after = env.step(np.array([1]))
            assert not (terminated | truncated).any()
            if after["lives"][0] < 5:
                break
        assert after["lives"][0] == 4
        assert after["episode_frame_number"][0] > info["episode_frame_number"][0]
        lost = envs.life_lost(np.array([5]), after["lives"], np.array([False]))
        assert lost.tolist() == [True]
    finally:
        env.close()


def test_life_lost_only_while_the_game_goes_on():
    before, after = np.array([3, 3, 1, 2]), np.array([2, 3, 5, 2])
    game_over = np.array([False, False, True, False])
    assert envs.life_lost(before, after, game_over).tolist() == [True, False, False, False]
    assert envs.life_lost(None, after, game_over).tolist() == [False] * 4


def test_atari_async_send_recv():
    env = envs.make_atari("ALE/Pong-v5", 4, batch_size=2)
    try:
        obs, info = env.reset(seed=0)
        assert obs.shape == (2, 4, 84, 84)
        for _ in range(10):
            env.send(np.zeros(2, np.int64))
            obs, reward, terminated, truncated, info = env.recv()
            assert obs.shape == (2, 4, 84, 84) and obs.dtype == np.uint8
            assert reward.shape == terminated.shape == (2,)
            ids = info["env_id"]
            assert ids.shape == (2,)
            assert len(set(ids.tolist())) == 2
            assert np.all((ids >= 0) & (ids < 4))
        # Not asserted: that every env comes back. ale-py 0.12's async pool can starve one
        # (Arcade-Learning-Environment issue #641).
    finally:
        env.close()


@pytest.mark.parametrize("num_envs, batch_size", [(0, 0), (2, 3), (2, -1)])
def test_make_atari_rejects_bad_sizes(num_envs, batch_size):
    with pytest.raises(ValueError, match=rf"{num_envs}, {batch_size}"):
        envs.make_atari("ALE/Pong-v5", num_envs, batch_size=batch_size)


def test_in_env_order_sorts_every_array_by_env_id():
    obs = np.array([[2.0], [0.0], [1.0]])
    out = envs.in_env_order(
        obs, np.array([20, 0, 10]), np.array([1, 0, 0]), np.array([0, 0, 1]), {"env_id": [2, 0, 1]}
    )
    np.testing.assert_array_equal(out[0][:, 0], [0, 1, 2])
    np.testing.assert_array_equal(out[1], [0, 10, 20])
    np.testing.assert_array_equal(out[2], [0, 0, 1])
    np.testing.assert_array_equal(out[3], [0, 1, 0])


def test_evaluate_atari_gives_each_env_its_share(monkeypatch):
    """7 episodes over 3 envs: 3 + 2 + 2 whole (short, capped) games and the steps counted."""
    from distill import evaluate

    monkeypatch.setattr(envs, "ATARI_MAX_FRAMES", 160)  # about 40 agent steps a game
    try:
        scores = evaluate.evaluate_atari(
            evaluate.random_apply(6), None, "ALE/Pong-v5", episodes=7, epsilon=1.0, num_envs=3
        )
    finally:
        envs.spec.cache_clear()  # no 40-step Pong spec left for later tests
    assert scores.episodes.shape == (7,)
    assert np.all(scores.episodes <= 0) and np.all(scores.episodes >= -21)
    # 3 envs step together until the one with 3 games is done: 30-40 agent steps a game
    assert 3 * 3 * 30 <= scores.steps <= 3 * 3 * 40


def test_action_names():
    assert envs.action_names("ALE/Pong-v5") == (
        "NOOP",
        "FIRE",
        "RIGHT",
        "LEFT",
        "RIGHTFIRE",
        "LEFTFIRE",
    )
    assert len(envs.action_names("ALE/Breakout-v5")) == envs.spec("ALE/Breakout-v5").num_actions
    assert envs.action_names("Breakout-MinAtar") == ("NOOP", "LEFT", "RIGHT")
    assert envs.action_names("CartPole-v1") == ("a0", "a1")
