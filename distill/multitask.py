"""Multi-task networks: one shared trunk and one controller head per game (Rusu et al. 2016, 4.3).

MinAtar games differ in their observation channels (Breakout 4, SpaceInvaders 6, Asterix 4,
Freeway 7, Seaquest 10) and their action sets (3 to 6). One network handles all of them this way:
- observations are zero-padded along the channel axis to the largest channel count of the games
  in the set (a channel a game does not have is simply empty), so one trunk sees one input shape;
- each game has its own controller head (a hidden layer and an output layer) with that game's
  number of actions; the task id picks the head, in training and in evaluation.
Atari games (ale-py) all see uint8 `[4, 84, 84]` frame stacks and need no padding; their
students train on the host, a program per game (`distill.multitask_atari`).

Two learners use this network (on MinAtar; `distill.multitask_atari` distils Atari students):
- `make_multitask_distill`: a student distilled from single-game teachers' datasets, each
  minibatch from one game (games take turns), with the NLL, MSE or KL loss;
- `make_multitask_train`: the baseline, a multi-task DQN trained on all games jointly, each
  gradient step summing one double-DQN minibatch loss per game.
Both take an optional device mesh (`distill.sharding`): a `data` axis splits every minibatch
across its devices; seeds are split by the caller (`experiments.distil_multitask_seeds`).
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from distill import (
    acting,
    distillation,
    envs,
    evaluate,
    families,
    jobs,
    losses,
    networks,
    replay,
    sharding,
    student,
    teacher,
    xla,
)
from distill.config import ConfigError

HEAD_HIDDEN = 128  # the paper's per-game fc2 of 128 units


def on_host(games: Sequence[str]) -> bool:
    """Whether the games step on the host (Atari through ale-py) rather than inside the
    compiled program (MinAtar through gymnax); one multi-task network takes one kind."""
    host = [not families.of(g).in_graph for g in games]
    if any(host) != all(host):
        raise ConfigError(f"games={list(games)}: multi-task needs games of one kind (Atari or not)")
    return all(host)


def padded_channels(games: Sequence[str]) -> int:
    """The channel count every game's observations are padded to."""
    shapes = [envs.spec(g).obs_shape for g in games]
    if any(len(s) != 3 for s in shapes) or len({s[:2] for s in shapes}) != 1:
        raise ConfigError(f"games={list(games)}: multi-task needs image games of one size")
    return max(s[-1] for s in shapes)


def pad_obs(obs: jax.Array, channels: int) -> jax.Array:
    """`[..., H, W, C]` -> `[..., H, W, channels]` float32, zero-padded."""
    extra = channels - obs.shape[-1]
    obs = obs.astype(jnp.float32)
    if extra == 0:
        return obs
    return jnp.pad(obs, [(0, 0)] * (obs.ndim - 1) + [(0, extra)])


def to_input(games: Sequence[str]) -> Callable[[jax.Array], jax.Array]:
    """A game's observations -> the trunk's input: Atari frame stacks as they are (every game's
    are uint8 `[4, 84, 84]`), MinAtar maps zero-padded to `padded_channels(games)`."""
    if on_host(games):
        return lambda obs: obs
    channels = padded_channels(games)
    return lambda obs: pad_obs(obs, channels)


def build(
    games: Sequence[str], net: str = "teacher", conv_grad: str = "auto"
) -> networks.MultiTaskQNetwork:
    """The multi-task network of trunk `net` with a controller per game, each of that game's
    action count (on Atari ale-py's minimal action set, as its teacher's)."""
    on_host(games)  # one kind of game
    first = envs.spec(games[0])
    spec = families.net_spec(first.env_id, net)
    return networks.MultiTaskQNetwork(
        spec, tuple(envs.spec(g).num_actions for g in games), HEAD_HIDDEN, conv_grad
    )


def init_params(network: networks.MultiTaskQNetwork, key: jax.Array, games: Sequence[str]):
    if on_host(games):
        spec = envs.spec(games[0])
        return network.init(key, jnp.zeros((1, *spec.obs_shape), spec.obs_dtype), 0)
    h, w = envs.spec(games[0]).obs_shape[:2]
    return network.init(key, jnp.zeros((1, h, w, padded_channels(games))), 0)


def head_apply(network, games: Sequence[str], task: int) -> Callable:
    """`apply(params, obs)` for game `task`, with obs in that game's own format."""
    prepare = to_input(games)
    return lambda params, obs: network.apply(params, prepare(obs), task)


# ---------------------------------------------------------------------------- distillation


class MultiMetrics(NamedTuple):
    loss: jax.Array  # mean loss over the block
    score: jax.Array  # [games] mean evaluation score per game after the block


def sample_game(data: dict, key: jax.Array, batch_size: int, env_id: str):
    """A uniform minibatch of one game's `[rows, envs, ...]` arrays: (obs `[batch, *obs_shape]`
    rebuilt as its dataset stores them, teacher q `[batch, actions]`). Atari rows hold single
    frames (stacks of 4 rebuilt, `replay.stacked`; the first 3 rows only the first stacks'
    older frames), MinAtar rows whole maps."""
    from distill import dataset

    stack = dataset.stack_of(envs.spec(env_id))
    return dataset.sample(data, key, batch_size, stack, stack - 1)


class MultiParts(NamedTuple):
    """The pieces every multi-task student is built of, whatever its states' source."""

    network: networks.MultiTaskQNetwork
    init: Callable  # init(key) -> StudentState
    update: Callable  # update((params, opt_state), (key, task), datas, hyper) -> (carry, loss)
    scores: Callable  # scores(params, key) -> [games] mean evaluation score of each head
    # game_update(k)((params, opt_state), key, data, hyper) -> (carry, (loss, agreement)): one
    # minibatch of game k alone (`data` its arrays), for host loops with a program per game
    game_update: Callable


def make_multitask_parts(
    config: student.StudentConfig,
    games: Sequence[str],
    mesh: jax.sharding.Mesh | None = None,
    conv_grad: str = "auto",
) -> MultiParts:
    """A multi-task student's network, init, one update and evaluation (pure).

    `update` trains on one minibatch of game `task` from `datas[task]` (a tuple, one per game,
    of `Dataset.arrays()` or any `[rows, envs, ...]` dict of obs and q); each game's minibatch
    rebuilds its observations as its dataset stores them (Atari: `[4, 84, 84]` stacks from
    single frames, `replay.stacked`; MinAtar: whole maps). `scores` evaluates each head in its
    own env over `config.eval_episodes` episodes (in-graph games only: Atari heads score nan
    here and are scored on the host, `experiments.multitask_distillation.heads_scores`).
    """
    sharding.check_batch(config.batch_size, mesh)
    games = tuple(games)
    network = build(games, config.net, conv_grad)
    optimizer = student.make_optimizer(config)
    prepare = to_input(games)
    evaluators = [
        evaluate.make_gymnax_evaluator(g, head_apply(network, games, k), config.eval_episodes)
        for k, g in enumerate(games)
        if families.of(g).in_graph
    ]

    def init(key):
        k_net, key = jax.random.split(key)
        params = init_params(network, k_net, games)
        return student.StudentState(params, optimizer.init(params), key, jnp.zeros((), jnp.int32))

    # one distillation gradient per game: its controller head on its (padded) observations
    grads = [
        distillation.make_grad(config.loss, lambda p, o, k=k: network.apply(p, prepare(o), k))
        for k in range(len(games))
    ]

    def game_grad(k: int, params, key, data, hyper):
        batch = sample_game(data, key, config.batch_size, games[k])
        obs, teacher_q = sharding.constrain_batch(batch, mesh)
        return grads[k](params, obs, teacher_q, hyper)

    def branch(k: int, params, key, datas, hyper):  # game k's loss and gradient
        (loss, _), g = game_grad(k, params, key, datas[k], hyper)
        return loss, g

    def update(carry, x, datas, hyper):
        params, opt_state = carry
        key, task = x
        branches = [functools.partial(branch, k) for k in range(len(games))]
        loss, g = jax.lax.switch(task, branches, params, key, datas, hyper)
        params, opt_state = distillation.apply_gradients(optimizer, params, opt_state, g)
        return (params, opt_state), loss

    def game_update(k: int) -> Callable:
        def update_k(carry, key, data, hyper):
            params, opt_state = carry
            metrics, g = game_grad(k, params, key, data, hyper)
            return distillation.apply_gradients(optimizer, params, opt_state, g), metrics

        return update_k

    def scores(params, key):
        if not evaluators:  # host games
            return jnp.full((len(games),), jnp.nan, jnp.float32)
        eps = jnp.float32(evaluate.EVAL_EPSILON)
        return jnp.stack(
            [
                jnp.mean(ev(params, k, eps))
                for ev, k in zip(evaluators, jax.random.split(key, len(games)), strict=True)
            ]
        )

    return MultiParts(network, init, update, scores, game_update)


def make_multitask_distill(
    config: student.StudentConfig,
    games: Sequence[str],
    mesh: jax.sharding.Mesh | None = None,
):
    """(network, init(key) -> StudentState, run(state, datas, hyper, blocks) -> (state, metrics)).

    `datas` is a tuple of `Dataset.arrays()`, one per game (in `games` order). Update u trains
    on a minibatch of game u mod len(games); after every `eval_every` updates each game's head is
    evaluated in its own env, all inside one compiled call. A `mesh` with a `data` axis splits
    each minibatch over it. (The offline regime; `distill.multitask_regimes` has stream and
    dagger.)
    """
    games = tuple(games)
    parts = make_multitask_parts(config, games, mesh)

    def block(state, datas, hyper):
        key, k_upd, k_eval = jax.random.split(state.key, 3)
        tasks = (state.updates + jnp.arange(config.eval_every)) % len(games)
        (params, opt_state), loss = jax.lax.scan(
            lambda c, x: parts.update(c, x, datas, hyper),
            (state.params, state.opt_state),
            (jax.random.split(k_upd, config.eval_every), tasks),
        )
        new = student.StudentState(params, opt_state, key, state.updates + config.eval_every)
        return new, MultiMetrics(jnp.mean(loss), parts.scores(params, k_eval))

    def run(state, datas, hyper, blocks: int):
        return jax.lax.scan(lambda s, _: block(s, datas, hyper), state, None, length=blocks)

    return parts.network, parts.init, run


# ---------------------------------------------------------------------------- multi-task DQN


class MultiTrainState(NamedTuple):
    params: Any
    target_params: Any
    opt_state: Any
    replays: tuple  # one Replay per game
    env_states: tuple
    obs: tuple  # per game [envs, *obs_shape]
    episode_returns: tuple
    key: jax.Array
    iteration: jax.Array
    updates: jax.Array


def make_multitask_train(
    config: teacher.DQNConfig,
    games: Sequence[str],
    mesh: jax.sharding.Mesh | None = None,
):
    """A multi-task DQN on gymnax games: (network, init(key), run(state, iterations)).

    Every iteration steps `config.num_envs` envs of every game; `config.total_steps` counts env
    steps of all games together. Each gradient step sums one double-DQN minibatch loss per game.
    Per-iteration metrics: the return sum and episode count per game. A `mesh` with a `data` axis
    splits each game's minibatch over it.
    """
    sharding.check_batch(config.batch_size, mesh)
    games = tuple(games)
    k_games = len(games)
    network = build(games, config.net)
    prepare = to_input(games)
    gym = [envs.make(g) for g in games]
    optimizer = teacher.make_optimizer(config)
    n = config.num_envs
    rows = config.buffer_size // n
    iterations = config.total_steps // (n * k_games)
    learning_starts_iter = config.learning_starts // (n * k_games)

    def apply_k(k):
        return lambda p, obs: network.apply(p, prepare(obs), k)

    def init(key):
        k_net, key, *k_env = jax.random.split(key, 2 + k_games)
        params = init_params(network, k_net, games)
        resets = [
            jax.vmap(e.reset)(jax.random.split(kk, n)) for e, kk in zip(gym, k_env, strict=True)
        ]
        return MultiTrainState(
            params=params,
            target_params=params,
            opt_state=optimizer.init(params),
            replays=tuple(
                replay.init(rows, n, e.spec.obs_shape, teacher.replay_storage_dtype(e.spec))
                for e in gym
            ),
            env_states=tuple(r[1] for r in resets),
            obs=tuple(r[0] for r in resets),
            episode_returns=tuple(jnp.zeros(n) for _ in games),
            key=key,
            iteration=jnp.zeros((), jnp.int32),
            updates=jnp.zeros((), jnp.int32),
        )

    def loss_fn(params, target_params, batches):
        total = 0.0
        for k, batch in enumerate(batches):
            f = apply_k(k)
            total = total + losses.double_q_td_loss(
                f(params, batch.obs_tm1),
                batch.a_tm1,
                batch.r_t,
                batch.discount_t,
                f(params, batch.obs_t),
                f(target_params, batch.obs_t),
            )
        return total

    def one_update(carry, key, replays):
        params, target, opt_state, updates = carry
        keys = jax.random.split(key, k_games)
        batches = [
            sharding.constrain_batch(
                replay.sample_nstep(r, kk, config.batch_size, config.n_step, config.gamma), mesh
            )
            for r, kk in zip(replays, keys, strict=True)
        ]
        loss, grads = jax.value_and_grad(loss_fn)(params, target, batches)
        step, opt_state = optimizer.update(grads, opt_state, params)
        params = optax.apply_updates(params, step)
        updates = updates + 1
        copy = updates % config.target_update_every == 0
        target = jax.tree_util.tree_map(lambda t, p: jnp.where(copy, p, t), target, params)
        return (params, target, opt_state, updates), loss

    def iteration(state: MultiTrainState, _):
        key, k_upd, *k_game = jax.random.split(state.key, 2 + k_games)
        eps = teacher.epsilon_at(config, state.iteration * n * k_games)
        replays, env_states, obs_out, returns, ret_sums, episodes = [], [], [], [], [], []
        for k, e in enumerate(gym):
            k_act, k_env = jax.random.split(k_game[k])
            s = acting.graph_step(
                e, apply_k(k), state.params, state.obs[k], state.env_states[k], k_act, k_env, eps
            )
            action, obs, env_state, reward, done = s.action, s.obs, s.env_state, s.reward, s.done
            replays.append(replay.add(state.replays[k], state.obs[k], action, reward, done))
            ep = state.episode_returns[k] + reward
            ret_sums.append(jnp.sum(jnp.where(done, ep, 0.0)))
            episodes.append(jnp.sum(done))
            returns.append(jnp.where(done, 0.0, ep))
            env_states.append(env_state)
            obs_out.append(obs)
        replays = tuple(replays)

        def learn(carry):
            carry, loss = jax.lax.scan(
                lambda c, kk: one_update(c, kk, replays),
                carry,
                jax.random.split(k_upd, config.updates_per_step),
            )
            return carry, jnp.mean(loss)

        ready = state.iteration >= learning_starts_iter
        for r in replays:
            ready = ready & replay.can_sample(r, config.n_step)
        (params, target, opt_state, updates), loss = jax.lax.cond(
            ready,
            learn,
            lambda c: (c, jnp.float32(jnp.nan)),
            (state.params, state.target_params, state.opt_state, state.updates),
        )
        new = MultiTrainState(
            params,
            target,
            opt_state,
            replays,
            tuple(env_states),
            tuple(obs_out),
            tuple(returns),
            key,
            state.iteration + 1,
            updates,
        )
        return new, (jnp.stack(ret_sums), jnp.stack(episodes), loss)

    def run(state, iterations: int):
        return jax.lax.scan(iteration, state, None, length=iterations)

    return network, init, run, iterations


def chunk_size(iterations: int, chunks: int) -> int:
    """The largest divisor of `iterations` that is at most iterations / chunks (rounded up).

    Equal chunks compile once; a remainder chunk would compile the whole run a second time.
    """
    target = max(1, -(-iterations // max(chunks, 1)))
    return max(d for d in range(1, target + 1) if iterations % d == 0)


class ChunksJob(jobs.Job):
    """`train_in_chunks`'s job: `run(state, chunk)` per `advance`; the state is its checkpoint."""

    kind, what = "multitask-dqn", "multi-task DQN"
    step_name, unit, desc = "iteration", "it", "multi-task DQN"
    keep_state_file = True  # a finished run is read back from its training state
    resume_hint = "run the same command again to continue"

    def __init__(self, run, state, iterations, games, size, identity, checkpoint_every_s, mesh):
        self.template, self.games, self.mesh = state, tuple(games), mesh
        self.total, self.chunk, self.checkpoint_every_s = iterations, size, checkpoint_every_s
        self.ident = json.loads(json.dumps(identity))  # as the manifest reads back (no tuples)
        self.run = xla.jit(lambda s: run(s, size))

    def identity(self) -> dict:
        return {"identity": self.ident, "chunk": self.chunk}

    def init(self) -> MultiTrainState:
        return self.template

    def restore(self, state, folder, manifest) -> MultiTrainState:
        return sharding.replicate(super().restore(state, folder, manifest), self.mesh)

    def done(self, state: MultiTrainState) -> int:
        return int(state.iteration)

    def describe(self, state: MultiTrainState) -> dict:
        return {"iteration": self.done(state)}

    def advance(self, state: MultiTrainState, n: int) -> jobs.Chunk:
        updates = int(state.updates)
        state, (ret_sums, episodes, loss) = self.run(state)
        ret_sums, episodes = np.asarray(ret_sums).sum(0), np.asarray(episodes).sum(0)
        loss = np.asarray(loss)
        row = {
            "iteration": self.done(state),
            "loss": float(np.nanmean(loss)) if np.isfinite(loss).any() else float("nan"),
            **{
                f"return {g}": float(r / e) if e else float("nan")
                for g, r, e in zip(self.games, ret_sums, episodes, strict=True)
            },
        }
        # a diverged network stays NaN, so the chunk's last loss, once it learns, tells
        learned = int(state.updates) > updates
        return jobs.Chunk(state, [row], {"TD loss": loss[-1]} if learned else {})

    def postfix(self, rows: list[dict]) -> dict:
        returns = {g: rows[-1][f"return {g}"] for g in self.games}
        return {g.split("-")[0]: f"{r:.1f}" if np.isfinite(r) else "-" for g, r in returns.items()}

    def reload(self, folder: Path, manifest: dict) -> MultiTrainState:
        return self.restore(self.template, folder, manifest)

    def result(self, state: MultiTrainState, folder: Path | None) -> MultiTrainState:
        return state


def train_in_chunks(
    run: Callable,
    state: MultiTrainState,
    iterations: int,
    games: Sequence[str],
    *,
    chunks: int = 50,
    progress: bool = True,
    folder: str | Path | None = None,
    identity: dict | None = None,
    checkpoint_every_s: float = 120.0,
    mesh: jax.sharding.Mesh | None = None,
) -> MultiTrainState:
    """`run(state, iterations)` cut into about `chunks` compiled calls, with a progress bar.

    The state carries the key and the iteration count, so the result is the same as one call of
    `iterations` (tests/test_experiments.py). The bar shows each game's mean episode return over
    the last chunk. With a `folder`, the training state is saved there every
    `checkpoint_every_s` seconds, on SIGINT/SIGTERM and at the end, and a run found there is
    continued (or, finished, returned) if it was made with the same `identity` (a JSON-able
    description of the config and games) and chunk size; `state` is then only the template.
    A non-finite TD loss stops the run (FloatingPointError), keeping the last checkpoint.
    """
    size = chunk_size(iterations, chunks)
    job = ChunksJob(run, state, iterations, games, size, identity, checkpoint_every_s, mesh)
    return jobs.run(job, folder, resume=True, progress=progress)
