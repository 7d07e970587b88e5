"""Distillation throughput, each figure next to a reference measured in the same run.

1. Dataset generation (the teacher acting and its Q-values recorded):
   - MinAtar: states/s of the jitted generator against the raw jitted env (random actions).
   - Atari: states/s of `dataset.generate` (two env halves alternating, so env threads overlap
     with inference) against the bound 1 / (1/env_rate + 1/inference_rate) that the raw
     `AtariVectorEnv` rate and the teacher's own inference rate set, both measured here.
2. Student training: samples/s and achieved FLOP/s (XLA's own count of the compiled update)
   against a dense float32 matmul's FLOP/s.

    python benchmarks/distill_throughput.py [--quick]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from distill import checkpoint, dataset, envs, losses, networks


def median_time(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def matmul_flops(n: int = 2048, repeats: int = 5) -> float:
    a = jax.random.normal(jax.random.PRNGKey(0), (n, n), jnp.float32)
    f = jax.jit(lambda x: x @ x)
    return 2 * n**3 / median_time(lambda: f(a).block_until_ready(), repeats)


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


def minatar_generation(env_id: str, rows: int, repeats: int) -> tuple[float, float]:
    """(generator states/s, raw env steps/s) with 64 envs."""
    with tempfile.TemporaryDirectory() as d:
        policy = untrained_teacher(env_id, d)
        config = dataset.DatasetConfig(states=rows * 64, num_envs=64)
        init, shard = dataset.make_gymnax_generator(policy, config)
        shard = jax.jit(shard, static_argnums=2)
        state = init(jax.random.PRNGKey(0))
        gen = median_time(
            lambda: jax.block_until_ready(shard(policy.params, state, rows)[1]["q"]), repeats
        )
    env = envs.make(env_id)
    n_act = env.spec.num_actions

    @jax.jit
    def raw(key):
        obs, s = jax.vmap(env.reset)(jax.random.split(key, 64))

        def step(s, k):
            a = jax.random.randint(k, (64,), 0, n_act)
            o, s, r, d, _ = jax.vmap(env.step)(jax.random.split(k, 64), s, a)
            return s, o.sum()

        return jax.lax.scan(step, s, jax.random.split(key, rows))[1]

    key = jax.random.PRNGKey(1)
    raw_t = median_time(lambda: raw(key).block_until_ready(), repeats)
    return rows * 64 / gen, rows * 64 / raw_t


def atari_generation(env_id: str, states: int, num_envs: int = 16) -> dict:
    spec = envs.spec(env_id)
    # raw env rate (random actions, same number of envs, synchronous steps)
    env = envs.make_atari(env_id, num_envs)
    env.reset(seed=0)
    rng = np.random.default_rng(0)
    steps = max(states // num_envs, 50)
    t0 = time.perf_counter()
    for _ in range(steps):
        env.step(rng.integers(0, spec.num_actions, num_envs).astype(np.int32))
    env_rate = steps * num_envs / (time.perf_counter() - t0)
    env.close()
    with tempfile.TemporaryDirectory() as d:
        policy = untrained_teacher(env_id, d + "/teacher")
        # inference rate on batches of one half (what the generator feeds the network)
        obs = jnp.zeros((num_envs // 2, *spec.obs_shape), jnp.uint8)
        f = jax.jit(policy.apply)
        inf_t = median_time(lambda: f(policy.params, obs).block_until_ready(), 20)
        inference_rate = (num_envs // 2) / inf_t
        config = dataset.DatasetConfig(states=states, num_envs=num_envs, shard_states=states)
        # warm the compile cache with a tiny run, then time the real one
        dataset.generate(
            policy.path,
            dataset.DatasetConfig(states=num_envs * 8, num_envs=num_envs),
            d + "/warm",
            progress=False,
        )
        t0 = time.perf_counter()
        dataset.generate(policy.path, config, d + "/ds", progress=False)
        gen_rate = states / (time.perf_counter() - t0)
    bound = 1.0 / (1.0 / env_rate + 1.0 / inference_rate)
    return {"env": env_rate, "inference": inference_rate, "bound": bound, "generate": gen_rate}


def student_training(net: str, obs_shape, num_actions: int, batch: int, steps: int) -> dict:
    """Samples/s and achieved FLOP/s of `steps` KL updates in one compiled scan."""
    module = networks.QNetwork(networks.net_spec(net, obs_shape), num_actions)
    dtype = jnp.uint8 if len(obs_shape) == 3 and obs_shape[0] == 4 else jnp.float32
    params = networks.init_params(module, jax.random.PRNGKey(0), obs_shape, dtype)
    opt = optax.rmsprop(1e-4, decay=0.95, eps=1e-6, centered=True)
    obs = jnp.zeros((batch, *obs_shape), dtype)
    q_t = jax.random.normal(jax.random.PRNGKey(1), (batch, num_actions))

    def update(carry, _):
        p, o = carry
        g = jax.grad(lambda p: losses.kl(module.apply(p, obs), q_t))(p)
        u, o = opt.update(g, o, p)
        return (optax.apply_updates(p, u), o), None

    one = jax.jit(lambda c: update(c, None)[0])
    flops_per_update = one.lower((params, opt.init(params))).compile().cost_analysis()
    if isinstance(flops_per_update, list):
        flops_per_update = flops_per_update[0]
    flops_per_update = float(flops_per_update.get("flops", float("nan")))
    many = jax.jit(lambda c: jax.lax.scan(update, c, None, length=steps)[0])
    carry = (params, opt.init(params))
    t = median_time(lambda: jax.block_until_ready(many(carry)), 3)
    return {"samples": steps * batch / t, "flops": steps * flops_per_update / t}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="fewer steps (noisier)")
    args = p.parse_args()
    scale = 1 if args.quick else 4
    print(f"jax {jax.__version__} on {jax.devices()[0].platform}, {jax.device_count()} device(s)")
    ref = matmul_flops()
    print(f"reference: float32 2048x2048 matmul {ref / 1e9:,.1f} GFLOP/s")
    print("\n1. dataset generation")
    for env_id in ("Breakout-MinAtar", "SpaceInvaders-MinAtar"):
        gen, raw = minatar_generation(env_id, 50 * scale, 3)
        print(
            f"{env_id:<24} generate {gen:>11,.0f} states/s  raw env {raw:>11,.0f} steps/s  "
            f"ratio {gen / raw:.3f}"
        )
    a = atari_generation("ALE/Pong-v5", 1024 * scale)
    print(
        f"{'ALE/Pong-v5':<24} generate {a['generate']:>11,.0f} states/s  env {a['env']:,.0f}, "
        f"inference {a['inference']:,.0f}, bound {a['bound']:,.0f}  ratio to bound "
        f"{a['generate'] / a['bound']:.3f}"
    )
    print("\n2. student training (KL, RMSProp)")
    cases = [
        ("teacher", (4, 84, 84), 18, 32),
        ("net1", (4, 84, 84), 18, 32),
        ("net2", (4, 84, 84), 18, 32),
        ("teacher", (10, 10, 4), 3, 64),
        ("net3", (10, 10, 4), 3, 64),
    ]
    for net, shape, actions, batch in cases:
        steps = (20 if shape[0] == 4 else 500) * scale
        r = student_training(net, shape, actions, batch, steps)
        family = "Atari" if shape[0] == 4 else "MinAtar"
        print(
            f"{family:<8} {net:<8} batch {batch:<3} {r['samples']:>10,.0f} samples/s "
            f"{r['flops'] / 1e9:>7.1f} GFLOP/s  ratio to matmul {r['flops'] / ref:.3f}"
        )


if __name__ == "__main__":
    main()
