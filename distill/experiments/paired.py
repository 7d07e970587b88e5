"""Paired evaluation: a student and its teacher scored on the same episodes, and the teacher's
high-precision reference score, cached with the teacher.

MinAtar (gymnax): episode e of evaluation seed S is played from `evaluate.episode_keys(S, e, 1)`
alone, so a student and its teacher given the same seed start from the same states and draw the
same randomness while they act alike, and the first N episodes of the long reference are exactly
the N episodes every student is scored on. Atari (ale-py on the host): students and teacher play
with the same seed (the same no-op starts and env order); the reference's batch b uses seed
S + its first episode.

One compiled evaluator per (env, network, vmapped or not) serves every call: students of a
config are evaluated side by side (`jax.vmap` over their parameters, one shared set of keys).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import numpy as np

from distill import checkpoint, envs, evaluate, families, paths, sharding, stats, xla
from distill.config import ConfigError

EVAL_SEED = 10_000  # the evaluation seed of every final score (as the unpaired references had)
REFERENCE_FILE = "reference.json"
REL_SE = 0.03  # the reference's standard error is at most this fraction of its mean
BATCH = {True: 100, False: 10}  # reference episodes per batch: in-graph, Atari
CAP = {True: 2_000, False: 100}  # at most this many reference episodes: in-graph, Atari

_EVALUATORS: dict[tuple, Callable] = {}


def _evaluator(env_id: str, tag: tuple, apply_fn: Callable, over_seeds: bool) -> Callable:
    """The jitted episode evaluator of `env_id` for the policy `tag` names, made once (jit
    then compiles once per shape: episodes, and seeds where `over_seeds`)."""
    key = (env_id, tag, over_seeds)
    if key not in _EVALUATORS:
        fn = evaluate.make_episode_evaluator(env_id, apply_fn)
        _EVALUATORS[key] = xla.jit(jax.vmap(fn, in_axes=(0, None, None)) if over_seeds else fn)
    return _EVALUATORS[key]


def _in_graph(env_id: str) -> bool:
    return families.of(env_id).in_graph


def episode_scores(
    env_id: str,
    tag: tuple,
    apply_fn: Callable,
    params: Any,
    episodes: int,
    seed: int = EVAL_SEED,
    epsilon: float = evaluate.EVAL_EPSILON,
    start: int = 0,
) -> np.ndarray:
    """`[episodes]` scores of one policy on episodes `start ..` of evaluation seed `seed`.

    `tag` names the policy's function (e.g. `("net", "net1")`): policies with the same tag share
    one compiled evaluator.
    """
    if not _in_graph(env_id):
        s = evaluate.evaluate_atari(apply_fn, params, env_id, episodes, epsilon, seed + start)
        return s.episodes
    run = _evaluator(env_id, tag, apply_fn, over_seeds=False)
    keys = evaluate.episode_keys(seed, start, episodes)
    return np.asarray(run(params, keys, np.float32(epsilon)), np.float64)


def seeds_episode_scores(
    env_id: str,
    tag: tuple,
    apply_fn: Callable,
    params: Any,
    episodes: int,
    seed: int = EVAL_SEED,
) -> np.ndarray:
    """`[seeds, episodes]` scores of students whose `params` have a leading seeds axis, all on
    the same episodes (those of `episode_scores` with the same seed)."""
    params = sharding.to_host(params)
    if not _in_graph(env_id):
        n = jax.tree_util.tree_leaves(params)[0].shape[0]
        one = lambda i: jax.tree_util.tree_map(lambda x: x[i], params)  # noqa: E731
        return np.stack(
            [episode_scores(env_id, tag, apply_fn, one(i), episodes, seed) for i in range(n)]
        )
    run = _evaluator(env_id, tag, apply_fn, over_seeds=True)
    keys = evaluate.episode_keys(seed, 0, episodes)
    return np.asarray(run(params, keys, np.float32(evaluate.EVAL_EPSILON)), np.float64)


def student_scores(env_id: str, net: str, params: Any, episodes: int) -> np.ndarray:
    """`[seeds, episodes]`: single-game students of network `net` on the paired episodes."""
    apply_fn = families.build_network(env_id, net).apply
    return seeds_episode_scores(env_id, ("net", net), apply_fn, params, episodes)


def teacher_scores(policy: checkpoint.Policy, episodes: int, start: int = 0) -> np.ndarray:
    """`[episodes]`: a loaded teacher on the paired episodes."""
    tag = ("net", policy.net)
    return episode_scores(policy.env_id, tag, policy.apply, policy.params, episodes, start=start)


def random_scores(env_id: str, episodes: int) -> np.ndarray:
    """`[episodes]`: the uniform random policy (epsilon 1) on the paired episodes."""
    apply_fn = evaluate.random_apply(envs.spec(env_id).num_actions)
    return episode_scores(env_id, ("random",), apply_fn, None, episodes, epsilon=1.0)


# ---------------------------------------------------------------------------- the reference


def reference_identity(policy: checkpoint.Policy) -> dict:
    """What a cached reference must match to be reused: the teacher's parameters, the
    protocol and the stopping rule."""
    in_graph = _in_graph(policy.env_id)
    return {
        "env_id": policy.env_id,
        "teacher_params_sha256": policy.manifest["files"][checkpoint.PARAMS],
        "epsilon": evaluate.EVAL_EPSILON,
        "seed": EVAL_SEED,
        "keys": "fold_in(PRNGKey(seed), episode)" if in_graph else "seed + first episode of batch",
        "batch": BATCH[in_graph],
        "max_episodes": CAP[in_graph],
        "rel_se": REL_SE,
    }


def reference_path(policy: checkpoint.Policy, runs_dir: Path) -> Path:
    """Beside a shipped teacher of either size (data/teachers/<env>[-large]/reference.json); for
    one trained in a run, runs_dir/references/<env>_<params sha>.json."""
    for size in paths.TEACHER_SIZES:
        shipped = paths.shipped_teacher(policy.env_id, size)
        if Path(policy.path).resolve() == shipped.resolve():
            return shipped / REFERENCE_FILE
    sha = policy.manifest["files"][checkpoint.PARAMS][:12]
    return Path(runs_dir) / "references" / f"{envs.spec(policy.env_id).safe_name}_{sha}.json"


def measure_reference(policy: checkpoint.Policy) -> dict:
    """The teacher's score to within `REL_SE` of its mean (or `CAP` episodes): the identity,
    episodes, mean, std, se and every episode's score."""
    identity = reference_identity(policy)
    scores = evaluate.precise_scores(
        lambda start, n: teacher_scores(policy, n, start),
        rel_se=REL_SE,
        batch=identity["batch"],
        cap=identity["max_episodes"],
    )
    return {
        "identity": identity,
        "episodes": int(scores.size),
        "mean": float(scores.mean()),
        "std": float(scores.std(ddof=1)),
        "se": evaluate.standard_error(scores),
        "episode_scores": scores.tolist(),
    }


def teacher_reference(policy: checkpoint.Policy, runs_dir: Path, compute: bool = True) -> dict:
    """The cached reference of `policy` when its identity matches, else measured and written
    (atomically). With `compute=False` a missing or stale cache gives {} instead."""
    path = reference_path(policy, runs_dir)
    if path.exists():
        cached = json.loads(path.read_text())
        if cached.get("identity") == reference_identity(policy):
            return cached
    if not compute:
        return {}
    reference = measure_reference(policy)
    path.parent.mkdir(parents=True, exist_ok=True)
    checkpoint.atomic_write_json(path, reference)
    return reference


def reference_columns(reference: dict) -> dict:
    """The reference as flat columns of a teachers row (without its per-episode list)."""
    return {
        "reference_episodes": reference.get("episodes"),
        "reference_score": reference.get("mean"),
        "reference_se": reference.get("se"),
    }


# identity fields that must agree for two references to share their episodes' starts
SHARED_STARTS = ("env_id", "epsilon", "seed", "keys", "batch")


def compare_references(a: str | Path, b: str | Path, reps: int = stats.REPS, seed: int = 0) -> str:
    """`distill stats --references A B`: two teachers' reference scores on the episodes they
    share (the same starts: the first min(n_A, n_B)), as means, the paired difference with its
    standard error, and the ratio A/B with its 95 % paired bootstrap interval. A and B are
    teacher folders or their reference.json files; references of other starts are refused."""
    refs = []
    for where in (a, b):
        path = Path(where) / REFERENCE_FILE if Path(where).is_dir() else Path(where)
        try:
            refs.append((path, json.loads(path.read_text())))
        except (OSError, ValueError) as e:
            raise ConfigError(f"{path}: not a readable reference.json ({e})") from e
    (pa, ra), (pb, rb) = refs
    for key in SHARED_STARTS:
        va, vb = (r.get("identity", {}).get(key) for r in (ra, rb))
        if va != vb or va is None:
            raise ConfigError(f"{pa} and {pb}: not the same episode starts ({key}: {va} vs {vb})")
    n = min(len(ra["episode_scores"]), len(rb["episode_scores"]))
    x, y = (np.asarray(r["episode_scores"][:n], dtype=float) for r in (ra, rb))
    d = x - y
    ratio = stats.paired_ratio_interval(x, y, reps, seed)
    return (
        f"{ra['identity']['env_id']}: {n} shared episodes (seed {ra['identity']['seed']}, "
        f"epsilon {ra['identity']['epsilon']})\n"
        f"  {pa.parent.name}: {x.mean():.2f}   {pb.parent.name}: {y.mean():.2f}\n"
        f"  difference {d.mean():+.2f} (se {d.std(ddof=1) / np.sqrt(n):.2f}); ratio "
        f"{ratio['point']:.2f} [{ratio['lo']:.2f}, {ratio['hi']:.2f}] (95 %, paired bootstrap, "
        f"{reps:,} resamples, seed {seed})\n"
    )
