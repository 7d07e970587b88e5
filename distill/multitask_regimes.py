"""Regimes for multi-task students: stream and dagger with one rolling buffer per game.

As the paper's multi-task distillation (Rusu et al. 2016, section 4.3), every minibatch comes
from one game (update u trains game u mod G's head, as `multitask.make_multitask_distill`);
what changes is where each game's states come from:

- `stream`: each game's teacher keeps playing (epsilon 0.05) into that game's rolling buffer of
  the most recent `buffer_states` states;
- `dagger`: in each game the student's head for it, or a beta-mixture of that head and the
  game's teacher (per env and step), acts and the game's teacher labels every state visited;
  beta_k = beta0 * beta_decay^k in evaluation block k, as `distill.regimes`.

(`offline`, fixed datasets, stays `multitask.make_multitask_distill`.) One `RegimeConfig` holds
for every game: `buffer_states` and `actors` per game, and U, the updates per new state, over all
games together: a round of `interleave` updates gives each game about interleave / G updates and
`rows_per_round(config, G)` new rows of `actors` states. Every buffer is filled by its teacher
before the first update. After each block of `eval_every` updates every head is scored in its
own env, and its diagnostics (`distill.diagnostics`) are taken on its game's three sets. The job
resumes bit-identically, like `regimes.RegimeJob`. MinAtar (gymnax, in the graph) only.
"""

from __future__ import annotations

import copy
import dataclasses
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from distill import checkpoint, dataset, diagnostics, jobs, losses, regimes, student, xla
from distill import multitask as mt
from distill.config import ConfigError, require


def rows_per_round(config: regimes.RegimeConfig, games: int) -> int:
    """Rows (of `actors` states) each game records a round: interleave / (U * actors * G), at
    least 1, so that all games together add interleave / U states a round."""
    return max(1, round(config.interleave / (config.updates_per_state * config.actors * games)))


def buffer_rows(config: regimes.RegimeConfig, games: int) -> int:
    """Rows of each game's buffer: `buffer_states // actors`, at least a round's."""
    return max(rows_per_round(config, games), config.buffer_states // config.actors)


def game_rows(rows: Sequence[dict], game: str) -> list[dict]:
    """A multi-task run's metric rows as one game's single-task rows (`agreement_train`, ...),
    the shape `diagnostics.limit` reads."""
    keys = [f"{m}_{s}" for m in ("agreement", "kl") for s in diagnostics.SETS]
    return [{"score": r[f"score {game}"], **{k: r[f"{k} {game}"] for k in keys}} for r in rows]


class MultiRegimeState(NamedTuple):
    student: student.StudentState
    buffers: tuple  # per game: {obs, q, action, reward, done, t} [rows, actors, ...]
    ptr: jax.Array  # [] every buffer's oldest row (the next written; all move together)
    actors: tuple  # per game: regimes.Actor


class MultiStudent(NamedTuple):
    """A finished multi-task student: its params and its manifest (metrics, limits)."""

    params: Any
    manifest: dict


class MultitaskRegimeJob(jobs.Job):
    """One evaluation block (rounds of acting and updates, evaluation of every head, the
    diagnostics of every game) per `advance`."""

    kind = "multitask-student"
    what = "multi-task student"
    made_from = "another config, regime or teachers"
    step_name, unit = "update", "upd"

    def __init__(
        self,
        config: student.StudentConfig,
        regime: regimes.RegimeConfig,
        teachers: Sequence[checkpoint.Policy],
        every_s: float = 0.0,
    ):
        if regime.regime == "offline":
            raise ConfigError("the offline multi-task student is multitask.make_multitask_distill")
        for t in teachers:
            regimes.check_supported(t.env_id, regime.regime)
        require(
            config.eval_every % regime.interleave == 0,
            "eval_every",
            config.eval_every,
            f"must be a multiple of interleave={regime.interleave}",
        )
        self.config, self.regime, self.teachers = config, regime, tuple(teachers)
        self.games = tuple(t.env_id for t in teachers)
        self.checkpoint_every_s = every_s
        self.total, self.chunk = config.updates, config.eval_every
        self.desc = f"multi-task student {config.net}/{config.loss} {regime.regime}"
        self.parts = mt.make_multitask_parts(config, self.games)
        g = len(self.games)
        self.rows, self.buffer_rows = rows_per_round(regime, g), buffer_rows(regime, g)
        heads = [mt.head_apply(self.parts.network, self.games, k) for k in range(g)]
        self.heads = heads
        self.actors = [
            regimes.make_actor(game, t.apply, head, regime)
            for game, t, head in zip(self.games, self.teachers, heads, strict=True)
        ]
        n, envs_, w = regime.diag_states, regime.diag_envs, regime.stagger
        self.heldout_states = [
            xla.jit(diagnostics.make_teacher_states(game, t.apply, n, envs_, w))
            for game, t in zip(self.games, self.teachers, strict=True)
        ]
        self.visited_states = [
            diagnostics.make_teacher_states(game, head, n, envs_, w)
            for game, head in zip(self.games, heads, strict=True)
        ]
        self.block = xla.jit(self._block)
        self.fill = xla.jit(self._fill)
        self.diagnose = xla.jit(self._diagnose)

    def for_seed(self, seed: int) -> MultitaskRegimeJob:
        """The same job for another seed, sharing its compiled functions."""
        job = copy.copy(self)
        job.config = dataclasses.replace(self.config, seed=seed)
        return job

    @property
    def teacher_params(self) -> tuple:
        return tuple(t.params for t in self.teachers)

    # ---- identity and state

    def identity(self) -> dict:
        return {
            "config": dataclasses.asdict(self.config),
            "regime": dataclasses.asdict(self.regime),
            "games": list(self.games),
            "teachers": [dataset.teacher_fingerprint(t) for t in self.teachers],
        }

    def matches(self, manifest: dict) -> bool:
        mine = self.identity()
        theirs = manifest.get("teachers") or []
        return (
            all(manifest.get(k) == mine[k] for k in ("config", "regime", "games"))
            and len(theirs) == len(mine["teachers"])
            and all(map(dataset.same_source, theirs, mine["teachers"]))
        )

    def init(self) -> MultiRegimeState:
        s = self.parts.init(jax.random.PRNGKey(self.config.seed))  # as the offline students'
        key = jax.random.fold_in(jax.random.PRNGKey(self.config.seed), 0xAC7)
        return self.fill(self.teacher_params, s, key)

    def _fill(self, teacher_params, s: student.StudentState, key) -> MultiRegimeState:
        """Every game's buffer filled by its teacher's own play (beta 1)."""
        actors, buffers = [], []
        keys = jax.random.split(key, len(self.games))
        for (init, rows), tp, k in zip(self.actors, teacher_params, keys, strict=True):
            actor, buffer = rows(tp, s.params, init(tp, k), jnp.float32(1.0), self.buffer_rows)
            actors.append(actor)
            buffers.append(buffer)
        return MultiRegimeState(s, tuple(buffers), jnp.zeros((), jnp.int32), tuple(actors))

    def start(self, state: MultiRegimeState) -> MultiRegimeState:
        self.heldout = []
        for k, (sample, t) in enumerate(zip(self.heldout_states, self.teachers, strict=True)):
            key = jax.random.PRNGKey(regimes.HELDOUT_SEED + 7919 * k + self.config.seed)
            obs = sample(t.params, key)
            self.heldout.append((obs, t.apply(t.params, obs.astype(jnp.float32))))
        return state

    def done(self, state: MultiRegimeState) -> int:
        return int(state.student.updates)

    # ---- one block

    def _block(self, state: MultiRegimeState, teacher_params, hyper):
        config, g, r = self.config, len(self.games), self.rows
        interleave = self.regime.interleave
        beta = regimes.beta_at(self.regime, state.student.updates // config.eval_every)
        key, k_upd, k_eval = jax.random.split(state.student.key, 3)

        def round_(carry, x):
            params, opt_state, buffers, ptr, actors = carry
            k_round, first = x
            new_actors, new_buffers = [], []
            for (_, rows), tp, actor, buffer in zip(
                self.actors, teacher_params, actors, buffers, strict=True
            ):
                actor, record = rows(tp, params, actor, beta, r)
                new_actors.append(actor)
                new_buffers.append(regimes.insert(buffer, record, ptr))
            buffers = tuple(new_buffers)
            tasks = (first + jnp.arange(interleave)) % g  # games take turns, as offline
            (params, opt_state), loss = jax.lax.scan(
                lambda c, x: self.parts.update(c, x, buffers, hyper),
                (params, opt_state),
                (jax.random.split(k_round, interleave), tasks),
            )
            ptr = (ptr + r) % self.buffer_rows
            return (params, opt_state, buffers, ptr, tuple(new_actors)), jnp.mean(loss)

        n = config.eval_every // interleave
        s = state.student
        firsts = s.updates + interleave * jnp.arange(n)
        carry = (s.params, s.opt_state, state.buffers, state.ptr, state.actors)
        (params, opt_state, buffers, ptr, actors), loss = jax.lax.scan(
            round_, carry, (jax.random.split(k_upd, n), firsts)
        )
        scores = self.parts.scores(params, k_eval)
        s = student.StudentState(params, opt_state, key, s.updates + config.eval_every)
        return MultiRegimeState(s, buffers, ptr, actors), (jnp.mean(loss), scores)

    def _diagnose(self, params, teacher_params, buffers, heldout, key, hyper):
        """Each game's three sets: `{"<metric>_<set> <game>": value}`."""
        out, n = {}, self.regime.diag_states
        tau = hyper.get("tau", losses.DEFAULT_TAU)
        keys = jax.random.split(key, len(self.games))
        for k, game in enumerate(self.games):
            k_train, k_visit = jax.random.split(keys[k])
            sets = {
                "train": dataset.sample(buffers[k], k_train, n, 1, 0),
                "heldout": heldout[k],
                "visited": (self.visited_states[k](params, k_visit), None),
            }
            t = self.teachers[k]
            m = diagnostics.measure(self.heads[k], params, t.apply, teacher_params[k], sets, tau)
            out.update({f"{name} {game}": v for name, v in m.items()})
        return out

    def advance(self, state: MultiRegimeState, n: int) -> jobs.Chunk:
        t0, config = time.perf_counter(), self.config
        hyper = jax.tree_util.tree_map(jnp.float32, config.hyper)
        block = self.done(state) // config.eval_every
        beta = float(regimes.beta_at(self.regime, block))
        state, (loss, scores) = self.block(state, self.teacher_params, hyper)
        key = jax.random.fold_in(jax.random.PRNGKey(config.seed ^ 0xD1A6), block)
        diag = self.diagnose(
            state.student.params, self.teacher_params, state.buffers, self.heldout, key, hyper
        )
        updates = int(state.student.updates)
        row = {
            "updates": updates,
            "loss": float(loss),
            "beta": beta,
            "new_states": (updates // self.regime.interleave) * self.rows * self.regime.actors,
            **{f"score {g}": float(v) for g, v in zip(self.games, scores, strict=True)},
            **{k: float(v) for k, v in diag.items()},
            "wall_s": round(time.perf_counter() - t0, 3),
        }
        return jobs.Chunk(state, [row], {f"{config.loss} loss": float(loss)})

    # ---- files

    def describe(self, state: MultiRegimeState) -> dict:
        return {"net": self.config.net, "updates": int(state.student.updates)}

    def files(self, state: MultiRegimeState, final: bool) -> dict[str, bytes]:
        return jobs.policy_files(state.student.params, state, final)

    def postfix(self, rows: list[dict]) -> dict:
        return {g.split("-")[0]: f"{rows[-1][f'score {g}']:.2f}" for g in self.games}

    def finish(self, state: MultiRegimeState, rows: list[dict]) -> dict:
        return {"limit": {g: diagnostics.limit(game_rows(rows, g)) for g in self.games}}

    def reload(self, folder: Path, manifest: dict) -> MultiStudent:
        template = self.parts.init(jax.random.PRNGKey(0)).params
        data = checkpoint.read_verified(folder, checkpoint.PARAMS, manifest)
        where = str(checkpoint.path_of(folder, checkpoint.PARAMS, manifest))
        return MultiStudent(checkpoint.pytree_from_bytes(data, template, where), manifest)

    def result(self, state: MultiRegimeState, folder) -> MultiStudent:
        manifest = checkpoint.read_manifest(folder) if folder is not None else {}
        return MultiStudent(state.student.params, manifest)


def fit(
    config: student.StudentConfig,
    regime: regimes.RegimeConfig,
    teachers: Sequence[checkpoint.Policy],
    out: str | Path | None,
    *,
    resume: bool = True,
    progress: bool = True,
) -> MultiStudent:
    """A multi-task student of `teachers`' games (in their order) under `regime` (stream or
    dagger) into `out` (None: in memory); a finished run in `out` is read back."""
    job = MultitaskRegimeJob(config, regime, teachers)
    return jobs.run(job, out, resume=resume, progress=progress)
