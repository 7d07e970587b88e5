"""The DQN teacher's long jobs, run by `distill.jobs.run`: `teacher.fit` and `teacher.fit_atari`.

- `GymnaxTeacher`: the pure `Trainer.run` in compiled chunks of `chunk_iterations` vector steps;
  the state carries env, replay and key, so a resumed run is bit-identical on CPU.
- `AtariTeacher`: a host loop around ale-py's `AtariVectorEnv` and the jitted pieces of
  `teacher.make_atari_learner`; one vector step is `act_step_record`. The emulators' state is not
  saved, so a resumed run starts fresh episodes. `init_from` continues from an exported teacher
  when a checkpoint is lost (`warm_start`).
This module knows nothing of DQN itself (`teacher` builds the pieces and imports it).
"""

from __future__ import annotations

import dataclasses
import functools
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from distill import checkpoint, envs, evaluate, jobs, sharding, xla
from distill.config import ConfigError, to_dict


def chunk_rows(metrics: Any, first_iteration: int, num_envs: int, wall_s: float) -> dict:
    """One metrics row from a chunk's per-iteration `teacher.Metrics` `[iterations]`."""
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


def teacher_postfix(rows: list[dict]) -> dict:
    """Mean return over the last ten rows and env steps per second of the last one."""
    recent = [r["mean_return"] for r in rows[-10:] if np.isfinite(r["mean_return"])]
    steps = rows[-1]["env_steps"] - (rows[-2]["env_steps"] if len(rows) > 1 else 0)
    return {
        "ret": f"{np.mean(recent):.2f}" if recent else "-",
        "sps": f"{steps / max(rows[-1]['wall_s'], 1e-9):,.0f}",
    }


class _Teacher(jobs.Job):
    """What both teacher jobs share: identity, manifest entries, files."""

    kind = what = "teacher"
    step_name = "env step"

    def __init__(self, config, checkpoint_every_s: float, eval_episodes: int):
        self.config, self.eval_episodes = config, eval_episodes
        self.checkpoint_every_s = checkpoint_every_s
        self.total, self.scale = config.iterations, config.num_envs
        self.desc = f"teacher {config.env_id}"
        self.spec = envs.spec(config.env_id)

    def identity(self) -> dict:
        return {"config": to_dict(self.config)}

    def describe(self, state) -> dict:
        return {
            "env_id": self.config.env_id,
            "net": self.config.net,
            "num_actions": self.spec.num_actions,
            "env_steps": self.at(state),
        }

    def postfix(self, rows: list[dict]) -> dict:
        return teacher_postfix(rows)


class GymnaxTeacher(_Teacher):
    """`teacher.fit`'s job: `trainer.run(state, n)` chunk by chunk, on a `data` mesh if given."""

    unit = "step"

    def __init__(self, config, trainer, chunk_iterations: int, mesh=None, **kw):
        super().__init__(config, **kw)
        if config.init_from:  # a gymnax run is short to train again, and resumes bit-identically
            raise ConfigError(f"init_from={config.init_from!r}: only Atari teachers start from one")
        self.trainer, self.mesh, self.chunk = trainer, mesh, chunk_iterations
        self.run = xla.jit(trainer.run, static_argnums=1)

    def identity(self) -> dict:
        return {**super().identity(), "chunk_iterations": self.chunk}

    def init(self):
        return self.trainer.init(jax.random.PRNGKey(self.config.seed))

    def start(self, state):
        return sharding.replicate(state, self.mesh)

    def done(self, state) -> int:
        return int(state.iteration)

    def advance(self, state, n: int) -> jobs.Chunk:
        t0, first, updates = time.perf_counter(), self.done(state), int(state.updates)
        state, metrics = self.run(state, n)
        jax.block_until_ready(state.params)
        row = chunk_rows(metrics, first, self.config.num_envs, time.perf_counter() - t0)
        # a diverged network stays NaN, so the chunk's last loss, once it learns, tells
        learned = int(state.updates) > updates
        return jobs.Chunk(state, [row], {"TD loss": metrics.loss[-1]} if learned else {})

    def files(self, state, final: bool) -> dict[str, bytes]:
        return jobs.policy_files(state.params, state, final)

    def finish(self, state, rows: list[dict]) -> dict:
        c = self.config
        scores = evaluate.evaluate_gymnax(
            self.trainer.network.apply, state.params, c.env_id, self.eval_episodes, seed=c.seed + 1
        )
        random_scores = evaluate.evaluate_random(c.env_id, self.eval_episodes, seed=c.seed + 1)
        return {"evaluation": scores.summary(), "random_evaluation": random_scores.summary()}


# ---------------------------------------------------------------------------- Atari host loop


class AtariLearner(NamedTuple):
    """The jitted pieces of an Atari DQN (`teacher.make_atari_learner`)."""

    init: Callable  # key -> teacher.TrainState
    act: Callable  # (params, obs [envs, 4, 84, 84], key, iteration) -> actions [envs]
    learn: Callable  # (params, target, opt, replay, key, updates) -> (same 5 new, mean loss)
    store: Callable  # (replay, frames [envs, 84, 84], action, reward, done) -> replay
    epsilon: Callable  # env steps -> exploration rate (for the metrics rows)
    apply: Callable  # network.apply, for the final evaluation


@dataclasses.dataclass
class HostLoop:
    """The Atari loop's state: the learner's arrays on device, the envs' on the host."""

    train: Any  # teacher.TrainState: params, target, opt_state, replay, key, updates
    iteration: int
    obs: np.ndarray  # [envs, 4, 84, 84] uint8
    episode_return: np.ndarray  # [envs]
    lives: np.ndarray | None = None  # [envs] after the last step (None before the first)
    loss: Any = None  # the last dispatched update's loss (not yet read back)
    finished: list = dataclasses.field(default_factory=list)  # returns since the last row
    loss_sum: float = 0.0
    loss_count: int = 0
    last_log: float = 0.0  # when the last row was made


def act_step_record(env, act: Callable, store: Callable, s: HostLoop, during: Callable) -> list:
    """One vector step: act on every env, step the emulators, record the step in replay.

    A lost life ends the step's transition in replay (no bootstrapping past it, as DQN trains)
    while the game and its return go on (`envs.life_lost`); returns are whole games'.
    `during(s, key)` runs while the emulators step (the learner's dispatch; JAX runs it
    asynchronously). Updates `s` in place; returns the returns of the episodes that ended.
    """
    key, k_act, k_learn = jax.random.split(s.train.key, 3)
    action = np.asarray(act(s.train.params, s.obs, k_act, s.iteration), dtype=np.int32)
    env.send(action)
    s.train = s.train._replace(key=key)
    during(s, k_learn)
    step = env.recv()
    lives = envs.lives_in_env_order(step[-1])
    obs, reward, terminated, truncated = envs.in_env_order(*step)
    done = terminated | truncated
    cut = done | envs.life_lost(s.lives, lives, done)
    buffer = store(s.train.replay, s.obs[:, -1], action, reward.astype(np.float32), cut)
    s.train, s.lives = s.train._replace(replay=buffer), lives
    s.episode_return += reward
    ended = s.episode_return[done].tolist()
    s.episode_return[done] = 0.0
    s.obs = obs
    s.iteration += 1
    return ended


def warm_start(config) -> tuple[checkpoint.Policy | None, int]:
    """`config.init_from` loaded, and the vector step it reached (None, 0 without one).

    A run continued from an exported teacher when its checkpoint is lost (replay, optimiser and
    emulators with it): the schedule goes on from the teacher's env steps, the optimiser starts
    afresh, and `learning_starts` env steps refill replay with its own play before any update.
    Its learning curve and wall time carry on from the teacher's (`AtariTeacher.carried`).
    """
    if not config.init_from:
        return None, 0
    policy = checkpoint.load(config.init_from, env_id=config.env_id, net=config.net)
    steps = policy.manifest.get("env_steps")
    if not isinstance(steps, int) or not 0 <= steps < config.total_steps - config.num_envs:
        raise ConfigError(
            f"init_from={config.init_from!r}: its env_steps {steps!r} must be a count below "
            f"total_steps={config.total_steps} minus one vector step"
        )
    return policy, steps // config.num_envs


class AtariTeacher(_Teacher):
    """`teacher.fit_atari`'s job: one vector step per `advance`, a metrics row every
    `log_every` steps; with a `data` mesh the learner's arrays are replicated on it."""

    unit = "step"
    chunk = 1  # a signal or the checkpoint timer is seen after every vector step

    def __init__(self, config, learner: AtariLearner, log_every: int, mesh=None, **kw):
        super().__init__(config, **kw)
        self.learner, self.log_every, self.mesh = learner, log_every, mesh
        self.stack = self.spec.obs_shape[0]
        self.warm, self.first = warm_start(config)
        self.learning_starts = self.first + config.learning_starts // config.num_envs
        self.env = None

    def init(self):
        state = self.learner.init(jax.random.PRNGKey(self.config.seed))
        if self.warm is None:
            return state
        copy = functools.partial(jax.tree_util.tree_map, jnp.array)  # donated apart
        params = self.warm.params
        return state._replace(
            params=copy(params), target_params=copy(params), iteration=jnp.int32(self.first)
        )

    def carried(self) -> tuple[list[dict], float]:
        if self.warm is None:
            return [], 0.0
        m, steps = self.warm.manifest, self.first * self.config.num_envs
        rows = [r for r in m.get("metrics", []) if r.get("env_steps", steps + 1) <= steps]
        return rows, float(m.get("wall_s", 0.0))

    def restore(self, state, folder, manifest):
        state = super().restore(state, folder, manifest)
        # The episodes in flight are lost with the emulators: cut them in replay.
        last = (state.replay.pos - 1) % state.replay.done.shape[0]
        cut = state.replay._replace(done=state.replay.done.at[last].set(True))
        return state._replace(replay=cut)

    def start(self, state) -> HostLoop:
        if self.mesh is not None:
            state = sharding.replicate(state, self.mesh)
        c = self.config
        self.env = envs.make_atari(c.env_id, c.num_envs, training=True)
        iteration = int(state.iteration)
        obs = envs.reset_in_env_order(self.env, c.seed + iteration)
        now = time.perf_counter()
        return HostLoop(state, iteration, obs, np.zeros(c.num_envs), last_log=now)

    def close(self) -> None:
        if self.env is not None:
            self.env.close()
        self.env = None

    def done(self, s: HostLoop) -> int:
        return s.iteration

    def _learn(self, s: HostLoop, key) -> None:
        t, c = s.train, self.config
        s.loss = None
        if s.iteration >= self.learning_starts and int(t.replay.pos) > c.n_step + self.stack:
            *out, s.loss = self.learner.learn(
                t.params, t.target_params, t.opt_state, t.replay, key, t.updates
            )
            params, target, opt_state, buffer, updates = out
            s.train = t._replace(
                params=params,
                target_params=target,
                opt_state=opt_state,
                replay=buffer,
                updates=updates,
            )

    def advance(self, s: HostLoop, n: int) -> jobs.Chunk:
        rows, watched = [], {}
        for _ in range(n):
            learner = self.learner
            s.finished.extend(act_step_record(self.env, learner.act, learner.store, s, self._learn))
            if s.loss is not None:
                loss = float(s.loss)
                s.loss_sum, s.loss_count = s.loss_sum + loss, s.loss_count + 1
                watched = {"TD loss": loss}
            if s.iteration % self.log_every == 0 or s.iteration == self.total:
                rows.append(self._row(s))
        return jobs.Chunk(s, rows, watched)

    def _row(self, s: HostLoop) -> dict:
        now, c = time.perf_counter(), self.config
        row = {
            "env_steps": s.iteration * c.num_envs,
            "episodes": len(s.finished),
            "mean_return": float(np.mean(s.finished)) if s.finished else float("nan"),
            "loss": s.loss_sum / s.loss_count if s.loss_count else float("nan"),
            "epsilon": float(self.learner.epsilon(s.iteration * c.num_envs)),
            "wall_s": round(now - s.last_log, 3),
        }
        s.finished, s.loss_sum, s.loss_count = [], 0.0, 0
        s.last_log = now
        return row

    def _snapshot(self, s: HostLoop):
        return s.train._replace(
            env_state=jnp.zeros(()),
            obs=jnp.asarray(s.obs),
            episode_return=jnp.asarray(s.episode_return),
            iteration=jnp.asarray(s.iteration, jnp.int32),
        )

    def files(self, s: HostLoop, final: bool) -> dict[str, bytes]:
        return jobs.policy_files(s.train.params, self._snapshot(s), final)

    def finish(self, s: HostLoop, rows: list[dict]) -> dict:
        self.close()  # the emulators' threads are done before evaluation starts its own
        c = self.config
        scores = evaluate.evaluate_atari(
            self.learner.apply, s.train.params, c.env_id, self.eval_episodes, seed=c.seed + 1
        )
        return {"evaluation": scores.summary()}
