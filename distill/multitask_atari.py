"""Multi-task students on Atari: the paper's 3-game network (Rusu et al. 2016, sections 4.3 and
5.3) distilled from each game's teacher dataset, in a host loop.

The network is `multitask.build(games, "teacher")`: the Atari teacher's trunk (the Nature DQN's
convolutions of 32, 64 and 64 filters and its fc 512: 1,684,128 parameters), then per game an fc2
of 128 units (65,664 parameters) and a controller with one output per action (129 parameters
each). The controllers have the actions of ale-py's minimal action sets, as the teachers do
(`envs.ale_spec`; a student must output what its teacher's Q-vector holds): Pong 6, Breakout 4,
Space Invaders 6, 16 in all, hence 1,684,128 + 3 x 65,664 + 129 x 16 = 1,883,184 parameters
(`experiments.multitask_distillation.multitask_params`). The paper's 1,882,668 fits 12 actions
in all (PAPER.md; its per-game sets are not given); with the full set of 18 actions per game
the net would have 1,888,086.

As for the single-game Atari student (`student.StudentJob`), Atari-size convolutions train
fastest one update per compiled call on a CPU, so each game has its own compiled update
(`MultiParts.game_update`, native convolution gradients) and the host loop calls them in turn:
update u trains on a minibatch of game u mod len(games), each minibatch rebuilding that game's
4-frame stacks from the single frames its dataset stores. The heads are not evaluated while they
train: the experiment scores each head on its game's paired episodes at the end
(`experiments.multitask_distillation.heads_scores`). `fit` runs one student as a `jobs.Job`
(progress, checkpoints every two minutes, resume); `distil_seeds` one per seed.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from collections.abc import Sequence
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from distill import checkpoint, dataset, envs, jobs, student, xla
from distill import multitask as mt
from distill.config import ConfigError


def check_datasets(games: Sequence[str], datas: Sequence[dataset.Dataset]) -> None:
    """One dataset per game, in `games` order, each with its game's actions and frame stacks."""
    if [d.env_id for d in datas] != list(games):
        raise ConfigError(f"datasets for {[d.env_id for d in datas]}, but games={list(games)}")
    for d in datas:
        spec = envs.spec(d.env_id)
        if d.num_actions != spec.num_actions or d.stack != dataset.stack_of(spec):
            raise ConfigError(
                f"{d.path}: {d.num_actions} actions and stacks of {d.stack}, but {d.env_id} "
                f"has {spec.num_actions} and {dataset.stack_of(spec)}"
            )


class MultiStudentJob(jobs.Job):
    """`fit`'s job: `eval_every` updates (games in turn) per `advance`; the state is its
    checkpoint (`student.StudentState`)."""

    kind, what = "multitask-student", "multi-task student"
    made_from = "another config or datasets"
    step_name, unit = "update", "upd"
    keep_state_file = True  # a finished run is read back from its training state
    resume_hint = "run the same command again to continue"

    def __init__(self, config: student.StudentConfig, datas, checkpoint_every_s: float = 120.0):
        self.config, self.datas = config, tuple(datas)
        self.games = tuple(d.env_id for d in self.datas)
        if not mt.on_host(self.games):
            raise ConfigError(f"games={list(self.games)}: Atari games only (MinAtar: in-graph)")
        check_datasets(self.games, self.datas)
        self.parts = mt.make_multitask_parts(config, self.games, conv_grad="native")
        self.total, self.chunk = config.updates, config.eval_every
        self.checkpoint_every_s = checkpoint_every_s
        self.desc = f"multi-task student {config.net}/{config.loss} ({len(self.games)} games)"
        # the old state is dead after each update: let XLA write the new one in its buffers
        self.steps = [xla.jit(self._step(k), donate_argnums=0) for k in range(len(self.games))]

    def _step(self, k: int):
        update = self.parts.game_update(k)

        def step(state: student.StudentState, data: dict, hyper):
            key, k_upd = jax.random.split(state.key)
            carry, metrics = update((state.params, state.opt_state), k_upd, data, hyper)
            return student.StudentState(*carry, key, state.updates + 1), metrics

        return step

    def identity(self) -> dict:
        return {
            "config": student.config_identity(self.config),
            "games": list(self.games),
            "datasets": [student.dataset_fingerprint(d) for d in self.datas],
        }

    def matches(self, manifest: dict) -> bool:
        stored = manifest.get("datasets") or []
        return (
            manifest.get("config") == student.config_identity(self.config)
            and manifest.get("games") == list(self.games)
            and len(stored) == len(self.datas)
            and all(
                dataset.same_source(s, student.dataset_fingerprint(d))
                for s, d in zip(stored, self.datas, strict=True)
            )
        )

    def init(self) -> student.StudentState:
        return self.parts.init(jax.random.PRNGKey(self.config.seed))

    def start(self, state: student.StudentState) -> student.StudentState:
        self.arrays = [d.arrays() for d in self.datas]
        self.hyper = jax.tree_util.tree_map(jnp.float32, self.config.hyper)
        return state

    def done(self, state: student.StudentState) -> int:
        return int(state.updates)

    def advance(self, state: student.StudentState, n: int) -> jobs.Chunk:
        t0, first, games = time.perf_counter(), self.done(state), len(self.games)
        per_game: list[list] = [[] for _ in self.games]
        for u in range(first, first + n):
            state, metrics = self.steps[u % games](state, self.arrays[u % games], self.hyper)
            per_game[u % games].append(metrics)
        means = [
            np.mean(np.asarray(m, np.float64), axis=0) if m else (np.nan,) * 2 for m in per_game
        ]
        loss = float(np.mean([m[0] for m in means]))
        row = {
            "updates": self.done(state),
            "loss": loss,
            "agreement": float(np.mean([m[1] for m in means])),
            **{f"agreement {g}": float(m[1]) for g, m in zip(self.games, means, strict=True)},
            "wall_s": round(time.perf_counter() - t0, 3),
        }
        return jobs.Chunk(state, [row], {f"{self.config.loss} loss": loss})

    def describe(self, state: student.StudentState) -> dict:
        return {"updates": self.done(state), "net": self.config.net}

    def postfix(self, rows: list[dict]) -> dict:
        return {"loss": f"{rows[-1]['loss']:.4f}", "agreement": f"{rows[-1]['agreement']:.3f}"}

    def reload(self, folder: Path, manifest: dict) -> student.StudentState:
        return self.restore(self.init(), folder, manifest)

    def result(self, state: student.StudentState, folder: Path | None) -> student.StudentState:
        return state


def fit(
    config: student.StudentConfig,
    datas: Sequence[dataset.Dataset],
    out: str | Path | None,
    *,
    progress: bool = True,
    checkpoint_every_s: float = 120.0,
) -> student.StudentState:
    """One multi-task student distilled from `datas` (one Atari dataset per game) for
    `config.updates` updates in all; in `out` it checkpoints and resumes (None: in memory)."""
    job = MultiStudentJob(config, datas, checkpoint_every_s)
    return jobs.run(job, out, resume=True, progress=progress)


def folder_name(config: student.StudentConfig, datas: Sequence[dataset.Dataset]) -> str:
    """`multitask_<games>_<net>_<loss>_<hash>`: the hash covers the config and the datasets."""
    key = json.dumps(
        {
            "config": student.config_identity(config),
            "datasets": [sorted(d.manifest["files"].items()) for d in datas],
        },
        sort_keys=True,
    )
    digest = hashlib.sha256(key.encode()).hexdigest()[:12]
    games = "+".join(envs.spec(d.env_id).safe_name.removeprefix("ALE-") for d in datas)
    return f"multitask_{games}_{config.net}_{config.loss}_{digest}"


def seed_folder(
    cache: str | Path, config: student.StudentConfig, datas: Sequence[dataset.Dataset], seed: int
) -> Path:
    """Where `distil_seeds` keeps its student of seed `config.seed + seed`."""
    return Path(cache) / folder_name(config, datas) / f"seed_{seed}"


def training_rows(
    config: student.StudentConfig, datas: Sequence[dataset.Dataset], seeds: int, cache: str | Path
) -> list[dict]:
    """The learning curves of `distil_seeds`' students in `cache`: each seed's metric rows
    (`training_loss` and training-minibatch agreement, overall and per game, every `eval_every`
    updates), with its `seed` and `student_loss`, read from the students' manifests."""
    rows = []
    for s in range(seeds):
        manifest = checkpoint.read_manifest(seed_folder(cache, config, datas, s))
        for r in manifest["metrics"]:
            named = {"training_loss" if k == "loss" else k: v for k, v in r.items()}
            rows.append({"student_loss": config.loss, "seed": s, **named})
    return rows


def distil_seeds(
    config: student.StudentConfig,
    datas: Sequence[dataset.Dataset],
    seeds: int,
    cache: str | Path | None = None,
    progress: bool = True,
):
    """`seeds` multi-task students, seed s a `fit` of seed `config.seed + s` (in
    `cache/<folder_name>/seed_s` when `cache` is given: resumable, and read back once
    finished); their parameters stacked with a leading `[seeds]` axis."""
    params = [
        fit(
            dataclasses.replace(config, seed=config.seed + s),
            datas,
            seed_folder(cache, config, datas, s) if cache is not None else None,
            progress=progress,
        ).params
        for s in range(seeds)
    ]
    return jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), *params)
