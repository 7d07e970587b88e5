"""The distillation step, written once: student Q-values, the paper's loss, gradient, update.

Single-task students (`distill.student`), multi-task students (`distill.multitask`), online
distillation (`distill.online`, through `student`) and the linear student of `distill.explain`
all train with these pieces; they differ only in how a student computes Q-values from its
parameters (`q_fn`) and which optimiser it uses. The loss comes from the registry in
`distill.losses` and its hyperparameters travel as one pytree (`{"tau": 0.01}`), so a sweep can
`jax.vmap` over them. A step made for a tuple of losses picks one by an index in that pytree
(`LOSS_INDEX`), so students of different losses also run side by side under `jax.vmap`.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import optax

from distill import losses

QFn = Callable[[Any, jax.Array], jax.Array]  # (params, obs [batch, ...]) -> q [batch, actions]
GradFn = Callable[..., tuple[tuple[jax.Array, jax.Array], Any]]
LossFn = Callable[[jax.Array, jax.Array, Any], jax.Array]  # (student_q, teacher_q, hyper) -> []

LOSS_INDEX = "loss_index"
"""the key of a multi-loss hyperparameter pytree that picks the loss (an int32 index into the
step's tuple of loss names), beside the losses' own hyperparameters"""
SELECTS = ("switch", "all")


def agreement(student_q: jax.Array, teacher_q: jax.Array) -> jax.Array:
    """Fraction of states `[batch]` where the student's greedy action is the teacher's."""
    return jnp.mean(jnp.argmax(student_q, -1) == jnp.argmax(teacher_q, -1))


def select_loss(names: Sequence[str], select: str = "switch") -> LossFn:
    """`loss(student_q, teacher_q, hyper) -> []`: the loss `names[hyper[LOSS_INDEX]]`.

    Students of different losses then share one program: the network runs once per minibatch
    and only the `[batch, actions]` loss differs. `select="switch"` uses `jax.lax.switch` (one
    branch runs for an unbatched index; under `jax.vmap` every branch runs and a select picks);
    `"all"` computes every loss and indexes the `[len(names)]` stack. Both give the same values
    and gradients (the losses not picked get a zero cotangent) at about the same speed
    (`benchmarks/side_by_side.py`; README, "Benchmarks").
    """
    if select not in SELECTS:
        raise ValueError(f"select must be one of {SELECTS}; got {select!r}")
    for name in names:
        losses.get(name)  # an unknown name fails here, before tracing
    branches = [functools.partial(losses.distillation_loss, name) for name in names]

    def loss(student_q, teacher_q, hyper):
        index = hyper[LOSS_INDEX]
        if select == "switch":
            return jax.lax.switch(index, branches, student_q, teacher_q, hyper)
        return jnp.stack([b(student_q, teacher_q, hyper) for b in branches])[index]

    return loss


def multi_hyper(names: Sequence[str], loss: str, values: dict | None = None) -> dict:
    """The hyperparameter pytree of a student of loss `loss` in a program that selects among
    `names` (`select_loss`): `LOSS_INDEX` and every hyperparameter of every loss in `names`,
    so that all students' pytrees have one structure (and stack under `jax.vmap`). A loss's
    own values come from `values`, else its defaults; the others' keys hold their defaults."""
    out: dict = {}
    for name in names:
        for k, v in losses.hyperparameters(name, values).items():
            out.setdefault(k, v)
    out.update(losses.hyperparameters(loss, values))
    return {
        LOSS_INDEX: jnp.int32(list(names).index(loss)),
        **jax.tree_util.tree_map(jnp.float32, out),
    }


def make_grad(
    loss: str | Sequence[str],
    q_fn: QFn,
    penalty: Callable[[Any], jax.Array] | None = None,
    select: str = "switch",
) -> GradFn:
    """`grad(params, obs, teacher_q, hyper) -> ((loss, agreement), grads)`.

    `loss` names a registered loss (`distill.losses.LOSSES`); `hyper` is its hyperparameter
    pytree (or a bare tau); `penalty(params)`, if given, is added to the loss (a regulariser).
    A tuple of names makes one program for all of them: `hyper[LOSS_INDEX]` picks the loss
    (`select_loss`, `multi_hyper`).
    """
    if isinstance(loss, str):
        losses.get(loss)  # an unknown name fails here, before tracing
        distil_loss = functools.partial(losses.distillation_loss, loss)
    else:
        distil_loss = select_loss(loss, select)

    def loss_fn(params, obs, teacher_q, hyper):
        student_q = q_fn(params, obs)
        value = distil_loss(student_q, teacher_q, hyper)
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
    loss: str | Sequence[str],
    q_fn: QFn,
    optimizer: optax.GradientTransformation,
    penalty: Callable[[Any], jax.Array] | None = None,
    select: str = "switch",
) -> Callable:
    """`step(params, opt_state, obs, teacher_q, hyper) -> (params, opt_state, (loss, agree))`.

    One minibatch update of a student on `obs` `[batch, ...]` and `teacher_q`
    `[batch, actions]`; pure and jittable. `loss` a tuple: see `make_grad`.
    """
    grad = make_grad(loss, q_fn, penalty, select)

    def step(params, opt_state, obs, teacher_q, hyper):
        metrics, grads = grad(params, obs, teacher_q, hyper)
        params, opt_state = apply_gradients(optimizer, params, opt_state, grads)
        return params, opt_state, metrics

    return step
