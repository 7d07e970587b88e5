"""Saliency: where a policy looks, and how alike two policies' saliency maps are.

After Greydanus et al. (2018), "Visualizing and Understanding Atari Agents" (ICML):

- *gradient* (Jacobian) saliency |dQ(s, a*)/ds|, a* = argmax_a Q(s, a) (Simonyan et al. 2014);
- *perturbation* saliency S(s, i, j) = 1/2 ||A(s) - A(s')||^2, where s' is s with one region
  changed and A = Q - mean_a Q are the advantages (a shift shared by every action changes
  nothing the policy does, and a KL student's outputs are Q-values only up to such a shift).
  On Atari s' = s * (1 - M) + blur(s, sigma_A = 3) * M, with M a Gaussian of sigma = 5 centred on
  (i, j), computed every `stride` pixels and upsampled bilinearly, as in the paper (one mask for
  every frame of the stack). On MinAtar each channel is a 0/1 map of one kind of object, so s'
  removes the object in one cell of one channel (or toggles the cell), one map per channel.

Maps are compared by Spearman and Pearson correlation and by the overlap of their top-k entries.

Functions that take `apply_fn` take a `Policy.apply`-style
`apply(params, obs [batch, *obs_shape]) -> [batch, actions]` and are jittable with it static.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from distill import xla

Array = jax.Array
ApplyFn = Callable[[Any, Array], Array]

# Greydanus et al. (2018): mask sigma 5, blur sigma 3, a score every 5 pixels.
MASK_SIGMA = 5.0
BLUR_SIGMA = 3.0
STRIDE = 5
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
