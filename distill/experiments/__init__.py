"""The paper's experiments as functions that return tidy results (a list of flat dicts).

One module per experiment (`losses`, `policy_compression`, `multitask_distillation`,
`online_distillation`), each with its run function, tables, writer and report section, and an
`EXPERIMENT` entry that `EXPERIMENTS` collects: `distill experiment NAME` and `distill reproduce`
read it, so a new experiment is one new module. What they share is in `common` (budgets, teachers,
datasets, reference scores, summaries), `paired` (students and teacher scored on the same
episodes; the teacher's cached high-precision reference) and `seeds` (students trained side
by side, cached on disk). Their figures are in `distill.plotting`.

Seeds run side by side under `jax.vmap`, in one compiled call per (game, loss, network). Every
experiment takes an optional device mesh (`distill.sharding`): its `seeds` axis splits the seeds
across devices, its `data` axis each student's minibatches; across hosts (`jax.distributed`)
each process also makes its share of the teachers and datasets first.
"""

from __future__ import annotations

import sys

from distill.experiments.common import (
    ATARI_BUDGETS,
    BUDGETS,
    MINATAR_FIVE,
    MINATAR_GAMES,
    SUITES,
    Budget,
    budget,
    ensure_dataset,
    ensure_teacher,
    game_inputs,
    geometric_mean,
    paired_reference,
    paired_row,
    percent_of_teacher,
    prepare_games,
    random_normalised,
    reference_scores,
    scored,
    summarise,
    summary_columns,
)
from distill.experiments.losses import loss_comparison, write_loss_comparison
from distill.experiments.multitask_distillation import (
    PAPER_MULTITASK,
    distil_multitask_seeds,
    distil_multitask_students,
    multitask,
    multitask_table,
    write_multitask,
)
from distill.experiments.online_distillation import online, online_table, write_online
from distill.experiments.policy_compression import (
    PAPER_COMPRESSION,
    compression,
    compression_summary,
    write_compression,
)
from distill.experiments.registry import Experiment, discover
from distill.experiments.seeds import distil_seeds, distil_tau_sweep, student_folder_name
from distill.plateau import final_agreement

# every experiment module of this package, by name, in the order a reproduction runs them
EXPERIMENTS: dict[str, Experiment] = discover(sys.modules[__name__])

# The figures live in distill.plotting; these names stay here for older notebooks, imported
# only when asked for so that the command line does not load matplotlib.
_FIGURES = ("loss_comparison_figure", "compression_figure", "multitask_figure", "online_figure")


def __getattr__(name: str):
    if name in _FIGURES:
        from distill import plotting

        return getattr(plotting, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "ATARI_BUDGETS",
    "BUDGETS",
    "EXPERIMENTS",
    "MINATAR_FIVE",
    "MINATAR_GAMES",
    "PAPER_COMPRESSION",
    "PAPER_MULTITASK",
    "SUITES",
    "Budget",
    "Experiment",
    "budget",
    "compression",
    "compression_summary",
    "distil_multitask_seeds",
    "distil_multitask_students",
    "distil_seeds",
    "distil_tau_sweep",
    "ensure_dataset",
    "ensure_teacher",
    "final_agreement",
    "game_inputs",
    "geometric_mean",
    "loss_comparison",
    "multitask",
    "multitask_table",
    "online",
    "online_table",
    "paired_reference",
    "paired_row",
    "percent_of_teacher",
    "prepare_games",
    "random_normalised",
    "reference_scores",
    "scored",
    "summarise",
    "summary_columns",
    "student_folder_name",
    "write_compression",
    "write_loss_comparison",
    "write_multitask",
    "write_online",
    *_FIGURES,
]
