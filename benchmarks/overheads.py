"""Where an experiment stage's wall time goes: compile, train, evaluate, data, I/O and the rest,
as ratios of the whole; then the stage's training rate against a matmul measured in the same run.

Compile time is what jax reports through `jax.monitoring` (tracing, lowering to MLIR and the
backend compile, persistent-cache reads included); every other part is the wall time of the
functions that do it, less the compiles and the other parts that run inside them:

- train: students side by side (`seeds._distil_in_graph_seeds`, `_distil_plateau_seeds`,
  `_distil_side_by_side`), their in-graph evaluations after each block included
- evaluate: the paired evaluations of students, teachers and the random policy
- data: teachers and datasets found, generated or loaded (`common.ensure_teacher`,
  `ensure_dataset`)
- I/O: cached students written and read, result files written
- other: the rest (Python between the calls, tables)

Students' samples/s and FLOP/s (XLA's count of one update times the updates trained) are given
against a dense float32 matmul's FLOP/s measured after the stage.

    python benchmarks/overheads.py [--budget quick] [--games Breakout-MinAtar] [--losses kl]
        [--runs DIR]   (a DIR that already holds the datasets leaves their generation out)
        [--seeds N --updates N --eval-every N --eval-episodes N --dataset-states N
         --plateau-blocks N]   (the budget's fields, overridden)

The same script measures a package from before students of several losses shared one program
(`PYTHONPATH=<old checkout>`): it then times the per-loss programs.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import functools
import tempfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from common import matmul_flops

from distill import envs, experiments, student, xla
from distill.experiments import common, losses, paired, seeds

COMPILE_EVENTS = (
    "/jax/core/compile/jaxpr_trace_duration",
    "/jax/core/compile/jaxpr_to_mlir_module_duration",
    "/jax/core/compile/backend_compile_duration",
)
PARTS = ("compile", "train", "evaluate", "data", "io", "other")


class Split:
    """Exclusive wall time per part: a part's time excludes the parts and compiles inside it."""

    def __init__(self):
        self.seconds: dict[str, float] = collections.defaultdict(float)
        self.stack: list[str] = []
        self.trained: list[tuple[student.StudentConfig, str, int]] = []  # (config, env, updates)
        self.programs = 0  # training calls (each one compiled program of students side by side)

    def on_event(self, event: str, duration: float, **_) -> None:
        if event in COMPILE_EVENTS:
            self.seconds["compile"] += duration
            if self.stack:
                self.seconds[self.stack[-1]] -= duration

    @contextlib.contextmanager
    def part(self, name: str):
        self.stack.append(name)
        t0 = time.perf_counter()
        try:
            yield
        finally:
            dt = time.perf_counter() - t0
            self.stack.pop()
            self.seconds[name] += dt
            if self.stack:
                self.seconds[self.stack[-1]] -= dt

    def wrap(self, module, name: str, part: str) -> None:
        fn = getattr(module, name)

        @functools.wraps(fn)
        def timed(*args, **kwargs):
            with self.part(part):
                out = fn(*args, **kwargs)
                if part == "train":  # the students' state may still be in flight
                    jax.block_until_ready(out)
            if part == "train":
                # one config (its seeds side by side) or several (losses side by side)
                configs, results = (args[0], out) if isinstance(out, list) else ([args[0]], [out])
                for config, (_, state, _) in zip(configs, results, strict=True):
                    updates = int(np.sum(np.asarray(state.updates)))
                    self.trained.append((config, args[1].env_id, updates))
                self.programs += 1
            return out

        setattr(module, name, timed)


def instrument(split: Split) -> None:
    # `_distil_side_by_side` (losses side by side) is absent from packages before it: the same
    # script then measures the per-loss programs, for a before/after comparison
    for name in ("_distil_in_graph_seeds", "_distil_plateau_seeds", "_distil_side_by_side"):
        if hasattr(seeds, name):
            split.wrap(seeds, name, "train")
    for name in ("student_scores", "teacher_scores", "random_scores", "teacher_reference"):
        split.wrap(paired, name, "evaluate")
    for name in ("ensure_teacher", "ensure_dataset"):
        split.wrap(common, name, "data")
    for name in ("_write_students", "_read_students"):
        split.wrap(seeds, name, "io")
    split.wrap(losses, "write_loss_comparison", "io")


def update_flops(config: student.StudentConfig, env_id: str) -> float:
    """XLA's FLOP count of one minibatch update of `config`'s student."""
    spec = envs.spec(env_id)
    distiller = student.make_distill(config, env_id)
    arrays = {
        "obs": jnp.zeros((8, 4, *spec.obs_shape), spec.obs_dtype),
        "q": jnp.zeros((8, 4, spec.num_actions)),
        "action": jnp.zeros((8, 4), jnp.int32),
        "reward": jnp.zeros((8, 4)),
        "done": jnp.zeros((8, 4), bool),
    }
    hyper = jax.tree_util.tree_map(jnp.float32, config.hyper)
    state = distiller.init(jax.random.PRNGKey(0))
    cost = xla.jit(distiller.step).lower(state, arrays, hyper).compile().cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    return float(cost.get("flops", float("nan")))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--budget", default="smoke", help="smoke | quick | full")
    p.add_argument("--games", default="Breakout-MinAtar", help="comma-separated env ids")
    p.add_argument("--losses", default="nll,mse,kl", help="comma-separated losses")
    p.add_argument("--seeds", type=int, default=None, help="students per loss (budget's)")
    p.add_argument("--runs", default=None, help="runs folder (default: a fresh temporary one)")
    for field in ("updates", "eval_every", "eval_episodes", "dataset_states", "plateau_blocks"):
        p.add_argument(f"--{field.replace('_', '-')}", type=int, default=None, help="budget's")
    args = p.parse_args()
    overrides = {"games": tuple(args.games.split(","))}
    for field in ("seeds", "updates", "eval_every", "eval_episodes", "dataset_states"):
        if getattr(args, field):
            overrides[field] = getattr(args, field)
    if args.plateau_blocks is not None:
        overrides["plateau_blocks"] = args.plateau_blocks
    b = experiments.budget(args.budget, **overrides)
    print(f"jax {jax.__version__} on {jax.devices()[0].platform}; budget {b.name}: {b.rule}")
    split = Split()
    jax.monitoring.register_event_duration_secs_listener(split.on_event)
    instrument(split)
    with tempfile.TemporaryDirectory() as scratch:
        runs = Path(args.runs or scratch)
        t0 = time.perf_counter()
        with split.part("other"):
            result = losses.loss_comparison(
                b, tuple(args.losses.split(",")), runs_dir=runs, progress=False
            )
            losses.write_loss_comparison(result, runs / "out")
        wall = time.perf_counter() - t0
    print(
        f"\nlosses stage, {len(b.games)} game(s) x {args.losses}: {wall:.1f} s wall, "
        f"{split.programs} training program(s)"
    )
    for name in PARTS:
        s = split.seconds.get(name, 0.0)
        print(f"  {name:<9} {s:>8.1f} s  {s / wall:>6.1%}")
    ref = matmul_flops()
    flops_of = {}
    samples = flops = 0.0
    for config, env_id, updates in split.trained:
        key = (env_id, config.net, config.loss)
        if key not in flops_of:
            flops_of[key] = update_flops(config, env_id)
        samples += updates * config.batch_size
        flops += updates * flops_of[key]
    train_s = split.seconds.get("train", float("nan"))
    print(
        f"\nstudents: {samples / train_s:,.0f} samples/s, {flops / train_s / 1e9:.2f} GFLOP/s "
        f"in training ({flops / wall / 1e9:.2f} over the whole stage); matmul "
        f"{ref / 1e9:.1f} GFLOP/s; ratio {flops / train_s / ref:.3f} "
        f"(whole stage {flops / wall / ref:.3f})"
    )
    for row in result["rows"]:
        if "plateau_updates" in row:
            print(
                f"  {row['game']:<22} {row['loss']:<4} seed {row['seed']}  "
                f"{row['percent_of_teacher']:6.1f} % of teacher  stopped at {row['updates']:,} "
                f"(plateau {row['plateau_updates']:,})  held-out {row['held_out_agreement']:.3f}"
            )


if __name__ == "__main__":
    main()
