"""The plateau rule: a student trains until its held-out agreement stops improving, or a cap.

After every evaluation block a student's agreement with its teacher (argmax student = argmax
teacher) is measured on states it never trains on (the dataset's last env columns, as
`distill.explain.linear.split_envs` splits them: separate episodes, so no neighbours of training
states). It stops once `patience` blocks in a row have not lifted that agreement by more than
`delta` above the best so far, or at `cap` blocks. The rule's state is a small pytree carried
inside the compiled block loop, so `jax.vmap` runs it for every seed side by side; a student that
has stopped keeps its parameters while the others train on.
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
