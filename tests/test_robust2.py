"""Bad input refused in one line, second round (issue 21, a reviewer's 150 hostile cases): an
empty or foreign --out, NaN parameters or rewards, impossible DQN configs, duplicate shards,
deep or huge JSON, wrong-typed summary fields, huge seeds, an early Ctrl-C, an unwritable file
--out, OS errors that name no file, a second writer refused before loading."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest
from test_robust import ENV, edit_manifest, one_line, policy_folder, shard_arrays, write_dataset

from distill import checkpoint, cli, dataset, exits, preflight, runs, schema
from distill import teacher as teacher_mod
from distill.checkpoint import CheckpointError
from distill.config import ConfigError

__all__ = ["policy_folder"]  # a fixture, used by name

REPO = Path(__file__).resolve().parents[1]


def _no_work(*args, **kwargs):
    raise RuntimeError("must not start")


# ---------------------------------------------------------------- accepted bad input, lost work


def test_an_empty_out_is_refused(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    folder = write_dataset(tmp_path / "d")
    argv = ["student", "--dataset", str(folder), "--batch-size", "8", "--out", ""]
    assert cli.main(argv) == 2
    assert "--out is empty" in one_line(capsys)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d"]
    assert cli.main(["evaluate", "--random", "--env", ENV, "--out", " "]) == 2
    assert "--out is empty" in one_line(capsys)


def test_a_folder_of_the_users_own_files_is_refused(capsys, tmp_path, monkeypatch):
    monkeypatch.setattr(teacher_mod, "fit", _no_work)
    out = tmp_path / "mine"
    out.mkdir()
    (out / "metrics.csv").write_text("a,b\n")
    (out / "notes.txt").write_text("keep me\n")
    assert cli.main(["teacher", "--env", ENV, "--out", str(out)]) == 2
    line = one_line(capsys)
    assert str(out) in line and "metrics.csv, notes.txt" in line
    assert sorted(p.name for p in out.iterdir()) == ["metrics.csv", "notes.txt"]


def test_hidden_files_and_a_runs_tb_folder_are_no_users_files(tmp_path):
    out = tmp_path / "o"
    (out / "tb").mkdir(parents=True)
    (out / runs.LOCK).write_text("1\n")
    preflight.check_ours(str(out))  # a run killed before its first checkpoint: start afresh
    preflight.check_ours(str(tmp_path / "new"))


def test_parameters_holding_nan_are_refused_on_load(capsys, policy_folder):
    params = checkpoint.load(policy_folder).params
    nan = jax.tree_util.tree_map(lambda a: np.full_like(np.asarray(a), np.nan), params)
    manifest = checkpoint.read_manifest(policy_folder)
    bad = policy_folder.with_name("nan")
    keep = {k: v for k, v in manifest.items() if k not in ("files", "paths")}
    checkpoint.save_policy(bad, nan, keep)
    with pytest.raises(CheckpointError, match="NaN or infinite"):
        checkpoint.load(bad)
    assert cli.main(["evaluate", str(bad), "--episodes", "1"]) == 2
    assert "parameters hold NaN" in one_line(capsys)


@pytest.mark.parametrize(
    "change, field, hint",
    [
        ({"total_steps": 4000, "learning_starts": 50_000}, "learning_starts", "--total-steps"),
        ({"total_steps": 2000}, "learning_starts", "above 2000"),  # CartPole starts at 2000
        ({"batch_size": 512, "buffer_size": 100}, "batch_size", "buffer_size=100"),
    ],
)
def test_a_teacher_that_could_never_train_is_refused(change, field, hint):
    with pytest.raises(ConfigError, match=field) as e:
        teacher_mod.default_config(ENV, **change)
    assert hint in str(e.value) and len(str(e.value).splitlines()) == 1


def test_a_shard_listed_twice_is_refused(tmp_path):
    folder = write_dataset(tmp_path / "d")
    name = checkpoint.read_manifest(folder)["shards"][0]
    edit_manifest(folder, shards=[name, name], rows=16)
    with pytest.raises(CheckpointError, match="'shards' must be a list of distinct"):
        dataset.load_dataset(folder)


def test_a_shard_with_nan_rewards_is_refused(tmp_path):
    rewards = np.full((8, 4), np.nan, np.float32)
    folder = write_dataset(tmp_path / "d", shard_arrays(reward=rewards))
    with pytest.raises(CheckpointError, match=r"shard_00000_8.npz: 'reward' holds NaN"):
        dataset.load_dataset(folder)


# ---------------------------------------------------------------- tracebacks


@pytest.mark.parametrize(
    "text, message",
    [
        ("[" * 100_000 + "]" * 100_000, "recursion"),
        ('{"files": {}, "rows": ' + "9" * 5000 + "}", "digits"),
    ],
)
def test_a_deep_or_huge_json_manifest_is_one_line_naming_the_file(capsys, tmp_path, text, message):
    folder = write_dataset(tmp_path / "d")
    (folder / checkpoint.MANIFEST).write_text(text)
    with pytest.raises(CheckpointError, match=f"manifest.json: damaged manifest.*{message}"):
        checkpoint.read_manifest(folder)
    argv = ["student", "--dataset", str(folder), "--out", str(tmp_path / "s")]
    assert cli.main(argv) == 2
    assert str(folder / checkpoint.MANIFEST) in one_line(capsys)


@pytest.mark.parametrize(
    "field, value, kind",
    [
        ("evaluation", "good", schema.POLICY),
        ("random_evaluation", [1.0], schema.POLICY),
        ("final_score", None, schema.POLICY),
        ("final_score", "9.5", schema.POLICY),
        ("env_steps", "2,000", schema.POLICY),
        ("env_steps", -1, schema.POLICY),
        ("coverage", "wide", schema.DATASET),
    ],
)
def test_summary_fields_of_the_wrong_type_name_the_field(field, value, kind):
    with pytest.raises(CheckpointError, match=f"field '{field}' must be"):
        schema.validate({field: value}, {field: kind[field]}, "m.json")
    ok = {"final_score": float("nan")}  # a run without evaluations stores NaN
    assert schema.validate(ok, {"final_score": schema.POLICY["final_score"]}, "m.json") == ok


def test_summary_printing_falls_back_to_a_question_mark():
    assert cli._fmt(1234, ",") == "1,234" and cli._fmt(0.5) == "0.50"
    assert cli._fmt("x") == "?" and cli._fmt(None) == "?" and cli._fmt(1.5, "d") == "?"
    assert cli._mapping("good") == {} and cli._mapping({"mean": 1}) == {"mean": 1}


def test_a_finished_run_from_another_version_still_prints(capsys, policy_folder, monkeypatch):
    edit_manifest(policy_folder, evaluation={"mean": "high"}, env_steps=...)
    policy = checkpoint.load(policy_folder)
    monkeypatch.setattr(teacher_mod, "fit", lambda config, out, **kw: policy)
    assert cli.main(["teacher", "--env", ENV, "--out", str(policy_folder), "--resume"]) == 0
    assert "? env steps, score ? +- ?" in capsys.readouterr().out


@pytest.mark.parametrize("seed", ["99999999999999999999999", str(2**32), str(-(2**31) - 1)])
def test_a_seed_outside_int32_or_uint32_is_refused(capsys, seed):
    assert cli.main(["evaluate", "--random", "--env", ENV, "--seed", seed]) == 2
    assert "--seed=" in one_line(capsys)


def wait_until_caught(pid: int, sig: int, timeout: float = 60.0) -> None:
    """Until process `pid` catches `sig` (its SigCgt mask in /proc): a signal sent sooner meets
    Python's start-up, before any of distill runs (seconds on a loaded machine)."""
    status = Path(f"/proc/{pid}/status")
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            caught = next(ln for ln in status.read_text().splitlines() if ln.startswith("SigCgt"))
        except (OSError, StopIteration):
            return  # no /proc: fall back to the time already passed
        if int(caught.split()[1], 16) >> (sig - 1) & 1:
            return
        time.sleep(0.01)


def test_a_ctrl_c_during_the_imports_is_one_line_and_130():
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    argv = [sys.executable, "-m", "distill.cli", "evaluate", "--random", "--env", ENV]
    proc = subprocess.Popen(argv, env=env, stderr=subprocess.PIPE, text=True)
    # Python is up and distill's handlers are in (SIGTERM's is installed just after SIGINT's;
    # Python catches SIGINT from its start); jax is still importing (seconds)
    wait_until_caught(proc.pid, signal.SIGTERM)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and err.strip().splitlines()[-1].endswith("interrupted")


def test_a_library_user_keeps_its_own_sigint_handler():
    import distill

    assert signal.getsignal(signal.SIGINT) is not distill._early_interrupt


# ---------------------------------------------------------------- misleading or late


def test_an_unwritable_out_file_is_refused_before_work(capsys, tmp_path, monkeypatch):
    def refuse(path, *args):
        raise OSError(errno.ENOENT, "No such file or directory", str(path))

    monkeypatch.setattr(preflight.os, "open", refuse)
    argv = ["evaluate", "--random", "--env", ENV, "--out", str(tmp_path / "x.json")]
    assert cli.main(argv) == 2
    assert f"cannot write in {tmp_path}" in one_line(capsys)


def test_a_write_error_without_a_file_names_it(tmp_path, monkeypatch):
    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(checkpoint.os, "fsync", full)
    with pytest.raises(OSError) as e:
        checkpoint.atomic_write_bytes(tmp_path / "params.npz", b"x")
    assert e.value.filename == str(tmp_path / "params.npz")
    assert exits.message(e.value) == f"No space left on device: {tmp_path / 'params.npz'}"
    assert [p.name for p in tmp_path.iterdir()] == []


def test_a_second_writer_is_refused_before_the_dataset_loads(capsys, tmp_path, monkeypatch):
    folder = write_dataset(tmp_path / "d")
    monkeypatch.setattr(dataset, "load_dataset", _no_work)
    out = tmp_path / "s"
    with runs.folder_lock(out):
        argv = ["student", "--dataset", str(folder), "--batch-size", "8", "--out", str(out)]
        assert cli.main(argv) == 2
    assert f"pid {os.getpid()}" in one_line(capsys)


def test_check_unlocked_takes_nothing(tmp_path):
    runs.check_unlocked(tmp_path / "none")
    assert not (tmp_path / "none").exists()
    with runs.folder_lock(tmp_path / "l"), pytest.raises(runs.FolderLocked):
        runs.check_unlocked(tmp_path / "l")
    runs.check_unlocked(tmp_path / "l")


def test_a_full_disk_under_the_tensorboard_log_names_its_file(tmp_path):
    from distill import tb

    writer = tb.EventWriter(tmp_path)

    class Full:
        def write(self, data):
            raise OSError(errno.ENOSPC, "No space left on device")

        flush = write

        def close(self):
            raise OSError(errno.ENOSPC, "No space left on device")

    writer._file.close()
    writer._file = Full()
    with pytest.raises(OSError) as e:
        writer.scalars({"loss": 1.0}, 1)
    assert e.value.filename == str(writer.path)
    writer.close()  # the failure was reported once: closing does not replace it


def test_second_review_cases_are_refused():
    """From the second independent check: a student manifest whose `dataset` is a list, or
    whose `updates` is a string, and a step count that would overflow int32 in the program."""
    from distill import schema, teacher
    from distill.config import ConfigError

    base = {"kind": "student", "status": "complete", "files": {}, "env_id": "CartPole-v1"}
    base |= {"net": "teacher", "num_actions": 2}
    schema.validate_kind(dict(base, dataset={"path": "d"}, updates=40), "m.json")
    for field, value in (("dataset", [1]), ("updates", "40")):
        with pytest.raises(schema.CheckpointError, match=f"m.json: field '{field}'"):
            schema.validate_kind(dict(base, **{field: value}), "m.json")
    with pytest.raises(ConfigError, match="total_steps=.*at most 2,147,483,647"):
        teacher.default_config("CartPole-v1", total_steps=10**30)
