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
    if smooth > 1 and ret.size >= smooth:  # a centred mean of the finite rows near each one
        finite = np.isfinite(ret)
        window = np.ones(smooth)
        count = np.convolve(finite.astype(float), window, mode="same")
        total = np.convolve(np.where(finite, ret, 0.0), window, mode="same")
        ret = np.where(count > 0, total / np.maximum(count, 1), np.nan)
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
    ax.set_ylabel("Q (discounted return)")
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


def held_out_curves(curves: Sequence[dict], key: str = "loss", ax=None, title: str = ""):
    """Held-out agreement against updates (mean +- std over seeds) to the plateau, one line per
    curve, each seed's plateau marked on it."""
    ax = _axes(ax)
    for c in curves:
        x = np.asarray(c["held_out_updates"])
        m, s = np.asarray(c["held_out_mean"]), np.asarray(c["held_out_std"])
        (line,) = ax.plot(x, m, label=str(c[key]))
        ax.fill_between(x, m - s, m + s, alpha=0.2, color=line.get_color())
        at = np.searchsorted(x, c["plateau_updates"]).clip(0, len(x) - 1)
        ax.plot(x[at], m[at], "v", color=line.get_color(), ms=5)
    ax.set_xlabel("student updates (v: a seed's plateau)")
    ax.set_ylabel("held-out agreement with teacher")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    if title:
        ax.set_title(title, fontsize=10)
    return ax


def reference_line(ax, value: float, label: str, color: str = "grey"):
    ax.axhline(value, color=color, ls="--", lw=1, label=label)
    ax.legend(fontsize=8)
    return ax


# ---------------------------------------------------------------------------- experiments
# One figure per experiment of `distill.experiments`, from its result dict.


def loss_comparison_figure(result: dict):
    """Learning curves per loss, one panel per game, teacher and random scores marked."""
    games = [t["game"] for t in result["teachers"]]
    fig, axes = plt.subplots(1, len(games), figsize=(4.2 * len(games), 3.3), squeeze=False)
    for ax, t in zip(axes[0], result["teachers"], strict=True):
        curves = [c for c in result["curves"] if c["game"] == t["game"]]
        if curves and "held_out_mean" in curves[0]:  # trained to a plateau: its learning curve
            held_out_curves(curves, key="loss", ax=ax, title=t["game"])
            continue
        score_curves(curves, key="loss", ax=ax, title=t["game"])
        reference_line(ax, t["teacher_score"], "teacher", "black")
        reference_line(ax, t["random_score"], "random", "grey")
    fig.tight_layout()
    return fig


def compression_figure(result: dict):
    """Parameters (% of teacher, log axis) against % of teacher score, with the paper's points."""
    fig, ax = plt.subplots(figsize=(6, 3.8))
    for game in sorted({r["game"] for r in result["rows"]}):
        rs = [r for r in result["rows"] if r["game"] == game]
        nets = sorted(
            {r["net"] for r in rs},
            key=lambda n: -np.mean([r["params_percent"] for r in rs if r["net"] == n]),
        )
        x = [np.mean([r["params_percent"] for r in rs if r["net"] == n]) for n in nets]
        y = [np.mean([r["percent_of_teacher"] for r in rs if r["net"] == n]) for n in nets]
        ax.plot(x, y, "o-", alpha=0.5, lw=1, label=game)
    s = result["summary"]
    ax.errorbar(
        [r["params_percent"] for r in s],
        [r["geomean_percent_mean"] for r in s],
        yerr=[r["geomean_percent_std"] for r in s],
        fmt="s-",
        color="black",
        lw=2,
        capsize=3,
        label="geometric mean (this run)",
    )
    paper = [(r["params_percent"], r["paper_percent"]) for r in s if r["paper_percent"]]
    if paper:
        ax.plot(*zip(*paper, strict=True), "r*", ms=12, label="paper (10 Atari games)")
    ax.axhline(100, color="grey", ls="--", lw=1)
    ax.set_xscale("log")
    ax.set_xlabel("student parameters, % of teacher (log)")
    ax.set_ylabel("score, % of teacher")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3, which="both")
    fig.tight_layout()
    return fig


def multitask_figure(result: dict, paper: dict[str, float] | None = None):
    """% of each single-game teacher, one bar per method: per game (mean over seeds), then the
    geometric mean across games, where a star marks the paper's level of a method in `paper`."""
    methods = [s["method"] for s in result["summary"]]  # Atari runs no multi-task DQN
    games = [t["game"] for t in result["teachers"]]
    geo = {s["method"]: s["geomean_percent_mean"] for s in result["summary"]}
    labels = [g.replace("-MinAtar", "") for g in games] + ["geometric mean"]
    fig, ax = plt.subplots(figsize=(7, 3.5))
    x = np.arange(len(labels))
    for i, m in enumerate(methods):
        per_game = [
            float(
                np.mean(
                    [
                        r["percent_of_teacher"]
                        for r in result["rows"]
                        if r["method"] == m and r["game"] == g
                    ]
                )
            )
            for g in games
        ]
        ax.bar(x + (i - 1) * 0.27, [*per_game, geo[m]], width=0.27, label=m)
        if m in (paper or {}):
            ax.plot(x[-1] + (i - 1) * 0.27, paper[m], "*", color="red", ms=10)
    if paper:
        ax.plot([], [], "*", color="red", ms=10, label="paper")
    ax.axhline(100, color="grey", ls="--", lw=1)
    ax.set_xticks(x)
    ax.set_xticklabels(labels, fontsize=8)
    ax.set_xlabel("game (bars: mean over seeds)")
    ax.set_ylabel("% of single-game teacher")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def online_figure(result: dict):
    """Teacher and student evaluation scores against the teacher's env steps, round by round
    (a line per seed, the first seed's labelled, when the result has several)."""
    fig, ax = plt.subplots(figsize=(6, 3.5))
    seeds = list(dict.fromkeys(r.get("seed", 0) for r in result["rows"]))
    for i, seed in enumerate(seeds):
        rows = [r for r in result["rows"] if r.get("seed", 0) == seed]
        steps = [r["env_steps"] for r in rows]
        for who, style, colour in (("teacher", "o-", "C0"), ("student", "s-", "C1")):
            label = (
                (f"{who}" + (f" ({len(seeds)} seeds)" if len(seeds) > 1 else ""))
                if i == 0
                else None
            )
            scores = [r[f"{who}_score"] for r in rows]
            ax.plot(
                steps, scores, style, ms=3, color=colour, alpha=1 if i == 0 else 0.5, label=label
            )
    ax.set_xlabel("teacher env steps")
    ax.set_ylabel("evaluation score")
    ax.set_title(f"online distillation, {result['env_id']}", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    return fig


# ---------------------------------------------------------------------------- explanations


def minatar_image(obs: np.ndarray) -> np.ndarray:
    """A MinAtar state `[H, W, C]` as one RGB image `[H, W, 3]`: a colour per object channel
    (later channels drawn over earlier ones), white where the cell is empty."""
    obs = np.asarray(obs, dtype=float)
    colours = plt.get_cmap("tab10")(np.arange(obs.shape[-1]) % 10)[:, :3]
    image = np.ones((*obs.shape[:2], 3))
    for c in range(obs.shape[-1]):
        a = np.clip(obs[..., c], 0, 1)[..., None]
        image = image * (1 - a) + colours[c] * a
    return image


def _state_image(ax, obs: np.ndarray, title: str = "") -> None:
    """A MinAtar state (`[H, W, C]`) in colour, or an Atari stack's last frame in grey."""
    obs = np.asarray(obs)
    if obs.ndim == 3 and obs.shape[0] < obs.shape[-1]:  # Atari [stack, H, W]
        ax.imshow(obs[-1], cmap="gray", vmin=0, vmax=255)
    else:
        ax.imshow(minatar_image(obs), interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title, fontsize=8)


def saliency_comparison(
    obs: np.ndarray,
    maps: dict[str, np.ndarray],
    channel_names: Sequence[str] | None = None,
    title: str = "",
):
    """One state's saliency maps for several policies, side by side, each scaled to its max.

    MinAtar (`obs [H, W, C]`, maps `[H, W, C]`): a row per policy; the state, the map summed
    over channels, then one map per object channel. Atari (`obs [stack, H, W]`, maps `[H, W]`):
    a panel per policy, the saliency in red over the last frame.
    """
    obs = np.asarray(obs)
    names = list(maps)
    if obs.ndim == 3 and obs.shape[0] < obs.shape[-1]:  # Atari
        fig, axes = plt.subplots(1, len(names), figsize=(2.6 * len(names), 2.9), squeeze=False)
        for ax, name in zip(axes[0], names, strict=True):
            m = np.asarray(maps[name], dtype=float)
            _state_image(ax, obs, name)
            overlay = np.zeros((*m.shape, 4))
            overlay[..., 0] = 1.0
            overlay[..., 3] = m / m.max() if m.max() > 0 else 0.0
            ax.imshow(overlay)
    else:
        c = obs.shape[-1]
        channel_names = list(channel_names or [f"channel {i}" for i in range(c)])
        fig, axes = plt.subplots(
            len(names), c + 2, figsize=(1.45 * (c + 2), 1.55 * len(names) + 0.5), squeeze=False
        )
        for r, (row, name) in enumerate(zip(axes, names, strict=True)):
            m = np.asarray(maps[name], dtype=float)
            top = m.max() if m.max() > 0 else 1.0
            _state_image(row[0], obs, "state" if r == 0 else "")
            row[0].set_ylabel(name, fontsize=8)
            panels = [("all channels", m.sum(-1) / max(m.sum(-1).max(), 1e-12))]
            panels += [(channel_names[i], m[..., i] / top) for i in range(c)]
            for ax, (label, image) in zip(row[1:], panels, strict=True):
                ax.imshow(image, cmap="magma", vmin=0, vmax=1, interpolation="nearest")
                ax.set_xticks([])
                ax.set_yticks([])
                if r == 0:
                    ax.set_title(label, fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def confusion_matrix(
    counts: np.ndarray, action_names: Sequence[str] | None = None, ax=None, title: str = ""
):
    """Teacher's action (rows) against the student's (columns): colour = share of the row,
    text = count."""
    ax = _axes(ax, figsize=(3.2, 3))
    counts = np.asarray(counts)
    n = counts.shape[0]
    share = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    image = ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    ax.figure.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="share of the row")
    for i in range(n):
        for j in range(n):
            ax.text(
                j,
                i,
                str(counts[i, j]),
                ha="center",
                va="center",
                fontsize=8,
                color="white" if share[i, j] > 0.6 else "black",
            )
    names = list(action_names or [f"a{i}" for i in range(n)])
    ax.set_xticks(range(n))
    ax.set_yticks(range(n))
    ax.set_xticklabels(names, fontsize=7, rotation=45)
    ax.set_yticklabels(names, fontsize=7)
    ax.set_xlabel("student's action")
    ax.set_ylabel("teacher's action")
    if title:
        ax.set_title(title, fontsize=9)
    return ax


def agreement_by_kind(reports: dict[str, dict], ax=None, title: str = ""):
    """Agreement with the teacher, overall and per kind of state (`explain.agreement_report`),
    one group of bars per kind, one bar per student."""
    ax = _axes(ax, figsize=(5, 3))
    names = list(reports)
    first = reports[names[0]]
    kinds = ["all"] + [k["kind"] for k in first["by_gap"]]
    width = 0.8 / len(names)
    for i, name in enumerate(names):
        r = reports[name]
        values = [r["agreement"]] + [k["agreement"] for k in r["by_gap"]]
        ax.bar(np.arange(len(kinds)) + i * width, values, width=width, label=name)
    ax.set_xticks(np.arange(len(kinds)) + 0.4 - width / 2)
    ax.set_xticklabels(kinds, fontsize=8)
    ax.set_xlabel("states: all, then in thirds by the teacher's Q-gap (best minus second best)")
    ax.set_ylim(0, 1)
    ax.set_ylabel("agreement with teacher")
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    if title:
        ax.set_title(title, fontsize=9)
    return ax


def disagreement_states(
    obs: np.ndarray,
    teacher_q: np.ndarray,
    student_q: np.ndarray,
    action_names: Sequence[str] | None = None,
    title: str = "",
    channel_names: Sequence[str] | None = None,
):
    """States `[n, *obs_shape]` where a student and its teacher choose differently, each titled
    with both choices and the teacher's Q-gap; `channel_names` adds a legend of MinAtar's
    object colours."""
    obs, teacher_q, student_q = (np.asarray(x) for x in (obs, teacher_q, student_q))
    n = obs.shape[0]
    names = list(action_names or [f"a{i}" for i in range(teacher_q.shape[1])])
    fig, axes = plt.subplots(1, max(n, 1), figsize=(2.2 * max(n, 1), 2.6), squeeze=False)
    if n == 0:
        axes[0, 0].text(0.5, 0.5, "no disagreements", ha="center", va="center")
        axes[0, 0].axis("off")
    for i, ax in enumerate(axes[0][:n]):
        top2 = np.sort(teacher_q[i])[-2:]
        _state_image(
            ax,
            obs[i],
            f"teacher {names[int(teacher_q[i].argmax())]} (gap {top2[1] - top2[0]:.2f})\n"
            f"student {names[int(student_q[i].argmax())]}",
        )
    if title:
        fig.suptitle(title, fontsize=10)
    bottom = 0.0
    if channel_names:  # the colours of minatar_image
        from matplotlib.patches import Patch

        colours = plt.get_cmap("tab10")(np.arange(len(channel_names)) % 10)
        handles = [Patch(color=c, label=n) for c, n in zip(colours, channel_names, strict=True)]
        fig.legend(handles=handles, loc="lower center", ncol=len(handles), fontsize=7)
        bottom = 0.1
    fig.tight_layout(rect=(0, bottom, 1, 1))
    return fig


def linear_weights(
    w: np.ndarray,
    channel_names: Sequence[str] | None = None,
    action_names: Sequence[str] | None = None,
    title: str = "",
):
    """A linear policy's weights `[H, W, C, A]` as images: a row per action, a column per
    object channel; red pushes towards the action, blue away, one colour scale for all."""
    w = np.asarray(w, dtype=float)
    c, a = w.shape[-2:]
    channel_names = list(channel_names or [f"channel {i}" for i in range(c)])
    action_names = list(action_names or [f"a{i}" for i in range(a)])
    top = float(np.abs(w).max()) or 1.0
    fig, axes = plt.subplots(a, c, figsize=(1.5 * c + 0.8, 1.5 * a + 0.4), squeeze=False)
    for j in range(a):
        for i in range(c):
            ax = axes[j, i]
            image = ax.imshow(
                w[..., i, j], cmap="RdBu_r", vmin=-top, vmax=top, interpolation="nearest"
            )
            ax.set_xticks([])
            ax.set_yticks([])
            if j == 0:
                ax.set_title(channel_names[i], fontsize=8)
            if i == 0:
                ax.set_ylabel(action_names[j], fontsize=8)
    label = "weight minus its mean over actions\n(output per object; red: towards the action)"
    fig.colorbar(image, ax=axes, shrink=0.8, label=label)
    if title:
        fig.suptitle(title, fontsize=10)
    return fig


def agreement_overview(reports: dict[str, dict], title: str = ""):
    """A confusion matrix per student and their agreement per kind of state, in one figure
    (`reports`: name -> `explain.agreement_report`)."""
    n = len(reports)
    fig, axes = plt.subplots(1, n + 1, figsize=(3.3 * n + 5, 3.2), squeeze=False)
    for ax, (name, r) in zip(axes[0], reports.items(), strict=False):
        confusion_matrix(r["confusion"], r["action_names"], ax, f"{name}: {r['agreement']:.0%}")
    agreement_by_kind(reports, axes[0, -1], "by the teacher's Q-gap")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig
