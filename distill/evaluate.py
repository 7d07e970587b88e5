"""Evaluation in the environment: per-episode undiscounted scores of an epsilon-greedy policy.

Protocol (Rusu et al. 2016, following Mnih et al. 2015): epsilon = 0.05.
- Atari: up to 30 no-op actions at the start of each episode (ale-py's `noop_max`), whole games
  (no life-loss resets), raw (unclipped) rewards, episodes capped at 108,000 frames. The paper
  also used human starts, which are not available here.
- MinAtar has no no-op starts: each episode starts from gymnax's own randomised reset with its
  own key, and epsilon = 0.05 keeps a greedy policy on a deterministic game from replaying one
  episode over and over. Episodes are capped by gymnax (1000 steps; Freeway 2500).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from distill import acting, envs, families, xla

EVAL_EPSILON = 0.05


@dataclasses.dataclass(frozen=True)
class Scores:
    """Per-episode scores with the summary a report needs."""

    env_id: str
    episodes: np.ndarray  # [n] undiscounted returns
    epsilon: float
    steps: int = 0  # agent steps taken by every env together (Atari; 0 where not counted)

    @property
    def mean(self) -> float:
        return float(np.mean(self.episodes))

    @property
    def std(self) -> float:
        return float(np.std(self.episodes))

    def summary(self) -> dict:
        e = self.episodes
        return {
            "env_id": self.env_id,
            "episodes": int(e.size),
            "epsilon": self.epsilon,
            "mean": self.mean,
            "std": self.std,
            "min": float(np.min(e)),
            "max": float(np.max(e)),
        }


def random_apply(num_actions: int) -> Callable:
    """An `apply(params, obs)` whose Q-values are all zero: with epsilon = 1, the random policy."""
    return lambda params, obs: jnp.zeros((obs.shape[0], num_actions), jnp.float32)


def make_gymnax_evaluator(env_id: str, apply_fn: Callable, num_episodes: int) -> Callable:
    """Jittable `(params, key, epsilon) -> [num_episodes]`: first-episode return per env."""
    env = envs.make(env_id)
    steps = env.spec.max_episode_steps

    def evaluate(params: Any, key: jax.Array, epsilon: jax.Array) -> jax.Array:
        k_reset, key = jax.random.split(key)
        obs, state = acting.graph_reset(env, k_reset, num_episodes)

        def step(carry, k):
            obs, state, total, running = carry
            k_act, k_env = jax.random.split(k)
            s = acting.graph_step(env, apply_fn, params, obs, state, k_act, k_env, epsilon)
            total = total + jnp.where(running, s.reward, 0.0)
            return (s.obs, s.env_state, total, running & ~s.done), None

        init = (obs, state, jnp.zeros(num_episodes), jnp.ones(num_episodes, bool))
        (_, _, total, _), _ = jax.lax.scan(step, init, jax.random.split(key, steps))
        return total

    return evaluate


def evaluate_gymnax(
    apply_fn: Callable,
    params: Any,
    env_id: str,
    episodes: int = 100,
    epsilon: float = EVAL_EPSILON,
    seed: int = 0,
) -> Scores:
    evaluator = xla.jit(make_gymnax_evaluator(env_id, apply_fn, episodes))
    total = evaluator(params, jax.random.PRNGKey(seed), jnp.float32(epsilon))
    return Scores(env_id, np.asarray(total, dtype=np.float64), float(epsilon))


def evaluate_atari(
    apply_fn: Callable,
    params: Any,
    env_id: str,
    episodes: int = 30,
    epsilon: float = EVAL_EPSILON,
    seed: int = 0,
    num_envs: int = 8,
    progress: bool = False,
) -> Scores:
    """Play `episodes` whole Atari games with `num_envs` env threads; raw rewards, no-op starts.

    Each env plays a fixed share of the episodes (their counts differ by at most one), decided
    before any is played: keeping the first `episodes` to finish would favour short games,
    which in most Atari games are the bad ones.
    """
    from tqdm.auto import tqdm

    num_envs = max(1, min(num_envs, episodes))
    env = envs.make_atari(env_id, num_envs, training=False)
    act = acting.host_actor(apply_fn, epsilon)
    key = jax.random.PRNGKey(seed)
    obs = envs.reset_in_env_order(env, seed)
    quota = [episodes // num_envs + (i < episodes % num_envs) for i in range(num_envs)]
    totals = np.zeros(num_envs)
    scores: list[list[float]] = [[] for _ in range(num_envs)]
    steps = 0
    bar = tqdm(total=episodes, desc=f"evaluate {env_id}", disable=not progress, unit="ep")
    try:
        while any(len(s) < q for s, q in zip(scores, quota, strict=True)):
            key, k = jax.random.split(key)
            _, action = act(params, obs, k)
            obs, reward, terminated, truncated = acting.host_step(env, action)
            steps += num_envs
            totals += reward
            ended = terminated | truncated
            for i in np.flatnonzero(ended):
                if len(scores[i]) < quota[i]:
                    scores[i].append(float(totals[i]))
                    bar.update(1)
                totals[i] = 0.0
    finally:
        bar.close()
        env.close()
    flat = np.asarray([x for s in scores for x in s], dtype=np.float64)
    return Scores(env_id, flat, float(epsilon), steps)


def evaluate_policy(
    policy, episodes: int, epsilon: float = EVAL_EPSILON, seed: int = 0, **kw
) -> Scores:
    """Evaluate a `distill.load`-ed policy in its own env."""
    if not families.of(policy.spec).in_graph:
        return evaluate_atari(
            policy.apply, policy.params, policy.env_id, episodes, epsilon, seed, **kw
        )
    return evaluate_gymnax(policy.apply, policy.params, policy.env_id, episodes, epsilon, seed)


def evaluate_random(env_id: str, episodes: int, seed: int = 0, **kw) -> Scores:
    """The uniform random policy's scores (epsilon = 1)."""
    spec = envs.spec(env_id)
    apply_fn = random_apply(spec.num_actions)
    if not families.of(spec).in_graph:
        return evaluate_atari(apply_fn, None, env_id, episodes, 1.0, seed, **kw)
    return evaluate_gymnax(apply_fn, None, env_id, episodes, 1.0, seed)
