"""Students of several losses side by side: one compiled program for every (loss, seed) against
one program per loss (its seeds vmapped), as the loss comparison ran before. MinAtar students of
one network, KL/NLL/MSE, fake data (speed does not depend on the values). Each case's samples/s
is read next to a dense matmul's FLOP/s measured just before it, cases interleaved over rounds
(this CPU's rate drifts, and it is shared): compare the ratios, not the raw rates.

    python benchmarks/side_by_side.py [--updates 200] [--rounds 3] [--seeds 3] [--net teacher]
        [--cases per-loss,switch,all]

per-loss: 3 programs of `seeds` students; switch: one program, the loss picked by
`jax.lax.switch` on its index; all: one program, every loss computed and the index picking one
(`distill.distillation.select_loss`).
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
from common import matmul_flops
from distill_throughput import fake_data

from distill import distillation, envs, sharding, student

NAMES = ("nll", "mse", "kl")


def programs(case: str, env_id: str, net: str, seeds: int, updates: int):
    """`go()`: train `len(NAMES) * seeds` students `updates` updates each, the `case`'s way."""
    spec = envs.spec(env_id)
    data = fake_data(spec.obs_shape, spec.num_actions)
    keys = jax.random.split(jax.random.PRNGKey(0), seeds)

    def config(loss):
        return student.StudentConfig(
            loss=loss, net=net, updates=updates, eval_every=updates, eval_episodes=1
        )

    if case == "per-loss":
        runs = []
        for loss in NAMES:
            d = student.make_distill(config(loss), env_id)
            hyper = jax.tree_util.tree_map(jnp.float32, config(loss).hyper)
            f = sharding.map_seeds(lambda k, a, h, d=d: d.run(d.init(k), a, h, 1, 0, False)[0])
            runs.append((f, hyper))
        return lambda: [jax.block_until_ready(f(keys, data, h).params) for f, h in runs]
    d = student.make_distill(config("kl"), env_id, loss_names=NAMES, select=case)
    hypers = [distillation.multi_hyper(NAMES, n, {"tau": 0.01}) for n in NAMES]
    hyper = jax.tree_util.tree_map(lambda *x: jnp.repeat(jnp.stack(x), seeds), *hypers)
    pairs = (jnp.tile(keys, (len(NAMES), 1)), hyper)
    f = sharding.map_seeds(lambda p, a: d.run(d.init(p[0]), a, p[1], 1, 0, False)[0])
    return lambda: jax.block_until_ready(f(pairs, data).params)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--env", default="Breakout-MinAtar")
    p.add_argument("--net", default="teacher")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--updates", type=int, default=200)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--cases", default="per-loss,switch,all")
    args = p.parse_args()
    cases = args.cases.split(",")
    n = len(NAMES) * args.seeds
    print(
        f"jax {jax.__version__} on {jax.devices()[0].platform}; {n} students {args.net}, "
        f"{args.env}, {args.updates} updates of 64"
    )
    go = {}
    for case in cases:
        t0 = time.perf_counter()
        go[case] = programs(case, args.env, args.net, args.seeds, args.updates)
        go[case]()
        print(f"{case:<9} compile + first run {time.perf_counter() - t0:6.1f} s", flush=True)
    ratios = {c: [] for c in cases}
    for r in range(args.rounds):
        for case in cases:
            ref = matmul_flops(1024, 3)
            t0 = time.perf_counter()
            go[case]()
            rate = n * args.updates * 64 / (time.perf_counter() - t0)
            ratios[case].append(rate / (ref / 1e6))
            print(
                f"round {r} {case:<9} {rate:>9,.0f} samples/s  matmul {ref / 1e9:5.1f} GFLOP/s  "
                f"samples/s per matmul MFLOP/s {ratios[case][-1]:.3f}",
                flush=True,
            )
    base = sorted(ratios[cases[0]])[args.rounds // 2]
    for case in cases:
        med = sorted(ratios[case])[args.rounds // 2]
        print(f"{case:<9} median {med:.3f}  ({med / base:.2f} x {cases[0]})")


if __name__ == "__main__":
    main()
