"""The paper's distillation losses and the DQN temporal-difference loss.

Every loss takes `[batch, actions]` arrays and returns the mean over the batch of the per-sample
loss, exactly as written in Rusu et al. (2016), section 3:

- `nll`: negative log-likelihood of the teacher's best action under softmax(student_q).
- `mse`: squared error summed over actions, ||teacher_q - student_q||^2.
- `kl`:  KL(softmax(teacher_q / tau) || softmax(student_q)); tau < 1 *sharpens* the teacher,
         the student's softmax stays at temperature 1.

All are pure, jittable and differentiable in `student_q`. Shapes and tau are checked eagerly (they
are static under `jax.jit`), so a mistake raises `ValueError` instead of broadcasting silently.

The distillation losses form a registry, `LOSSES`: each `Loss` names its function and its
hyperparameters with their defaults (the paper's values). Hyperparameters travel as one pytree,
a dict such as `{"tau": 0.01}`, so `jax.vmap` sweeps any of them; a new loss with a new
hyperparameter is one `register(Loss(...))` here.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping

import jax
import jax.numpy as jnp
import optax

Array = jax.Array
Hyper = Mapping[str, float | Array]  # a loss's hyperparameters, e.g. {"tau": 0.01}

DEFAULT_TAU = 0.01


def _check_pair(student_q: Array, teacher_q: Array) -> None:
    s, t = jnp.shape(student_q), jnp.shape(teacher_q)
    if len(s) != 2 or s != t:
        raise ValueError(
            f"student_q and teacher_q must both be [batch, actions] with the same shape; "
            f"got student_q {tuple(s)} and teacher_q {tuple(t)}"
        )


def _check_tau(tau: float) -> None:
    # A traced tau (a swept value under vmap) cannot be checked here; callers validate configs.
    if isinstance(tau, int | float) and not tau > 0:
        raise ValueError(f"tau must be > 0 (the paper uses 0.01); got tau={tau!r}")


def nll(student_q: Array, teacher_q: Array) -> Array:
    """Mean of -log softmax(student_q)[argmax teacher_q]. Inputs `[batch, actions]`; output `[]`.

    Ties in teacher_q go to the lowest action index (jnp.argmax), as the teacher's greedy policy.
    """
    _check_pair(student_q, teacher_q)
    best = jnp.argmax(teacher_q, axis=-1)
    log_p = jax.nn.log_softmax(student_q.astype(jnp.float32), axis=-1)
    return -jnp.mean(jnp.take_along_axis(log_p, best[:, None], axis=-1)[:, 0])


def mse(student_q: Array, teacher_q: Array) -> Array:
    """Mean over the batch of sum_a (teacher_q - student_q)^2. `[batch, actions]` -> `[]`."""
    _check_pair(student_q, teacher_q)
    diff = teacher_q.astype(jnp.float32) - student_q.astype(jnp.float32)
    return jnp.mean(jnp.sum(jnp.square(diff), axis=-1))


def kl(student_q: Array, teacher_q: Array, tau: float | Array = DEFAULT_TAU) -> Array:
    """Mean of KL(softmax(teacher_q / tau) || softmax(student_q)). `[batch, actions]` -> `[]`.

    Both distributions are formed in log space (log_softmax subtracts the max), so tau = 0.01 with
    Q-values in the hundreds stays finite. Reference: Rusu et al. (2016), eq. in section 3;
    optax.losses.kl_divergence_with_log_targets computes sum p_t (log p_t - log p_s).
    """
    _check_pair(student_q, teacher_q)
    _check_tau(tau)
    log_p_teacher = jax.nn.log_softmax(teacher_q.astype(jnp.float32) / tau, axis=-1)
    log_p_student = jax.nn.log_softmax(student_q.astype(jnp.float32), axis=-1)
    per_sample = optax.losses.kl_divergence_with_log_targets(log_p_student, log_p_teacher)
    return jnp.mean(per_sample)


@dataclasses.dataclass(frozen=True)
class Loss:
    """A distillation loss: `fn(student_q, teacher_q, **hyper) -> []` and its hyperparameters."""

    name: str
    fn: Callable[..., Array]
    hyper: Mapping[str, float] = dataclasses.field(default_factory=dict)  # name -> default
    doc: str = ""


LOSSES: dict[str, Loss] = {}


def register(loss: Loss) -> Loss:
    """Add a loss to the registry (its name must be new)."""
    if loss.name in LOSSES:
        raise ValueError(f"loss {loss.name!r} is already registered")
    LOSSES[loss.name] = loss
    return loss


register(Loss("nll", nll, {}, "the teacher's best action only"))
register(Loss("mse", mse, {}, "every Q-value"))
register(Loss("kl", kl, {"tau": DEFAULT_TAU}, "the teacher's softmax sharpened by tau"))


def get(name: str) -> Loss:
    """The registered loss `name`; an unknown name raises ValueError listing the choices."""
    if name not in LOSSES:
        raise ValueError(f"loss must be one of {tuple(LOSSES)}; got {name!r}")
    return LOSSES[name]


def hyperparameters(name: str, values: Mapping[str, float] | None = None) -> dict[str, float]:
    """The hyperparameters of loss `name`: its defaults, with those in `values` taken over.

    Keys of `values` that the loss does not use are ignored (a config may carry tau for every
    loss), so `hyperparameters("nll", {"tau": 0.5}) == {}`.
    """
    loss = get(name)
    values = values or {}
    return {k: values.get(k, default) for k, default in loss.hyper.items()}


def as_hyper(hyper: Hyper | float | Array) -> Hyper:
    """A hyperparameter pytree; a bare number or array is tau (the form callers used before)."""
    return hyper if isinstance(hyper, Mapping) else {"tau": hyper}


def distillation_loss(
    name: str, student_q: Array, teacher_q: Array, hyper: Hyper | float | Array
) -> Array:
    """The registered loss `name` with its hyperparameters taken from `hyper`.

    `hyper` is a dict (`{"tau": 0.01}`) or, as before, a bare tau; a loss reads only its own
    keys, falling back to its defaults.
    """
    loss = get(name)
    hyper = as_hyper(hyper)
    kwargs = {k: hyper.get(k, default) for k, default in loss.hyper.items()}
    return loss.fn(student_q, teacher_q, **kwargs)


def huber(x: Array, delta: float = 1.0) -> Array:
    """Elementwise Huber loss: 0.5 x^2 inside [-delta, delta], linear outside."""
    abs_x = jnp.abs(x)
    quadratic = jnp.minimum(abs_x, delta)
    return 0.5 * quadratic**2 + delta * (abs_x - quadratic)


def double_q_td_loss(
    q_tm1: Array,
    a_tm1: Array,
    r_t: Array,
    discount_t: Array,
    q_t_online: Array,
    q_t_target: Array,
) -> Array:
    """Mean Huber loss of the double-DQN TD error (van Hasselt et al. 2016).

    q_tm1, q_t_online, q_t_target: `[batch, actions]`; a_tm1, r_t, discount_t: `[batch]`.
    discount_t already holds gamma^n * (1 - done) for n-step returns. The target is
    r_t + discount_t * q_t_target[argmax_a q_t_online], with no gradient through it.
    """
    a_star = jnp.argmax(q_t_online, axis=-1)
    bootstrap = jnp.take_along_axis(q_t_target, a_star[:, None], axis=-1)[:, 0]
    target = jax.lax.stop_gradient(r_t + discount_t * bootstrap)
    q_a = jnp.take_along_axis(q_tm1, a_tm1[:, None].astype(jnp.int32), axis=-1)[:, 0]
    return jnp.mean(huber(target - q_a))
