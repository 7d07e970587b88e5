"""Distillation throughput, each figure next to a reference measured in the same run.

1. Dataset generation (the teacher acting and its Q-values recorded):
   - MinAtar: states/s of the jitted generator against the raw jitted env (random actions).
   - Atari: states/s of `dataset.generate` (two env halves alternating, so env threads overlap
     with inference) against the bound 1 / (1/env_rate + 1/inference_rate) that the raw
     `AtariVectorEnv` rate and the teacher's own inference rate set, both measured around each
     of 3 rounds (1 with --quick); the median ratio is printed beside each round's.
2. Student training, run as `student.fit` runs it (a scan of updates on MinAtar, one update per
   call with native convolution gradients on Atari): samples/s and achieved FLOP/s (XLA's own
   count of one compiled update with native convolutions) against a dense float32 matmul's
   FLOP/s, measured just before and just after each case (this CPU's matmul rate drifts by 20 %
   within minutes).

    python benchmarks/distill_throughput.py [--quick] [--only generation|students]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import jax
import jax.numpy as jnp
from common import matmul_flops, median_time, raw_atari_rate, untrained_teacher

from distill import dataset, envs, student, xla


def minatar_generation(env_id: str, rows: int, repeats: int) -> tuple[float, float]:
    """(generator states/s, raw env steps/s) with 64 envs."""
    with tempfile.TemporaryDirectory() as d:
        policy = untrained_teacher(env_id, d)
        config = dataset.DatasetConfig(states=rows * 64, num_envs=64)
        init, shard = dataset.make_gymnax_generator(policy, config)
        shard = xla.jit(shard, static_argnums=2)
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


def atari_generation(env_id: str, states: int, num_envs: int = 16, rounds: int = 3) -> dict:
    """Steady generation states/s against the env/inference bound, in `rounds` rounds.

    This CPU's rates drift within a minute (the raw env between about 3,800 and 6,300 steps/s
    here): each round measures the references just before and just after its generation runs
    and gives its own ratio; the medians over rounds are returned.
    """
    spec = envs.spec(env_id)
    per_round = []
    with tempfile.TemporaryDirectory() as d:
        policy = untrained_teacher(env_id, d + "/teacher")
        # inference rate on batches of one half (what the generator feeds the network)
        obs = jnp.zeros((num_envs // 2, *spec.obs_shape), jnp.uint8)
        f = xla.jit(policy.apply)

        def references() -> tuple[float, float]:
            env = raw_atari_rate(env_id, num_envs, max(states, 50 * num_envs), training=False)
            inf_t = median_time(lambda: f(policy.params, obs).block_until_ready(), 20)
            return env, (num_envs // 2) / inf_t

        for r in range(rounds):
            before = references()
            # Creating and resetting the emulators costs seconds whatever the size: time a run
            # of `states` and one of 3 x `states`; the difference is the steady generation rate.
            walls = []
            for i, n in enumerate((states, 3 * states)):
                config = dataset.DatasetConfig(states=n, num_envs=num_envs, shard_states=n)
                t0 = time.perf_counter()
                dataset.generate(policy.path, config, f"{d}/ds{r}_{i}", progress=False)
                walls.append(time.perf_counter() - t0)
            gen = 2 * states / (walls[1] - walls[0])
            env, inference = ((a + b) / 2 for a, b in zip(before, references(), strict=True))
            bound = 1.0 / (1.0 / env + 1.0 / inference)
            per_round.append(
                {
                    "env": env,
                    "inference": inference,
                    "bound": bound,
                    "generate": gen,
                    "ratio": gen / bound,
                    "setup_s": walls[0] - states / gen,
                }
            )
    out = {k: statistics.median(r[k] for r in per_round) for k in per_round[0]}
    out["ratios"] = [r["ratio"] for r in per_round]
    return out


def fake_data(obs_shape, num_actions: int, rows: int = 256, envs_: int = 4) -> dict:
    """Dataset arrays of the right shapes (speed does not depend on the values)."""
    atari = tuple(obs_shape) == (4, 84, 84)
    frame = obs_shape[1:] if atari else obs_shape
    key = jax.random.PRNGKey(0)
    return {
        "obs": jax.random.randint(key, (rows, envs_, *frame), 0, 255 if atari else 2).astype(
            jnp.uint8 if atari else jnp.float32
        ),
        "q": jax.random.normal(key, (rows, envs_, num_actions)),
        "action": jnp.zeros((rows, envs_), jnp.int32),
        "reward": jnp.zeros((rows, envs_)),
        "done": jnp.zeros((rows, envs_), bool),
    }


def student_training(net: str, env_id: str, batch: int, updates: int) -> dict:
    """Samples/s and achieved FLOP/s of KL updates, run the way `student.fit` runs them.

    MinAtar: `updates` updates in one compiled scan. Atari: one update per compiled call with
    native convolution gradients (what fit does: the fast form outside loops on XLA CPU).
    """
    spec = envs.spec(env_id)
    atari = spec.is_atari
    config = student.StudentConfig(
        net=net, batch_size=batch, updates=updates, eval_every=updates, eval_episodes=1
    )
    distiller = student.make_distill(config, env_id, conv_grad="native" if atari else "auto")
    data = fake_data(spec.obs_shape, spec.num_actions)
    stack = 4 if atari else 1
    state = distiller.init(jax.random.PRNGKey(0))
    tau = jnp.float32(config.tau)
    step = xla.jit(lambda s, d: distiller.step(s, d, tau, stack - 1), donate_argnums=0)
    # counted with native convolutions: the same count whatever form computes them
    native = student.make_distill(config, env_id, conv_grad="native")
    count = xla.jit(lambda s, d: native.step(s, d, tau, stack - 1))
    flops = count.lower(state, data).compile().cost_analysis()
    flops = float((flops[0] if isinstance(flops, list) else flops).get("flops", float("nan")))
    if atari:

        def go():
            s = jax.tree_util.tree_map(jnp.copy, state)  # `step` donates its state
            for _ in range(updates):
                s, _ = step(s, data)
            jax.block_until_ready(s.params)

    else:
        many = xla.jit(lambda s, d: distiller.run(s, d, tau, 1, stack - 1, False)[0])
        go = lambda: jax.block_until_ready(many(state, data).params)  # noqa: E731
    t = median_time(go, 3)
    return {"samples": updates * batch / t, "flops": updates * flops / t}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="fewer steps (noisier)")
    p.add_argument("--only", choices=("generation", "students"), help="one part only")
    args = p.parse_args()
    scale = 1 if args.quick else 4
    print(f"jax {jax.__version__} on {jax.devices()[0].platform}, {jax.device_count()} device(s)")
    print(f"compiler options (distill.xla): {xla.compiler_options() or 'none'}")
    ref = matmul_flops()
    print(f"reference: float32 2048x2048 matmul {ref / 1e9:,.1f} GFLOP/s")
    if args.only != "students":
        generation(scale, args.quick)
    if args.only != "generation":
        students(scale)


def generation(scale: int, quick: bool) -> None:
    print("\n1. dataset generation")
    for env_id in ("Breakout-MinAtar", "SpaceInvaders-MinAtar"):
        gen, raw = minatar_generation(env_id, 50 * scale, 3)
        print(
            f"{env_id:<24} generate {gen:>11,.0f} states/s  raw env {raw:>11,.0f} steps/s  "
            f"ratio {gen / raw:.3f}"
        )
    a = atari_generation("ALE/Pong-v5", 1024 * scale, rounds=1 if quick else 3)
    print(
        f"{'ALE/Pong-v5':<24} generate {a['generate']:>11,.0f} states/s  env {a['env']:,.0f}, "
        f"inference {a['inference']:,.0f}, bound {a['bound']:,.0f}  ratio to bound "
        f"{a['ratio']:.3f}  (median of rounds {', '.join(f'{r:.3f}' for r in a['ratios'])}; "
        f"steady rate; {a['setup_s']:.1f} s to start the emulators, once per run)"
    )


def students(scale: int) -> None:
    print("\n2. student training (KL, RMSProp)")
    cases = [
        ("teacher", "ALE/Pong-v5", 32),
        ("net1", "ALE/Pong-v5", 32),
        ("net2", "ALE/Pong-v5", 32),
        ("teacher", "Breakout-MinAtar", 64),
        ("net3", "Breakout-MinAtar", 64),
    ]
    for net, env_id, batch in cases:
        family = "Atari" if envs.spec(env_id).is_atari else "MinAtar"
        steps = (20 if family == "Atari" else 500) * scale
        # this CPU's matmul rate drifts by 20 % within minutes: measure it beside each case
        before = matmul_flops()
        r = student_training(net, env_id, batch, steps)
        ref = (before + matmul_flops()) / 2
        print(
            f"{family:<8} {net:<8} batch {batch:<3} {r['samples']:>10,.0f} samples/s "
            f"{r['flops'] / 1e9:>7.1f} GFLOP/s  matmul {ref / 1e9:>5.1f}  "
            f"ratio {r['flops'] / ref:.3f}"
        )


if __name__ == "__main__":
    main()
