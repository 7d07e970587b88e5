"""The interpretable student: a linear policy over MinAtar's object channels.

Q(s) = sum_{h,w,c} s[h,w,c] W[h,w,c,:] + b, distilled with the paper's losses (`distill.losses`).
W[h, w, c, a] is how much an object of kind c in cell (h, w) adds to Q(s, a).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from distill import dataset, distillation, evaluate, losses, xla
from distill.config import ConfigError, in_range, positive_int, require

Array = jax.Array


def linear_q(params: dict, obs: Array) -> Array:
    """Q(s) = sum_{h,w,c} s[h,w,c] W[h,w,c,:] + b: `[batch, H, W, C]` -> `[batch, actions]`."""
    return jnp.einsum("bhwc,hwca->ba", obs.astype(jnp.float32), params["w"]) + params["b"]


def init_linear(obs_shape: Sequence[int], num_actions: int) -> dict:
    """A linear policy with all weights zero (every action equal until it learns)."""
    return {
        "w": jnp.zeros((*obs_shape, num_actions), jnp.float32),
        "b": jnp.zeros((num_actions,), jnp.float32),
    }


@dataclasses.dataclass(frozen=True)
class LinearConfig:
    """How a linear student is distilled."""

    loss: str = "kl"
    """the linear student's distillation loss: nll | mse | kl (distill.losses)"""
    tau: float = losses.DEFAULT_TAU
    """KL temperature of the teacher"""
    updates: int = 2_000
    """minibatch updates of the linear student"""
    batch_size: int = 256
    """states per minibatch"""
    lr: float = 1e-2
    """Adam's learning rate"""
    l2: float = 1e-4
    """weight decay on W: fewer spurious weights, easier to read"""
    held_out: float = 0.125
    """fraction of the dataset's envs kept for measuring fidelity"""
    seed: int = 0
    """random seed"""

    def __post_init__(self):
        require(self.loss in losses.LOSSES, "loss", self.loss, f"one of {tuple(losses.LOSSES)}")
        require(isinstance(self.tau, int | float) and self.tau > 0, "tau", self.tau, "must be > 0")
        positive_int("updates", self.updates)
        positive_int("batch_size", self.batch_size)
        in_range("lr", self.lr, 1e-8, 1.0)
        in_range("l2", self.l2, 0.0, 1.0)
        in_range("held_out", self.held_out, 0.0, 0.9)


def split_envs(arrays: dict, held_out: float) -> tuple[dict, dict]:
    """Dataset arrays `[rows, envs, ...]` split by env column: (train, held out).

    Columns are separate episodes, so held-out states are not neighbours of training states.
    """
    num_envs = arrays["q"].shape[1]
    n_test = max(1, int(round(held_out * num_envs)))
    if n_test >= num_envs:
        raise ConfigError(f"held_out={held_out} leaves no env of {num_envs} for training")
    train = {k: v[:, : num_envs - n_test] for k, v in arrays.items()}
    test = {k: v[:, num_envs - n_test :] for k, v in arrays.items()}
    return train, test


def linear_loss(config: LinearConfig, params: dict, obs: Array, teacher_q: Array) -> Array:
    """The linear student's loss on a minibatch: the distillation loss `config.loss` between its
    Q-values and the teacher's `[batch, actions]`, plus `config.l2` times ||W||^2. A scalar.

    What `make_linear_fit` trains on, through the shared distillation step.
    """
    student_q = linear_q(params, obs)
    loss = losses.distillation_loss(config.loss, student_q, teacher_q, config.tau)
    return loss + l2_penalty(config, params)


def l2_penalty(config: LinearConfig, params: dict) -> Array:
    """`config.l2` times ||W||^2: keeps the weights readable (few large ones)."""
    return config.l2 * jnp.sum(jnp.square(params["w"]))


def make_linear_fit(config: LinearConfig, obs_shape: Sequence[int], num_actions: int):
    """Pure `fit(arrays, key) -> (params, loss [updates])` for a dataset's arrays (stack 1)."""
    optimizer = optax.adam(config.lr)
    step = distillation.make_step(
        config.loss, linear_q, optimizer, penalty=functools.partial(l2_penalty, config)
    )
    hyper = losses.hyperparameters(config.loss, {"tau": config.tau})

    def update(carry, key, arrays):
        params, opt_state = carry
        obs, teacher_q = dataset.sample(arrays, key, config.batch_size, 1, 0)
        params, opt_state, (loss, _) = step(params, opt_state, obs, teacher_q, hyper)
        return (params, opt_state), loss

    def fit(arrays: dict, key: Array):
        params = init_linear(obs_shape, num_actions)
        (params, _), loss = jax.lax.scan(
            lambda c, k: update(c, k, arrays),
            (params, optimizer.init(params)),
            jax.random.split(key, config.updates),
        )
        return params, loss

    return fit


class LinearStudent(NamedTuple):
    params: dict  # {"w": [H, W, C, A], "b": [A]}
    loss: np.ndarray  # [updates] training loss
    fidelity: float  # agreement with the teacher on held-out states
    train_agreement: float
    held_out_states: int


def fit_linear(data: dataset.Dataset, config: LinearConfig = LinearConfig()) -> LinearStudent:
    """Distil a dataset's teacher into a linear policy; fidelity on held-out envs' states."""
    if data.stack != 1 or len(data.obs.shape) != 5:
        raise ConfigError(
            f"{data.path}: a linear student reads MinAtar object channels; {data.env_id} "
            "observations are not [10, 10, C] maps"
        )
    train, test = split_envs(data.arrays(), config.held_out)
    fit = xla.jit(make_linear_fit(config, data.obs.shape[2:], data.num_actions))
    params, loss = fit(train, jax.random.PRNGKey(config.seed))

    def agreement(arrays):
        obs = arrays["obs"].reshape(-1, *arrays["obs"].shape[2:])
        q = arrays["q"].reshape(-1, data.num_actions)
        return float(jnp.mean(jnp.argmax(linear_q(params, obs), -1) == jnp.argmax(q, -1)))

    return LinearStudent(
        params=jax.tree_util.tree_map(np.asarray, params),
        loss=np.asarray(loss),
        fidelity=agreement(test),
        train_agreement=agreement(train),
        held_out_states=int(test["q"].shape[0] * test["q"].shape[1]),
    )


def preference_weights(w: np.ndarray) -> np.ndarray:
    """W minus its mean over actions `[H, W, C, A]`: only differences between actions change
    the argmax, so this is how much an object in a cell pushes towards each action."""
    w = np.asarray(w)
    return w - w.mean(axis=-1, keepdims=True)


def linear_scores(
    linear: LinearStudent, teacher, episodes: int, seed: int = 10_000
) -> dict[str, float]:
    """The linear student's and its teacher's mean scores under the evaluation protocol
    (epsilon 0.05, same episodes and seed), and the student's as % of the teacher's."""
    params = jax.tree_util.tree_map(jnp.asarray, linear.params)
    score = evaluate.evaluate_gymnax(linear_q, params, teacher.env_id, episodes, seed=seed).mean
    teacher_score = evaluate.evaluate_policy(teacher, episodes, seed=seed).mean
    percent = 100.0 * score / teacher_score if teacher_score else float("nan")
    return {"score": score, "teacher_score": teacher_score, "percent_of_teacher": percent}


def linear_report(
    linear: LinearStudent, config: LinearConfig, scores: dict[str, float] | None = None
) -> dict:
    """A linear student's weights `w`, `b` and its numbers, as `write_explanation` takes them."""
    return {
        "w": linear.params["w"],
        "b": linear.params["b"],
        "config": dataclasses.asdict(config),
        "fidelity": linear.fidelity,
        "train_agreement": linear.train_agreement,
        "held_out_states": linear.held_out_states,
        "final_loss": float(np.mean(linear.loss[-max(1, linear.loss.size // 10) :])),
        **(scores or {}),
    }
