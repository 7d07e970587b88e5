"""Env families: everything that differs between MinAtar, Atari and vector envs, in one registry.

A `Family` says which ids it owns and what they are (`spec`), which Q-networks fit them (the
paper's table for Atari, scaled counterparts for MinAtar), the DQN preset that trains them, how
replay and datasets store their observations, how many frames an observation stacks, and how they
step: inside the compiled program (`"graph"`: gymnax, pure JAX) or on host threads (`"host"`:
ale-py). Nothing is guessed from an observation's shape; an env's family is the family that owns
its id. A new family is one `register(Family(...))` (with its own spec function), nothing else.
"""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Callable, Mapping
from typing import Any, Literal

import jax.numpy as jnp

from distill import envs, networks

Stepper = Literal["graph", "host"]


@dataclasses.dataclass(frozen=True)
class Family:
    """One kind of environment and what the workbench needs to know to train on it."""

    name: str
    owns: Callable[[str], bool]  # does this family own an env id?
    spec: Callable[[str], envs.EnvSpec]  # the EnvSpec of an id it owns
    nets: Mapping[str, networks.NetSpec]  # teacher | net1 | net2 | net3 (and any extra sizes)
    preset: Mapping[str, Any]  # DQNConfig overrides that train this family well here
    stepper: Stepper  # "graph": jittable pure env; "host": emulator threads outside jit
    frame_stack: int = 1  # frames per observation, rebuilt on read from single stored frames
    storage_dtype: str | None = None  # replay and dataset dtype; None keeps the env's own

    @property
    def in_graph(self) -> bool:
        return self.stepper == "graph"


FAMILIES: dict[str, Family] = {}


def register(family: Family) -> Family:
    """Add a family to the registry (its name must be new); `envs.spec` then knows its ids."""
    if family.name in FAMILIES:
        raise ValueError(f"env family {family.name!r} is already registered")
    FAMILIES[family.name] = family
    envs.register_kind(family.name, family.owns, family.spec)
    return family


def unregister(name: str) -> None:
    """Remove a family (for tests that register a throwaway one)."""
    FAMILIES.pop(name)
    envs.unregister_kind(name)


def owner(env_id: str) -> Family | None:
    """The family that owns `env_id`, or None."""
    return next((f for f in FAMILIES.values() if f.owns(env_id)), None)


def of(env_id_or_spec: str | envs.EnvSpec) -> Family:
    """The family of an env id (or of an `EnvSpec`); an unknown id raises ValueError."""
    if isinstance(env_id_or_spec, envs.EnvSpec):
        return FAMILIES[env_id_or_spec.family]
    return FAMILIES[envs.spec(env_id_or_spec).family]


def net_spec(env_id: str, net: str) -> networks.NetSpec:
    """The `NetSpec` called `net` in the env's family; unknown names list the choices."""
    nets = of(env_id).nets
    if net not in nets:
        close = difflib.get_close_matches(net, list(nets), n=3)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise ValueError(f"unknown network {net!r}; choose one of {list(nets)}{hint}")
    return nets[net]


def build_network(env_id: str, net: str, conv_grad: str = "auto") -> networks.QNetwork:
    """The Q-network `net` of the env's family, sized for the env's action count."""
    spec = envs.spec(env_id)
    return networks.build_spec(net_spec(env_id, net), spec.num_actions, conv_grad)


def param_table(env_id: str, num_actions: int | None = None, mflop: bool = False) -> list[dict]:
    """Every net of the env's family: name, layers, parameters, % of the teacher's, paper's %,
    and with `mflop` each one's forward MFLOP per sample (`networks.forward_mflop`)."""
    spec = envs.spec(env_id)
    actions, nets = num_actions or spec.num_actions, of(spec).nets
    rows = networks.param_table(spec.obs_shape, actions, nets)
    for r in rows if mflop else ():
        r["mflop"] = networks.forward_mflop(nets[r["name"]], spec.obs_shape, actions)
    return rows


def storage_dtype(spec: envs.EnvSpec):
    """The dtype replay and datasets keep observations in (MinAtar's 0/1 maps as bool)."""
    dtype = of(spec).storage_dtype
    return jnp.dtype(dtype if dtype is not None else spec.obs_dtype)


def frame_stack(spec: envs.EnvSpec) -> int:
    """Frames per observation rebuilt on read: 4 on Atari, 1 (whole observations) elsewhere."""
    return of(spec).frame_stack


def frame_shape(spec: envs.EnvSpec) -> tuple[int, ...]:
    """The shape of one stored frame: a channel-first stack's frame, or the whole observation."""
    return tuple(spec.obs_shape[1:]) if frame_stack(spec) > 1 else tuple(spec.obs_shape)


# ---------------------------------------------------------------------------- the built-in three

register(
    Family(
        name="minatar",
        owns=lambda env_id: env_id in envs.MINATAR_IDS,
        spec=envs.gymnax_spec,
        nets={
            **networks.MINATAR_NETS,
            **networks.MINATAR_LARGE_NETS,
            **networks.MINATAR_MULTITASK_NETS,
        },
        preset=dict(updates_per_step=2),
        stepper="graph",
        storage_dtype="bool",  # 0/1 object maps: 4x less memory than float32
    )
)
register(
    Family(
        name="atari",
        owns=lambda env_id: env_id.startswith("ALE/"),
        spec=envs.ale_spec,
        nets=networks.ATARI_NETS,
        preset=dict(
            net="teacher",
            total_steps=2_000_000,
            num_envs=8,
            buffer_size=100_000,
            batch_size=32,
            updates_per_step=2,
            learning_starts=20_000,
            lr=1e-4,
            lr_end=1e-4,
            target_update_every=2_000,
            eps_end=0.01,
            eps_decay_fraction=0.1,
        ),
        stepper="host",
        frame_stack=envs.ATARI_STACK,
    )
)
register(
    Family(
        name="vector",
        owns=lambda env_id: env_id in envs.VECTOR_IDS,
        spec=envs.gymnax_spec,
        nets=networks.VECTOR_NETS,
        preset=dict(
            total_steps=60_000,
            num_envs=8,
            buffer_size=50_000,
            batch_size=64,
            learning_starts=2_000,
            lr=1e-3,
            lr_end=1e-4,
            target_update_every=200,
            eps_decay_fraction=0.3,
        ),
        stepper="graph",
    )
)
