"""Bad input refused in one line, third round (issue 21, robust3's independent check): file names
outside the folder, implausible step counts, a missing `kind`, links to devices, SIGTERM during
start-up, an `--out` file that is not ours, non-finite observations, and the rest of the
misleading messages that check found (its cases: /work/scratch/robust3/cases.tsv)."""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from test_jobs import Counter
from test_robust import (
    ENV,
    _StopAtOnce,
    edit_manifest,
    one_line,
    policy_folder,
    shard_arrays,
    write_dataset,
)
from test_robust2 import wait_until_caught

from distill import checkpoint, cli, dataset, jobs, preflight, runs, schema
from distill.checkpoint import CheckpointError
from distill.config import ConfigError

__all__ = ["policy_folder"]  # a fixture, used by name

REPO = Path(__file__).resolve().parents[1]
SHA = "0" * 64


def _running_counter(tmp_path, monkeypatch) -> Path:
    folder = tmp_path / "c"
    monkeypatch.setattr(runs, "StopRequest", _StopAtOnce)
    with pytest.raises(runs.Interrupted):
        jobs.run(Counter(), folder, progress=False)
    monkeypatch.undo()
    return folder


# ---------------------------------------------------------------- names outside the folder


@pytest.mark.parametrize("name", ["../../etc/passwd", "/etc/passwd", "..", "a/b.npz", ""])
def test_a_file_name_outside_the_folder_is_refused(capsys, policy_folder, name):
    files = checkpoint.read_manifest(policy_folder)["files"]
    edit_manifest(policy_folder, files={**files, name: SHA})
    with pytest.raises(CheckpointError, match="field 'files' must be a mapping of plain file"):
        checkpoint.read_manifest(policy_folder)
    assert cli.main(["evaluate", str(policy_folder), "--episodes", "1"]) == 2
    assert "'files'" in one_line(capsys)


def test_a_running_manifest_naming_a_file_outside_is_refused_on_resume(tmp_path, monkeypatch):
    folder = _running_counter(tmp_path, monkeypatch)
    files = checkpoint.read_manifest(folder)["files"]
    edit_manifest(folder, files={**files, "../../../etc/passwd": SHA})
    with pytest.raises(CheckpointError, match="field 'files'"):
        jobs.run(Counter(), folder, resume=True, progress=False)


# ---------------------------------------------------------------- implausible step counts


@pytest.mark.parametrize(
    "value, message",
    [
        (10**15, "must be an integer in [0, 2,147,483,647]"),
        (-1, "must be an integer in [0, 2,147,483,647]"),
        ("4000", "must be an integer in [0"),
        (4000.0, "must be an integer in [0"),
        (True, "must be an integer in [0"),
        (60_000 + 9, "more than the config's total_steps (60,000) allow"),
    ],
)
def test_an_implausible_env_steps_is_refused_naming_the_field(policy_folder, value, message):
    edit_manifest(policy_folder, config={"total_steps": 60_000, "num_envs": 8}, env_steps=value)
    with pytest.raises(CheckpointError, match="field 'env_steps'") as e:
        checkpoint.load(policy_folder)
    assert message in str(e.value)


def test_plausible_counts_are_accepted():
    base = {"files": {}, "env_id": ENV, "net": "teacher", "num_actions": 2}
    teacher = {**base, "config": {"total_steps": 60_000, "num_envs": 8}}
    # the last vector step may pass total_steps; an exported run stops anywhere before
    for steps in (0, 59_999, 60_000 + 8):
        schema.validate_policy({**teacher, "env_steps": steps}, "m.json")
    student = {**base, "config": {"updates": 200}}
    schema.validate_policy({**student, "updates": 200}, "m.json")
    with pytest.raises(CheckpointError, match="field 'updates' is 201, more than the config's"):
        schema.validate_policy({**student, "updates": 201}, "m.json")
    schema.validate_policy({**base, "updates": 201, "config": {"updates": "?"}}, "m.json")


def test_a_running_teacher_without_its_step_count_is_refused():
    manifest = {"kind": "teacher", "status": "running", "files": {}, "env_id": ENV}
    manifest |= {"net": "teacher", "num_actions": 2}
    for check in (schema.validate_kind, schema.validate_policy):  # resume; load and export
        with pytest.raises(CheckpointError, match="m.json: field 'env_steps' is missing"):
            check(manifest, "m.json")
    schema.validate_kind({**manifest, "env_steps": 800}, "m.json")
    schema.validate_kind({**manifest, "status": "complete"}, "m.json")  # hand-made: allowed


def test_a_summary_line_names_the_counter_it_has():
    assert schema.describe_counter({"env_steps": 4000}) == "4,000 env steps"
    assert schema.describe_counter({"updates": 200}) == "200 updates"
    assert schema.describe_counter({}) == "no step count recorded"


def test_a_dataset_with_an_implausible_row_count_names_the_field(tmp_path):
    folder = write_dataset(tmp_path / "d")
    edit_manifest(folder, rows=10**15)
    with pytest.raises(CheckpointError, match="field 'rows' must be an integer in"):
        dataset.load_dataset(str(folder))


# ---------------------------------------------------------------- messages that mislead


def test_a_missing_kind_is_called_missing(tmp_path, monkeypatch):
    folder = _running_counter(tmp_path, monkeypatch)
    edit_manifest(folder, kind=...)
    with pytest.raises(CheckpointError, match="field 'kind' is missing") as e:
        jobs.run(Counter(), folder, resume=True, progress=False)
    assert "None" not in str(e.value)
    data = write_dataset(tmp_path / "d")
    edit_manifest(data, kind=...)
    with pytest.raises(CheckpointError, match="field 'kind' is missing"):
        dataset.load_dataset(str(data))
    edit_manifest(data, kind=["dataset"])
    with pytest.raises(CheckpointError, match="field 'kind' must be a non-empty string"):
        dataset.load_dataset(str(data))
    edit_manifest(data, kind="teacher")
    with pytest.raises(CheckpointError, match="holds a 'teacher', not a dataset"):
        dataset.load_dataset(str(data))


@pytest.mark.parametrize(
    "make, words",
    [
        (lambda p: p.symlink_to("/dev/zero"), "is a character device (/dev/zero), not a regular"),
        (lambda p: p.mkdir(), "is a folder, not a regular file"),
        (lambda p: os.mkfifo(p), "is a named pipe, not a regular file"),
        (lambda p: p.symlink_to(p.with_name("gone.npz")), "is a broken link"),
    ],
)
def test_a_params_file_that_is_not_a_file_says_what_it_is(capsys, policy_folder, make, words):
    path = checkpoint.path_of(policy_folder, checkpoint.PARAMS)
    path.unlink()
    make(path)
    with pytest.raises(CheckpointError, match="not a regular file") as e:
        checkpoint.load(policy_folder)
    assert words in str(e.value) and "missing" not in str(e.value)
    assert cli.main(["evaluate", str(policy_folder), "--episodes", "1"]) == 2
    assert words in one_line(capsys)


def test_a_manifest_that_is_not_a_file_says_what_it_is(policy_folder):
    (policy_folder / checkpoint.MANIFEST).unlink()
    (policy_folder / checkpoint.MANIFEST).symlink_to("/dev/zero")
    with pytest.raises(CheckpointError, match="manifest.json: is a character device"):
        checkpoint.read_manifest(policy_folder)


def test_a_shard_with_non_finite_observations_is_refused(tmp_path):
    obs = np.zeros((8, 4, 4), np.float32)
    obs[3, 1, 2] = np.inf
    folder = write_dataset(tmp_path / "d", shard_arrays(obs=obs))
    with pytest.raises(CheckpointError, match="shard_00000_8.npz: 'obs' holds NaN or infinite"):
        dataset.load_dataset(str(folder))


def test_a_dataset_given_as_a_policy_is_called_a_dataset(capsys, tmp_path):
    folder = write_dataset(tmp_path / "d")
    with pytest.raises(CheckpointError, match="holds a 'dataset', not a teacher or student"):
        checkpoint.load(folder)
    assert cli.main(["evaluate", str(folder), "--episodes", "1"]) == 2
    assert "holds a 'dataset'" in one_line(capsys)


def test_an_env_id_this_version_does_not_know_names_the_file(policy_folder, tmp_path):
    edit_manifest(policy_folder, env_id="Acrobot-v1")
    with pytest.raises(CheckpointError, match="manifest.json: field 'env_id': unknown env id"):
        checkpoint.load(policy_folder)
    data = write_dataset(tmp_path / "d", env_id="Acrobot-v1")
    with pytest.raises(CheckpointError, match="manifest.json: field 'env_id': unknown env id"):
        dataset.load_dataset(str(data))


def test_a_shard_the_files_do_not_list_is_named(tmp_path):
    folder = write_dataset(tmp_path / "d")
    edit_manifest(folder, shards=["shard_00000_8.npz", "shard_00001_8.npz"])
    with pytest.raises(CheckpointError, match="'shards' names shard_00001_8.npz, which 'files'"):
        dataset.load_dataset(str(folder))


# ---------------------------------------------------------------- an --out file that is not ours


def test_evaluate_out_replaces_only_an_earlier_summary(capsys, tmp_path):
    mine = tmp_path / "notes.json"
    mine.write_text('{"keep": "me"}\n')
    argv = ["evaluate", "--random", "--env", ENV, "--episodes", "1", "--out"]
    assert cli.main([*argv, str(mine)]) == 2
    assert "exists and is not an earlier summary of distill evaluate" in one_line(capsys)
    assert mine.read_text() == '{"keep": "me"}\n'
    out = tmp_path / "eval.json"
    assert cli.main([*argv, str(out)]) == 0
    assert cli.main([*argv, str(out), "--seed", "1"]) == 0  # an earlier summary: replaced
    assert json.loads(out.read_text())["source"] == "random policy"


def test_a_pipe_or_a_manifest_as_out_file_is_refused(capsys, tmp_path, policy_folder):
    # a device (/dev/null) is refused the same way; a pipe stands for it here
    os.mkfifo(tmp_path / "pipe")
    argv = ["evaluate", "--random", "--env", ENV, "--episodes", "1", "--out"]
    assert cli.main([*argv, str(tmp_path / "pipe")]) == 2
    assert "is a named pipe, not a regular file" in one_line(capsys)
    manifest = policy_folder / checkpoint.MANIFEST
    before = manifest.read_bytes()
    assert cli.main([*argv, str(manifest)]) == 2
    assert "is not an earlier summary" in one_line(capsys)
    assert manifest.read_bytes() == before


def test_play_may_replace_its_video_but_not_a_folder(tmp_path):
    video = tmp_path / "v.gif"
    video.write_bytes(b"GIF89a")
    args = argparse.Namespace(command="play", out=str(video))
    preflight.check(args)  # an earlier video: replaced (was "is a file, not a folder")
    video.unlink()
    video.mkdir()
    with pytest.raises(ConfigError, match="is a folder, not a file"):
        preflight.check(args)


def test_a_checkpoint_path_that_is_a_file_is_named_a_file(capsys, policy_folder):
    manifest = policy_folder / checkpoint.MANIFEST
    assert cli.main(["evaluate", str(manifest), "--episodes", "1"]) == 2
    line = one_line(capsys)
    assert f"{manifest}: is a file, not a checkpoint folder" in line and "missing" not in line


# ---------------------------------------------------------------- SIGTERM during start-up


def test_sigterm_during_the_imports_is_one_line_and_130():
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    argv = [sys.executable, "-m", "distill.cli", "evaluate", "--random", "--env", ENV]
    proc = subprocess.Popen(argv, env=env, stderr=subprocess.PIPE, text=True)
    wait_until_caught(proc.pid, signal.SIGTERM)  # distill's handler is in; jax still imports
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and err.strip().splitlines()[-1].endswith("interrupted")


def test_a_library_user_keeps_its_own_sigterm_handler():
    import distill

    assert signal.getsignal(signal.SIGTERM) is not distill._early_interrupt


# ------------------------------------------------- reproduce into a folder not its own


def test_reproduce_into_a_folder_of_other_files_is_refused(capsys, tmp_path):
    """`--out /` once started a reproduction among the system's folders; an earlier run's
    folder is still resumed into."""
    (tmp_path / "home").mkdir()
    (tmp_path / "notes.txt").write_text("mine\n")
    argv = ["reproduce", "--suite", "minatar", "--budget", "smoke", "--out", str(tmp_path)]
    assert cli.main(argv) == 2
    assert "holds other files (home, notes.txt) and no earlier `distill reproduce` run" in (
        one_line(capsys)
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["home", "notes.txt"]
    earlier = tmp_path / "earlier"
    (earlier / "losses").mkdir(parents=True)
    (earlier / "losses" / "stage.json").write_text("{}")
    preflight.check_reproduce_folder(str(earlier))  # an earlier run: no refusal
    (earlier / "results.json").write_text("{}")
    preflight.check_reproduce_folder(str(earlier))
