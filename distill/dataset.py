"""Teacher datasets D^T = {(s_i, q_i)}: the teacher acts and its inputs and Q-values are kept.

The teacher plays with epsilon = 0.05 (no-op starts on Atari) in `E` parallel envs; every step
records the observation, the teacher's Q-vector, the action taken, the reward and whether the
episode ended. Data is stored time-major, `[rows, envs]`, in shards:

    DIR/manifest.json          env id, teacher (path, net, sha256 of its parameters), counts,
                               config, and the sha256 of every shard
    DIR/shard_00000.npz ...    obs, q, action, reward, done, t, each `[rows, envs, ...]`
    DIR/generator_state.npz    (while generating) envs, observations and key, to resume exactly

Atari observations are stored as single uint8 frames `[rows, envs, 84, 84]` and the 4-frame
stacks are rebuilt on read (`replay.stacked`), about 7 KB a state instead of 28 KB. Each Atari
shard starts with the `STACK - 1` rows that precede it, so every stack can be rebuilt within its
shard. MinAtar observations are 0/1 maps, stored as bool.

Before recording, the envs' starts are staggered (`DatasetConfig.stagger`, `distill.coverage`)
so that a dataset of any size samples the teacher's long-run play, not the openings of its
episodes; `t` holds each state's steps since its episode's reset, and the manifest's `coverage`
the episodes completed while recording, their mean length and a histogram of `t`.
"""

from __future__ import annotations

import dataclasses
import io
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from distill import acting, checkpoint, coverage, envs, families, jobs, xla
from distill.config import ConfigError, PositiveInt, in_range, positive_int, require
from distill.evaluate import EVAL_EPSILON

GENERATOR_STATE = "generator_state.npz"


@dataclasses.dataclass(frozen=True)
class DatasetConfig:
    """How a teacher dataset is generated."""

    states: PositiveInt = 100_000
    """states recorded, all envs together"""
    num_envs: PositiveInt = 64
    """parallel envs"""
    shard_states: PositiveInt = 32_768
    """states per shard file (rounded to whole rows)"""
    epsilon: float = EVAL_EPSILON
    """the teacher acts epsilon-greedily, as in the paper"""
    seed: int = 0
    """random seed (envs and the teacher's exploration)"""
    stagger: int | None = None
    """staggered starts: before recording, each env plays U[0, W) steps of the teacher's own
    epsilon-greedy play, so a dataset of any size samples long play, not episode openings; W
    steps (none: the env's longest episode, MinAtar 1000, or 2000 agent steps on Atari; 0: all
    envs start from reset together)"""

    def __post_init__(self):
        positive_int("states", self.states)
        positive_int("num_envs", self.num_envs)
        positive_int("shard_states", self.shard_states)
        in_range("epsilon", self.epsilon, 0.0, 1.0)
        require(isinstance(self.seed, int), "seed", self.seed, "must be an integer")
        require(
            self.stagger is None
            or (isinstance(self.stagger, int) and not isinstance(self.stagger, bool))
            and self.stagger >= 0,
            "stagger",
            self.stagger,
            "must be none or an integer >= 0",
        )
        require(
            self.states >= self.num_envs,
            "states",
            self.states,
            f"must be at least num_envs={self.num_envs}",
        )

    @property
    def rows(self) -> int:
        return self.states // self.num_envs

    @property
    def rows_per_shard(self) -> int:
        return max(1, min(self.shard_states // self.num_envs, self.rows))

    def stagger_steps(self, spec: envs.EnvSpec) -> int:
        """W for `spec`: `stagger`, or `coverage.default_stagger` when unset."""
        return coverage.default_stagger(spec) if self.stagger is None else self.stagger


def stack_of(spec: envs.EnvSpec) -> int:
    """Frames per observation rebuilt on read: 4 on Atari, 1 (whole observations) elsewhere."""
    return families.frame_stack(spec)


def same_source(a: dict | None, b: dict | None) -> bool:
    """Two fingerprints name the same source when all but their `path`s agree, at any depth (a
    dataset's fingerprint holds its teacher's: folders move, checkouts are cloned elsewhere)."""
    return a is not None and b is not None and _without_paths(a) == _without_paths(b)


def _without_paths(v):
    if isinstance(v, dict):
        return {k: _without_paths(x) for k, x in v.items() if k != "path"}
    return v


def teacher_fingerprint(policy) -> dict:
    """What identifies a teacher: env, network and the sha256 of its parameter file."""
    return {
        "path": policy.path,
        "env_id": policy.env_id,
        "net": policy.net,
        "params_sha256": policy.manifest["files"][checkpoint.PARAMS],
    }


# ---------------------------------------------------------------------------- generation


class GenState(NamedTuple):
    env_state: Any
    obs: jax.Array
    key: jax.Array
    t: jax.Array  # [envs] int32: steps since each env's episode reset


def make_gymnax_generator(policy, config: DatasetConfig):
    """(init(key) -> GenState, shard(params, GenState, rows) -> (GenState, arrays)): pure.

    Every env starts from reset; `staggered_starts` advances them before recording.
    """
    env = envs.make(policy.env_id)
    n = config.num_envs
    storage = families.storage_dtype(env.spec)

    def init(key):
        k_env, key = jax.random.split(key)
        obs, env_state = acting.graph_reset(env, k_env, n)
        return GenState(env_state, obs, key, jnp.zeros((n,), jnp.int32))

    def step(params, carry: GenState, _):
        key, k_act, k_env = jax.random.split(carry.key, 3)
        s = acting.graph_step(
            env, policy.apply, params, carry.obs, carry.env_state, k_act, k_env, config.epsilon
        )
        record = {
            "obs": carry.obs.astype(storage),
            "q": s.q.astype(jnp.float32),  # [envs, actions]
            "action": s.action.astype(jnp.int32),
            "reward": s.reward,
            "done": s.done,
            "t": carry.t,  # [envs] steps since reset of the observation recorded
        }
        t = jnp.where(s.done, 0, carry.t + 1)
        return GenState(s.env_state, s.obs, key, t), record

    def shard(params, state: GenState, rows: int):
        return jax.lax.scan(lambda c, x: step(params, c, x), state, None, length=rows)

    return init, shard


def staggered_starts(policy, config: DatasetConfig):
    """`warmup(params, GenState) -> GenState` (pure) of `config.stagger_steps` steps, or None
    when that is 0 (then no key is drawn: the stream is that of an unstaggered dataset)."""
    window = config.stagger_steps(policy.spec)
    if window == 0:
        return None
    env = envs.make(policy.env_id)
    return coverage.make_graph_warmup(env, policy.apply, config.epsilon, window)


class Progress(NamedTuple):
    """A dataset job's state: the generator's, the shards written, the newest shard's bytes."""

    gen: Any  # GenState on gymnax; the Atari halves' observations, pending actions, key, history
    shards: tuple[str, ...]  # every shard recorded
    unsaved: dict[str, bytes]  # {name: npz} of the shards recorded since the last checkpoint


class _DatasetJob(jobs.Job):
    """`generate`'s job: one shard of `rows_per_shard` rows per `advance`."""

    kind = what = "dataset"
    made_from = "another teacher or config"
    step_name, unit = "state", "state"
    state_file = GENERATOR_STATE

    def __init__(self, policy, config: DatasetConfig, checkpoint_every_s: float = 0.0):
        self.policy, self.config, self.spec = policy, config, policy.spec
        self.checkpoint_every_s = checkpoint_every_s
        self.fingerprint = teacher_fingerprint(policy)
        self.total, self.chunk, self.scale = config.rows, config.rows_per_shard, config.num_envs
        self.num_shards = -(-config.rows // config.rows_per_shard)
        self.desc = f"dataset {self.spec.env_id}"
        self.stagger = config.stagger_steps(self.spec)
        self.edges = coverage.hist_edges(self.spec, self.stagger, config.rows)

    def identity(self) -> dict:
        return {"teacher": self.fingerprint, "config": dataclasses.asdict(self.config)}

    def matches(self, manifest: dict) -> bool:
        return same_source(manifest.get("teacher"), self.fingerprint) and manifest.get(
            "config"
        ) == dataclasses.asdict(self.config)

    def done(self, state: Progress) -> int:
        return sum(_shard_rows(s) for s in state.shards)

    def describe(self, state: Progress) -> dict:
        spec = self.spec
        return {
            "env_id": spec.env_id,
            "num_actions": spec.num_actions,
            "obs_shape": list(spec.obs_shape),
            "stack": stack_of(spec),
            "shards": list(state.shards),
            "rows": self.done(state),
            "num_envs": self.config.num_envs,
            "stagger": self.stagger,
        }

    def finish(self, state: Progress, rows: list[dict]) -> dict:
        return {"coverage": coverage.summarise(rows, self.edges, self.stagger)}

    def files(self, state: Progress, final: bool) -> dict[str, bytes]:
        return dict(state.unsaved)

    def written(self, state: Progress) -> Progress:
        return state._replace(unsaved={})

    def recorded(self, state: Progress, gen: Any, arrays: dict[str, np.ndarray]) -> jobs.Chunk:
        """The chunk of a shard just recorded: its bytes wait in the state for the checkpoint;
        its coverage (`coverage.shard_row`) is the chunk's metric row."""
        name = _shard_name(len(state.shards), arrays["q"].shape[0])
        row = {"shard": name, **coverage.shard_row(arrays["t"], arrays["done"], self.edges)}
        state = Progress(gen, (*state.shards, name), {**state.unsaved, name: _npz(arrays)})
        return jobs.Chunk(state, [row], {"teacher Q-values": arrays["q"]})

    def saved(self, state: Progress) -> str:
        return f"{len(state.shards)} of {self.num_shards} shards saved"

    def reload(self, folder: Path, manifest: dict) -> Path:
        return folder

    def result(self, state: Progress, folder: Path) -> Path:
        return folder


class GymnaxDataset(_DatasetJob):
    """Shards recorded by the pure `make_gymnax_generator`, its state saved with each shard."""

    def __init__(self, policy, config: DatasetConfig, **kw):
        super().__init__(policy, config, **kw)
        init, shard = make_gymnax_generator(policy, config)
        self.gen_init, self.shard = init, xla.jit(shard, static_argnums=2)
        warmup = staggered_starts(policy, config)
        self.warmup = warmup and xla.jit(warmup)

    def init(self) -> Progress:
        return Progress(self.gen_init(jax.random.PRNGKey(self.config.seed)), (), {})

    def restore(self, state: Progress, folder: Path, manifest: dict) -> Progress:
        shards = tuple(manifest.get("shards", []))
        gen = super().restore(state.gen, folder, manifest) if shards else state.gen
        return Progress(gen, shards, {})

    def start(self, state: Progress) -> Progress:
        """Staggered starts before the first shard (a resumed job continues its saved state)."""
        if self.warmup is None or state.shards:
            return state
        return state._replace(gen=self.warmup(self.policy.params, state.gen))

    def advance(self, state: Progress, n: int) -> jobs.Chunk:
        gen, record = self.shard(self.policy.params, state.gen, n)
        return self.recorded(state, gen, {k: np.asarray(v) for k, v in record.items()})

    def files(self, state: Progress, final: bool) -> dict[str, bytes]:
        if final:
            return dict(state.unsaved)
        return {**state.unsaved, GENERATOR_STATE: checkpoint.pytree_to_bytes(state.gen)}


class AtariGen(NamedTuple):
    obs: list  # per half [half, *obs_shape]
    pending: list  # per half, the dispatched (q, action) for its observations
    key: jax.Array
    history: dict  # the rows before the next shard: frames, done (to rebuild its stacks)
    t: np.ndarray  # [envs] int32: steps since each env's episode reset


class AtariDataset(_DatasetJob):
    """Two halves of the envs take turns: one half's emulators step while the network scores
    the other half's observations, so env threads and inference overlap. Before recording,
    `coverage.host_warmup` staggers the envs' starts. The emulators' state is not saved: a
    resumed dataset continues with fresh episodes, staggered again (their first `STACK - 1`
    rows are rebuilt with blank frames before them, as after an episode's start)."""

    def __init__(self, policy, config: DatasetConfig, **kw):
        if config.num_envs % 2:
            raise ConfigError(f"num_envs={config.num_envs} must be even for Atari (two halves)")
        super().__init__(policy, config, **kw)
        self.half, self.halves = config.num_envs // 2, []
        self.act = acting.host_actor(policy.apply, config.epsilon)

    def init(self) -> Progress:
        return Progress(None, (), {})

    def restore(self, state: Progress, folder: Path, manifest: dict) -> Progress:
        return Progress(None, tuple(manifest.get("shards", [])), {})

    def start(self, state: Progress) -> Progress:
        n, stack = self.config.num_envs, stack_of(self.spec)
        storage = families.storage_dtype(self.spec)
        seed = self.config.seed + 1_000_003 * len(state.shards)
        self.halves = [envs.make_atari(self.spec.env_id, self.half, training=False) for _ in "ab"]
        obs = [envs.reset_in_env_order(h, seed + 7919 * i) for i, h in enumerate(self.halves)]
        key = jax.random.PRNGKey(seed)
        pending = []
        for i in range(2):
            key, k = jax.random.split(key)
            pending.append(self.act(self.policy.params, obs[i], k))  # dispatched asynchronously
        t = np.zeros(n, np.int32)
        if self.stagger:
            offsets = coverage.host_offsets(seed, n, self.stagger)
            obs, pending, key, t = coverage.host_warmup(
                self.halves,
                self.act,
                self.policy.params,
                obs,
                pending,
                key,
                offsets,
                self.stagger,
                seed,
            )
        history = {  # the rows before the shard: the older frames of the envs' stacks
            "frames": np.moveaxis(np.concatenate(obs)[:, : stack - 1], 1, 0).astype(storage),
            # row -k ends an episode when the env's current one began fewer than k steps ago
            "done": t[None, :] < np.arange(stack - 1, 0, -1)[:, None],
        }
        if state.shards:  # a resume: cut the episode the previous shard left open
            history = {
                "frames": np.zeros_like(history["frames"]),
                "done": np.ones((stack - 1, n), bool),
            }
        return state._replace(gen=AtariGen(obs, pending, key, history, t))

    def close(self) -> None:
        for h in self.halves:
            h.close()
        self.halves = []

    def advance(self, state: Progress, rows: int) -> jobs.Chunk:
        n, stack, (obs, pending, key, history, t) = (
            self.config.num_envs,
            stack_of(self.spec),
            state.gen,
        )
        t = t.copy()
        frame, storage = families.frame_shape(self.spec), families.storage_dtype(self.spec)
        buf = {
            "obs": np.zeros((rows, n, *frame), storage),
            "q": np.zeros((rows, n, self.spec.num_actions), np.float32),
            "action": np.zeros((rows, n), np.int32),
            "reward": np.zeros((rows, n), np.float32),
            "done": np.zeros((rows, n), bool),
            "t": np.zeros((rows, n), np.int32),
        }
        for r in range(rows):
            for i, env in enumerate(self.halves):
                q, action = (np.asarray(x) for x in pending[i])
                env.send(action.astype(np.int32))
                cols = slice(i * self.half, (i + 1) * self.half)
                buf["obs"][r, cols] = obs[i][:, -1]
                buf["q"][r, cols] = q
                buf["action"][r, cols] = action
                buf["t"][r, cols] = t[cols]
                obs[i], reward, term, trunc = envs.in_env_order(*env.recv())
                buf["reward"][r, cols] = reward
                buf["done"][r, cols] = term | trunc
                t[cols] = np.where(term | trunc, 0, t[cols] + 1)
                key, k = jax.random.split(key)
                pending[i] = self.act(self.policy.params, obs[i], k)
        arrays = {**buf, "history_obs": history["frames"], "history_done": history["done"]}
        history = {"frames": buf["obs"][-(stack - 1) :], "done": buf["done"][-(stack - 1) :]}
        if rows < stack - 1:  # a tiny last shard: keep whatever history it can
            history = {
                "frames": np.concatenate([arrays["history_obs"], buf["obs"]])[-(stack - 1) :],
                "done": np.concatenate([arrays["history_done"], buf["done"]])[-(stack - 1) :],
            }
        return self.recorded(state, AtariGen(obs, pending, key, history, t), arrays)


def generate(
    teacher_path: str,
    config: DatasetConfig,
    out: str,
    *,
    resume: bool = False,
    progress: bool = True,
    checkpoint_every_s: float = 0.0,
    tb: bool = True,
) -> Path:
    """Let the teacher act and write its dataset to `out` (streamed in shards; resumable).

    Shards wait in memory until the next checkpoint: one once `checkpoint_every_s` seconds
    have passed at the end of a shard (0: after every shard) and on SIGINT/SIGTERM.
    """
    policy = checkpoint.load(teacher_path)
    kind = GymnaxDataset if families.of(policy.spec).in_graph else AtariDataset
    job = kind(policy, config, checkpoint_every_s=checkpoint_every_s)
    return jobs.run(job, out, resume=resume, progress=progress, tb=tb)


def _shard_name(i: int, rows: int) -> str:
    return f"shard_{i:05d}_{rows}.npz"


def _shard_rows(name: str) -> int:
    return int(name.rsplit("_", 1)[1].split(".")[0])


def _npz(arrays: dict[str, np.ndarray]) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


# reading lives in distill.shards; these names stay importable from here
from distill.shards import (  # noqa: E402, F401
    Dataset,
    checked_manifest,
    iter_shards,
    load_dataset,
    sample,
)
