"""Atari throughput: training, dataset generation and evaluation, each next to the raw
`AtariVectorEnv` rate measured in the same run with the same number of envs.

- training: env steps/s of the `fit_atari` host loop once learning has started (the paper's
  Nature network, batch 32, 2 updates per vector step of 8 envs), from its own metrics;
- generation: the steady states/s of `dataset.generate` (emulator start-up excluded);
- evaluation: agent steps/s of `evaluate.evaluate_atari` (epsilon 0.05, whole games).

The teachers here are untrained (speed does not depend on the weights, only episode lengths do).

    python benchmarks/atari_throughput.py [--env ALE/Pong-v5] [--quick]
"""

from __future__ import annotations

import argparse
import tempfile
import time

import jax
from common import raw_atari_rate, untrained_teacher
from distill_throughput import atari_generation
from teacher_throughput import train_atari_rate

from distill import evaluate, teacher


def evaluation_rate(env_id: str, episodes: int, num_envs: int) -> float:
    with tempfile.TemporaryDirectory() as d:
        policy = untrained_teacher(env_id, d)
        evaluate.evaluate_policy(policy, num_envs, num_envs=num_envs)  # compile, start-up
        t0 = time.perf_counter()
        scores = evaluate.evaluate_policy(policy, episodes, num_envs=num_envs)
        return scores.steps / (time.perf_counter() - t0)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--env", default="ALE/Pong-v5")
    p.add_argument("--quick", action="store_true", help="fewer steps (noisier)")
    args = p.parse_args()
    scale = 1 if args.quick else 3
    print(f"jax {jax.__version__} on {jax.devices()[0].platform}, {jax.device_count()} device(s)")
    n_train = teacher.default_config(args.env).num_envs
    rows = []
    raw = raw_atari_rate(args.env, n_train, 4_000 * scale, training=True)
    rows.append(("training (fit_atari)", n_train, raw, train_atari_rate(args.env, 4_000 * scale)))
    gen = atari_generation(args.env, 1024 * scale, num_envs=16, rounds=1 if args.quick else 3)
    rows.append(("dataset generation", 16, gen["env"], gen["generate"]))
    raw = raw_atari_rate(args.env, 8, 4_000 * scale, training=False)
    rows.append(("evaluation", 8, raw, evaluation_rate(args.env, 8 * scale, 8)))
    print(f"{args.env}: steps/s next to the raw env with the same envs, same run")
    print(f"{'':<22} {'envs':>4} {'raw env':>9} {'measured':>9} {'ratio':>6}")
    for name, n, raw, rate in rows:
        print(f"{name:<22} {n:>4} {raw:>9,.0f} {rate:>9,.0f} {rate / raw:>6.3f}")


if __name__ == "__main__":
    main()
