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
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from distill import acting, checkpoint, envs, families, replay, runs, xla
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


def generate(
    teacher_path: str,
    config: DatasetConfig,
    out: str,
    *,
    resume: bool = False,
    progress: bool = True,
) -> Path:
    """Let the teacher act and write its dataset to `out` (streamed in shards; resumable)."""
    policy = checkpoint.load(teacher_path)
    spec = policy.spec
    folder = Path(out)
    fingerprint = teacher_fingerprint(policy)
    config_dict = dataclasses.asdict(config)
    total_rows = config.rows
    per_shard = config.rows_per_shard
    num_shards = -(-total_rows // per_shard)
    shards: list[str] = []
    if (folder / checkpoint.MANIFEST).exists():
        kind = checkpoint.read_manifest(folder).get("kind")
        if kind != "dataset":
            raise CheckpointError(f"{folder}: holds a {kind!r}, not a dataset")
    manifest = checkpoint.previous_run(
        folder,
        resume,
        "dataset",
        lambda m: same_source(m.get("teacher"), fingerprint) and m.get("config") == config_dict,
        "another teacher or config",
    )
    if manifest is not None:
        if manifest.get("status") == "complete":
            return folder
        shards = list(manifest.get("shards", []))

    def write(status: str, files: dict[str, bytes], extra: dict, drop=()) -> None:
        manifest = {
            "kind": "dataset",
            "env_id": spec.env_id,
            "num_actions": spec.num_actions,
            "obs_shape": list(spec.obs_shape),
            "stack": stack_of(spec),
            "teacher": fingerprint,
            "config": config_dict,
            "status": status,
            "shards": shards,
            "rows": sum(_shard_rows(s) for s in shards),
            "num_envs": config.num_envs,
            **extra,
        }
        checkpoint.write_checkpoint(folder, files, manifest, drop)

    from tqdm.auto import tqdm

    bar = tqdm(
        total=total_rows * config.num_envs,
        initial=sum(_shard_rows(s) for s in shards) * config.num_envs,
        unit="state",
        unit_scale=True,
        desc=f"dataset {spec.env_id}",
        disable=not progress,
    )
    start = time.perf_counter()
    try:
        with runs.stop_on_signals() as stop:
            if spec.is_atari:
                _generate_atari(
                    policy,
                    config,
                    shards,
                    num_shards,
                    per_shard,
                    total_rows,
                    write,
                    bar,
                    stop,
                    folder,
                )
            else:
                _generate_gymnax(
                    policy,
                    config,
                    shards,
                    num_shards,
                    per_shard,
                    total_rows,
                    write,
                    bar,
                    stop,
                    folder,
                )
    finally:
        bar.close()
    write("complete", {}, {"wall_s": round(time.perf_counter() - start, 3)}, (GENERATOR_STATE,))
    return folder


def _shard_name(i: int, rows: int) -> str:
    return f"shard_{i:05d}_{rows}.npz"


def _shard_rows(name: str) -> int:
    return int(name.rsplit("_", 1)[1].split(".")[0])


def _npz(arrays: dict[str, np.ndarray]) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def _generate_gymnax(
    policy, config, shards, num_shards, per_shard, total_rows, write, bar, stop, folder
):
    init, shard = make_gymnax_generator(policy, config)
    shard = xla.jit(shard, static_argnums=2)
    state = init(jax.random.PRNGKey(config.seed))
    if shards:
        data = checkpoint.read_verified(folder, GENERATOR_STATE)
        state = checkpoint.pytree_from_bytes(
            data, state, str(checkpoint.path_of(folder, GENERATOR_STATE))
        )
    while len(shards) < num_shards:
        done_rows = sum(_shard_rows(s) for s in shards)
        rows = min(per_shard, total_rows - done_rows)
        state, record = shard(policy.params, state, rows)
        arrays = {k: np.asarray(v) for k, v in record.items()}
        if not np.isfinite(arrays["q"]).all():
            raise FloatingPointError(
                f"non-finite teacher Q-values in shard {len(shards)}; the teacher is damaged"
            )
        name = _shard_name(len(shards), rows)
        shards.append(name)
        write(
            "running", {name: _npz(arrays), GENERATOR_STATE: checkpoint.pytree_to_bytes(state)}, {}
        )
        bar.update(rows * config.num_envs)
        if stop.requested and len(shards) < num_shards:
            raise runs.Interrupted(
                f"{stop.signal_name}: {len(shards)} of {num_shards} shards saved in {folder}; "
                "continue with --resume"
            )


def _generate_atari(
    policy, config, shards, num_shards, per_shard, total_rows, write, bar, stop, folder
):
    """Two halves of the envs take turns: one half's emulators step while the network scores
    the other half's observations, so env threads and inference overlap."""
    if config.num_envs % 2:
        raise ConfigError(f"num_envs={config.num_envs} must be even for Atari (two halves)")
    spec = policy.spec
    half = config.num_envs // 2
    stack = stack_of(spec)
    frame, storage = families.frame_shape(spec), families.storage_dtype(spec)
    # A resumed Atari dataset continues with fresh episodes (the emulators' state is not saved).
    seed = config.seed + 1_000_003 * len(shards)
    halves = [envs.make_atari(spec.env_id, half, training=False) for _ in range(2)]
    obs = [envs.reset_in_env_order(h, seed + 7919 * i) for i, h in enumerate(halves)]
    act = acting.host_actor(policy.apply, config.epsilon)
    key = jax.random.PRNGKey(seed)
    history = {  # the rows before the shard, for rebuilding stacks: start of data = zeros, done
        "frames": np.zeros((stack - 1, config.num_envs, *frame), storage),
        "done": np.ones((stack - 1, config.num_envs), bool),
    }
    try:
        pending = []
        for i in range(2):
            key, k = jax.random.split(key)
            pending.append(act(policy.params, obs[i], k))  # dispatched asynchronously
        while len(shards) < num_shards:
            done_rows = sum(_shard_rows(s) for s in shards)
            rows = min(per_shard, total_rows - done_rows)
            buf = {
                "obs": np.zeros((rows, config.num_envs, *frame), storage),
                "q": np.zeros((rows, config.num_envs, spec.num_actions), np.float32),
                "action": np.zeros((rows, config.num_envs), np.int32),
                "reward": np.zeros((rows, config.num_envs), np.float32),
                "done": np.zeros((rows, config.num_envs), bool),
            }
            for r in range(rows):
                for i, env in enumerate(halves):
                    q, action = (np.asarray(x) for x in pending[i])
                    env.send(action.astype(np.int32))
                    cols = slice(i * half, (i + 1) * half)
                    buf["obs"][r, cols] = obs[i][:, -1]
                    buf["q"][r, cols] = q
                    buf["action"][r, cols] = action
                    obs[i], reward, term, trunc = envs.in_env_order(*env.recv())
                    buf["reward"][r, cols] = reward
                    buf["done"][r, cols] = term | trunc
                    key, k = jax.random.split(key)
                    pending[i] = act(policy.params, obs[i], k)
                if (r + 1) % 64 == 0:
                    bar.update(64 * config.num_envs)
            bar.update((rows % 64) * config.num_envs)
            if not np.isfinite(buf["q"]).all():
                raise FloatingPointError(
                    f"non-finite teacher Q-values in shard {len(shards)}; the teacher is damaged"
                )
            arrays = {
                **buf,
                "history_obs": history["frames"],
                "history_done": history["done"],
            }
            history = {
                "frames": buf["obs"][-(stack - 1) :],
                "done": buf["done"][-(stack - 1) :],
            }
            if rows < stack - 1:  # a tiny last shard: keep whatever history it can
                history = {
                    "frames": np.concatenate([arrays["history_obs"], buf["obs"]])[-(stack - 1) :],
                    "done": np.concatenate([arrays["history_done"], buf["done"]])[-(stack - 1) :],
                }
            name = _shard_name(len(shards), rows)
            shards.append(name)
            write("running", {name: _npz(arrays)}, {})
            if stop.requested and len(shards) < num_shards:
                raise runs.Interrupted(
                    f"{stop.signal_name}: {len(shards)} of {num_shards} shards saved in "
                    f"{folder}; continue with --resume"
                )
    finally:
        for h in halves:
            h.close()


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
    manifest = checkpoint.read_manifest(folder)
    if manifest.get("kind") != "dataset":
        raise CheckpointError(f"{folder}: holds a {manifest.get('kind')!r}, not a dataset")
    if manifest.get("status") != "complete":
        raise CheckpointError(f"{folder}: dataset is unfinished; finish it with --resume")
    if env_id is not None and manifest["env_id"] != env_id:
        raise CheckpointError(
            f"{folder}: a dataset for {manifest['env_id']!r}, but {env_id!r} was asked for"
        )
    parts: dict[str, list[np.ndarray]] = {k: [] for k in ("obs", "q", "action", "reward", "done")}
    stack = int(manifest["stack"])
    for i, name in enumerate(manifest["shards"]):
        data = checkpoint.read_verified(folder, name, manifest)
        try:
            archive = np.load(io.BytesIO(data))
            arrays = {k: archive[k] for k in archive.files}
        except Exception as e:
            raise CheckpointError(f"{folder / name}: unreadable shard ({e})") from e
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
    manifest = checkpoint.read_manifest(folder)
    for name in manifest["shards"]:
        data = checkpoint.read_verified(folder, name, manifest)
        archive = np.load(io.BytesIO(data))
        yield {k: archive[k] for k in archive.files}
