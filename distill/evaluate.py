"""Evaluation in the environment: per-episode undiscounted scores of an epsilon-greedy policy.

Protocol (Rusu et al. 2016, following Mnih et al. 2015): epsilon = 0.05.
- Atari: up to 30 no-op actions at the start of each episode (ale-py's `noop_max`), whole games
  (no life-loss resets), raw (unclipped) rewards, episodes capped at 108,000 frames. The paper
  also used human starts, which are not available here.
- MinAtar has no no-op starts: each episode starts from gymnax's own randomised reset with its
  own key, and epsilon = 0.05 keeps a greedy policy on a deterministic game from replaying one
  episode over and over. Episodes are capped by gymnax (1000 steps; Freeway 2500).

Paired evaluation (`episode_keys`, `make_episode_evaluator`): every episode is played from its
own key, so two policies are scored on the same episodes, and `precise_scores` plays batches
until the standard error of the mean is a small fraction of it (the teachers' references).
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


# ---------------------------------------------------------------------------- paired evaluation


def episode_keys(seed: int, start: int, n: int) -> jax.Array:
    """Keys of episodes `start .. start + n - 1` of evaluation seed `seed`: `[n, 2]`.

    Episode e's key is `fold_in(PRNGKey(seed), e)`: it depends on (seed, e) alone, so the first
    N episodes of a long evaluation are exactly an N-episode evaluation with the same seed.
    """
    base = jax.random.PRNGKey(seed)
    return jax.vmap(lambda e: jax.random.fold_in(base, e))(jnp.arange(start, start + n))


def make_episode_evaluator(env_id: str, apply_fn: Callable) -> Callable:
    """Jittable `(params, keys [n, 2], epsilon) -> [n]`: episode i's return, played from keys[i].

    Each episode draws its reset, its exploration and its env steps from its own key only, so
    two policies given the same keys start from the same states and see the same randomness as
    long as they act alike (a paired comparison), and an episode's score does not depend on
    how many others are evaluated with it.
    """
    env = envs.make(env_id)
    steps = env.spec.max_episode_steps

    def act(key: jax.Array, q: jax.Array, epsilon: jax.Array) -> jax.Array:  # q [actions]
        return acting.epsilon_greedy(key, q[None], epsilon)[0]

    def evaluate(params: Any, keys: jax.Array, epsilon: jax.Array) -> jax.Array:
        n = keys.shape[0]
        k_reset, k_play = jnp.moveaxis(jax.vmap(jax.random.split)(keys), 1, 0)  # [n, 2] each
        obs, state = jax.vmap(env.reset)(k_reset)

        def step(carry, t):
            obs, state, total, running = carry
            k = jax.vmap(lambda kk: jax.random.split(jax.random.fold_in(kk, t)))(k_play)
            action = jax.vmap(act, in_axes=(0, 0, None))(k[:, 0], apply_fn(params, obs), epsilon)
            obs, state, reward, done, _ = jax.vmap(env.step)(k[:, 1], state, action)
            total = total + jnp.where(running, reward, 0.0)
            return (obs, state, total, running & ~done), None

        init = (obs, state, jnp.zeros(n), jnp.ones(n, bool))
        (_, _, total, _), _ = jax.lax.scan(step, init, jnp.arange(steps))
        return total

    return evaluate


def standard_error(scores: np.ndarray) -> float:
    """Standard error of the mean of `[n]` scores: sample std (ddof 1) / sqrt(n); inf for n < 2."""
    scores = np.asarray(scores, np.float64)
    if scores.size < 2:
        return float("inf")
    return float(np.std(scores, ddof=1) / np.sqrt(scores.size))


def precise_scores(
    play: Callable[[int, int], np.ndarray],
    rel_se: float = 0.03,
    batch: int = 100,
    cap: int = 2_000,
) -> np.ndarray:
    """Per-episode scores, played `batch` at a time until the standard error of their mean is at
    most `rel_se` of its magnitude (se <= rel_se * |mean|), or `cap` episodes.

    `play(start, n)` returns the `[n]` scores of episodes `start .. start + n - 1` (the same
    episode schedule whatever the batch, see `episode_keys`).
    """
    if batch < 2 or cap < batch:
        raise ValueError(f"batch={batch}, cap={cap}: need 2 <= batch <= cap")
    scores = np.zeros(0)
    while scores.size < cap:
        n = min(batch, cap - scores.size)
        scores = np.concatenate([scores, np.asarray(play(scores.size, n), np.float64)])
        if standard_error(scores) <= rel_se * abs(scores.mean()):
            break
    return scores
