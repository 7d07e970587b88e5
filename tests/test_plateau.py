"""The plateau rule: its state against a numpy reading of the same curve, the config fields,
students side by side that stop apart (per seed), and the loss comparison's rows, curves and
figure under a plateau budget. Students train on conftest's CartPole dataset."""

import dataclasses
import json
import math

import jax.numpy as jnp
import matplotlib
import numpy as np
import pytest
from conftest import DATASET_CONFIG, ENV

from distill import dataset, experiments, plateau, student
from distill.config import ConfigError
from distill.experiments import seeds

matplotlib.use("Agg")


def run_rule(curve, patience, delta, cap):
    rule, states = plateau.start(), []
    for h in curve:
        rule = plateau.update(rule, jnp.float32(h), patience, delta, cap)
        states.append(rule)
    return states


def test_rule_stops_after_patience_blocks_without_a_rise():
    curve = [0.5, 0.6, 0.65, 0.651, 0.64, 0.7, 0.9]
    states = run_rule(curve, patience=2, delta=0.01, cap=100)
    active = [bool(s.active) for s in states]
    # 0.651 is no rise over 0.65 + 0.01; two blocks without one stop it after block 5
    assert active == [True, True, True, True, False, False, False]
    last = states[-1]
    assert int(last.blocks) == 5 and int(last.best_block) == 3
    assert float(last.best) == pytest.approx(0.65)
    # the numpy reading of the curve the students report (nan once stopped) agrees
    reported = curve[:5] + [math.nan, math.nan]
    assert plateau.plateau_block(reported, 0.01) == 3
    assert plateau.trained_blocks(reported) == 5


def test_rule_stops_at_the_cap():
    states = run_rule([0.1, 0.2, 0.3, 0.4], patience=5, delta=0.0, cap=3)
    assert [bool(s.active) for s in states] == [True, True, False, False]
    assert int(states[-1].blocks) == 3 and int(states[-1].best_block) == 3


def test_filled_carries_the_last_value_forward():
    np.testing.assert_array_equal(plateau.filled([0.1, 0.3, np.nan, np.nan]), [0.1, 0.3, 0.3, 0.3])


def test_agreement():
    student_q = jnp.array([[1.0, 0.0], [0.0, 1.0], [2.0, 3.0]])
    teacher_q = jnp.array([[5.0, 1.0], [1.0, 0.0], [0.0, 1.0]])
    assert float(plateau.agreement(student_q, teacher_q)) == pytest.approx(2 / 3)


def test_config_fields_and_identity():
    fixed = student.StudentConfig()
    assert fixed.plateau_blocks == 0  # the default: a fixed count, as before
    # fixed-count students keep the manifests and cache names they had before the rule
    assert "plateau_blocks" not in student.config_identity(fixed)
    old_manifest = student.config_identity(fixed)  # a manifest from before the rule
    assert student.config_identity(old_manifest) == student.config_identity(fixed)
    ruled = student.StudentConfig(plateau_blocks=3, plateau_delta=0.01)
    assert student.config_identity(ruled)["plateau_blocks"] == 3
    for bad in ({"plateau_blocks": -1}, {"plateau_delta": 2.0}, {"held_out": 1.0}):
        with pytest.raises(ConfigError):
            student.StudentConfig(**bad)


def test_a_single_student_refuses_the_rule(cartpole_dataset):
    data = dataset.load_dataset(str(cartpole_dataset))
    with pytest.raises(ConfigError, match="plateau"):
        student.StudentJob(student.StudentConfig(plateau_blocks=2), data)


def test_budgets_state_their_rule():
    for name in ("smoke", "quick"):  # short: the tests, make demo, the notebooks' default
        assert experiments.BUDGETS[name].plateau_blocks == 0
        assert "fixed" in experiments.BUDGETS[name].rule
    b = experiments.BUDGETS["full"]
    assert b.plateau_blocks > 0 and "plateau" in b.rule


RULED = student.StudentConfig(
    updates=4_000, eval_every=250, plateau_blocks=2, plateau_delta=0.02, eval_episodes=5
)


@pytest.fixture(scope="module")
def ruled_students(cartpole_dataset):
    data = dataset.load_dataset(str(cartpole_dataset))
    return data, seeds.distil_seeds(RULED, data, 2)


def test_students_stop_at_their_own_plateau(ruled_students):
    data, (_, state, m) = ruled_students
    held = np.asarray(m.held_out)
    assert held.shape[0] == 2 and 1 <= held.shape[1] <= RULED.blocks
    for s in range(2):
        cols = seeds.plateau_columns(RULED, m, s)
        trained = plateau.trained_blocks(held[s])
        assert np.isfinite(held[s, :trained]).all() and np.isnan(held[s, trained:]).all()
        # the student's update count is where it stopped; it stopped by the rule or the cap
        assert int(state.updates[s]) == cols["updates"] == trained * RULED.eval_every
        assert cols["plateau_updates"] <= cols["updates"]
        assert (
            cols["updates"] - cols["plateau_updates"] >= RULED.plateau_blocks * RULED.eval_every
            or cols["updates"] == RULED.updates
        )
        assert 0.5 < cols["held_out_agreement"] <= 1.0  # CartPole: 2 actions, a learned student
    assert np.isnan(np.asarray(m.score)).all()  # scored afterwards, on the paired episodes


def test_students_train_on_the_first_env_columns_only(ruled_students):
    data, _ = ruled_students
    train, (obs, q) = student.held_out_split(RULED, data)
    held_envs = round(RULED.held_out * DATASET_CONFIG.num_envs)
    assert train["q"].shape[1] == DATASET_CONFIG.num_envs - held_envs
    assert obs.shape[0] == q.shape[0] == plateau.HELD_OUT_STATES
    # every held-out state is a state of the last env columns
    held_q = np.asarray(data.arrays()["q"][:, -held_envs:]).reshape(-1, q.shape[1])
    assert set(map(tuple, np.asarray(q)[:20].tolist())) <= set(map(tuple, held_q.tolist()))


def test_cached_students_read_back_with_their_curves(tmp_path, ruled_students):
    data, (_, state, m) = ruled_students
    folder = tmp_path / seeds.student_folder_name(RULED, data, 2)
    seeds._write_students(folder, RULED, data, 2, ruled_students[1])
    _, state2, m2 = seeds._read_students(folder, RULED, data, 2)
    np.testing.assert_array_equal(np.asarray(m2.held_out), np.asarray(m.held_out))
    np.testing.assert_array_equal(np.asarray(state2.updates), np.asarray(state.updates))


def test_loss_comparison_to_the_plateau(tmp_path, trained_cartpole, monkeypatch):
    monkeypatch.setattr(experiments.common, "ensure_teacher", lambda *a, **k: trained_cartpole[1])
    b = experiments.Budget(
        name="t",
        games=(ENV,),
        teacher_steps=60_000,
        dataset_states=DATASET_CONFIG.states,
        updates=RULED.updates,
        eval_every=RULED.eval_every,
        seeds=2,
        eval_episodes=5,
        multitask_dqn_steps=None,
        online_teacher_steps=0,
        online_rounds=0,
        plateau_blocks=RULED.plateau_blocks,
        plateau_delta=RULED.plateau_delta,
    )
    result = experiments.loss_comparison(b, losses=("kl",), runs_dir=tmp_path, progress=False)
    for row in result["rows"]:
        assert row["plateau_updates"] <= row["updates"] <= b.updates
        assert 0.5 < row["held_out_agreement"] <= 1.0
    (curve,) = result["curves"]
    assert len(curve["held_out_mean"]) == len(curve["held_out_updates"])
    assert len(curve["plateau_updates"]) == 2
    folder = experiments.write_loss_comparison(result, tmp_path / "out")
    assert (folder / "loss_comparison.png").read_bytes()[:4] == b"\x89PNG"
    saved = json.loads((folder / "loss_comparison.json").read_text())
    assert saved["budget"]["plateau_blocks"] == 2
    assert dataclasses.asdict(b)["plateau_delta"] == RULED.plateau_delta
