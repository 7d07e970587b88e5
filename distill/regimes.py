"""Regimes: where a single-task student's states come from while it trains.

- `offline`: today's fixed teacher dataset (`distill.student`; the same updates, bit for bit).
- `stream`: the paper's regime (Rusu et al. 2016, section 4): the teacher keeps playing at
  epsilon 0.05 into a rolling buffer of the most recent N states, and the student trains on it
  at U minibatch updates per new state (the paper: 540,000 states, about 0.19 updates a state).
- `dagger`: the student, or a beta-mixture of student and teacher (per env and step: the
  teacher's action with probability beta), acts and the teacher labels every state visited,
  aggregated in the buffer (Ross et al. 2011, DAgger; Czarnecki et al. 2019, student-driven
  distillation); beta_k = beta0 * beta_decay^k in evaluation block k.

stream and dagger share one machine: a buffer `[rows, actors, ...]` (time-major, as a dataset,
so `distill.shards.sample` draws its minibatches), filled by the teacher before the first update
and then renewed `rows_per_round` rows at a time, the oldest first; stream is dagger at beta 1.
Every block ends with an evaluation in the env and the diagnostics of `distill.diagnostics` on
the three sets (training states, held-out teacher states, the student's own states).

MinAtar (gymnax, in the graph) only; multi-task regimes are not written yet.
"""

from __future__ import annotations

import copy
import dataclasses
import time
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from distill import (
    acting,
    checkpoint,
    coverage,
    dataset,
    diagnostics,
    envs,
    evaluate,
    families,
    jobs,
    losses,
    student,
    xla,
)
from distill.config import ConfigError, PositiveInt, in_range, positive_int, require

REGIMES = ("offline", "stream", "dagger")
HELDOUT_SEED = 1_000_003  # the held-out teacher states come from other episodes than any dataset


@dataclasses.dataclass(frozen=True)
class RegimeConfig:
    """Where a student's training states come from (distill.regimes)."""

    regime: str = "offline"
    """offline (a fixed dataset, --dataset) | stream (the teacher keeps playing into a rolling
    buffer, --teacher) | dagger (the student or a beta-mixture acts, the teacher labels,
    --teacher)"""
    buffer_states: PositiveInt = 32_768
    """stream, dagger: states in the buffer, the most recent N (the paper: 540,000, 10 hours of
    play; scaled to MinAtar's budgets)"""
    updates_per_state: float = 0.19
    """stream, dagger: U, student updates per new state (the paper's 10,000 updates per hour of
    play at 15 Hz)"""
    actors: PositiveInt = 64
    """stream, dagger: envs the acting policy plays in"""
    interleave: PositiveInt = 100
    """stream, dagger: updates between two rounds of acting (eval_every must be a multiple)"""
    beta0: float = 1.0
    """dagger: probability of the teacher's action in the first block"""
    beta_decay: float = 0.5
    """dagger: beta is multiplied by this after every evaluation block"""
    diag_states: PositiveInt = 2_048
    """states in each diagnostic set (training, held-out teacher, the student's own)"""
    diag_envs: PositiveInt = 16
    """envs the teacher and the student play in for the held-out and visited sets"""
    stagger: int | None = None
    """W of the staggered starts of the acting envs and of the diagnostic sets (none: the
    env's longest episode, as a dataset's)"""

    def __post_init__(self):
        require(self.regime in REGIMES, "regime", self.regime, f"one of {REGIMES}")
        for name in ("buffer_states", "actors", "interleave", "diag_states", "diag_envs"):
            positive_int(name, getattr(self, name))
        in_range("updates_per_state", self.updates_per_state, 1e-4, 1e4)
        in_range("beta0", self.beta0, 0.0, 1.0)
        in_range("beta_decay", self.beta_decay, 0.0, 1.0)
        require(
            self.stagger is None or isinstance(self.stagger, int) and self.stagger > 0,
            "stagger",
            self.stagger,
            "must be none or an integer > 0",
        )
        require(
            self.buffer_states >= self.actors,
            "buffer_states",
            self.buffer_states,
            f"must be at least actors={self.actors}",
        )

    @property
    def rows_per_round(self) -> int:
        """Rows (of `actors` states) recorded a round: interleave / (U * actors), at least 1."""
        return max(1, round(self.interleave / (self.updates_per_state * self.actors)))

    def stagger_steps(self, spec: envs.EnvSpec) -> int:
        """W for `spec`: `stagger`, or `coverage.default_stagger` when unset."""
        return coverage.default_stagger(spec) if self.stagger is None else self.stagger

    @property
    def buffer_rows(self) -> int:
        return max(self.rows_per_round, self.buffer_states // self.actors)


def beta_at(config: RegimeConfig, block: jax.Array | int) -> jax.Array:
    """The probability of the teacher's action in evaluation block `block` (0-based): 1 for
    stream and offline, beta0 * beta_decay^block for dagger."""
    if config.regime != "dagger":
        return jnp.float32(1.0)
    return jnp.float32(config.beta0) * jnp.float32(config.beta_decay) ** jnp.asarray(
        block, jnp.float32
    )


def check_supported(env_id: str, regime: str) -> None:
    """Regimes with a teacher in the loop run in the graph: MinAtar (gymnax) only."""
    if not families.of(envs.spec(env_id)).in_graph:
        raise ConfigError(f"--regime {regime} with a teacher is not supported on {env_id} yet")


# ---------------------------------------------------------------------------- acting


class Actor(NamedTuple):
    env_state: Any
    obs: jax.Array  # [actors, ...]
    key: jax.Array
    t: jax.Array  # [actors] steps since reset


def make_actor(env_id: str, teacher_apply, student_apply, config: RegimeConfig):
    """(init(teacher_params, key) -> Actor, rows(teacher_params, student_params, Actor, beta,
    n) -> (Actor, record)): pure. `record` holds `[n, actors, ...]` obs, the teacher's Q-values
    of every state visited, and action, reward, done, t, as a dataset shard does."""
    env = envs.make(env_id)
    storage = families.storage_dtype(env.spec)
    warmup = coverage.make_graph_warmup(
        env, teacher_apply, evaluate.EVAL_EPSILON, config.stagger_steps(env.spec)
    )

    def init(teacher_params, key):
        k_env, key = jax.random.split(key)
        obs, env_state = acting.graph_reset(env, k_env, config.actors)
        actor = Actor(env_state, obs, key, jnp.zeros((config.actors,), jnp.int32))
        return warmup(teacher_params, actor)  # staggered starts, as a dataset's

    def step(teacher_params, student_params, beta, carry: Actor, _):
        key, k_mix, k_act, k_env = jax.random.split(carry.key, 4)
        teacher_q = teacher_apply(teacher_params, carry.obs)  # [actors, A]: the labels
        use_teacher = jax.random.uniform(k_mix, (config.actors,)) < beta

        def mixed(params, obs):  # the acting policy: per env, teacher with probability beta
            return jnp.where(use_teacher[:, None], teacher_q, student_apply(params, obs))

        s = acting.graph_step(
            env, mixed, student_params, carry.obs, carry.env_state, k_act, k_env, 0.05
        )
        record = {
            "obs": carry.obs.astype(storage),
            "q": teacher_q.astype(jnp.float32),
            "action": s.action.astype(jnp.int32),
            "reward": s.reward,
            "done": s.done,
            "t": carry.t,
        }
        t = jnp.where(s.done, 0, carry.t + 1)
        return Actor(s.env_state, s.obs, key, t), record

    def rows(teacher_params, student_params, actor: Actor, beta, n: int):
        return jax.lax.scan(
            lambda c, x: step(teacher_params, student_params, beta, c, x), actor, None, length=n
        )

    return init, rows


def insert(buffer: dict, record: dict, ptr: jax.Array) -> dict:
    """`record` `[n, actors, ...]` written over the buffer's rows ptr, ptr+1, ... (mod its
    rows): the oldest rows go first. Pure."""
    rows = buffer["q"].shape[0]
    idx = (ptr + jnp.arange(record["q"].shape[0])) % rows
    return {k: buffer[k].at[idx].set(record[k].astype(buffer[k].dtype)) for k in buffer}


# ---------------------------------------------------------------------------- the job


class RegimeState(NamedTuple):
    student: student.StudentState
    buffer: dict  # stream, dagger: [rows, actors, ...]; offline: {}
    ptr: jax.Array  # [] the buffer's oldest row (the next written)
    actor: Any  # stream, dagger: Actor; offline: ()


class RegimeJob(jobs.Job):
    """One evaluation block (updates, acting, evaluation, diagnostics) per `advance`."""

    kind = what = "student"
    made_from = "another config, teacher or dataset"
    step_name, unit = "update", "upd"

    def __init__(
        self,
        config: student.StudentConfig,
        regime: RegimeConfig,
        teacher: checkpoint.Policy,
        data: dataset.Dataset | None = None,
        every_s: float = 0.0,
    ):
        check_supported(teacher.env_id, regime.regime)
        if regime.regime == "offline" and data is None:
            raise ConfigError("--regime offline needs --dataset")
        if data is not None and data.env_id != teacher.env_id:
            raise ConfigError(f"the dataset is of {data.env_id}, the teacher of {teacher.env_id}")
        if regime.regime != "offline":
            require(
                config.eval_every % regime.interleave == 0,
                "eval_every",
                config.eval_every,
                f"must be a multiple of interleave={regime.interleave}",
            )
        self.config, self.regime, self.teacher, self.data = config, regime, teacher, data
        self.checkpoint_every_s = every_s
        self.env_id, self.spec = teacher.env_id, teacher.spec
        self.total, self.chunk = config.updates, config.eval_every
        self.desc = f"student {config.net}/{config.loss} {regime.regime} {self.env_id}"
        self.distiller = student.make_distill(config, self.env_id, 1)
        self.first_row = data.first_row if data is not None else 0
        apply_s, apply_t = self.distiller.network.apply, teacher.apply
        self.actor_init, self.actor_rows = make_actor(self.env_id, apply_t, apply_s, regime)
        self.evaluator = evaluate.make_gymnax_evaluator(self.env_id, apply_s, config.eval_episodes)
        self.heldout_states = xla.jit(
            diagnostics.make_teacher_states(
                self.env_id, apply_t, regime.diag_states, regime.diag_envs, regime.stagger
            )
        )
        self.visited_states = diagnostics.make_teacher_states(
            self.env_id, apply_s, regime.diag_states, regime.diag_envs, regime.stagger
        )
        self.block = xla.jit(self._block)
        self.fill = xla.jit(self._fill)
        self.diagnose = xla.jit(self._diagnose)

    def for_seed(self, seed: int) -> RegimeJob:
        """The same job for another seed, sharing its compiled functions (the seed only enters
        through the keys, never the graph)."""
        job = copy.copy(self)
        job.config = dataclasses.replace(self.config, seed=seed)
        return job

    # ---- identity and state

    def identity(self) -> dict:
        return {
            "config": dataclasses.asdict(self.config),
            "regime": dataclasses.asdict(self.regime),
            "teacher": dataset.teacher_fingerprint(self.teacher),
            "dataset": student.dataset_fingerprint(self.data) if self.data else None,
        }

    def matches(self, manifest: dict) -> bool:
        mine = self.identity()
        return (
            manifest.get("config") == mine["config"]
            and manifest.get("regime") == mine["regime"]
            and dataset.same_source(manifest.get("teacher"), mine["teacher"])
            and (
                manifest.get("dataset") is None
                if mine["dataset"] is None
                else dataset.same_source(manifest.get("dataset"), mine["dataset"])
            )
        )

    def init(self) -> RegimeState:
        s = self.distiller.init(jax.random.PRNGKey(self.config.seed))  # as student.fit's
        if self.regime.regime == "offline":
            return RegimeState(s, {}, jnp.zeros((), jnp.int32), ())
        key = jax.random.fold_in(jax.random.PRNGKey(self.config.seed), 0xAC7)
        return self.fill(self.teacher.params, s, key)

    def _fill(self, teacher_params, s: student.StudentState, key) -> RegimeState:
        """The buffer filled by the teacher's own play (beta 1) before the first update."""
        actor = self.actor_init(teacher_params, key)
        actor, buffer = self.actor_rows(
            teacher_params, s.params, actor, jnp.float32(1.0), self.regime.buffer_rows
        )
        return RegimeState(s, buffer, jnp.zeros((), jnp.int32), actor)

    def start(self, state: RegimeState) -> RegimeState:
        self.arrays = self.data.arrays() if self.data is not None else None
        obs = self.heldout_states(
            self.teacher.params, jax.random.PRNGKey(HELDOUT_SEED + self.config.seed)
        )
        self.heldout = (obs, self.teacher.apply(self.teacher.params, obs.astype(jnp.float32)))
        return state

    def done(self, state: RegimeState) -> int:
        return int(state.student.updates)

    # ---- one block

    def _block(self, state: RegimeState, teacher_params, arrays, hyper):
        if self.regime.regime == "offline":
            s, m = self.distiller.run(state.student, arrays, hyper, 1, self.first_row, True)
            return state._replace(student=s), (m.loss[0], m.agreement[0], m.score[0])
        r, config = self.regime.rows_per_round, self.config
        beta = beta_at(self.regime, state.student.updates // config.eval_every)
        key, k_eval = jax.random.split(state.student.key)

        def round_(carry, _):
            s, buffer, ptr, actor = carry
            actor, record = self.actor_rows(teacher_params, s.params, actor, beta, r)
            buffer = insert(buffer, record, ptr)
            s, (loss, agree) = jax.lax.scan(
                lambda s, _: self.distiller.step(s, buffer, hyper),
                s,
                None,
                length=self.regime.interleave,
            )
            ptr = (ptr + r) % buffer["q"].shape[0]
            return (s, buffer, ptr, actor), (jnp.mean(loss), jnp.mean(agree))

        carry = (state.student._replace(key=key), state.buffer, state.ptr, state.actor)
        (s, buffer, ptr, actor), (loss, agree) = jax.lax.scan(
            round_, carry, None, length=config.eval_every // self.regime.interleave
        )
        score = jnp.mean(self.evaluator(s.params, k_eval, jnp.float32(evaluate.EVAL_EPSILON)))
        return RegimeState(s, buffer, ptr, actor), (jnp.mean(loss), jnp.mean(agree), score)

    def _diagnose(self, params, teacher_params, train, heldout, key, hyper):
        """The three sets' agreement and KL after a block, drawn with `key` (its own keys, so
        the training stream is the same with or without diagnostics)."""
        k_train, k_visit = jax.random.split(key)
        n = self.regime.diag_states
        train_obs, train_q = dataset.sample(train, k_train, n, 1, self.first_row)
        sets = {
            "train": (train_obs, train_q),
            "heldout": heldout,
            "visited": (self.visited_states(params, k_visit), None),
        }
        tau = hyper.get("tau", losses.DEFAULT_TAU)
        return diagnostics.measure(
            self.distiller.network.apply, params, self.teacher.apply, teacher_params, sets, tau
        )

    def advance(self, state: RegimeState, n: int) -> jobs.Chunk:
        t0, config = time.perf_counter(), self.config
        hyper = jax.tree_util.tree_map(jnp.float32, config.hyper)
        block = self.done(state) // config.eval_every
        beta = float(beta_at(self.regime, block))
        state, (loss, agree, score) = self.block(state, self.teacher.params, self.arrays, hyper)
        train = self.arrays if self.regime.regime == "offline" else state.buffer
        key = jax.random.fold_in(jax.random.PRNGKey(self.config.seed ^ 0xD1A6), block)
        diag = self.diagnose(
            state.student.params, self.teacher.params, train, self.heldout, key, hyper
        )
        row = {
            "updates": int(state.student.updates),
            "loss": float(loss),
            "agreement": float(agree),
            "score": float(score),
            "beta": beta,
            "new_states": self.new_states(int(state.student.updates)),
            **{k: float(v) for k, v in diag.items()},
            "wall_s": round(time.perf_counter() - t0, 3),
        }
        return jobs.Chunk(state, [row], {f"{config.loss} loss": float(loss)})

    def new_states(self, updates: int) -> int:
        """States the acting policy has added to the buffer after `updates` updates (0 offline)."""
        if self.regime.regime == "offline":
            return 0
        rounds = updates // self.regime.interleave
        return rounds * self.regime.rows_per_round * self.regime.actors

    # ---- files

    def describe(self, state: RegimeState) -> dict:
        return {
            **checkpoint.policy_manifest(
                "student", self.env_id, self.config.net, self.spec.num_actions, {}
            ),
            "updates": int(state.student.updates),
        }

    def files(self, state: RegimeState, final: bool) -> dict[str, bytes]:
        return jobs.policy_files(state.student.params, state, final)

    def result(self, state: RegimeState, folder) -> Any:
        return checkpoint.load(folder) if folder is not None else state

    def postfix(self, rows: list[dict]) -> dict:
        r = rows[-1]
        return {"score": f"{r['score']:.2f}", "agree c": f"{r['agreement_visited']:.3f}"}

    def finish(self, state: RegimeState, rows: list[dict]) -> dict:
        return {
            "final_score": rows[-1]["score"] if rows else float("nan"),
            "limit": diagnostics.limit(rows) if rows else "none",
        }


def fit(
    config: student.StudentConfig,
    regime: RegimeConfig,
    teacher_path: str,
    out: str | None,
    *,
    dataset_path: str | None = None,
    resume: bool = False,
    progress: bool = True,
    checkpoint_every_s: float = 0.0,
):
    """A student trained under `regime` into `out` (None: in memory); returns the loaded Policy
    (with `out`) or the final RegimeState. Resumes bit-identically on CPU, as `student.fit`."""
    teacher = checkpoint.load(teacher_path)
    data = dataset.load_dataset(dataset_path, env_id=teacher.env_id) if dataset_path else None
    job = RegimeJob(config, regime, teacher, data, checkpoint_every_s)
    return jobs.run(job, out, resume=resume, progress=progress)


def summary(rows: list[dict]) -> dict:
    """The last block's score and diagnostics, and the limit the run shows."""
    last = rows[-1]
    keep = ("score", *(f"{m}_{s}" for m in ("agreement", "kl") for s in diagnostics.SETS))
    return {**{k: last[k] for k in keep}, "limit": diagnostics.limit(rows)}


def need_dataset(path: str | None) -> None:
    """`distill student` without a teacher distils from a dataset: --dataset is required."""
    if path is None:
        raise ConfigError("--dataset is required (--regime offline), or give --teacher")


def cmd_student(args, config: student.StudentConfig, regime: RegimeConfig) -> int:
    """`distill student --regime ... --teacher PATH`: the regime's job into --out."""
    if args.teacher is None:
        raise ConfigError(f"--regime {regime.regime} needs --teacher PATH")
    if regime.regime == "offline":
        need_dataset(args.dataset)
    if getattr(args, "mesh", None):
        raise ConfigError("--mesh is not supported with a teacher in the loop yet")
    every = getattr(args, "checkpoint_every", None)
    policy = fit(
        config,
        regime,
        args.teacher,
        args.out,
        dataset_path=args.dataset,
        resume=args.resume,
        **({} if every is None else {"checkpoint_every_s": every}),
    )
    m = policy.manifest
    print(
        f"student saved in {args.out}: {policy.env_id}, {policy.net}, regime {regime.regime}, "
        f"final score {m.get('final_score', float('nan')):.2f}, limit: {m.get('limit')}"
    )
    return 0
