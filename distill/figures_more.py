"""Figures for the teaching notebooks 05-09: titled, axes labelled with units, legends beside
the data, bands and error bars named, colour bars on every map.

Each function takes what an experiment or `distill.explain` returns and draws one figure; none
computes a result of its own beyond means, spreads and normalisations for display.
"""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.patches import FancyBboxPatch, Patch

from distill import envs

METHODS = ("multi-dqn", "distilled-nll", "distilled-kl")
PAPER_MULTITASK = {"multi-dqn": 83.5, "distilled-nll": 105.1, "distilled-kl": 116.9}  # Sec. 5.3


def _short(game: str) -> str:
    return game.replace("-MinAtar", "").replace("ALE/", "").replace("-v5", "")


def _legend_outside(ax, **kw) -> None:
    """A legend to the right of the axes, where it cannot cover data."""
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False, **kw)


# ---------------------------------------------------------------------------- 05 multi-task


def _box(ax, x: float, y: float, w: float, h: float, text: str, colour: str) -> None:
    ax.add_patch(
        FancyBboxPatch(
            (x - w / 2, y - h / 2), w, h, boxstyle="round,pad=0.02", fc=colour, ec="black", lw=0.8
        )
    )
    ax.text(x, y, text, ha="center", va="center", fontsize=7.5)


def _arrow(ax, start: tuple[float, float], end: tuple[float, float]) -> None:
    ax.annotate("", xy=end, xytext=start, arrowprops={"arrowstyle": "->", "lw": 0.8})


def _layer_sizes(params: dict) -> dict:
    """Layer shapes read from a `MultiTaskQNetwork`'s parameters, so that the diagram shows the
    network that was built, not a description of it."""
    p = params["params"]
    trunk = p["trunk"]
    convs = [trunk[k]["kernel"].shape for k in sorted(trunk) if k.startswith("Conv")]
    dense = [trunk[k]["kernel"].shape for k in sorted(trunk) if k.startswith("Dense")]
    heads = sorted(k for k in p if k.startswith("head_hidden_layers_"))
    return {
        "convs": convs,  # (kh, kw, in, out)
        "dense": dense,  # (in, out)
        "hidden": [p[k]["kernel"].shape[1] for k in heads],
        "actions": [p[f"controllers_{i}"]["kernel"].shape[1] for i in range(len(heads))],
    }


def multitask_diagram(params: dict, games: Sequence[str], title: str = ""):
    """The multi-task network as boxes: padded input, the shared trunk, and per game a
    controller head (hidden layer + output of that game's actions), sizes read from `params`."""
    sizes = _layer_sizes(params)
    n = len(games)
    fig, ax = plt.subplots(figsize=(10, 1.0 + 0.75 * n))
    ax.set_xlim(0, 10)
    ax.set_ylim(-0.6, n - 0.2)
    ax.axis("off")
    mid = (n - 1) / 2
    k = sizes["convs"][0]
    _box(ax, 0.8, mid, 1.4, 0.9, f"state\n10x10x{k[2]}\n(channels\nzero-padded)", "#f0f0f0")
    trunk = [f"conv {k[3]} of {k[0]}x{k[1]}\n+ LayerNorm, ReLU" for k in sizes["convs"]]
    trunk += [f"fc {d[1]}\n+ LayerNorm, ReLU" for d in sizes["dense"]]
    _box(ax, 3.1, mid, 2.2, 0.35 + 0.45 * len(trunk), "\n".join(trunk), "#cfe2f3")
    ax.text(3.1, mid + 0.35 + 0.22 * len(trunk), "shared trunk", ha="center", fontsize=8)
    _arrow(ax, (1.5, mid), (2.0, mid))
    for i, game in enumerate(games):
        y = n - 1 - i
        _arrow(ax, (4.2, mid), (5.0, y))
        _box(ax, 5.8, y, 1.5, 0.55, f"fc {sizes['hidden'][i]}, ReLU", "#fce5cd")
        _arrow(ax, (6.55, y), (7.0, y))
        names = envs.action_names(game)
        _box(ax, 7.75, y, 1.5, 0.55, f"{sizes['actions'][i]} Q-values", "#d9ead3")
        ax.text(8.6, y, f"{_short(game)}: " + " ".join(names), va="center", fontsize=7)
    ax.text(6.6, n - 0.45, "controller head, one per game (picked by the task id)", fontsize=8)
    if title:
        ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return fig


def multitask_bars(result: dict, title: str = ""):
    """% of each single-game teacher per game and method (mean over seeds, error bar: std over
    seeds), the geometric mean across games, and the paper's 3-game geometric means as stars."""
    games = [t["game"] for t in result["teachers"]]
    labels = [_short(g) for g in games] + ["geometric\nmean"]
    fig, ax = plt.subplots(figsize=(8.5, 3.6))
    x = np.arange(len(labels))
    methods = [m for m in METHODS if any(r["method"] == m for r in result["rows"])]
    for i, m in enumerate(methods):  # Atari has no multi-task DQN
        per_game = [
            [r["percent_of_teacher"] for r in result["rows"] if r["method"] == m and r["game"] == g]
            for g in games
        ]
        s = next(s for s in result["summary"] if s["method"] == m)
        means = [float(np.mean(v)) for v in per_game] + [s["geomean_percent_mean"]]
        stds = [float(np.std(v)) for v in per_game] + [s.get("geomean_percent_std", 0.0)]
        runs = len({r.get("seed", 0) for r in result["rows"] if r["method"] == m})
        label = f"{m} ({runs} run{'s' if runs > 1 else ''})"
        ax.bar(x + (i - 1) * 0.26, means, 0.26, yerr=stds, capsize=2, label=label, color=f"C{i}")
        ax.plot(x[-1] + (i - 1) * 0.26, PAPER_MULTITASK[m], "*", color="red", ms=10)
    ax.plot([], [], "*", color="red", ms=10, label="paper, 3 Atari games\n(Sec. 5.3)")
    ax.axhline(100, color="grey", ls="--", lw=1, label="the teacher (100 %)")
    ax.set_xticks(x, labels, fontsize=8)
    ax.set_xlabel("game (MinAtar)")
    ax.set_ylabel("score, % of the game's\nsingle-game teacher")
    ax.set_title(
        title or "one network for all games (bars: mean over runs; error bars: std over runs)",
        fontsize=9,
    )
    _legend_outside(ax)
    ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    return fig


# ---------------------------------------------------------------------------- 06 online


def online_curves(result: dict, title: str = ""):
    """One seed's run (`experiments.online`). Left: teacher and student scores per round
    against the teacher's env steps, the second half (where the spread is measured) shaded.
    Right: the student's agreement with the teacher's greedy action on its training window."""
    rows = result["rows"]
    steps = np.array([r["env_steps"] for r in rows]) / 1e3
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(11, 3.4), gridspec_kw={"width_ratios": [3, 2]})
    half = steps[len(steps) // 2]
    ax.axvspan(half, steps[-1], color="grey", alpha=0.12, label="second half:\nspread measured")
    ax.plot(steps, [r["teacher_score"] for r in rows], "o-", label="teacher (DQN, learning)")
    ax.plot(steps, [r["student_score"] for r in rows], "s-", label="student (KL, online)")
    episodes = result["config"]["online"]["eval_episodes"]
    ax.set_xlabel("teacher's env steps (thousands)")
    ax.set_ylabel(f"score (mean of {episodes}\nepisodes, epsilon 0.05)")
    ax.set_title(title or f"online distillation, {result['env_id']}", fontsize=9)
    ax.grid(alpha=0.3)
    _legend_outside(ax)
    bx.plot(steps, [r["agreement"] for r in rows], "s-", color="C1")
    bx.set_ylim(0, 1.02)
    bx.set_xlabel("teacher's env steps (thousands)")
    bx.set_ylabel("agreement with the teacher's\naction (training window)")
    bx.set_title("the student follows the teacher", fontsize=9)
    bx.grid(alpha=0.3)
    fig.tight_layout()
    return fig


# ---------------------------------------------------------------------------- 07 Atari


def student_curves(
    rows: Sequence[dict],
    random_score: float | None,
    title: str = "",
    teacher_score: float | None = None,
):
    """A student's training metrics (`manifest["metrics"]`) against updates: loss, agreement
    with the teacher on training minibatches, and game score beside the teacher's and a random
    player's."""
    updates = [r["updates"] for r in rows]
    panels = (
        ("loss", "KL loss (nats)", "distillation loss"),
        ("agreement", "share of the teacher's\nactions matched", "agreement"),
        ("score", "score (points, mean\nof evaluation episodes)", "game score"),
    )
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.2))
    for ax, (key, ylabel, name) in zip(axes, panels, strict=True):
        ax.plot(updates, [r[key] for r in rows], marker="o", label="student")
        ax.set_xlabel("student updates (minibatches)")
        ax.set_ylabel(ylabel)
        ax.set_title(name, fontsize=9)
        ax.grid(alpha=0.3)
    axes[1].set_ylim(0, 1.02)
    for score, label, colour in (
        (teacher_score, "teacher", "C1"),
        (random_score, "random", "grey"),
    ):
        if score is not None:
            axes[2].axhline(score, color=colour, ls="--", label=f"{label} player")
    axes[2].legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def target_top_probability(q: np.ndarray, taus: Sequence[float], names: Sequence[str] = ()):
    """Histogram, per tau, of the top probability of the KL target softmax(q / tau) over the
    states `q [n, actions]` (tau in the paper's units: Q-value points)."""
    q = np.asarray(q, dtype=np.float64)
    fig, ax = plt.subplots(figsize=(8, 3.2))
    bins = np.linspace(1 / q.shape[1], 1, 31)
    for tau in taus:
        z = (q - q.max(axis=1, keepdims=True)) / tau
        p = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
        ax.hist(p.max(axis=1), bins=bins, histtype="step", lw=1.5, label=f"tau = {tau:g}")
    ax.axvline(1.0, color="black", ls=":", label="NLL target (one-hot)")
    ax.set_xlabel("probability the target gives the teacher's best action")
    ax.set_ylabel(f"states (of {len(q):,})")
    ax.set_title("how sharp is the KL target on the teacher's own states?", fontsize=9)
    _legend_outside(ax)
    fig.tight_layout()
    return fig


# ---------------------------------------------------------------------------- 08 saliency


def _shares(m: np.ndarray) -> np.ndarray:
    """A saliency map as each entry's share of the map's total (so that policies whose Q-values
    are on different scales share one colour scale)."""
    m = np.asarray(m, dtype=float)
    total = m.sum()
    return m / total if total > 0 else m


def saliency_rows(
    obs: np.ndarray,
    maps: dict[str, np.ndarray],
    channel_names: Sequence[str] | None = None,
    title: str = "",
):
    """Saliency maps of several policies on one MinAtar state `[H, W, C]` (maps `[H, W, C]`) or
    Atari stack `[stack, H, W]` (maps `[H, W]`). Each map is shown as shares of its own total,
    on one colour scale for the whole figure, with a colour bar: rows (policies) compare."""
    obs = np.asarray(obs)
    names = list(maps)
    shares = {n: _shares(maps[n]) for n in names}
    if obs.ndim == 3 and obs.shape[0] < obs.shape[-1]:  # Atari
        top = max(float(s.max()) for s in shares.values()) or 1.0
        fig, axes = plt.subplots(1, len(names), figsize=(3.0 * len(names) + 1, 3.2), squeeze=False)
        for ax, name in zip(axes[0], names, strict=True):
            ax.imshow(obs[-1], cmap="gray", vmin=0, vmax=255)
            image = ax.imshow(shares[name], cmap="magma", alpha=0.65, vmin=0, vmax=top)
            ax.set_title(name, fontsize=8)
            ax.set_xticks([])
            ax.set_yticks([])
        fig.colorbar(image, ax=axes, shrink=0.8, label="share of the map's total")
    else:
        c = obs.shape[-1]
        channel_names = list(channel_names or [f"channel {i}" for i in range(c)])
        summed = {n: s.sum(-1) for n, s in shares.items()}
        top_sum = max(float(s.max()) for s in summed.values()) or 1.0
        top = max(float(s.max()) for s in shares.values()) or 1.0
        fig, axes = plt.subplots(
            len(names),
            c + 2,
            figsize=(1.5 * (c + 2) + 1.2, 1.6 * len(names) + 1.3),
            squeeze=False,
            constrained_layout=True,
        )
        from distill import plotting

        for r, (row, name) in enumerate(zip(axes, names, strict=True)):
            row[0].imshow(plotting.minatar_image(obs), interpolation="nearest")
            row[0].set_ylabel(name, fontsize=8)
            whole = row[1].imshow(
                summed[name], cmap="viridis", vmin=0, vmax=top_sum, interpolation="nearest"
            )
            for i in range(c):
                image = row[2 + i].imshow(
                    shares[name][..., i], cmap="magma", vmin=0, vmax=top, interpolation="nearest"
                )
            for ax in row:
                ax.set_xticks([])
                ax.set_yticks([])
            if r == 0:
                for ax, label in zip(row, ["state", "all channels", *channel_names], strict=True):
                    ax.set_title(label, fontsize=8)
        fig.colorbar(
            whole, ax=axes[:, 1], location="bottom", shrink=0.9, label="share, summed"
        ).ax.tick_params(labelsize=6, rotation=45)
        fig.colorbar(
            image, ax=axes[:, 2:], shrink=0.8, label="share of the policy's\ntotal saliency"
        )
        colours = plt.get_cmap("tab10")(np.arange(c) % 10)  # the colours of minatar_image
        handles = [Patch(color=k, label=n) for k, n in zip(colours, channel_names, strict=True)]
        legend = axes[-1, 2].legend(
            handles=handles,
            title="objects in the state panel",
            loc="upper left",
            bbox_to_anchor=(0.0, -0.08),
            ncol=min(c, 5),
            fontsize=7,
            title_fontsize=7,
            frameon=False,
        )
        legend.set_in_layout(False)  # below the panels; the layout keeps the columns even
    if title:
        fig.suptitle(title, fontsize=10)
    return fig


# ---------------------------------------------------------------------------- 09 regimes


def regimes_curves(result: dict, title: str = ""):
    """Per game a row: score, then agreement on (a) training, (b) held-out teacher and (c) the
    student's own states against updates, one line per (net, regime), mean over seeds."""
    from distill import diagnostics

    games = list(dict.fromkeys(c["game"] for c in result["curves"]))
    seeds = result["budget"]["seeds"]
    panels = ("score_mean", *(f"agreement_{s}" for s in diagnostics.SETS))
    names = ("game score", "(a) on its training states", "(b) held-out teacher states")
    names += ("(c) the student's own states",)
    fig, axes = plt.subplots(len(games), 4, figsize=(16, 3.2 * len(games)), squeeze=False)
    for i, game in enumerate(games):
        for k, c in enumerate(c for c in result["curves"] if c["game"] == game):
            style = "-" if c["net"] == "net2" else "--"
            for j, panel in enumerate(panels):
                axes[i, j].plot(
                    c["updates"],
                    c[panel],
                    style,
                    marker="o",
                    color=f"C{k % 10}",
                    label=f"{c['regime']} ({'same size' if c['net'] == 'teacher' else c['net']})",
                )
        for j, name in enumerate(names):
            ax = axes[i, j]
            ax.set_title(f"{_short(game)}: {name}", fontsize=9)
            ax.set_xlabel("student updates")
            ax.set_ylabel("score (points)" if j == 0 else "agreement with teacher")
            ax.grid(alpha=0.3)
            if j:
                ax.set_ylim(0, 1.02)
        _legend_outside(axes[i, -1])
    fig.suptitle(title or f"three regimes, KL students (mean over {seeds} seeds)", fontsize=10)
    fig.tight_layout()
    return fig


def time_in_episode(t_of: dict[str, np.ndarray], title: str = ""):
    """Histograms of the states' steps since their episode's reset, one per dataset."""
    fig, ax = plt.subplots(figsize=(8, 3.2))
    top = max(int(t.max()) for t in t_of.values()) + 1
    bins = np.linspace(0, top, 40)
    for name, t in t_of.items():
        ax.hist(t, bins=bins, alpha=0.55, label=f"{name}\n(mean t {t.mean():.0f})")
    ax.set_xlabel("steps since the episode's reset (t)")
    ax.set_ylabel(f"states (of {len(next(iter(t_of.values()))):,})")
    ax.set_yscale("log")
    ax.set_title(title or "where in the episode the dataset's states lie", fontsize=9)
    _legend_outside(ax)
    fig.tight_layout()
    return fig
