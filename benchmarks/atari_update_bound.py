"""The Atari teacher's speed against the bound its updates set, and against a dense matmul.

Each vector step of `fit_atari` steps `num_envs` emulators and runs `updates_per_step` gradient
updates of the Nature network (batch 32). The updates alone cap the loop at

    bound = num_envs / (seconds of one `learn` call)   env steps/s,

however fast the emulators are. This measures, in one run and on the same machine:
- the `learn` call alone (the teacher's own jitted updates, on a filled replay), its FLOP/s
  from XLA's cost analysis, and that as a ratio of a dense float32 matmul's FLOP/s;
- the bound it sets, the raw `AtariVectorEnv` rate with the same envs, and the training loop's
  measured env steps/s (from `fit_atari`'s own metrics once learning has started);
- the ratios: training / bound (how close the loop comes to its updates' cap) and
  training / raw env.

    python benchmarks/atari_update_bound.py [--env ALE/Pong-v5] [--steps 4000] [--repeats 5]
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
from common import matmul_flops, median_time, raw_atari_rate
from teacher_throughput import train_atari_rate

from distill import envs, families, teacher


def learn_seconds_and_flops(env_id: str, repeats: int) -> tuple[float, float]:
    """Median seconds of one `learn` call (all updates of a vector step) and its FLOPs."""
    config = teacher.default_config(env_id, buffer_size=4_096, learning_starts=0)
    learner = teacher.make_atari_learner(config)
    state = learner.init(jax.random.PRNGKey(0))
    spec = envs.spec(env_id)
    frame = families.frame_shape(spec)
    n = config.num_envs
    replay, key = state.replay, jax.random.PRNGKey(1)
    for i in range(config.buffer_size // n):  # fill the replay with random frames
        k = jax.random.fold_in(key, i)
        frames = jax.random.randint(k, (n, *frame), 0, 256).astype(jnp.uint8)
        action = jax.random.randint(k, (n,), 0, spec.num_actions)
        replay = learner.store(replay, frames, action, jnp.zeros(n), jnp.zeros(n, bool))
    carry = [state.params, state.target_params, state.opt_state, replay, state.updates]
    lowered = learner.learn.lower(*carry[:4], key, carry[4])
    cost = lowered.compile().cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    flops = float(cost.get("flops", float("nan")))

    def step():
        params, target, opt, buf, updates, loss = learner.learn(*carry[:4], key, carry[4])
        carry[:] = [params, target, opt, buf, updates]  # `learn` donates what it replaces
        loss.block_until_ready()

    return median_time(step, repeats), flops


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--env", default="ALE/Pong-v5")
    p.add_argument("--steps", type=int, default=4_000, help="env steps of the training loop")
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args()
    if args.steps < 3_000:  # train_atari_rate times the loop past 2 x its 1,000 learning starts
        p.error(f"--steps {args.steps}: at least 3000 (the loop is timed after 2,000 steps)")
    config = teacher.default_config(args.env)
    n, k = config.num_envs, config.updates_per_step
    print(f"jax {jax.__version__} on {jax.devices()[0].platform}, {jax.device_count()} device(s)")
    print(f"{args.env}: {n} envs, {k} updates of batch {config.batch_size} per vector step")
    matmul = matmul_flops()
    seconds, flops = learn_seconds_and_flops(args.env, args.repeats)
    bound = n / seconds
    rate = flops / seconds
    print(f"  learn call      {1e3 * seconds:9.1f} ms ({flops / 1e9:.2f} GFLOP)", flush=True)
    print(f"  its FLOP/s      {rate / 1e9:9.2f} G = {rate / matmul:.3f} of the matmul", flush=True)
    print(f"  matmul          {matmul / 1e9:9.2f} G FLOP/s (2048 x 2048, float32)", flush=True)
    print(f"  update bound    {bound:9.0f} env steps/s", flush=True)
    raw = raw_atari_rate(args.env, n, args.steps, training=True)
    print(f"  raw env         {raw:9.0f} env steps/s", flush=True)
    train = train_atari_rate(args.env, args.steps)
    print(f"  training loop   {train:9.0f} env steps/s")
    print(f"  ratios          training / bound {train / bound:.3f}, / raw env {train / raw:.3f}")


if __name__ == "__main__":
    main()
