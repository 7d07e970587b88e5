"""Teacher training throughput, each figure next to the raw env measured in the same run.

MinAtar: env steps/s of a whole DQN training chunk (acting, replay, 2 updates of 256 per vector
step) against the raw jitted env stepping random actions with the same number of envs.
Atari: env steps/s of the `fit_atari` host loop (Nature network, batch 32) against the raw
`AtariVectorEnv` stepping random actions with the same number of envs.

    python benchmarks/teacher_throughput.py [--envs Breakout-MinAtar ...] [--atari ALE/Pong-v5]

benchmarks/atari_throughput.py puts Atari training next to generation and evaluation.
"""

from __future__ import annotations

import argparse
import tempfile

import jax
from common import median_time, raw_atari_rate

from distill import envs, teacher, xla


def raw_gymnax_rate(env_id: str, num_envs: int, iterations: int, repeats: int) -> float:
    env = envs.make(env_id)
    n_act = env.spec.num_actions

    @jax.jit
    def rollout(key):
        obs, state = jax.vmap(env.reset)(jax.random.split(key, num_envs))

        def step(carry, k):
            state, total = carry
            k_a, k_e = jax.random.split(k)
            action = jax.random.randint(k_a, (num_envs,), 0, n_act)
            _, state, reward, _, _ = jax.vmap(env.step)(
                jax.random.split(k_e, num_envs), state, action
            )
            return (state, total + reward.sum()), None

        (_, total), _ = jax.lax.scan(step, (state, 0.0), jax.random.split(key, iterations))
        return total

    key = jax.random.PRNGKey(0)
    seconds = median_time(lambda: rollout(key).block_until_ready(), repeats)
    return iterations * num_envs / seconds


def train_gymnax_rate(env_id: str, iterations: int, repeats: int) -> float:
    config = teacher.default_config(env_id)
    trainer = teacher.make_train(config)
    run = xla.jit(trainer.run, static_argnums=1)
    state = trainer.init(jax.random.PRNGKey(0))
    # past learning_starts, so every timed iteration does its gradient updates
    warm = config.learning_starts // config.num_envs + 1
    state, _ = run(state, warm)
    seconds = median_time(lambda: jax.block_until_ready(run(state, iterations)[0].params), repeats)
    return iterations * config.num_envs / seconds


def train_atari_rate(env_id: str, steps: int) -> float:
    """Steps/s of the fit_atari loop once learning has started (from its own metrics)."""
    config = teacher.default_config(
        env_id, total_steps=steps, learning_starts=1_000, buffer_size=20_000
    )
    with tempfile.TemporaryDirectory() as out:
        policy = teacher.fit_atari(
            config, out, eval_episodes=1, progress=False, log_every=50, checkpoint_every_s=1e9
        )
    rows = [r for r in policy.manifest["metrics"] if r["env_steps"] > 2 * config.learning_starts]
    return sum(50 * config.num_envs for _ in rows) / sum(r["wall_s"] for r in rows)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--envs", nargs="*", default=["Breakout-MinAtar", "SpaceInvaders-MinAtar"])
    p.add_argument("--atari", nargs="*", default=[], help="Atari envs too (see atari_throughput)")
    p.add_argument("--iterations", type=int, default=200)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--atari-steps", type=int, default=6_000)
    args = p.parse_args()
    print(f"jax {jax.__version__} on {jax.devices()[0].platform}, {jax.device_count()} device(s)")
    print(f"{'env':<24} {'raw env steps/s':>16} {'training steps/s':>17} {'ratio':>7}")
    for env_id in args.envs:
        num_envs = teacher.default_config(env_id).num_envs
        raw = raw_gymnax_rate(env_id, num_envs, args.iterations, args.repeats)
        train = train_gymnax_rate(env_id, args.iterations, args.repeats)
        print(f"{env_id:<24} {raw:>16,.0f} {train:>17,.0f} {train / raw:>7.4f}")
    for env_id in args.atari:
        num_envs = teacher.default_config(env_id).num_envs
        raw = raw_atari_rate(env_id, num_envs, 4_000)
        train = train_atari_rate(env_id, args.atari_steps)
        print(f"{env_id:<24} {raw:>16,.0f} {train:>17,.0f} {train / raw:>7.4f}")


if __name__ == "__main__":
    main()
