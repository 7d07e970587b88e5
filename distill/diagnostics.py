"""What limits a student: its agreement with the teacher on three kinds of states.

After every evaluation block a student is compared with its teacher on

- (a) `train`: a sample of the states it trains on (its dataset or its buffer);
- (b) `heldout`: teacher states it never trained on (the teacher's own play, other episodes);
- (c) `visited`: states the student reaches itself (acting at epsilon 0.05), labelled by the
  teacher.

On each set: the agreement of the greedy actions (`argmax student_q == argmax teacher_q`) and
KL(softmax(teacher_q / tau) || softmax(student_q)), the paper's KL loss. Together they tell the
limits apart (`limit`): undertraining (all three low and still rising), overfitting (a >> b) and
covariate shift (b >> c; Ross et al. 2011, the reason for DAgger); thresholds below.

Everything here is pure and jittable except `limit` and `own_regret`, which read floats.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from distill import acting, coverage, dataset, envs, losses, xla

SETS = ("train", "heldout", "visited")

# The thresholds of `limit`, in points of argmax agreement (fractions of states).
OVERFIT_GAP = 0.05
"""a - b above this: the student fits its training states better than the teacher's others"""
SHIFT_GAP = 0.05
"""b - c above this: the student's own states are harder for it than the teacher's"""
LOW_AGREEMENT = 0.9
"""all three below this count as low"""
RISING = 0.01
"""a rise of any of the three over the last block above this counts as still rising"""


class Agreement(NamedTuple):
    agreement: jax.Array  # [] fraction of states where argmax student_q == argmax teacher_q
    kl: jax.Array  # [] mean KL(softmax(teacher_q / tau) || softmax(student_q))


def agreement_and_kl(
    student_q: jax.Array, teacher_q: jax.Array, tau: float | jax.Array = losses.DEFAULT_TAU
) -> Agreement:
    """Agreement and KL of `[batch, actions]` Q-values; greedy ties go to the lowest action."""
    agree = jnp.mean(jnp.argmax(student_q, -1) == jnp.argmax(teacher_q, -1))
    return Agreement(agree, losses.kl(student_q, teacher_q, tau))


def limit(rows: Sequence[dict]) -> str:
    """Which limit the last of a run's diagnostic rows shows.

    Each row holds `agreement_train`, `agreement_heldout` and `agreement_visited` (one row per
    evaluation block, oldest first); a, b, c below. In this order:

    - `undertraining`: all three < LOW_AGREEMENT and one of them rose by more than RISING over
      the last block (or there is only one block): more updates come first, whatever the gaps;
    - `overfitting` (a - b > OVERFIT_GAP) or `covariate shift` (b - c > SHIFT_GAP): the larger
      gap, when one is over its threshold;
    - `plateau`: all three low but none rising (the student or its data is too small);
    - `none`: all three at LOW_AGREEMENT or above, close together.
    """
    if not rows:
        raise ValueError("limit needs at least one row of diagnostics")
    last = rows[-1]
    a, b, c = (float(last[f"agreement_{s}"]) for s in SETS)
    low = max(a, b, c) < LOW_AGREEMENT
    if low and len(rows) == 1:
        return "undertraining"
    if low:
        prev = rows[-2]
        rise = max(float(last[f"agreement_{s}"]) - float(prev[f"agreement_{s}"]) for s in SETS)
        if rise > RISING:
            return "undertraining"
    gaps = {"overfitting": a - b - OVERFIT_GAP, "covariate shift": b - c - SHIFT_GAP}
    worst = max(gaps, key=gaps.get)
    if gaps[worst] > 0:
        return worst
    return "plateau" if low else "none"


def explain(limit_: str, a: float, b: float, c: float) -> str:
    """The limit `limit_` of a run whose last block's agreements are a (training states), b
    (held-out teacher states) and c (the student's own states), in words, with the numbers that
    decided it and what would lift it."""
    nums = f"a {a:.3f}, b {b:.3f}, c {c:.3f}"
    if limit_ == "undertraining":
        return f"all three below {LOW_AGREEMENT} and still rising ({nums}): more updates first"
    if limit_ == "overfitting":
        return (
            f"training states fit better than held-out teacher states, a - b = {a - b:.3f} > "
            f"{OVERFIT_GAP} ({nums}): more or fresher data (the stream) would help"
        )
    if limit_ == "covariate shift":
        return (
            f"the student's own states are harder than the teacher's, b - c = {b - c:.3f} > "
            f"{SHIFT_GAP} ({nums}): training on its own states (DAgger) would help"
        )
    if limit_ == "plateau":
        return (
            f"all three below {LOW_AGREEMENT} and no longer rising ({nums}): the student or its "
            "data is too small"
        )
    return f"all three at {LOW_AGREEMENT} or above and within the gaps ({nums}): no limit shows"


# ---------------------------------------------------------------------------- the three sets


def make_teacher_states(
    env_id: str, apply_fn: acting.ApplyFn, states: int, num_envs: int, stagger: int | None = None
):
    """`sample(acting_params, key) -> obs [states, ...]`: states of a policy's own play.

    The policy acts at epsilon 0.05 in `num_envs` envs from staggered starts
    (`coverage.make_graph_warmup` over `stagger` steps; none: the env's longest episode), then
    `states / num_envs` steps are recorded: a sample of its long-run state distribution, as a
    dataset holds. Pure.
    """
    env = envs.make(env_id)
    rows = max(1, states // num_envs)
    config = dataset.DatasetConfig(states=rows * num_envs, num_envs=num_envs, stagger=stagger)
    policy = _Acting(env_id, apply_fn)
    init, shard = dataset.make_gymnax_generator(policy, config)
    warmup = coverage.make_graph_warmup(
        env, apply_fn, config.epsilon, config.stagger_steps(env.spec)
    )

    def sample(params, key):
        state = warmup(params, init(key))
        _, record = shard(params, state, rows)
        obs = record["obs"]  # [rows, envs, ...] in storage dtype
        return obs.reshape(rows * num_envs, *obs.shape[2:])

    return sample


class _Acting(NamedTuple):
    env_id: str
    apply: acting.ApplyFn


def measure(
    student_apply: acting.ApplyFn,
    student_params: Any,
    teacher_apply: acting.ApplyFn,
    teacher_params: Any,
    sets: dict[str, tuple[jax.Array, jax.Array]],
    tau: float | jax.Array = losses.DEFAULT_TAU,
) -> dict[str, jax.Array]:
    """`{"agreement_<set>", "kl_<set>"}` for each of `sets` `{name: (obs, teacher_q or None)}`.

    A set without teacher Q-values (`None`, the student's own states) is labelled by the
    teacher here. Pure.
    """
    out = {}
    for name, (obs, teacher_q) in sets.items():
        obs = obs.astype(jnp.float32)
        if teacher_q is None:
            teacher_q = teacher_apply(teacher_params, obs)
        a = agreement_and_kl(student_apply(student_params, obs), teacher_q, tau)
        out[f"agreement_{name}"], out[f"kl_{name}"] = a.agreement, a.kl
    return out


OWN_STATES = 16_384  # states of a student's own play that `own_regret` labels


def own_regret(
    env_id: str,
    student_apply: acting.ApplyFn,
    params: Any,
    teacher_apply: acting.ApplyFn,
    teacher_params: Any,
    states: int = OWN_STATES,
    num_envs: int = 64,
) -> tuple[np.ndarray, np.ndarray]:
    """`([seeds] agreement, [seeds] mean regret)` of students (params with a leading seeds axis)
    on states of their own play at epsilon 0.05 (`make_teacher_states`, key = the seed), labelled
    by the teacher: regret is the teacher's best Q-value minus its Q-value of the student's
    action, 0 where they agree. Small mistakes that are frequent add up over an episode: the
    mean regret tells them apart from rare large ones, which agreement alone does not."""
    sample = make_teacher_states(env_id, student_apply, states, num_envs)  # jitted in `one`

    def one(p, t, key):  # the teacher's params as an argument, not constants in the program
        obs = sample(p, key).astype(jnp.float32)
        q_t = teacher_apply(t, obs)
        action = jnp.argmax(student_apply(p, obs), -1)
        regret = jnp.max(q_t, -1) - jnp.take_along_axis(q_t, action[:, None], -1)[:, 0]
        return jnp.mean(action == jnp.argmax(q_t, -1)), jnp.mean(regret)

    n = jax.tree_util.tree_leaves(params)[0].shape[0]
    keys = jnp.stack([jax.random.PRNGKey(i) for i in range(n)])
    agree, regret = xla.jit(jax.vmap(one, in_axes=(0, None, 0)))(params, teacher_params, keys)
    return np.asarray(agree, np.float64), np.asarray(regret, np.float64)
