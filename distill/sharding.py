"""Scale-out with JAX's own sharding: a device mesh over seeds or over a student's minibatch, and
several hosts through `jax.distributed`.

A mesh has up to two named axes, written as a spec string such as "seeds=4", "data=all" or
"seeds=2,data=2" (`all`: every visible device not taken by the other axis):

- `seeds`: the leading, vmapped axis of independent runs (seeds, or seeds x tau values) is split
  across devices with `NamedSharding(mesh, P('seeds'))`; each device trains its own runs. A
  student is bit-identical to the same seed trained alone on one device (tests/test_sharding.py);
  where XLA compiles an operation differently once the program is partitioned (the division in
  the DQN teacher's gradient clipping, for some tensors a multiplication by the reciprocal)
  results agree to float rounding.
- `data`: one learner's minibatch is split across devices (`P('data')` on the batch axis through
  `jax.lax.with_sharding_constraint`) while parameters, optimiser state and the dataset are
  replicated; XLA's SPMD partitioner inserts the all-reduce of the gradient. The math is the same,
  the order of the sums is not: results agree to float tolerance.

`make_mesh(None)` is None, and every function that takes `mesh=None` then runs exactly as it did
without one (one device, the same compiled program). Nothing here is device-specific: the same
mesh spans forced CPU devices (`XLA_FLAGS=--xla_force_host_platform_device_count=4`, set before
jax is imported), the GPUs of a machine, or the hosts of a TPU pod after `initialize_distributed`.
Reference: the JAX guide "Distributed arrays and automatic parallelization".
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from distill import xla
from distill.config import ConfigError

SEEDS = "seeds"  # independent runs: seeds and swept values (tau)
DATA = "data"  # one learner's minibatch
AXES = (SEEDS, DATA)  # mesh axis order: seeds outer, data inner (the all-reduce stays local)
FORCE_FLAG = "--xla_force_host_platform_device_count"


# ---------------------------------------------------------------------------- the mesh


def parse_mesh(spec: str) -> dict[str, int | None]:
    """'seeds=2,data=2' -> {'seeds': 2, 'data': 2}; a size 'all' parses to None.

    Raises ConfigError naming what is wrong: an unknown axis, a repeated axis, a size that is not
    a positive integer or 'all', or 'all' on both axes.
    """
    usage = "write axis=size, e.g. seeds=4, data=all or seeds=2,data=2"
    if not isinstance(spec, str) or not spec.strip():
        raise ConfigError(f"mesh={spec!r} is not valid: {usage}")
    sizes: dict[str, int | None] = {}
    for part in spec.split(","):
        name, sep, size = (s.strip() for s in part.partition("="))
        if not sep:
            raise ConfigError(f"mesh={spec!r} is not valid: {part.strip()!r} has no '='; {usage}")
        if name not in AXES:
            raise ConfigError(
                f"mesh={spec!r} is not valid: unknown axis {name!r}; the axes are {list(AXES)}"
            )
        if name in sizes:
            raise ConfigError(f"mesh={spec!r} is not valid: axis {name!r} is given twice")
        if size == "all":
            sizes[name] = None
        elif size.isdigit() and int(size) > 0:
            sizes[name] = int(size)
        else:
            raise ConfigError(
                f"mesh={spec!r} is not valid: {name}={size!r} must be a positive integer or 'all'"
            )
    if list(sizes.values()).count(None) > 1:
        raise ConfigError(f"mesh={spec!r} is not valid: only one axis can be 'all'")
    return {a: sizes[a] for a in AXES if a in sizes}


def make_mesh(spec: str | None, devices: Sequence[Any] | None = None) -> Mesh | None:
    """The mesh a spec string names, over `devices` (default: every device, all hosts); None for
    None, '' or 'none' (one device: the default path, unchanged).

    A mesh smaller than the device count takes the first devices. Raises ConfigError when the
    spec asks for more devices than there are.
    """
    if spec is None or spec.strip().lower() in ("", "none"):
        return None
    sizes = parse_mesh(spec)
    devices = list(jax.devices() if devices is None else devices)
    fixed = math.prod(s for s in sizes.values() if s is not None)
    if None in sizes.values():
        if len(devices) % fixed:
            raise ConfigError(
                f"mesh={spec!r} is not valid: {len(devices)} devices do not split evenly "
                f"into {fixed}"
            )
        sizes = {a: len(devices) // fixed if s is None else s for a, s in sizes.items()}
    total = math.prod(sizes.values())
    if total > len(devices):
        hint = (
            f"; on a CPU, set XLA_FLAGS={FORCE_FLAG}={total} before jax is imported"
            if devices[0].platform == "cpu"
            else ""
        )
        raise ConfigError(
            f"mesh={spec!r} is not valid: it needs {total} devices, but {len(devices)} "
            f"{devices[0].platform} device(s) are visible{hint}"
        )
    # Auto axes: classic SPMD partitioning from the shardings we give (no explicit-axis types).
    return jax.make_mesh(
        tuple(sizes.values()),
        tuple(sizes),
        axis_types=(AxisType.Auto,) * len(sizes),
        devices=devices[:total],
    )


def axis_size(mesh: Mesh | None, axis: str) -> int:
    """How many devices `axis` spans (1 without a mesh or without that axis)."""
    return 1 if mesh is None or axis not in mesh.axis_names else int(mesh.shape[axis])


def for_one_run(mesh: Mesh | None) -> Mesh | None:
    """The mesh one run (not a batch of seeds) uses: `mesh` when it has a `data` axis to split
    minibatches over, else None: a `seeds` axis alone would only copy the run to every device."""
    return mesh if mesh is not None and DATA in mesh.axis_names else None


# ---------------------------------------------------------------------------- placing arrays


def place(tree: Any, mesh: Mesh, spec: P | None = None) -> Any:
    """Every leaf of `tree` on `mesh` with `NamedSharding(mesh, spec)` (default: replicated).

    Across hosts each process supplies the shards its own devices hold, from its own copy of the
    full value (every process must hold the same value).
    """
    sharding = NamedSharding(mesh, P() if spec is None else spec)

    def put(x):
        if sharding.is_fully_addressable:
            return jax.device_put(x, sharding)
        x = np.asarray(x)
        return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])

    return jax.tree_util.tree_map(put, tree)


def replicate(tree: Any, mesh: Mesh | None) -> Any:
    """A full copy of `tree` on every device of `mesh`; `tree` unchanged without a mesh."""
    return tree if mesh is None else place(tree, mesh, P())


def check_batch(batch_size: int, mesh: Mesh | None, field: str = "batch_size") -> None:
    """A data-parallel minibatch must split evenly over the mesh's `data` axis."""
    n = axis_size(mesh, DATA)
    if batch_size % n:
        raise ConfigError(
            f"{field}={batch_size} is not valid: the mesh splits each minibatch over data={n} "
            f"devices, so it must be a multiple of {n}"
        )


def constrain_batch(tree: Any, mesh: Mesh | None) -> Any:
    """Inside a jitted function: split the leading (batch) axis of every leaf over the mesh's
    `data` axis. Without a mesh or without a `data` axis, `tree` is returned untouched."""
    if mesh is None or DATA not in mesh.axis_names:
        return tree
    return jax.lax.with_sharding_constraint(tree, NamedSharding(mesh, P(DATA)))


def to_host(tree: Any) -> Any:
    """Every leaf as a numpy array holding the full value, gathered from other hosts if needed."""
    from jax.experimental import multihost_utils

    def get(x):
        if isinstance(x, jax.Array) and not x.is_fully_addressable:
            return np.asarray(multihost_utils.process_allgather(x, tiled=True))
        return np.asarray(x)

    if any(
        isinstance(x, jax.Array) and not x.is_fully_addressable
        for x in jax.tree_util.tree_leaves(tree)
    ):
        wait_for_processes("to_host")
    return jax.tree_util.tree_map(get, tree)


# A host that finishes its share of a program early waits here, through the coordination
# service, rather than in the first collective: on a CPU that sets up its collectives (Gloo) with
# a 30 s deadline, and one host compiling or training slower than another by more than that
# failed with "Gloo context initialization failed: DEADLINE_EXCEEDED" (seen with two processes on
# a loaded 2-core machine).
WAIT_S = 600


def wait_for_processes(name: str, timeout_s: int = WAIT_S) -> None:
    """Block until every process of a multi-host run reaches a wait of this `name` (a counter is
    appended so that each call is its own barrier); nothing on one host."""
    if jax.process_count() == 1:
        return
    from jax._src import distributed  # the client jax.distributed.initialize made

    client = getattr(getattr(distributed, "global_state", None), "client", None)
    if client is None:  # not started by jax.distributed (or a jax that keeps it elsewhere)
        return
    _WAITS[name] = _WAITS.get(name, 0) + 1
    client.wait_at_barrier(f"distill-{name}-{_WAITS[name]}", timeout_s * 1000)


_WAITS: dict[str, int] = {}


def placement(tree: Any) -> list[dict]:
    """Where each leaf lives: path, global shape, partition spec, devices and one shard's shape."""
    rows = []
    for path, x in jax.tree_util.tree_flatten_with_path(tree)[0]:
        if not isinstance(x, jax.Array):
            continue
        s = x.sharding
        rows.append(
            {
                "path": jax.tree_util.keystr(path),
                "shape": tuple(x.shape),
                "dtype": str(x.dtype),
                "spec": str(s.spec) if isinstance(s, NamedSharding) else type(s).__name__,
                "devices": len(s.device_set),
                "shard_shape": tuple(s.shard_shape(x.shape)),
                "replicated": bool(s.is_fully_replicated),
            }
        )
    return rows


def describe(tree: Any, limit: int = 12) -> str:
    """A few lines saying where the arrays of `tree` live (for notebooks and logs)."""
    rows = placement(tree)
    lines = [
        f"{r['path'] or '<root>'}: {r['dtype']}{list(r['shape'])} {r['spec']} over "
        f"{r['devices']} device(s), {list(r['shard_shape'])} each"
        + (" (replicated)" if r["replicated"] and r["devices"] > 1 else "")
        for r in rows[:limit]
    ]
    if len(rows) > limit:
        lines.append(f"... and {len(rows) - limit} more arrays")
    return "\n".join(lines)


# ---------------------------------------------------------------------------- runs side by side


def map_seeds(fn: Callable, mesh: Mesh | None = None) -> Callable:
    """`g(batched, *shared)`: `fn(one, *shared)` for every slice `one` of the leading axis of
    `batched` (a pytree: keys `[n, 2]`, or keys and tau values), in one compiled call.

    Without a mesh this is `xla.jit(jax.vmap(fn, in_axes=(0, None, ...)))`, as before. With a mesh
    `batched` is split over its `seeds` axis, `shared` (datasets, tau) is replicated, and every
    result comes back split over `seeds` (`P('seeds')` on its leading axis). A run count that is
    not a multiple of the axis size is padded with copies of the last run, which are dropped from
    the results; those results then come back replicated on the mesh.
    Inside `fn`, `constrain_batch` then splits each run's minibatch over `data`, if the mesh has
    that axis too.
    """
    if mesh is None:
        compiled: dict[int, Callable] = {}

        def g(batched, *shared):
            if len(shared) not in compiled:
                compiled[len(shared)] = xla.jit(jax.vmap(fn, in_axes=(0,) + (None,) * len(shared)))
            return compiled[len(shared)](batched, *shared)

        return g

    size = axis_size(mesh, SEEDS)
    spmd_axis = SEEDS if SEEDS in mesh.axis_names else None
    runs = NamedSharding(mesh, P(SEEDS) if spmd_axis else P())
    compiled = {}
    # n runs do not split evenly over the axis: drop the copies and keep the rest replicated
    unpad = xla.jit(
        lambda out, n: jax.tree_util.tree_map(lambda x: x[:n], out),
        static_argnums=1,
        out_shardings=NamedSharding(mesh, P()),
    )

    def g(batched, *shared):
        if len(shared) not in compiled:
            compiled[len(shared)] = xla.jit(
                jax.vmap(fn, in_axes=(0,) + (None,) * len(shared), spmd_axis_name=spmd_axis),
                out_shardings=runs,
            )
        n = jax.tree_util.tree_leaves(batched)[0].shape[0]
        pad = -n % size
        if pad:
            batched = jax.tree_util.tree_map(
                lambda x: jnp.concatenate([x, jnp.repeat(x[-1:], pad, axis=0)]), batched
            )
        out = compiled[len(shared)](place(batched, mesh, runs.spec), *place(shared, mesh, P()))
        return unpad(out, n) if pad else out

    return g


# ---------------------------------------------------------------------------- several hosts


def parse_distributed(text: str) -> dict:
    """'auto' -> {} (the cluster is detected: SLURM, Open MPI, Kubernetes, Cloud TPU);
    'HOST:PORT,PROCESSES,ID' -> coordinator_address, num_processes and process_id."""
    if text.strip() == "auto":
        return {}
    parts = [p.strip() for p in text.split(",")]
    usage = "write 'auto' or HOST:PORT,PROCESSES,ID (e.g. 10.0.0.1:8476,2,0)"
    if len(parts) != 3 or ":" not in parts[0] or not all(p.isdigit() for p in parts[1:]):
        raise ConfigError(f"distributed={text!r} is not valid: {usage}")
    processes, process_id = int(parts[1]), int(parts[2])
    if processes < 1 or process_id >= processes:
        raise ConfigError(
            f"distributed={text!r} is not valid: the process id must be in [0, {processes})"
        )
    return {"coordinator_address": parts[0], "num_processes": processes, "process_id": process_id}


def initialize_distributed(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    **kwargs: Any,
) -> None:
    """Join this process to a multi-host run: `jax.distributed.initialize`, then every host sees
    every device (`jax.devices()`) and a mesh from `make_mesh` spans them all.

    Call it on every host, before anything else runs a JAX computation, with the same
    coordinator; with no arguments JAX detects the cluster (SLURM, Open MPI, Kubernetes, Cloud
    TPU) or reads JAX_COORDINATOR_ADDRESS. A second call in the same process does nothing.
    """
    if jax.distributed.is_initialized():
        return
    jax.distributed.initialize(coordinator_address, num_processes, process_id, **kwargs)


def is_main_process() -> bool:
    """Process 0 writes the results of a multi-host run; the only process otherwise."""
    return jax.process_index() == 0


def process_share(items: Sequence) -> list:
    """This process's share of `items` (items p, p + P, p + 2P, ...); all of them on one host."""
    return list(items[jax.process_index() :: jax.process_count()])


def barrier(name: str) -> None:
    """Wait until every process reaches the barrier called `name` (nothing on one host)."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        wait_for_processes(name)
        multihost_utils.sync_global_devices(name)
