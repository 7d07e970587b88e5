"""The offline multi-task students of a MinAtar multi-task stage (`multitask_distillation`).

Every seed trains side by side in one compiled program (`multitask.make_multitask_distill`),
as `distil_multitask_students` runs them, but cut into equal chunks of evaluation blocks and
run by `jobs.run`: a progress bar with each game's score, a checkpoint every two minutes and on
SIGINT/SIGTERM, and a stage stopped mid-training continues where it stopped. Each loss's
finished students stay in OUT/students/ and are read back by the next run (`trained`).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from distill import dataset, jobs, multitask_atari, sharding, student
from distill import multitask as mt

CHUNKS = 10  # about this many compiled calls (and chances to checkpoint) per run


class StudentsJob(jobs.Job):
    """`seeds` multi-task students of `config` on the datasets `sets`, one per game."""

    kind, what = "multitask-students", "multi-task students"
    step_name, unit = "update", "update"
    made_from = "another config, other games, datasets or seeds, or another chunk size"
    keep_state_file = True  # a finished run is read back from its training state
    resume_hint = "run the same command again to continue"

    def __init__(self, config: student.StudentConfig, games, sets, seeds: int, mesh=None):
        self.config, self.games, self.seeds = config, tuple(games), seeds
        self.prints = [student.dataset_fingerprint(d) for d in sets]
        blocks = config.blocks
        self.blocks_per_chunk = mt.chunk_size(blocks, CHUNKS)  # equal chunks compile once
        self.total, self.chunk = config.updates, self.blocks_per_chunk * config.eval_every
        self.desc = f"multi-task students {config.net}/{config.loss}"
        _, init, run = mt.make_multitask_distill(config, self.games, mesh)
        keys = jax.random.split(jax.random.PRNGKey(config.seed), seeds)
        self.template = sharding.map_seeds(init, mesh)(keys)
        arrays = tuple(d.arrays() for d in sets)
        hyper = jax.tree_util.tree_map(jnp.float32, config.hyper)  # the loss's, e.g. tau
        chunk = sharding.map_seeds(lambda s, d, h: run(s, d, h, self.blocks_per_chunk), mesh)
        self.step = lambda state: chunk(state, arrays, hyper)

    def identity(self) -> dict:
        ident = {
            "config": student.config_identity(self.config),
            "games": list(self.games),
            "seeds": self.seeds,
            "blocks_per_chunk": self.blocks_per_chunk,
        }
        return {**json.loads(json.dumps(ident)), "datasets": self.prints}  # as a manifest holds it

    def matches(self, manifest: dict) -> bool:
        mine = self.identity()
        theirs = manifest.get("datasets") or []
        # a finished run is read back whatever chunks made it; a running one resumes in its own
        skip = {"datasets"} | (
            {"blocks_per_chunk"} if manifest.get("status") == "complete" else set()
        )
        return (
            all(manifest.get(k) == v for k, v in mine.items() if k not in skip)
            and len(theirs) == len(self.prints)
            and all(map(dataset.same_source, theirs, self.prints))
        )

    def init(self) -> student.StudentState:
        return self.template

    def done(self, state: student.StudentState) -> int:
        return int(np.asarray(state.updates).reshape(-1)[0])

    def describe(self, state: student.StudentState) -> dict:
        return {"updates": self.done(state)}

    def advance(self, state: student.StudentState, n: int) -> jobs.Chunk:
        start = self.done(state)
        state, metrics = self.step(state)
        loss, score = np.asarray(metrics.loss), np.asarray(metrics.score)  # [seeds, blocks, ...]
        rows = [
            {
                "updates": start + (b + 1) * self.config.eval_every,
                "loss": float(loss[:, b].mean()),
                **{f"score {g}": float(score[:, b, k].mean()) for k, g in enumerate(self.games)},
            }
            for b in range(loss.shape[1])
        ]
        return jobs.Chunk(state, rows, {"distillation loss": loss})

    def postfix(self, rows: list[dict]) -> dict:
        return {g.split("-")[0]: f"{rows[-1][f'score {g}']:.1f}" for g in self.games}

    def reload(self, folder: Path, manifest: dict) -> student.StudentState:
        return self.restore(self.template, folder, manifest)

    def result(self, state: student.StudentState, folder: Path | None) -> student.StudentState:
        return state


def folder_name(config: student.StudentConfig, sets: Sequence[dataset.Dataset], seeds: int):
    """`multitask_<games>_<net>_<loss>_<hash>_s<seeds>`: the hash covers config and datasets."""
    return f"{multitask_atari.folder_name(config, sets)}_s{seeds}"


def trained(
    config: student.StudentConfig,
    games,
    sets: Sequence[dataset.Dataset],
    seeds: int,
    cache: str | Path | None = None,
    mesh: jax.sharding.Mesh | None = None,
    progress: bool = True,
):
    """The params `[seeds, ...]` of `StudentsJob`, trained in cache/`folder_name` (resumed there,
    or read back once finished; a folder of another config, games, datasets or seeds is
    refused by name), or in memory without a `cache`."""
    job = StudentsJob(config, games, sets, seeds, mesh)
    folder = Path(cache) / folder_name(config, sets, seeds) if cache is not None else None
    return jobs.run(job, folder, resume=True, progress=progress).params
