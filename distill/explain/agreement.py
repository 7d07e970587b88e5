"""Agreement: how often a student's greedy action is its teacher's.

As a confusion matrix over actions, and per kind of state: by the teacher's action, or by the
teacher's confidence (its gap between the best and second-best Q-value).
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array

# Kinds of state by the teacher's confidence: equal thirds of the states by Q-gap.
GAP_KINDS = ("low gap", "mid gap", "high gap")


def q_gap(q: Array) -> Array:
    """Best minus second-best Q-value `[batch, actions]` -> `[batch]`: the teacher's confidence."""
    top2 = jax.lax.top_k(q, 2)[0]
    return top2[:, 0] - top2[:, 1]


def gap_kinds(teacher_q: np.ndarray, num_kinds: int = len(GAP_KINDS)) -> np.ndarray:
    """Kind of each state `[batch]`: 0 .. num_kinds-1, equal-sized groups by increasing Q-gap
    (ties in the gap broken by order)."""
    gap = np.asarray(q_gap(jnp.asarray(teacher_q)))
    order = np.argsort(gap, kind="stable")
    kinds = np.empty(gap.size, np.int64)
    kinds[order] = np.arange(gap.size) * num_kinds // max(gap.size, 1)
    return kinds


def confusion_matrix(teacher_actions: Array, student_actions: Array, num_actions: int) -> Array:
    """Counts `[num_actions, num_actions]`: row = the teacher's action, column = the student's."""
    cm = jnp.zeros((num_actions, num_actions), jnp.int32)
    return cm.at[teacher_actions, student_actions].add(1)


def agreement_report(
    teacher_q: np.ndarray, student_q: np.ndarray, action_names: Sequence[str] | None = None
) -> dict:
    """How often argmax student = argmax teacher: overall, per teacher action, per gap kind."""
    teacher_q, student_q = np.asarray(teacher_q), np.asarray(student_q)
    if teacher_q.shape != student_q.shape or teacher_q.ndim != 2:
        raise ValueError(
            f"teacher_q and student_q must both be [batch, actions]; got {teacher_q.shape} "
            f"and {student_q.shape}"
        )
    num_actions = teacher_q.shape[1]
    names = list(action_names or [f"a{i}" for i in range(num_actions)])
    t, s = teacher_q.argmax(1), student_q.argmax(1)
    cm = np.asarray(confusion_matrix(jnp.asarray(t), jnp.asarray(s), num_actions))
    same = t == s
    kinds = gap_kinds(teacher_q)
    by_action = [
        {
            "action": names[a],
            "states": int(cm[a].sum()),
            "agreement": float(cm[a, a] / cm[a].sum()) if cm[a].sum() else float("nan"),
        }
        for a in range(num_actions)
    ]
    gap = np.asarray(q_gap(jnp.asarray(teacher_q)))
    by_gap = [
        {
            "kind": GAP_KINDS[k],
            "states": int(np.sum(kinds == k)),
            "gap_min": float(gap[kinds == k].min()) if np.any(kinds == k) else float("nan"),
            "gap_max": float(gap[kinds == k].max()) if np.any(kinds == k) else float("nan"),
            "agreement": float(same[kinds == k].mean()) if np.any(kinds == k) else float("nan"),
        }
        for k in range(len(GAP_KINDS))
    ]
    return {
        "states": int(t.size),
        "agreement": float(same.mean()),
        "confusion": cm.tolist(),
        "action_names": names,
        "by_teacher_action": by_action,
        "by_gap": by_gap,
        # the most confident teacher first: those disagreements are the telling ones
        "disagreements": [int(i) for i in np.flatnonzero(~same)[np.argsort(-gap[~same])]],
    }


def distinct_states(obs: np.ndarray, indices: Sequence[int], n: int) -> list[int]:
    """The first `n` of `indices` whose states differ from every earlier one's (for figures:
    a near-deterministic game revisits the same state from several envs)."""
    seen, out = set(), []
    for i in indices:
        key = np.asarray(obs[i]).tobytes()
        if key not in seen:
            seen.add(key)
            out.append(int(i))
        if len(out) == n:
            break
    return out
