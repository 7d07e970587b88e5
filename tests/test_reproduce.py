"""`distill reproduce` end to end at the smoke budget: every stage, the report, and a re-run that
skips finished stages. The MinAtar suite uses the shipped teachers; the Atari suite trains a tiny
Pong teacher (a smoke budget checks the plumbing, not the scores)."""

from __future__ import annotations

import dataclasses
import json
import shutil

import pytest

from distill import cli, experiments, reproduce
from distill.config import ConfigError


@pytest.fixture(scope="module")
def minatar_smoke(tmp_path_factory):
    out = tmp_path_factory.mktemp("reproduce") / "minatar"
    reproduce.reproduce("minatar", "smoke", out, progress=False)
    return out


def test_report_and_results_are_written(minatar_smoke):
    report = (minatar_smoke / "report.md").read_text()
    for heading in (
        "## Teachers",
        "## Loss comparison",
        "## Compression",
        "## Online",
        "## Regimes",
    ):
        assert heading in report
    assert "108.3" in report  # the paper's numbers stand beside ours
    results = json.loads((minatar_smoke / "results.json").read_text())
    assert set(results["results"]) == {"teachers", "losses", "compression", "online", "regimes"}
    assert results["meta"]["command"].startswith("distill reproduce --suite minatar")
    for png in ("losses/loss_comparison.png", "compression/compression.png", "online/online.png"):
        assert (minatar_smoke / png).stat().st_size > 1000


def test_shipped_teacher_plays_far_above_random(minatar_smoke):
    results = json.loads((minatar_smoke / "results.json").read_text())
    (row,) = results["results"]["teachers"]["rows"]
    assert row["teacher"].endswith("data/teachers/Breakout-MinAtar")
    assert row["teacher_score"] > row["random_score"] + 3


def test_rerun_skips_finished_stages(minatar_smoke, capsys):
    assert (
        cli.main(
            ["reproduce", "--suite", "minatar", "--budget", "smoke", "--out", str(minatar_smoke)]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert out.count("finished before, skipped") == 5


def test_a_stage_finished_before_a_budget_field_existed_still_counts(minatar_smoke, capsys):
    """A stage written by a version whose Budget lacked later fields (at their defaults now) is
    recognised; one whose budget differs in a field it had is not."""
    marker = minatar_smoke / "teachers" / "stage.json"
    saved = marker.read_text()
    done = json.loads(saved)
    try:
        for field in ("regime", "teachers", "multitask_net", "multitask_dqn_seeds", "online_seeds"):
            del done["key"]["budget"][field]
        marker.write_text(json.dumps(done))
        reproduce.reproduce("minatar", "smoke", minatar_smoke, progress=False, only=())
        assert "[1/5] teachers: finished before, skipped" in capsys.readouterr().out
        done["key"]["budget"]["seeds"] += 1
        marker.write_text(json.dumps(done))
        reproduce.reproduce("minatar", "smoke", minatar_smoke, progress=False, only=())
        assert "[1/5] teachers: not asked for, left" in capsys.readouterr().out
    finally:
        marker.write_text(saved)


def test_interrupted_run_keeps_its_students_and_a_partial_report(
    minatar_smoke, tmp_path, monkeypatch
):
    """A run stopped inside the losses stage: the report shows the stages before it, and the
    next run takes the students it had finished from `students/` instead of training them."""
    out = tmp_path / "run"
    shutil.copytree(minatar_smoke, out)
    for stage in ("losses", "compression", "online"):
        (out / stage / "stage.json").unlink()
    monkeypatch.setattr(experiments.common, "_MEMO", {})  # a fresh process

    def stopped(stage, *args):
        raise KeyboardInterrupt(stage)

    monkeypatch.setattr(reproduce, "_run_stage", stopped)
    with pytest.raises(KeyboardInterrupt):
        reproduce.reproduce("minatar", "smoke", out, progress=False)
    report = (out / "report.md").read_text()
    assert "## Teachers" in report and "## Loss comparison" not in report
    assert "Unfinished, not run yet: losses, compression, online" in report
    monkeypatch.undo()
    monkeypatch.setattr(experiments.common, "_MEMO", {})
    monkeypatch.setattr(
        experiments.seeds,
        "_distil_in_graph_seeds",
        lambda *a: pytest.fail("a student trained again"),
    )
    # online distillation trains no cached students: give it back its finished stage
    shutil.copy(minatar_smoke / "online" / "stage.json", out / "online" / "stage.json")
    reproduce.reproduce("minatar", "smoke", out, progress=False)
    before = json.loads((minatar_smoke / "results.json").read_text())["results"]
    after = json.loads((out / "results.json").read_text())["results"]
    assert after["losses"]["rows"] == before["losses"]["rows"]
    assert after["compression"]["rows"] == before["compression"]["rows"]
    assert "Unfinished" not in (out / "report.md").read_text()


def test_only_the_named_stages_run(minatar_smoke, tmp_path, capsys):
    """`--stages`: the others are left as they are, and the report says what is missing."""
    out = tmp_path / "run"
    shutil.copytree(minatar_smoke, out)
    (out / "compression" / "stage.json").unlink()
    argv = ["reproduce", "--suite", "minatar", "--budget", "smoke", "--out", str(out)]
    assert cli.main([*argv, "--stages", "online"]) == 0
    printed = capsys.readouterr().out
    assert "compression: not asked for, left" in printed
    assert printed.count("finished before, skipped") == 4
    report = (out / "report.md").read_text()
    assert "Not asked for (`--stages`): compression" in report and "Unfinished" not in report
    # the smoke budget has one game, hence no multi-task stage
    with pytest.raises(ConfigError, match=r"stages=\['multitask'\] not in the minatar suite"):
        reproduce.reproduce("minatar", "smoke", out, only=("multitask",))


def test_a_run_that_runs_nothing_still_reports(tmp_path):
    """No stage finished before and none asked for: the report still says what is missing."""
    out = reproduce.reproduce("minatar", "smoke", tmp_path / "run", progress=False, only=())
    report = (out / "report.md").read_text()
    assert "Not asked for (`--stages`): teachers, losses, compression, online" in report
    assert json.loads((out / "results.json").read_text())["results"] == {}


@pytest.mark.long  # 220 s of CPU from a cold compilation cache, the most of any test; Atari
# students are also distilled at smoke by notebooks/07_atari_pong.ipynb in `make test`
def test_atari_suite_smoke(tmp_path):
    out = reproduce.reproduce("atari", "smoke", tmp_path / "atari", progress=False)
    results = json.loads((out / "results.json").read_text())
    assert set(results["results"]) == {"teachers", "losses", "compression"}
    rows = results["results"]["compression"]["rows"]
    assert {r["net"] for r in rows} == {"teacher", "net1", "net2", "net3"}
    assert all(r["game"] == "ALE/Pong-v5" for r in rows)


def test_stages_come_from_the_registry():
    """The teachers first, then the registered experiments a suite and budget run: Atari puts
    the compression sweep first; one game has no multi-task stage; online is MinAtar's."""
    minatar, atari = reproduce.SUITES["minatar"], reproduce.SUITES["atari"]
    assert reproduce.stages_for("minatar", minatar["smoke"]) == [
        "teachers",
        "losses",
        "compression",
        "online",
        "regimes",
    ]
    for name in ("quick", "full"):
        assert reproduce.stages_for("minatar", minatar[name]) == [
            "teachers",
            "losses",
            "compression",
            "multitask",
            "online",
            "regimes",
        ]
    # Atari: smoke plays Pong alone; quick and full three games, hence a multi-task stage
    assert reproduce.stages_for("atari", atari["smoke"]) == ["teachers", "compression", "losses"]
    for name in ("quick", "full"):
        assert reproduce.stages_for("atari", atari[name]) == [
            "teachers",
            "compression",
            "losses",
            "multitask",
        ]
    assert reproduce.STAGE_ORDER[0] == "teachers"
    assert list(reproduce.STAGE_ORDER[1:]) == list(experiments.EXPERIMENTS)


def test_bad_suite_or_budget_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="suite='nope'"):
        reproduce.reproduce("nope", "smoke", tmp_path)
    with pytest.raises(ConfigError, match="budget='huge'"):
        reproduce.reproduce("minatar", "huge", tmp_path)


def test_a_finished_stage_is_kept_when_only_another_stages_fields_change():
    """A full run written before `multitask_dqn_seeds` existed (one DQN run then) keeps its loss
    comparison under today's full budget (3 runs), but not its multi-task stage; a field every
    stage reads (seeds) invalidates them all."""
    b = dataclasses.asdict(experiments.budget("full"))
    stages = reproduce.STAGE_ORDER
    key = json.loads(json.dumps({"suite": "minatar", "budget": b}))
    old = {k: v for k, v in key["budget"].items() if k != "multitask_dqn_seeds"}
    done = {"suite": "minatar", "budget": old}
    assert reproduce._same_key(done, key, "losses")
    assert reproduce._same_key(done, key, "compression")
    assert not reproduce._same_key(done, key, "multitask")  # 1 run then, 3 now
    assert reproduce._same_key(
        {**done, "budget": {**old, "multitask_dqn_seeds": 3}}, key, "multitask"
    )
    no_online_seeds = {k: v for k, v in old.items() if k != "online_seeds"}
    assert not reproduce._same_key({**done, "budget": no_online_seeds}, key, "online")  # 1 then
    assert reproduce._same_key({**done, "budget": no_online_seeds}, key, "losses")
    nets = {**key["budget"], "compression_nets": ["net1", "net2", "net3"]}
    assert reproduce._same_key({"suite": "minatar", "budget": nets}, key, "losses")
    assert not reproduce._same_key({"suite": "minatar", "budget": nets}, key, "compression")
    fixed = {**key["budget"], "fixed_updates": 1_234}  # read by the multi-task and online stages
    kept = {s: reproduce._same_key({"suite": "minatar", "budget": fixed}, key, s) for s in stages}
    assert kept == {**dict.fromkeys(stages, True), "multitask": False, "online": False}
    more = {**key["budget"], "seeds": 3}
    assert not any(
        reproduce._same_key({"suite": "minatar", "budget": more}, key, s)
        for s in ("teachers", "losses", "compression", "multitask", "online")
    )
