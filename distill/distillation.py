"""The distillation step, written once: student Q-values, the paper's loss, gradient, update.

Single-task students (`distill.student`), multi-task students (`distill.multitask`), online
distillation (`distill.online`, through `student`) and the linear student of `distill.explain`
all train with these pieces; they differ only in how a student computes Q-values from its
parameters (`q_fn`) and which optimiser it uses. The loss comes from the registry in
`distill.losses` and its hyperparameters travel as one pytree (`{"tau": 0.01}`), so a sweep can
`jax.vmap` over them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax

from distill import losses

QFn = Callable[[Any, jax.Array], jax.Array]  # (params, obs [batch, ...]) -> q [batch, actions]
GradFn = Callable[..., tuple[tuple[jax.Array, jax.Array], Any]]


def agreement(student_q: jax.Array, teacher_q: jax.Array) -> jax.Array:
    """Fraction of states `[batch]` where the student's greedy action is the teacher's."""
    return jnp.mean(jnp.argmax(student_q, -1) == jnp.argmax(teacher_q, -1))


def make_grad(loss: str, q_fn: QFn, penalty: Callable[[Any], jax.Array] | None = None) -> GradFn:
    """`grad(params, obs, teacher_q, hyper) -> ((loss, agreement), grads)`.

    `loss` names a registered loss (`distill.losses.LOSSES`); `hyper` is its hyperparameter
    pytree (or a bare tau); `penalty(params)`, if given, is added to the loss (a regulariser).
    """
    losses.get(loss)  # an unknown name fails here, before tracing

    def loss_fn(params, obs, teacher_q, hyper):
        student_q = q_fn(params, obs)
        value = losses.distillation_loss(loss, student_q, teacher_q, hyper)
        if penalty is not None:
            value = value + penalty(params)
        return value, agreement(student_q, teacher_q)

    return jax.value_and_grad(loss_fn, has_aux=True)


def apply_gradients(
    optimizer: optax.GradientTransformation, params: Any, opt_state: Any, grads: Any
) -> tuple[Any, Any]:
    """One optimiser step: (params, opt_state) after applying `grads`."""
    step, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, step), opt_state


def make_step(
    loss: str,
    q_fn: QFn,
    optimizer: optax.GradientTransformation,
    penalty: Callable[[Any], jax.Array] | None = None,
) -> Callable:
    """`step(params, opt_state, obs, teacher_q, hyper) -> (params, opt_state, (loss, agree))`.

    One minibatch update of a student on `obs` `[batch, ...]` and `teacher_q`
    `[batch, actions]`; pure and jittable.
    """
    grad = make_grad(loss, q_fn, penalty)

    def step(params, opt_state, obs, teacher_q, hyper):
        metrics, grads = grad(params, obs, teacher_q, hyper)
        params, opt_state = apply_gradients(optimizer, params, opt_state, grads)
        return params, opt_state, metrics

    return step
