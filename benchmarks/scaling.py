"""Scaling: student training throughput on 1, 2 and 4 devices, each next to the single-device
run (no mesh, today's default path) measured in the same run.

Two workloads, a MinAtar-size student (the teacher net: conv 16 3x3 + LayerNorm + fc 128) on a
synthetic Breakout-shaped dataset, a scan of updates per compiled call, no evaluation:
- seeds: `--seeds` students side by side, split over a `seeds=N` mesh
  (`sharding.map_seeds`, as `experiments.distil_seeds` runs them);
- data: one student with a large minibatch split over a `data=N` mesh (params replicated, the
  gradient all-reduced by XLA), as `distill student --mesh data=N` trains it.
Throughput is student updates/s (all students together) and samples/s (updates x batch); the
ratio is to the single-device run, and efficiency = ratio / N. Every configuration is compiled
first and then timed in turns (median of `--repeats`), so that changes in the machine's load hit
all of them alike.

On a CPU the devices are forced host devices (this script sets
XLA_FLAGS=--xla_force_host_platform_device_count=4 before jax is imported, unless XLA_FLAGS
already forces a count). They share the same cores, so there the ratio measures the overhead of
sharding (partitioned programs, per-device dispatch, the all-reduce), not a speedup. On a machine
with several GPUs or TPU cores the same script measures real devices and the efficiency column is
the scaling efficiency.

    python benchmarks/scaling.py [--quick] [--devices 4] [--seeds 8] [--batch 512]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

FORCE_FLAG = "--xla_force_host_platform_device_count"


def force_host_devices(n: int) -> None:
    """Ask XLA for `n` CPU devices; must run before jax is imported (accelerators unaffected)."""
    flags = os.environ.get("XLA_FLAGS", "")
    if FORCE_FLAG not in flags:
        os.environ["XLA_FLAGS"] = f"{flags} {FORCE_FLAG}={n}".strip()


def synthetic_arrays(rows: int = 512, num_envs: int = 16) -> dict:
    """A Breakout-MinAtar-shaped dataset (`Dataset.arrays()`): random 0/1 maps and Q-values."""
    import jax.numpy as jnp
    import numpy as np

    rng = np.random.default_rng(0)
    return {
        "obs": jnp.asarray(rng.random((rows, num_envs, 10, 10, 4)) < 0.1),
        "q": jnp.asarray(rng.normal(size=(rows, num_envs, 3)).astype(np.float32)),
        "action": jnp.zeros((rows, num_envs), jnp.int32),
        "reward": jnp.zeros((rows, num_envs), jnp.float32),
        "done": jnp.zeros((rows, num_envs), bool),
    }


def seeds_runner(seeds: int, batch: int, updates: int, mesh):
    """A call that trains `seeds` students side by side for `updates` each; compiled."""
    import jax
    import jax.numpy as jnp

    from distill import sharding, student

    config = student.StudentConfig(
        net="teacher", batch_size=batch, updates=updates, eval_every=updates
    )
    d = student.make_distill(config, "Breakout-MinAtar", mesh=mesh)
    keys = jax.random.split(jax.random.PRNGKey(0), seeds)
    run = sharding.map_seeds(lambda k, a, t: d.run(d.init(k), a, t, 1, 0, False)[1].loss, mesh)
    arrays, tau = synthetic_arrays(), jnp.float32(0.01)
    go = lambda: jax.block_until_ready(run(keys, arrays, tau))  # noqa: E731
    go()
    return go


def data_runner(batch: int, updates: int, mesh):
    """A call that trains one student for `updates`, its minibatch split over `data`."""
    import jax
    import jax.numpy as jnp

    from distill import sharding, student, xla

    config = student.StudentConfig(
        net="teacher", batch_size=batch, updates=updates, eval_every=updates
    )
    d = student.make_distill(config, "Breakout-MinAtar", mesh=mesh)
    state = sharding.replicate(d.init(jax.random.PRNGKey(0)), mesh)
    arrays = sharding.replicate(synthetic_arrays(), mesh)
    run = xla.jit(lambda s, a, t: d.run(s, a, t, 1, 0, False))
    tau = jnp.float32(0.01)
    go = lambda: jax.block_until_ready(run(state, arrays, tau))  # noqa: E731
    go()
    return go


def interleaved_medians(calls: list, repeats: int) -> list[float]:
    """Median seconds of each call, timed in turns so that load changes hit all of them."""
    times = [[] for _ in calls]
    for _ in range(repeats):
        for i, call in enumerate(calls):
            t0 = time.perf_counter()
            call()
            times[i].append(time.perf_counter() - t0)
    return [statistics.median(t) for t in times]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--devices", type=int, default=4, help="forced CPU devices (CPU only)")
    p.add_argument("--seeds", type=int, default=8, help="students side by side (seeds workload)")
    p.add_argument("--seed-batch", type=int, default=64, help="minibatch of each of those")
    p.add_argument("--batch", type=int, default=512, help="minibatch of the data workload")
    p.add_argument("--updates", type=int, default=100, help="updates per compiled call")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--quick", action="store_true", help="fewer updates and repeats")
    args = p.parse_args()
    if args.quick:
        args.updates, args.repeats = 20, 3
    force_host_devices(args.devices)

    import jax

    from distill import sharding

    devices = jax.devices()
    counts = [n for n in (1, 2, 4, 8, 16, 32, 64) if n <= len(devices)]
    platform = devices[0].platform
    print(f"jax {jax.__version__}: {len(devices)} {platform} device(s) ({devices[0].device_kind})")
    if platform == "cpu":
        print(
            "forced host devices share the same cores: a ratio below 1 is the overhead of "
            f"sharding, not a slowdown of real devices ({os.cpu_count()} CPUs here)"
        )
    workloads = {
        "seeds": (
            args.seeds * args.updates,
            args.seed_batch,
            lambda mesh: seeds_runner(args.seeds, args.seed_batch, args.updates, mesh),
        ),
        "data": (
            args.updates,
            args.batch,
            lambda mesh: data_runner(args.batch, args.updates, mesh),
        ),
    }
    print(
        f"\n{'workload':<8} {'mesh':<10} {'updates/s':>10} {'samples/s':>11} "
        f"{'vs 1 device':>12} {'efficiency':>11}"
    )
    for name, (work, batch, runner) in workloads.items():
        setups = [("none", 1, None)] + [
            (f"{name}={n}", n, sharding.make_mesh(f"{name}={n}")) for n in counts
        ]
        calls = [runner(mesh) for _, _, mesh in setups]  # compiled before any timing
        seconds = interleaved_medians(calls, args.repeats)
        single = work / seconds[0]
        for (label, n, _), t in zip(setups, seconds, strict=True):
            r = work / t
            print(
                f"{name:<8} {label:<10} {r:>10,.0f} {r * batch:>11,.0f} {r / single:>11.2f}x "
                f"{r / single / n:>10.0%}"
            )
    print(
        "\nvs 1 device: throughput / the single-device run without a mesh; efficiency: that "
        "ratio / devices (1 = perfect scaling)"
    )


if __name__ == "__main__":
    main()
