"""Replay storage as JAX arrays, time-major per environment, with n-step sampling.

Row t of the buffer holds, for each of the `E` parallel envs, the observation o_t, the action a_t
taken in it, the reward r_t that followed and whether the episode ended there (done_t). The next
observation o_{t+1} is simply row t+1 (envs reset automatically, and a done cuts the return), so
each observation is stored once. The buffer is circular over rows; `pos` counts rows ever written.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp


class Replay(NamedTuple):
    obs: jax.Array  # [rows, envs, *obs_shape]
    action: jax.Array  # [rows, envs] int32
    reward: jax.Array  # [rows, envs] float32
    done: jax.Array  # [rows, envs] bool
    pos: jax.Array  # [] int32, rows written so far (absolute)


class NStepBatch(NamedTuple):
    obs_tm1: jax.Array  # [batch, *obs_shape]
    a_tm1: jax.Array  # [batch]
    r_t: jax.Array  # [batch] discounted n-step return, cut at the first done
    discount_t: jax.Array  # [batch] gamma^n, or 0 when the episode ended within n steps
    obs_t: jax.Array  # [batch, *obs_shape] observation n steps later


def init(rows: int, num_envs: int, obs_shape: tuple[int, ...], obs_dtype) -> Replay:
    """An empty buffer of `rows * num_envs` transitions."""
    return Replay(
        obs=jnp.zeros((rows, num_envs, *obs_shape), obs_dtype),
        action=jnp.zeros((rows, num_envs), jnp.int32),
        reward=jnp.zeros((rows, num_envs), jnp.float32),
        done=jnp.zeros((rows, num_envs), bool),
        pos=jnp.zeros((), jnp.int32),
    )


def add(replay: Replay, obs, action, reward, done) -> Replay:
    """Write one row: `[envs, ...]` arrays for one step of every env."""
    i = replay.pos % replay.obs.shape[0]
    return Replay(
        obs=replay.obs.at[i].set(obs.astype(replay.obs.dtype)),
        action=replay.action.at[i].set(action.astype(jnp.int32)),
        reward=replay.reward.at[i].set(reward.astype(jnp.float32)),
        done=replay.done.at[i].set(done),
        pos=replay.pos + 1,
    )


def can_sample(replay: Replay, n: int, stack: int = 1) -> jax.Array:
    """True once a full n-step transition (rows t-stack+1 .. t+n) is stored."""
    return replay.pos > n + stack - 1


def stacked(replay: Replay, t: jax.Array, env: jax.Array, stack: int) -> jax.Array:
    """Observations at absolute rows `t` `[batch]`; with `stack > 1`, rebuild frame stacks.

    With stacking, each row holds one frame `[H, W]` and the observation at t is frames
    t-stack+1 .. t `[batch, stack, H, W]`, oldest first; frames from before the episode's first
    row are zero, exactly as ale-py pads the stack after a reset.
    """
    rows = replay.obs.shape[0]
    if stack == 1:
        return replay.obs[t % rows, env]
    back = jnp.arange(stack - 1, -1, -1)  # [stack]: stack-1 .. 0 rows back
    idx = (t[:, None] - back[None, :]) % rows  # [batch, stack]
    frames = replay.obs[idx, env[:, None]]  # [batch, stack, H, W]
    # frame k rows back is valid iff no episode ended in rows t-k .. t-1
    ended = replay.done[(t[:, None] - 1 - jnp.arange(stack - 1)[None, :]) % rows, env[:, None]]
    valid_back = jnp.cumprod(1 - ended.astype(jnp.int32), axis=1)  # [batch, stack-1], k=1..
    valid = jnp.concatenate([valid_back[:, ::-1], jnp.ones_like(valid_back[:, :1])], axis=1)
    return frames * valid[:, :, None, None].astype(frames.dtype)


def sample_nstep(
    replay: Replay, key: jax.Array, batch_size: int, n: int, gamma: float, stack: int = 1
):
    """Uniform n-step transitions (Sutton & Barto 7.1; Hessel et al. 2018 multi-step DQN).

    r_t = sum_{k<n} gamma^k r_{t+k} * prod_{j<k} (1 - done_{t+j});
    discount_t = gamma^n * prod_{j<n} (1 - done_{t+j}).
    """
    rows, num_envs = replay.action.shape
    lo = jnp.maximum(replay.pos - rows, 0) + (stack - 1)
    count = jnp.maximum(replay.pos - n - lo, 1)
    k_t, k_e = jax.random.split(key)
    t = lo + jax.random.randint(k_t, (batch_size,), 0, 2**30) % count  # absolute rows
    env = jax.random.randint(k_e, (batch_size,), 0, num_envs)
    steps = (t[:, None] + jnp.arange(n)[None, :]) % rows  # [batch, n]
    rewards = replay.reward[steps, env[:, None]]
    dones = replay.done[steps, env[:, None]].astype(jnp.float32)
    alive = jnp.cumprod(1.0 - dones, axis=1)  # alive after step k
    alive_before = jnp.concatenate([jnp.ones((batch_size, 1)), alive[:, :-1]], axis=1)
    powers = gamma ** jnp.arange(n, dtype=jnp.float32)
    return NStepBatch(
        obs_tm1=stacked(replay, t, env, stack),
        a_tm1=replay.action[t % rows, env],
        r_t=jnp.sum(powers * alive_before * rewards, axis=1),
        discount_t=(gamma**n) * alive[:, -1],
        obs_t=stacked(replay, t + n, env, stack),
    )
