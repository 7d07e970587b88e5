"""Bad input refused in one line (issue 21): manifests against their schema, shards against their
manifest, checks before work, exit statuses, a full disk, two writers, --checkpoint-every."""

from __future__ import annotations

import errno
import io
import json
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_jobs import Counter

from distill import checkpoint, cli, dataset, jobs, networks, preflight, runs, schema, student
from distill import teacher as teacher_mod
from distill.checkpoint import CheckpointError
from distill.config import ConfigError

ENV = "CartPole-v1"


# ---------------------------------------------------------------- fixtures: tiny folders


@pytest.fixture
def policy_folder(tmp_path):
    module = networks.build("teacher", (4,), 2)
    params = networks.init_params(module, jax.random.PRNGKey(0), (4,), jnp.float32)
    manifest = checkpoint.policy_manifest("teacher", ENV, "teacher", 2, {}, status="complete")
    checkpoint.save_policy(tmp_path / "t", params, manifest)
    return tmp_path / "t"


def shard_arrays(rows=8, envs=4, actions=2, **change):
    rng = np.random.default_rng(0)
    arrays = {
        "obs": rng.normal(size=(rows, envs, 4)).astype(np.float32),
        "q": rng.normal(size=(rows, envs, actions)).astype(np.float32),
        "action": rng.integers(0, actions, (rows, envs)).astype(np.int32),
        "reward": np.ones((rows, envs), np.float32),
        "done": np.zeros((rows, envs), bool),
    }
    arrays.update(change)
    return {k: v for k, v in arrays.items() if v is not None}


def write_dataset(folder, arrays=None, rows=8, envs=4, **manifest_change):
    """A finished CartPole dataset of one shard, written as `generate` writes one."""
    arrays = shard_arrays(rows, envs) if arrays is None else arrays
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    name = f"shard_00000_{rows}.npz"
    manifest = {
        "kind": "dataset",
        "status": "complete",
        "env_id": ENV,
        "num_actions": 2,
        "obs_shape": [4],
        "stack": 1,
        "shards": [name],
        "rows": rows,
        "num_envs": envs,
        "teacher": {"path": "t"},
        "config": {},
        "metrics": [],
        "wall_s": 0.0,
        **manifest_change,
    }
    checkpoint.write_checkpoint(folder, {name: buf.getvalue()}, manifest)
    return folder


def edit_manifest(folder, **change):
    path = folder / checkpoint.MANIFEST
    manifest = json.loads(path.read_text())
    manifest.update(change)
    for k, v in change.items():
        if v is ...:
            del manifest[k]
    path.write_text(json.dumps(manifest))


def one_line(capsys) -> str:
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in captured.err, captured.err
    return lines[0]


# ---------------------------------------------------------------- 1. manifests against a schema


@pytest.mark.parametrize(
    "change, field",
    [
        ({"files": ["params.npz"]}, "'files'"),
        ({"paths": {"params.npz": "../../elsewhere.npz"}}, "'paths'"),
        ({"format_version": 99}, "'format_version'"),
        ({"status": "done"}, "'status'"),
        ({"net": ["teacher"]}, "'net'"),
        ({"num_actions": "2"}, "'num_actions'"),
        ({"env_id": 7}, "'env_id'"),
    ],
)
def test_a_policy_manifest_of_the_wrong_shape_names_file_and_field(policy_folder, change, field):
    edit_manifest(policy_folder, **change)
    with pytest.raises(CheckpointError, match=field) as e:
        checkpoint.load(policy_folder)
    assert str(policy_folder / checkpoint.MANIFEST) in str(e.value)
    assert len(str(e.value).splitlines()) == 1


@pytest.mark.parametrize(
    "change, field",
    [
        ({"shards": 3}, "'shards'"),
        ({"stack": ...}, "'stack' is missing"),
        ({"num_actions": "2"}, "'num_actions'"),
        ({"rows": -1}, "'rows'"),
        ({"obs_shape": "4"}, "'obs_shape'"),
        ({"shards": ["../shard_00000_8.npz"]}, "'shards'"),
    ],
)
def test_a_dataset_manifest_of_the_wrong_shape_names_file_and_field(tmp_path, change, field):
    folder = write_dataset(tmp_path / "d")
    edit_manifest(folder, **change)
    for read in (dataset.load_dataset, lambda p: list(dataset.iter_shards(p))):
        with pytest.raises(CheckpointError, match=field) as e:
            read(str(folder))
        assert str(folder / checkpoint.MANIFEST) in str(e.value)


def test_a_running_job_manifest_is_checked_on_resume(tmp_path, monkeypatch):
    folder = tmp_path / "c"
    monkeypatch.setattr(runs, "StopRequest", _StopAtOnce)
    with pytest.raises(runs.Interrupted):
        jobs.run(Counter(), folder, progress=False)
    monkeypatch.undo()
    edit_manifest(folder, metrics={"steps": 3})
    with pytest.raises(CheckpointError, match="field 'metrics' must be a list"):
        jobs.run(Counter(), folder, resume=True, progress=False)
    edit_manifest(folder, metrics=[], status=...)
    with pytest.raises(CheckpointError, match="field 'status' is missing"):
        jobs.run(Counter(), folder, resume=True, progress=False)


def test_a_hand_written_manifest_in_the_cli_is_one_line(capsys, policy_folder):
    edit_manifest(policy_folder, num_actions="2")
    assert cli.main(["evaluate", str(policy_folder), "--episodes", "2"]) == 2
    line = one_line(capsys)
    assert "num_actions" in line and str(policy_folder) in line


# ---------------------------------------------------------------- 2. shards against the manifest


@pytest.mark.parametrize(
    "change, message",
    [
        ({"q": None}, "shard has no q"),
        ({"q": np.zeros((10, 4, 2), np.float32)}, "'q' is [10, 4, 2] float32, expected [8, 4, 2]"),
        ({"q": np.zeros((8, 4, 3), np.float32)}, "expected [8, 4, 2]"),
        ({"q": np.zeros((8, 4, 2), np.float64)}, "float64, expected [8, 4, 2] float32"),
        ({"q": np.full((8, 4, 2), np.nan, np.float32)}, "NaN or infinite teacher Q-values"),
        ({"obs": np.zeros((8, 4, 5), np.float32)}, "'obs' is [8, 4, 5]"),
        ({"action": np.full((8, 4), 7, np.int32)}, "outside [0, 2)"),
        ({"done": np.zeros((8, 4), np.int32)}, "'done' is [8, 4] int32"),
        ({"t": np.zeros((8, 4), np.int64)}, "'t' is [8, 4] int64"),
    ],
)
def test_a_shard_that_disagrees_with_its_manifest_is_refused_by_name(tmp_path, change, message):
    folder = write_dataset(tmp_path / "d", shard_arrays(**change))
    for read in (dataset.load_dataset, lambda p: list(dataset.iter_shards(p))):
        with pytest.raises(CheckpointError) as e:
            read(str(folder))
        assert message in str(e.value) and "shard_00000_8.npz" in str(e.value), str(e.value)


def test_a_shard_with_time_in_episode_is_accepted(tmp_path):
    t = np.tile(np.arange(8, dtype=np.int32)[:, None], (1, 4))
    folder = write_dataset(tmp_path / "d", shard_arrays(t=t))
    data = dataset.load_dataset(str(folder))
    assert data.num_states == 32 and data.q.shape == (8, 4, 2)
    assert (next(dataset.iter_shards(str(folder)))["t"] == t).all()


def test_rows_that_disagree_with_the_manifest_are_refused(tmp_path):
    folder = write_dataset(tmp_path / "d", rows=8)
    edit_manifest(folder, rows=9)
    with pytest.raises(CheckpointError, match="'rows' says 9 but the shards hold 8"):
        dataset.load_dataset(str(folder))


# ---------------------------------------------------------------- 3. exit statuses


def _raising(error):
    def fit(config, out, **kwargs):
        raise error

    return fit


@pytest.mark.parametrize(
    "error, status, text",
    [
        (FloatingPointError("non-finite TD loss at env step 512; no checkpoint"), 3, "stopped"),
        (OSError(errno.ENOSPC, "No space left on device", "/x/params.npz"), 74, "No space left"),
        (OSError(errno.EROFS, "Read-only file system", "/x"), 74, "Read-only"),
        (KeyboardInterrupt(), 130, "interrupted"),
    ],
)
def test_expected_failures_are_one_line_and_a_documented_status(
    capsys, tmp_path, monkeypatch, error, status, text
):
    monkeypatch.setattr(teacher_mod, "fit", _raising(error))
    argv = ["teacher", "--env", ENV, "--out", str(tmp_path / "t")]
    assert cli.main(argv) == status
    line = one_line(capsys)
    assert line.startswith("distill teacher: ") and text in line


def test_debug_gives_the_traceback_and_a_bug_keeps_it(tmp_path, monkeypatch):
    monkeypatch.setattr(teacher_mod, "fit", _raising(FloatingPointError("nan")))
    with pytest.raises(FloatingPointError):
        cli.main(["--debug", "teacher", "--env", ENV, "--out", str(tmp_path / "t")])
    monkeypatch.setattr(teacher_mod, "fit", _raising(RuntimeError("a bug")))
    with pytest.raises(RuntimeError):
        cli.main(["teacher", "--env", ENV, "--out", str(tmp_path / "t")])


# ---------------------------------------------------------------- 4. checks before work


def test_out_that_is_a_file_is_refused_before_work(capsys, tmp_path, monkeypatch):
    monkeypatch.setattr(teacher_mod, "fit", _raising(RuntimeError("must not start")))
    (tmp_path / "f").write_text("x")
    assert cli.main(["teacher", "--env", ENV, "--out", str(tmp_path / "f")]) == 2
    assert "is a file, not a folder" in one_line(capsys)
    assert cli.main(["teacher", "--env", ENV, "--out", str(tmp_path / "f" / "sub")]) == 2
    assert "is a file, not a folder" in one_line(capsys)
    assert cli.main(["evaluate", "--random", "--env", ENV, "--out", str(tmp_path)]) == 2
    assert "is a folder, not a file" in one_line(capsys)


def test_out_not_writable_is_refused_before_work(capsys, tmp_path, monkeypatch):
    monkeypatch.setattr(teacher_mod, "fit", _raising(RuntimeError("must not start")))
    monkeypatch.setattr(preflight.os, "access", lambda path, mode: False)
    assert cli.main(["teacher", "--env", ENV, "--out", str(tmp_path / "t")]) == 2
    assert "is not writable" in one_line(capsys)


def test_too_little_free_disk_is_refused_before_work(capsys, tmp_path, monkeypatch):
    monkeypatch.setattr(teacher_mod, "fit", _raising(RuntimeError("must not start")))
    free = lambda path: type("U", (), {"free": 10 << 20})()  # noqa: E731
    monkeypatch.setattr(preflight.shutil, "disk_usage", free)
    assert cli.main(["teacher", "--env", ENV, "--out", str(tmp_path / "t")]) == 2
    line = one_line(capsys)
    assert "MiB" in line and "10 MiB free" in line
    assert not (tmp_path / "t").exists()


def test_estimates_grow_with_what_is_written(policy_folder):
    small = teacher_mod.default_config(ENV, buffer_size=1024)
    large = teacher_mod.default_config(ENV, buffer_size=1 << 20)
    assert preflight.teacher_bytes(large) - preflight.teacher_bytes(small) == 2 * (
        (1 << 20) - 1024
    ) * (4 * 4 + 9)
    few, many = dataset.DatasetConfig(states=1000), dataset.DatasetConfig(states=2000)
    per_state = 4 * 4 + 4 * 2 + 13
    grow = preflight.dataset_bytes(many, policy_folder) - preflight.dataset_bytes(
        few, policy_folder
    )
    assert grow == 1000 * per_state


@pytest.mark.parametrize(
    "argv, message",
    [
        (["student", "--dataset", "{d}", "--tau", "inf"], "tau"),
        (["student", "--dataset", "{d}", "--lr", "nan"], "lr"),
        (["student", "--dataset", "{d}", "--batch-size", "33"], "only 32 states"),
        (["experiment", "losses", "--tau", "inf"], "--tau=inf"),
        (["evaluate", "--random", "--env", ENV, "--epsilon", "2"], "--epsilon=2.0"),
        (["evaluate", "--random", "--env", ENV, "--epsilon", "-1"], "--epsilon=-1.0"),
    ],
)
def test_values_out_of_range_are_refused(capsys, tmp_path, argv, message):
    folder = write_dataset(tmp_path / "d")
    out = [] if argv[0] == "evaluate" else ["--out", str(tmp_path / "out")]
    assert cli.main([a.format(d=folder) for a in argv] + out) == 2
    assert message in one_line(capsys)
    assert not (tmp_path / "out").exists()


def test_the_config_refuses_an_infinite_tau():
    with pytest.raises(ConfigError, match="tau=inf"):
        student.StudentConfig(tau=float("inf"))


# ---------------------------------------------------------------- 5. one writer per folder

HOLDER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from distill import runs
    with runs.folder_lock(Path(sys.argv[1])):
        print("locked", flush=True)
        time.sleep(60)
    """
)


def test_a_second_writer_is_refused_at_once_with_the_holders_pid(capsys, tmp_path):
    folder = tmp_path / "c"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(folder)], stdout=subprocess.PIPE, text=True, env=env
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(runs.FolderLocked, match=rf"pid {holder.pid}\)"):
            jobs.run(Counter(), folder, progress=False)
        assert not (folder / checkpoint.MANIFEST).exists()
        with pytest.raises(runs.FolderLocked):
            jobs.run(Counter(), folder, resume=True, progress=False)
    finally:
        holder.kill()
        holder.wait()
    # the holder died: its lock file is stale and the next writer takes it over
    assert (folder / runs.LOCK).read_text().strip() == str(holder.pid)
    assert jobs.run(Counter(), folder, progress=False) == 15.0
    assert not (folder / runs.LOCK).exists()


def test_a_locked_folder_in_the_cli_is_one_line(capsys, tmp_path, monkeypatch):
    out = tmp_path / "t"

    def fit(config, out, **kwargs):
        return jobs.run(Counter(), out, progress=False)

    monkeypatch.setattr(teacher_mod, "fit", fit)
    with runs.folder_lock(out):
        assert cli.main(["teacher", "--env", ENV, "--out", str(out)]) == 2
    assert f"pid {os.getpid()}" in one_line(capsys)


def test_a_damaged_running_folder_is_named_as_damaged(tmp_path, monkeypatch):
    folder = tmp_path / "c"
    monkeypatch.setattr(runs, "StopRequest", _StopAtOnce)
    with pytest.raises(runs.Interrupted):
        jobs.run(Counter(), folder, progress=False)
    monkeypatch.undo()
    checkpoint.path_of(folder, checkpoint.TRAIN_STATE).write_bytes(b"torn")
    with pytest.raises(CheckpointError, match="is damaged and cannot be resumed"):
        jobs.run(Counter(), folder, resume=True, progress=False)


def test_a_run_that_wrote_nothing_leaves_no_folder(tmp_path):
    with pytest.raises(FloatingPointError, match="no checkpoint was written"):
        jobs.run(Counter(nan_at=1), tmp_path / "fresh", progress=False)
    assert not (tmp_path / "fresh").exists()


def test_a_resume_into_a_folder_with_only_a_stale_lock_starts_afresh(tmp_path):
    folder = tmp_path / "c"
    folder.mkdir()
    (folder / runs.LOCK).write_text("999999999\n")  # no such process
    assert jobs.run(Counter(), folder, resume=True, progress=False) == 15.0


# ---------------------------------------------------------------- a full disk


class _StopAtOnce(runs.StopRequest):
    def __init__(self):
        super().__init__()
        self.requested, self.signal_name = True, "SIGTERM"


def test_a_full_disk_keeps_the_last_checkpoint_and_resume_finishes(capsys, tmp_path, monkeypatch):
    folder, write = tmp_path / "c", checkpoint.atomic_write_bytes
    calls = []

    def full_after_first_checkpoint(path, data):
        calls.append(path)
        if (folder / checkpoint.MANIFEST).exists():
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        write(path, data)

    monkeypatch.setattr(checkpoint, "atomic_write_bytes", full_after_first_checkpoint)
    with pytest.raises(OSError, match="No space left"):
        jobs.run(Counter(every_s=0.0), folder, progress=False)
    monkeypatch.undo()
    m = checkpoint.read_manifest(folder)
    assert (m["status"], m["steps"]) == ("running", 3)  # the first checkpoint, whole
    assert not [p for p in folder.iterdir() if p.name.endswith(".tmp")]
    assert jobs.run(Counter(), folder, resume=True, progress=False) == 15.0

    # through the CLI: one line, exit 74
    def fit(config, out, **kwargs):
        return jobs.run(Counter(every_s=0.0), out, progress=False)

    monkeypatch.setattr(teacher_mod, "fit", fit)
    monkeypatch.setattr(checkpoint, "atomic_write_bytes", full_after_first_checkpoint)
    folder = tmp_path / "cli"
    assert cli.main(["teacher", "--env", ENV, "--out", str(folder)]) == 74
    assert "No space left on device" in one_line(capsys)


# ---------------------------------------------------------------- 6. checkpoint cadence


def test_checkpoint_every_reaches_every_long_job(tmp_path, monkeypatch):
    seen = {}

    def fit(*args, **kwargs):
        seen.update(kwargs)
        raise runs.Interrupted("stop")

    monkeypatch.setattr(teacher_mod, "fit", fit)
    assert cli.main(["teacher", "--env", ENV, "--out", str(tmp_path / "t")]) == 130
    assert "checkpoint_every_s" not in seen  # the job's own default
    argv = ["teacher", "--env", ENV, "--out", str(tmp_path / "t"), "--checkpoint-every", "30"]
    assert cli.main(argv) == 130 and seen["checkpoint_every_s"] == 30.0
    source = {"teacher": ["--env", ENV], "dataset": ["--teacher", "."]}
    source["student"] = ["--dataset", "."]
    for command, given in source.items():
        argv_ = [command, "--out", "o", "--checkpoint-every", "5", *given]
        args = cli.build_parser().parse_args(argv_)
        assert args.checkpoint_every == 5.0
    with pytest.raises(SystemExit) as e:
        cli.main([*argv[:-1], "-1"])
    assert e.value.code == 2


def test_the_first_checkpoint_comes_early(tmp_path, monkeypatch):
    written, write = [], checkpoint.write_checkpoint

    def counting(folder, files, manifest, drop=()):
        written.append(manifest["steps"])
        write(folder, files, manifest, drop)

    monkeypatch.setattr(checkpoint, "write_checkpoint", counting)
    job = Counter(every_s=1e9)
    job.first_checkpoint_s = 0.0
    jobs.run(job, tmp_path / "c", progress=False)
    assert written == [3, 10]  # one after the first chunk, then the finished one


def test_schema_describes_values_briefly():
    assert schema.describe("3") == "str '3'"
    assert schema.describe(list(range(100))) == "list"
