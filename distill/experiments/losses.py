"""The loss comparison (Rusu et al. 2016, section 5.1): same-size students distilled with NLL,
MSE and KL on every game."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import jax
import numpy as np

from distill import losses, paths, plateau, report
from distill.checkpoint import atomic_write_json, atomic_write_text
from distill.experiments import common, paired, seeds
from distill.experiments.registry import Experiment


def loss_comparison(
    b: common.Budget,
    losses: tuple[str, ...] = ("nll", "mse", "kl"),
    tau: float = losses.DEFAULT_TAU,
    net: str = "teacher",
    runs_dir: Path | None = None,
    progress: bool = True,
    mesh: jax.sharding.Mesh | None = None,
) -> dict:
    """Same-size students with each loss on each game (Rusu et al. 2016, section 5.1).

    Returns {"rows": per (game, loss, seed) results, "curves": per (game, loss) learning curves,
    "teachers": per game teacher and random scores}. Every student's final score is measured on
    the same episodes as its teacher's (`paired`); the rows keep both per-episode lists.
    """
    from distill import figures

    runs_dir = Path(runs_dir or paths.runs_dir())
    common.prepare_games(b.games, b, runs_dir, progress)
    rows, curves, teachers, margins = [], [], [], []
    for env_id in b.games:
        teacher, data, reference = common.game_inputs(env_id, b, runs_dir, progress)
        teachers.append(reference)
        q = np.asarray(data.q).reshape(-1, data.num_actions)
        margins.append({"game": env_id, **figures.teacher_margins(q, tau)})
        configs = [
            common.student_config(b, loss=loss, tau=tau, net=common.net_of(b, net))
            for loss in losses
        ]
        # every loss's seeds in one compiled program (same network: only the loss differs)
        trained = seeds.distil_losses(configs, data, b.seeds, mesh, runs_dir / "students")
        for loss, config, (_, state, m) in zip(losses, configs, trained, strict=True):
            # the final score of each student: on the teacher's paired episodes
            final = paired.student_scores(env_id, config.net, state.params, b.eval_episodes)
            own = own_states(env_id, config.net, state.params, teacher, b)
            for seed in range(b.seeds):
                rows.append(
                    {
                        "game": env_id,
                        "loss": loss,
                        "net": net,
                        "seed": seed,
                        **common.paired_row(final[seed], reference),
                        "agreement": float(plateau.final_agreement(m)[seed]),
                        **{k: float(v[seed]) for k, v in own.items()},
                        **plateau.columns(config, m, seed),
                    }
                )
            curves.append(
                {
                    "game": env_id,
                    "loss": loss,
                    "updates": [(i + 1) * b.eval_every for i in range(m.score.shape[1])],
                    **final_curve(m.score, final.mean(axis=1)),
                    **plateau.curve(config, m),
                }
            )
    return {
        "rows": rows,
        "curves": curves,
        "teachers": teachers,
        "margins": margins,  # how decided each teacher is on its dataset (figures.teacher_margins)
        "budget": dataclasses.asdict(b),
    }


def own_states(env_id: str, net: str, params, teacher, b: common.Budget) -> dict:
    """`{"own_agreement", "own_regret"}` `[seeds]` arrays: the students on states of their own
    play, labelled by the teacher (`diagnostics.own_regret`); none on Atari (host envs)."""
    from distill import diagnostics, families

    if not families.of(env_id).in_graph:
        return {}
    states = min(diagnostics.OWN_STATES, b.dataset_states)
    apply = families.build_network(env_id, net).apply
    agree, regret = diagnostics.own_regret(
        env_id, apply, params, teacher.apply, teacher.params, states
    )
    return {"own_agreement": agree, "own_regret": regret}


def final_curve(score: np.ndarray, final: np.ndarray) -> dict:
    """Mean and std over seeds of `[seeds, blocks]` in-graph scores, with the last block's
    replaced by the `[seeds]` paired final scores: the curve ends at the score the rows report."""
    score = np.array(score, np.float64)
    score[:, -1] = final
    return {"score_mean": score.mean(axis=0).tolist(), "score_std": score.std(axis=0).tolist()}


BY = ("game", "loss")


def write_loss_comparison(result: dict, out: str | Path) -> Path:
    """results JSON, a markdown table and the figure, into folder `out`."""
    from distill import plotting

    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    summary = common.summarise(result["rows"], BY)
    atomic_write_json(folder / "loss_comparison.json", {**result, "summary": summary})
    atomic_write_text(
        folder / "loss_comparison.md",
        report.markdown_table(summary, common.summary_columns(BY)) + "\n",
    )
    fig = plotting.loss_comparison_figure(result)
    fig.savefig(folder / "loss_comparison.png", dpi=120)
    return folder


def console_table(result: dict) -> str:
    """Per (game, loss): mean % of teacher and random-normalised score."""
    summary = common.summarise(result["rows"], BY)
    return report.markdown_table(summary, ["game", "loss", "percent_mean", "normalised_mean"])


def report_section(result: dict) -> list[str]:
    return [
        "## Loss comparison (same-size students)",
        "",
        "Paper: KL >= NLL > MSE, and a same-size KL student can beat its teacher "
        "(independent Pong reimplementation: KL 11.9, NLL 10.9, MSE 8.4).",
        "",
        f"Students trained {common.rule_of(result['budget'])}. "
        + common.teachers_note(result["budget"]),
        "",
        report.markdown_table(common.summarise(result["rows"], BY), common.summary_columns(BY)),
        "",
        "![loss comparison](losses/loss_comparison.png)",
        "",
        *margins_section(result),
    ]


def margins_section(result: dict) -> list[str]:
    """How decided each teacher is on its dataset: where it is not, students agree less and the
    KL target stays soft (absent from results written before margins were recorded)."""
    if not result.get("margins"):
        return []
    rows = [
        {
            "game": m["game"],
            "median Q-gap": round(m["median_q_gap"], 4),
            "near ties (gap < 0.01)": round(m["near_ties"], 3),
            "KL target top < 0.9": round(m["soft_targets"], 3),
            "best-action shares": " / ".join(f"{x:.2f}" for x in m["best_action_shares"]),
        }
        for m in result["margins"]
    ]
    groups: dict[tuple, list[dict]] = {}
    for r in result["rows"]:
        if "own_regret" in r:
            groups.setdefault((r["game"], r["loss"]), []).append(r)
    own = [
        {
            "game": g,
            "loss": loss,
            "own-state agreement": round(float(np.mean([r["own_agreement"] for r in rs])), 3),
            "own-state regret": round(float(np.mean([r["own_regret"] for r in rs])), 4),
        }
        for (g, loss), rs in groups.items()
    ]
    return [
        *(
            [
                "The students on states of their own play, labelled by the teacher (mean over "
                "seeds; regret: the teacher's best Q-value minus its value of the student's "
                "action, 0 where they agree):",
                "",
                report.markdown_table(own),
                "",
            ]
            if own
            else []
        ),
        "How decided the teachers are on their datasets (best minus second-best Q-value; the "
        "share of states whose tau = 0.01 target gives the best action under 0.9):",
        "",
        report.markdown_table(rows),
        "",
    ]


EXPERIMENT = Experiment(
    name="losses",
    help="NLL vs MSE vs KL",
    run=loss_comparison,
    write=write_loss_comparison,
    console_table=console_table,
    report_section=report_section,
    order=1,
)
