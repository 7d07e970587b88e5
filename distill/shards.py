"""Reading a teacher dataset (`distill.dataset` writes them): `load_dataset`, `Dataset`,
minibatch `sample`, and `iter_shards` for datasets too large to hold at once.

A dataset folder holds `manifest.json` and shards of `[rows, envs, ...]` arrays (obs, q,
action, reward, done, and t, the steps since each state's episode reset, in datasets made
since coverage was recorded); see `distill.dataset` for the layout.
"""

from __future__ import annotations

import dataclasses
import io
from collections.abc import Iterator
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from distill import checkpoint, envs, families, replay, schema
from distill.checkpoint import CheckpointError


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
    t: np.ndarray | None = None  # [rows, envs] steps since reset (-1: history); None: old data

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
    times: list[np.ndarray] | None = []  # time-in-episode, None once a shard lacks it
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
            times = None if times is None else [np.full((h, n), -1, np.int32)]
        elif stack > 1 and arrays["history_done"].size:
            # a shard written after a resume starts fresh episodes: its history is marked done,
            # so cut the episode that the previous shard left open
            parts["done"][-1] = parts["done"][-1].copy()
            parts["done"][-1][-1] |= arrays["history_done"][-1]
        for k in parts:
            parts[k].append(arrays[k])
        times = None if times is None or "t" not in arrays else [*times, arrays["t"]]
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
        t=None if times is None else np.concatenate(times),
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
    schema.check_kind(manifest, folder / checkpoint.MANIFEST, folder, "dataset", "dataset")
    schema.validate_kind(manifest, folder / checkpoint.MANIFEST)
    checkpoint.env_of(manifest, folder / checkpoint.MANIFEST)
    return manifest


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
