"""Learning-curve figures drawn from students' metric rows (`distill.plotting` holds the other
figures)."""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib.pyplot as plt
import numpy as np


def training_agreement_figure(rows: Sequence[dict], games: Sequence[str]):
    """Multi-task students' training-minibatch agreement with the teacher against updates (all
    games together), one panel per game: a line per loss, the mean over seeds, each seed faint.
    A curve still rising at its last point was stopped before its plateau."""
    fig, axes = plt.subplots(1, len(games), figsize=(3.6 * len(games), 3.0), squeeze=False)
    losses = list(dict.fromkeys(r["student_loss"] for r in rows))
    for ax, game in zip(axes[0], games, strict=True):
        for i, loss in enumerate(losses):
            at = {
                (r["seed"], r["updates"]): r.get(f"agreement {game}", np.nan)
                for r in rows
                if r["student_loss"] == loss
            }
            seeds = sorted({s for s, _ in at})
            x = sorted({u for _, u in at})
            per_seed = np.array([[at.get((s, u), np.nan) for u in x] for s in seeds], float)
            for y in per_seed:
                ax.plot(x, y, color=f"C{i}", alpha=0.25, lw=1)
            mean = [
                np.mean(c[np.isfinite(c)]) if np.isfinite(c).any() else np.nan for c in per_seed.T
            ]
            ax.plot(x, mean, "o-", ms=3, color=f"C{i}", label=loss)
        ax.set_title(game, fontsize=9)
        ax.set_xlabel("updates (all games)")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("training agreement")
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    return fig
