"""DQN teachers: double DQN with n-step returns, Huber loss and replay stored as JAX arrays.

On gymnax envs (MinAtar, CartPole) a whole training run is one `lax.scan`:
`make_train(config).train(key)` can be `jax.jit`-ed whole and `jax.vmap`-ed over seeds. The same
pieces run in chunks (`init`, then `run(state, iterations)`): `fit` hands them to the job runner
(`distill.jobs`, the job in `distill.teacher_jobs`), which shows progress, writes checkpoints
and resumes. On Atari (`fit_atari`) the same jitted update (`make_atari_learner`) runs in a host
loop around ale-py's `AtariVectorEnv`. Episode ends by time limit are treated as terminal (the
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

from distill import (
    acting,
    envs,
    families,
    jobs,
    losses,
    networks,
    replay,
    sharding,
    teacher_jobs,
    xla,
)
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
    init_from: str = ""
    """Atari: a teacher folder whose parameters and env steps start the run (fresh replay)"""

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
        require(
            self.learning_starts < self.total_steps,
            "learning_starts",
            self.learning_starts,
            f"must be below total_steps={self.total_steps} (no update would ever run): raise "
            f"--total-steps above {self.learning_starts} or lower --learning-starts",
        )
        require(
            self.batch_size <= self.buffer_size,
            "batch_size",
            self.batch_size,
            f"must be at most buffer_size={self.buffer_size} (the replay it samples from)",
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


# ---------------------------------------------------------------------------- the CLI's runners


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
    tb: bool = True,
):
    """Train a gymnax teacher into folder `out`, with progress, metrics, checkpoints and resume.

    The run is cut into compiled chunks of `chunk_iterations` vector steps; a checkpoint of the
    whole training state is written every `checkpoint_every_s` seconds and on SIGINT/SIGTERM, so
    at most one interval is lost. Resuming replays the same chunks, so on CPU the result is
    bit-identical to an uninterrupted run. With a `mesh` (a `data` axis), the state is
    replicated on its devices and each gradient minibatch split across them (without a `data`
    axis the run stays on one device). Returns the loaded `Policy`.
    """
    mesh = sharding.for_one_run(mesh)
    # without a mesh, the very call fit always made
    trainer = make_train(config) if mesh is None else make_train(config, mesh)
    job = teacher_jobs.GymnaxTeacher(
        config,
        trainer,
        chunk_iterations,
        mesh,
        checkpoint_every_s=checkpoint_every_s,
        eval_episodes=eval_episodes,
    )
    return jobs.run(job, out, resume=resume, progress=progress, tb=tb)


def make_atari_learner(
    config: DQNConfig, mesh: jax.sharding.Mesh | None = None
) -> teacher_jobs.AtariLearner:
    """The jitted pieces `fit_atari`'s host loop calls: init, act, learn, store.

    One or two updates per compiled call, not a scan: native conv gradients are the fast ones.
    `learn` and `store` donate the arrays they replace.
    """
    spec = envs.spec(config.env_id)
    network = families.build_network(config.env_id, config.net)
    learner = families.build_network(config.env_id, config.net, conv_grad="native")
    optimizer = make_optimizer(config)
    stack, frame = families.frame_stack(spec), families.frame_shape(spec)
    update = make_update(config, learner.apply, optimizer, stack, mesh)
    n = config.num_envs

    def init(key):
        k_net, key = jax.random.split(key)
        params = networks.init_params(network, k_net, spec.obs_shape, spec.obs_dtype)
        return TrainState(
            params=params,
            target_params=jax.tree_util.tree_map(jnp.copy, params),  # donated apart from params
            opt_state=optimizer.init(params),
            replay=replay.init(config.buffer_size // n, n, frame, families.storage_dtype(spec)),
            env_state=jnp.zeros(()),  # the emulators live in C++ threads
            obs=jnp.zeros((n, *spec.obs_shape), spec.obs_dtype),
            episode_return=jnp.zeros(n),
            key=key,
            iteration=jnp.zeros((), jnp.int32),
            updates=jnp.zeros((), jnp.int32),
        )

    @xla.jit
    def act(params, obs, key, iteration):
        q = network.apply(params, obs)
        return acting.epsilon_greedy(key, q, epsilon_at(config, iteration * n))

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

    epsilon = functools.partial(epsilon_at, config)
    return teacher_jobs.AtariLearner(init, act, learn, store, epsilon, network.apply)


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
    tb: bool = True,
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
    the same files. A metrics row every `log_every` vector steps.
    """
    mesh = sharding.for_one_run(mesh)
    job = teacher_jobs.AtariTeacher(
        config,
        make_atari_learner(config, mesh),
        log_every,
        mesh,
        checkpoint_every_s=checkpoint_every_s,
        eval_episodes=eval_episodes,
    )
    return jobs.run(job, out, resume=resume, progress=progress, tb=tb)
