"""The plateau rule: its state against a numpy reading of the same curve, the config fields,
students side by side that stop apart (per seed), and the loss comparison's rows, curves and
figure under a plateau budget. Students train on conftest's CartPole dataset."""

import dataclasses
import json
import math

import jax
import jax.numpy as jnp
import matplotlib
import numpy as np
import pytest
from conftest import DATASET_CONFIG, ENV, killed_after

from distill import checkpoint, dataset, experiments, plateau, student
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
        cols = plateau.columns(RULED, m, s)
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
        stopped_by_cap = cols["updates"] == RULED.updates
        patience = RULED.plateau_blocks * RULED.eval_every
        learning = stopped_by_cap and cols["updates"] - cols["plateau_updates"] < patience
        assert cols["still_learning"] is learning
    assert np.isnan(np.asarray(m.score)).all()  # scored afterwards, on the paired episodes


def test_still_learning_reads_the_end_of_the_curve():
    """Under the plateau rule a student is still learning when the cap stopped it before its
    patience ran out; at a fixed count when its training agreement rose by more than RISE over
    its last block; with a single block there is no curve to read."""
    nan = float("nan")
    ruled = dataclasses.replace(RULED, updates=4 * RULED.eval_every, plateau_blocks=2)
    held = np.array(
        [
            [0.5, 0.6, 0.7, 0.8],  # improving at the cap
            [0.5, 0.6, 0.7, 0.7],  # one block without improvement at the cap: patience left
            [0.5, 0.6, 0.6, 0.6],  # stopped at the cap by the rule itself
            [0.5, 0.6, 0.6, nan],  # stopped by the rule before the cap
        ]
    )
    m = student.BlockMetrics(*(np.zeros((4, 4)),) * 3, held)
    assert [plateau.still_learning(ruled, m, s) for s in range(4)] == [True, True, False, False]
    fixed = dataclasses.replace(RULED, plateau_blocks=0)
    rise = plateau.RISE
    agreement = np.array([[0.5, 0.7], [0.7, 0.7 + rise / 2], [0.7, 0.7 - rise], [0.8, nan]])
    m = student.BlockMetrics(np.zeros((4, 2)), agreement, np.zeros((4, 2)))
    assert [plateau.still_learning(fixed, m, s) for s in range(4)] == [True, False, False, None]
    assert plateau.columns(fixed, m, 0) == {"still_learning": True}
    assert plateau.columns(fixed, m, 3) == {}


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
    students = sorted(p.name for p in (tmp_path / "students").iterdir())
    assert students and not any(n.startswith(seeds.PARTIAL) for n in students), students
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


def test_an_interrupted_plateau_run_resumes_from_its_last_chunk(
    tmp_path, ruled_students, monkeypatch
):
    """Stopped after its second chunk (the partial checkpoint written), a second call trains
    on from there: the same curves and parameters as the run never stopped; the finished
    students are cached whole and the half-way folder is gone."""
    data, (_, state, m) = ruled_students
    write, calls = seeds.write_partial, []
    write_then_stop = killed_after(2, write, calls, lambda args: args[-1])
    monkeypatch.setattr(experiments.common, "_MEMO", {})  # not the fixture's students
    monkeypatch.setattr(seeds, "write_partial", write_then_stop)
    with pytest.raises(KeyboardInterrupt):
        seeds.distil_seeds(RULED, data, 2, cache=tmp_path)
    folder = tmp_path / seeds.student_folder_name(RULED, data, 2)
    assert (folder / seeds.PARTIAL / "manifest.json").exists()
    assert not (folder / "manifest.json").exists()
    monkeypatch.setattr(seeds, "write_partial", write)
    _, state2, m2 = seeds.distil_seeds(RULED, data, 2, cache=tmp_path)
    np.testing.assert_array_equal(np.asarray(m2.held_out), np.asarray(m.held_out))
    np.testing.assert_array_equal(np.asarray(state2.updates), np.asarray(state.updates))
    leaves = jax.tree_util.tree_leaves
    for a, b in zip(leaves(state2.params), leaves(state.params), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert (folder / "manifest.json").exists() and not (folder / seeds.PARTIAL).exists()


def test_a_partial_run_of_other_students_is_refused_by_name(tmp_path, ruled_students):
    data, _ = ruled_students
    folder = tmp_path / seeds.PARTIAL
    carry = {"w": np.zeros(3, np.float32)}
    metrics = student.BlockMetrics(*(np.zeros((2, 1), np.float32) for _ in range(4)))
    seeds.write_partial(folder, seeds._identity(RULED, data, 2), carry, [metrics], 2)
    other = dataclasses.replace(RULED, plateau_delta=0.5)
    with pytest.raises(checkpoint.CheckpointError, match=str(folder)):
        seeds.read_partial(folder, seeds._identity(other, data, 2), carry)
    restored, parts, blocks = seeds.read_partial(folder, seeds._identity(RULED, data, 2), carry)
    assert blocks == 2 and np.asarray(parts[0].loss).shape == (2, 1)


def test_losses_side_by_side_are_cached_whole_under_the_rule(tmp_path, ruled_students, monkeypatch):
    """Plateau students of several losses trained in one program are stored one folder per
    loss (no half-way folder left), and read back as they were trained."""
    data, _ = ruled_students
    monkeypatch.setattr(experiments.common, "_MEMO", {})
    configs = [RULED, dataclasses.replace(RULED, loss="nll")]
    first = seeds.distil_losses(configs, data, 2, cache=tmp_path)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == sorted(seeds.student_folder_name(c, data, 2) for c in configs), names
    monkeypatch.setattr(experiments.common, "_MEMO", {})
    again = seeds.distil_losses(configs, data, 2, cache=tmp_path)
    for (_, s1, m1), (_, s2, m2) in zip(first, again, strict=True):
        np.testing.assert_array_equal(np.asarray(m1.held_out), np.asarray(m2.held_out))
        np.testing.assert_array_equal(np.asarray(s1.updates), np.asarray(s2.updates))


def test_final_agreement_is_each_seeds_last_trained_block():
    """A student stopped by the plateau rule has nan blocks after its stop: its final agreement
    is its last trained block's, not nan (the loss comparison's rows and notebooks 03 and 04)."""
    metrics = student.BlockMetrics(
        loss=np.zeros((3, 4)),
        agreement=np.array(
            [[0.5, 0.6, np.nan, np.nan], [0.5, 0.6, 0.7, 0.8], [np.nan] * 4], np.float32
        ),
        score=np.zeros((3, 4)),
    )
    np.testing.assert_allclose(plateau.final_agreement(metrics), [0.6, 0.8, np.nan], rtol=1e-6)
    assert experiments.final_agreement is plateau.final_agreement  # what notebooks 03, 04 call
