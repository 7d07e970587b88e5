"""Explanations: where a policy looks, how often a student agrees with its teacher, and a
student a person can read.

Saliency, after Greydanus et al. (2018), "Visualizing and Understanding Atari Agents" (ICML):

- *gradient* (Jacobian) saliency |dQ(s, a*)/ds|, a* = argmax_a Q(s, a) (Simonyan et al. 2014);
- *perturbation* saliency S(s, i, j) = 1/2 ||A(s) - A(s')||^2, where s' is s with one region
  changed and A = Q - mean_a Q are the advantages (a shift shared by every action changes
  nothing the policy does, and a KL student's outputs are Q-values only up to such a shift).
  On Atari s' = s * (1 - M) + blur(s, sigma_A = 3) * M, with M a Gaussian of sigma = 5 centred on
  (i, j), computed every `stride` pixels and upsampled bilinearly, as in the paper (one mask for
  every frame of the stack). On MinAtar each channel is a 0/1 map of one kind of object, so s'
  removes the object in one cell of one channel (or toggles the cell), one map per channel.

Agreement: how often the student's greedy action is the teacher's, as a confusion matrix over
actions and per kind of state (by the teacher's action, or by the teacher's confidence: its gap
between the best and second-best Q-value).

The interpretable student: a linear policy over MinAtar's object channels,
Q(s) = sum_{h,w,c} s[h,w,c] W[h,w,c,:] + b, distilled with the paper's losses (`distill.losses`).
W[h, w, c, a] is how much an object of kind c in cell (h, w) adds to Q(s, a).

Functions are pure; those that take `apply_fn` take a `Policy.apply`-style
`apply(params, obs [batch, *obs_shape]) -> [batch, actions]` and are jittable with it static.
"""

from __future__ import annotations

import dataclasses
import functools
import io
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from distill import dataset, envs, evaluate, losses, xla
from distill.config import ConfigError, in_range, positive_int, require

Array = jax.Array
ApplyFn = Callable[[Any, Array], Array]

# Greydanus et al. (2018): mask sigma 5, blur sigma 3, a score every 5 pixels.
MASK_SIGMA = 5.0
BLUR_SIGMA = 3.0
STRIDE = 5
# MinAtar's full action set (Young & Tian 2019); gymnax games use a subset (`action_set`).
# Kinds of state by the teacher's confidence: equal thirds of the states by Q-gap.
GAP_KINDS = ("low gap", "mid gap", "high gap")
SALIENCY_METHODS = ("gradient", "perturbation")


# ---------------------------------------------------------------------------- saliency


def advantages(q: Array) -> Array:
    """Q-values minus their mean over actions, `[batch, actions]`: what the argmax sees."""
    return q - jnp.mean(q, axis=-1, keepdims=True)


def gradient_saliency(
    apply_fn: ApplyFn, params: Any, obs: Array, actions: Array | None = None
) -> Array:
    """|dQ(s, a)/ds| for a = `actions` (default: the greedy a*). `[batch, *obs_shape]` -> same.

    States are independent under a Q-network, so the gradient of sum_b Q(s_b, a_b) holds each
    state's own gradient. Atari gradients are per raw pixel value (0..255).
    """
    x = obs.astype(jnp.float32)
    if actions is None:
        actions = jnp.argmax(apply_fn(params, x), axis=-1)

    def chosen_q(x):
        q = apply_fn(params, x)
        return jnp.sum(jnp.take_along_axis(q, actions[:, None], axis=-1))

    return jnp.abs(jax.grad(chosen_q)(x))


def perturbation_scores(apply_fn: ApplyFn, params: Any, obs: Array, perturbed: Array) -> Array:
    """1/2 ||A(s) - A(s')||^2 for one state `obs` `[*obs_shape]` and `perturbed` `[n, ...]`.

    Returns `[n]`. Reference: Greydanus et al. (2018), with advantages as the policy's output.
    """
    # one batch, so that the state and its copies go through the same kernels
    batch = jnp.concatenate([obs[None], perturbed]).astype(jnp.float32)
    a = advantages(apply_fn(params, batch))  # [1 + n, A]
    return 0.5 * jnp.sum(jnp.square(a[1:] - a[:1]), axis=-1)


def minatar_perturbation_saliency(
    apply_fn: ApplyFn, params: Any, obs: Array, mode: str = "remove"
) -> Array:
    """Per-cell, per-channel perturbation saliency of MinAtar states `[batch, H, W, C]` -> same.

    mode "remove": set the cell of that channel to 0 (take the object away; empty cells score 0);
    mode "toggle": flip the cell (also asks what an object appearing there would change).
    """
    if mode not in ("remove", "toggle"):
        raise ValueError(f"mode must be 'remove' or 'toggle'; got {mode!r}")
    shape = obs.shape[1:]
    n = math.prod(shape)
    cells = jnp.eye(n, dtype=jnp.float32).reshape(n, *shape)  # one-hot cell of one channel

    def one(s):
        s = s.astype(jnp.float32)
        if mode == "remove":
            perturbed = s[None] * (1.0 - cells)
        else:
            perturbed = s[None] + cells * (1.0 - 2.0 * s[None])
        score = perturbation_scores(apply_fn, params, s, perturbed).reshape(shape)
        # removing nothing changes nothing: exactly zero, whatever the rounding of the batch
        return jnp.where(s > 0, score, 0.0) if mode == "remove" else score

    return jax.lax.map(one, obs)


def gaussian_kernel1d(sigma: float, truncate: float = 4.0) -> np.ndarray:
    """The normalised 1-D Gaussian of scipy.ndimage.gaussian_filter1d: radius int(4 sigma + .5)."""
    radius = int(truncate * sigma + 0.5)
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    w = np.exp(-0.5 * (x / sigma) ** 2)
    return (w / w.sum()).astype(np.float32)


def gaussian_blur(images: Array, sigma: float) -> Array:
    """Gaussian blur over the last two axes `[..., H, W]`, edges mirrored.

    Matches scipy.ndimage.gaussian_filter(images, (0, ..., sigma, sigma), mode="reflect").
    """
    w = gaussian_kernel1d(sigma)
    r = w.size // 2
    x = images.astype(jnp.float32)
    for axis in (-2, -1):
        pad = [(0, 0)] * x.ndim
        pad[axis] = (r, r)
        xp = jnp.pad(x, pad, mode="symmetric")
        size = x.shape[axis]
        x = sum(
            float(w[k]) * jax.lax.slice_in_dim(xp, k, k + size, axis=axis) for k in range(w.size)
        )
    return x


def gaussian_masks(
    height: int, width: int, stride: int = STRIDE, sigma: float = MASK_SIGMA
) -> tuple[np.ndarray, tuple[int, int]]:
    """Gaussian masks `[gh * gw, H, W]` (peak 1) centred on a grid, and the grid (gh, gw).

    Centres sit where a bilinear resize of the `[gh, gw]` grid to `[H, W]` puts its samples, so
    the upsampled saliency map lines up with the pixels that were perturbed.
    """
    gh, gw = -(-height // stride), -(-width // stride)
    cy = (np.arange(gh) + 0.5) * height / gh - 0.5
    cx = (np.arange(gw) + 0.5) * width / gw - 0.5
    y, x = np.arange(height)[:, None], np.arange(width)[None, :]
    dy2 = (y[None] - cy[:, None, None]) ** 2  # [gh, H, 1]
    dx2 = (x[None] - cx[:, None, None]) ** 2  # [gw, 1, W]
    masks = np.exp(-(dy2[:, None] + dx2[None]) / (2 * sigma**2)).astype(np.float32)
    return masks.reshape(gh * gw, height, width), (gh, gw)


def atari_perturbation_saliency(
    apply_fn: ApplyFn,
    params: Any,
    obs: Array,
    stride: int = STRIDE,
    mask_sigma: float = MASK_SIGMA,
    blur_sigma: float = BLUR_SIGMA,
) -> Array:
    """Greydanus et al.'s blur saliency of frame stacks `[batch, stack, H, W]` -> `[batch, H, W]`.

    s' = s * (1 - M) + blur(s) * M for a Gaussian mask M on a grid every `stride` pixels (the
    same mask on every frame of the stack); the `[gh, gw]` scores are resized bilinearly.
    """
    height, width = obs.shape[-2:]
    masks_np, grid = gaussian_masks(height, width, stride, mask_sigma)
    masks = jnp.asarray(masks_np)[:, None]  # [P, 1, H, W]

    def one(s):
        s = s.astype(jnp.float32)
        blurred = gaussian_blur(s, blur_sigma)
        perturbed = s[None] * (1.0 - masks) + blurred[None] * masks  # [P, stack, H, W]
        scores = perturbation_scores(apply_fn, params, s, perturbed).reshape(grid)
        return jax.image.resize(scores, (height, width), "bilinear")

    return jax.lax.map(one, obs)


def display_map(saliency: Array, is_atari: bool) -> Array:
    """A saliency map as it is shown and compared: Atari stacks `[b, stack, H, W]` summed over
    the stack to `[b, H, W]`; everything else (MinAtar `[b, H, W, C]`, per channel) unchanged."""
    return jnp.sum(saliency, axis=1) if is_atari and saliency.ndim == 4 else saliency


def _saliency(apply_fn: ApplyFn, params: Any, obs: Array, method: str, is_atari: bool) -> Array:
    if method == "gradient":
        return display_map(gradient_saliency(apply_fn, params, obs), is_atari)
    if method == "perturbation":
        if is_atari:
            return atari_perturbation_saliency(apply_fn, params, obs)
        return minatar_perturbation_saliency(apply_fn, params, obs)
    raise ValueError(f"method must be one of {SALIENCY_METHODS}; got {method!r}")


@functools.partial(xla.jit, static_argnums=(0, 3, 4))
def saliency(apply_fn: ApplyFn, params: Any, obs: Array, method: str, is_atari: bool) -> Array:
    """The `method` ('gradient' | 'perturbation') saliency of states, in `display_map` form."""
    return _saliency(apply_fn, params, obs, method, is_atari)


@functools.partial(xla.jit, static_argnums=(0, 3))
def q_and_saliency(
    apply_fn: ApplyFn, params: Any, obs: Array, is_atari: bool
) -> tuple[Array, dict[str, Array]]:
    """Q-values `[batch, actions]` and every method's saliency, in one compiled call."""
    q = apply_fn(params, obs.astype(jnp.float32))
    return q, {m: _saliency(apply_fn, params, obs, m, is_atari) for m in SALIENCY_METHODS}


def policy_saliency(policy, obs: Array, method: str) -> np.ndarray:
    """`saliency` of a `distill.load`-ed policy on env-format states `[batch, *obs_shape]`."""
    return np.asarray(saliency(policy.apply, policy.params, obs, method, policy.spec.is_atari))


def explain_states(policy, obs: Array) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """A `distill.load`-ed policy's Q-values and saliency maps {method: map} on states."""
    q, maps = q_and_saliency(policy.apply, policy.params, obs, policy.spec.is_atari)
    return np.asarray(q), {m: np.asarray(v) for m, v in maps.items()}


# ---------------------------------------------------------------------------- similarity


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation of two vectors `[n]`; nan when either is constant."""
    a = np.asarray(a, np.float64) - np.mean(a)
    b = np.asarray(b, np.float64) - np.mean(b)
    denom = np.sqrt(np.sum(a * a) * np.sum(b * b))
    return float(np.sum(a * b) / denom) if denom > 0 else float("nan")


def average_ranks(x: np.ndarray) -> np.ndarray:
    """Ranks 0..n-1 of a vector `[n]`, tied values sharing their mean rank (as scipy's)."""
    x = np.asarray(x)
    s = np.sort(x)
    return (np.searchsorted(s, x, "left") + np.searchsorted(s, x, "right") - 1) / 2.0


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman rank correlation of two vectors `[n]` (ties get mean ranks); nan if constant."""
    return pearson(average_ranks(a), average_ranks(b))


def top_k_overlap(a: np.ndarray, b: np.ndarray, k: int) -> float:
    """Share of the k largest entries of `a` that are among the k largest of `b` (`[n]` each)."""
    if not 0 < k <= np.size(a):
        raise ValueError(f"k must be in 1..{np.size(a)}; got {k}")
    top = lambda x: set(np.argsort(-np.asarray(x), kind="stable")[:k].tolist())  # noqa: E731
    return len(top(a) & top(b)) / k


def map_similarity(
    a: np.ndarray, b: np.ndarray, where: np.ndarray | None = None, top_fraction: float = 0.1
) -> dict:
    """How alike two policies' saliency maps `[batch, ...]` are: the mean over states of the
    Spearman and Pearson correlations and of the top-k overlap (k = `top_fraction` of the
    entries compared, at least 1).

    `where` (`[batch, ...]` bool) restricts each state's comparison to some entries: a MinAtar
    removal map is zero wherever there is no object, and those shared zeros alone would make any
    two maps correlate. States where a map is constant (no correlation defined) are left out of
    the correlations and counted in `undefined_states`.
    """
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.shape != b.shape:
        raise ValueError(f"maps must have the same shape; got {a.shape} and {b.shape}")
    where = np.ones(a.shape, bool) if where is None else np.broadcast_to(where, a.shape)
    rho, r, overlap = [], [], []
    for x, y, m in zip(a, b, where.astype(bool), strict=True):
        x, y = x[m], y[m]
        if x.size == 0:
            continue
        rho.append(spearman(x, y))
        r.append(pearson(x, y))
        overlap.append(top_k_overlap(x, y, max(1, int(round(top_fraction * x.size)))))
    rho, r = np.asarray(rho), np.asarray(r)
    mean = lambda v: float(np.nanmean(v)) if np.isfinite(v).any() else float("nan")  # noqa: E731
    return {
        "spearman": mean(rho),
        "pearson": mean(r),
        "top_k_overlap": float(np.mean(overlap)) if overlap else float("nan"),
        "states": len(overlap),
        "undefined_states": int(np.sum(~np.isfinite(rho))),
    }


# ---------------------------------------------------------------------------- agreement


def q_gap(q: Array) -> Array:
    """Best minus second-best Q-value `[batch, actions]` -> `[batch]`: the teacher's confidence."""
    top2 = jax.lax.top_k(q, 2)[0]
    return top2[:, 0] - top2[:, 1]


def gap_kinds(teacher_q: np.ndarray, num_kinds: int = len(GAP_KINDS)) -> np.ndarray:
    """Kind of each state `[batch]`: 0 .. num_kinds-1, equal-sized groups by increasing Q-gap
    (ties in the gap broken by order)."""
    gap = np.asarray(q_gap(jnp.asarray(teacher_q)))
    order = np.argsort(gap, kind="stable")
    kinds = np.empty(gap.size, np.int64)
    kinds[order] = np.arange(gap.size) * num_kinds // max(gap.size, 1)
    return kinds


def confusion_matrix(teacher_actions: Array, student_actions: Array, num_actions: int) -> Array:
    """Counts `[num_actions, num_actions]`: row = the teacher's action, column = the student's."""
    cm = jnp.zeros((num_actions, num_actions), jnp.int32)
    return cm.at[teacher_actions, student_actions].add(1)


def agreement_report(
    teacher_q: np.ndarray, student_q: np.ndarray, action_names: Sequence[str] | None = None
) -> dict:
    """How often argmax student = argmax teacher: overall, per teacher action, per gap kind."""
    teacher_q, student_q = np.asarray(teacher_q), np.asarray(student_q)
    if teacher_q.shape != student_q.shape or teacher_q.ndim != 2:
        raise ValueError(
            f"teacher_q and student_q must both be [batch, actions]; got {teacher_q.shape} "
            f"and {student_q.shape}"
        )
    num_actions = teacher_q.shape[1]
    names = list(action_names or [f"a{i}" for i in range(num_actions)])
    t, s = teacher_q.argmax(1), student_q.argmax(1)
    cm = np.asarray(confusion_matrix(jnp.asarray(t), jnp.asarray(s), num_actions))
    same = t == s
    kinds = gap_kinds(teacher_q)
    by_action = [
        {
            "action": names[a],
            "states": int(cm[a].sum()),
            "agreement": float(cm[a, a] / cm[a].sum()) if cm[a].sum() else float("nan"),
        }
        for a in range(num_actions)
    ]
    gap = np.asarray(q_gap(jnp.asarray(teacher_q)))
    by_gap = [
        {
            "kind": GAP_KINDS[k],
            "states": int(np.sum(kinds == k)),
            "gap_min": float(gap[kinds == k].min()) if np.any(kinds == k) else float("nan"),
            "gap_max": float(gap[kinds == k].max()) if np.any(kinds == k) else float("nan"),
            "agreement": float(same[kinds == k].mean()) if np.any(kinds == k) else float("nan"),
        }
        for k in range(len(GAP_KINDS))
    ]
    return {
        "states": int(t.size),
        "agreement": float(same.mean()),
        "confusion": cm.tolist(),
        "action_names": names,
        "by_teacher_action": by_action,
        "by_gap": by_gap,
        # the most confident teacher first: those disagreements are the telling ones
        "disagreements": [int(i) for i in np.flatnonzero(~same)[np.argsort(-gap[~same])]],
    }


def distinct_states(obs: np.ndarray, indices: Sequence[int], n: int) -> list[int]:
    """The first `n` of `indices` whose states differ from every earlier one's (for figures:
    a near-deterministic game revisits the same state from several envs)."""
    seen, out = set(), []
    for i in indices:
        key = np.asarray(obs[i]).tobytes()
        if key not in seen:
            seen.add(key)
            out.append(int(i))
        if len(out) == n:
            break
    return out


# ---------------------------------------------------------------------------- states


def collect_states(
    policy,
    num_states: int,
    seed: int = 0,
    epsilon: float = evaluate.EVAL_EPSILON,
    spacing: int = 32,
) -> np.ndarray:
    """States the policy visits playing epsilon-greedily, `[num_states, *obs_shape]`.

    Parallel envs play from their own resets; every `spacing`-th step is kept (not the reset),
    so the states spread over the episodes instead of repeating their similar openings.
    """
    positive_int("num_states", num_states)
    positive_int("spacing", spacing)
    if policy.spec.is_atari:
        return _collect_atari(policy, num_states, seed, epsilon, spacing)
    num_envs = min(16, -(-num_states // 4))  # several kept steps per game reach further in
    kept_rows = -(-num_states // num_envs)
    config = dataset.DatasetConfig(
        states=num_envs * kept_rows * spacing, num_envs=num_envs, epsilon=epsilon, seed=seed
    )
    init, shard = dataset.make_gymnax_generator(policy, config)
    run = xla.jit(shard, static_argnums=2)
    _, record = run(policy.params, init(jax.random.PRNGKey(seed)), kept_rows * spacing)
    obs = np.asarray(record["obs"])[spacing - 1 :: spacing]  # [kept_rows, envs, ...]
    return obs.reshape(-1, *obs.shape[2:])[:num_states]


def _collect_atari(policy, num_states, seed, epsilon, spacing) -> np.ndarray:
    from distill.teacher import epsilon_greedy

    num_envs = min(8, -(-num_states // 4))
    env = envs.make_atari(policy.env_id, num_envs, training=False)
    act = xla.jit(lambda p, o, k: epsilon_greedy(k, policy.apply(p, o), epsilon))
    key = jax.random.PRNGKey(seed)
    kept = []
    try:
        obs = envs.reset_in_env_order(env, seed)
        while len(kept) * num_envs < num_states:
            for _ in range(spacing):
                key, k = jax.random.split(key)
                action = np.asarray(act(policy.params, obs, k), dtype=np.int32)
                obs, *_ = envs.in_env_order(*env.step(action))
            kept.append(np.array(obs))
    finally:
        env.close()
    return np.concatenate(kept)[:num_states]


# ---------------------------------------------------------------------------- linear student


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

    loss: str = "kl"  # nll | mse | kl, as in distill.losses
    tau: float = losses.DEFAULT_TAU
    updates: int = 2_000
    batch_size: int = 256
    lr: float = 1e-2  # Adam
    l2: float = 1e-4  # weight decay on W: fewer spurious weights, easier to read
    held_out: float = 0.125  # fraction of the dataset's envs kept for measuring fidelity
    seed: int = 0

    def __post_init__(self):
        require(self.loss in losses.LOSSES, "loss", self.loss, f"one of {losses.LOSSES}")
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


def make_linear_fit(config: LinearConfig, obs_shape: Sequence[int], num_actions: int):
    """Pure `fit(arrays, key) -> (params, loss [updates])` for a dataset's arrays (stack 1)."""
    optimizer = optax.adam(config.lr)

    def loss_fn(params, obs, teacher_q):
        student_q = linear_q(params, obs)
        loss = losses.distillation_loss(config.loss, student_q, teacher_q, config.tau)
        return loss + config.l2 * jnp.sum(jnp.square(params["w"]))

    def update(carry, key, arrays):
        params, opt_state = carry
        obs, teacher_q = dataset.sample(arrays, key, config.batch_size, 1, 0)
        loss, grads = jax.value_and_grad(loss_fn)(params, obs, teacher_q)
        step, opt_state = optimizer.update(grads, opt_state, params)
        return (optax.apply_updates(params, step), opt_state), loss

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


# ---------------------------------------------------------------------------- a whole report


def policy_label(policy, taken: Sequence[str] = ()) -> str:
    """A short name for a policy in figures: its network, and its folder when that differs."""
    folder = Path(policy.path).name
    label = policy.net if folder in (policy.net, "") else f"{policy.net} ({folder})"
    out, i = label, 2
    while out in taken:
        out, i = f"{label} #{i}", i + 1
    return out


def check_explainable(env_id: str) -> None:
    """Saliency maps need image observations: MinAtar's object channels or Atari's frames."""
    spec = envs.spec(env_id)
    if not (spec.is_atari or spec.env_id in envs.MINATAR_IDS):
        raise ConfigError(
            f"{spec.env_id}: observations {spec.obs_shape} are not images; explanations need a "
            "MinAtar or Atari policy"
        )


def untrained_policy(env_id: str, net: str, seed: int = 0):
    """A network with its initial random weights, as a `Policy`: the baseline that says how
    alike two policies' maps or actions are by chance (shared image structure, a default
    action)."""
    from distill import checkpoint, networks

    spec = envs.spec(env_id)
    module = networks.build(net, spec.obs_shape, spec.num_actions)
    init = xla.jit(lambda k: networks.init_params(module, k, spec.obs_shape, spec.obs_dtype))
    params = init(jax.random.PRNGKey(seed))  # one compiled program: faster than op by op
    manifest = {"kind": "untrained", "env_id": spec.env_id, "net": net, "seed": seed}
    return checkpoint.Policy(
        spec.env_id, net, spec.num_actions, params, manifest, f"untrained {net}", module.apply
    )


def explain_policies(
    teacher,
    students: Sequence,
    obs: np.ndarray,
    top_fraction: float = 0.1,
    baselines: bool = True,
    seed: int = 0,
) -> dict:
    """Saliency maps of a teacher and its students on the same states `[n, *obs_shape]`, how
    similar each student's maps are to the teacher's, and how often each agrees with it.

    With `baselines`, an untrained network of each student's architecture gets the same
    treatment (under "baselines"): similarity and agreement by chance, to read the others by.
    """
    check_explainable(teacher.env_id)
    for s in students:
        if s.env_id != teacher.env_id:
            raise ConfigError(f"{s.path}: a student for {s.env_id}, not {teacher.env_id}")
    names = ["teacher"]
    for s in students:
        names.append(policy_label(s, names))
    policies = dict(zip(names, [teacher, *students], strict=True))
    untrained = {}
    if baselines:
        for s in students:
            untrained.setdefault(f"untrained {s.net}", untrained_policy(s.env_id, s.net, seed))
    everyone = {**policies, **untrained}
    obs = np.asarray(obs)
    q, maps = {}, {m: {} for m in SALIENCY_METHODS}
    for n, p in everyone.items():
        q[n], by_method = explain_states(p, obs)
        for m, v in by_method.items():
            maps[m][n] = v
    actions = envs.action_names(teacher.env_id)
    # MinAtar removal maps can only be non-zero where there is an object: compare those cells
    compared = {"gradient": None, "perturbation": None if teacher.spec.is_atari else obs > 0}

    def versus_teacher(n: str, p) -> dict:
        return {
            "path": p.path,
            "net": p.net,
            "similarity": {
                m: map_similarity(maps[m]["teacher"], maps[m][n], compared[m], top_fraction)
                for m in SALIENCY_METHODS
            },
            **agreement_report(q["teacher"], q[n], actions),
        }

    students_out = {n: versus_teacher(n, p) for n, p in policies.items() if n != "teacher"}
    for n, p in policies.items():
        if n != "teacher" and baselines:
            students_out[n]["untrained"] = f"untrained {p.net}"
    return {
        "env_id": teacher.env_id,
        "teacher": {"path": teacher.path, "net": teacher.net},
        "states": int(obs.shape[0]),
        "distinct_states": len({o.tobytes() for o in obs}),
        "action_names": list(actions),
        "channel_names": list(envs.MINATAR_CHANNELS.get(teacher.env_id, ())),
        "students": students_out,
        "baselines": {n: versus_teacher(n, p) for n, p in untrained.items()},
        "obs": obs,
        "q": q,
        "maps": maps,
    }


def _finite_or_none(x):
    """JSON has no NaN: an undefined number (an action never taken, a constant map) -> null."""
    if isinstance(x, dict):
        return {k: _finite_or_none(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_finite_or_none(v) for v in x]
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


def numbers(result: dict) -> dict:
    """The JSON-ready part of `explain_policies`: no arrays, and null for undefined numbers."""
    return _finite_or_none({k: v for k, v in result.items() if k not in ("obs", "q", "maps")})


def write_explanation(
    result: dict,
    out: str | Path,
    linear: dict | None = None,
    state: int = 0,
    disagreements: int = 4,
) -> list[Path]:
    """Figures (PNG) and explain.json into folder `out`; returns the files written.

    `result` from `explain_policies`; `linear` (optional) from `linear_report`. The per-state
    saliency figures show state `state`; each student's figure, up to `disagreements` states.
    """
    import matplotlib.pyplot as plt

    from distill import plotting
    from distill.checkpoint import atomic_write_bytes, atomic_write_json

    folder = Path(out)
    if folder.exists() and not folder.is_dir():
        raise ConfigError(f"out={str(out)!r} is a file, not a folder")
    folder.mkdir(parents=True, exist_ok=True)
    written = []

    def save(fig, name):
        fig.savefig(folder / name, dpi=110, bbox_inches="tight")
        plt.close(fig)
        written.append(folder / name)

    obs, q, channels = result["obs"], result["q"], result["channel_names"] or None
    for m in SALIENCY_METHODS:
        maps = {n: v[state] for n, v in result["maps"][m].items()}
        fig = plotting.saliency_comparison(
            obs[state], maps, channels, title=f"{m} saliency, {result['env_id']}, state {state}"
        )
        save(fig, f"saliency_{m}.png")
        means = {n: v.mean(axis=0) for n, v in result["maps"][m].items()}
        fig = plotting.saliency_comparison(
            obs.mean(axis=0),
            means,
            channels,
            title=f"{m} saliency, {result['env_id']}, mean over {obs.shape[0]} states",
        )
        save(fig, f"saliency_{m}_mean.png")
    students = result["students"]
    if students:
        save(plotting.agreement_overview(students, result["env_id"]), "agreement.png")
        for i, (n, r) in enumerate(students.items()):
            idx = distinct_states(obs, r["disagreements"], disagreements)
            fig = plotting.disagreement_states(
                obs[idx],
                q["teacher"][idx],
                q[n][idx],
                r["action_names"],
                f"{n} vs teacher",
                channels,
            )
            save(fig, f"disagreements_{i}.png")
    payload = numbers(result)
    if linear is not None:
        fig = plotting.linear_weights(
            preference_weights(linear["w"]),
            channels,
            result["action_names"],
            "linear student: W minus its mean over actions",
        )
        save(fig, "linear_weights.png")
        buf = io.BytesIO()
        np.savez(buf, w=np.asarray(linear["w"]), b=np.asarray(linear["b"]))
        atomic_write_bytes(folder / "linear_student.npz", buf.getvalue())
        written.append(folder / "linear_student.npz")
        scalars = {k: v for k, v in linear.items() if k not in ("w", "b")}
        payload["linear"] = _finite_or_none(scalars)
    atomic_write_json(folder / "explain.json", payload)
    written.append(folder / "explain.json")
    return written
