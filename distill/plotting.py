"""Every figure a notebook or a report shows. Functions take data and an optional Axes."""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib.pyplot as plt
import numpy as np


def _axes(ax=None, figsize=(6, 3.5)):
    if ax is None:
        _, ax = plt.subplots(figsize=figsize)
    return ax


def learning_curve(rows: Sequence[dict], ax=None, label: str | None = None, smooth: int = 5):
    """Mean training-episode return against env steps, from a run's metrics rows."""
    ax = _axes(ax)
    steps = np.array([r["env_steps"] for r in rows], dtype=float)
    ret = np.array(
        [np.nan if r["mean_return"] is None else r["mean_return"] for r in rows], dtype=float
    )
    if smooth > 1 and ret.size >= smooth:
        valid = np.where(np.isfinite(ret), ret, np.nanmean(ret) if np.isfinite(ret).any() else 0)
        ret = np.convolve(valid, np.ones(smooth) / smooth, mode="same")
    ax.plot(steps, ret, label=label)
    ax.set_xlabel("env steps")
    ax.set_ylabel("training episode return")
    ax.grid(alpha=0.3)
    if label:
        ax.legend()
    return ax


def observation_channels(obs: np.ndarray, names: Sequence[str] | None = None, title: str = ""):
    """A MinAtar observation `[10, 10, C]` as one small image per object channel."""
    obs = np.asarray(obs, dtype=float)
    c = obs.shape[-1]
    names = list(names) if names else [f"channel {i}" for i in range(c)]
    fig, axes = plt.subplots(1, c, figsize=(1.6 * c, 1.9))
    for i, ax in enumerate(np.atleast_1d(axes)):
        ax.imshow(obs[..., i], cmap="Greys", vmin=0, vmax=1)
        ax.set_title(names[i], fontsize=8)
        ax.set_xticks([])
        ax.set_yticks([])
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def atari_frames(obs: np.ndarray, title: str = ""):
    """An Atari observation `[4, 84, 84]`: the stacked frames, oldest first."""
    obs = np.asarray(obs)
    fig, axes = plt.subplots(1, obs.shape[0], figsize=(2 * obs.shape[0], 2.2))
    for i, ax in enumerate(axes):
        ax.imshow(obs[i], cmap="gray", vmin=0, vmax=255)
        ax.set_title(f"t-{obs.shape[0] - 1 - i}", fontsize=8)
        ax.axis("off")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def q_values_bar(q: np.ndarray, ax=None, action_names: Sequence[str] | None = None, title=""):
    """One state's Q-values as bars, the greedy action highlighted."""
    ax = _axes(ax, figsize=(3, 2.5))
    q = np.asarray(q, dtype=float)
    colors = ["tab:orange" if i == int(np.argmax(q)) else "tab:blue" for i in range(q.size)]
    ax.bar(range(q.size), q, color=colors)
    ax.set_xticks(range(q.size))
    if action_names:
        ax.set_xticklabels(action_names, rotation=45, fontsize=7)
    ax.set_xlabel("action")
    ax.set_ylabel("Q")
    if title:
        ax.set_title(title, fontsize=9)
    return ax


def score_histogram(scores: dict[str, np.ndarray], ax=None, title: str = ""):
    """Per-episode scores of several policies (e.g. teacher vs random) as histograms."""
    ax = _axes(ax)
    for label, s in scores.items():
        ax.hist(np.asarray(s), bins=20, alpha=0.6, label=f"{label} (mean {np.mean(s):.1f})")
    ax.set_xlabel("episode score")
    ax.set_ylabel("episodes")
    ax.legend()
    if title:
        ax.set_title(title)
    return ax


def softmax_temperatures(q: np.ndarray, taus: Sequence[float], ax=None, title: str = ""):
    """softmax(q / tau) for several tau: small tau sharpens, large tau softens."""
    ax = _axes(ax, figsize=(6, 3))
    q = np.asarray(q, dtype=float)
    width = 0.8 / len(taus)
    for i, tau in enumerate(taus):
        z = q / tau
        p = np.exp(z - z.max())
        p /= p.sum()
        ax.bar(np.arange(q.size) + i * width, p, width=width, label=f"tau = {tau:g}")
    ax.set_xticks(np.arange(q.size) + 0.4 - width / 2)
    ax.set_xticklabels([f"a{i}\nQ={v:.2f}" for i, v in enumerate(q)], fontsize=8)
    ax.set_ylabel("probability")
    ax.legend(fontsize=8)
    if title:
        ax.set_title(title)
    return ax


def score_curves(curves: Sequence[dict], key: str = "loss", ax=None, title: str = ""):
    """Evaluation score against updates, one line (mean +- std over seeds) per curve."""
    ax = _axes(ax)
    for c in curves:
        x = np.asarray(c["updates"])
        m, s = np.asarray(c["score_mean"]), np.asarray(c["score_std"])
        ax.plot(x, m, label=str(c[key]))
        ax.fill_between(x, m - s, m + s, alpha=0.2)
    ax.set_xlabel("student updates")
    ax.set_ylabel("evaluation score")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    if title:
        ax.set_title(title, fontsize=10)
    return ax


def reference_line(ax, value: float, label: str, color: str = "grey"):
    ax.axhline(value, color=color, ls="--", lw=1, label=label)
    ax.legend(fontsize=8)
    return ax
