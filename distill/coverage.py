"""Where in their episodes a teacher dataset's states lie: staggered starts and coverage.

Envs that all start from reset together and stop when the count is reached record only the
openings of episodes: 20,000 states from 64 envs are 312 steps an env, the first 312 of every
env's first episode. A dataset must sample the teacher's own state distribution, its long-run
play at epsilon 0.05, whatever its size. Staggered starts do that: before recording, env `i`
plays `o_i ~ U[0, W)` steps of the teacher's own epsilon-greedy play from a fresh episode. With
`W` the longest episode, time-in-episode is then spread as in long play (exactly uniform for
fixed-length games such as Freeway; in general close to the renewal distribution, in which the
age `t` of the current episode has density proportional to `P(episode length > t)`).

In the graph the warm-up is a scan of `W` masked steps: env `i` stays at its reset state until
step `W - o_i`, then steps, so every env and key follows one reproducible stream. On the host
(ale-py) every env steps every step, so env `i` instead restarts its episode (a masked reset)
before step `W - o_i`.

Coverage, recorded in the dataset's manifest: the episodes completed while recording, their mean
length, and a histogram of the time-in-episode `t` (steps since the episode's reset) of the
stored states.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from distill import acting, envs

ATARI_STAGGER = 2_000
"""Atari's default W in agent steps (8,000 frames, about 2 minutes of play): episodes can last
27,000 agent steps, but a trained teacher's typically end within a few thousand, and every env
plays all W warm-up steps on the host (a 262,144-state dataset from 64 envs records 4,096 rows,
so W = 2,000 costs half as much play again)."""

HIST_BINS = 20  # time-in-episode histogram: equal bins from 0 to the latest t a state can have


def default_stagger(spec: envs.EnvSpec) -> int:
    """W when the config leaves it unset: the longest episode in graph envs, else ATARI_STAGGER."""
    return ATARI_STAGGER if spec.backend == "ale" else int(spec.max_episode_steps)


def hist_edges(spec: envs.EnvSpec, stagger: int | None = None, rows: int | None = None):
    """Time-in-episode bin edges `[HIST_BINS + 1]` (ints), from 0 to the latest step a stored
    state can have: the env's longest episode, or sooner `stagger + rows` (the warm-up, then
    `rows` recorded steps an env; on Atari 3,562 steps for 100,000 states from 64 envs, where
    the longest episode, 27,000, would put every state of a short game in the first bin)."""
    top = spec.max_episode_steps
    if stagger is not None and rows is not None:
        top = min(top, stagger + rows)
    return np.round(np.linspace(0, top, HIST_BINS + 1)).astype(np.int64)


def shard_row(t: np.ndarray, done: np.ndarray, edges: np.ndarray) -> dict:
    """One shard's coverage: states, episodes completed, their summed length, t histogram.

    `t`, `done` `[rows, envs]`: the stored states' steps since reset and whether the step
    taken from each ended its episode (so an episode ending at `t` lasted `t + 1` steps).
    """
    counts, _ = np.histogram(np.minimum(t, edges[-1] - 1), bins=edges)
    return {
        "states": int(t.size),
        "episodes": int(done.sum()),
        "episode_steps": int((t[done] + 1).sum()),
        "t_sum": int(t.sum()),
        "t_counts": [int(c) for c in counts],
    }


def summarise(rows: list[dict], edges: np.ndarray, stagger: int) -> dict:
    """The manifest's `coverage` from the shards' rows (`shard_row`)."""
    episodes = sum(r["episodes"] for r in rows)
    steps = sum(r["episode_steps"] for r in rows)
    counts = np.sum([r["t_counts"] for r in rows], axis=0).astype(int)
    states = int(counts.sum())
    centres = (edges[:-1] + edges[1:]) / 2
    if all("t_sum" in r for r in rows):  # exact; shards recorded before it: bin centres
        t_sum = float(sum(r["t_sum"] for r in rows))
    else:
        t_sum = float(centres @ counts)
    return {
        "stagger": stagger,
        "episodes": episodes,
        "mean_episode_length": round(steps / episodes, 2) if episodes else None,
        "mean_t": round(t_sum / max(states, 1), 2),
        "t_edges": [int(e) for e in edges],
        "t_counts": [int(c) for c in counts],
    }


def summary_line(coverage: dict | None) -> str:
    """One line for `distill dataset`: stagger, episodes, mean length, where states lie."""
    if not coverage:
        return "coverage: not recorded (a dataset made before it was)"
    counts, edges = np.asarray(coverage["t_counts"]), np.asarray(coverage["t_edges"])
    cum = np.cumsum(counts) / max(counts.sum(), 1)
    median = int(edges[1:][np.searchsorted(cum, 0.5)])
    length = coverage["mean_episode_length"]
    return (
        f"coverage: stagger W={coverage['stagger']}, {coverage['episodes']:,} episodes completed"
        f" (mean length {length if length is not None else 'n/a'}), time-in-episode mean "
        f"{coverage['mean_t']}, median <= {median}, {cum[0]:.0%} in its first bin [0, {edges[1]})"
    )


def _where_active(active: jax.Array, new: Any, old: Any) -> Any:
    """Per env: `new` where `active` `[n]`, else `old` (pytrees of `[n, ...]` leaves)."""

    def pick(a, b):
        return jnp.where(active.reshape(active.shape + (1,) * (a.ndim - 1)), a, b)

    return jax.tree_util.tree_map(pick, new, old)


def make_graph_warmup(env, apply_fn: acting.ApplyFn, epsilon: float, window: int):
    """`warmup(params, state) -> state`: the staggered starts of `GenState`-like `state`.

    `state` has `env_state`, `obs` `[n, ...]`, `key` and `t` `[n]` fields (steps since reset).
    Draws `o ~ U[0, window)` per env from `state.key`, then scans `window` steps in which env
    `i` steps (epsilon-greedy, `acting.graph_step`) only from step `window - o_i` on. Pure.
    """

    def warmup(params, state):
        k_offset, key = jax.random.split(state.key)
        n = state.obs.shape[0]
        first = window - jax.random.randint(k_offset, (n,), 0, window)  # [n] first step

        def body(carry, s):
            key, k_act, k_env = jax.random.split(carry.key, 3)
            step = acting.graph_step(
                env, apply_fn, params, carry.obs, carry.env_state, k_act, k_env, epsilon
            )
            t = jnp.where(step.done, 0, carry.t + 1)
            active = s >= first
            moved = (step.env_state, step.obs, t)
            env_state, obs, t = _where_active(active, moved, (carry.env_state, carry.obs, carry.t))
            return carry._replace(env_state=env_state, obs=obs, key=key, t=t), None

        state = state._replace(key=key)
        return jax.lax.scan(body, state, jnp.arange(window))[0]

    return warmup


def host_offsets(seed: int, n: int, window: int) -> np.ndarray:
    """`o ~ U[0, window)` `[n]` for the host warm-up, from its own numpy stream."""
    return np.random.default_rng([seed, 0x57A6]).integers(0, window, n)


def reset_masked(env, mask: np.ndarray, seeds: np.ndarray) -> np.ndarray:
    """Restart the episodes of an ale-py vector env where `mask` `[n]`; all obs in env order."""
    obs, info = env.reset(seed=seeds, options={"reset_mask": mask})
    return obs[np.argsort(info["env_id"])]


def host_warmup(halves, act, params, obs, pending, key, offsets, window: int, seed: int):
    """The host's staggered starts: `window` steps; env `i` restarts before step `window - o_i`.

    `halves`: the ale-py envs that take turns (`AtariDataset`), `obs`/`pending` per half, as
    there. Returns (obs, pending, key, t `[n]` int32 steps since each env's reset).
    """
    half = obs[0].shape[0]
    restart_after = window - offsets - 1  # [n]: the step after which env i restarts
    t = np.zeros(len(offsets), np.int32)
    for s in range(window):
        for i, env in enumerate(halves):
            cols = slice(i * half, (i + 1) * half)
            _, action = (np.asarray(x) for x in pending[i])
            env.send(action.astype(np.int32))
            obs[i], _, term, trunc = envs.in_env_order(*env.recv())
            t[cols] = np.where(term | trunc, 0, t[cols] + 1)
            mask = restart_after[cols] == s
            if mask.any():
                seeds = seed + 104_729 * (s + 1) + np.flatnonzero(mask) + i * half
                obs[i] = reset_masked(env, mask, seeds.astype(np.int64))
                t[cols] = np.where(mask, 0, t[cols])
            key, k = jax.random.split(key)
            pending[i] = act(params, obs[i], k)
    return obs, pending, key, t
