"""Q-networks: the paper's Atari teacher and students, MinAtar-scale counterparts, multi-task nets.

A network is described by a frozen `NetSpec` (what the paper's table lists: conv filters, kernels,
strides, fully connected sizes) and built as a Flax Linen module whose parameters are a plain
pytree, so a whole training run can be `jax.jit`-ed and `jax.vmap`-ed over seeds.

Inputs are observations in the environment's own format (what `distill.envs` returns):
- Atari (`ale-py` AtariVectorEnv): uint8 `[batch, 4, 84, 84]`, channel-first; scaled to [0, 1]
  and transposed to NHWC inside the network, because Flax convolutions want channel-last.
- MinAtar (gymnax): bool or float `[batch, 10, 10, C]`, channel-last; cast to float32.
- Vector observations (CartPole): `[batch, features]`, used as they are.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import math
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

# (features, kernel, stride) per convolution.
ConvLayer = tuple[int, int, int]


@dataclasses.dataclass(frozen=True)
class NetSpec:
    """One Q-network architecture, in the terms of the paper's table."""

    name: str
    convs: tuple[ConvLayer, ...]
    hidden: tuple[int, ...]
    channels_first_uint8: bool = False  # Atari frames: uint8 NCHW -> float NHWC / 255
    layer_norm: bool = False

    def describe(self) -> str:
        conv = " ".join(f"conv{f}x{k}/{s}" for f, k, s in self.convs)
        fc = " ".join(f"fc{h}" for h in self.hidden)
        return " ".join(p for p in (conv, fc, "+LN" if self.layer_norm else "") if p)


def _atari(name: str, filters: tuple[int, int, int], fc: int) -> NetSpec:
    kernels = ((8, 4), (4, 2), (3, 1))
    convs = tuple((f, k, s) for f, (k, s) in zip(filters, kernels, strict=True))
    return NetSpec(name, convs, (fc,), channels_first_uint8=True)


# The paper's table (Rusu et al. 2016, Table 1 / appendix): teacher = Nature DQN.
ATARI_NETS: dict[str, NetSpec] = {
    "teacher": _atari("teacher", (32, 64, 64), 512),
    "net1": _atari("net1", (16, 32, 32), 256),
    "net2": _atari("net2", (16, 16, 16), 128),
    "net3": _atari("net3", (16, 16, 16), 64),
}

# MinAtar (10x10xC): the MinAtar paper's network (one 3x3 conv of 16, fc 128) is the teacher.
# Students shrink filters and units so that, for every MinAtar game (C = 4..10 channels,
# 3..6 actions), they keep the paper's ratios: about 25 %, 7 % and 4 % of the teacher.
MINATAR_NETS: dict[str, NetSpec] = {
    "teacher": NetSpec("teacher", ((16, 3, 1),), (128,), layer_norm=True),
    "net1": NetSpec("net1", ((8, 3, 1),), (64,), layer_norm=True),
    "net2": NetSpec("net2", ((4, 3, 1),), (32,), layer_norm=True),
    "net3": NetSpec("net3", ((4, 3, 1),), (18,), layer_norm=True),
}


def _minatar_large(name: str, filters: tuple[int, int, int], fc: int) -> NetSpec:
    convs = tuple((f, 3, 1) for f in filters)  # 10x10 -> 8x8 -> 6x6 -> 4x4
    return NetSpec(name, convs, (fc,), layer_norm=True)


# An over-parameterised MinAtar teacher, as large next to MinAtar's needs as the Nature DQN is next
# to Atari's: the paper's widths (32-64-64 filters, 512 units) with 3x3 kernels for 10x10 inputs,
# and students built like the paper's (fewer filters and units, not fewer layers) at about 25, 7
# and 4 % of its parameters. "large-net2" is compared with "large-teacher".
MINATAR_LARGE_NETS: dict[str, NetSpec] = {
    "large-teacher": _minatar_large("large-teacher", (32, 64, 64), 512),
    "large-net1": _minatar_large("large-net1", (16, 32, 32), 256),
    "large-net2": _minatar_large("large-net2", (16, 16, 16), 128),
    "large-net3": _minatar_large("large-net3", (16, 16, 16), 64),
}

# Multi-task trunks (a per-game fc2 of 128 and a controller go on top, `MultiTaskQNetwork`). The
# paper's 3-game net is its teacher's trunk ("teacher", "large-teacher" here); its 10-game net
# widens it, 32-64-64 filters and 512 units to 64-64-64 and 1500: 4.0x the teacher's parameters
# with ten heads. "large-wide" is that net for 10x10 inputs (4.4x large-teacher with five heads);
# "wide" widens the small teacher to the same ratio (twice the filters, 1.5x the units: 3.9x).
MINATAR_MULTITASK_NETS: dict[str, NetSpec] = {
    "wide": NetSpec("wide", ((32, 3, 1),), (192,), layer_norm=True),
    "large-wide": _minatar_large("large-wide", (64, 64, 64), 1500),
}

# Vector observations (CartPole): an MLP, for fast tests.
VECTOR_NETS: dict[str, NetSpec] = {
    "teacher": NetSpec("teacher", (), (64, 64)),
    "net1": NetSpec("net1", (), (32, 32)),
    "net2": NetSpec("net2", (), (16,)),
    "net3": NetSpec("net3", (), (8,)),
}

NET_NAMES = ("teacher", "net1", "net2", "net3")
# What the paper reports each student as, in % of the teacher's parameters.
PAPER_PERCENT = {"teacher": 100.0, "net1": 25.0, "net2": 7.0, "net3": 4.0}


def size_of(name: str) -> str:
    """The paper's size a net stands for: 'large-net2' -> 'net2', 'teacher' -> 'teacher'."""
    return name.rsplit("-", 1)[-1]


def teacher_of(name: str) -> str:
    """The teacher a net is measured against: 'large-net2' -> 'large-teacher'."""
    prefix = name[: len(name) - len(size_of(name))]
    return prefix + "teacher"


def all_net_names() -> tuple[str, ...]:
    """Every net name of every table (configs check names before they know the env)."""
    names = [*NET_NAMES]
    tables = (ATARI_NETS, MINATAR_NETS, MINATAR_LARGE_NETS, MINATAR_MULTITASK_NETS, VECTOR_NETS)
    for table in tables:
        names += [n for n in table if n not in names]
    return tuple(names)


def family_for(obs_shape: Sequence[int]) -> dict[str, NetSpec]:
    """The table of nets that fits a bare observation shape: Atari, MinAtar or vector.

    For shapes outside any env (tests, sketches); an env's table is its family's
    (`distill.families.of(env_id).nets`), never guessed from its shape.
    """
    if tuple(obs_shape) == (4, 84, 84):
        return ATARI_NETS
    if len(obs_shape) == 3:
        return MINATAR_NETS
    if len(obs_shape) == 1:
        return VECTOR_NETS
    raise ValueError(f"no network family for observation shape {tuple(obs_shape)}")


def net_spec(name: str, obs_shape: Sequence[int]) -> NetSpec:
    """Look up `teacher | net1 | net2 | net3` for an observation shape."""
    family = family_for(obs_shape)
    if name not in family:
        close = difflib.get_close_matches(name, list(family), n=3)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise ValueError(f"unknown network {name!r}; choose one of {list(family)}{hint}")
    return family[name]


def preprocess(spec: NetSpec, obs: jax.Array) -> jax.Array:
    """Env-format observations -> float32 network input (NHWC for images)."""
    if spec.channels_first_uint8:
        return jnp.transpose(obs, (0, 2, 3, 1)).astype(jnp.float32) / 255.0
    return obs.astype(jnp.float32)


def _lax_conv(x: jax.Array, kernel: jax.Array, stride: int) -> jax.Array:
    return jax.lax.conv_general_dilated(
        x, kernel, (stride, stride), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC")
    )


def _patches(x: jax.Array, k: int, stride: int) -> jax.Array:
    """im2col by strided slices: `[batch, h, w, c]` -> `[batch, oh, ow, k*k*c]`, (kh, kw, c)
    order, the order of an HWIO kernel reshaped to `[k*k*c, features]`.

    Slices only move data; `conv_general_dilated_patches` is itself a convolution (with a
    one-hot kernel), several times slower on XLA CPU, most of all under `jax.vmap`. Columns
    first (`[batch, h, ow, k*c]`), then rows: two concatenations of k pieces copy faster than
    one of k*k pieces of c values each.
    """
    oh = (x.shape[1] - k) // stride + 1
    ow = (x.shape[2] - k) // stride + 1
    span_h, span_w = stride * (oh - 1) + 1, stride * (ow - 1) + 1
    cols = jnp.concatenate([x[:, :, j : j + span_w : stride, :] for j in range(k)], axis=-1)
    return jnp.concatenate([cols[:, i : i + span_h : stride] for i in range(k)], axis=-1)


def _patch_conv(x: jax.Array, kernel: jax.Array, stride: int) -> jax.Array:
    """The same convolution as im2col: patches `[batch, oh, ow, k*k*c]` @ kernel `[k*k*c, f]`."""
    k, c, f = kernel.shape[0], kernel.shape[2], kernel.shape[3]
    return _patches(x, k, stride) @ kernel.reshape(k * k * c, f)


# How `conv_valid` computes a convolution and its gradients. XLA's CPU backend runs native
# convolution gradients fast at the top level of a program but several times slower inside loop
# bodies (`lax.scan`), where the gradients of the equivalent im2col product (patches @ kernel)
# win ("im2col": native forward, im2col gradients). Under `jax.vmap` over students (per-student
# kernels) the native forward becomes a grouped convolution, slow on XLA CPU too, while the
# im2col product becomes one batched matmul: "matmul" computes forward and gradients as im2col
# products. Measured in benchmarks/conv_gradients.py. "auto" picks "native" off the CPU, where
# no such gap exists; on the CPU "matmul" for MinAtar-size inputs (students vmapped in scans)
# and "im2col" for Atari-size ones (acting one batch at a time, where the native forward wins).
CONV_GRADS = ("auto", "native", "im2col", "matmul")
MATMUL_MAX_SIDE = 16  # "auto" on CPU: "matmul" for inputs up to this many pixels a side


def resolve_conv_grad(grad: str, side: int | None = None) -> str:
    """'auto' -> on CPU 'matmul' (inputs of at most MATMUL_MAX_SIDE pixels a side, or `side`
    None) or 'im2col' (larger); 'native' on accelerators. Other values pass through."""
    if grad not in CONV_GRADS:
        raise ValueError(f"conv_grad must be one of {CONV_GRADS}; got {grad!r}")
    if grad == "auto":
        if jax.default_backend() != "cpu":
            return "native"
        return "matmul" if side is None or side <= MATMUL_MAX_SIDE else "im2col"
    return grad


def conv(x: jax.Array, kernel: jax.Array, stride: int, grad: str = "im2col") -> jax.Array:
    """A VALID NHWC convolution `[batch, h, w, c]` -> `[batch, oh, ow, f]` in form `grad`
    (CONV_GRADS, resolved): the same function and gradients up to rounding in every form."""
    if grad == "matmul":
        return _patch_conv(x, kernel, stride)
    return conv_valid(x, kernel, stride, grad)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def conv_valid(x: jax.Array, kernel: jax.Array, stride: int, grad: str = "im2col") -> jax.Array:
    """A VALID NHWC convolution: native forward; gradients `grad` = 'native' or 'im2col'.

    Both give the same function and the same gradients up to rounding; they differ only in
    speed (see CONV_GRADS). The forward pass is always the native convolution; `conv` also
    takes 'matmul' (im2col forward too).
    """
    return _lax_conv(x, kernel, stride)


def _conv_fwd(x, kernel, stride, grad):
    return _lax_conv(x, kernel, stride), (x, kernel)


def _conv_bwd(stride, grad, residuals, dy):
    x, kernel = residuals
    form = _lax_conv if grad == "native" else _patch_conv
    _, vjp = jax.vjp(lambda x_, k_: form(x_, k_, stride), x, kernel)
    return vjp(dy)


conv_valid.defvjp(_conv_fwd, _conv_bwd)


class Conv(nn.Module):
    """`nn.Conv` (VALID padding) with the same parameters, computed by `conv`."""

    features: int
    kernel_size: int
    stride: int
    grad: str = "auto"

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        k, c = self.kernel_size, x.shape[-1]
        kernel = self.param(
            "kernel", nn.initializers.lecun_normal(), (k, k, c, self.features), jnp.float32
        )
        bias = self.param("bias", nn.initializers.zeros_init(), (self.features,), jnp.float32)
        return conv(x, kernel, self.stride, resolve_conv_grad(self.grad, x.shape[1])) + bias


class Torso(nn.Module):
    """Convolutions, then fully connected layers with ReLU: the shared part of every Q-net."""

    spec: NetSpec
    conv_grad: str = "auto"

    @nn.compact
    def __call__(self, obs: jax.Array) -> jax.Array:
        x = preprocess(self.spec, obs)
        # one form for every layer, by the network's input size (see CONV_GRADS)
        form = resolve_conv_grad(self.conv_grad, x.shape[1] if x.ndim == 4 else None)
        for i, (features, kernel, stride) in enumerate(self.spec.convs):
            x = Conv(features, kernel, stride, form, name=f"Conv_{i}")(x)
            x = nn.relu(nn.LayerNorm()(x) if self.spec.layer_norm else x)
        x = x.reshape((x.shape[0], -1))
        for units in self.spec.hidden:
            x = nn.Dense(units)(x)
            x = nn.relu(nn.LayerNorm()(x) if self.spec.layer_norm else x)
        return x


class QNetwork(nn.Module):
    """Observations `[batch, *obs_shape]` -> Q-values `[batch, num_actions]`."""

    spec: NetSpec
    num_actions: int
    conv_grad: str = "auto"

    @nn.compact
    def __call__(self, obs: jax.Array) -> jax.Array:
        return nn.Dense(self.num_actions)(Torso(self.spec, self.conv_grad)(obs))


class MultiTaskQNetwork(nn.Module):
    """A shared trunk and one controller head per task (Rusu et al. 2016, section 4.3).

    Head k is a hidden layer of `head_hidden` units and an output of `num_actions[k]` units.
    `__call__(obs, task)` with a Python int `task` returns `[batch, num_actions[task]]`; the
    task id is static, so a mixed-task training loop selects heads with `jax.lax.switch`.
    All heads are created at `init` whatever task is passed. `conv_grad` as `QNetwork`'s (it
    changes speed only: 'native' for Atari students updated one step per compiled call).
    """

    spec: NetSpec
    num_actions: tuple[int, ...]
    head_hidden: int = 128
    conv_grad: str = "auto"

    def setup(self) -> None:
        self.trunk = Torso(self.spec, self.conv_grad)
        self.head_hidden_layers = [nn.Dense(self.head_hidden) for _ in self.num_actions]
        self.controllers = [nn.Dense(a) for a in self.num_actions]

    def head(self, features: jax.Array, task: int) -> jax.Array:
        return self.controllers[task](nn.relu(self.head_hidden_layers[task](features)))

    def __call__(self, obs: jax.Array, task: int) -> jax.Array:
        features = self.trunk(obs)
        if self.is_initializing():
            for k in range(len(self.num_actions)):
                self.head(features, k)
        return self.head(features, task)


def build(
    name: str, obs_shape: Sequence[int], num_actions: int, conv_grad: str = "auto"
) -> QNetwork:
    """The Q-network `name` for a bare observation shape (tests and sketches).

    The package builds networks through `distill.families.build_network(env_id, net)`, which
    takes the table from the env's family instead of from the shape.
    """
    return build_spec(net_spec(name, obs_shape), num_actions, conv_grad)


def build_spec(spec: NetSpec, num_actions: int, conv_grad: str = "auto") -> QNetwork:
    """The Q-network of a `NetSpec` with `num_actions` outputs.

    `conv_grad` only changes how convolution gradients are computed (see CONV_GRADS): pass
    'native' for a network whose updates run one per compiled call rather than in a scan.
    """
    if num_actions < 1:
        raise ValueError(f"num_actions must be >= 1; got {num_actions}")
    resolve_conv_grad(conv_grad)
    return QNetwork(spec, num_actions, conv_grad)


def init_params(module: nn.Module, key: jax.Array, obs_shape: Sequence[int], dtype, *args):
    """Initialise a module's parameters on a dummy batch of one observation."""
    dummy = jnp.zeros((1, *obs_shape), dtype=dtype)
    return module.init(key, dummy, *args)


def count_params(params) -> int:
    """Number of scalars in a parameter pytree."""
    return int(sum(math.prod(x.shape) for x in jax.tree_util.tree_leaves(params)))


def param_count(spec: NetSpec | str, obs_shape: Sequence[int], num_actions: int) -> int:
    """Parameters of a net (a `NetSpec`, or a name looked up by shape), from shapes alone."""
    spec = spec if isinstance(spec, NetSpec) else net_spec(spec, obs_shape)
    module = build_spec(spec, num_actions)
    shapes = jax.eval_shape(
        lambda k: init_params(module, k, obs_shape, jnp.float32), jax.random.PRNGKey(0)
    )
    return count_params(shapes)


def forward_mflop(spec: NetSpec, obs_shape: Sequence[int], num_actions: int) -> float:
    """MFLOP of one sample's forward pass, as XLA counts them for this backend (multiply and add
    counted apart), from shapes alone: what a student costs to train and to act, per sample."""
    module = build_spec(spec, num_actions)
    key = jax.random.PRNGKey(0)
    params = jax.eval_shape(lambda k: init_params(module, k, obs_shape, jnp.float32), key)
    x = jax.ShapeDtypeStruct((1, *obs_shape), jnp.float32)
    cost = jax.jit(module.apply).lower(params, x).compile().cost_analysis()
    cost = cost[0] if isinstance(cost, list | tuple) else cost
    return float(cost.get("flops", float("nan"))) / 1e6


def param_table(
    obs_shape: Sequence[int], num_actions: int, nets: dict[str, NetSpec] | None = None
) -> list[dict]:
    """Rows of name, layers, parameters and % of the teacher for every net of a table.

    `nets` is an env family's table (`distill.families`); without it, the table that fits the
    observation shape.
    """
    family = nets if nets is not None else family_for(obs_shape)
    counts = {name: param_count(spec, obs_shape, num_actions) for name, spec in family.items()}
    rows = []
    for name, spec in family.items():
        rows.append(
            {
                "name": name,
                "layers": spec.describe(),
                "params": counts[name],
                "percent_of_teacher": 100.0 * counts[name] / counts[teacher_of(name)],
                "paper_percent": PAPER_PERCENT.get(size_of(name), float("nan")),
            }
        )
    return rows
