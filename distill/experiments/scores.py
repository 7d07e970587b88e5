"""The scores every experiment reports: % of teacher, random-normalised score, the paper's
geometric mean, a student's row from its paired episodes, and summaries over seeds."""

from __future__ import annotations

import math

import numpy as np


def percent_of_teacher(score: float, teacher_score: float) -> float:
    return 100.0 * score / teacher_score if teacher_score else float("nan")


def random_normalised(score: float, teacher_score: float, random_score: float) -> float:
    gap = teacher_score - random_score
    return (score - random_score) / gap if gap else float("nan")


def geometric_mean(values) -> float:
    v = np.asarray(list(values), dtype=float)
    if v.size == 0 or (v <= 0).any() or not np.isfinite(v).all():
        return float("nan")
    return float(math.exp(np.mean(np.log(v))))


def scored(score: float, teacher_score: float, random_score: float) -> dict:
    """A result row's score columns: the score, its references and both normalisations."""
    return {
        "score": score,
        "teacher_score": teacher_score,
        "random_score": random_score,
        "percent_of_teacher": percent_of_teacher(score, teacher_score),
        "random_normalised": random_normalised(score, teacher_score, random_score),
    }


def paired_row(episode_scores, reference: dict) -> dict:
    """A student's score columns (`scored`) from its `[episodes]` scores on the paired episodes
    and its game's reference row, with the per-episode scores of both kept."""
    episodes = [float(x) for x in episode_scores]
    return {
        **scored(float(np.mean(episodes)), reference["teacher_score"], reference["random_score"]),
        "eval_seed": reference["eval_seed"],
        "episode_scores": episodes,
        "teacher_episode_scores": reference["teacher_episode_scores"],
    }


def summarise(rows: list[dict], by: tuple[str, ...]) -> list[dict]:
    """Mean and std over seeds of % of teacher and random-normalised score, grouped by `by`."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault(tuple(r[k] for k in by), []).append(r)
    out = []
    for key, rs in groups.items():
        pct = np.array([r["percent_of_teacher"] for r in rs])
        norm = np.array([r["random_normalised"] for r in rs])
        out.append(
            {
                **dict(zip(by, key, strict=True)),
                "seeds": len(rs),
                "score_mean": float(np.mean([r["score"] for r in rs])),
                "percent_mean": float(np.mean(pct)),
                "percent_std": float(np.std(pct)),
                "normalised_mean": float(np.mean(norm)),
                "normalised_std": float(np.std(norm)),
            }
        )
    return out


def summary_columns(by: tuple[str, ...]) -> list[str]:
    """The columns of a `summarise` table, in reading order."""
    stats = ("score_mean", "percent_mean", "percent_std", "normalised_mean", "normalised_std")
    return [*by, "seeds", *stats]
