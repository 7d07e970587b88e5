"""`distill.xla`: the compiler options reach XLA, change no result beyond float rounding, can be
turned off, and `xla.jit` behaves as `jax.jit` (static and donated arguments, `.lower`)."""

import jax
import jax.numpy as jnp
import jaxlib
import numpy as np
import pytest

from distill import networks, xla

ATARI_OBS = (84, 84, 4)


@pytest.fixture
def fresh_options():
    """Let a test read the environment switch again, and forget what it saw afterwards."""
    xla.compiler_options.cache_clear()
    yield
    xla.compiler_options.cache_clear()


def test_jit_forwards_static_and_donated_arguments():
    f = xla.jit(lambda x, n: x * n, static_argnums=1, donate_argnums=0)
    np.testing.assert_array_equal(f(jnp.arange(3.0), 2), [0.0, 2.0, 4.0])
    cost = f.lower(jnp.arange(3.0), 2).compile().cost_analysis()
    assert cost is not None
    assert f.__name__ == "<lambda>"


def test_switch_turns_options_off(monkeypatch, fresh_options):
    monkeypatch.setenv(xla.ENV_SWITCH, "0")
    assert xla.compiler_options() == {}


def test_options_on_this_cpu_are_the_tested_ones(fresh_options):
    # where this jaxlib takes the option it is passed; elsewhere nothing is (plain jax.jit)
    assert xla.compiler_options() in ({}, xla.CPU_OPTIONS)
    if jax.default_backend() != "cpu":
        assert xla.compiler_options() == {}
    elif jaxlib.__version__.startswith("0.10."):  # where it was measured: no silent fallback
        assert xla.compiler_options() == xla.CPU_OPTIONS


def _q_loss_grad():
    """Gradient of a Q-value loss through the Nature network: three convolutions and two dots."""
    net = networks.build("teacher", ATARI_OBS, 6)
    params = networks.init_params(net, jax.random.PRNGKey(0), ATARI_OBS, jnp.uint8)
    obs = jax.random.randint(jax.random.PRNGKey(1), (4, *ATARI_OBS), 0, 256).astype(jnp.uint8)

    def loss(p):
        return jnp.mean(jnp.square(net.apply(p, obs)))

    return jax.grad(loss), params


def test_options_change_no_result_beyond_rounding():
    grad, params = _q_loss_grad()
    with_options = xla.jit(grad)(params)
    plain = jax.jit(grad)(params)
    pairs = zip(
        jax.tree_util.tree_leaves(with_options), jax.tree_util.tree_leaves(plain), strict=True
    )
    for a, b in pairs:
        scale = float(jnp.max(jnp.abs(b))) + 1e-12
        np.testing.assert_allclose(np.asarray(a) / scale, np.asarray(b) / scale, atol=1e-5)


def test_convolutions_stay_with_xla_under_the_options():
    """The reason for the option (jaxlib 0.10, this CPU): convolutions in YNNPACK ran slower."""
    if not xla.compiler_options():
        pytest.skip("this jaxlib or backend takes no options")
    x = jnp.ones((4, 20, 20, 32))
    k = jnp.ones((4, 4, 32, 64))

    def conv(x, k):
        return jax.lax.conv_general_dilated(
            x, k, (2, 2), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC")
        )

    compiled = xla.jit(conv).lower(x, k).compile().as_text()
    assert "convolution(" in compiled
    assert "__ynn_fusion" not in compiled
