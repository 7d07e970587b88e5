"""Acting: how a policy picks actions and how one step of acting runs, written once.

Every loop in the workbench that lets a network act (teacher training, dataset generation,
evaluation, explanation, multi-task training) does the same thing each step: Q-values from the
network, an epsilon-greedy action, a step of the vectorised env. Here it is, once per stepper of
`distill.families`:

- in the graph (gymnax): `graph_step` is a pure function for `lax.scan` bodies;
- on the host (ale-py): `host_actor` jits the action choice and `host_step` steps the emulator
  threads, with results in env order.

Callers split their own keys (`k_act`, `k_env`), so each loop keeps its random stream.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from distill import envs, xla

ApplyFn = Callable[[Any, jax.Array], jax.Array]  # (params, obs [envs, ...]) -> q [envs, actions]


def epsilon_greedy(key: jax.Array, q: jax.Array, epsilon: jax.Array) -> jax.Array:
    """Actions `[batch]` from Q-values `[batch, actions]`: random with probability epsilon.

    Greedy ties go to the lowest action index (jnp.argmax).
    """
    k_explore, k_action = jax.random.split(key)
    greedy = jnp.argmax(q, axis=-1)
    random = jax.random.randint(k_action, greedy.shape, 0, q.shape[-1])
    explore = jax.random.uniform(k_explore, greedy.shape) < epsilon
    return jnp.where(explore, random, greedy)


class Step(NamedTuple):
    """One step of `n` envs acting: what was seen, chosen and returned."""

    q: jax.Array  # [n, actions] Q-values of the observation acted on
    action: jax.Array  # [n] int
    obs: jax.Array  # [n, ...] next observation (after an episode's end: the next one's first)
    env_state: Any  # the envs' state after the step
    reward: jax.Array  # [n] float32
    done: jax.Array  # [n] bool: the episode ended (terminated or truncated)
    info: dict  # {"terminated": [n], "truncated": [n]}


def graph_step(
    env,
    apply_fn: ApplyFn,
    params: Any,
    obs: jax.Array,
    env_state: Any,
    k_act: jax.Array,
    k_env: jax.Array,
    epsilon: jax.Array | float,
) -> Step:
    """Act epsilon-greedily in `n` gymnax envs (a `distill.envs.GymnaxEnv`): pure, jittable.

    `obs` `[n, ...]`; `k_act` picks the actions, `k_env` is split over the envs' steps.
    """
    n = obs.shape[0]
    q = apply_fn(params, obs)
    action = epsilon_greedy(k_act, q, epsilon)
    next_obs, env_state, reward, done, info = jax.vmap(env.step)(
        jax.random.split(k_env, n), env_state, action
    )
    return Step(q, action, next_obs, env_state, reward, done, info)


def graph_reset(env, key: jax.Array, n: int) -> tuple[jax.Array, Any]:
    """`n` gymnax envs reset with keys split from `key`: (obs `[n, ...]`, env_state)."""
    return jax.vmap(env.reset)(jax.random.split(key, n))


def host_actor(apply_fn: ApplyFn, epsilon: float | None = None, **jit_kw) -> Callable:
    """A jitted `(params, obs, key[, epsilon]) -> (q, action)` for host loops.

    With `epsilon` given it is fixed (closed over); without it, it is the fourth argument (a
    schedule that changes every step).
    """
    if epsilon is None:

        def act(params, obs, key, eps):
            q = apply_fn(params, obs)
            return q, epsilon_greedy(key, q, eps)

    else:

        def act(params, obs, key):
            q = apply_fn(params, obs)
            return q, epsilon_greedy(key, q, epsilon)

    return xla.jit(act, **jit_kw)


def host_step(env, action) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Step an ale-py `AtariVectorEnv` with `[n]` actions in env-id order.

    Returns (obs, reward, terminated, truncated), each in env-id order (`envs.in_env_order`).
    Reset with `envs.reset_in_env_order`.
    """
    return envs.in_env_order(*env.step(np.asarray(action, dtype=np.int32)))
