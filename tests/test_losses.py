"""Tests for distill.losses against float64 numpy references written from the paper's formulas."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from distill import losses

# Plain and jitted variants of every loss (rlax/optax style); tau is closed over, so the jitted
# kl still sees a Python float and checks it at trace time.
VARIANTS = pytest.mark.parametrize("use_jit", [False, True], ids=["nojit", "jit"])


@functools.cache
def _variant(fn, use_jit):
    # Cached so that a test reusing a function and shape reuses its compiled executable.
    return jax.jit(fn) if use_jit else fn


@functools.cache
def _kl_fn(tau):
    return functools.partial(losses.kl, tau=tau)


# --- numpy references (float64, log-sum-exp for stability) ---------------------------------------


def _log_softmax(x):
    x = np.asarray(x, np.float64)
    m = np.max(x, axis=-1, keepdims=True)
    return x - m - np.log(np.sum(np.exp(x - m), axis=-1, keepdims=True))


def _nll_ref(student_q, teacher_q):
    best = np.argmax(teacher_q, axis=-1)
    return -np.mean(_log_softmax(student_q)[np.arange(len(best)), best])


def _mse_ref(student_q, teacher_q):
    diff = np.asarray(teacher_q, np.float64) - np.asarray(student_q, np.float64)
    return np.mean(np.sum(diff**2, axis=-1))


def _kl_ref(student_q, teacher_q, tau=0.01):
    log_p_t = _log_softmax(np.asarray(teacher_q, np.float64) / tau)
    p_t = np.exp(log_p_t)
    return np.mean(np.sum(p_t * (log_p_t - _log_softmax(student_q)), axis=-1))


def _softmax(x):
    return np.exp(_log_softmax(x))


# --- data -----------------------------------------------------------------------------------------

STUDENT_Q = np.array(
    [[0.5, -1.2, 2.0, 0.3], [1.5, 1.4, -0.7, 0.0], [-2.0, 0.1, 0.2, 3.1]], np.float32
)
TEACHER_Q = np.array(
    [[1.1, 0.2, 1.3, -0.5], [2.0, 1.95, 0.4, 0.1], [0.3, -1.0, 0.25, 0.5]], np.float32
)


def _random_q(seed, shape=(16, 6), low=-3.0, high=3.0):
    return np.random.default_rng(seed).uniform(low, high, shape).astype(np.float32)


def _extreme_q(seed, shape=(8, 18)):
    # Q-values in the hundreds, as a DQN teacher on a high-scoring game produces them.
    return _random_q(seed, shape, 300.0, 900.0)


# --- values ---------------------------------------------------------------------------------------


@VARIANTS
def test_nll_literal(use_jit):
    got = _variant(losses.nll, use_jit)(STUDENT_Q, TEACHER_Q)
    # Teacher's best actions: 2, 0, 3.
    log_p = _log_softmax(STUDENT_Q)
    want = -(log_p[0, 2] + log_p[1, 0] + log_p[2, 3]) / 3
    np.testing.assert_allclose(got, want, rtol=1e-6)
    assert got.shape == ()


@VARIANTS
def test_mse_literal(use_jit):
    got = _variant(losses.mse, use_jit)(STUDENT_Q, TEACHER_Q)
    want = np.mean(np.sum((TEACHER_Q.astype(np.float64) - STUDENT_Q) ** 2, axis=1))
    np.testing.assert_allclose(got, want, rtol=1e-6)


def test_mse_sums_over_actions_and_averages_over_batch():
    student = np.zeros((2, 3), np.float32)
    teacher = np.array([[1.0, 2.0, 2.0], [0.0, 0.0, 3.0]], np.float32)
    # Sample sums 9 and 9: the mean over the batch is 9, not the elementwise mean 3.
    np.testing.assert_allclose(losses.mse(student, teacher), 9.0)


@VARIANTS
@pytest.mark.parametrize("seed", [0])
def test_random_q_match_numpy(use_jit, seed):
    student, teacher = _random_q(seed), _random_q(seed + 100)
    np.testing.assert_allclose(
        _variant(losses.nll, use_jit)(student, teacher), _nll_ref(student, teacher), rtol=1e-5
    )
    np.testing.assert_allclose(
        _variant(losses.mse, use_jit)(student, teacher), _mse_ref(student, teacher), rtol=1e-5
    )
    np.testing.assert_allclose(
        _variant(_kl_fn(0.01), use_jit)(student, teacher),
        _kl_ref(student, teacher, 0.01),
        rtol=1e-4,
        atol=1e-5,
    )


@VARIANTS
def test_kl_default_tau_is_the_papers(use_jit):
    assert losses.DEFAULT_TAU == 0.01
    student, teacher = _random_q(2), _random_q(3)
    np.testing.assert_allclose(
        _variant(losses.kl, use_jit)(student, teacher), _kl_ref(student, teacher, 0.01), rtol=1e-4
    )


@VARIANTS
@pytest.mark.parametrize("name", ["nll", "mse", "kl"])
def test_extreme_q_values_finite_and_match_stable_reference(use_jit, name):
    student, teacher = _extreme_q(4), _extreme_q(5)
    # A naive softmax of teacher_q / 0.01 overflows; the loss must not.
    with np.errstate(over="ignore"):
        assert np.isinf(np.exp(teacher.astype(np.float64) / 0.01)).any()
    fn = {"nll": losses.nll, "mse": losses.mse, "kl": _kl_fn(0.01)}[name]
    ref = {"nll": _nll_ref, "mse": _mse_ref, "kl": _kl_ref}[name]
    got = _variant(fn, use_jit)(student, teacher)
    assert np.isfinite(got)
    np.testing.assert_allclose(got, ref(student, teacher), rtol=1e-4)


@VARIANTS
def test_tied_teacher_nll_picks_lowest_index(use_jit):
    teacher = np.array([[1.0, 3.0, 3.0, 0.0]], np.float32)
    student = np.array([[0.0, 1.0, 2.0, 0.5]], np.float32)
    got = _variant(losses.nll, use_jit)(student, teacher)
    log_p = _log_softmax(student)[0]
    np.testing.assert_allclose(got, -log_p[1], rtol=1e-6)
    assert not np.isclose(got, -log_p[2])


@VARIANTS
def test_tied_teacher_kl_splits_mass_equally(use_jit):
    teacher = np.array([[1.0, 3.0, 3.0, 0.0]], np.float32)
    student = np.array([[0.0, 1.0, 2.0, 0.5]], np.float32)
    got = _variant(_kl_fn(0.01), use_jit)(student, teacher)
    log_p = _log_softmax(student)[0]
    # p_T = [0, 1/2, 1/2, 0] at tau = 0.01.
    want = 0.5 * (np.log(0.5) - log_p[1]) + 0.5 * (np.log(0.5) - log_p[2])
    np.testing.assert_allclose(got, want, rtol=1e-5)


@VARIANTS
def test_kl_tau_one_matches_direct_formula(use_jit):
    got = _variant(_kl_fn(1.0), use_jit)(STUDENT_Q, TEACHER_Q)
    t = TEACHER_Q.astype(np.float64)
    s = STUDENT_Q.astype(np.float64)
    p = np.exp(t) / np.exp(t).sum(axis=1, keepdims=True)
    q = np.exp(s) / np.exp(s).sum(axis=1, keepdims=True)
    want = np.mean(np.sum(p * np.log(p / q), axis=1))
    np.testing.assert_allclose(got, want, rtol=1e-5)


@VARIANTS
@pytest.mark.parametrize("tau", [0.01, 0.1, 1.0])
def test_kl_zero_when_student_matches_sharpened_teacher(use_jit, tau):
    teacher = _random_q(6, low=-0.03, high=0.03) if tau == 0.01 else _random_q(6)
    student = teacher / tau
    got = _variant(_kl_fn(tau), use_jit)(student, teacher)
    np.testing.assert_allclose(got, 0.0, atol=1e-5)
    # ... and strictly positive for a student that does not match.
    assert _variant(_kl_fn(tau), use_jit)(student + _random_q(7), teacher) > 1e-3


@VARIANTS
def test_kl_at_small_tau_approaches_nll_for_clear_teacher_max(use_jit):
    # Every row has a unique best action at least 1 above the rest: p_T is one-hot to e^-100.
    teacher = np.array([[0.0, 2.0, 1.0], [5.0, 1.0, 3.9], [-1.0, -2.0, 0.5]], np.float32)
    student = STUDENT_Q[:, :3]
    kl = _variant(_kl_fn(0.01), use_jit)(student, teacher)
    nll = _variant(losses.nll, use_jit)(student, teacher)
    np.testing.assert_allclose(kl, nll, rtol=1e-5)
    # At tau = 1 the teacher is soft and the two differ.
    assert abs(losses.kl(student, teacher, 1.0) - nll) > 0.1


@pytest.mark.parametrize("seed", range(3))
def test_kl_nonnegative(seed):
    assert losses.kl(_random_q(seed), _random_q(seed + 10), 0.5) >= 0.0


# --- gradients ------------------------------------------------------------------------------------


@VARIANTS
@pytest.mark.parametrize("name", ["nll", "mse", "kl"])
def test_gradients_at_extreme_values_finite_and_analytic(use_jit, name):
    student, teacher = _extreme_q(8, (4, 6)), _extreme_q(9, (4, 6))
    fn = {"nll": losses.nll, "mse": losses.mse, "kl": _kl_fn(0.01)}[name]
    grad = _variant(jax.grad(fn), use_jit)(student, teacher)
    assert grad.shape == student.shape
    assert np.all(np.isfinite(grad))
    b = student.shape[0]
    s, t = student.astype(np.float64), teacher.astype(np.float64)
    if name == "mse":
        want = -2.0 * (t - s) / b
    elif name == "nll":
        want = (_softmax(s) - np.eye(s.shape[1])[np.argmax(t, axis=1)]) / b
    else:
        want = (_softmax(s) - _softmax(t / 0.01)) / b
    np.testing.assert_allclose(grad, want, rtol=1e-4, atol=1e-6)


# --- checks ---------------------------------------------------------------------------------------


@VARIANTS
@pytest.mark.parametrize("tau", [0.0, -0.5])
def test_kl_rejects_nonpositive_tau(use_jit, tau):
    with pytest.raises(ValueError, match=rf"tau.*{tau}"):
        _variant(_kl_fn(tau), use_jit)(STUDENT_Q, TEACHER_Q)


@VARIANTS
@pytest.mark.parametrize("name", ["nll", "mse", "kl"])
@pytest.mark.parametrize(
    "student_shape, teacher_shape",
    [((3, 4), (3, 5)), ((3, 4), (2, 4)), ((4,), (4,)), ((2, 3, 4), (2, 3, 4))],
)
def test_bad_shapes_raise(use_jit, name, student_shape, teacher_shape):
    fn = {"nll": losses.nll, "mse": losses.mse, "kl": losses.kl}[name]
    student = np.zeros(student_shape, np.float32)
    teacher = np.zeros(teacher_shape, np.float32)
    pattern = rf"{_re_shape(student_shape)}.*{_re_shape(teacher_shape)}"
    with pytest.raises(ValueError, match=pattern):
        _variant(fn, use_jit)(student, teacher)


def _re_shape(shape):
    return str(tuple(shape)).replace("(", r"\(").replace(")", r"\)")


# --- dispatch -------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", losses.LOSSES)
def test_distillation_loss_dispatch(name):
    got = losses.distillation_loss(name, STUDENT_Q, TEACHER_Q, 0.5)
    want = {
        "nll": losses.nll(STUDENT_Q, TEACHER_Q),
        "mse": losses.mse(STUDENT_Q, TEACHER_Q),
        "kl": losses.kl(STUDENT_Q, TEACHER_Q, 0.5),
    }[name]
    np.testing.assert_allclose(got, want, rtol=1e-6)


def test_distillation_loss_uses_tau_for_kl_only():
    kl_sharp = losses.distillation_loss("kl", STUDENT_Q, TEACHER_Q, 0.01)
    kl_soft = losses.distillation_loss("kl", STUDENT_Q, TEACHER_Q, 1.0)
    assert abs(kl_sharp - kl_soft) > 1e-3
    for name in ("nll", "mse"):
        np.testing.assert_allclose(
            losses.distillation_loss(name, STUDENT_Q, TEACHER_Q, 0.01),
            losses.distillation_loss(name, STUDENT_Q, TEACHER_Q, 1.0),
        )


def test_distillation_loss_unknown_name():
    with pytest.raises(ValueError, match=r"'nll', 'mse', 'kl'.*'xent'"):
        losses.distillation_loss("xent", STUDENT_Q, TEACHER_Q, 0.01)


# --- DQN loss -------------------------------------------------------------------------------------


@pytest.mark.parametrize("delta", [1.0, 2.0])
def test_huber_literal(delta):
    x = jnp.array([-3.0, -1.0, -0.5, 0.0, 0.5, 1.0, 3.0])
    want = {
        1.0: [2.5, 0.5, 0.125, 0.0, 0.125, 0.5, 2.5],
        2.0: [4.0, 0.5, 0.125, 0.0, 0.125, 0.5, 4.0],
    }[delta]
    np.testing.assert_allclose(losses.huber(x, delta), want, rtol=1e-6)


# Hand-computed: online argmax [1, 0, 0] (target net's own argmax would be [2, 2, 1]);
# bootstrap [20, 40, 0.25]; targets [11, -1, 0.75]; q(a) [1, 6, 0]; TD errors [10, -7, 0.75];
# Huber [9.5, 6.5, 0.28125]; mean 16.28125 / 3.
TD_INPUTS = dict(
    q_tm1=np.array([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0], [0.0, 0.0, 0.0]], np.float32),
    a_tm1=np.array([0, 2, 1], np.int32),
    r_t=np.array([1.0, -1.0, 0.5], np.float32),
    discount_t=np.array([0.5, 0.0, 1.0], np.float32),
    q_t_online=np.array([[0.0, 5.0, 1.0], [3.0, 1.0, 2.0], [1.0, 0.0, 0.0]], np.float32),
    q_t_target=np.array([[10.0, 20.0, 30.0], [40.0, 50.0, 60.0], [0.25, 9.0, 9.0]], np.float32),
)


@VARIANTS
def test_double_q_td_loss_literal(use_jit):
    got = _variant(losses.double_q_td_loss, use_jit)(**TD_INPUTS)
    np.testing.assert_allclose(got, 16.28125 / 3, rtol=1e-6)


def test_double_q_td_loss_gradients():
    grads = jax.jit(jax.grad(losses.double_q_td_loss, argnums=(0, 5)))(*TD_INPUTS.values())
    # No gradient flows into the target network's values.
    np.testing.assert_array_equal(grads[1], 0.0)
    # d/dq(a) of Huber(target - q(a)) / B = -clip(td, -1, 1) / 3, at the taken action only.
    want = np.zeros((3, 3), np.float32)
    want[0, 0], want[1, 2], want[2, 1] = -1 / 3, 1 / 3, -0.75 / 3
    np.testing.assert_allclose(grads[0], want, rtol=1e-6)


# --- the registry -----------------------------------------------------------------------------


def test_registry_holds_the_papers_losses_and_their_hyperparameters():
    assert tuple(losses.LOSSES) == ("nll", "mse", "kl")
    assert losses.hyperparameters("kl") == {"tau": losses.DEFAULT_TAU}
    assert losses.hyperparameters("kl", {"tau": 0.5}) == {"tau": 0.5}
    assert losses.hyperparameters("nll", {"tau": 0.5}) == {}
    # the old call form (a bare tau) and the pytree form agree
    np.testing.assert_allclose(
        losses.distillation_loss("kl", STUDENT_Q, TEACHER_Q, 0.5),
        losses.distillation_loss("kl", STUDENT_Q, TEACHER_Q, {"tau": 0.5}),
    )


def test_a_new_loss_with_its_own_hyperparameter_is_one_registration():
    """A throwaway loss (MSE scaled by alpha) registered alone works through the whole
    distillation step, and its hyperparameter sweeps under vmap like tau."""
    from distill import distillation

    def scaled_mse(student_q, teacher_q, alpha=1.0):
        return alpha * losses.mse(student_q, teacher_q)

    losses.register(losses.Loss("scaled-mse", scaled_mse, {"alpha": 2.0}))
    try:
        assert losses.hyperparameters("scaled-mse") == {"alpha": 2.0}
        grad = distillation.make_grad("scaled-mse", lambda p, o: o @ p)
        params = jnp.zeros((3, 3)).at[0, 0].set(1.0)
        obs = jnp.asarray(STUDENT_Q[:, :3])
        teacher_q = jnp.asarray(TEACHER_Q[:, :3])
        alphas = jnp.array([0.5, 1.0, 2.0])
        (loss, agree), grads = jax.vmap(lambda a: grad(params, obs, teacher_q, {"alpha": a}))(
            alphas
        )
        base = losses.mse(obs @ params, teacher_q)
        np.testing.assert_allclose(loss, alphas * base, rtol=1e-6)
        np.testing.assert_allclose(grads[2], 4.0 * grads[0], rtol=1e-5)
        assert agree.shape == (3,)
    finally:
        del losses.LOSSES["scaled-mse"]
    with pytest.raises(ValueError, match="already registered"):
        losses.register(losses.Loss("kl", losses.kl))


def test_distillation_step_descends_and_reports_agreement():
    import optax

    from distill import distillation

    teacher_q = jnp.asarray(TEACHER_Q)
    obs = jnp.eye(teacher_q.shape[0])  # one-hot states: a linear student can fit any table
    step = jax.jit(distillation.make_step("kl", lambda p, o: o @ p, optax.adam(0.1)))
    params = jnp.zeros_like(teacher_q)
    opt_state = optax.adam(0.1).init(params)
    first = None
    for _ in range(200):
        params, opt_state, (loss, agree) = step(params, opt_state, obs, teacher_q, {"tau": 0.1})
        first = loss if first is None else first
    assert float(loss) < 0.1 * float(first)
    assert float(agree) == 1.0
    np.testing.assert_allclose(
        distillation.agreement(params, teacher_q), 1.0
    )  # student argmax = teacher argmax on every state
