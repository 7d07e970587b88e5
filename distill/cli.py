"""The `distill` command: one sub-command per stage of the pipeline.

User errors (a bad option, an unknown env id, a damaged or mismatched file) print one line naming
what was wrong and exit with status 2; an interrupted job saves a checkpoint and exits with 130.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def _existing_dir(text: str) -> str:
    if not Path(text).is_dir():
        raise argparse.ArgumentTypeError(f"no such folder: {text}")
    return text


# ---------------------------------------------------------------------------- sub-commands


def cmd_nets(args) -> int:
    from distill import envs, networks

    spec = envs.spec(args.env_id)
    actions = args.actions or spec.num_actions
    rows = networks.param_table(spec.obs_shape, actions)
    print(f"{spec.env_id}: observations {spec.obs_shape} {spec.obs_dtype}, {actions} actions")
    print(f"{'name':<8} {'layers':<42} {'parameters':>11} {'% of teacher':>13} {'paper %':>8}")
    for r in rows:
        print(
            f"{r['name']:<8} {r['layers']:<42} {r['params']:>11,d} "
            f"{r['percent_of_teacher']:>12.1f}% {r['paper_percent']:>7.0f}%"
        )
    return 0


def cmd_teacher(args) -> int:
    from distill import teacher

    overrides = {"seed": args.seed}
    if args.steps is not None:
        overrides["total_steps"] = args.steps
    config = teacher.default_config(args.env, **overrides)
    from distill import envs

    if envs.spec(config.env_id).is_atari:
        policy = teacher.fit_atari(config, args.out, resume=args.resume)
    else:
        policy = teacher.fit(config, args.out, resume=args.resume)
    ev = policy.manifest.get("evaluation", {})
    print(
        f"teacher saved in {args.out}: {policy.env_id}, {policy.manifest['env_steps']:,} env "
        f"steps, score {ev.get('mean', float('nan')):.2f} +- {ev.get('std', float('nan')):.2f} "
        f"over {ev.get('episodes', 0)} episodes (random "
        f"{policy.manifest.get('random_evaluation', {}).get('mean', float('nan')):.2f})"
    )
    return 0


def cmd_evaluate(args) -> int:
    from distill import checkpoint, evaluate
    from distill.config import ConfigError

    if args.random:
        if not args.env:
            raise ConfigError("--random needs --env ID (the env to play randomly)")
        scores = evaluate.evaluate_random(args.env, args.episodes, seed=args.seed)
        source = "random policy"
    else:
        if not args.path:
            raise ConfigError("give a checkpoint PATH, or --random --env ID")
        policy = checkpoint.load(args.path, env_id=args.env)
        kw = {"progress": not args.json} if policy.spec.is_atari else {}
        scores = evaluate.evaluate_policy(
            policy, args.episodes, epsilon=args.epsilon, seed=args.seed, **kw
        )
        source = args.path
    summary = {**scores.summary(), "source": source, "scores": scores.episodes.tolist()}
    if args.out:
        checkpoint.atomic_write_json(args.out, summary)
    if args.json:
        print(json.dumps(summary))
    else:
        s = scores.summary()
        print(
            f"{s['env_id']} ({source}): mean {s['mean']:.2f}  std {s['std']:.2f}  "
            f"min {s['min']:.2f}  max {s['max']:.2f}  over {s['episodes']} episodes, "
            f"epsilon {s['epsilon']}"
        )
    return 0


# ---------------------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="distill",
        description="Policy distillation workbench (Rusu et al., ICLR 2016).",
    )
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("nets", help="the paper's networks and their parameter counts")
    s.add_argument("env_id", help="e.g. ALE/Pong-v5 or Breakout-MinAtar")
    s.add_argument("--actions", type=_positive_int, help="override the number of actions")
    s.set_defaults(func=cmd_nets)

    s = sub.add_parser("teacher", help="train a DQN teacher")
    s.add_argument("--env", required=True, help="env id, e.g. Breakout-MinAtar, ALE/Pong-v5")
    s.add_argument("--steps", type=_positive_int, help="env steps (default: the config's)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--out", required=True, help="checkpoint folder")
    s.add_argument("--resume", action="store_true", help="continue an interrupted run in --out")
    s.set_defaults(func=cmd_teacher)

    s = sub.add_parser("evaluate", help="score a teacher or student in its env")
    s.add_argument("path", nargs="?", help="checkpoint folder")
    s.add_argument("--episodes", type=_positive_int, default=100)
    s.add_argument("--epsilon", type=float, default=0.05)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--env", help="with --random: the env; with PATH: require this env")
    s.add_argument("--random", action="store_true", help="the uniform random policy's scores")
    s.add_argument("--json", action="store_true", help="print the summary as JSON")
    s.add_argument("--out", help="write the summary and per-episode scores to this JSON file")
    s.set_defaults(func=cmd_evaluate)
    return p


def main(argv: list[str] | None = None) -> int:
    from distill.checkpoint import CheckpointError
    from distill.config import ConfigError
    from distill.runs import Interrupted

    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (ConfigError, CheckpointError) as e:
        print(f"distill {args.command}: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except ValueError as e:  # e.g. an unknown env id from distill.envs
        if type(e) is ValueError:
            print(f"distill {args.command}: error: {e}", file=sys.stderr)
            return EXIT_USAGE
        raise
    except Interrupted as e:
        print(f"distill {args.command}: stopped: {e}", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
