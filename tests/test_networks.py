"""Tests for distill.networks: the paper's parameter counts, forward passes, multi-task heads."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from distill import networks

ATARI_OBS = (4, 84, 84)
# Rusu et al. (2016), table of architectures, for 18 actions.
PAPER_COUNTS = {"teacher": 1_693_362, "net1": 427_874, "net2": 113_346, "net3": 61_954}
# MinAtar games: (channels, actions).
MINATAR = {
    "Breakout": (4, 3),
    "SpaceInvaders": (6, 4),
    "Asterix": (4, 5),
    "Freeway": (7, 3),
    "Seaquest": (10, 6),
}


def _key(seed=0):
    # Counts and forward passes do not depend on the generator; this one compiles in a fraction
    # of threefry's time for layers of a million weights, which matters on a 2-core test machine.
    return jax.random.key(seed, impl="unsafe_rbg")


def _init(net, obs_shape, dtype, *args):
    # One compiled init is cheaper than Flax's op-by-op eager init.
    return jax.jit(lambda k: networks.init_params(net, k, obs_shape, dtype, *args))(_key())


def _conv(k, c_in, c_out):
    return k * k * c_in * c_out + c_out


def _dense(n_in, n_out):
    return n_in * n_out + n_out


def _atari_trunk(filters, fc):
    # 84 -> 20 (8x8/4) -> 9 (4x4/2) -> 7 (3x3/1).
    f1, f2, f3 = filters
    return _conv(8, 4, f1) + _conv(4, f1, f2) + _conv(3, f2, f3) + _dense(7 * 7 * f3, fc)


@pytest.mark.parametrize("name", networks.NET_NAMES)
def test_atari_param_count_matches_paper(name):
    assert networks.param_count(name, ATARI_OBS, 18) == PAPER_COUNTS[name]


def test_teacher_count_is_the_layer_arithmetic():
    assert _atari_trunk((32, 64, 64), 512) + _dense(512, 18) == PAPER_COUNTS["teacher"]
    assert _atari_trunk((16, 16, 16), 64) + _dense(64, 18) == PAPER_COUNTS["net3"]


# The largest and the smallest net; param_count covers all four through the same init code,
# and each real Atari-size init costs over a second of compilation.
@pytest.mark.parametrize("name", ["teacher", "net3"])
def test_atari_init_count_and_forward(name):
    net = networks.build(name, ATARI_OBS, 18)
    params = _init(net, ATARI_OBS, jnp.uint8)
    assert networks.count_params(params) == PAPER_COUNTS[name]

    obs = np.random.default_rng(0).integers(0, 256, (2, *ATARI_OBS), dtype=np.uint8)
    apply = jax.jit(net.apply)
    q = apply(params, obs)
    assert q.shape == (2, 18)
    assert q.dtype == jnp.float32
    assert np.all(np.isfinite(q))
    # Rows depend on their own observation only, and different frames give different values.
    np.testing.assert_allclose(apply(params, obs[::-1]), q[::-1], rtol=1e-5, atol=1e-5)
    assert not np.allclose(q[0], q[1])


def test_atari_input_scaled_from_uint8():
    spec = networks.ATARI_NETS["net3"]
    obs = np.full((1, *ATARI_OBS), 255, np.uint8)
    x = networks.preprocess(spec, obs)
    # uint8 NCHW -> float NHWC in [0, 1].
    assert x.shape == (1, 84, 84, 4)
    assert x.dtype == jnp.float32
    np.testing.assert_allclose(x, 1.0)


@pytest.mark.parametrize("game", MINATAR)
def test_minatar_students_keep_papers_ratios(game):
    channels, actions = MINATAR[game]
    obs_shape = (10, 10, channels)
    teacher = networks.param_count("teacher", obs_shape, actions)
    for name, target in (("net1", 25.0), ("net2", 7.0), ("net3", 4.0)):
        percent = 100.0 * networks.param_count(name, obs_shape, actions) / teacher
        assert abs(percent / target - 1.0) <= 0.15, (game, name, percent)


def test_minatar_forward():
    obs_shape, actions = (10, 10, 6), 4
    net = networks.build("net2", obs_shape, actions)
    params = _init(net, obs_shape, jnp.float32)
    obs = np.random.default_rng(1).integers(0, 2, (3, *obs_shape)).astype(bool)
    apply = jax.jit(net.apply)
    q = apply(params, obs.astype(np.float32))
    assert q.shape == (3, actions)
    assert q.dtype == jnp.float32
    assert np.all(np.isfinite(q))
    # gymnax's boolean MinAtar frames give the same values as their float32 cast.
    np.testing.assert_allclose(apply(params, obs), q, rtol=1e-6)


def test_vector_family_forward():
    net = networks.build("teacher", (4,), 2)
    params = _init(net, (4,), jnp.float32)
    assert networks.count_params(params) == _dense(4, 64) + _dense(64, 64) + _dense(64, 2)
    assert jax.jit(net.apply)(params, jnp.ones((5, 4))).shape == (5, 2)


# --- multi-task -----------------------------------------------------------------------------------

MT_OBS = (10, 10, 4)


@pytest.fixture(scope="module")
def multitask():
    net = networks.MultiTaskQNetwork(networks.MINATAR_NETS["net2"], (3, 4, 5), head_hidden=16)
    params = _init(net, MT_OBS, jnp.float32, 0)
    obs = np.random.default_rng(0).integers(0, 2, (2, *MT_OBS)).astype(np.float32)
    return jax.jit(net.apply, static_argnums=2), params, obs


def test_multitask_heads_have_their_widths(multitask):
    apply, params, obs = multitask
    for task, width in enumerate((3, 4, 5)):
        q = apply(params, obs, task)
        assert q.shape == (2, width)
        assert np.all(np.isfinite(q))


def test_multitask_all_heads_initialised_and_one_trunk(multitask):
    _, params, _ = multitask
    top = set(params["params"])
    assert top == {
        "trunk",
        "head_hidden_layers_0",
        "head_hidden_layers_1",
        "head_hidden_layers_2",
        "controllers_0",
        "controllers_1",
        "controllers_2",
    }
    for task, width in enumerate((3, 4, 5)):
        assert params["params"][f"controllers_{task}"]["kernel"].shape == (16, width)
    trunk = networks.count_params(params["params"]["trunk"])
    # The trunk is one copy of a single-task torso (everything but its output layer).
    assert trunk == networks.param_count("net2", MT_OBS, 3) - _dense(32, 3)


def test_multitask_trunk_shared_heads_separate(multitask):
    apply, params, obs = multitask
    q = [apply(params, obs, k) for k in range(3)]

    def perturbed(path):
        return jax.tree_util.tree_map_with_path(
            lambda p, x: x + 0.5 if jax.tree_util.keystr(p).find(path) >= 0 else x, params
        )

    # Changing head 1 changes task 1 only.
    head1 = perturbed("'controllers_1'")
    np.testing.assert_array_equal(apply(head1, obs, 0), q[0])
    np.testing.assert_array_equal(apply(head1, obs, 2), q[2])
    assert not np.allclose(apply(head1, obs, 1), q[1])
    # Changing the trunk changes every task.
    trunk = perturbed("'trunk'")
    for k in range(3):
        assert not np.allclose(apply(trunk, obs, k), q[k])


@pytest.mark.parametrize("num_actions", [(4, 4, 4), (3, 4, 5), (6, 3, 3)])
def test_papers_three_game_multitask_count(num_actions):
    net = networks.MultiTaskQNetwork(networks.ATARI_NETS["teacher"], num_actions, head_hidden=128)
    shapes = jax.eval_shape(
        lambda k: networks.init_params(net, k, ATARI_OBS, jnp.uint8, 0), jax.random.PRNGKey(0)
    )
    # PAPER.md: teacher trunk + per-game fc2 of 128 + per-game outputs, 12 actions in all.
    assert networks.count_params(shapes) == 1_882_668
    want = _atari_trunk((32, 64, 64), 512) + 3 * _dense(512, 128) + 128 * 12 + 12
    assert want == 1_882_668


# --- lookup and table -----------------------------------------------------------------------------


@pytest.mark.parametrize("obs_shape", [ATARI_OBS, (10, 10, 4), (4,)])
def test_unknown_net_name(obs_shape):
    with pytest.raises(ValueError, match=r"'net4'.*did you mean .*net1"):
        networks.build("net4", obs_shape, 3)


def test_bad_num_actions_and_obs_shape():
    with pytest.raises(ValueError, match="num_actions"):
        networks.build("teacher", ATARI_OBS, 0)
    with pytest.raises(ValueError, match=r"\(3, 84, 84, 1\)"):
        networks.family_for((3, 84, 84, 1))


def test_family_for():
    assert networks.family_for(ATARI_OBS) is networks.ATARI_NETS
    assert networks.family_for((10, 10, 7)) is networks.MINATAR_NETS
    assert networks.family_for((4,)) is networks.VECTOR_NETS


def test_param_table_atari():
    rows = networks.param_table(ATARI_OBS, 18)
    assert [r["name"] for r in rows] == ["teacher", "net1", "net2", "net3"]
    assert [r["params"] for r in rows] == [PAPER_COUNTS[r["name"]] for r in rows]
    assert [r["paper_percent"] for r in rows] == [100.0, 25.0, 7.0, 4.0]
    np.testing.assert_allclose(
        [r["percent_of_teacher"] for r in rows],
        [100.0 * PAPER_COUNTS[n] / PAPER_COUNTS["teacher"] for n in PAPER_COUNTS],
    )
    # The paper's rounded figures: 25.3 %, 6.7 %, 3.7 %.
    np.testing.assert_allclose(
        [r["percent_of_teacher"] for r in rows[1:]], [25.3, 6.7, 3.7], atol=0.05
    )
    assert rows[0]["layers"] == "conv32x8/4 conv64x4/2 conv64x3/1 fc512"
    assert rows[3]["layers"] == "conv16x8/4 conv16x4/2 conv16x3/1 fc64"


def test_param_table_minatar():
    rows = networks.param_table((10, 10, 4), 3)
    assert rows[0] == {
        "name": "teacher",
        "layers": "conv16x3/1 fc128 +LN",
        "params": networks.param_count("teacher", (10, 10, 4), 3),
        "percent_of_teacher": 100.0,
        "paper_percent": 100.0,
    }
    assert all(r["params"] < rows[0]["params"] for r in rows[1:])


# ---------------------------------------------------------------------------- convolution


@pytest.mark.parametrize(
    "shape, kernel, stride",
    [((2, 10, 10, 6), 3, 1), ((2, 84, 84, 4), 8, 4), ((2, 20, 20, 8), 4, 2)],
)
def test_conv_matches_flax_conv_values_and_gradients(shape, kernel, stride):
    """networks.Conv: the same function and gradients as nn.Conv (its backward is im2col)."""
    import flax.linen as nn

    x = jax.random.normal(jax.random.PRNGKey(0), shape)
    ref = nn.Conv(8, (kernel, kernel), (stride, stride), padding="VALID")
    ours = networks.Conv(8, kernel, stride)
    params = ref.init(jax.random.PRNGKey(1), x)
    np.testing.assert_allclose(ours.apply(params, x), ref.apply(params, x), rtol=1e-5, atol=1e-5)

    def loss(module):
        return lambda p, x: jnp.sum(jnp.sin(module.apply(p, x)))

    g_ref = jax.grad(loss(ref), argnums=(0, 1))(params, x)
    g_ours = jax.grad(loss(ours), argnums=(0, 1))(params, x)
    for a, b in zip(
        jax.tree_util.tree_leaves(g_ours), jax.tree_util.tree_leaves(g_ref), strict=True
    ):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("shape, kernel, stride", [((2, 10, 10, 6), 3, 1), ((2, 84, 84, 4), 8, 4)])
def test_conv_gradient_forms_agree(shape, kernel, stride):
    """'native' and 'im2col' differ only in speed: same values, same gradients."""
    x = jax.random.normal(jax.random.PRNGKey(0), shape)
    w = jax.random.normal(jax.random.PRNGKey(1), (kernel, kernel, shape[-1], 5))

    def grads(form):
        f = lambda x, w: jnp.sum(jnp.sin(networks.conv_valid(x, w, stride, form)))  # noqa: E731
        return jax.grad(f, argnums=(0, 1))(x, w)

    for a, b in zip(grads("native"), grads("im2col"), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(
    "shape, kernel, stride",
    [
        ((2, 10, 10, 6), 3, 1),  # MinAtar
        ((2, 84, 84, 4), 8, 4),  # Atari, the paper's first two layers
        ((2, 20, 20, 32), 4, 2),
        ((2, 11, 11, 3), 3, 2),  # a stride that leaves a row over
    ],
)
def test_matmul_conv_equals_native(shape, kernel, stride):
    """'matmul' (im2col forward and gradients) is the native convolution: same values, same
    gradients, to float rounding, alone and under `jax.vmap` over per-student kernels."""
    x = jax.random.normal(jax.random.PRNGKey(0), (3, *shape))
    fan_in = kernel * kernel * shape[-1]  # outputs of order 1: sin keeps its precision
    w = jax.random.normal(jax.random.PRNGKey(1), (3, kernel, kernel, shape[-1], 5)) / fan_in**0.5

    @functools.partial(jax.jit, static_argnums=0)
    def run(form):
        f = lambda x, w: jnp.sum(jnp.sin(networks.conv(x, w, stride, form)))  # noqa: E731
        value = networks.conv(x[0], w[0], stride, form)
        return value, jax.grad(f, argnums=(0, 1))(x[0], w[0]), jax.vmap(jax.grad(f, (0, 1)))(x, w)

    native, matmul = run("native"), run("matmul")
    leaves = jax.tree_util.tree_leaves
    for a, b in zip(leaves(matmul), leaves(native), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5 * float(jnp.max(jnp.abs(b))))


def test_auto_conv_form_by_input_size():
    """On CPU, 'auto' is 'matmul' for MinAtar-size inputs and 'im2col' for Atari-size ones
    (every layer of a network in its input's form); 'native' on accelerators."""
    cpu = jax.default_backend() == "cpu"
    assert networks.resolve_conv_grad("auto", 10) == ("matmul" if cpu else "native")
    assert networks.resolve_conv_grad("auto", 84) == ("im2col" if cpu else "native")
    assert networks.resolve_conv_grad("im2col", 10) == "im2col"
    net = networks.build("teacher", (4, 84, 84), 6)
    obs = jax.random.randint(jax.random.PRNGKey(0), (2, 4, 84, 84), 0, 255).astype(jnp.uint8)
    params = networks.init_params(net, jax.random.PRNGKey(1), (4, 84, 84), jnp.uint8)
    im2col = networks.build("teacher", (4, 84, 84), 6, conv_grad="im2col")
    np.testing.assert_array_equal(net.apply(params, obs), im2col.apply(params, obs))


def test_build_conv_grad_choices():
    net = networks.build("net3", (10, 10, 4), 3, conv_grad="native")
    assert net.conv_grad == "native"
    assert networks.resolve_conv_grad("auto") in ("native", "matmul")
    with pytest.raises(ValueError, match="conv_grad must be one of"):
        networks.build("net3", (10, 10, 4), 3, conv_grad="fast")
