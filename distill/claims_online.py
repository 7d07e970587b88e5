"""The online stage's two claims (Rusu et al. 2016, section 5.4), judged by `distill.claims`'
rules from the per-round rows of one run per seed: the online student matches its teacher, and it
is more stable than its teacher (see `claims`' module doc for both rules)."""

from __future__ import annotations

import numpy as np

from distill import stats
from distill.rules import (
    CONTRADICTED,
    MIN_RUNS,
    REPRODUCED,
    UNRESOLVED,
    above_level,
    combine,
    fmt_interval,
)

ONLINE_MATCH_CLAIM = "online student matches its teacher"
ONLINE_MATCH_PAPER = "Sec. 5.4: the online student matches its teacher's score (no numbers)"
ONLINE_CLAIM = "online student more stable than its teacher"
ONLINE_PAPER = "Sec. 5.4: the online student is more stable than its teacher (no numbers)"


def stability(scores) -> dict:
    """`{"spread", "worst_drop"}` of one run's evaluations: distill.online.stability's
    definitions (a test checks they agree), without importing the training modules."""
    s = np.asarray(scores, dtype=float)
    drops = s[:-1] - s[1:]
    return {
        "spread": float(np.std(s[len(s) // 2 :])),
        "worst_drop": float(max(drops.max(initial=0.0), 0.0)),
    }


def online_runs(online: dict | None) -> list[list[dict]]:
    """The online stage's per-round rows, one list per run (seed), each in round order."""
    runs: dict = {}
    for r in sorted((online or {}).get("rows", []), key=lambda r: r["round"]):
        runs.setdefault(r.get("seed", 0), []).append(r)
    return list(runs.values())


def online_match(online: dict | None, reps: int = stats.REPS, seed: int = 0) -> dict:
    """The first half of the online claim: per run, the student's mean score over the second
    half of the rounds as a % of its teacher's in the same rounds, bootstrapped over runs and
    judged by the "at p %" rule with p = 100 (as good as its teacher, or better)."""
    out = {"claim": ONLINE_MATCH_CLAIM, "paper": ONLINE_MATCH_PAPER, "stage": "online"}
    runs = online_runs(online)
    if not runs:
        return {**out, "verdict": UNRESOLVED, "evidence": "no online results"}
    pct = []
    for rs in runs:
        half = rs[len(rs) // 2 :]
        teacher_mean = np.mean([r["teacher_score"] for r in half])
        student_mean = np.mean([r["student_score"] for r in half])
        pct.append(100.0 * student_mean / teacher_mean if teacher_mean > 0 else np.nan)
    each = ", ".join(f"{p:.1f}" for p in pct)
    if not np.isfinite(pct).all():  # a teacher that scored 0 or below
        return {**out, "verdict": UNRESOLVED, "evidence": f"no ratio to a teacher's score: {each}"}
    if len(runs) < MIN_RUNS:
        evidence = f"{len(runs)} run(s): {each} % of the teacher (fewer than {MIN_RUNS} runs)"
        return {**out, "verdict": UNRESOLVED, "evidence": evidence}
    est = stats.interval({"run": np.array(pct)}, stats.mean, reps, seed)
    verdict = CONTRADICTED if est["hi"] < 100.0 else REPRODUCED
    evidence = (
        f"{len(runs)} runs: second half {fmt_interval(est)} % of the teacher's score in the same "
        f"rounds (runs {each})"
    )
    return {**out, "verdict": verdict, "evidence": evidence}


def online_verdict(online: dict | None, reps: int = stats.REPS, seed: int = 0) -> dict:
    """The stability claim from the online stage's per-round rows (one run per seed)."""
    out = {"claim": ONLINE_CLAIM, "paper": ONLINE_PAPER, "stage": "online"}
    runs = online_runs(online)
    if not runs:
        return {**out, "verdict": UNRESOLVED, "evidence": "no online results"}
    diff = {"spread": [], "worst_drop": []}  # teacher - student, per run
    for rs in runs:
        t = stability([r["teacher_score"] for r in rs])
        s = stability([r["student_score"] for r in rs])
        for k in diff:
            diff[k].append(t[k] - s[k])
    if len(runs) == 1:
        evidence = (
            f"one run: spread {s['spread']:.2f} (student) vs {t['spread']:.2f} (teacher), "
            f"worst drop {s['worst_drop']:.2f} vs {t['worst_drop']:.2f}; no interval"
        )
        return {**out, "verdict": UNRESOLVED, "evidence": evidence}
    ests = {
        k: stats.interval({"run": np.array(v)}, stats.mean, reps, seed) for k, v in diff.items()
    }
    verdict = combine([above_level(e, 0.0) for e in ests.values()])
    evidence = "; ".join(f"teacher - student {k} = {fmt_interval(e, 2)}" for k, e in ests.items())
    if len(runs) < MIN_RUNS:
        verdict, evidence = UNRESOLVED, f"{evidence} (fewer than {MIN_RUNS} runs)"
    return {**out, "verdict": verdict, "evidence": f"{len(runs)} runs: {evidence}"}
