"""Figures of the interval estimates (stats.py): aggregates with 95 % intervals, as rliable draws
them, and performance profiles with bootstrap bands. Functions take a stage summary of
`stats.summarise_stage` and return a Figure."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np

from distill.stats import AGGREGATE_COLUMNS


def interval_figure(summary: dict, paper: dict[str, float] | None = None):
    """One panel per aggregate: a point and its interval per group (rows), rliable's style;
    the teacher's level (100 % or 1) dashed, the paper's values (`{group: %}`) as stars on the
    geometric-mean panel."""
    groups = list(summary["groups"])
    level = 100 * summary["level"]
    fig, axes = plt.subplots(
        1, len(AGGREGATE_COLUMNS), figsize=(3.6 * len(AGGREGATE_COLUMNS), 0.5 * len(groups) + 1.6)
    )
    y = np.arange(len(groups))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, (key, label, _) in zip(axes, AGGREGATE_COLUMNS, strict=True):
        for i, g in enumerate(groups):
            est = summary["groups"][g][key]
            c = colours[i % len(colours)]
            ax.plot(
                [est["lo"], est["hi"]], [i, i], color=c, lw=6, alpha=0.45, solid_capstyle="butt"
            )
            ax.plot(est["point"], i, "|", color="black", ms=14, mew=2)
        ax.axvline(100.0 if "%" in label else 1.0, color="grey", ls="--", lw=1)
        if paper and key == "geometric_mean":
            pts = [(v, i) for i, g in enumerate(groups) if (v := paper.get(g)) is not None]
            if pts:
                ax.plot(*zip(*pts, strict=True), "r*", ms=10, label="paper (Atari)")
                ax.legend(fontsize=7, loc="best")
        ax.set_yticks(y)
        ax.set_yticklabels(groups if ax is axes[0] else [])
        ax.set_ylim(len(groups) - 0.3, -0.7)  # the first group on top
        ax.set_xlabel(label)
        ax.grid(alpha=0.3, axis="x")
    axes[0].set_ylabel(" / ".join(summary["by"]))
    fig.suptitle(
        f"{summary['stage']}: point estimate (bar) and {level:.0f} % stratified-bootstrap "
        f"interval ({summary['reps']} resamples); dashed: the teacher",
        fontsize=9,
    )
    fig.tight_layout()
    return fig


def profile_figure(summary: dict):
    """Performance profile: fraction of runs above each % of teacher, a line per group with its
    pointwise bootstrap band; legend outside the axes so it covers no data."""
    prof = summary["profile"]
    tau = np.asarray(prof["thresholds"])
    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    for g, est in prof["groups"].items():
        (line,) = ax.plot(tau, est["point"], lw=1.8, label=g)
        ax.fill_between(tau, est["lo"], est["hi"], color=line.get_color(), alpha=0.2, lw=0)
    ax.axvline(100.0, color="grey", ls="--", lw=1, label="teacher")
    ax.set_xlabel("score, % of teacher (threshold)")
    ax.set_ylabel("fraction of runs above threshold")
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlim(tau[0], tau[-1])
    ax.grid(alpha=0.3)
    ax.set_title(
        f"{summary['stage']}: performance profile, {100 * summary['level']:.0f} % bands",
        fontsize=9,
    )
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), title=summary["by"][0])
    fig.tight_layout()
    return fig
