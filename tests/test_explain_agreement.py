"""Agreement (`distill.explain.agreement`): confusion matrices and kinds of state, by hand."""

from __future__ import annotations

import numpy as np
import pytest

from distill import envs, explain

BREAKOUT = "Breakout-MinAtar"

# ---------------------------------------------------------------------------- agreement


def test_agreement_of_a_policy_with_itself():
    q = np.random.default_rng(0).normal(size=(30, 4))
    r = explain.agreement_report(q, q)
    assert r["agreement"] == 1.0 and r["disagreements"] == []
    cm = np.asarray(r["confusion"])
    assert (cm == np.diag(np.diag(cm))).all() and cm.sum() == 30
    np.testing.assert_array_equal(np.diag(cm), np.bincount(q.argmax(1), minlength=4))
    assert all(k["agreement"] == 1.0 for k in r["by_gap"])
    assert sum(k["states"] for k in r["by_gap"]) == 30


def test_agreement_by_hand():
    teacher = np.array([[1.0, 0, 0], [0, 2, 0], [0, 0, 3], [0, 0.5, 0]])  # argmax 0, 1, 2, 1
    student = np.array([[1.0, 0, 0], [0, 0, 1], [0, 0, 1], [1, 0, 0]])  # argmax 0, 2, 2, 0
    r = explain.agreement_report(teacher, student, ["noop", "left", "right"])
    assert r["agreement"] == 0.5
    assert r["confusion"] == [[1, 0, 0], [1, 0, 1], [0, 0, 1]]
    assert [a["agreement"] for a in r["by_teacher_action"]] == [1.0, 0.0, 1.0]
    assert r["disagreements"] == [1, 3]  # the teacher's gap: 2 in state 1, 0.5 in state 3
    np.testing.assert_array_equal(explain.gap_kinds(teacher), [0, 1, 2, 0])  # gaps 1, 2, 3, .5
    with pytest.raises(ValueError, match="actions"):
        explain.agreement_report(teacher, student[:, :2])


def test_action_names_of_minatar_games():
    assert envs.action_names(BREAKOUT) == ("NOOP", "LEFT", "RIGHT")
    assert envs.action_names("Freeway-MinAtar") == ("NOOP", "UP", "DOWN")
