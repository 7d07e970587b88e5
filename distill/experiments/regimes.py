"""Regimes (issue 18): offline vs stream vs dagger, KL students of the teacher's size and net2,
on every game of the budget, with the three agreements of `distill.diagnostics` per block.

Every regime holds as many states at once as the budget's dataset (stream's and dagger's buffer
is `dataset_states`), trains the same updates with the same student config, and is scored on
the teacher's paired episodes (`paired`). The rows carry what `distill.stats` aggregates (game,
seed, score, teacher_score, random_score, percent_of_teacher, random_normalised) grouped by
`regime` and `net`, and each run's last diagnostics and the limit it shows.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import jax
import numpy as np

from distill import diagnostics, envs, jobs, paths, report, stats, student
from distill import regimes as regimes_mod
from distill.checkpoint import atomic_write_json, atomic_write_text
from distill.experiments import common, paired
from distill.experiments.losses import final_curve
from distill.experiments.registry import Experiment

REGIMES = regimes_mod.REGIMES
BY = ("game", "net", "regime")
DIAG = tuple(f"{m}_{s}" for m in ("agreement", "kl") for s in diagnostics.SETS)


def nets_for(b: common.Budget) -> tuple[str, ...]:
    """Same-size and net2 students; the smoke budget checks the plumbing with net2 alone."""
    return ("net2",) if b.name == "smoke" else ("teacher", "net2")


def regime_config(b: common.Budget, regime: str) -> regimes_mod.RegimeConfig:
    """The regime at budget `b`: a buffer of the budget's dataset size, the paper's U."""
    interleave = next(i for i in (100, 50, 25, 10, 5, 1) if b.eval_every % i == 0)
    return regimes_mod.RegimeConfig(
        regime=regime,
        buffer_states=b.dataset_states,
        interleave=interleave,
        diag_states=256 if b.name == "smoke" else 2_048,
        stagger=100 if b.name == "smoke" else None,  # smoke checks the plumbing, quickly
    )


def multitask_students(
    config: student.StudentConfig,
    teachers: list,
    b: common.Budget,
    runs_dir: Path,
    progress: bool = True,
):
    """`b.seeds` multi-task students of `teachers`' games under `b.regime` (stream or dagger,
    `distill.multitask_regimes`), one after another, each resumable in its own folder under
    runs_dir/multitask-students: their params stacked on a leading `[seeds]` axis."""
    from distill import multitask_regimes as mtr

    regime = regime_config(b, b.regime)
    job = mtr.MultitaskRegimeJob(config, regime, teachers)
    params = []
    for seed in range(b.seeds):  # one job's compiled functions for every seed
        seeded = job.for_seed(seed)
        ident = seeded.identity()
        digest = json.dumps([ident[k] for k in ("config", "regime", "games")], sort_keys=True)
        sha = hashlib.sha256(digest.encode()).hexdigest()[:10]
        name = f"{config.net}_{config.loss}_{regime.regime}_s{seed}_{sha}"
        folder = runs_dir / "multitask-students" / name
        params.append(jobs.run(seeded, folder, resume=True, progress=progress).params)
    return jax.tree_util.tree_map(lambda *x: np.stack(x), *params)


def run_one(job: regimes_mod.RegimeJob, folder: Path, progress: bool):
    """One student under one regime in `folder` (finished runs are read back)."""
    return jobs.run(job, folder, resume=True, progress=progress)


def folder_name(env_id: str, config, regime) -> str:
    digest = json.dumps([dataclasses.asdict(config), dataclasses.asdict(regime)], sort_keys=True)
    sha = hashlib.sha256(digest.encode()).hexdigest()[:10]
    return f"{envs.spec(env_id).safe_name}_{config.net}_{regime.regime}_s{config.seed}_{sha}"


def regime_comparison(
    b: common.Budget,
    tau: float = student.losses.DEFAULT_TAU,
    runs_dir: Path | None = None,
    progress: bool = True,
    mesh: jax.sharding.Mesh | None = None,
) -> dict:
    """Offline, stream and dagger KL students on each game, for each of `nets_for(b)`.

    Returns {"rows": per (game, net, regime, seed), "curves": per (game, net, regime) score and
    agreements against updates, "teachers", "budget"}. The students run one after another
    (`mesh` is not used: the regimes act in the env between updates).
    """
    runs_dir = Path(runs_dir or paths.runs_dir())
    common.prepare_games(b.games, b, runs_dir, progress)
    rows, curves, teachers = [], [], []
    for env_id in b.games:
        teacher, data, reference = common.game_inputs(env_id, b, runs_dir, progress)
        teachers.append(reference)
        for net in nets_for(b):
            for name in REGIMES:
                regime = regime_config(b, name)
                config = student.StudentConfig(
                    loss="kl",
                    tau=tau,
                    net=common.net_of(b, net),
                    updates=b.updates,
                    eval_every=b.eval_every,
                    eval_episodes=b.eval_episodes,
                )
                offline = data if name == "offline" else None
                job = regimes_mod.RegimeJob(config, regime, teacher, offline)
                policies = []
                for seed in range(b.seeds):  # one job's compiled functions for every seed
                    seeded = job.for_seed(seed)
                    folder = runs_dir / "regimes" / folder_name(env_id, seeded.config, regime)
                    policies.append(run_one(seeded, folder, progress))
                params = jax.tree_util.tree_map(
                    lambda *x: np.stack(x), *[p.params for p in policies]
                )
                final = paired.student_scores(env_id, config.net, params, b.eval_episodes)
                metrics = [p.manifest["metrics"] for p in policies]
                for seed, m in enumerate(metrics):
                    rows.append(
                        {
                            "game": env_id,
                            "net": net,
                            "regime": name,
                            "seed": seed,
                            **common.paired_row(final[seed], reference),
                            **{k: m[-1][k] for k in DIAG},
                            "limit": diagnostics.limit(m),
                        }
                    )
                curves.append(curve(env_id, net, name, metrics, final.mean(axis=1)))
    return {"rows": rows, "curves": curves, "teachers": teachers, "budget": dataclasses.asdict(b)}


def curve(env_id: str, net: str, regime: str, metrics: list[list[dict]], final) -> dict:
    """Score (the last block's replaced by the paired final score) and the three agreements
    against updates, mean over seeds."""
    score = np.array([[r["score"] for r in m] for m in metrics])
    out = {
        "game": env_id,
        "net": net,
        "regime": regime,
        "updates": [r["updates"] for r in metrics[0]],
        **final_curve(score, np.asarray(final)),
    }
    for s in diagnostics.SETS:
        values = np.array([[r[f"agreement_{s}"] for r in m] for m in metrics])
        out[f"agreement_{s}"] = values.mean(axis=0).tolist()
    return out


def diagnostics_table(result: dict) -> list[dict]:
    """Per (game, net, regime): mean over seeds of the last block's agreements and KLs, and the
    limit most seeds show."""
    groups: dict[tuple, list[dict]] = {}
    for r in result["rows"]:
        groups.setdefault(tuple(r[k] for k in BY), []).append(r)
    out = []
    for key, rs in groups.items():
        limits = [r["limit"] for r in rs]
        out.append(
            {
                **dict(zip(BY, key, strict=True)),
                **{k: round(float(np.mean([r[k] for r in rs])), 3) for k in DIAG},
                "limit": max(set(limits), key=limits.count),
            }
        )
    return out


def regimes_figure(result: dict):
    """Per game a row: score, then agreement on (a) training, (b) held-out teacher and (c)
    the student's own states, against updates, one line per (net, regime)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    games = list(dict.fromkeys(c["game"] for c in result["curves"]))
    panels = ("score_mean", *(f"agreement_{s}" for s in diagnostics.SETS))
    titles = ("score", "agreement (a) training", "(b) held-out teacher", "(c) student's own")
    fig, axes = plt.subplots(
        len(games), 4, figsize=(15, 3.2 * len(games)), squeeze=False, constrained_layout=True
    )
    for i, game in enumerate(games):
        for c in (c for c in result["curves"] if c["game"] == game):
            style = "-" if c["net"] == "net2" else "--"
            for j, panel in enumerate(panels):
                axes[i, j].plot(
                    c["updates"], c[panel], style, marker="o", label=f"{c['regime']} {c['net']}"
                )
        for j, title in enumerate(titles):
            axes[i, j].set_title(f"{game}: {title}" if j == 0 else title, fontsize=9)
            axes[i, j].set_xlabel("updates")
        axes[i, 0].legend(fontsize=7)
    return fig


def write_regimes(result: dict, out: str | Path) -> Path:
    """results JSON, the markdown tables and the figure, into folder `out`."""
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    summary = common.summarise(result["rows"], BY)
    table = diagnostics_table(result)
    atomic_write_json(folder / "regimes.json", {**result, "summary": summary, "limits": table})
    text = report.markdown_table(summary, common.summary_columns(BY))
    text += "\n\n" + report.markdown_table(score_intervals(result))
    text += "\n\n" + "\n".join(limits_in_words(result))
    text += "\n\n" + report.markdown_table(table, [*BY, *DIAG, "limit"])
    text += "\n\n" + report.markdown_table(runs_table(result)) + "\n"
    atomic_write_text(folder / "regimes.md", text)
    regimes_figure(result).savefig(folder / "regimes.png", dpi=110)
    return folder


def console_table(result: dict) -> str:
    summary = common.summarise(result["rows"], BY)
    by_key = {tuple(r[k] for k in BY): r for r in diagnostics_table(result)}
    for r in summary:
        d = by_key[tuple(r[k] for k in BY)]
        r.update({f"agree_{s}": d[f"agreement_{s}"] for s in diagnostics.SETS}, limit=d["limit"])
    cols = [*BY, "percent_mean", *(f"agree_{s}" for s in diagnostics.SETS), "limit"]
    return report.markdown_table(summary, cols)


def score_intervals(result: dict) -> list[dict]:
    """Per (game, net, regime): the mean score and % of teacher over seeds, each with its 95 %
    percentile interval from a bootstrap over the seeds (`distill.stats.interval`)."""
    groups: dict[tuple, list[dict]] = {}
    for r in result["rows"]:
        groups.setdefault(tuple(r[k] for k in BY), []).append(r)
    out = []
    for key, rs in groups.items():
        row = {**dict(zip(BY, key, strict=True)), "seeds": len(rs)}
        for value, name, digits in (("score", "score", 2), ("percent_of_teacher", "percent", 1)):
            est = stats.interval({key[0]: np.array([r[value] for r in rs])}, stats.mean)
            row[f"{name} [95 % CI]"] = (
                f"{est['point']:.{digits}f} [{est['lo']:.{digits}f}, {est['hi']:.{digits}f}]"
            )
        out.append(row)
    return out


LIMIT_ORDER = ("undertraining", "overfitting", "covariate shift", "plateau", "none")


def runs_table(result: dict) -> list[dict]:
    """Per run (game, net, regime, seed): % of teacher, the last block's three agreements and
    the limit it shows."""
    keep = ("percent_of_teacher", *(f"agreement_{s}" for s in diagnostics.SETS))
    return [
        {
            **{k: r[k] for k in (*BY, "seed")},
            **{k: round(float(r[k]), 3) for k in keep},
            "limit": r["limit"],
        }
        for r in result["rows"]
    ]


def limits_in_words(result: dict) -> list[str]:
    """The limit of every run in words: a count over all runs, then one line per (game, net,
    regime) with its seeds' limits and the reason (`diagnostics.explain`) for the most common,
    from the seeds' mean agreements."""
    rows = result["rows"]
    counts = {k: sum(r["limit"] == k for r in rows) for k in LIMIT_ORDER}
    counts = {k: v for k, v in counts.items() if v}
    lines = [
        f"Of {len(rows)} runs, the limit the last evaluation block shows: "
        + ", ".join(f"{k} {v}" for k, v in counts.items())
        + ".",
        "",
    ]
    for d in diagnostics_table(result):
        seeds = [r for r in rows if all(r[k] == d[k] for k in BY)]
        found = {k: sum(r["limit"] == k for r in seeds) for k in LIMIT_ORDER}
        of = ", ".join(f"{k} in {v} of {len(seeds)}" for k, v in found.items() if v)
        a, b, c = (d[f"agreement_{s}"] for s in diagnostics.SETS)
        lines.append(
            f"- {d['game']}, {d['net']} student, {d['regime']}: {of} seeds; "
            f"{d['limit']}: {diagnostics.explain(d['limit'], a, b, c)}."
        )
    return lines


def report_section(result: dict) -> list[str]:
    return [
        "## Regimes (offline, stream, dagger)",
        "",
        "The paper distilled from a stream (the teacher kept playing into a replay memory of the "
        "most recent play); DAgger lets the student act and the teacher label. Agreement with "
        "the teacher's argmax on (a) training states, (b) held-out teacher states and (c) the "
        "student's own states tells the limits apart: undertraining (all below "
        f"{diagnostics.LOW_AGREEMENT} and rising), overfitting (a - b > "
        f"{diagnostics.OVERFIT_GAP}), covariate shift (b - c > {diagnostics.SHIFT_GAP}), "
        f"plateau (all below {diagnostics.LOW_AGREEMENT}, not rising) or none.",
        "",
        report.markdown_table(common.summarise(result["rows"], BY), common.summary_columns(BY)),
        "",
        "Per game, the mean over seeds with its 95 % interval (a bootstrap over the seeds):",
        "",
        report.markdown_table(score_intervals(result)),
        "",
        "### What limits each run",
        "",
        *limits_in_words(result),
        "",
        report.markdown_table(diagnostics_table(result), [*BY, *DIAG, "limit"]),
        "",
        "Per run (the last block):",
        "",
        report.markdown_table(runs_table(result)),
        "",
        "![regimes](regimes/regimes.png)",
        "",
    ]


EXPERIMENT = Experiment(
    name="regimes",
    help="offline vs stream vs dagger students, with their diagnostics",
    run=regime_comparison,
    write=write_regimes,
    console_table=console_table,
    report_section=report_section,
    order=5,
    suites=("minatar",),
    mesh_axes=(),
)
