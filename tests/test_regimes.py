"""Regimes and diagnostics: the diagnostics against hand-computed values, each regime a few
updates on Breakout-MinAtar from the shipped teacher, stream's rolling buffer, dagger's beta
schedule, and a resumed regime job bit-identical to an uninterrupted one."""

from __future__ import annotations

import math
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from distill import checkpoint, dataset, diagnostics, paths, regimes, runs, student
from distill.config import ConfigError

GAME = "Breakout-MinAtar"
CONFIG = student.StudentConfig(net="net2", updates=200, eval_every=100, eval_episodes=4)
SMALL = dict(buffer_states=512, actors=16, interleave=50, diag_states=64, diag_envs=8)


def leaves(tree):
    return [np.asarray(x) for x in jax.tree_util.tree_leaves(tree)]


class StopAtOnce(runs.StopRequest):
    """A stop request that has already arrived: the job stops after its first saved block."""

    def __init__(self):
        super().__init__()
        self.requested = True
        self.signal_name = "SIGTERM"


@pytest.fixture(scope="module")
def teacher():
    return checkpoint.load(paths.shipped_teacher(GAME), env_id=GAME)


@pytest.fixture(scope="module")
def small_dataset(tmp_path_factory, teacher):
    out = tmp_path_factory.mktemp("regimes") / "data"
    config = dataset.DatasetConfig(states=512, num_envs=16, stagger=50)
    dataset.generate(teacher.path, config, str(out), progress=False)
    return out


# ---------------------------------------------------------------------------- diagnostics


def test_agreement_and_kl_by_hand():
    teacher_q = jnp.array([[1.0, 0.0], [0.0, 2.0], [3.0, 3.0]])
    student_q = jnp.array([[0.0, 0.0], [0.0, 1.0], [5.0, 0.0]])
    a = diagnostics.agreement_and_kl(student_q, teacher_q, tau=1.0)
    # argmax: teacher 0, 1, 0 (tie -> lowest); student 0 (tie), 1, 0 -> all three agree
    assert float(a.agreement) == pytest.approx(1.0)
    p = np.exp(np.array([[1.0, 0.0], [0.0, 2.0], [3.0, 3.0]]))
    p /= p.sum(1, keepdims=True)
    q = np.exp(np.array([[0.0, 0.0], [0.0, 1.0], [5.0, 0.0]]))
    q /= q.sum(1, keepdims=True)
    kl = np.mean(np.sum(p * np.log(p / q), axis=1))
    assert float(a.kl) == pytest.approx(kl, rel=1e-5)
    b = diagnostics.agreement_and_kl(jnp.array([[0.0, 1.0]]), jnp.array([[1.0, 0.0]]))
    assert float(b.agreement) == 0.0
    # tau 0.01 makes the teacher one-hot on action 0: KL = -log softmax(student)[0]
    assert float(b.kl) == pytest.approx(math.log(1 + math.e), rel=1e-5)


def row(a, b, c):
    return {"agreement_train": a, "agreement_heldout": b, "agreement_visited": c}


@pytest.mark.parametrize(
    "rows, expected",
    [
        ([row(0.95, 0.85, 0.84)], "overfitting"),
        ([row(0.93, 0.92, 0.80)], "covariate shift"),
        ([row(0.50, 0.49, 0.48)], "undertraining"),
        ([row(0.40, 0.40, 0.40), row(0.50, 0.49, 0.48)], "undertraining"),
        ([row(0.70, 0.70, 0.70), row(0.70, 0.705, 0.70)], "plateau"),
        ([row(0.97, 0.96, 0.95)], "none"),
        # all low and rising: undertraining first, whatever the gaps
        ([row(0.60, 0.50, 0.30), row(0.66, 0.54, 0.46)], "undertraining"),
        # both gaps over their thresholds: the larger names the limit
        ([row(0.66, 0.60, 0.455), row(0.66, 0.60, 0.46)], "covariate shift"),
        ([row(0.99, 0.90, 0.84)], "overfitting"),
    ],
)
def test_limit_thresholds(rows, expected):
    assert diagnostics.limit(rows) == expected


def test_measure_labels_the_visited_set_with_the_teacher():
    apply_t = lambda p, o: o @ p  # noqa: E731
    apply_s = lambda p, o: -(o @ p)  # noqa: E731
    w = jnp.eye(2)
    obs = jnp.array([[1.0, 0.0], [0.0, 1.0]])
    out = diagnostics.measure(apply_s, w, apply_t, w, {"visited": (obs, None)}, 1.0)
    assert float(out["agreement_visited"]) == 0.0 and float(out["kl_visited"]) > 0


# ---------------------------------------------------------------------------- regimes


def test_beta_schedule():
    dagger = regimes.RegimeConfig(regime="dagger", beta0=0.8, beta_decay=0.5)
    assert [float(regimes.beta_at(dagger, k)) for k in range(4)] == pytest.approx(
        [0.8, 0.4, 0.2, 0.1]
    )
    stream = regimes.RegimeConfig(regime="stream", beta0=0.3)
    assert float(regimes.beta_at(stream, 5)) == 1.0


def test_rows_per_round_follows_updates_per_state():
    c = regimes.RegimeConfig(updates_per_state=0.19, actors=64, interleave=100)
    assert c.rows_per_round == 8  # 100 / (0.19 * 64) = 8.2 rows of 64 states
    assert regimes.RegimeConfig(updates_per_state=10.0, interleave=1).rows_per_round == 1
    with pytest.raises(ConfigError, match="regime"):
        regimes.RegimeConfig(regime="replay")


def test_buffer_holds_only_the_most_recent_states():
    buffer = {"q": jnp.zeros((4, 2, 1)), "t": jnp.zeros((4, 2), jnp.int32)}
    ptr = 0
    for i in range(1, 4):  # three records of 3 rows each, numbered 1..9
        first = 3 * (i - 1) + 1
        rec_rows = jnp.arange(first, first + 3)
        record = {"q": jnp.broadcast_to(rec_rows[:, None, None], (3, 2, 1)).astype(jnp.float32)}
        record["t"] = jnp.broadcast_to(rec_rows[:, None], (3, 2))
        buffer = regimes.insert(buffer, record, jnp.int32(ptr))
        ptr = (ptr + 3) % 4
    assert sorted(np.asarray(buffer["t"][:, 0]).tolist()) == [6, 7, 8, 9]
    assert sorted(np.asarray(buffer["q"][:, 1, 0]).tolist()) == [6.0, 7.0, 8.0, 9.0]


def assert_finite_rows(rows):
    assert len(rows) == 2
    for r in rows:
        for k in ("loss", "score", "agreement_train", "kl_heldout", "agreement_visited"):
            assert np.isfinite(r[k]), (k, r)
        for s in diagnostics.SETS:
            assert 0.0 <= r[f"agreement_{s}"] <= 1.0 and r[f"kl_{s}"] >= 0.0


@pytest.mark.parametrize("regime", ["offline", "stream", "dagger"])
def test_each_regime_runs_on_breakout(tmp_path, teacher, small_dataset, regime):
    config = regimes.RegimeConfig(regime=regime, **SMALL)
    data = str(small_dataset) if regime == "offline" else None
    policy = regimes.fit(
        CONFIG, config, teacher.path, str(tmp_path / regime), dataset_path=data, progress=False
    )
    rows = policy.manifest["metrics"]
    assert_finite_rows(rows)
    assert policy.manifest["limit"] in (
        "overfitting",
        "covariate shift",
        "undertraining",
        "plateau",
        "none",
    )
    if regime == "offline":
        assert rows[-1]["new_states"] == 0
    else:
        per_round = config.rows_per_round * config.actors
        assert rows[-1]["new_states"] == 4 * per_round  # 200 updates / 50 per round
    if regime == "dagger":
        assert [r["beta"] for r in rows] == [1.0, 0.5]


def test_offline_regime_trains_as_student_fit(tmp_path, teacher, small_dataset):
    """The offline regime is today's student: the same parameters, plus diagnostics."""
    config = regimes.RegimeConfig(regime="offline", **SMALL)
    a = regimes.fit(
        CONFIG, config, teacher.path, None, dataset_path=str(small_dataset), progress=False
    )
    b = student.fit(CONFIG, str(small_dataset), str(tmp_path / "s"), progress=False)
    for x, y in zip(leaves(a.student.params), leaves(b.params), strict=True):
        np.testing.assert_array_equal(x, y)


def test_atari_is_refused():
    with pytest.raises(ConfigError, match="not supported"):
        regimes.check_supported("ALE/Pong-v5", "stream")


def test_dagger_resumed_is_bit_identical(tmp_path, teacher):
    config = regimes.RegimeConfig(regime="dagger", **SMALL)
    whole = regimes.fit(CONFIG, config, teacher.path, str(tmp_path / "whole"), progress=False)
    cut = tmp_path / "cut"
    with pytest.MonkeyPatch.context() as m:
        m.setattr(runs, "StopRequest", StopAtOnce)
        with pytest.raises(runs.Interrupted, match="checkpoint saved at update 100"):
            regimes.fit(CONFIG, config, teacher.path, str(cut), progress=False)
    other = regimes.RegimeConfig(regime="stream", **SMALL)
    with pytest.raises(checkpoint.CheckpointError, match="another config"):
        regimes.fit(CONFIG, other, teacher.path, str(cut), resume=True, progress=False)
    resumed = regimes.fit(CONFIG, config, teacher.path, str(cut), resume=True, progress=False)
    for x, y in zip(leaves(resumed.params), leaves(whole.params), strict=True):
        np.testing.assert_array_equal(x, y)
    strip = lambda rows: [{k: v for k, v in r.items() if k != "wall_s"} for r in rows]  # noqa: E731
    assert strip(resumed.manifest["metrics"]) == strip(whole.manifest["metrics"])
    shutil.rmtree(cut)


def test_cli_refuses_a_regime_without_its_inputs(capsys):
    from distill import cli, cliconf

    docs = cliconf.field_docs(regimes.RegimeConfig)
    assert all(doc and "\n" not in doc for doc in docs.values()), docs
    assert cli.main(["student", "--regime", "dagger", "--out", "o"]) == 2
    assert "needs --teacher" in capsys.readouterr().err
    assert cli.main(["student", "--out", "o"]) == 2
    assert "--dataset is required" in capsys.readouterr().err


# ---------------------------------------------------------------------------- multi-task

MT_GAMES = ("Breakout-MinAtar", "SpaceInvaders-MinAtar")  # 4 and 6 channels: padding is used
MT_CONFIG = student.StudentConfig(
    net="net2", loss="kl", updates=100, eval_every=50, eval_episodes=2
)
MT_SMALL = dict(buffer_states=192, actors=8, interleave=25, diag_states=32, diag_envs=4, stagger=20)


@pytest.fixture(scope="module")
def mt_teachers():
    return [checkpoint.load(paths.shipped_teacher(g), env_id=g) for g in MT_GAMES]


def test_multitask_rounds_share_updates_per_state_over_games():
    from distill import multitask_regimes as mtr

    config = regimes.RegimeConfig(regime="stream", actors=8, interleave=100, updates_per_state=0.5)
    # 100 updates a round at U = 0.5: 200 new states, 100 a game, about 12 rows of 8 envs
    assert mtr.rows_per_round(config, 2) == 12
    assert mtr.rows_per_round(config, 1) == config.rows_per_round == 25
    full = {f"{m}_{s} Breakout-MinAtar": 0.4 for m in ("agreement", "kl") for s in diagnostics.SETS}
    one = mtr.game_rows([{"score Breakout-MinAtar": 2.0, **full}], "Breakout-MinAtar")
    assert one == [{"score": 2.0, **{k.split(" ")[0]: 0.4 for k in full}}]


def test_multitask_stream_runs_with_a_buffer_per_game(mt_teachers):
    from distill import multitask_regimes as mtr

    config = regimes.RegimeConfig(regime="stream", **MT_SMALL)
    job = mtr.MultitaskRegimeJob(MT_CONFIG, config, mt_teachers)
    out = job.start(job.init())
    for _ in range(2):
        out = job.advance(out, 50).state
    rows_per_round = mtr.rows_per_round(config, 2)
    assert rows_per_round == round(25 / (0.19 * 8 * 2))
    for k, teacher in enumerate(mt_teachers):  # each game's buffer in its own format, labelled
        buffer = out.buffers[k]  # by its teacher
        shape = teacher.spec.obs_shape
        assert buffer["obs"].shape == (job.buffer_rows, 8, *shape)
        assert buffer["q"].shape[-1] == mt_teachers[k].spec.num_actions
    # the oldest row is the next written: 4 rounds of rows past the fill, modulo 24 rows
    assert job.buffer_rows == 24
    assert int(out.ptr) == (4 * rows_per_round) % job.buffer_rows
    assert int(out.student.updates) == 100


def test_multitask_dagger_resumed_is_bit_identical(tmp_path, mt_teachers):
    from distill import jobs
    from distill import multitask_regimes as mtr

    config = regimes.RegimeConfig(regime="dagger", **MT_SMALL)
    job = mtr.MultitaskRegimeJob(MT_CONFIG, config, mt_teachers)  # one job: compiled once
    whole = jobs.run(job, tmp_path / "whole", progress=False)
    rows = whole.manifest["metrics"]
    assert [r["beta"] for r in rows] == [1.0, 0.5]
    per_round = mtr.rows_per_round(config, 2) * config.actors
    assert rows[-1]["new_states"] == 4 * per_round  # 100 updates / 25 a round
    for r in rows:
        for g in MT_GAMES:
            assert np.isfinite(r[f"score {g}"]), r
            for s in diagnostics.SETS:
                assert 0.0 <= r[f"agreement_{s} {g}"] <= 1.0 and r[f"kl_{s} {g}"] >= 0.0
    limits = ("overfitting", "covariate shift", "undertraining", "plateau", "none")
    assert set(whole.manifest["limit"]) == set(MT_GAMES)
    assert all(v in limits for v in whole.manifest["limit"].values())
    cut = tmp_path / "cut"
    with pytest.MonkeyPatch.context() as m:
        m.setattr(runs, "StopRequest", StopAtOnce)
        with pytest.raises(runs.Interrupted, match="checkpoint saved at update 50"):
            jobs.run(job, cut, progress=False)
    stream = regimes.RegimeConfig("stream", **MT_SMALL)
    other = mtr.MultitaskRegimeJob(MT_CONFIG, stream, mt_teachers)  # refused before compiling
    with pytest.raises(checkpoint.CheckpointError, match="another config"):
        jobs.previous(other, cut, True)
    resumed = jobs.run(job, cut, resume=True, progress=False)
    for x, y in zip(leaves(resumed.params), leaves(whole.params), strict=True):
        np.testing.assert_array_equal(x, y)
    strip = lambda rows: [{k: v for k, v in r.items() if k != "wall_s"} for r in rows]  # noqa: E731
    assert strip(resumed.manifest["metrics"]) == strip(rows)
    again = jobs.run(job, cut, resume=True, progress=False)  # finished: read back
    for x, y in zip(leaves(again.params), leaves(whole.params), strict=True):
        np.testing.assert_array_equal(x, y)


def test_report_names_the_limit_of_every_run_in_words_and_a_table():
    from distill.experiments import regimes as experiment

    def run(regime, seed, a, b, c, limit):
        return {
            "game": GAME,
            "net": "net2",
            "regime": regime,
            "seed": seed,
            "score": 1.0 + seed,
            "percent_of_teacher": 50.0,
            **row(a, b, c),
            **{f"kl_{s}": 0.1 for s in diagnostics.SETS},
            "limit": limit,
        }

    result = {
        "rows": [
            run("offline", 0, 0.95, 0.85, 0.84, "overfitting"),
            run("offline", 1, 0.93, 0.86, 0.85, "overfitting"),
            run("dagger", 0, 0.95, 0.94, 0.93, "none"),
        ]
    }
    words = "\n".join(experiment.limits_in_words(result))
    assert "Of 3 runs, the limit the last evaluation block shows: overfitting 2, none 1." in words
    assert f"- {GAME}, net2 student, offline: overfitting in 2 of 2 seeds; overfitting:" in words
    assert "a - b = 0.085 > 0.05" in words  # the seeds' mean a 0.94, b 0.855
    assert f"- {GAME}, net2 student, dagger: none in 1 of 1 seeds; none:" in words
    table = experiment.runs_table(result)
    assert [(r["regime"], r["seed"], r["limit"]) for r in table] == [
        ("offline", 0, "overfitting"),
        ("offline", 1, "overfitting"),
        ("dagger", 0, "none"),
    ]
    ci = experiment.score_intervals(result)  # seeds scored 1 and 2: the bootstrap spans them
    assert ci[0]["seeds"] == 2 and ci[0]["score [95 % CI]"] == "1.50 [1.00, 2.00]"
    assert ci[1]["percent [95 % CI]"] == "50.0 [50.0, 50.0]"
    for limit in ("undertraining", "overfitting", "covariate shift", "plateau", "none"):
        assert "a 0.900, b 0.800, c 0.700" in diagnostics.explain(limit, 0.9, 0.8, 0.7)


def test_the_multitask_regime_is_a_budget_field():
    """`distill experiment multitask --regime stream` and `distill reproduce --regime dagger`
    select the multi-task students' regime; anything else is refused."""
    import dataclasses

    from distill import cli, experiments

    smoke = experiments.BUDGETS["smoke"]
    assert smoke.regime == "offline"
    assert dataclasses.replace(smoke, regime="dagger").regime == "dagger"
    with pytest.raises(ConfigError, match="regime='replay' is not valid"):
        dataclasses.replace(smoke, regime="replay")
    args = cli.build_parser().parse_args(
        ["experiment", "multitask", "--out", "o", "--regime", "stream"]
    )
    assert cli._budget_overrides(args, experiments) == {"regime": "stream"}
