"""Figures for teaching from notebooks 01-04: the pipeline, what tau does to real teacher
targets, the loss comparison and the compression sweep drawn so a class can read them (titles,
axis units, labelled bands and points, legends beside the data). Functions take data and
return the Figure; the numbers they draw come from the small pure functions at the top."""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib.pyplot as plt
import numpy as np

SCORE_LABEL = "evaluation score (points per episode, ε = 0.05)"

# ---------------------------------------------------------------------------- numbers


def q_gaps(q: np.ndarray) -> np.ndarray:
    """Best minus second-best Q-value per state: `q [states, actions]` -> `[states]`."""
    top2 = np.sort(np.asarray(q, dtype=np.float64), axis=1)[:, -2:]
    return top2[:, 1] - top2[:, 0]


def softmax_target(q: np.ndarray, tau: float | None) -> np.ndarray:
    """The student's target distribution per state, `[states, actions]`: softmax(q / tau) as in
    the KL loss, or the one-hot argmax of NLL when `tau` is None (Rusu et al. 2016, sec. 4)."""
    q = np.asarray(q, dtype=np.float64)
    if tau is None:
        return np.eye(q.shape[1])[q.argmax(axis=1)]
    z = q / tau
    p = np.exp(z - z.max(axis=1, keepdims=True))
    return p / p.sum(axis=1, keepdims=True)


def top_probability(q: np.ndarray, tau: float | None) -> np.ndarray:
    """The target's probability of the teacher's best action per state: `[states]`."""
    return softmax_target(q, tau).max(axis=1)


NEAR_TIE = 0.01  # a Q-gap below this (MinAtar's rewards are 0 or 1) leaves the argmax to chance


def teacher_margins(q: np.ndarray, tau: float = 0.01) -> dict:
    """How decided the teacher is on its dataset's states (`q [states, actions]`): the median
    best-minus-second Q-gap, the share of near ties (`NEAR_TIE`), the share of states whose KL
    target at `tau` puts under 0.9 on the best action, and how often each action is best. Where
    the teacher is undecided, agreement is a weak target and a student's mistakes are cheap per
    state but many."""
    q = np.asarray(q, dtype=np.float64)
    gaps = q_gaps(q)
    return {
        "median_q_gap": float(np.median(gaps)),
        "near_ties": float(np.mean(gaps < NEAR_TIE)),
        "soft_targets": float(np.mean(top_probability(q, tau) < 0.9)),
        "best_action_shares": (np.bincount(q.argmax(1), minlength=q.shape[1]) / len(q)).tolist(),
    }


def tau_table(q: np.ndarray, taus: Sequence[float | None]) -> list[dict]:
    """Per target (tau, None = NLL): median top probability and the share of states whose top
    probability is below 0.99 (the target still says something about the other actions)."""
    rows = []
    for tau in taus:
        p = top_probability(q, tau)
        rows.append(
            {
                "target": "NLL (one-hot)" if tau is None else f"KL, tau = {tau:g}",
                "median_top_probability": float(np.median(p)),
                "share_below_0.99": float(np.mean(p < 0.99)),
            }
        )
    return rows


# ---------------------------------------------------------------------------- helpers


def legend_outside(ax, title: str | None = None) -> None:
    """The legend to the right of the axes, where it covers no data."""
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), title=title)


def _box(ax, xy, text, colour, width=2.2, height=1.2):
    ax.add_patch(
        plt.Rectangle(xy, width, height, facecolor=colour, edgecolor="black", lw=1.2, zorder=2)
    )
    ax.text(xy[0] + width / 2, xy[1] + height / 2, text, ha="center", va="center", fontsize=9)


def _arrow(ax, start, end, **style):
    ax.annotate("", xy=end, xytext=start, arrowprops={"arrowstyle": "-|>", "lw": 1.5, **style})


def pipeline_diagram():
    """Policy distillation in four boxes: teacher -> dataset -> loss -> student, and the
    evaluation in the game below the student (Rusu et al. 2016, sections 3 and 5)."""
    fig, ax = plt.subplots(figsize=(11, 3.6))
    boxes = [
        ("teacher\nDQN: $Q^T(s, a)$\n(notebook 01)", "#f6d7a7"),
        ("dataset $D^T$\n$(s, \\mathbf{q}^T)$ pairs; the teacher\nplays, ε = 0.05 (02)", "#cfe8cf"),
        ("loss\nNLL | MSE | KL(τ)\n$\\mathbf{q}^T$ against $\\mathbf{q}^S$ (03)", "#d6e2f5"),
        ("student $Q^S$\nsame size or smaller\n(04: compression)", "#f5d0d6"),
    ]
    for i, (text, colour) in enumerate(boxes):
        _box(ax, (i * 3.0, 1.4), text, colour)
        if i:
            _arrow(ax, (i * 3.0 - 0.8, 2.0), (i * 3.0, 2.0))
    labels = ["acts in the game", "minibatches of states", "gradient steps (RMSProp)"]
    for i, label in enumerate(labels):
        ax.text(i * 3.0 + 2.6, 2.75, label, ha="center", fontsize=7, style="italic")
    _box(
        ax,
        (7.6, -0.4),
        "evaluation: the student plays the game\nscore as % of the teacher's (ε = 0.05)",
        "white",
        width=3.6,
        height=0.9,
    )
    _arrow(ax, (10.1, 1.4), (10.1, 0.5))
    ax.text(
        0.0,
        0.05,
        "No reward reaches the student:\nit imitates the teacher's Q-values\n"
        "on the teacher's states.",
        fontsize=8,
        va="center",
    )
    ax.set_xlim(-0.2, 11.4)
    ax.set_ylim(-0.6, 3.0)
    ax.axis("off")
    ax.set_title("Policy distillation (Rusu et al. 2016): teacher → dataset → loss → student")
    fig.tight_layout()
    return fig


def learning_curves(runs: dict[str, Sequence[dict]], zoom_steps: int | None = None, title=""):
    """Training-episode return against env steps for several runs (label -> metrics rows), a
    5-point trailing mean; with `zoom_steps`, a second panel on the first 3 x `zoom_steps` steps,
    where a short run and a long one can be compared at equal steps."""
    panels = 2 if zoom_steps else 1
    fig, axes = plt.subplots(1, panels, figsize=(5.2 * panels + 2.2, 3.4), squeeze=False)
    for j, ax in enumerate(axes[0]):
        for label, rows in runs.items():
            steps = np.array([r["env_steps"] for r in rows], dtype=float)
            ret = np.array([np.nan if r["mean_return"] is None else r["mean_return"] for r in rows])
            keep = steps <= 3 * zoom_steps if j == 1 else np.ones(steps.size, bool)
            if keep.any():
                ax.plot(steps[keep], trailing_mean(ret, 5)[keep], ".-", ms=3, label=label)
        ax.set_xlabel("env steps (all parallel envs together)")
        ax.grid(alpha=0.3)
        ax.set_ylim(bottom=0)
        ax.set_title("whole runs" if j == 0 else f"the first {3 * zoom_steps:,} steps", fontsize=9)
    axes[0, 0].set_ylabel("training-episode return\n(points, ε-greedy exploration)")
    legend_outside(axes[0, -1])
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def trailing_mean(y: np.ndarray, window: int) -> np.ndarray:
    """Mean of each point and up to `window - 1` before it, NaNs skipped: `[n]` -> `[n]`."""
    y = np.asarray(y, dtype=float)
    out = np.full(y.size, np.nan)
    for i in range(y.size):
        seg = y[max(0, i - window + 1) : i + 1]
        if np.isfinite(seg).any():
            out[i] = np.nanmean(seg)
    return out


# ---------------------------------------------------------------------------- notebook 02


def dataset_figure(q: np.ndarray, actions: np.ndarray, action_names: Sequence[str], title=""):
    """Left: how often the teacher took each action (named). Right: the teacher's Q-gap per
    state, log axis, median marked."""
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.3))
    counts = np.bincount(np.asarray(actions), minlength=len(action_names))
    ax1.bar(list(action_names), 100 * counts / counts.sum(), color="tab:blue")
    ax1.set_xlabel("action taken by the teacher (ε = 0.05)")
    ax1.set_ylabel("% of stored states")
    ax1.set_title("actions in the dataset", fontsize=10)
    gaps = q_gaps(q)
    positive = gaps[gaps > 0]
    bins = np.logspace(np.log10(max(positive.min(), 1e-5)), np.log10(positive.max()), 50)
    ax2.hist(positive, bins=bins, color="tab:green")
    ax2.axvline(np.median(gaps), color="black", ls="--")  # named in the title: no legend on data
    ax2.set_xscale("log")
    ax2.set_xlabel("best Q − second-best Q (return units, log axis)")
    ax2.set_ylabel("states")
    ax2.set_title(
        f"how sure the teacher is (dashed: median gap {np.median(gaps):.3f})", fontsize=10
    )
    if title:
        fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    return fig


# ---------------------------------------------------------------------------- notebook 03


def targets_of_one_state(
    q: np.ndarray, taus: Sequence[float], action_names: Sequence[str], title: str = ""
):
    """One real state's targets: softmax(q / tau) for each tau beside NLL's one-hot, a group
    of bars per action (`q [actions]`)."""
    q = np.asarray(q, dtype=np.float64)
    targets = [(f"τ = {t:g}", softmax_target(q[None], t)[0]) for t in taus]
    targets.append(("NLL one-hot", softmax_target(q[None], None)[0]))
    fig, ax = plt.subplots(figsize=(8, 3.2))
    width = 0.8 / len(targets)
    for i, (label, p) in enumerate(targets):
        ax.bar(np.arange(q.size) + i * width, p, width=width, label=label)
    ax.set_xticks(np.arange(q.size) + 0.4 - width / 2)
    ax.set_xticklabels([f"{n}\nQ = {v:.3f}" for n, v in zip(action_names, q, strict=True)])
    ax.set_ylabel("target probability")
    ax.set_ylim(0, 1.05)
    ax.set_title(title or "one state's targets", fontsize=10)
    legend_outside(ax, "target")
    fig.tight_layout()
    return fig


def tau_figure(q: np.ndarray, taus: Sequence[float], title: str = ""):
    """What tau does on a dataset's real Q-vectors (`q [states, actions]`). Left: the Q-gap
    distribution. Right: the distribution of the target's top probability for each tau and for
    NLL's one-hot target, with the share of states below 0.99 written above each box."""
    gaps = q_gaps(q)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 3.6), width_ratios=(1, 1.4))
    positive = gaps[gaps > 0]
    bins = np.logspace(np.log10(max(positive.min(), 1e-5)), np.log10(positive.max()), 50)
    ax1.hist(positive, bins=bins, color="tab:green")
    ax1.axvline(np.median(gaps), color="black", ls="--")  # named in the title: no legend on data
    for tau in taus:
        ax1.axvline(tau, color="tab:red", lw=0.8, alpha=0.6)
    ax1.set_xscale("log")
    ax1.set_xlabel("Q-gap: best − second-best Q (log; red: the τ values)")
    ax1.set_ylabel("states")
    ax1.set_title(
        f"Q-gaps of {len(gaps):,} states (dashed: median {np.median(gaps):.3f})", fontsize=10
    )
    targets = [*taus, None]
    data = [top_probability(q, t) for t in targets]
    ax2.boxplot(data, whis=(5, 95), showfliers=False)
    ax2.set_xticks(range(1, len(targets) + 1))
    ax2.set_xticklabels([f"KL τ={t:g}" if t is not None else "NLL\none-hot" for t in targets])
    for i, p in enumerate(data):
        ax2.text(i + 1, 1.02, f"{np.mean(p < 0.99):.0%} < 0.99", ha="center", fontsize=8)
    ax2.axhline(0.99, color="grey", ls=":", lw=1)
    ax2.set_ylim(0, 1.1)
    ax2.set_ylabel("target's probability of the best action")
    ax2.set_title("target sharpness per state (box: quartiles, whiskers: 5-95 %)", fontsize=10)
    if title:
        fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    return fig


def loss_scores_figure(result: dict, paper_order: str = "KL ≥ NLL > MSE"):
    """Final score of every student per loss, one panel per game: a bar per loss (mean over
    seeds), a dot per seed, the teacher's and the random policy's scores as lines."""
    teachers = result["teachers"]
    losses = list(dict.fromkeys(r["loss"] for r in result["rows"]))
    seeds = len({r["seed"] for r in result["rows"]})
    fig, axes = plt.subplots(1, len(teachers), figsize=(3.4 * len(teachers) + 1.6, 3.4))
    axes = np.atleast_1d(axes)
    for ax, t in zip(axes, teachers, strict=True):
        for i, loss in enumerate(losses):
            s = [r["score"] for r in result["rows"] if r["game"] == t["game"] and r["loss"] == loss]
            ax.bar(i, np.mean(s), color=f"C{i}", alpha=0.7)
            ax.plot(np.full(len(s), i), s, "k.", ms=5, label="one seed" if i == 0 else None)
        ax.axhline(t["teacher_score"], color="black", lw=1.2, label="teacher")
        ax.axhline(t["random_score"], color="grey", ls="--", lw=1, label="random")
        ax.set_xticks(range(len(losses)))
        ax.set_xticklabels([loss.upper() for loss in losses])
        ax.set_title(t["game"].replace("-MinAtar", ""), fontsize=10)
    axes[0].set_ylabel(SCORE_LABEL, fontsize=8)
    legend_outside(axes[-1])
    fig.suptitle(
        f"same-size students by loss: bar = mean of {seeds} seeds, dot = one seed "
        f"(paper, sec. 5.1: {paper_order})",
        fontsize=10,
    )
    fig.tight_layout()
    return fig


# ---------------------------------------------------------------------------- notebook 04


def compression_figure(result: dict):
    """Student size (% of the teacher's parameters, log axis) against score (% of the
    teacher's): the teacher itself at (100, 100), the same-size student beside it, each net's
    geometric mean over games with its std over seeds, thin lines per game, the paper's
    Table 2 as red stars."""
    rows, summary = result["rows"], result["summary"]
    seeds = len({r["seed"] for r in rows})
    names = {"teacher": "same-size student"}
    fig, ax = plt.subplots(figsize=(8.5, 4.2))
    for game in sorted({r["game"] for r in rows}):
        rs = [r for r in rows if r["game"] == game]
        nets = list(dict.fromkeys(r["net"] for r in rs))
        x = [np.mean([r["params_percent"] for r in rs if r["net"] == n]) for n in nets]
        y = [np.mean([r["percent_of_teacher"] for r in rs if r["net"] == n]) for n in nets]
        ax.plot(
            x,
            y,
            ".-",
            alpha=0.45,
            lw=1,
            label=f"{game.replace('-MinAtar', '')} (mean of {seeds} seeds)",
        )
    x = [s["params_percent"] for s in summary]
    y = [s["geomean_percent_mean"] for s in summary]
    ax.errorbar(
        x,
        y,
        yerr=[s["geomean_percent_std"] for s in summary],
        fmt="s-",
        color="black",
        lw=2,
        capsize=3,
        label=f"geometric mean over games\n(bars: std over {seeds} seeds)",
    )
    for s, xi, yi in zip(summary, x, y, strict=True):
        ax.annotate(
            names.get(s["net"], s["net"]),
            (xi, yi),
            textcoords="offset points",
            xytext=(6, -12),
            fontsize=8,
        )
    ax.plot([100], [100], "*", color="gold", mec="black", ms=16, label="teacher itself")
    paper = [(s["params_percent"], s["paper_percent"]) for s in summary if s["paper_percent"]]
    if paper:
        ax.plot(*zip(*paper, strict=True), "r*", ms=11, label="paper, Table 2 (10 Atari games)")
    ax.axhline(100, color="grey", ls="--", lw=1)
    ax.set_xscale("log")
    ax.set_xticks(x, [f"{v:.1f}".rstrip("0").rstrip(".") + " %" for v in x])
    ax.minorticks_off()
    ax.set_xlabel("student parameters, % of the teacher's (log axis)")
    ax.set_ylabel("score, % of the teacher's")
    ax.set_title("compression: KL students (τ = 0.01) of four sizes", fontsize=10)
    ax.grid(alpha=0.3, which="both")
    legend_outside(ax)
    fig.tight_layout()
    return fig
