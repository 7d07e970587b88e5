"""What the benchmark scripts share: timing, the matmul reference, raw env rates, a teacher."""

from __future__ import annotations

import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from distill import checkpoint, envs, networks, xla


def median_time(fn, repeats: int) -> float:
    """Median seconds of `fn()` over `repeats` runs, after one warm-up run."""
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def matmul_flops(n: int = 2048, repeats: int = 5) -> float:
    """FLOP/s of a dense float32 n x n matmul: the reference for training FLOP/s.

    The faster of plain `jax.jit` and `xla.jit` (the package's compiler options), so that the
    options cannot flatter a ratio by slowing the reference.
    """
    a = jax.random.normal(jax.random.PRNGKey(0), (n, n), jnp.float32)
    rates = []
    for jit in (jax.jit, xla.jit):
        f = jit(lambda x: x @ x)
        rates.append(2 * n**3 / median_time(lambda f=f: f(a).block_until_ready(), repeats))
    return max(rates)


def raw_atari_rate(env_id: str, num_envs: int, steps: int, training: bool = True) -> float:
    """Steps/s of `AtariVectorEnv` alone, stepping random actions synchronously."""
    env = envs.make_atari(env_id, num_envs, training=training)
    env.reset(seed=0)
    rng = np.random.default_rng(0)
    n_act = envs.spec(env_id).num_actions
    env.step(rng.integers(0, n_act, num_envs).astype(np.int32))
    t0 = time.perf_counter()
    for _ in range(steps // num_envs):
        env.step(rng.integers(0, n_act, num_envs).astype(np.int32))
    rate = (steps // num_envs) * num_envs / (time.perf_counter() - t0)
    env.close()
    return rate


def untrained_teacher(env_id: str, folder: str):
    """A randomly initialised teacher checkpoint: throughput does not depend on the weights."""
    spec = envs.spec(env_id)
    net = networks.build("teacher", spec.obs_shape, spec.num_actions)
    params = networks.init_params(net, jax.random.PRNGKey(0), spec.obs_shape, spec.obs_dtype)
    manifest = checkpoint.policy_manifest(
        "teacher", env_id, "teacher", spec.num_actions, {}, status="complete"
    )
    checkpoint.save_policy(folder, params, manifest)
    return checkpoint.load(folder)
