"""The learning curves of trained teachers, one panel each, titled with their evaluation scores.

Training returns are what the trainer saw: on Atari, clipped rewards summed over a game (over
one life for the teachers trained before `envs.life_lost`: data/teachers/README.md), so not the
scale of the exported evaluation in each title (whole games, raw rewards, epsilon 0.05, no-op
starts) or of a random policy's score on the same episodes.

    python -m distill.teacher_curves data/teachers/ALE-Pong-v5 data/teachers/ALE-Breakout-v5 \\
        --out data/teachers/atari-learning-curves.png
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import matplotlib.pyplot as plt
from matplotlib.ticker import FuncFormatter

from distill import checkpoint, plotting


def curve_rows(manifest: dict, where: str) -> list[dict]:
    """A teacher manifest's metrics rows (its learning curve), refused when it has none."""
    rows = manifest.get("metrics")
    if not isinstance(rows, list) or not rows:
        raise checkpoint.CheckpointError(f"{where}: its manifest holds no learning curve")
    return rows


def score_line(manifest: dict) -> str:
    """'evaluation 16.8, random -20.2 (30 games)': the exported scores, or what is missing."""
    ev, rnd = manifest.get("evaluation"), manifest.get("random_evaluation")
    if not isinstance(ev, dict) or "mean" not in ev:
        return "not evaluated"
    line = f"evaluation {ev['mean']:.1f}"
    if isinstance(rnd, dict) and "mean" in rnd:
        line += f", random {rnd['mean']:.1f}"
    return f"{line} ({ev.get('episodes', '?')} games)"


def figure(folders: Sequence[str | Path]):
    """One panel per teacher folder: the smoothed training return against env steps, titled
    with its exported evaluation and random scores."""
    fig, axes = plt.subplots(1, len(folders), figsize=(4.4 * len(folders), 3.4), squeeze=False)
    for ax, folder in zip(axes[0], folders, strict=True):
        manifest = checkpoint.read_manifest(folder)
        plotting.learning_curve(curve_rows(manifest, str(folder)), ax=ax, smooth=5)
        ax.set_ylabel("training return (clipped on Atari)")
        ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: f"{x / 1e3:,.0f}k"))
        title = f"{manifest['env_id']}, {manifest['env_steps']:,} env steps"
        ax.set_title(f"{title}\n{score_line(manifest)}", fontsize=9)
    fig.tight_layout()
    return fig


def main(argv: Sequence[str] | None = None) -> Path:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("folders", nargs="+", help="exported teacher folders")
    p.add_argument("--out", required=True, help="the PNG to write")
    args = p.parse_args(sys.argv[1:] if argv is None else argv)
    path = Path(args.out)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure(args.folders).savefig(path, dpi=110, bbox_inches="tight")
    print(path)
    return path


if __name__ == "__main__":
    main()
