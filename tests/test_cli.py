"""The `distill` command, called in-process: output, exit statuses, one-line errors."""

import argparse
import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import pytest

from distill import checkpoint, cli, cliconf, dataset, networks, online, runs, student, teacher


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
    # forward MFLOP per sample against the Nature DQN's multiply-adds counted by hand (x2)
    macs = 20 * 20 * 32 * 8 * 8 * 4 + 9 * 9 * 64 * 4 * 4 * 32 + 7 * 7 * 64 * 3 * 3 * 64
    macs += 3136 * 512 + 512 * 18
    assert float(rows["teacher"].split()[-1]) == pytest.approx(2 * macs / 1e6, rel=0.02)


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


# ---------------------------------------------------------------- the configs are the CLI

CONFIGS = {
    "teacher": teacher.DQNConfig,
    "student": student.StudentConfig,
    "dataset": dataset.DatasetConfig,
}


@pytest.mark.parametrize("config", [*CONFIGS.values(), online.OnlineConfig])
def test_every_config_field_has_a_one_line_doc(config):
    docs = cliconf.field_docs(config)
    assert set(docs) == {f.name for f in dataclasses.fields(config)}
    assert all(doc and "\n" not in doc for doc in docs.values()), docs


@pytest.mark.parametrize("command", list(CONFIGS))
def test_every_config_field_is_in_help_with_its_doc(capsys, command):
    with pytest.raises(SystemExit) as exit_:
        cli.main([command, "--help"])
    assert exit_.value.code == 0
    help_ = capsys.readouterr().out
    squeezed = "".join(help_.split())  # argparse wraps lines, sometimes at hyphens
    for name, doc in cliconf.field_docs(CONFIGS[command]).items():
        assert cliconf.flag(name) in help_, name
        assert "".join(doc.split()) in squeezed, (name, doc)


def _parse(*argv: str) -> argparse.Namespace:
    return cli.build_parser().parse_args(list(argv))


def test_teacher_options_reach_the_config_over_the_family_preset():
    args = _parse(
        "teacher", "--env", "CartPole-v1", "--total-steps", "1e4", "--lr", "3e-4",
        "--net", "net2", "--n-step", "1", "--out", "unused",
    )  # fmt: skip
    config = cli.teacher_config(args)
    assert config == teacher.default_config(
        "CartPole-v1", total_steps=10_000, lr=3e-4, net="net2", n_step=1
    )
    # the fields not given keep CartPole's preset, not DQNConfig's defaults
    assert config.num_envs == teacher.PRESETS["vector"]["num_envs"] != teacher.DQNConfig.num_envs
    assert config.lr_end == teacher.PRESETS["vector"]["lr_end"]
    # nothing given but the env: exactly the preset
    assert cli.teacher_config(_parse("teacher", "--env", "CartPole-v1", "--out", "x")) == (
        teacher.default_config("CartPole-v1")
    )


def test_teacher_old_flags_are_aliases():
    old = _parse("teacher", "--env", "CartPole-v1", "--steps", "5000", "--envs", "4", "--out", "x")
    new = _parse(
        "teacher", "--env-id", "CartPole-v1", "--total-steps", "5_000", "--num-envs", "4",
        "--out", "x",
    )  # fmt: skip
    assert cli.teacher_config(old) == cli.teacher_config(new)
    assert cli.teacher_config(old).total_steps == 5000 and cli.teacher_config(old).num_envs == 4


def test_student_and_dataset_options_reach_their_configs(tmp_path):
    args = _parse(
        "student", "--dataset", str(tmp_path), "--out", "s", "--loss", "mse",
        "--net", "net3", "--updates", "1000", "--batch-size", "32", "--optimizer", "adam",
        "--eval-every", "250", "--eval-episodes", "5", "--seed", "7",
    )  # fmt: skip
    assert cli.student_config(args) == student.StudentConfig(
        loss="mse", net="net3", updates=1000, batch_size=32, optimizer="adam",
        eval_every=250, eval_episodes=5, seed=7,
    )  # fmt: skip
    assert cli.student_config(args).tau == student.StudentConfig.tau  # not restated by the CLI
    args = _parse(
        "dataset", "--teacher", str(tmp_path), "--out", "d", "--states", "640", "--envs", "8",
        "--shard-states", "128", "--epsilon", "0.1",
    )  # fmt: skip
    assert cli.dataset_config(args) == dataset.DatasetConfig(
        states=640, num_envs=8, shard_states=128, epsilon=0.1
    )


@pytest.mark.parametrize(
    "argv, field",
    [
        (["teacher", "--env", "CartPole-v1", "--gamma", "1.5"], "gamma=1.5"),
        (["teacher", "--env", "CartPole-v1", "--net", "huge"], "net='huge'"),
        (["teacher", "--env", "CartPole-v1", "--learning-starts", "-1"], "learning_starts=-1"),
        (["student", "--dataset", "{tmp}", "--loss", "l1"], "loss='l1'"),
        (["student", "--dataset", "{tmp}", "--updates", "1000", "--eval-every", "300"], "updates="),
        (["dataset", "--teacher", "{tmp}", "--epsilon", "2"], "epsilon=2.0"),
    ],
)
def test_a_bad_config_value_is_one_line_naming_the_field(capsys, tmp_path, argv, field):
    out = tmp_path / "out"
    argv = [a.format(tmp=tmp_path) for a in argv]
    assert cli.main([*argv, "--out", str(out)]) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and field in lines[0], captured.err
    assert lines[0].startswith(f"distill {argv[0]}: error:")
    assert not out.exists()


@pytest.mark.parametrize(
    "option, value, message",
    [
        ("--num-envs", "0", "positive integer"),
        ("--batch-size", "many", "positive integer"),
        ("--seed", "1.5", "an integer"),
        ("--lr", "fast", "a number"),
    ],
)
def test_a_value_of_the_wrong_type_is_a_usage_error(capsys, tmp_path, option, value, message):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["teacher", "--env", "CartPole-v1", option, value, "--out", str(tmp_path)])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and option in err and message in err, err


def test_a_config_with_a_prefix_shares_a_command_with_another():
    """Two configs with fields of the same name (seed, eval_episodes) in one parser."""
    parser = argparse.ArgumentParser()
    cliconf.add_config_options(parser, student.StudentConfig, prefix="student.")
    cliconf.add_config_options(parser, online.OnlineConfig, prefix="online.")
    args = parser.parse_args(["--student.eval-episodes", "3", "--online.rounds", "2"])
    base = student.StudentConfig(seed=4)
    assert cliconf.config_from_args(student.StudentConfig, args, base, prefix="student.") == (
        dataclasses.replace(base, eval_episodes=3)
    )
    assert cliconf.config_from_args(online.OnlineConfig, args, prefix="online.") == (
        online.OnlineConfig(rounds=2)
    )


def test_budget_fields_are_options_of_experiment_and_reproduce():
    from distill import experiments

    parser = cli.build_parser()
    for command in (["experiment", "losses"], ["reproduce"]):
        assert parser.parse_args([*command, "--out", "x"]).budget == "quick"
        args = parser.parse_args(
            [
                *command,
                "--budget",
                "smoke",
                "--seeds",
                "5",
                "--games",
                "Asterix-MinAtar,Freeway-MinAtar",
            ]
            + ["--multitask-dqn-steps", "none", "--out", "x"]
        )
        b = experiments.budget(args.budget, **cli._budget_overrides(args, experiments))
        assert b.seeds == 5 and b.games == ("Asterix-MinAtar", "Freeway-MinAtar")
        assert b.multitask_dqn_steps is None
        assert b.updates == experiments.BUDGETS["smoke"].updates  # not given: the budget's


def test_bad_budget_field_exits_2_naming_it(capsys):
    assert cli.main(["experiment", "losses", "--updates", "150", "--out", "x"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "updates=150" in err and "eval_every" in err


def test_stats_missing_or_invalid_results_exit_2_with_one_line(capsys, tmp_path):
    assert cli.main(["stats", str(tmp_path / "nope.json")]) == cli.EXIT_USAGE
    err = capsys.readouterr().err.strip()
    assert err.startswith("distill stats: error:") and "nope.json" in err and "\n" not in err
    bad = tmp_path / "bad.json"
    for text in ("{not json", '{"meta": {}}', "[1, 2]"):
        bad.write_text(text)
        assert cli.main(["stats", str(bad)]) == cli.EXIT_USAGE
        assert "\n" not in capsys.readouterr().err.strip()
    bad.write_text(
        '{"results": {"losses": {"rows": [{"game": "A", "loss": "kl", "percent_of_teacher": 1}]}}}'
    )
    assert cli.main(["stats", str(bad)]) == cli.EXIT_USAGE
    assert "malformed" in capsys.readouterr().err
    bad.write_text('{"results": {}}')
    assert cli.main(["stats", str(bad), "--out", str(bad)]) == cli.EXIT_USAGE
    assert "is a file" in capsys.readouterr().err


def test_stats_prints_intervals_and_verdicts_and_writes_out(capsys, tmp_path):
    rows = [
        {"game": g, "seed": s, "loss": loss, "net": "teacher", "percent_of_teacher": v + s}
        | {"random_normalised": (v + s) / 100}
        for g in ("A", "B")
        for loss, v in (("nll", 95.0), ("mse", 60.0), ("kl", 110.0))
        for s in range(3)
    ]
    path = tmp_path / "results.json"
    path.write_text(json.dumps({"meta": {}, "results": {"losses": {"rows": rows}}}))
    out = tmp_path / "stats"
    argv = ["stats", str(path), "--out", str(out), "--reps", "100", "--seed", "1"]
    assert cli.main(argv) == 0
    text = capsys.readouterr().out
    assert "| kl | nll | 1.00 [1.00, 1.00] |" in text and "*reproduced*" in text
    assert {p.name for p in out.iterdir()} >= {"stats.md", "stats.json", "losses_profile.png"}


def test_stats_of_several_runs_sets_their_verdicts_side_by_side(capsys, tmp_path):
    def run(name, kl, stages=("losses",)):
        rows = [
            {"game": g, "seed": s, "loss": loss, "net": "teacher", "percent_of_teacher": v + s}
            | {"random_normalised": (v + s) / 100}
            for g in ("A", "B")
            for loss, v in (("nll", 95.0), ("mse", 60.0), ("kl", kl))
            for s in range(3)
        ]
        (tmp_path / name).mkdir()
        path = tmp_path / name / "results.json"
        results = {stage: {"rows": rows} for stage in stages}
        path.write_text(json.dumps({"meta": {}, "results": results}))
        return str(path)

    small, large = run("small", 110.0), run("large", 80.0)
    assert cli.main(["stats", small, large, "--reps", "100"]) == 0
    text = capsys.readouterr().out
    assert text.splitlines()[0] == "| claim | paper | small | large |"
    beats = next(line for line in text.splitlines() if "beats its teacher" in line)
    cells = beats.split(" | ")
    assert cells[2].startswith("*reproduced*") and cells[3].startswith("*contradicted*")
    net1 = next(line for line in text.splitlines() if "net1" in line)
    assert net1.endswith("| not run | not run |")
    assert cli.main(["stats", small, large, "--labels", "a,a"]) == cli.EXIT_USAGE
    assert "one distinct label" in capsys.readouterr().err
    assert cli.main(["stats", small, large, "--out", str(tmp_path / "x")]) == cli.EXIT_USAGE
    assert cli.main(["stats", small, "--labels", "a"]) == cli.EXIT_USAGE
    assert "several results.json" in capsys.readouterr().err


def test_stats_of_a_subset_of_games(capsys, tmp_path):
    """`--games A` gives the intervals and verdicts of game A's rows alone; a game the file does
    not hold is refused by name."""
    rows = [
        {"game": g, "seed": s, "loss": loss, "net": "teacher", "percent_of_teacher": v + s}
        | {"random_normalised": (v + s) / 100}
        for g, kl in (("A", 110.0), ("B", 50.0))
        for loss, v in (("nll", 95.0), ("mse", 60.0), ("kl", kl))
        for s in range(3)
    ]
    path = tmp_path / "results.json"
    online = {"env_id": "A", "rows": [{"round": 1, "teacher_score": 1.0, "student_score": 1.0}]}
    path.write_text(
        json.dumps({"meta": {}, "results": {"losses": {"rows": rows}, "online": online}})
    )
    assert cli.main(["stats", str(path), "--reps", "100"]) == 0
    both = capsys.readouterr().out
    assert "| kl | 2 x 3 |" in both and "| kl | nll | 0.50 [0.50, 0.50] |" in both
    assert cli.main(["stats", str(path), "--reps", "100", "--games", "A"]) == 0
    one = capsys.readouterr().out
    assert "| kl | 1 x 3 |" in one and "| kl | nll | 1.00 [1.00, 1.00] |" in one
    assert "no online results" not in one  # the online stage ran on A
    assert cli.main(["stats", str(path), "--reps", "100", "--games", " B"]) == 0
    assert "no online results" in capsys.readouterr().out  # ... and not on B
    assert cli.main(["stats", str(path), "--games", "A,C"]) == cli.EXIT_USAGE
    err = capsys.readouterr().err
    assert "no rows of C (it has A, B)" in err and "\n" not in err.strip()
