"""Saliency (`distill.explain.saliency_maps`) against hand-computed references; map similarity."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from distill import explain

# Test data comes from numpy's generator: JAX's eager random ops would compile one by one.


def linear_policy(seed: int = 0, shape=(10, 10, 4), actions: int = 3, ignore: int | None = None):
    """(apply, params) of Q(s) = sum s * W + b with random W; channel `ignore` has zero weights."""
    rng = np.random.default_rng(seed)
    w = rng.normal(size=(*shape, actions)).astype(np.float32)
    if ignore is not None:
        w[..., ignore, :] = 0.0
    b = rng.normal(size=actions).astype(np.float32)
    return explain.linear_q, {"w": jnp.asarray(w), "b": jnp.asarray(b)}


def random_states(seed: int = 1, n: int = 6, shape=(10, 10, 4), p: float = 0.3) -> jax.Array:
    return jnp.asarray(np.random.default_rng(seed).random((n, *shape)) < p)


def random_frames(seed: int, n: int) -> jax.Array:
    """Atari-like frame stacks `[n, 4, 84, 84]` uint8."""
    return jnp.asarray(np.random.default_rng(seed).integers(0, 256, (n, 4, 84, 84), np.uint8))


# ---------------------------------------------------------------------------- saliency


@pytest.mark.parametrize("jit", [False, True])
def test_gradient_saliency_of_a_linear_policy_is_abs_w_of_the_greedy_action(jit):
    apply, params = linear_policy()
    obs = random_states()
    fn = jax.jit(explain.gradient_saliency, static_argnums=0) if jit else explain.gradient_saliency
    sal = np.asarray(fn(apply, params, obs))
    greedy = np.asarray(apply(params, obs)).argmax(-1)
    w = np.asarray(params["w"])
    for i, a in enumerate(greedy):
        np.testing.assert_allclose(sal[i], np.abs(w[..., a]), rtol=1e-6)
    chosen = jnp.full((obs.shape[0],), 2)
    sal2 = np.asarray(explain.gradient_saliency(apply, params, obs, chosen))
    np.testing.assert_allclose(sal2, np.broadcast_to(np.abs(w[..., 2]), sal2.shape), rtol=1e-6)


def test_removal_saliency_of_a_linear_policy_by_hand():
    apply, params = linear_policy()
    obs = random_states()
    sal = np.asarray(explain.minatar_perturbation_saliency(apply, params, obs))
    # removing the object in cell (h, w, c) lowers Q by W[h, w, c, :]; the advantages by that
    # minus its mean over actions
    w = np.asarray(params["w"])
    centred = w - w.mean(-1, keepdims=True)
    per_cell = 0.5 * np.sum(centred**2, axis=-1)  # [10, 10, 4]
    expected = np.where(np.asarray(obs), per_cell, 0.0)
    np.testing.assert_allclose(sal, expected, rtol=1e-4, atol=1e-5)
    assert (sal[~np.asarray(obs)] == 0).all()  # nothing to remove: exactly zero
    toggled = np.asarray(explain.minatar_perturbation_saliency(apply, params, obs, "toggle"))
    np.testing.assert_allclose(toggled, np.broadcast_to(per_cell, toggled.shape), rtol=1e-3)
    with pytest.raises(ValueError, match="mode"):
        explain.minatar_perturbation_saliency(apply, params, obs, "blur")


def test_a_channel_the_policy_ignores_gets_zero_saliency():
    apply, params = linear_policy(ignore=2)
    obs = random_states(p=0.5)
    for sal in (
        explain.gradient_saliency(apply, params, obs),
        explain.minatar_perturbation_saliency(apply, params, obs),
        explain.minatar_perturbation_saliency(apply, params, obs, "toggle"),
    ):
        sal = np.asarray(sal)
        assert sal[..., 2].max() <= 1e-6 * sal.max()  # zero up to float32 rounding
        assert (sal[..., [0, 1, 3]] > 0).any()


def test_a_shift_shared_by_all_actions_is_not_salient():
    """Perturbation saliency sees the advantages: a term added to every action counts for 0."""
    v = jnp.asarray(np.random.default_rng(3).normal(size=(10, 10, 4)), jnp.float32)

    def apply(params, obs):  # the same state value for every action
        return jnp.repeat(jnp.einsum("bhwc,hwc->b", obs.astype(jnp.float32), v)[:, None], 3, 1)

    sal = np.asarray(explain.minatar_perturbation_saliency(apply, None, random_states()))
    np.testing.assert_allclose(sal, 0.0, atol=1e-9)


def test_q_and_saliency_in_one_call_match_the_parts():
    apply, params = linear_policy()
    obs = random_states()
    q, maps = explain.q_and_saliency(apply, params, obs, False)
    np.testing.assert_allclose(q, apply(params, obs), rtol=1e-6)
    np.testing.assert_allclose(
        maps["gradient"], explain.gradient_saliency(apply, params, obs), rtol=1e-6
    )
    np.testing.assert_allclose(
        maps["perturbation"],
        explain.minatar_perturbation_saliency(apply, params, obs),
        rtol=1e-5,
        atol=1e-7,
    )


def test_gaussian_blur_matches_scipy():
    ndimage = pytest.importorskip("scipy.ndimage")
    x = np.random.default_rng(0).uniform(0, 255, (2, 4, 84, 84)).astype(np.float32)
    ours = np.asarray(jax.jit(explain.gaussian_blur, static_argnums=1)(jnp.asarray(x), 3.0))
    ref = ndimage.gaussian_filter(x.astype(np.float64), sigma=(0, 0, 3, 3), mode="reflect")
    np.testing.assert_allclose(ours, ref, rtol=1e-4, atol=1e-3)


def test_gaussian_masks_peak_on_their_grid():
    masks, grid = explain.gaussian_masks(84, 84, stride=5, sigma=5.0)
    assert grid == (17, 17) and masks.shape == (289, 84, 84)
    assert np.isclose(masks.max(), 1.0, atol=0.02) and masks.min() >= 0
    peaks = np.unravel_index(masks.reshape(289, -1).argmax(1), (84, 84))
    centres = (np.arange(17) + 0.5) * 84 / 17 - 0.5
    assert np.abs(peaks[0] - np.repeat(centres, 17)).max() <= 0.5
    assert np.abs(peaks[1] - np.tile(centres, 17)).max() <= 0.5


def test_atari_blur_saliency_sees_only_what_the_policy_reads():
    w = np.random.default_rng(0).normal(size=(4, 84, 84, 6)).astype(np.float32)
    w[:, :, 40:] = 0.0  # the policy reads columns < 40 only

    def apply(params, obs):
        return jnp.einsum("bshw,shwa->ba", obs.astype(jnp.float32) / 255.0, w)

    frames = np.array(random_frames(1, 2))
    frames[1] = 100  # state 1 is flat: blurring it changes nothing
    sal = np.asarray(explain.atari_perturbation_saliency(apply, None, frames))
    assert sal.shape == (2, 84, 84) and np.isfinite(sal).all()
    assert sal[0, :, :30].max() > 0
    assert sal[0, :, 75:].max() < 1e-6 * sal[0].max()  # masks centred there never reach col 39
    assert sal[1].max() < 1e-6 * sal[0].max()


def test_atari_gradient_saliency_is_per_raw_pixel():
    w = jnp.asarray(np.random.default_rng(0).normal(size=(4, 84, 84, 6)), jnp.float32)
    apply = lambda p, obs: jnp.einsum("bshw,shwa->ba", obs.astype(jnp.float32) / 255.0, w)  # noqa: E731
    frames = random_frames(1, 2)
    sal = np.asarray(explain.saliency(apply, None, frames, "gradient", True))
    a = np.asarray(apply(None, frames)).argmax(-1)
    for i in range(2):
        expected = np.abs(np.asarray(w)[..., a[i]]).sum(0) / 255.0  # summed over the stack
        np.testing.assert_allclose(sal[i], expected, rtol=1e-5)


# ---------------------------------------------------------------------------- similarity


def test_similarity_of_identical_and_opposite_maps():
    maps = np.random.default_rng(0).random((5, 10, 10, 4))
    same = explain.map_similarity(maps, maps)
    assert same["spearman"] == pytest.approx(1.0)
    assert same["pearson"] == pytest.approx(1.0)
    assert same["top_k_overlap"] == 1.0 and same["undefined_states"] == 0
    opposite = explain.map_similarity(maps, -maps)
    assert opposite["spearman"] == pytest.approx(-1.0)
    assert opposite["pearson"] == pytest.approx(-1.0)
    assert opposite["top_k_overlap"] == 0.0


def test_correlations_match_references_with_ties():
    stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(0)
    a = rng.integers(0, 4, 50).astype(float)  # many ties
    b = a + rng.normal(0, 1.5, 50)
    assert explain.spearman(a, b) == pytest.approx(stats.spearmanr(a, b).statistic)
    assert explain.pearson(a, b) == pytest.approx(np.corrcoef(a, b)[0, 1])
    np.testing.assert_allclose(explain.average_ranks([3, 1, 3, 2]), [2.5, 0, 2.5, 1])
    assert explain.top_k_overlap([5, 4, 3, 2, 1], [1, 4, 5, 2, 3], 2) == 0.5


def test_similarity_where_and_constant_maps():
    a = np.zeros((2, 4))
    a[0] = [1, 2, 3, 0]
    b = np.array([[1, 2, 3, 9], [0, 0, 0, 0]], float)  # state 1: constant, no correlation
    where = np.array([[True, True, True, False], [True, True, True, True]])
    sim = explain.map_similarity(a, b, where)
    assert sim["spearman"] == pytest.approx(1.0)  # the unequal last entry is not compared
    assert sim["undefined_states"] == 1 and sim["states"] == 2
    assert explain.map_similarity(a, b)["spearman"] < 1.0
    with pytest.raises(ValueError, match="same shape"):
        explain.map_similarity(a, b[:, :3])
