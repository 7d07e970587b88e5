"""Replay: rows written by `add`, n-step returns and discounts, wrap-around, frame stacks.

Observations encode the absolute row (and env) they were written at, so each sampled transition
says where it came from and can be checked against a plain-Python n-step return.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from distill import replay

GAMMA = 0.9
# Jitted once per shape: op-by-op dispatch of these small functions is slower than compiling them.
add = jax.jit(replay.add)
sample_nstep = jax.jit(replay.sample_nstep, static_argnames=("batch_size", "n", "gamma", "stack"))
stacked = jax.jit(replay.stacked, static_argnames=("stack",))


def fill(rows, rewards, dones, num_envs=1, frame_shape=(1,)):
    """A buffer with len(rewards) rows written; obs = 10 * t + env (+1 so that 0 means padding)."""
    buf = replay.init(rows, num_envs, frame_shape, jnp.float32)
    for t, (r, d) in enumerate(zip(rewards, dones, strict=True)):
        code = 10.0 * t + np.arange(num_envs) + 1.0  # [envs]
        obs = np.broadcast_to(
            code.reshape(num_envs, *([1] * len(frame_shape))), (num_envs, *frame_shape)
        )
        buf = add(
            buf,
            jnp.asarray(obs),
            jnp.full((num_envs,), t % 3),
            jnp.full((num_envs,), r, jnp.float32),
            jnp.full((num_envs,), d),
        )
    return buf


def decode(obs):
    """obs code -> (absolute row, env)."""
    code = np.asarray(obs).reshape(obs.shape[0], -1)[:, 0].round().astype(int) - 1
    return code // 10, code % 10


def expected_nstep(rewards, dones, t, n, gamma):
    """sum_k gamma^k r_{t+k} until the first done (inclusive), and gamma^n or 0."""
    ret, alive = 0.0, True
    for k in range(n):
        ret += gamma**k * rewards[t + k]
        if dones[t + k]:
            alive = False
            break
    return ret, (gamma**n if alive else 0.0)


def test_add_writes_rows_and_counts():
    buf = replay.init(4, 2, (3,), jnp.float32)
    buf = add(
        buf, jnp.ones((2, 3)), jnp.array([1, 0]), jnp.array([0.5, -1.0]), jnp.array([True, False])
    )
    assert int(buf.pos) == 1
    np.testing.assert_array_equal(buf.obs[0], np.ones((2, 3)))
    np.testing.assert_array_equal(buf.action[0], [1, 0])
    np.testing.assert_array_equal(buf.reward[0], [0.5, -1.0])
    np.testing.assert_array_equal(buf.done[0], [True, False])
    assert buf.action.dtype == jnp.int32 and buf.reward.dtype == jnp.float32
    np.testing.assert_array_equal(buf.obs[1:], 0.0)


@pytest.mark.parametrize(
    ("dones", "r_t", "discount_t"),
    [
        ([0, 0, 0, 0], 1 + 0.5 * 2 + 0.25 * 4, 0.125),  # no end: full 3-step return
        ([1, 0, 0, 0], 1.0, 0.0),  # ended on the first step: its reward only
        ([0, 1, 0, 0], 1 + 0.5 * 2, 0.0),  # reward 4 is from the next episode: excluded
        ([0, 0, 1, 0], 1 + 0.5 * 2 + 0.25 * 4, 0.0),  # ended on the last step of the window
        ([0, 0, 0, 1], 1 + 0.5 * 2 + 0.25 * 4, 0.125),  # a done at t+n is outside the window
    ],
)
def test_nstep_single_valid_row(dones, r_t, discount_t):
    # 4 rows written, n = 3: only t = 0 has its n following rows stored, so every sample is t = 0
    buf = fill(8, [1.0, 2.0, 4.0, 8.0], [bool(d) for d in dones])
    assert bool(replay.can_sample(buf, 3))
    batch = sample_nstep(buf, jax.random.PRNGKey(0), batch_size=16, n=3, gamma=0.5)
    np.testing.assert_array_equal(decode(batch.obs_tm1)[0], 0)
    np.testing.assert_array_equal(decode(batch.obs_t)[0], 3)
    np.testing.assert_array_equal(batch.a_tm1, 0)
    np.testing.assert_allclose(batch.r_t, r_t, rtol=1e-6)
    np.testing.assert_allclose(batch.discount_t, discount_t, rtol=1e-6)


def test_can_sample_needs_n_plus_stack_rows():
    buf = fill(8, [1.0] * 3, [False] * 3)
    assert not bool(replay.can_sample(buf, 3))
    assert bool(replay.can_sample(fill(8, [1.0] * 4, [False] * 4), 3))
    assert not bool(replay.can_sample(fill(8, [1.0] * 6, [False] * 6), 3, stack=4))
    assert bool(replay.can_sample(fill(8, [1.0] * 7, [False] * 7), 3, stack=4))


def test_nstep_every_sample_matches_reference():
    rewards = [float(t + 1) for t in range(14)]
    dones = [t in (5, 11, 12) for t in range(14)]
    n = 3
    buf = fill(16, rewards, dones)
    batch = sample_nstep(buf, jax.random.PRNGKey(1), batch_size=256, n=n, gamma=GAMMA)
    t, env = decode(batch.obs_tm1)
    assert set(t.tolist()) == set(range(14 - n))  # every complete transition, none beyond
    np.testing.assert_array_equal(env, 0)
    np.testing.assert_array_equal(decode(batch.obs_t)[0], t + n)
    np.testing.assert_array_equal(batch.a_tm1, t % 3)
    ref = np.array([expected_nstep(rewards, dones, ti, n, GAMMA) for ti in t])
    np.testing.assert_allclose(batch.r_t, ref[:, 0], rtol=1e-6)
    np.testing.assert_allclose(batch.discount_t, ref[:, 1], rtol=1e-6)
    assert (np.asarray(batch.discount_t) == 0).any() and (np.asarray(batch.discount_t) > 0).any()


def test_wraparound_never_samples_overwritten_rows():
    rows, written, n, envs = 8, 21, 2, 3
    rewards = [float(t) for t in range(written)]
    dones = [t % 4 == 3 for t in range(written)]
    buf = fill(rows, rewards, dones, num_envs=envs)
    assert int(buf.pos) == written
    batch = sample_nstep(buf, jax.random.PRNGKey(2), batch_size=512, n=n, gamma=GAMMA)
    t, env = decode(batch.obs_tm1)
    oldest = written - rows  # rows 0 .. 12 have been overwritten
    assert t.min() == oldest and t.max() == written - n - 1
    assert set(env.tolist()) == set(range(envs))
    t_next, env_next = decode(batch.obs_t)
    np.testing.assert_array_equal(t_next, t + n)
    np.testing.assert_array_equal(env_next, env)
    np.testing.assert_array_equal(batch.a_tm1, t % 3)
    ref = np.array([expected_nstep(rewards, dones, ti, n, GAMMA) for ti in t])
    np.testing.assert_allclose(batch.r_t, ref[:, 0], rtol=1e-6)
    np.testing.assert_allclose(batch.discount_t, ref[:, 1], rtol=1e-6)


def frame(t):
    return 10.0 * t + 1.0  # the code `fill` writes for row t, env 0


def test_stacked_pads_before_episode_start_oldest_first():
    dones = [t == 4 for t in range(10)]  # episode 1: rows 0..4; episode 2 starts at row 5
    buf = fill(16, [0.0] * 10, dones, frame_shape=(2, 2))
    t = jnp.array([3, 4, 5, 6, 7, 8])
    got = stacked(buf, t, jnp.zeros(6, jnp.int32), stack=4)
    assert got.shape == (6, 4, 2, 2)
    expected = [
        [frame(0), frame(1), frame(2), frame(3)],
        [frame(1), frame(2), frame(3), frame(4)],  # row 4 ends its episode but belongs to it
        [0, 0, 0, frame(5)],  # first row of an episode: the three older frames are padding
        [0, 0, frame(5), frame(6)],
        [0, frame(5), frame(6), frame(7)],
        [frame(5), frame(6), frame(7), frame(8)],
    ]
    np.testing.assert_array_equal(
        got, np.broadcast_to(np.array(expected)[:, :, None, None], got.shape)
    )


def test_stacked_single_frame_is_the_row():
    buf = fill(8, [0.0] * 3, [True] * 3)
    got = stacked(buf, jnp.array([2, 0]), jnp.zeros(2, jnp.int32), stack=1)
    np.testing.assert_array_equal(got[:, 0], [frame(2), frame(0)])


def test_sample_with_stack_after_wraparound():
    rows, written, n, stack = 8, 20, 1, 4
    dones = [t == 16 for t in range(written)]
    buf = fill(rows, [1.0] * written, dones, frame_shape=(1, 1))
    batch = sample_nstep(buf, jax.random.PRNGKey(3), batch_size=256, n=n, gamma=GAMMA, stack=stack)
    assert batch.obs_tm1.shape == (256, stack, 1, 1)
    newest = np.asarray(batch.obs_tm1)[:, -1, 0, 0]
    t = (newest.round().astype(int) - 1) // 10
    # the whole stack of t must still be stored: t - stack + 1 >= the oldest kept row
    assert set(t.tolist()) == set(range(written - rows + stack - 1, written - n))
    obs = np.asarray(batch.obs_tm1)[:, :, 0, 0]
    for ti, stack_i in zip(t, obs, strict=True):
        want = [frame(s) if s > 16 or ti <= 16 else 0.0 for s in range(ti - stack + 1, ti + 1)]
        np.testing.assert_array_equal(stack_i, want)
    np.testing.assert_array_equal(np.asarray(batch.obs_t)[:, -1, 0, 0], [frame(x + n) for x in t])
