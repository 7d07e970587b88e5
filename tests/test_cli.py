"""The `distill` command, called in-process: output, exit statuses, one-line errors."""

import json
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import pytest

from distill import checkpoint, cli, networks, runs, teacher


def test_nets_pong_with_18_actions(capsys):
    assert cli.main(["nets", "ALE/Pong-v5", "--actions", "18"]) == 0
    out = capsys.readouterr().out
    assert "18 actions" in out
    rows = {line.split()[0]: line for line in out.splitlines()[2:]}
    assert list(rows) == ["teacher", "net1", "net2", "net3"]
    for name, count in [
        ("teacher", "1,693,362"),
        ("net1", "427,874"),
        ("net2", "113,346"),
        ("net3", "61,954"),
    ]:
        assert f" {count} " in rows[name], rows[name]


def test_nets_minatar(capsys):
    assert cli.main(["nets", "Breakout-MinAtar"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("Breakout-MinAtar: observations (10, 10, 4)")
    assert lines[1].split()[:2] == ["name", "layers"]
    assert [line.split()[0] for line in lines[2:]] == ["teacher", "net1", "net2", "net3"]
    assert "100.0%" in lines[2]


def test_unknown_env_is_one_line_with_the_close_match(capsys, tmp_path):
    out = tmp_path / "x"
    assert cli.main(["teacher", "--env", "Breakout-Minatar", "--out", str(out)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    assert lines[0].startswith("distill teacher: error:")
    assert "Breakout-MinAtar" in lines[0] and "Traceback" not in captured.err
    assert not out.exists()


def test_evaluate_random_json(capsys, tmp_path):
    summary_file = tmp_path / "random.json"
    args = ["evaluate", "--random", "--env", "CartPole-v1", "--episodes", "20", "--json"]
    assert cli.main([*args, "--out", str(summary_file)]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["env_id"] == "CartPole-v1" and summary["source"] == "random policy"
    assert summary["episodes"] == len(summary["scores"]) == 20
    assert summary["epsilon"] == 1.0
    assert 10 < summary["mean"] < 40
    assert json.loads(summary_file.read_text()) == summary


def test_evaluate_random_needs_env(capsys):
    assert cli.main(["evaluate", "--random"]) == 2
    assert "--env" in capsys.readouterr().err


def test_evaluate_missing_folder(capsys, tmp_path):
    missing = tmp_path / "no-such-teacher"
    assert cli.main(["evaluate", str(missing)]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and str(missing) in err


def test_evaluate_checkpoint_made_for_another_env(capsys, tmp_path):
    module = networks.build("teacher", (4,), 2)
    params = networks.init_params(module, jax.random.PRNGKey(0), (4,), jnp.float32)
    manifest = checkpoint.policy_manifest("teacher", "CartPole-v1", "teacher", 2, {})
    checkpoint.save_policy(tmp_path / "t", params, manifest)
    assert cli.main(["evaluate", str(tmp_path / "t"), "--env", "Breakout-MinAtar"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1
    assert "CartPole-v1" in err and "Breakout-MinAtar" in err


def test_interrupted_teacher_exits_130(capsys, tmp_path, monkeypatch):
    def interrupted(config, out, **kwargs):
        raise runs.Interrupted(f"SIGINT: checkpoint saved in {out}; continue with --resume")

    monkeypatch.setattr(teacher, "fit", interrupted)
    out = str(tmp_path / "t")
    assert cli.main(["teacher", "--env", "CartPole-v1", "--out", out]) == 130
    err = capsys.readouterr().err
    assert err.startswith("distill teacher: stopped: SIGINT") and "--resume" in err


@pytest.mark.parametrize("steps", ["-5", "0", "many"])
def test_teacher_bad_steps_is_a_usage_error(capsys, tmp_path, steps):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["teacher", "--env", "CartPole-v1", "--steps", steps, "--out", str(tmp_path)])
    assert exit_.value.code == 2
    assert "positive integer" in capsys.readouterr().err


def test_console_script():
    script = Path(sys.executable).parent / "distill"
    result = subprocess.run(
        [str(script), "nets", "Breakout-MinAtar"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert len(result.stdout.splitlines()) == 6
    assert result.stdout.startswith("Breakout-MinAtar")


def test_export_a_running_teacher(capsys, tmp_path):
    """`distill export`: the running run's parameters, evaluated, in a finished checkpoint."""
    module = networks.build("teacher", (4,), 2)
    params = networks.init_params(module, jax.random.PRNGKey(0), (4,), jnp.float32)
    manifest = checkpoint.policy_manifest(
        "teacher", "CartPole-v1", "teacher", 2, {"seed": 0}, status="running", env_steps=1234
    )
    checkpoint.save_policy(tmp_path / "run", params, manifest)
    out = tmp_path / "shipped"
    assert cli.main(["export", str(tmp_path / "run"), "--out", str(out), "--episodes", "4"]) == 0
    assert "score" in capsys.readouterr().out
    shipped = checkpoint.load(out)
    m = shipped.manifest
    assert m["status"] == "complete" and m["env_steps"] == 1234 and m["config"] == {"seed": 0}
    assert m["exported_from"]["status"] == "running"
    assert m["evaluation"]["episodes"] == 4 and m["random_evaluation"]["episodes"] == 4
    for a, b in zip(jax.tree.leaves(shipped.params), jax.tree.leaves(params), strict=True):
        assert (a == b).all()
    # a second export into the same folder is refused in one line
    assert cli.main(["export", str(tmp_path / "run"), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "already holds a checkpoint" in err
