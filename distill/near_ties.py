"""How much of a teacher's score rests on its closest decisions.

A student that cannot tell the teacher's best action from its runner-up where their Q-values are
nearly equal agrees less with its teacher, and the KL target there stays soft
(`figures.teacher_margins`). Whether that costs score is a question about the teacher, not the
student: play the teacher itself on the paired evaluation episodes with its best and
second-best actions swapped wherever their Q-gap is under `g` (`runner_up`), and read its score
against `g`. A flat curve says the near ties are harmless and a student's lost score comes from
elsewhere (its other mistakes, or states the teacher never showed it); a curve that falls at the
gaps where the student disagrees says those decisions carry the score.

    python -m distill.near_ties --games Asterix-MinAtar,Breakout-MinAtar --gaps 0,0.01,0.03,0.1
        [--teachers small|large] [--episodes 100] [--out FILE.json]
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from distill import checkpoint, evaluate, paths
from distill.experiments import paired


def runner_up(q: jax.Array, g: jax.Array) -> jax.Array:
    """`q [..., actions]` with its best and second-best values swapped where their gap is
    under `g` (an argmax then picks the runner-up there; elsewhere nothing changes)."""
    values, index = jax.lax.top_k(q, 2)
    gap = (values[..., 0] - values[..., 1])[..., None]
    n = q.shape[-1]
    moved = q - gap * jax.nn.one_hot(index[..., 0], n) + gap * jax.nn.one_hot(index[..., 1], n)
    return jnp.where(gap < g, moved, q)


def runner_up_apply(apply: Callable) -> Callable:
    """A policy function of `(teacher params, g)`: the teacher's Q-values through `runner_up`."""
    return lambda params, obs: runner_up(apply(params[0], obs), params[1])


def scores(policy: checkpoint.Policy, gaps: Sequence[float], episodes: int) -> np.ndarray:
    """`[gaps, episodes]`: the teacher with its near ties (gap under each g) lost, on the paired
    evaluation episodes (g = 0 is the teacher itself)."""
    tag = ("runner-up", policy.net)  # g is an argument: one compiled evaluator for every g
    apply = runner_up_apply(policy.apply)
    return np.stack(
        [
            paired.episode_scores(
                policy.env_id, tag, apply, (policy.params, jnp.float32(g)), episodes
            )
            for g in gaps
        ]
    )


def table(env_id: str, gaps: Sequence[float], s: np.ndarray) -> list[dict]:
    """Rows per g: mean score, its standard error, and % of the teacher's (g = 0) score on the
    same episodes."""
    base = float(s[0].mean())
    return [
        {
            "game": env_id,
            "g": float(g),
            "score": float(row.mean()),
            "se": evaluate.standard_error(row),
            "percent_of_teacher": 100.0 * float(row.mean()) / base if base else float("nan"),
        }
        for g, row in zip(gaps, s, strict=True)
    ]


def main(argv: Sequence[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--games", default="Breakout-MinAtar", help="comma-separated env ids")
    p.add_argument("--gaps", default="0,0.01,0.03,0.1", help="comma-separated g, the first 0")
    p.add_argument("--teachers", default="small", choices=paths.TEACHER_SIZES)
    p.add_argument("--episodes", type=int, default=100)
    p.add_argument("--out", default=None, help="write the rows as JSON here")
    args = p.parse_args(argv)
    gaps = [float(x) for x in args.gaps.split(",")]
    if gaps[0] != 0.0 or any(g < 0 for g in gaps):
        p.error(f"--gaps {args.gaps}: non-negative, starting with 0 (the teacher itself)")
    from distill import report

    rows = []
    for env_id in args.games.split(","):
        policy = checkpoint.load(paths.shipped_teacher(env_id, args.teachers), env_id=env_id)
        rows += table(env_id, gaps, scores(policy, gaps, args.episodes))
    print(report.markdown_table([{**r, "g": f"{r['g']:g}"} for r in rows]))
    if args.out:
        command = ["python", "-m", "distill.near_ties", *(sys.argv[1:] if argv is None else argv)]
        checkpoint.atomic_write_json(args.out, {"command": " ".join(command), "rows": rows})
    return rows


if __name__ == "__main__":
    main()
