"""DQN teachers: double DQN with n-step returns, Huber loss and replay stored as JAX arrays.

On gymnax envs (MinAtar, CartPole) a whole training run is one `lax.scan`:
`make_train(config).train(key)` can be `jax.jit`-ed whole and `jax.vmap`-ed over seeds. The same
pieces run in chunks (`init`, then `run(state, iterations)`) so the CLI can show progress, write
checkpoints and resume. On Atari (`fit_atari`) the same jitted update runs in a host loop
around ale-py's `AtariVectorEnv`. Episode ends by time limit are treated as terminal (the
observation after a reset is not the truncated state's successor). With a device mesh
(`distill.sharding`), `train_seeds` splits seeds across devices and a `data` axis splits each
gradient minibatch across devices. References: Mnih et al.
(2015) DQN; van Hasselt et al. (2016) double DQN; Hessel et al. (2018) for n-step returns;
Ba et al. (2016) LayerNorm in MinAtar nets.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from distill import acting, envs, families, losses, networks, replay, sharding, xla
from distill.config import ConfigError, PositiveInt, in_range, positive_int, require


@dataclasses.dataclass(frozen=True)
class DQNConfig:
    """Hyperparameters of a DQN teacher. Steps count env steps summed over parallel envs."""

    env_id: str = "Breakout-MinAtar"
    """env id, e.g. Breakout-MinAtar, CartPole-v1, ALE/Pong-v5"""
    net: str = "teacher"
    """Q-network: teacher | net1 | net2 | net3 (`distill nets ENV` shows them)"""
    total_steps: PositiveInt = 1_000_000
    """env steps, all envs together"""
    num_envs: PositiveInt = 128
    """parallel envs"""
    buffer_size: PositiveInt = 131_072
    """transitions kept in replay"""
    batch_size: PositiveInt = 256
    """transitions per gradient update"""
    updates_per_step: PositiveInt = 1
    """gradient updates per vector-env step"""
    learning_starts: int = 10_000
    """env steps of pure collection before the first update"""
    lr: float = 5e-4
    """Adam learning rate at the start, decayed linearly to lr_end"""
    lr_end: float = 5e-5
    """Adam learning rate at the end of the run"""
    gamma: float = 0.99
    """discount factor"""
    n_step: PositiveInt = 3
    """rewards summed in each return target (n-step returns)"""
    target_update_every: PositiveInt = 250
    """gradient updates between hard copies into the target network"""
    eps_start: float = 1.0
    """exploration epsilon at the start"""
    eps_end: float = 0.01
    """exploration epsilon once decayed"""
    eps_decay_fraction: float = 0.2
    """fraction of total_steps over which epsilon decays linearly"""
    max_grad_norm: float = 10.0
    """gradients are clipped to this global norm"""
    seed: int = 0
    """random seed (network init, exploration, envs)"""

    def __post_init__(self):
        envs.spec(self.env_id)  # unknown ids fail here with close matches
        nets = tuple(families.of(self.env_id).nets)
        require(self.net in nets, "net", self.net, f"one of {nets}")
        for name in ("total_steps", "num_envs", "buffer_size", "batch_size", "updates_per_step"):
            positive_int(name, getattr(self, name))
        positive_int("n_step", self.n_step)
        positive_int("target_update_every", self.target_update_every)
        require(
            isinstance(self.learning_starts, int) and self.learning_starts >= 0,
            "learning_starts",
            self.learning_starts,
            "must be an integer >= 0",
        )
        require(
            self.total_steps >= self.num_envs,
            "total_steps",
            self.total_steps,
            f"must be at least num_envs={self.num_envs}",
        )
        require(
            self.buffer_size >= self.num_envs * (self.n_step + 2),
            "buffer_size",
            self.buffer_size,
            f"must hold at least num_envs * (n_step + 2) = {self.num_envs * (self.n_step + 2)}",
        )
        require(self.lr > 0, "lr", self.lr, "must be > 0")
        require(self.lr_end > 0, "lr_end", self.lr_end, "must be > 0")
        in_range("gamma", self.gamma, 0.0, 1.0)
        in_range("eps_start", self.eps_start, 0.0, 1.0)
        in_range("eps_end", self.eps_end, 0.0, 1.0)
        in_range("eps_decay_fraction", self.eps_decay_fraction, 0.0, 1.0)
        require(self.max_grad_norm > 0, "max_grad_norm", self.max_grad_norm, "must be > 0")
        require(isinstance(self.seed, int), "seed", self.seed, "must be an integer")

    @property
    def iterations(self) -> int:
        """Vector-env steps in the run."""
        return self.total_steps // self.num_envs

    @property
    def num_updates(self) -> int:
        return self.iterations * self.updates_per_step


# Per-family defaults, measured to train well here (see data/teachers/README.md); they live
# with the rest of each family in distill.families.
PRESETS: dict[str, dict[str, Any]] = {
    name: dict(family.preset) for name, family in families.FAMILIES.items()
}


def family(env_id: str) -> str:
    """'atari', 'minatar' or 'vector': the env family (`distill.families`) that owns the id."""
    return envs.spec(env_id).family


def default_config(env_id: str, **overrides: Any) -> DQNConfig:
    """The preset for an env's family, with `overrides` on top; validated on construction."""
    fields = {f.name for f in dataclasses.fields(DQNConfig)}
    unknown = set(overrides) - fields
    if unknown:
        raise ConfigError(f"unknown DQNConfig fields: {sorted(unknown)}")
    return DQNConfig(env_id=env_id, **{**families.of(env_id).preset, **overrides})


class TrainState(NamedTuple):
    params: Any
    target_params: Any
    opt_state: Any
    replay: replay.Replay
    env_state: Any
    obs: jax.Array  # [envs, *obs_shape]
    episode_return: jax.Array  # [envs] running undiscounted return
    key: jax.Array
    iteration: jax.Array  # [] vector-env steps done
    updates: jax.Array  # [] gradient updates done


class Metrics(NamedTuple):
    """Per-iteration metrics, stacked by `lax.scan` into `[iterations]` arrays."""

    return_sum: jax.Array  # sum of returns of episodes that ended this iteration
    episodes: jax.Array  # how many ended
    loss: jax.Array  # mean TD loss of this iteration's updates (nan before learning starts)
    epsilon: jax.Array


def epsilon_at(config: DQNConfig, env_steps: jax.Array) -> jax.Array:
    """Linear decay from eps_start to eps_end over eps_decay_fraction of the run."""
    horizon = max(config.eps_decay_fraction * config.total_steps, 1.0)
    frac = jnp.clip(env_steps / horizon, 0.0, 1.0)
    return config.eps_start + frac * (config.eps_end - config.eps_start)


# Kept here for callers that know it as teacher.epsilon_greedy; it lives in distill.acting.
epsilon_greedy = acting.epsilon_greedy


def make_optimizer(config: DQNConfig) -> optax.GradientTransformation:
    schedule = optax.linear_schedule(config.lr, config.lr_end, max(config.num_updates, 1))
    return optax.chain(
        optax.clip_by_global_norm(config.max_grad_norm), optax.adam(schedule, eps=1e-5)
    )


def make_update(
    config: DQNConfig,
    apply_fn: Callable,
    optimizer,
    stack: int = 1,
    mesh: jax.sharding.Mesh | None = None,
) -> Callable:
    """One double-DQN gradient step on a fresh n-step minibatch; hard target copy on schedule.

    (params, target_params, opt_state, replay, key, updates) -> (params, target, opt, loss).
    Shared by the gymnax scan and the Atari host loop. A `mesh` with a `data` axis splits the
    minibatch over it (data-parallel); without one nothing changes.
    """
    sharding.check_batch(config.batch_size, mesh)

    def loss_fn(params, target_params, batch: replay.NStepBatch):
        q_tm1 = apply_fn(params, batch.obs_tm1)
        q_t_online = apply_fn(params, batch.obs_t)
        q_t_target = apply_fn(target_params, batch.obs_t)
        return losses.double_q_td_loss(
            q_tm1, batch.a_tm1, batch.r_t, batch.discount_t, q_t_online, q_t_target
        )

    def update(params, target_params, opt_state, buffer, key, updates):
        batch = replay.sample_nstep(
            buffer, key, config.batch_size, config.n_step, config.gamma, stack
        )
        batch = sharding.constrain_batch(batch, mesh)
        loss, grads = jax.value_and_grad(loss_fn)(params, target_params, batch)
        step, opt_state = optimizer.update(grads, opt_state, params)
        params = optax.apply_updates(params, step)
        updates = updates + 1
        copy = updates % config.target_update_every == 0
        target_params = jax.tree_util.tree_map(
            lambda t, p: jnp.where(copy, p, t), target_params, params
        )
        return params, target_params, opt_state, loss

    return update


def replay_storage_dtype(spec: envs.EnvSpec):
    """The dtype replay keeps observations in: the family's storage dtype."""
    return families.storage_dtype(spec)


class Trainer(NamedTuple):
    """The pure pieces of a gymnax DQN run. `train(key)` is the whole run in one scan."""

    config: DQNConfig
    network: networks.QNetwork
    init: Callable[[jax.Array], TrainState]
    run: Callable[[TrainState, int], tuple[TrainState, Metrics]]
    train: Callable[[jax.Array], tuple[TrainState, Metrics]]


def make_train(config: DQNConfig, mesh: jax.sharding.Mesh | None = None) -> Trainer:
    """Build the pure training functions for a gymnax env (MinAtar, CartPole).

    With a `mesh` that has a `data` axis, each gradient minibatch is split over it; acting and
    replay stay whole on every device (place the state with `sharding.replicate`).
    """
    spec = envs.spec(config.env_id)
    if not families.of(spec).in_graph:
        raise ConfigError(
            f"env_id={config.env_id!r}: its envs step on the host; train it with fit_atari"
        )
    env = envs.make(config.env_id)
    network = families.build_network(config.env_id, config.net)
    apply_fn = network.apply
    optimizer = make_optimizer(config)
    update = make_update(config, apply_fn, optimizer, mesh=mesh)
    rows = config.buffer_size // config.num_envs
    learning_starts_iter = config.learning_starts // config.num_envs

    def init(key: jax.Array) -> TrainState:
        k_net, k_env, key = jax.random.split(key, 3)
        obs, env_state = acting.graph_reset(env, k_env, config.num_envs)
        params = networks.init_params(network, k_net, spec.obs_shape, spec.obs_dtype)
        return TrainState(
            params=params,
            target_params=params,
            opt_state=optimizer.init(params),
            replay=replay.init(rows, config.num_envs, spec.obs_shape, replay_storage_dtype(spec)),
            env_state=env_state,
            obs=obs,
            episode_return=jnp.zeros(config.num_envs),
            key=key,
            iteration=jnp.zeros((), jnp.int32),
            updates=jnp.zeros((), jnp.int32),
        )

    def iteration(state: TrainState, _) -> tuple[TrainState, Metrics]:
        key, k_act, k_env, k_upd = jax.random.split(state.key, 4)
        # act: [envs] actions from [envs, actions] Q-values
        eps = epsilon_at(config, state.iteration * config.num_envs)
        step = acting.graph_step(
            env, apply_fn, state.params, state.obs, state.env_state, k_act, k_env, eps
        )
        action, obs, env_state, reward, done = (
            step.action,
            step.obs,
            step.env_state,
            step.reward,
            step.done,
        )
        buffer = replay.add(state.replay, state.obs, action, reward, done)
        episode_return = state.episode_return + reward
        return_sum = jnp.sum(jnp.where(done, episode_return, 0.0))
        episode_return = jnp.where(done, 0.0, episode_return)

        def learn(carry):
            params, target, opt_state, updates = carry

            def one(c, k):
                p, t, o, u = c
                p, t, o, loss = update(p, t, o, buffer, k, u)
                return (p, t, o, u + 1), loss

            keys = jax.random.split(k_upd, config.updates_per_step)
            (params, target, opt_state, updates), loss = jax.lax.scan(
                one, (params, target, opt_state, updates), keys
            )
            return (params, target, opt_state, updates), jnp.mean(loss)

        def wait(carry):
            return carry, jnp.float32(jnp.nan)

        ready = (state.iteration >= learning_starts_iter) & replay.can_sample(buffer, config.n_step)
        (params, target, opt_state, updates), loss = jax.lax.cond(
            ready,
            learn,
            wait,
            (state.params, state.target_params, state.opt_state, state.updates),
        )
        new_state = TrainState(
            params=params,
            target_params=target,
            opt_state=opt_state,
            replay=buffer,
            env_state=env_state,
            obs=obs,
            episode_return=episode_return,
            key=key,
            iteration=state.iteration + 1,
            updates=updates,
        )
        return new_state, Metrics(return_sum, jnp.sum(done), loss, eps)

    def run(state: TrainState, iterations: int) -> tuple[TrainState, Metrics]:
        return jax.lax.scan(iteration, state, None, length=iterations)

    def train(key: jax.Array) -> tuple[TrainState, Metrics]:
        return run(init(key), config.iterations)

    return Trainer(config, network, init, run, train)


def train_seeds(
    config: DQNConfig, seeds: int, mesh: jax.sharding.Mesh | None = None
) -> tuple[TrainState, Metrics]:
    """`seeds` whole runs side by side in one compiled call, keys split from `config.seed`;
    results `[seeds, ...]`. With a mesh the seeds are split over its `seeds` axis (and each
    run's minibatches over `data`); each seed then agrees with its single-device run to float
    rounding (in the partitioned program XLA compiles the division of the gradient clipping
    differently: for some tensors as a multiplication by the reciprocal)."""
    trainer = make_train(config, mesh)
    keys = jax.random.split(jax.random.PRNGKey(config.seed), seeds)
    return sharding.map_seeds(trainer.train, mesh)(keys)


# ---------------------------------------------------------------------------- the CLI's runner


def _chunk_rows(metrics: Metrics, first_iteration: int, num_envs: int, wall_s: float) -> dict:
    import numpy as np

    episodes = int(np.sum(metrics.episodes))
    return_sum = float(np.sum(metrics.return_sum))
    loss = np.asarray(metrics.loss)
    iterations = int(loss.shape[0])
    return {
        "env_steps": (first_iteration + iterations) * num_envs,
        "episodes": episodes,
        "mean_return": return_sum / episodes if episodes else float("nan"),
        "loss": float(np.nanmean(loss)) if np.isfinite(loss).any() else float("nan"),
        "epsilon": float(np.asarray(metrics.epsilon)[-1]),
        "wall_s": round(wall_s, 3),
    }


def fit(
    config: DQNConfig,
    out: str,
    *,
    resume: bool = False,
    chunk_iterations: int = 100,
    checkpoint_every_s: float = 120.0,
    eval_episodes: int = 100,
    progress: bool = True,
    mesh: jax.sharding.Mesh | None = None,
):
    """Train a gymnax teacher into folder `out`, with progress, metrics, checkpoints and resume.

    The run is cut into compiled chunks of `chunk_iterations` vector steps; a checkpoint of the
    whole training state is written every `checkpoint_every_s` seconds and on SIGINT/SIGTERM, so
    at most one interval is lost. Resuming replays the same chunks, so on CPU the result is
    bit-identical to an uninterrupted run. With a `mesh` (a `data` axis), the state is
    replicated on its devices and each gradient minibatch split across them (without a `data`
    axis the run stays on one device). Returns the loaded `Policy`.
    """
    import time
    from pathlib import Path

    import numpy as np
    from tqdm.auto import tqdm

    from distill import checkpoint, evaluate, runs
    from distill.config import to_dict

    folder = Path(out)
    config_dict = to_dict(config)
    mesh = sharding.for_one_run(mesh)
    # without a mesh, the very call fit always made
    trainer = make_train(config) if mesh is None else make_train(config, mesh)
    state = trainer.init(jax.random.PRNGKey(config.seed))
    rows: list[dict] = []
    wall_before = 0.0
    manifest = checkpoint.previous_run(
        folder,
        resume,
        "teacher",
        lambda m: m.get("config") == config_dict and m.get("chunk_iterations") == chunk_iterations,
        "another config",
    )
    if manifest is not None:
        if manifest.get("status") == "complete":
            return checkpoint.load(folder)
        data = checkpoint.read_verified(folder, checkpoint.TRAIN_STATE, manifest)
        state = checkpoint.pytree_from_bytes(
            data, state, str(checkpoint.path_of(folder, checkpoint.TRAIN_STATE))
        )
        rows = list(manifest.get("metrics", []))
        wall_before = float(manifest.get("wall_s", 0.0))

    state = sharding.replicate(state, mesh)
    run = xla.jit(trainer.run, static_argnums=1)
    total = config.iterations
    done = int(state.iteration)

    def save(status: str, wall: float) -> None:
        manifest = checkpoint.policy_manifest(
            "teacher",
            config.env_id,
            config.net,
            envs.spec(config.env_id).num_actions,
            config_dict,
            status=status,
            env_steps=done * config.num_envs,
            chunk_iterations=chunk_iterations,
            wall_s=round(wall, 3),
            metrics=rows,
        )
        files = {
            checkpoint.PARAMS: checkpoint.pytree_to_bytes(state.params),
            checkpoint.TRAIN_STATE: checkpoint.pytree_to_bytes(state),
        }
        checkpoint.write_checkpoint(folder, files, manifest)
        runs.write_metrics(folder, rows)

    start = time.perf_counter()
    last_save = start
    bar = tqdm(
        total=total * config.num_envs,
        initial=done * config.num_envs,
        unit="step",
        unit_scale=True,
        desc=f"teacher {config.env_id}",
        disable=not progress,
    )
    with runs.stop_on_signals() as stop:
        while done < total:
            n = min(chunk_iterations, total - done)
            t0 = time.perf_counter()
            state, metrics = run(state, n)
            jax.block_until_ready(state.params)
            row = _chunk_rows(metrics, done, config.num_envs, time.perf_counter() - t0)
            if not np.isfinite(row["loss"]) and row["env_steps"] > config.learning_starts + (
                2 * n * config.num_envs
            ):
                raise FloatingPointError(
                    f"non-finite TD loss at env step {row['env_steps']}; the last good "
                    f"checkpoint in {folder} is kept"
                )
            done += n
            rows.append(row)
            bar.update(n * config.num_envs)
            recent = [r["mean_return"] for r in rows[-10:] if np.isfinite(r["mean_return"])]
            bar.set_postfix(
                ret=f"{np.mean(recent):.2f}" if recent else "-",
                sps=f"{n * config.num_envs / max(row['wall_s'], 1e-9):,.0f}",
            )
            now = time.perf_counter()
            if stop.requested or now - last_save >= checkpoint_every_s:
                save("running", wall_before + now - start)
                last_save = now
            if stop.requested:
                bar.close()
                raise runs.Interrupted(
                    f"{stop.signal_name}: checkpoint saved at env step {done * config.num_envs} "
                    f"in {folder}; continue with --resume"
                )
    bar.close()
    wall = wall_before + time.perf_counter() - start
    scores = evaluate.evaluate_gymnax(
        trainer.network.apply, state.params, config.env_id, eval_episodes, seed=config.seed + 1
    )
    random_scores = evaluate.evaluate_random(config.env_id, eval_episodes, seed=config.seed + 1)
    manifest = checkpoint.policy_manifest(
        "teacher",
        config.env_id,
        config.net,
        envs.spec(config.env_id).num_actions,
        config_dict,
        status="complete",
        env_steps=done * config.num_envs,
        chunk_iterations=chunk_iterations,
        wall_s=round(wall, 3),
        metrics=rows,
        evaluation=scores.summary(),
        random_evaluation=random_scores.summary(),
    )
    checkpoint.write_checkpoint(
        folder,
        {checkpoint.PARAMS: checkpoint.pytree_to_bytes(state.params)},
        manifest,
        drop=(checkpoint.TRAIN_STATE,),
    )
    runs.write_metrics(folder, rows)
    return checkpoint.load(folder)


# ---------------------------------------------------------------------------- Atari host loop


def fit_atari(
    config: DQNConfig,
    out: str,
    *,
    resume: bool = False,
    checkpoint_every_s: float = 600.0,
    eval_episodes: int = 30,
    progress: bool = True,
    log_every: int = 1000,
    mesh: jax.sharding.Mesh | None = None,
):
    """Train an Atari teacher: the jitted double-DQN update in a host loop around ale-py.

    Each iteration picks actions for all envs (one jitted call), hands them to the env threads
    with `send`, dispatches the gradient updates (JAX runs them asynchronously, so they overlap
    with the env threads), then collects the step with `recv` and writes one frame per env into
    replay (frame stacks are rebuilt when sampling). Checkpoints hold parameters, optimiser,
    replay and counters; the emulators' own state is not saved, so a resumed run starts fresh
    episodes (the episode in flight is cut) and is not bit-identical to an uninterrupted one.
    With a `mesh` (a `data` axis), parameters and replay are replicated on its devices and each
    gradient minibatch is split across them; the emulators stay on the host, the checkpoints are
    the same files.
    """
    import time
    from pathlib import Path

    import numpy as np
    from tqdm.auto import tqdm

    from distill import checkpoint, evaluate, runs
    from distill.config import to_dict

    spec = envs.spec(config.env_id)
    folder = Path(out)
    config_dict = to_dict(config)
    network = networks.build(config.net, spec.obs_shape, spec.num_actions)
    optimizer = make_optimizer(config)
    stack = spec.obs_shape[0]
    # One or two updates per compiled call, not a scan: native conv gradients are the fast ones.
    learner = networks.build(config.net, spec.obs_shape, spec.num_actions, conv_grad="native")
    mesh = sharding.for_one_run(mesh)
    update = make_update(config, learner.apply, optimizer, stack, mesh)
    rows = config.buffer_size // config.num_envs
    n = config.num_envs

    def init(key):
        k_net, key = jax.random.split(key)
        params = networks.init_params(network, k_net, spec.obs_shape, spec.obs_dtype)
        return TrainState(
            params=params,
            target_params=jax.tree_util.tree_map(jnp.copy, params),  # donated apart from params
            opt_state=optimizer.init(params),
            replay=replay.init(rows, n, spec.obs_shape[1:], jnp.uint8),
            env_state=jnp.zeros(()),  # the emulators live in C++ threads
            obs=jnp.zeros((n, *spec.obs_shape), jnp.uint8),
            episode_return=jnp.zeros(n),
            key=key,
            iteration=jnp.zeros((), jnp.int32),
            updates=jnp.zeros((), jnp.int32),
        )

    @xla.jit
    def act(params, obs, key, iteration):
        return epsilon_greedy(key, network.apply(params, obs), epsilon_at(config, iteration * n))

    @functools.partial(xla.jit, donate_argnums=(0, 1, 2, 3))
    def learn(params, target, opt_state, buffer, key, updates):
        losses_ = []
        for k in jax.random.split(key, config.updates_per_step):
            params, target, opt_state, loss = update(params, target, opt_state, buffer, k, updates)
            updates = updates + 1
            losses_.append(loss)
        return params, target, opt_state, buffer, updates, jnp.mean(jnp.stack(losses_))

    @functools.partial(xla.jit, donate_argnums=(0,))
    def store(buffer, frames, action, reward, done):
        return replay.add(buffer, frames, action, reward, done)

    state = init(jax.random.PRNGKey(config.seed))
    metrics: list[dict] = []
    wall_before = 0.0
    manifest = checkpoint.previous_run(
        folder, resume, "teacher", lambda m: m.get("config") == config_dict, "another config"
    )
    if manifest is not None:
        if manifest.get("status") == "complete":
            return checkpoint.load(folder)
        data = checkpoint.read_verified(folder, checkpoint.TRAIN_STATE, manifest)
        state = checkpoint.pytree_from_bytes(
            data, state, str(checkpoint.path_of(folder, checkpoint.TRAIN_STATE))
        )
        # The episodes in flight are lost with the emulators: cut them in replay.
        last = (state.replay.pos - 1) % rows
        state = state._replace(
            replay=state.replay._replace(done=state.replay.done.at[last].set(True))
        )
        metrics = list(manifest.get("metrics", []))
        wall_before = float(manifest.get("wall_s", 0.0))

    def save(status: str, wall: float, extra: dict | None = None) -> None:
        manifest = checkpoint.policy_manifest(
            "teacher",
            config.env_id,
            config.net,
            spec.num_actions,
            config_dict,
            status=status,
            env_steps=int(state.iteration) * n,
            wall_s=round(wall, 3),
            metrics=metrics,
            **(extra or {}),
        )
        files = {checkpoint.PARAMS: checkpoint.pytree_to_bytes(state.params)}
        drop = ()
        if status != "complete":
            files[checkpoint.TRAIN_STATE] = checkpoint.pytree_to_bytes(state)
        else:
            drop = (checkpoint.TRAIN_STATE,)
        checkpoint.write_checkpoint(folder, files, manifest, drop)
        runs.write_metrics(folder, metrics)

    if mesh is not None:
        state = sharding.replicate(state, mesh)
    env = envs.make_atari(config.env_id, n, training=True)
    obs = envs.reset_in_env_order(env, config.seed + int(state.iteration))
    params, target, opt_state = state.params, state.target_params, state.opt_state
    buffer, key, updates = state.replay, state.key, state.updates
    iteration = int(state.iteration)
    learning_starts_iter = config.learning_starts // n
    episode_return = np.zeros(n)
    finished: list[float] = []
    loss_sum, loss_count = 0.0, 0
    start = last_save = last_log = time.perf_counter()
    log_start_iter = iteration
    bar = tqdm(
        total=config.iterations * n,
        initial=iteration * n,
        unit="step",
        unit_scale=True,
        desc=f"teacher {config.env_id}",
        disable=not progress,
    )

    def snapshot() -> TrainState:
        return TrainState(
            params,
            target,
            opt_state,
            buffer,
            jnp.zeros(()),
            jnp.asarray(obs),
            jnp.asarray(episode_return),
            key,
            jnp.asarray(iteration, jnp.int32),
            updates,
        )

    try:
        with runs.stop_on_signals() as stop:
            while iteration < config.iterations:
                key, k_act, k_learn = jax.random.split(key, 3)
                action = np.asarray(act(params, obs, k_act, iteration), dtype=np.int32)
                env.send(action)
                loss = None
                if iteration >= learning_starts_iter and int(buffer.pos) > config.n_step + stack:
                    params, target, opt_state, buffer, updates, loss = learn(
                        params, target, opt_state, buffer, k_learn, updates
                    )
                next_obs, reward, terminated, truncated = envs.in_env_order(*env.recv())
                done = terminated | truncated
                buffer = store(buffer, obs[:, -1], action, reward.astype(np.float32), done)
                episode_return += reward
                finished.extend(episode_return[done].tolist())
                episode_return[done] = 0.0
                obs = next_obs
                iteration += 1
                if loss is not None:
                    loss_sum, loss_count = loss_sum + float(loss), loss_count + 1
                if iteration % log_every == 0 or iteration == config.iterations:
                    now = time.perf_counter()
                    row = {
                        "env_steps": iteration * n,
                        "episodes": len(finished),
                        "mean_return": float(np.mean(finished)) if finished else float("nan"),
                        "loss": loss_sum / loss_count if loss_count else float("nan"),
                        "epsilon": float(epsilon_at(config, iteration * n)),
                        "wall_s": round(now - last_log, 3),
                    }
                    if loss_count and not np.isfinite(row["loss"]):
                        raise FloatingPointError(
                            f"non-finite TD loss at env step {iteration * n}; the last good "
                            f"checkpoint in {folder} is kept"
                        )
                    metrics.append(row)
                    bar.update((iteration - log_start_iter) * n)
                    bar.set_postfix(
                        ret=f"{row['mean_return']:.2f}",
                        sps=f"{(iteration - log_start_iter) * n / max(now - last_log, 1e-9):,.0f}",
                    )
                    finished, loss_sum, loss_count = [], 0.0, 0
                    last_log, log_start_iter = now, iteration
                now = time.perf_counter()
                if stop.requested or now - last_save >= checkpoint_every_s:
                    state = snapshot()
                    save("running", wall_before + now - start)
                    last_save = now
                if stop.requested:
                    raise runs.Interrupted(
                        f"{stop.signal_name}: checkpoint saved at env step {iteration * n} in "
                        f"{folder}; continue with --resume"
                    )
    finally:
        bar.close()
        env.close()
    state = snapshot()
    wall = wall_before + time.perf_counter() - start
    scores = evaluate.evaluate_atari(
        network.apply, params, config.env_id, eval_episodes, seed=config.seed + 1
    )
    save("complete", wall, {"evaluation": scores.summary()})
    return checkpoint.load(folder)
