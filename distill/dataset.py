"""Teacher datasets D^T = {(s_i, q_i)}: the teacher acts and its inputs and Q-values are kept.

The teacher plays with epsilon = 0.05 (no-op starts on Atari) in `E` parallel envs; every step
records the observation, the teacher's Q-vector, the action taken, the reward and whether the
episode ended. Data is stored time-major, `[rows, envs]`, in shards:

    DIR/manifest.json          env id, teacher (path, net, sha256 of its parameters), counts,
                               config, and the sha256 of every shard
    DIR/shard_00000.npz ...    obs, q, action, reward, done, each `[rows, envs, ...]`
    DIR/generator_state.npz    (while generating) envs, observations and key, to resume exactly

Atari observations are stored as single uint8 frames `[rows, envs, 84, 84]` and the 4-frame
stacks are rebuilt on read (`replay.stacked`), about 7 KB a state instead of 28 KB. Each Atari
shard starts with the `STACK - 1` rows that precede it, so every stack can be rebuilt within its
shard. MinAtar observations are 0/1 maps, stored as bool.
"""

from __future__ import annotations

import dataclasses
import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from distill import acting, checkpoint, envs, families, jobs, replay, schema, xla
from distill.checkpoint import CheckpointError
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

    def __post_init__(self):
        positive_int("states", self.states)
        positive_int("num_envs", self.num_envs)
        positive_int("shard_states", self.shard_states)
        in_range("epsilon", self.epsilon, 0.0, 1.0)
        require(isinstance(self.seed, int), "seed", self.seed, "must be an integer")
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


def stack_of(spec: envs.EnvSpec) -> int:
    """Frames per observation rebuilt on read: 4 on Atari, 1 (whole observations) elsewhere."""
    return families.frame_stack(spec)


def same_source(a: dict | None, b: dict | None) -> bool:
    """Two fingerprints name the same source when all but their `path` agree (folders move)."""
    strip = lambda d: {k: v for k, v in (d or {}).items() if k != "path"}  # noqa: E731
    return a is not None and b is not None and strip(a) == strip(b)


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


def make_gymnax_generator(policy, config: DatasetConfig):
    """(init(key) -> GenState, shard(params, GenState, rows) -> (GenState, arrays)): pure."""
    env = envs.make(policy.env_id)
    n = config.num_envs
    storage = families.storage_dtype(env.spec)

    def init(key):
        k_env, key = jax.random.split(key)
        obs, env_state = acting.graph_reset(env, k_env, n)
        return GenState(env_state, obs, key)

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
        }
        return GenState(s.env_state, s.obs, key), record

    def shard(params, state: GenState, rows: int):
        return jax.lax.scan(lambda c, x: step(params, c, x), state, None, length=rows)

    return init, shard


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
        }

    def files(self, state: Progress, final: bool) -> dict[str, bytes]:
        return dict(state.unsaved)

    def written(self, state: Progress) -> Progress:
        return state._replace(unsaved={})

    def recorded(self, state: Progress, gen: Any, arrays: dict[str, np.ndarray]) -> jobs.Chunk:
        """The chunk of a shard just recorded: its bytes wait in the state for the checkpoint."""
        name = _shard_name(len(state.shards), arrays["q"].shape[0])
        state = Progress(gen, (*state.shards, name), {**state.unsaved, name: _npz(arrays)})
        return jobs.Chunk(state, [], {"teacher Q-values": arrays["q"]})

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

    def init(self) -> Progress:
        return Progress(self.gen_init(jax.random.PRNGKey(self.config.seed)), (), {})

    def restore(self, state: Progress, folder: Path, manifest: dict) -> Progress:
        shards = tuple(manifest.get("shards", []))
        gen = super().restore(state.gen, folder, manifest) if shards else state.gen
        return Progress(gen, shards, {})

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


class AtariDataset(_DatasetJob):
    """Two halves of the envs take turns: one half's emulators step while the network scores
    the other half's observations, so env threads and inference overlap. The emulators' state
    is not saved: a resumed dataset continues with fresh episodes."""

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
        frame, storage = families.frame_shape(self.spec), families.storage_dtype(self.spec)
        seed = self.config.seed + 1_000_003 * len(state.shards)
        self.halves = [envs.make_atari(self.spec.env_id, self.half, training=False) for _ in "ab"]
        obs = [envs.reset_in_env_order(h, seed + 7919 * i) for i, h in enumerate(self.halves)]
        key = jax.random.PRNGKey(seed)
        pending = []
        for i in range(2):
            key, k = jax.random.split(key)
            pending.append(self.act(self.policy.params, obs[i], k))  # dispatched asynchronously
        history = {  # the rows before the shard: start of data = zeros, done
            "frames": np.zeros((stack - 1, n, *frame), storage),
            "done": np.ones((stack - 1, n), bool),
        }
        return state._replace(gen=AtariGen(obs, pending, key, history))

    def close(self) -> None:
        for h in self.halves:
            h.close()
        self.halves = []

    def advance(self, state: Progress, rows: int) -> jobs.Chunk:
        n, stack, (obs, pending, key, history) = (
            self.config.num_envs,
            stack_of(self.spec),
            state.gen,
        )
        frame, storage = families.frame_shape(self.spec), families.storage_dtype(self.spec)
        buf = {
            "obs": np.zeros((rows, n, *frame), storage),
            "q": np.zeros((rows, n, self.spec.num_actions), np.float32),
            "action": np.zeros((rows, n), np.int32),
            "reward": np.zeros((rows, n), np.float32),
            "done": np.zeros((rows, n), bool),
        }
        for r in range(rows):
            for i, env in enumerate(self.halves):
                q, action = (np.asarray(x) for x in pending[i])
                env.send(action.astype(np.int32))
                cols = slice(i * self.half, (i + 1) * self.half)
                buf["obs"][r, cols] = obs[i][:, -1]
                buf["q"][r, cols] = q
                buf["action"][r, cols] = action
                obs[i], reward, term, trunc = envs.in_env_order(*env.recv())
                buf["reward"][r, cols] = reward
                buf["done"][r, cols] = term | trunc
                key, k = jax.random.split(key)
                pending[i] = self.act(self.policy.params, obs[i], k)
        arrays = {**buf, "history_obs": history["frames"], "history_done": history["done"]}
        history = {"frames": buf["obs"][-(stack - 1) :], "done": buf["done"][-(stack - 1) :]}
        if rows < stack - 1:  # a tiny last shard: keep whatever history it can
            history = {
                "frames": np.concatenate([arrays["history_obs"], buf["obs"]])[-(stack - 1) :],
                "done": np.concatenate([arrays["history_done"], buf["done"]])[-(stack - 1) :],
            }
        return self.recorded(state, AtariGen(obs, pending, key, history), arrays)


def generate(
    teacher_path: str,
    config: DatasetConfig,
    out: str,
    *,
    resume: bool = False,
    progress: bool = True,
    checkpoint_every_s: float = 0.0,
) -> Path:
    """Let the teacher act and write its dataset to `out` (streamed in shards; resumable).

    Shards wait in memory until the next checkpoint: one once `checkpoint_every_s` seconds
    have passed at the end of a shard (0: after every shard) and on SIGINT/SIGTERM.
    """
    policy = checkpoint.load(teacher_path)
    kind = GymnaxDataset if families.of(policy.spec).in_graph else AtariDataset
    job = kind(policy, config, checkpoint_every_s=checkpoint_every_s)
    return jobs.run(job, out, resume=resume, progress=progress)


def _shard_name(i: int, rows: int) -> str:
    return f"shard_{i:05d}_{rows}.npz"


def _shard_rows(name: str) -> int:
    return int(name.rsplit("_", 1)[1].split(".")[0])


def _npz(arrays: dict[str, np.ndarray]) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


# ---------------------------------------------------------------------------- reading


@dataclasses.dataclass(frozen=True)
class Dataset:
    """A loaded teacher dataset, time-major `[rows, envs]`, on device.

    `obs` holds whole observations (MinAtar) or single frames (Atari, `stack` = 4); `q` the
    teacher's Q-values `[rows, envs, actions]`. Use `batch(key, size)` for random minibatches
    or `observations(t, env)` to rebuild the observations at given rows.
    """

    env_id: str
    num_actions: int
    stack: int
    obs: jax.Array
    q: jax.Array
    action: jax.Array
    reward: jax.Array
    done: jax.Array
    first_row: int  # rows before this index are only history for stacks
    manifest: dict
    path: str

    @property
    def num_states(self) -> int:
        return (self.q.shape[0] - self.first_row) * self.q.shape[1]

    def as_replay(self) -> replay.Replay:
        return replay.Replay(
            self.obs, self.action, self.reward, self.done, jnp.asarray(self.q.shape[0], jnp.int32)
        )

    def observations(self, t: jax.Array, env: jax.Array) -> jax.Array:
        """Observations at rows `t` and env columns `env` `[batch]` in the env's format."""
        return replay.stacked(self.as_replay(), t, env, self.stack)

    def sample(self, key: jax.Array, batch_size: int) -> tuple[jax.Array, jax.Array]:
        """A uniform minibatch: (observations `[batch, *obs_shape]`, teacher q `[batch, A]`)."""
        return sample(self.arrays(), key, batch_size, self.stack, self.first_row)

    def arrays(self) -> dict[str, jax.Array]:
        """The arrays a jitted training loop takes as an argument."""
        return {
            "obs": self.obs,
            "q": self.q,
            "action": self.action,
            "reward": self.reward,
            "done": self.done,
        }


def sample(arrays: dict, key: jax.Array, batch_size: int, stack: int, first_row: int):
    """Pure minibatch sampling from `Dataset.arrays()`; jittable with static sizes."""
    rows, num_envs = arrays["q"].shape[:2]
    k_t, k_e = jax.random.split(key)
    t = jax.random.randint(k_t, (batch_size,), first_row, rows)
    env = jax.random.randint(k_e, (batch_size,), 0, num_envs)
    buffer = replay.Replay(
        arrays["obs"],
        arrays["action"],
        arrays["reward"],
        arrays["done"],
        jnp.asarray(rows, jnp.int32),
    )
    return replay.stacked(buffer, t, env, stack), arrays["q"][t, env]


def load_dataset(path: str, *, env_id: str | None = None) -> Dataset:
    """Read a finished dataset, checking every shard's checksum (and the env id, if given)."""
    folder = Path(path)
    manifest = checked_manifest(folder)
    if manifest.get("status") != "complete":
        raise CheckpointError(f"{folder}: dataset is unfinished; finish it with --resume")
    if env_id is not None and manifest["env_id"] != env_id:
        raise CheckpointError(
            f"{folder}: a dataset for {manifest['env_id']!r}, but {env_id!r} was asked for"
        )
    parts: dict[str, list[np.ndarray]] = {k: [] for k in ("obs", "q", "action", "reward", "done")}
    stack = int(manifest["stack"])
    obs_dtype, rows = _obs_dtype(manifest), 0
    for i, name in enumerate(manifest["shards"]):
        arrays = _read_shard(folder, name, manifest)
        rows += schema.check_shard(folder / name, arrays, manifest, obs_dtype)
        if i == 0 and stack > 1:
            # the first shard's history rows: zeros marked done, so stacks start padded
            parts["obs"].append(arrays["history_obs"])
            parts["done"].append(arrays["history_done"])
            h = arrays["history_obs"].shape[0]
            n = arrays["history_obs"].shape[1]
            parts["q"].append(np.zeros((h, n, manifest["num_actions"]), np.float32))
            parts["action"].append(np.zeros((h, n), np.int32))
            parts["reward"].append(np.zeros((h, n), np.float32))
        elif stack > 1 and arrays["history_done"].size:
            # a shard written after a resume starts fresh episodes: its history is marked done,
            # so cut the episode that the previous shard left open
            parts["done"][-1] = parts["done"][-1].copy()
            parts["done"][-1][-1] |= arrays["history_done"][-1]
        for k in parts:
            parts[k].append(arrays[k])
    schema.check_rows(folder / checkpoint.MANIFEST, manifest, rows)
    first_row = stack - 1 if stack > 1 else 0
    merged = {k: jnp.asarray(np.concatenate(v)) for k, v in parts.items()}
    return Dataset(
        env_id=manifest["env_id"],
        num_actions=int(manifest["num_actions"]),
        stack=stack,
        first_row=first_row,
        manifest=manifest,
        path=str(folder),
        **merged,
    )


def iter_shards(path: str) -> Iterator[dict[str, np.ndarray]]:
    """Shards one at a time, verified, for datasets too large to hold at once."""
    folder = Path(path)
    manifest = checked_manifest(folder)
    obs_dtype = _obs_dtype(manifest)
    for name in manifest["shards"]:
        arrays = _read_shard(folder, name, manifest)
        schema.check_shard(folder / name, arrays, manifest, obs_dtype)
        yield arrays


def checked_manifest(folder: Path) -> dict:
    """A dataset's manifest, checked against the dataset schema."""
    manifest = checkpoint.read_manifest(folder)
    if manifest.get("kind") != "dataset":
        raise CheckpointError(f"{folder}: holds a {manifest.get('kind')!r}, not a dataset")
    return schema.validate_kind(manifest, folder / checkpoint.MANIFEST)


def _obs_dtype(manifest: dict) -> np.dtype:
    return np.dtype(families.storage_dtype(envs.spec(manifest["env_id"])))


def _read_shard(folder: Path, name: str, manifest: dict) -> dict[str, np.ndarray]:
    """One shard's arrays, after its checksum (refused naming the shard)."""
    data = checkpoint.read_verified(folder, name, manifest)
    try:
        archive = np.load(io.BytesIO(data))
        return {k: archive[k] for k in archive.files}
    except Exception as e:
        raise CheckpointError(f"{folder / name}: unreadable shard ({e})") from e
