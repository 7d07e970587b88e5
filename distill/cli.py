"""The `distill` command: one sub-command per stage of the pipeline.

Every expected failure prints one line and exits with a documented status: 2 a usage or input
error (a bad option or value, an unknown env id, a damaged, mismatched or locked folder); 3 a
numerical stop (a non-finite loss or Q-value; the last good checkpoint is kept); 74 an OS error
(disk full, no permission, a read-only folder); 130 an interrupted job (a checkpoint was saved).
A traceback only with `distill --debug ...`, or for a bug.
"""

from __future__ import annotations

import argparse
import json
import sys

from distill import cliconf, exits
from distill.exits import EXIT_INTERRUPTED, EXIT_IOERR, EXIT_NUMERICAL, EXIT_USAGE  # noqa: F401

_positive_int = cliconf.positive_int
_existing_dir = cliconf.existing_dir
# older spellings of config fields, kept working (the README and scripts use them)
TEACHER_ALIASES = {"env_id": ["--env"], "total_steps": ["--steps"], "num_envs": ["--envs"]}
DATASET_ALIASES = {"num_envs": ["--envs"]}


MESH_HELP = cliconf.MESH_HELP
_mesh = cliconf.mesh_from_args


# ---------------------------------------------------------------------------- sub-commands


def _fmt(value, spec: str = ".2f") -> str:
    """A manifest number for a summary line; '?' when a folder from another version holds
    something else there (printing must not fail after the work is done)."""
    try:
        return format(value, spec) if isinstance(value, int | float) else "?"
    except (TypeError, ValueError):
        return "?"


def _mapping(value) -> dict:
    return value if isinstance(value, dict) else {}


def cmd_nets(args) -> int:
    from distill import envs, families, networks

    spec = envs.spec(args.env_id)
    actions = args.actions or spec.num_actions
    rows = families.param_table(spec.env_id, actions, mflop=True)
    rows = rows if args.all else [r for r in rows if r["name"] in networks.NET_NAMES]
    print(f"{spec.env_id}: observations {spec.obs_shape} {spec.obs_dtype}, {actions} actions")
    wn = max(8, *(len(r["name"]) for r in rows))
    wl = max(42, *(len(r["layers"]) for r in rows))
    print(f"{'name':<{wn}} {'layers':<{wl}} {'parameters':>11} {'% of teacher':>13} {'paper %':>8}"
          f" {'MFLOP/sample':>12}")  # fmt: skip
    for r in rows:
        print(
            f"{r['name']:<{wn}} {r['layers']:<{wl}} {r['params']:>11,d} "
            f"{r['percent_of_teacher']:>12.1f}% {r['paper_percent']:>7.0f}% {r['mflop']:>12.2f}"
        )
    return 0


def teacher_config(args):
    """The DQNConfig of `distill teacher`: the env family's preset, then the options given."""
    from distill import teacher

    given = cliconf.overrides(teacher.DQNConfig, args)
    return teacher.default_config(given.pop("env_id"), **given)


def student_config(args):
    """The StudentConfig of `distill student`: the config's defaults, then the options given."""
    from distill import student

    return cliconf.config_from_args(student.StudentConfig, args)


def dataset_config(args):
    """The DatasetConfig of `distill dataset`: the config's defaults, then the options given."""
    from distill import dataset

    return cliconf.config_from_args(dataset.DatasetConfig, args)


def cmd_teacher(args) -> int:
    from distill import families, teacher

    config = teacher_config(args)
    mesh = _mesh(args, ("data",))
    fit = teacher.fit if families.of(config.env_id).in_graph else teacher.fit_atari
    policy = fit(config, args.out, resume=args.resume, mesh=mesh, tb=args.tb, **exits.every(args))
    m = policy.manifest
    ev, rnd = _mapping(m.get("evaluation")), _mapping(m.get("random_evaluation"))
    print(
        f"teacher saved in {args.out}: {policy.env_id}, {_fmt(m.get('env_steps'), ',')} env "
        f"steps, score {_fmt(ev.get('mean'))} +- {_fmt(ev.get('std'))} over "
        f"{_fmt(ev.get('episodes'), 'd')} episodes (random {_fmt(rnd.get('mean'))})"
    )
    return 0


def cmd_evaluate(args) -> int:
    from distill import checkpoint, evaluate, families
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
        kw = {} if families.of(policy.spec).in_graph else {"progress": not args.json}
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


def cmd_export(args) -> int:
    from distill import checkpoint, evaluate, families

    policy = checkpoint.load(args.path)
    kw = {} if families.of(policy.spec).in_graph else {"progress": True}
    scores = evaluate.evaluate_policy(policy, args.episodes, seed=args.seed, **kw)
    randoms = evaluate.evaluate_random(policy.env_id, args.episodes, seed=args.seed)
    exported = checkpoint.export_policy(
        args.path,
        args.out,
        evaluation=scores.summary(),
        random_evaluation=randoms.summary(),
    )
    from distill.schema import describe_counter

    print(
        f"exported {policy.kind} {policy.env_id} ({describe_counter(policy.manifest)}, "
        f"{policy.manifest.get('status', 'status not recorded')}) to {exported.path}: score "
        f"{scores.mean:.2f} +- {scores.std:.2f} over {args.episodes} episodes (random "
        f"{randoms.mean:.2f})"
    )
    return 0


def cmd_dataset(args) -> int:
    from distill import coverage, dataset

    config = dataset_config(args)
    folder = dataset.generate(
        args.teacher, config, args.out, resume=args.resume, tb=args.tb, **exits.every(args)
    )
    data = dataset.load_dataset(folder)
    print(f"dataset saved in {folder}: {data.env_id}, {data.num_states:,} states")
    try:  # a finished folder from another version may hold another coverage layout
        line = coverage.summary_line(data.manifest.get("coverage"))
    except (KeyError, TypeError, ValueError, IndexError):
        line = "coverage: ? (recorded in another layout)"
    print(line)
    return 0


def cmd_student(args) -> int:
    from distill import dataset, regimes, student

    config = student_config(args)
    regime = cliconf.config_from_args(regimes.RegimeConfig, args)
    if regime.regime != "offline" or args.teacher:  # a teacher in the loop: distill.regimes
        return regimes.cmd_student(args, config, regime)
    regimes.need_dataset(args.dataset)
    mesh = _mesh(args, ("data",))
    data = dataset.load_dataset(args.dataset, env_id=args.env)
    policy = student.fit(
        config,
        args.dataset,
        args.out,
        resume=args.resume,
        data=data,
        mesh=mesh,
        tb=args.tb,
        **exits.every(args),
    )
    print(
        f"student saved in {args.out}: {policy.env_id}, {policy.net}, loss {config.loss}, "
        f"final score {_fmt(policy.manifest.get('final_score'))}"
    )
    return 0


def cmd_experiment(args) -> int:
    from distill import experiments, sharding
    from distill.config import ConfigError

    experiment = experiments.EXPERIMENTS[args.name]
    if args.mesh is not None and not experiment.mesh_axes:
        raise ConfigError(f"--mesh {args.mesh}: experiment {args.name} runs on one device")
    mesh = _mesh(args, experiment.mesh_axes)
    b = experiments.budget(args.budget, **_budget_overrides(args, experiments))
    # every process of a multi-host run computes; process 0 alone writes and prints
    writes = sharding.is_main_process()
    result = experiment.run(b, tau=args.tau, mesh=mesh)
    if not writes:
        return 0
    folder = experiment.write(result, args.out)
    print(experiment.console_table(result))
    print(f"results in {folder}")
    return 0


def cmd_reproduce(args) -> int:
    from distill import experiments, reproduce

    only = tuple(args.stages.split(",")) if args.stages else None
    given = _budget_overrides(args, experiments)
    out = reproduce.reproduce(
        args.suite, args.budget, args.out, mesh=_mesh(args), only=only, overrides=given
    )
    print(f"report: {out / 'report.md'}")
    return 0


def cmd_stats(args) -> int:
    from distill import claims
    from distill.experiments import paired

    if args.references:  # teacher folders (or reference.json): A/B on their shared episodes
        print(paired.compare_references(*args.references, args.reps, args.seed), end="")
    else:  # one results.json, or several side by side
        a = args
        print(claims.stats_command(a.results, a.out, a.reps, a.seed, a.labels, a.games), end="")
    return 0


def cmd_play(args) -> int:
    from distill import play

    return play.command(args)


def cmd_explain(args) -> int:
    from distill import explain

    config = None
    if args.dataset:
        base = explain.LinearConfig(seed=args.seed)
        config = cliconf.config_from_args(explain.LinearConfig, args, base)
    lines = explain.explain_command(
        args.path, args.students, args.states, args.seed, args.out,
        dataset_path=args.dataset, config=config, episodes=args.episodes,
    )  # fmt: skip
    print("\n".join(lines))
    return 0


# ---------------------------------------------------------------------------- parser


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (no usage dump) and exit status 2."""

    def error(self, message: str):
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


_budget_overrides = cliconf.budget_overrides


def build_parser() -> argparse.ArgumentParser:
    from distill import dataset, evaluate, explain, losses, play, regimes, student, tb, teacher

    p = _Parser(
        prog="distill",
        description="Policy distillation workbench (Rusu et al., ICLR 2016).",
    )
    p.add_argument("--debug", action="store_true", help="a traceback for every error")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    s = sub.add_parser("nets", help="the paper's networks and their parameter counts")
    s.add_argument("env_id", help="e.g. ALE/Pong-v5 or Breakout-MinAtar")
    s.add_argument("--actions", type=_positive_int, help="override the number of actions")
    s.add_argument(
        "--all",
        action="store_true",
        help="every net of the env's family (MinAtar: also the large-* teacher and students)",
    )
    s.set_defaults(func=cmd_nets)

    s = sub.add_parser("teacher", help="train a DQN teacher")
    s.add_argument("--out", required=True, help="checkpoint folder")
    s.add_argument("--resume", action="store_true", help="continue an interrupted run in --out")
    exits.add_checkpoint_every(s)
    tb.add_option(s)
    s.add_argument("--mesh", help="data=N: split each gradient minibatch over N devices")
    cliconf.add_config_options(
        s,
        teacher.DQNConfig,
        aliases=TEACHER_ALIASES,
        required=["env_id"],
        presets=teacher.PRESETS,
        title="DQNConfig (a field not given keeps the preset of the env's family: "
        f"{', '.join(teacher.PRESETS)})",
    )
    s.set_defaults(func=cmd_teacher)

    s = sub.add_parser(
        "export", help="a finished, evaluated policy from a checkpoint (even a running one)"
    )
    s.add_argument("path", type=_existing_dir, help="teacher or student checkpoint folder")
    s.add_argument("--out", required=True, help="new checkpoint folder")
    s.add_argument("--episodes", type=_positive_int, default=30, help="evaluation episodes")
    s.add_argument("--seed", type=int, default=0)
    s.set_defaults(func=cmd_export)

    s = sub.add_parser("dataset", help="let a teacher act and record (state, Q-values)")
    s.add_argument("--teacher", required=True, type=_existing_dir, help="teacher checkpoint")
    s.add_argument("--out", required=True, help="dataset folder")
    s.add_argument("--resume", action="store_true", help="continue an interrupted generation")
    exits.add_checkpoint_every(s)
    tb.add_option(s)
    cliconf.add_config_options(s, dataset.DatasetConfig, aliases=DATASET_ALIASES)
    s.set_defaults(func=cmd_dataset)

    s = sub.add_parser("student", help="distil a student from a teacher dataset")
    s.add_argument("--dataset", type=_existing_dir, help="dataset folder (--regime offline)")
    s.add_argument("--teacher", type=_existing_dir, help="teacher (stream, dagger; diagnostics)")
    s.add_argument("--env", help="refuse a dataset made for another env")
    s.add_argument("--out", required=True, help="student checkpoint folder")
    s.add_argument("--resume", action="store_true", help="continue an interrupted student")
    exits.add_checkpoint_every(s)
    tb.add_option(s)
    s.add_argument("--mesh", help="data=N: split each minibatch over N devices")
    cliconf.add_config_options(s, student.StudentConfig)
    cliconf.add_config_options(s, regimes.RegimeConfig)
    s.set_defaults(func=cmd_student)

    from distill import experiments, reproduce

    s = sub.add_parser("experiment", help="run one of the paper's experiments")
    s.add_argument(
        "name",
        choices=list(experiments.EXPERIMENTS),
        help="; ".join(
            f"{e.name}: {e.help}".replace("%", "%%") for e in experiments.EXPERIMENTS.values()
        ),
    )
    s.add_argument(
        "--budget",
        choices=list(experiments.BUDGETS),
        default="quick",
        help="how much compute (default quick); any of its fields can be changed below",
    )
    s.add_argument(
        "--tau",
        type=cliconf.number,
        default=losses.DEFAULT_TAU,
        help="KL temperature (default 0.01)",
    )
    s.add_argument("--out", required=True, help="results folder")
    s.add_argument("--mesh", help=MESH_HELP)
    s.add_argument(
        "--distributed",
        metavar="auto|HOST:PORT,PROCESSES,ID",
        help="join a multi-host run (jax.distributed) before starting; see the README",
    )
    cliconf.add_budget_options(s, experiments)
    s.set_defaults(func=cmd_experiment)

    s = sub.add_parser("reproduce", help="run the paper's experiments end to end, with a report")
    s.add_argument("--suite", choices=list(reproduce.SUITES), default="minatar")
    s.add_argument(
        "--budget",
        choices=list(experiments.BUDGETS),
        default="quick",
        help="how much compute (default quick); any of its fields can be changed below",
    )
    s.add_argument("--out", required=True, help="results folder (re-runs skip finished stages)")
    s.add_argument("--mesh", help=MESH_HELP)
    s.add_argument(
        "--stages",
        help="comma-separated stages to run, the others left as they are (default: all): "
        + ", ".join(reproduce.STAGE_ORDER),
    )
    cliconf.add_budget_options(s, experiments)
    s.set_defaults(func=cmd_reproduce)

    s = sub.add_parser("evaluate", help="score a teacher or student in its env")
    s.add_argument("path", nargs="?", help="checkpoint folder")
    s.add_argument("--episodes", type=_positive_int, default=100, help="episodes (default 100)")
    s.add_argument(
        "--epsilon",
        type=cliconf.number,
        default=evaluate.EVAL_EPSILON,
        help=f"the policy acts epsilon-greedily, as in the paper (default {evaluate.EVAL_EPSILON})",
    )
    s.add_argument("--seed", type=cliconf.integer, default=0, help="random seed (default 0)")
    s.add_argument("--env", help="with --random: the env; with PATH: require this env")
    s.add_argument("--random", action="store_true", help="the uniform random policy's scores")
    s.add_argument("--json", action="store_true", help="print the summary as JSON")
    s.add_argument("--out", help="write the summary and per-episode scores to this JSON file")
    s.set_defaults(func=cmd_evaluate)

    s = sub.add_parser("play", help="a teacher and its students playing side by side, as a video")
    play.add_arguments(s)
    s.set_defaults(func=cmd_play)

    s = sub.add_parser(
        "explain", help="what a teacher and its students look at, and how often they agree"
    )
    s.add_argument("path", help="teacher checkpoint folder")
    s.add_argument("--students", nargs="+", default=[], metavar="PATH", help="student folders")
    s.add_argument(
        "--states", type=_positive_int, default=256, help="states to explain, as the teacher plays"
    )
    s.add_argument(
        "--dataset", help="also distil a linear student from this dataset of the teacher (MinAtar)"
    )
    s.add_argument(
        "--episodes",
        type=_positive_int,
        default=100,
        help="episodes (epsilon 0.05) scoring the linear student and the teacher",
    )
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--out", required=True, help="folder for the figures and explain.json")
    cliconf.add_config_options(
        s, explain.LinearConfig, skip=("seed",), title="the linear student (with --dataset)"
    )
    s.set_defaults(func=cmd_explain)

    s = sub.add_parser("stats", help="95 %% bootstrap intervals and the paper's claims' verdicts")
    s.add_argument("results", nargs="*", help="results.json of reproduce (several: compared)")
    s.add_argument("--labels", help="with several results: their columns' names, a,b,...")
    s.add_argument("--games", help="only these games' rows, a,b,... (a subset's intervals)")
    s.add_argument(
        "--references", nargs=2, metavar=("A", "B"), help="or: teachers A/B, shared episodes"
    )
    s.add_argument("--out", help="folder for stats.md, stats.json and the figures")
    s.add_argument(
        "--reps", type=_positive_int, default=2000, help="bootstrap resamples (default 2000)"
    )
    s.add_argument("--seed", type=cliconf.integer, default=0, help="bootstrap seed (default 0)")
    s.set_defaults(func=cmd_stats)
    return p


CONFIGS = {"teacher": teacher_config, "dataset": dataset_config, "student": student_config}


def main(argv: list[str] | None = None) -> int:
    import signal

    import distill

    # from here a Ctrl-C is a KeyboardInterrupt that the handler below (or a job) turns into a
    # one-line exit 130; until here distill._cli_signals' early handler did
    for sig in (signal.SIGINT, signal.SIGTERM):  # SIGTERM too: 130, as in a job (distill.exits)
        if signal.getsignal(sig) is distill._early_interrupt:
            signal.signal(sig, signal.default_int_handler)
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
    except KeyboardInterrupt:
        print("distill: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    try:
        from distill import preflight

        config = CONFIGS[args.command](args) if args.command in CONFIGS else None
        if args.command in ("teacher", "student"):  # one run: only the minibatch splits
            cliconf.check_axes(args, ("data",))
        preflight.check(args, config)
        return args.func(args)
    except (Exception, KeyboardInterrupt) as e:
        failure = exits.failure(e)
        if failure is None or args.debug:
            raise
        status, word = failure
        print(f"distill {args.command}: {word}: {exits.message(e)}", file=sys.stderr)
        return status


if __name__ == "__main__":
    sys.exit(main())
