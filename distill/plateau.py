"""The plateau rule: a student trains until its held-out agreement stops improving, or a cap.

After every evaluation block a student's agreement with its teacher (argmax student = argmax
teacher) is measured on states it never trains on (the dataset's last env columns, as
`distill.explain.linear.split_envs` splits them: separate episodes, so no neighbours of training
states). It stops once `patience` blocks in a row have not lifted that agreement by more than
`delta` above the best so far, or at `cap` blocks. The rule's state is a small pytree carried
inside the compiled block loop, so `jax.vmap` runs it for every seed side by side; a student that
has stopped keeps its parameters while the others train on.

`columns` and `curve` put where each student stopped into an experiment's rows and results, with
`still_learning`: whether its curve was still rising at the end (`distill.claims` leaves a
comparison with such students unresolved rather than contradicted).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

HELD_OUT_STATES = 16_384
"""states of the fixed held-out sample every student of a dataset is measured on (the
agreement's standard error about 0.003 at 0.85: 4,096 states, 0.006, stopped students on noise)"""
HELD_OUT_KEY = 0
"""the key of that sample: the same states for every seed, loss and network"""
RISE = 0.01
"""a student trained a fixed count whose training agreement (the mean over a block's minibatches)
rose by more than this over its last block was still learning when it stopped"""


class Plateau(NamedTuple):
    best: jax.Array  # [] best held-out agreement so far (-inf before the first block)
    best_block: jax.Array  # [] blocks trained when `best` was set (the plateau's block)
    blocks: jax.Array  # [] blocks trained
    active: jax.Array  # [] bool: still training


def start() -> Plateau:
    """The rule before the first block."""
    return Plateau(jnp.float32(-jnp.inf), jnp.int32(0), jnp.int32(0), jnp.asarray(True))


def update(rule: Plateau, held_out: jax.Array, patience: int, delta: float, cap: int) -> Plateau:
    """The rule after one block whose held-out agreement is `held_out` `[]`; unchanged when the
    student had already stopped. An improvement is a rise of more than `delta` over the best."""
    blocks = rule.blocks + 1
    improved = held_out > rule.best + delta
    best = jnp.where(improved, held_out, rule.best)
    best_block = jnp.where(improved, blocks, rule.best_block)
    active = (blocks - best_block < patience) & (blocks < cap)
    new = Plateau(best.astype(jnp.float32), best_block.astype(jnp.int32), blocks, active)
    return jax.tree_util.tree_map(lambda n, o: jnp.where(rule.active, n, o), new, rule)


def agreement(student_q: jax.Array, teacher_q: jax.Array) -> jax.Array:
    """Fraction of states `[n, actions]` where the student's argmax is the teacher's. `[]`."""
    return jnp.mean(jnp.argmax(student_q, -1) == jnp.argmax(teacher_q, -1))


def plateau_block(held_out_curve, delta: float) -> int:
    """The block (1-based) at which a `[blocks]` held-out curve (nan after the student stopped)
    last improved by more than `delta` over its best: where `update` puts `best_block`."""
    best, at = -np.inf, 0
    for i, h in enumerate(np.asarray(held_out_curve, np.float64)):
        if np.isfinite(h) and h > best + delta:
            best, at = h, i + 1
    return at


def trained_blocks(held_out_curve) -> int:
    """Blocks a student trained: the finite entries of its held-out curve."""
    return int(np.isfinite(np.asarray(held_out_curve, np.float64)).sum())


def filled(curve) -> np.ndarray:
    """A `[blocks]` curve with the value at the stop carried forward over the nan tail: a stopped
    student's agreement stays what it was (for means over seeds that stopped apart)."""
    out = np.array(curve, np.float64)
    for i in range(1, out.size):
        if not np.isfinite(out[i]):
            out[i] = out[i - 1]
    return out


def final_agreement(metrics) -> np.ndarray:
    """Each seed's agreement on its last trained block's minibatch (`[seeds]`): the last finite
    value, since a student stopped by the plateau rule has nan blocks after its stop."""
    return np.array([filled(row)[-1] for row in np.asarray(metrics.agreement)])


def still_learning(config, metrics, seed: int) -> bool | None:
    """Whether student `seed` (of `metrics`, `[seeds, blocks]` `BlockMetrics`) was still learning
    when it stopped. Under the plateau rule: the cap stopped it, fewer than `plateau_blocks`
    blocks after its held-out agreement last improved. Trained a fixed count: its training
    agreement rose by more than `RISE` over its last block. None with one block (no curve)."""
    if config.plateau_blocks:
        held = np.asarray(metrics.held_out[seed], np.float64)
        trained = trained_blocks(held)
        since = trained - plateau_block(held, config.plateau_delta)
        return bool(trained >= config.blocks and since < config.plateau_blocks)
    return rising(metrics.agreement[seed])


def rising(agreement) -> bool | None:
    """Whether a `[blocks]` curve of training agreement (nan blocks skipped) rose by more than
    `RISE` over its last block; None with fewer than two blocks."""
    curve = np.asarray(agreement, np.float64)
    curve = curve[np.isfinite(curve)]
    return bool(curve[-1] - curve[-2] > RISE) if curve.size >= 2 else None


def columns(config, metrics, seed: int) -> dict:
    """Student `seed`'s row columns of where it stopped: `still_learning` (when its curve can
    tell), and under the plateau rule the updates trained, the update count at its plateau (where
    held-out agreement last improved) and its final held-out agreement."""
    learning = still_learning(config, metrics, seed)
    out = {} if learning is None else {"still_learning": learning}
    if not config.plateau_blocks:
        return out
    held = np.asarray(metrics.held_out[seed], np.float64)
    trained = trained_blocks(held)
    return {
        "updates": trained * config.eval_every,
        "plateau_updates": plateau_block(held, config.plateau_delta) * config.eval_every,
        "held_out_agreement": float(held[trained - 1]) if trained else float("nan"),
        **out,
    }


def curve(config, metrics) -> dict:
    """Held-out agreement against updates, mean and std over seeds (a stopped seed's last value
    carried forward), the per-seed curves (nan after each stop) and the plateau update counts;
    `{}` for students trained a fixed count."""
    if not config.plateau_blocks:
        return {}
    held = np.asarray(metrics.held_out, np.float64)
    full = np.stack([filled(h) for h in held])
    return {
        "held_out_updates": [(i + 1) * config.eval_every for i in range(held.shape[1])],
        "held_out_mean": full.mean(axis=0).tolist(),
        "held_out_std": full.std(axis=0).tolist(),
        "held_out": [[None if not np.isfinite(x) else float(x) for x in h] for h in held],
        "plateau_updates": [
            plateau_block(h, config.plateau_delta) * config.eval_every for h in held
        ],
    }
