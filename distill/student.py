"""Students: supervised distillation of a teacher's Q-values with the paper's NLL, MSE or KL loss.

`make_distill(config, env_id)` returns pure pieces in the PureJaxRL manner:
`init(key) -> StudentState` and `run(state, data, hyper, blocks) -> (state, BlockMetrics)`, where
one block is `eval_every` minibatch updates (one `lax.scan`, each a `distill.distillation` step)
followed, on gymnax envs, by an evaluation in the env inside the same compiled call. The dataset
arrays and the loss's hyperparameters (`config.hyper`, e.g. `{"tau": 0.01}`; a bare tau works
too) are arguments, not closed-over constants, so `jax.vmap` runs seeds and tau values side by
side.
`fit(...)` runs a `StudentJob` through `distill.jobs.run`: progress, metrics, checkpoints,
resume. With a device mesh that has a `data` axis (`distill.sharding`), each minibatch is split
across its devices.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from distill import (
    checkpoint,
    dataset,
    distillation,
    envs,
    evaluate,
    families,
    jobs,
    losses,
    networks,
    plateau,
    sharding,
    xla,
)
from distill.checkpoint import CheckpointError
from distill.config import ConfigError, PositiveInt, in_range, positive_int, require

OPTIMIZERS = ("rmsprop", "adam")


@dataclasses.dataclass(frozen=True)
class StudentConfig:
    """Hyperparameters of a distilled student."""

    loss: str = "kl"
    """distillation loss: nll | mse | kl (distill.losses)"""
    tau: float = losses.DEFAULT_TAU
    """temperature of the teacher's softmax in the KL loss (the default is the paper's)"""
    net: str = "teacher"
    """student network: teacher | net1 | net2 | net3, the teacher's size or compressed"""
    updates: PositiveInt = 20_000
    """minibatch updates"""
    batch_size: PositiveInt = 64
    """states per minibatch"""
    optimizer: str = "rmsprop"
    """rmsprop (the paper's) | adam"""
    lr: float = 1e-3
    """learning rate"""
    eval_every: PositiveInt = 2_000
    """updates between evaluations in the env (updates must be a multiple)"""
    eval_episodes: PositiveInt = 50
    """episodes per evaluation (epsilon 0.05)"""
    seed: int = 0
    """random seed (network init, minibatches, evaluation)"""
    plateau_blocks: int = 0
    """plateau rule (distill.plateau): stop once held-out agreement has not improved for this
    many evaluation blocks, `updates` being the cap; 0: exactly `updates` (students side by side
    in experiments only)"""
    plateau_delta: float = 0.0
    """least rise of held-out agreement over its best that counts as an improvement"""
    held_out: float = 0.125
    """fraction of the dataset's env columns held out to measure agreement (plateau rule only)"""

    def __post_init__(self):
        require(self.loss in losses.LOSSES, "loss", self.loss, f"one of {tuple(losses.LOSSES)}")
        require(
            isinstance(self.tau, int | float) and 0 < self.tau < float("inf"),
            "tau",
            self.tau,
            "must be finite and > 0 (the paper uses 0.01)",
        )
        names = networks.all_net_names()
        require(self.net in names, "net", self.net, f"one of {names}")
        for name in ("updates", "batch_size", "eval_every", "eval_episodes"):
            positive_int(name, getattr(self, name))
        require(self.optimizer in OPTIMIZERS, "optimizer", self.optimizer, f"one of {OPTIMIZERS}")
        require(
            self.updates % self.eval_every == 0,
            "updates",
            self.updates,
            f"must be a multiple of eval_every={self.eval_every} (whole evaluation blocks)",
        )
        in_range("lr", self.lr, 1e-8, 1.0)
        require(isinstance(self.seed, int), "seed", self.seed, "must be an integer")
        require(
            isinstance(self.plateau_blocks, int) and self.plateau_blocks >= 0,
            "plateau_blocks",
            self.plateau_blocks,
            "must be an integer >= 0 (0: a fixed count of updates)",
        )
        in_range("plateau_delta", self.plateau_delta, 0.0, 1.0)
        require(
            isinstance(self.held_out, int | float) and 0 < self.held_out < 1,
            "held_out",
            self.held_out,
            "must be a fraction in (0, 1)",
        )

    @property
    def blocks(self) -> int:
        return self.updates // self.eval_every

    @property
    def hyper(self) -> dict[str, float]:
        """The loss's hyperparameters (`distill.losses`): `{"tau": tau}` for KL, `{}` else."""
        return losses.hyperparameters(self.loss, {"tau": self.tau})


class StudentState(NamedTuple):
    params: Any
    opt_state: Any
    key: jax.Array
    updates: jax.Array  # [] minibatch updates done


class BlockMetrics(NamedTuple):
    loss: jax.Array  # mean training loss over the block
    agreement: jax.Array  # fraction of the block's minibatch states where argmax student = teacher
    score: jax.Array  # mean evaluation score after the block (nan when not evaluated in-graph)
    held_out: Any = float("nan")  # agreement on held-out states (plateau rule; nan without it)


PLATEAU_FIELDS = ("plateau_blocks", "plateau_delta", "held_out")


def config_identity(config: StudentConfig | dict) -> dict:
    """The config (or its dict) as cache names and comparisons take it: the plateau fields only
    when the rule is on, so fixed-count students keep the names they had before it and their
    manifests from before it still match."""
    out = dict(config) if isinstance(config, dict) else dataclasses.asdict(config)
    if not out.get("plateau_blocks"):
        for name in PLATEAU_FIELDS:
            out.pop(name, None)
    return out


def held_out_split(config: StudentConfig, data: dataset.Dataset) -> tuple[dict, tuple]:
    """(training arrays: the dataset's first env columns, held-out sample: (obs `[n, *obs]`,
    teacher q `[n, A]`)) for the plateau rule; the sample is the same for every seed."""
    from distill.explain.linear import split_envs

    train, held = split_envs(data.arrays(), config.held_out)
    sample = dataset.sample(
        held,
        jax.random.PRNGKey(plateau.HELD_OUT_KEY),
        plateau.HELD_OUT_STATES,
        data.stack,
        data.first_row,
    )
    return train, sample


def make_optimizer(config: StudentConfig) -> optax.GradientTransformation:
    if config.optimizer == "rmsprop":
        return optax.rmsprop(config.lr, decay=0.95, eps=1e-6, centered=True)
    return optax.adam(config.lr)


class Distiller(NamedTuple):
    config: StudentConfig
    network: networks.QNetwork
    init: Callable[[jax.Array], StudentState]
    run: Callable[..., tuple[StudentState, BlockMetrics]]
    step: Callable[..., tuple[StudentState, tuple[jax.Array, jax.Array]]]
    run_plateau: Callable[..., tuple[tuple[StudentState, plateau.Plateau], BlockMetrics]]


def make_distill(
    config: StudentConfig,
    env_id: str,
    stack: int | None = None,
    conv_grad: str = "auto",
    mesh: jax.sharding.Mesh | None = None,
    loss_names: tuple[str, ...] | None = None,
    select: str = "switch",
) -> Distiller:
    """Pure distillation pieces for a student of `env_id` (evaluated in-graph on gymnax envs).

    `run` scans blocks of updates; `step` is one update, for host loops that call it once per
    compiled call (with `conv_grad='native'`, the fast form outside loops on CPU). With a `mesh`
    that has a `data` axis, every minibatch is split over it (data-parallel; the caller places
    the state and dataset replicated, see `fit`); without one nothing changes.
    With `loss_names` the pieces train any of those losses (`config.loss` is ignored): `hyper`
    then carries the loss's index (`distillation.multi_hyper`), so students of different losses
    run side by side under `jax.vmap`; `select` is how the loss is picked
    (`distillation.select_loss`).
    """
    sharding.check_batch(config.batch_size, mesh)
    spec = envs.spec(env_id)
    stack = stack if stack is not None else dataset.stack_of(spec)
    network = families.build_network(env_id, config.net, conv_grad)
    optimizer = make_optimizer(config)
    evaluator = (
        evaluate.make_gymnax_evaluator(env_id, network.apply, config.eval_episodes)
        if families.of(spec).in_graph
        else None
    )

    def init(key: jax.Array) -> StudentState:
        k_net, key = jax.random.split(key)
        params = networks.init_params(network, k_net, spec.obs_shape, spec.obs_dtype)
        return StudentState(params, optimizer.init(params), key, jnp.zeros((), jnp.int32))

    distil_step = distillation.make_step(
        config.loss if loss_names is None else tuple(loss_names),
        network.apply,
        optimizer,
        None,
        select,
    )

    def update(carry, key, data, hyper, first_row):
        params, opt_state = carry
        obs, teacher_q = sharding.constrain_batch(
            dataset.sample(data, key, config.batch_size, stack, first_row), mesh
        )
        params, opt_state, metrics = distil_step(params, opt_state, obs, teacher_q, hyper)
        return (params, opt_state), metrics

    def block(state: StudentState, data: dict, hyper, first_row: int, evaluate_in_graph: bool):
        key, k_upd, k_eval = jax.random.split(state.key, 3)
        (params, opt_state), (loss, agree) = jax.lax.scan(
            lambda c, k: update(c, k, data, hyper, first_row),
            (state.params, state.opt_state),
            jax.random.split(k_upd, config.eval_every),
        )
        if evaluate_in_graph and evaluator is not None:
            score = jnp.mean(evaluator(params, k_eval, jnp.float32(evaluate.EVAL_EPSILON)))
        else:
            score = jnp.float32(jnp.nan)
        new = StudentState(params, opt_state, key, state.updates + config.eval_every)
        return new, BlockMetrics(jnp.mean(loss), jnp.mean(agree), score, jnp.float32(jnp.nan))

    def run(state, data, hyper, blocks: int, first_row: int = 0, evaluate_in_graph: bool = True):
        """`blocks` blocks of `eval_every` updates, each followed by an evaluation."""
        return jax.lax.scan(
            lambda s, _: block(s, data, hyper, first_row, evaluate_in_graph),
            state,
            None,
            length=blocks,
        )

    def step(state: StudentState, data: dict, hyper, first_row: int = 0):
        """One minibatch update: (state, (loss, agreement))."""
        key, k_upd = jax.random.split(state.key)
        (params, opt_state), metrics = update(
            (state.params, state.opt_state), k_upd, data, hyper, first_row
        )
        return StudentState(params, opt_state, key, state.updates + 1), metrics

    def run_plateau(state, rule, train, held, hyper, blocks: int, first_row: int = 0):
        """`blocks` blocks under the plateau rule (`distill.plateau`): each trains on `train`,
        measures agreement on `held` (obs `[n, ...]`, teacher q `[n, A]`) and updates `rule`; a
        stopped student is left as it was and reports nan. No evaluation in the env: the final
        score is the caller's (paired). Returns ((state, rule), BlockMetrics `[blocks]`)."""
        nan = jnp.float32(jnp.nan)

        def train_block(s):
            new, m = block(s, train, hyper, first_row, False)
            held_out = plateau.agreement(network.apply(new.params, held[0]), held[1])
            return new, m._replace(held_out=held_out.astype(jnp.float32))

        def one(carry, _):
            s, r = carry
            s, m = jax.lax.cond(
                r.active, train_block, lambda s: (s, BlockMetrics(nan, nan, nan, nan)), s
            )
            r = plateau.update(
                r, m.held_out, config.plateau_blocks, config.plateau_delta, config.blocks
            )
            return (s, r), m

        return jax.lax.scan(one, (state, rule), None, length=blocks)

    return Distiller(config, network, init, run, step, run_plateau)


# Students side by side on a CPU: `jax.vmap` over all of them makes every activation and
# optimiser array `students` times larger, and past a few MinAtar students they no longer fit
# the caches; a loop over groups of GROUP vmapped students (`in_groups`, still one program) ran
# 9 teacher-size students 1.4-3.7x faster per sample than one vmap of 9 (medians of three runs,
# 2-core CPU under load, benchmarks/side_by_side.py); on the same CPU quiet the two are level
# (0.215 and 0.229 of a matmul's FLOP/s). Off the CPU every student goes in one vmap.
GROUP = 3


def in_groups(fn: Callable, size: int) -> Callable:
    """`g(batched, *shared)`: `fn(one, *shared)` for every slice of the leading axis of the
    pytree `batched` `[n, ...]`, `size` slices at a time: `jax.vmap` inside a `lax.map` over
    groups (the last group padded with copies of the last slice, dropped from the results)."""

    def g(batched, *shared):
        many = jax.vmap(fn, in_axes=(0,) + (None,) * len(shared))
        n = jax.tree_util.tree_leaves(batched)[0].shape[0]
        if n <= size:
            return many(batched, *shared)
        groups = -(-n // size)
        pad = lambda x: jnp.concatenate([x, jnp.repeat(x[-1:], groups * size - n, 0)])  # noqa: E731
        split = lambda x: pad(x).reshape(groups, size, *x.shape[1:])  # noqa: E731
        out = jax.lax.map(lambda b: many(b, *shared), jax.tree_util.tree_map(split, batched))
        join = lambda x: x.reshape(groups * size, *x.shape[2:])[:n]  # noqa: E731
        return jax.tree_util.tree_map(join, out)

    return g


def map_students(fn: Callable, mesh: jax.sharding.Mesh | None = None) -> Callable:
    """`sharding.map_seeds(fn, mesh)`, in groups of GROUP students on one CPU (`in_groups`):
    the same students to float rounding, in one compiled call."""
    if mesh is not None or jax.default_backend() != "cpu":
        return sharding.map_seeds(fn, mesh)
    return xla.jit(in_groups(fn, GROUP))


def dataset_fingerprint(data: dataset.Dataset) -> dict:
    return {
        "path": data.path,
        "env_id": data.env_id,
        "teacher": data.manifest["teacher"],
        "manifest_files": data.manifest["files"],
    }


def check_compatible(config: StudentConfig, data: dataset.Dataset, env_id: str | None) -> None:
    """A student must be for the dataset's env and action count."""
    if env_id is not None and env_id != data.env_id:
        raise ConfigError(
            f"env={env_id!r} does not match the dataset {data.path}, made for {data.env_id!r}"
        )
    spec = envs.spec(data.env_id)
    if spec.num_actions != data.num_actions:
        raise CheckpointError(
            f"{data.path}: {data.num_actions} actions, but {spec.env_id} has {spec.num_actions}"
        )


class StudentJob(jobs.Job):
    """`fit`'s job: one block of `eval_every` updates (and its evaluation) per `advance`."""

    kind = what = "student"
    made_from = "another config or dataset"
    step_name, unit = "update", "upd"

    def __init__(self, config: StudentConfig, data: dataset.Dataset, mesh=None, every_s=0.0):
        if config.plateau_blocks:
            raise ConfigError(
                f"plateau_blocks={config.plateau_blocks}: the plateau rule is for students "
                "trained side by side in experiments (distill.experiments.seeds); a single "
                "student trains a fixed count of updates (plateau_blocks=0)"
            )
        self.config, self.data, self.mesh = config, data, mesh
        self.checkpoint_every_s = every_s  # 0: after every block
        self.spec = envs.spec(data.env_id)
        self.fingerprint = dataset_fingerprint(data)
        self.total, self.chunk = config.blocks * config.eval_every, config.eval_every
        self.desc = f"student {config.net}/{config.loss} {data.env_id}"
        # Atari-size convolutions train fastest one update per compiled call on CPU (see
        # networks.CONV_GRADS); the host loop costs nothing next to a ~30 ms update.
        self.host_loop = not families.of(self.spec).in_graph
        self.distiller = make_distill(
            config,
            data.env_id,
            data.stack,
            conv_grad="native" if self.host_loop else "auto",
            mesh=mesh,
        )
        if self.host_loop:
            # the old state is dead after each update: let XLA write the new one in its buffers
            self.step = xla.jit(
                lambda s, d, h: self.distiller.step(s, d, h, data.first_row), donate_argnums=0
            )
        else:
            self.block = xla.jit(
                lambda s, d, h: self.distiller.run(s, d, h, 1, data.first_row, True)
            )

    def identity(self) -> dict:
        return {"config": dataclasses.asdict(self.config), "dataset": self.fingerprint}

    def matches(self, manifest: dict) -> bool:
        config = manifest.get("config")
        return (
            isinstance(config, dict) and config_identity(config) == config_identity(self.config)
        ) and dataset.same_source(manifest.get("dataset"), self.fingerprint)

    def init(self) -> StudentState:
        return self.distiller.init(jax.random.PRNGKey(self.config.seed))

    def start(self, state: StudentState) -> StudentState:
        self.arrays = self.data.arrays()
        if self.mesh is not None:
            state, self.arrays = sharding.replicate((state, self.arrays), self.mesh)
        return state

    def done(self, state: StudentState) -> int:
        return int(state.updates)

    def run_block(self, state: StudentState, hyper) -> tuple[StudentState, BlockMetrics]:
        if not self.host_loop:
            return self.block(state, self.arrays, hyper)
        metrics = []
        for _ in range(self.config.eval_every):
            state, m = self.step(state, self.arrays, hyper)
            metrics.append(m)
        loss, agree = (jnp.mean(jnp.stack(x))[None] for x in zip(*metrics, strict=True))
        return state, BlockMetrics(loss, agree, jnp.full((1,), jnp.nan))

    def advance(self, state: StudentState, n: int) -> jobs.Chunk:
        t0, config = time.perf_counter(), self.config
        state, m = self.run_block(state, jax.tree_util.tree_map(jnp.float32, config.hyper))
        loss, score = float(m.loss[0]), float(m.score[0])
        if self.host_loop and np.isfinite(loss):
            score = evaluate.evaluate_atari(
                self.distiller.network.apply,
                state.params,
                self.data.env_id,
                config.eval_episodes,
                seed=config.seed + self.done(state) // config.eval_every - 1,
            ).mean
        row = {
            "updates": int(state.updates),
            "loss": loss,
            "agreement": float(m.agreement[0]),
            "score": score,
            "wall_s": round(time.perf_counter() - t0, 3),
        }
        return jobs.Chunk(state, [row], {f"{config.loss} loss": loss})

    def describe(self, state: StudentState) -> dict:
        c = self.config
        return {
            **checkpoint.policy_manifest(
                "student", self.data.env_id, c.net, self.spec.num_actions, {}
            ),
            "updates": int(state.updates),
        }

    def files(self, state: StudentState, final: bool) -> dict[str, bytes]:
        return jobs.policy_files(state.params, state, final)

    def postfix(self, rows: list[dict]) -> dict:
        return {"loss": f"{rows[-1]['loss']:.4f}", "score": f"{rows[-1]['score']:.2f}"}

    def finish(self, state: StudentState, rows: list[dict]) -> dict:
        return {"final_score": rows[-1]["score"] if rows else float("nan")}


def fit(
    config: StudentConfig,
    dataset_path: str,
    out: str,
    *,
    resume: bool = False,
    progress: bool = True,
    data: dataset.Dataset | None = None,
    mesh: jax.sharding.Mesh | None = None,
    checkpoint_every_s: float = 0.0,
    tb: bool = True,
):
    """Distil a student from a dataset folder into `out`; returns the loaded student Policy.

    The run goes in blocks of `eval_every` updates, each followed by an evaluation. A checkpoint
    is written once `checkpoint_every_s` seconds have passed at the end of a block (0: after
    every block) and on SIGINT/SIGTERM, after the block in progress; a resumed run is
    bit-identical on CPU.
    With a `mesh` (a `data` axis), parameters and dataset are replicated on its devices and each
    minibatch is split across them; the checkpoints are the same files. A mesh without a `data`
    axis has nothing to split in one run: the student then trains on one device.
    """
    mesh = sharding.for_one_run(mesh)
    data = data if data is not None else dataset.load_dataset(dataset_path)
    check_compatible(config, data, None)
    job = StudentJob(config, data, mesh, checkpoint_every_s)
    return jobs.run(job, out, resume=resume, progress=progress, tb=tb)
