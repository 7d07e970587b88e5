"""Students of several losses side by side: one compiled program for every (loss, seed) against
one program per loss (its seeds vmapped), as the loss comparison ran before. MinAtar students of
one network, KL/NLL/MSE, fake data (speed does not depend on the values). Each case's samples/s
is read next to a dense matmul's FLOP/s measured just before it, cases interleaved over rounds
(this CPU's rate drifts, and it is shared): compare the ratios, not the raw rates. FLOP/s
count one student update as XLA counts it with native convolutions (the same count whatever the
form that computes them).

    python benchmarks/side_by_side.py [--updates 200] [--rounds 3] [--seeds 3] [--net teacher]
        [--batch 64] [--cases per-loss,switch,all] [--conv-grad auto]

per-loss: 3 programs of `seeds` students; switch: one program, the loss picked by
`jax.lax.switch` on its index; all: one program, every loss computed and the index picking one
(`distill.distillation.select_loss`). A case may name its convolution form after a colon
(`all:im2col,all:matmul`, `distill.networks.CONV_GRADS`; else `--conv-grad`) and, after a
second, how many students one vmap takes (`all:auto:9`; else `distill.student.map_students`,
as the experiments run them: groups of `student.GROUP` on a CPU).
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
from common import matmul_flops
from distill_throughput import fake_data

from distill import distillation, envs, student, xla

NAMES = ("nll", "mse", "kl")


def update_flops(env_id: str, net: str, batch: int) -> float:
    """XLA's FLOP count of one KL student update with native convolutions."""
    spec = envs.spec(env_id)
    config = student.StudentConfig(net=net, batch_size=batch, updates=1, eval_every=1)
    d = student.make_distill(config, env_id, conv_grad="native")
    step = xla.jit(lambda s, a: d.step(s, a, jnp.float32(0.01)))
    state = d.init(jax.random.PRNGKey(0))
    cost = step.lower(state, fake_data(spec.obs_shape, spec.num_actions)).compile().cost_analysis()
    return float((cost[0] if isinstance(cost, list) else cost)["flops"])


def programs(case: str, env_id: str, net: str, seeds: int, updates: int, batch: int = 64):
    """`go()`: train `len(NAMES) * seeds` students `updates` updates each, the `case`'s way
    (`per-loss`, `switch` or `all`, then optionally `:conv_grad` and `:students per vmap`)."""
    case, _, form = case.partition(":")
    form, _, group = form.partition(":")
    form = form or "auto"

    def map_students(fn):
        return xla.jit(student.in_groups(fn, int(group))) if group else student.map_students(fn)

    spec = envs.spec(env_id)
    data = fake_data(spec.obs_shape, spec.num_actions)
    keys = jax.random.split(jax.random.PRNGKey(0), seeds)

    def config(loss):
        return student.StudentConfig(
            loss=loss,
            net=net,
            updates=updates,
            eval_every=updates,
            eval_episodes=1,
            batch_size=batch,
        )

    if case == "per-loss":
        runs = []
        for loss in NAMES:
            d = student.make_distill(config(loss), env_id, conv_grad=form)
            hyper = jax.tree_util.tree_map(jnp.float32, config(loss).hyper)
            f = map_students(lambda k, a, h, d=d: d.run(d.init(k), a, h, 1, 0, False)[0])
            runs.append((f, hyper))
        return lambda: [jax.block_until_ready(f(keys, data, h).params) for f, h in runs]
    d = student.make_distill(config("kl"), env_id, conv_grad=form, loss_names=NAMES, select=case)
    hypers = [distillation.multi_hyper(NAMES, n, {"tau": 0.01}) for n in NAMES]
    hyper = jax.tree_util.tree_map(lambda *x: jnp.repeat(jnp.stack(x), seeds), *hypers)
    pairs = (jnp.tile(keys, (len(NAMES), 1)), hyper)
    f = map_students(lambda p, a: d.run(d.init(p[0]), a, p[1], 1, 0, False)[0])
    return lambda: jax.block_until_ready(f(pairs, data).params)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--env", default="Breakout-MinAtar")
    p.add_argument("--net", default="teacher")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--updates", type=int, default=200)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--cases", default="per-loss,switch,all")
    p.add_argument("--conv-grad", default="auto", help="the cases' convolution form by default")
    args = p.parse_args()
    cases = [c if ":" in c else f"{c}:{args.conv_grad}" for c in args.cases.split(",")]
    n = len(NAMES) * args.seeds
    flops = update_flops(args.env, args.net, args.batch) / args.batch  # per sample
    print(
        f"jax {jax.__version__} on {jax.devices()[0].platform}; {n} students {args.net}, "
        f"{args.env}, {args.updates} updates of {args.batch}; {flops / 1e6:.3f} MFLOP a sample"
    )
    go = {}
    for case in cases:
        t0 = time.perf_counter()
        go[case] = programs(case, args.env, args.net, args.seeds, args.updates, args.batch)
        go[case]()
        print(f"{case:<16} compile + first run {time.perf_counter() - t0:6.1f} s", flush=True)
    ratios = {c: [] for c in cases}
    for r in range(args.rounds):
        for case in cases:
            ref = matmul_flops(1024, 3)
            t0 = time.perf_counter()
            go[case]()
            rate = n * args.updates * args.batch / (time.perf_counter() - t0)
            ratios[case].append(rate * flops / ref)
            print(
                f"round {r} {case:<16} {rate:>9,.0f} samples/s {rate * flops / 1e9:6.1f} GFLOP/s"
                f"  matmul {ref / 1e9:5.1f} GFLOP/s  ratio {ratios[case][-1]:.3f}",
                flush=True,
            )
    base = sorted(ratios[cases[0]])[args.rounds // 2]
    for case in cases:
        med = sorted(ratios[case])[args.rounds // 2]
        print(f"{case:<16} median FLOP/s ratio {med:.3f}  ({med / base:.2f} x {cases[0]})")


if __name__ == "__main__":
    main()
