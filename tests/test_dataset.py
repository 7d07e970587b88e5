"""Teacher datasets: config validation, what `generate` writes and `load_dataset` reads back
(CartPole), determinism, bit-identical resume, refusals, coverage (the time-in-episode of a small
dataset against long play, Breakout-MinAtar's shipped teacher), and Atari frame storage with
stacks rebuilt on read (a small untrained Pong teacher in real ale-py envs).
"""

import dataclasses
import json
import shutil
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import DATASET_CONFIG, ENV

from distill import checkpoint, coverage, dataset, envs, networks, replay, runs
from distill.checkpoint import CheckpointError
from distill.config import ConfigError

PONG = "ALE/Pong-v5"


def manifest_of(folder):
    return json.loads((folder / "manifest.json").read_text())


def shard_hashes(folder):
    manifest = manifest_of(folder)
    return [manifest["files"][name] for name in manifest["shards"]]


class StopAtOnce(runs.StopRequest):
    """A stop request that has already arrived: the job stops after its first saved piece."""

    def __init__(self):
        super().__init__()
        self.requested = True
        self.signal_name = "SIGTERM"


# ---------------------------------------------------------------------------- config


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("states", 0),
        ("states", 8),  # fewer than num_envs = 16
        ("num_envs", -1),
        ("shard_states", True),
        ("epsilon", 1.5),
        ("epsilon", -0.1),
        ("seed", 1.5),
        ("stagger", -1),
        ("stagger", 2.5),
        ("stagger", True),
    ],
)
def test_config_rejects_bad_values_naming_the_field(field, value):
    kwargs = {"states": 64, "num_envs": 16, field: value}
    with pytest.raises(ConfigError, match=rf"^{field}="):
        dataset.DatasetConfig(**kwargs)


def test_config_rows():
    assert (DATASET_CONFIG.rows, DATASET_CONFIG.rows_per_shard) == (625, 512)
    config = dataset.DatasetConfig(states=5_000, num_envs=16, shard_states=2_048)
    assert (config.rows, config.rows_per_shard) == (312, 128)  # shards of 128, 128 and 56 rows
    small = dataset.DatasetConfig(states=100, num_envs=10, shard_states=1_000_000)
    assert (small.rows, small.rows_per_shard) == (10, 10)  # one shard, never more than all rows
    assert dataset.DatasetConfig(states=64, num_envs=16, shard_states=4).rows_per_shard == 1


# ---------------------------------------------------------------------------- CartPole


def test_manifest_counts_and_teacher(cartpole_dataset, trained_cartpole):
    teacher_folder, policy = trained_cartpole
    manifest = manifest_of(cartpole_dataset)
    assert manifest["kind"] == "dataset" and manifest["status"] == "complete"
    assert manifest["env_id"] == ENV and manifest["num_actions"] == 2
    assert manifest["stack"] == 1 and manifest["obs_shape"] == [4]
    assert manifest["rows"] == 625 and manifest["num_envs"] == 64
    assert [dataset._shard_rows(s) for s in manifest["shards"]] == [512, 113]
    assert manifest["config"] == {
        "states": 40_000,
        "num_envs": 64,
        "shard_states": 32_768,
        "epsilon": 0.05,
        "seed": 0,
        "stagger": None,
    }
    assert manifest["stagger"] == 500  # unset: CartPole's longest episode
    assert manifest["teacher"]["params_sha256"] == policy.manifest["files"]["params.npz"]
    assert manifest["teacher"]["params_sha256"] == checkpoint.sha256_file(
        checkpoint.path_of(teacher_folder, "params.npz")
    )
    assert manifest["teacher"]["env_id"] == ENV and manifest["teacher"]["net"] == "teacher"
    assert set(manifest["files"]) == set(manifest["shards"])  # the generator state is gone
    assert not list(cartpole_dataset.glob("generator_state*"))
    for name in manifest["shards"]:
        path = checkpoint.path_of(cartpole_dataset, name, manifest)
        assert checkpoint.sha256_file(path) == manifest["files"][name]


def test_load_dataset_shapes(cartpole_dataset):
    data = dataset.load_dataset(str(cartpole_dataset), env_id=ENV)
    assert (data.env_id, data.num_actions, data.stack, data.first_row) == (ENV, 2, 1, 0)
    assert data.obs.shape == (625, 64, 4) and data.obs.dtype == jnp.float32
    assert data.q.shape == (625, 64, 2) and data.q.dtype == jnp.float32
    assert data.action.shape == data.reward.shape == data.done.shape == (625, 64)
    assert data.action.dtype == jnp.int32 and data.done.dtype == jnp.bool_
    assert data.num_states == 40_000
    assert np.isfinite(np.asarray(data.q)).all()
    np.testing.assert_array_equal(data.reward, 1.0)  # CartPole pays 1 per step
    assert 0 < int(data.done.sum()) < 40_000 // 20  # episodes end, but not every few steps
    shards = list(dataset.iter_shards(str(cartpole_dataset)))
    assert [s["q"].shape[0] for s in shards] == [512, 113]
    np.testing.assert_array_equal(np.concatenate([s["obs"] for s in shards]), data.obs)
    sample = jax.jit(dataset.sample, static_argnums=(2, 3, 4))  # what Dataset.sample calls
    obs, q = sample(data.arrays(), jax.random.PRNGKey(0), 32, data.stack, data.first_row)
    assert obs.shape == (32, 4) and q.shape == (32, 2)


def test_recorded_q_is_the_teachers(cartpole_dataset, trained_cartpole):
    _, policy = trained_cartpole
    data = dataset.load_dataset(str(cartpole_dataset))
    rows = np.array([0, 1, 511, 512, 600, 624])
    obs = np.asarray(data.obs)[rows].reshape(-1, 4)
    q = np.asarray(policy.q_values(jnp.asarray(obs)))
    np.testing.assert_allclose(q, np.asarray(data.q)[rows].reshape(-1, 2), rtol=1e-5, atol=1e-4)


def test_actions_are_epsilon_greedy(cartpole_dataset):
    data = dataset.load_dataset(str(cartpole_dataset))
    greedy = np.asarray(data.action) == np.argmax(np.asarray(data.q), axis=-1)
    # epsilon 0.05 with 2 actions: a random action differs from the greedy one half the time
    assert 0.95 < greedy.mean() < 0.995, greedy.mean()


def test_epsilon_zero_is_greedy(tmp_path, trained_cartpole):
    config = dataset.DatasetConfig(states=512, num_envs=16, shard_states=4_096, epsilon=0.0)
    folder = dataset.generate(str(trained_cartpole[0]), config, str(tmp_path / "d"), progress=False)
    data = dataset.load_dataset(str(folder))
    np.testing.assert_array_equal(data.action, jnp.argmax(data.q, axis=-1))


def test_same_seed_same_shards_other_seed_other_shards(
    tmp_path, cartpole_dataset, trained_cartpole
):
    teacher_folder = str(trained_cartpole[0])
    again = dataset.generate(teacher_folder, DATASET_CONFIG, str(tmp_path / "a"), progress=False)
    assert shard_hashes(again) == shard_hashes(cartpole_dataset)
    other_config = dataclasses.replace(DATASET_CONFIG, seed=1)
    other = dataset.generate(teacher_folder, other_config, str(tmp_path / "b"), progress=False)
    assert len(shard_hashes(other)) == 2
    assert not set(shard_hashes(other)) & set(shard_hashes(cartpole_dataset))


def test_interrupted_then_resumed_is_bit_identical(
    tmp_path, monkeypatch, cartpole_dataset, trained_cartpole
):
    teacher_folder = str(trained_cartpole[0])
    folder = tmp_path / "cut"
    with monkeypatch.context() as m:
        m.setattr(runs, "StopRequest", StopAtOnce)
        with pytest.raises(runs.Interrupted, match=r"^SIGTERM: 1 of 2 shards saved"):
            dataset.generate(teacher_folder, DATASET_CONFIG, str(folder), progress=False)
    manifest = manifest_of(folder)
    assert manifest["status"] == "running" and manifest["rows"] == 512
    assert manifest["shards"] == ["shard_00000_512.npz"]
    assert set(manifest["files"]) == {"shard_00000_512.npz", dataset.GENERATOR_STATE}
    assert checkpoint.path_of(folder, dataset.GENERATOR_STATE).is_file()
    with pytest.raises(CheckpointError, match="unfinished"):
        dataset.load_dataset(str(folder))
    with pytest.raises(ConfigError, match="--resume"):
        dataset.generate(teacher_folder, DATASET_CONFIG, str(folder), progress=False)

    dataset.generate(teacher_folder, DATASET_CONFIG, str(folder), resume=True, progress=False)
    manifest = manifest_of(folder)
    assert manifest["status"] == "complete" and manifest["rows"] == 625
    assert manifest["shards"] == manifest_of(cartpole_dataset)["shards"]
    assert shard_hashes(folder) == shard_hashes(cartpole_dataset)
    assert not list(folder.glob("generator_state*"))
    assert dataset.GENERATOR_STATE not in manifest["files"]


# ---------------------------------------------------------------------------- refusals


def test_refuses_a_finished_folder_without_resume(cartpole_dataset, trained_cartpole):
    with pytest.raises(ConfigError, match="already holds a finished dataset"):
        dataset.generate(
            str(trained_cartpole[0]), DATASET_CONFIG, str(cartpole_dataset), progress=False
        )
    # with resume, a finished dataset is simply returned
    folder = dataset.generate(
        str(trained_cartpole[0]),
        DATASET_CONFIG,
        str(cartpole_dataset),
        resume=True,
        progress=False,
    )
    assert folder == cartpole_dataset and manifest_of(folder)["status"] == "complete"


def test_resume_with_another_config_or_teacher_is_refused(
    tmp_path, cartpole_dataset, trained_cartpole
):
    other_config = dataclasses.replace(DATASET_CONFIG, seed=3)
    with pytest.raises(CheckpointError, match="another teacher or config"):
        dataset.generate(
            str(trained_cartpole[0]),
            other_config,
            str(cartpole_dataset),
            resume=True,
            progress=False,
        )
    # an untrained CartPole teacher: same env and network, other parameters
    module = networks.build("teacher", (4,), 2)
    params = networks.init_params(module, jax.random.PRNGKey(7), (4,), jnp.float32)
    other_teacher = tmp_path / "other_teacher"
    checkpoint.save_policy(
        other_teacher,
        params,
        checkpoint.policy_manifest("teacher", ENV, "teacher", 2, {}, status="complete"),
    )
    with pytest.raises(CheckpointError, match="another teacher or config"):
        dataset.generate(
            str(other_teacher), DATASET_CONFIG, str(cartpole_dataset), resume=True, progress=False
        )


def test_corrupted_shard_is_refused_naming_it(tmp_path, cartpole_dataset):
    folder = tmp_path / "copy"
    shutil.copytree(cartpole_dataset, folder)
    name = manifest_of(folder)["shards"][1]
    path = checkpoint.path_of(folder, name)
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0x01
    path.write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match=rf"{path.name}: checksum mismatch"):
        dataset.load_dataset(str(folder))


def test_load_for_another_env_is_refused_naming_both(cartpole_dataset):
    with pytest.raises(CheckpointError) as err:
        dataset.load_dataset(str(cartpole_dataset), env_id="Breakout-MinAtar")
    assert "'CartPole-v1'" in str(err.value) and "'Breakout-MinAtar'" in str(err.value)


def test_load_refuses_a_teacher_folder(trained_cartpole):
    with pytest.raises(CheckpointError, match="not a dataset"):
        dataset.load_dataset(str(trained_cartpole[0]))


# ---------------------------------------------------------------------------- coverage

BREAKOUT_TEACHER = Path(__file__).resolve().parents[1] / "data" / "teachers" / "Breakout-MinAtar"


def test_time_in_episode_is_recorded_and_counted(cartpole_dataset):
    data = dataset.load_dataset(str(cartpole_dataset))
    t, done = np.asarray(data.t), np.asarray(data.done)
    assert t.shape == (625, 64) and t.dtype == np.int32 and t.min() >= 0
    # t counts the steps since the episode's reset: +1 a step, 0 after an episode's end
    np.testing.assert_array_equal(t[1:], np.where(done[:-1], 0, t[:-1] + 1))
    assert len(np.unique(t[0])) > 32  # staggered starts: the envs begin far apart
    cov = manifest_of(cartpole_dataset)["coverage"]
    assert cov["stagger"] == 500 and cov["episodes"] == int(done.sum()) > 0
    assert cov["mean_episode_length"] == round(float((t[done] + 1).mean()), 2)
    assert cov["t_edges"] == list(range(0, 501, 25)) and sum(cov["t_counts"]) == 40_000
    assert cov["mean_t"] == round(float(t.mean()), 2)  # exact, not from the bins
    want, _ = np.histogram(t, bins=cov["t_edges"])
    assert cov["t_counts"] == want.tolist()
    assert coverage.summary_line(cov).startswith("coverage: stagger W=500, ")
    rows = json.loads((cartpole_dataset / "metrics.json").read_text())
    assert [r["shard"] for r in rows] == manifest_of(cartpole_dataset)["shards"]


def test_atari_histogram_spans_the_steps_a_state_can_have():
    # 100,000 states from 64 envs after a 2,000-step warm-up: t < 3,563, not Atari's 27,000
    edges = coverage.hist_edges(envs.spec("ALE/Breakout-v5"), 2_000, 1_563)
    assert edges[0] == 0 and edges[-1] == 3_563 and len(edges) == coverage.HIST_BINS + 1
    assert coverage.hist_edges(envs.spec("ALE/Breakout-v5"))[-1] == 27_000
    # a binned mean for shards recorded before the exact sum
    old = [{"episodes": 1, "episode_steps": 10, "t_counts": [2] + [0] * 19}]
    assert coverage.summarise(old, np.arange(0, 21), 0)["mean_t"] == 0.5


def test_a_dataset_made_before_t_still_loads(tmp_path, cartpole_dataset):
    folder = tmp_path / "old"
    shutil.copytree(cartpole_dataset, folder)
    manifest = manifest_of(folder)
    for name in manifest["shards"]:
        path = checkpoint.path_of(folder, name, manifest)
        with np.load(path) as archive:
            arrays = {k: archive[k] for k in archive.files if k != "t"}
        path.write_bytes(dataset._npz(arrays))
        manifest["files"][name] = checkpoint.sha256_file(path)
    del manifest["coverage"]
    (folder / "manifest.json").write_text(json.dumps(manifest))
    old, new = dataset.load_dataset(str(folder)), dataset.load_dataset(str(cartpole_dataset))
    assert old.t is None and old.num_states == new.num_states
    np.testing.assert_array_equal(old.obs, new.obs)
    assert "not recorded" in coverage.summary_line(old.manifest.get("coverage"))


def ks_statistic(a: np.ndarray, b: np.ndarray) -> float:
    """The two-sample Kolmogorov-Smirnov statistic: the largest gap between the two ECDFs."""
    a, b = np.sort(a.ravel()), np.sort(b.ravel())
    grid = np.union1d(a, b)
    cdf = lambda x: np.searchsorted(x, grid, side="right") / x.size  # noqa: E731
    return float(np.abs(cdf(a) - cdf(b)).max())


@pytest.fixture(scope="module")
def breakout_times(tmp_path_factory):
    """Time-in-episode `t` of the shipped Breakout-MinAtar teacher's play (epsilon 0.05):
    {'long': 8 envs x 4,096 steps from reset, 'staggered' and 'together': 2,048 states from
    64 envs with the default W and W = 0}, each (t `[rows, envs]`, manifest)."""
    root = tmp_path_factory.mktemp("breakout")
    configs = {
        "long": dataset.DatasetConfig(states=32_768, num_envs=8, stagger=0, seed=1),
        "staggered": dataset.DatasetConfig(states=2_048, num_envs=64),
        "together": dataset.DatasetConfig(states=2_048, num_envs=64, stagger=0),
    }
    out = {}
    for name, config in configs.items():
        folder = dataset.generate(str(BREAKOUT_TEACHER), config, str(root / name), progress=False)
        data = dataset.load_dataset(str(folder))
        out[name] = (np.asarray(data.t), data.manifest)
    return out


def test_a_small_dataset_samples_where_long_play_is(breakout_times):
    """Two-sample KS on time-in-episode, small dataset vs long play, against the bound at
    alpha = 0.001, c(alpha) * sqrt(1/n + 1/m), with effective sample sizes: a small dataset's
    64 envs each give one draw (32 consecutive steps of one env are one offset plus 0..31), and
    long play's completed episodes each one sweep of t. Without staggering (W = 0) the small
    dataset holds only t < 32 and fails the same bound."""
    long_t, long_manifest = breakout_times["long"]
    episodes = long_manifest["coverage"]["episodes"]
    assert episodes > 100  # long play: the start from reset is a small part of it
    c_alpha = np.sqrt(-np.log(0.001 / 2) / 2)
    bound = c_alpha * np.sqrt(1 / 64 + 1 / episodes)
    staggered = ks_statistic(breakout_times["staggered"][0], long_t)
    together = ks_statistic(breakout_times["together"][0], long_t)
    assert staggered < bound < together, (staggered, bound, together)
    assert breakout_times["together"][0].max() == 31 and breakout_times["staggered"][0].max() > 200
    assert breakout_times["staggered"][1]["coverage"]["stagger"] == 1000  # MinAtar's longest


# ---------------------------------------------------------------------------- Atari


def random_params(net, obs_shape, num_actions, dtype, seed=0):
    """Untrained parameters of `net`, filled on the host: scaled normal kernels, zero biases.

    (Flax's own initialisers, run eagerly or compiled, take seconds for the Atari teacher.)
    """
    module = networks.build(net, obs_shape, num_actions)
    shapes = jax.eval_shape(
        lambda k: networks.init_params(module, k, obs_shape, dtype), jax.random.PRNGKey(0)
    )
    rng = np.random.default_rng(seed)

    def fill(leaf):
        if len(leaf.shape) < 2:
            return jnp.zeros(leaf.shape, leaf.dtype)
        fan_in = int(np.prod(leaf.shape[:-1]))
        return jnp.asarray(rng.standard_normal(leaf.shape) / np.sqrt(fan_in), leaf.dtype)

    return jax.tree_util.tree_map(fill, shapes)


class RecordingEnv:
    """An AtariVectorEnv that keeps every observation it returns, in env order."""

    def __init__(self, env):
        self.env = env
        self.observations = []  # [calls] of [envs, 4, 84, 84]: reset, then every recv

    def _keep(self, obs, info):
        self.observations.append(np.array(obs[np.argsort(info["env_id"])]))

    def reset(self, **kwargs):
        obs, info = self.env.reset(**kwargs)
        self._keep(obs, info)
        return obs, info

    def send(self, actions):
        self.env.send(actions)

    def recv(self):
        out = self.env.recv()
        self._keep(out[0], out[4])
        return out

    def close(self):
        self.env.close()


@pytest.fixture(scope="module")
def pong_dataset(tmp_path_factory):
    """An untrained Pong teacher's dataset of 4 envs x 64 rows in 2 shards, with the 4-frame
    stacks that the envs themselves returned: (folder, [half][call] of `[2, 4, 84, 84]`).

    Episodes are cut at 160 frames (about 40 agent steps with the no-ops) so that every env
    ends at least one episode within the data.
    """
    root = tmp_path_factory.mktemp("pong")
    checkpoint.save_policy(
        root / "teacher",
        random_params("teacher", (4, 84, 84), 6, jnp.uint8),
        checkpoint.policy_manifest("teacher", PONG, "teacher", 6, {}, status="complete"),
    )
    made = []
    make_atari = envs.make_atari

    def recording(*args, **kwargs):
        made.append(RecordingEnv(make_atari(*args, **kwargs)))
        return made[-1]

    # W = 0: the stacks below are compared with the envs' from reset; staggering: its own test
    config = dataset.DatasetConfig(states=256, num_envs=4, shard_states=128, stagger=0)
    with pytest.MonkeyPatch.context() as m:
        m.setattr(envs, "make_atari", recording)
        m.setattr(envs, "ATARI_MAX_FRAMES", 160)
        dataset.generate(str(root / "teacher"), config, str(root / "data"), progress=False)
    envs.spec.cache_clear()  # a Pong spec cached under the patch would keep 40-step episodes
    assert len(made) == 2  # two halves of 2 envs
    return root / "data", [r.observations for r in made]


def env_stacks(observations, rows):
    """The stacks the teacher acted on: `[rows, envs, 4, 84, 84]`, halves side by side."""
    return np.concatenate([np.stack(half[:rows]) for half in observations], axis=1)


def test_atari_stores_single_frames(pong_dataset):
    folder, observations = pong_dataset
    manifest = manifest_of(folder)
    assert manifest["stack"] == 4 and manifest["obs_shape"] == [4, 84, 84]
    assert manifest["rows"] == 64 and [dataset._shard_rows(s) for s in manifest["shards"]] == [
        32,
        32,
    ]
    on_disk = sum(checkpoint.path_of(folder, n).stat().st_size for n in manifest["shards"])
    assert on_disk / 256 < 10_000  # a 4-frame stack would be 28 KB a state
    data = dataset.load_dataset(str(folder), env_id=PONG)
    assert data.first_row == 3 and data.num_states == 256
    assert data.obs.shape == (67, 4, 84, 84) and data.obs.dtype == jnp.uint8
    assert data.q.shape == (67, 4, 6) and np.isfinite(np.asarray(data.q)).all()
    # the history rows before the data: blank frames, marked as episode ends
    assert not np.asarray(data.obs[:3]).any() and np.asarray(data.done[:3]).all()
    stacks = env_stacks(observations, 64)
    # the stored frame is the newest frame of the stack the teacher acted on
    np.testing.assert_array_equal(data.obs[3:], stacks[:, :, -1])
    done = np.asarray(data.done[3:])
    assert done.any(axis=0).all(), "every env should end an episode within the data"


def test_atari_recorded_q_is_the_teachers(pong_dataset):
    folder, observations = pong_dataset
    data = dataset.load_dataset(str(folder))
    policy = checkpoint.load(folder.parent / "teacher")
    stacks = env_stacks(observations, 64)
    rows = [0, 31, 32, 63]
    q = policy.q_values(jnp.asarray(stacks[rows].reshape(-1, 4, 84, 84)))
    want = np.asarray(data.q)[np.array(rows) + 3].reshape(-1, 6)
    np.testing.assert_allclose(np.asarray(q), want, rtol=1e-4, atol=1e-5)


@pytest.fixture(scope="module")
def pong_stacks(pong_dataset):
    """(stacks rebuilt by `Dataset.observations`, the env's own stacks, done), each per
    `[row, env]` of the 64 rows of data."""
    folder, observations = pong_dataset
    data = dataset.load_dataset(str(folder))
    rows, num_envs = 64, 4
    t = np.repeat(np.arange(rows), num_envs) + data.first_row
    env = np.tile(np.arange(num_envs), rows)
    stacked = jax.jit(replay.stacked, static_argnums=3)  # what Dataset.observations calls
    rebuilt = np.asarray(stacked(data.as_replay(), jnp.asarray(t), jnp.asarray(env), data.stack))
    rebuilt = rebuilt.reshape(rows, num_envs, 4, 84, 84)
    return rebuilt, env_stacks(observations, rows), np.asarray(data.done[data.first_row :])


def test_atari_stacks_rebuilt_on_read_within_episodes(pong_stacks):
    """Stacks away from an episode's end equal the env's own, zero padding at the start included."""
    rebuilt, stacks, done = pong_stacks
    checked = 0
    for r in range(rebuilt.shape[0]):
        for e in range(rebuilt.shape[1]):
            if done[max(r - 4, 0) : r, e].any():
                continue  # within 4 rows after an episode end; see the test below
            np.testing.assert_array_equal(rebuilt[r, e], stacks[r, e], err_msg=f"row {r} env {e}")
            checked += 1
    assert checked > 150
    # the env pads its first stack with blank frames, and so does `stacked`
    assert not stacks[0, :, :3].any() and stacks[0, :, 3].any()


def test_atari_stacks_rebuilt_on_read_across_episode_ends(pong_stacks):
    rebuilt, stacks, done = pong_stacks
    assert done.any()
    bad = [
        (r, e)
        for r in range(rebuilt.shape[0])
        for e in range(rebuilt.shape[1])
        if not np.array_equal(rebuilt[r, e], stacks[r, e])
    ]
    assert not bad, f"rebuilt stacks differ from the env's at (row, env) {bad[:8]}"


def test_atari_staggered_starts(pong_dataset, tmp_path):
    """Each env restarts its episode before warm-up step W - o_i, so it starts recording o_i
    steps into an episode, and the history rows hold its stack's older frames."""
    teacher = pong_dataset[0].parent / "teacher"
    made = []
    make_atari = envs.make_atari

    def recording(*args, **kwargs):
        made.append(RecordingEnv(make_atari(*args, **kwargs)))
        return made[-1]

    config = dataset.DatasetConfig(states=32, num_envs=4, shard_states=32, stagger=6)
    with pytest.MonkeyPatch.context() as m:
        m.setattr(envs, "make_atari", recording)
        dataset.generate(str(teacher), config, str(tmp_path / "data"), progress=False)
    data = dataset.load_dataset(str(tmp_path / "data"))
    assert data.manifest["coverage"]["stagger"] == 6 and data.num_states == 32
    offsets = coverage.host_offsets(0, 4, 6)
    assert len(set(offsets.tolist())) > 1
    # a Pong episode outlasts these 14 steps: t is the offset, then one more a row
    t = np.asarray(data.t[data.first_row :])
    np.testing.assert_array_equal(t, offsets[None, :] + np.arange(8)[:, None])
    # every stack the teacher acted on, the first rows' included, is rebuilt from the data
    acted = env_stacks([half[-9:-1] for half in (r.observations for r in made)], 8)
    rows = np.arange(8) + data.first_row
    t_idx, env = np.repeat(rows, 4), np.tile(np.arange(4), 8)
    stacked = jax.jit(replay.stacked, static_argnums=3)
    rebuilt = np.asarray(stacked(data.as_replay(), jnp.asarray(t_idx), jnp.asarray(env), 4))
    np.testing.assert_array_equal(rebuilt.reshape(8, 4, 4, 84, 84), acted)


def test_same_source_ignores_where_the_folders_are():
    """A dataset's fingerprint holds its teacher's, path and all: cached students stay valid
    when the checkout (and so the teacher's folder) moves, and only then."""
    teacher = {"path": "/a/data/teachers/X", "env_id": "X", "params_sha256": "1" * 64}
    fp = {"path": "/a/runs/d", "env_id": "X", "teacher": teacher, "manifest_files": {"s": "2"}}
    moved = {**fp, "path": "/b/runs/d", "teacher": {**teacher, "path": "/b/data/teachers/X"}}
    assert dataset.same_source(fp, moved)
    other = {**moved, "teacher": {**moved["teacher"], "params_sha256": "3" * 64}}
    assert not dataset.same_source(fp, other)
    assert not dataset.same_source(fp, None)
