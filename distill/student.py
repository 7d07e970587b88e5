"""Students: supervised distillation of a teacher's Q-values with the paper's NLL, MSE or KL loss.

`make_distill(config, env_id)` returns pure pieces in the PureJaxRL manner:
`init(key) -> StudentState` and `run(state, data, hyper, blocks) -> (state, BlockMetrics)`, where
one block is `eval_every` minibatch updates (one `lax.scan`, each a `distill.distillation` step)
followed, on gymnax envs, by an evaluation in the env inside the same compiled call. The dataset
arrays and the loss's hyperparameters (`config.hyper`, e.g. `{"tau": 0.01}`; a bare tau works
too) are arguments, not closed-over constants, so `jax.vmap` runs seeds and tau values side by
side.
`fit(...)` is the CLI's runner: progress, metrics, checkpoints, resume. With a device mesh that
has a `data` axis (`distill.sharding`), each minibatch is split across its devices.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from pathlib import Path
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
    losses,
    networks,
    runs,
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

    def __post_init__(self):
        require(self.loss in losses.LOSSES, "loss", self.loss, f"one of {tuple(losses.LOSSES)}")
        require(
            isinstance(self.tau, int | float) and self.tau > 0,
            "tau",
            self.tau,
            "must be > 0 (the paper uses 0.01)",
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


def make_distill(
    config: StudentConfig,
    env_id: str,
    stack: int | None = None,
    conv_grad: str = "auto",
    mesh: jax.sharding.Mesh | None = None,
) -> Distiller:
    """Pure distillation pieces for a student of `env_id` (evaluated in-graph on gymnax envs).

    `run` scans blocks of updates; `step` is one update, for host loops that call it once per
    compiled call (with `conv_grad='native'`, the fast form outside loops on CPU). With a `mesh`
    that has a `data` axis, every minibatch is split over it (data-parallel; the caller places
    the state and dataset replicated, see `fit`); without one nothing changes.
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

    distil_step = distillation.make_step(config.loss, network.apply, optimizer)

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
        return new, BlockMetrics(jnp.mean(loss), jnp.mean(agree), score)

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

    return Distiller(config, network, init, run, step)


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


def fit(
    config: StudentConfig,
    dataset_path: str,
    out: str,
    *,
    resume: bool = False,
    progress: bool = True,
    data: dataset.Dataset | None = None,
    mesh: jax.sharding.Mesh | None = None,
):
    """Distil a student from a dataset folder into `out`; returns the loaded student Policy.

    With a `mesh` (a `data` axis), parameters and dataset are replicated on its devices and each
    minibatch is split across them; the checkpoints are the same files. A mesh without a `data`
    axis has nothing to split in one run: the student then trains on one device.
    """
    mesh = sharding.for_one_run(mesh)
    data = data if data is not None else dataset.load_dataset(dataset_path)
    check_compatible(config, data, None)
    spec = envs.spec(data.env_id)
    folder = Path(out)
    config_dict = dataclasses.asdict(config)
    fingerprint = dataset_fingerprint(data)
    # Atari-size convolutions train fastest one update per compiled call on CPU (see
    # networks.CONV_GRADS); the host loop costs nothing next to a ~30 ms update.
    host_loop = spec.is_atari
    distiller = make_distill(
        config, data.env_id, data.stack, conv_grad="native" if host_loop else "auto", mesh=mesh
    )
    state = distiller.init(jax.random.PRNGKey(config.seed))
    rows: list[dict] = []
    manifest = checkpoint.previous_run(
        folder,
        resume,
        "student",
        lambda m: (
            m.get("config") == config_dict and dataset.same_source(m.get("dataset"), fingerprint)
        ),
        "another config or dataset",
    )
    if manifest is not None:
        if manifest.get("status") == "complete":
            return checkpoint.load(folder)
        raw = checkpoint.read_verified(folder, checkpoint.TRAIN_STATE, manifest)
        state = checkpoint.pytree_from_bytes(
            raw, state, str(checkpoint.path_of(folder, checkpoint.TRAIN_STATE))
        )
        rows = list(manifest.get("metrics", []))

    arrays = data.arrays()
    if mesh is not None:
        state, arrays = sharding.replicate((state, arrays), mesh)
    if host_loop:
        # the old state is dead after each update: let XLA write the new one in its buffers
        step = xla.jit(
            lambda s, d, tau: distiller.step(s, d, tau, data.first_row), donate_argnums=0
        )

        def run_block(s, d, tau):
            metrics = []
            for _ in range(config.eval_every):
                s, m = step(s, d, tau)
                metrics.append(m)
            loss, agree = (jnp.mean(jnp.stack(x))[None] for x in zip(*metrics, strict=True))
            return s, BlockMetrics(loss, agree, jnp.full((1,), jnp.nan))

    else:
        run_block = xla.jit(lambda s, d, tau: distiller.run(s, d, tau, 1, data.first_row, True))

    def manifest_for(status: str, extra: dict | None = None) -> dict:
        return checkpoint.policy_manifest(
            "student",
            data.env_id,
            config.net,
            spec.num_actions,
            config_dict,
            status=status,
            dataset=fingerprint,
            updates=int(state.updates),
            metrics=rows,
            **(extra or {}),
        )

    from tqdm.auto import tqdm

    bar = tqdm(
        total=config.blocks * config.eval_every,
        initial=int(state.updates),
        unit="upd",
        unit_scale=True,
        desc=f"student {config.net}/{config.loss} {data.env_id}",
        disable=not progress,
    )
    try:
        with runs.stop_on_signals() as stop:
            while int(state.updates) < config.blocks * config.eval_every:
                t0 = time.perf_counter()
                state, m = run_block(state, arrays, jnp.float32(config.tau))
                loss = float(m.loss[0])
                if not np.isfinite(loss):
                    raise FloatingPointError(
                        f"non-finite {config.loss} loss at update {int(state.updates)}; "
                        f"{folder} keeps the last good checkpoint, if one was written"
                    )
                score = float(m.score[0])
                if spec.is_atari:
                    score = evaluate.evaluate_atari(
                        distiller.network.apply,
                        state.params,
                        data.env_id,
                        config.eval_episodes,
                        seed=config.seed + len(rows),
                    ).mean
                rows.append(
                    {
                        "updates": int(state.updates),
                        "loss": loss,
                        "agreement": float(m.agreement[0]),
                        "score": score,
                        "wall_s": round(time.perf_counter() - t0, 3),
                    }
                )
                bar.update(config.eval_every)
                bar.set_postfix(loss=f"{loss:.4f}", score=f"{score:.2f}")
                checkpoint.write_checkpoint(
                    folder,
                    {
                        checkpoint.PARAMS: checkpoint.pytree_to_bytes(state.params),
                        checkpoint.TRAIN_STATE: checkpoint.pytree_to_bytes(state),
                    },
                    manifest_for("running"),
                )
                runs.write_metrics(folder, rows)
                if stop.requested:
                    raise runs.Interrupted(
                        f"{stop.signal_name}: checkpoint saved at update {int(state.updates)} "
                        f"in {folder}; continue with --resume"
                    )
    finally:
        bar.close()
    final = rows[-1]["score"] if rows else float("nan")
    checkpoint.write_checkpoint(
        folder,
        {checkpoint.PARAMS: checkpoint.pytree_to_bytes(state.params)},
        manifest_for("complete", {"final_score": final}),
        drop=(checkpoint.TRAIN_STATE,),
    )
    return checkpoint.load(folder)
