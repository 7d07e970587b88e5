"""Policy compression (Rusu et al. 2016, section 5.2): KL students of every network size on every
game, against the paper's Table 2."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import jax
import numpy as np

from distill import envs, families, losses, networks, paths, plateau, report
from distill.checkpoint import atomic_write_json, atomic_write_text
from distill.experiments import common, paired, seeds
from distill.experiments.registry import Experiment

# Rusu et al. (2016), Table 2: geometric mean over 10 games of KL students, % of the teacher.
PAPER_COMPRESSION = {"teacher": None, "net1": 108.3, "net2": 101.7, "net3": 83.9}


def compression(
    b: common.Budget,
    nets: tuple[str, ...] | None = None,
    tau: float = losses.DEFAULT_TAU,
    runs_dir: Path | None = None,
    progress: bool = True,
    mesh: jax.sharding.Mesh | None = None,
) -> dict:
    """KL students of the budget's sizes (`compression_nets`) on every game (Rusu et al. 2016,
    section 5.2).

    Returns {"rows": per (game, net, seed), "geomean": per (net, seed) geometric mean of % of
    teacher across games, "summary": per net mean and std of that geometric mean over seeds}.
    """
    runs_dir = Path(runs_dir or paths.runs_dir())
    nets = tuple(nets or b.compression_nets)  # the paper's sizes, in the budget's order
    common.prepare_games(b.games, b, runs_dir, progress)
    rows, teachers = [], []
    for env_id in b.games:
        _, data, reference = common.game_inputs(env_id, b, runs_dir, progress)
        teachers.append(reference)
        spec = envs.spec(env_id)
        teacher_params = networks.param_count(
            families.net_spec(env_id, common.net_of(b, "teacher")),
            spec.obs_shape,
            spec.num_actions,
        )
        for net in nets:
            config = common.student_config(b, loss="kl", tau=tau, net=common.net_of(b, net))
            _, state, m = seeds.distil_seeds(config, data, b.seeds, mesh, runs_dir / "students")
            final = paired.student_scores(env_id, config.net, state.params, b.eval_episodes)
            n_params = networks.param_count(
                families.net_spec(env_id, config.net), spec.obs_shape, spec.num_actions
            )
            for seed in range(b.seeds):
                rows.append(
                    {
                        "game": env_id,
                        "net": net,
                        "params": n_params,
                        "params_percent": 100.0 * n_params / teacher_params,
                        "seed": seed,
                        **common.paired_row(final[seed], reference),
                        **plateau.columns(config, m, seed),
                    }
                )
    geo, summary = compression_summary(rows)
    return {
        "rows": rows,
        "geomean": geo,
        "summary": summary,
        "teachers": teachers,
        "budget": dataclasses.asdict(b),
    }


def compression_summary(rows: list[dict]) -> tuple[list[dict], list[dict]]:
    """Per (net, seed): the geometric mean across games of % of teacher and the arithmetic mean
    of the random-normalised score (defined where % of teacher is not: a negative score, as in
    Pong). Per net: their mean and std over seeds, beside the paper's figure."""
    nets = list(dict.fromkeys(r["net"] for r in rows))
    seeds = sorted({r["seed"] for r in rows})
    geo = []
    for net in nets:
        for seed in seeds:
            per_game = [r for r in rows if r["net"] == net and r["seed"] == seed]
            geo.append(
                {
                    "net": net,
                    "seed": seed,
                    "geomean_percent": common.geometric_mean(
                        r["percent_of_teacher"] for r in per_game
                    ),
                    "normalised": float(np.mean([r["random_normalised"] for r in per_game])),
                    "params_percent": float(np.mean([r["params_percent"] for r in per_game])),
                }
            )
    summary = []
    for net in nets:
        mine = [x for x in geo if x["net"] == net]
        g = np.array([x["geomean_percent"] for x in mine])
        norm = np.array([x["normalised"] for x in mine])
        summary.append(
            {
                "net": net,
                "params_percent": float(np.mean([x["params_percent"] for x in mine])),
                "geomean_percent_mean": float(np.mean(g)),
                "geomean_percent_std": float(np.std(g)),
                "normalised_mean": float(np.mean(norm)),
                "normalised_std": float(np.std(norm)),
                "paper_percent": PAPER_COMPRESSION.get(net),
            }
        )
    return geo, summary


SUMMARY_COLUMNS = [
    "net",
    "params_percent",
    "geomean_percent_mean",
    "geomean_percent_std",
    "normalised_mean",
    "normalised_std",
    "paper_percent",
]


def write_compression(result: dict, out: str | Path) -> Path:
    """results JSON, the per-net markdown table and the figure, into folder `out`."""
    from distill import plotting

    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_json(folder / "compression.json", result)
    atomic_write_text(
        folder / "compression.md",
        report.markdown_table(result["summary"], SUMMARY_COLUMNS) + "\n",
    )
    plotting.compression_figure(result).savefig(folder / "compression.png", dpi=120)
    return folder


def console_table(result: dict) -> str:
    return report.markdown_table(result["summary"])


def report_section(result: dict) -> list[str]:
    rows = result["rows"]
    by = ("game", "net")
    return [
        "## Compression (KL students), geometric mean across games",
        "",
        "Paper (10 Atari games): net1 108.3 %, net2 101.7 %, net3 83.9 % of the teacher.",
        "",
        common.teachers_note(result["budget"]),
        "",
        report.markdown_table(compression_summary(rows)[1]),
        "",
        "Per game, mean and std over seeds:",
        "",
        report.markdown_table(common.summarise(rows, by), common.summary_columns(by)),
        "",
        "![compression](compression/compression.png)",
        "",
    ]


EXPERIMENT = Experiment(
    name="compression",
    help="KL students at 100/25/7/4 % size",
    run=compression,
    write=write_compression,
    console_table=console_table,
    report_section=report_section,
    order=2,
)
