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

A longer run continues a shorter one: the learning rate is constant and each update draws its
minibatch from the key in the training state, so a run of the same config with fewer `updates`
is the first part of a longer one, bit for bit. `distil_seeds` starts a student that has no
folder yet from the furthest such run in the cache (`shorter_run`), and its manifest names it
(`continued_from`); its learning curve and wall time carry on from that run's.
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

from distill import checkpoint, dataset, envs, jobs, plateau, student, xla
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

    def __init__(
        self,
        config: student.StudentConfig,
        datas,
        checkpoint_every_s: float = 120.0,
        start_from: Path | None = None,
    ):
        self.config, self.datas = config, tuple(datas)
        self.start_from = start_from  # a shorter run of this config to continue (`shorter_run`)
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
        return (
            manifest.get("config") == student.config_identity(self.config)
            and manifest.get("games") == list(self.games)
            and same_datasets(manifest, self.datas)
        )

    def init(self) -> student.StudentState:
        state = self.parts.init(jax.random.PRNGKey(self.config.seed))
        if self.start_from is None:
            return state
        return jobs.restore(self, state, self.start_from, self._shorter())

    def _shorter(self) -> dict:
        return checkpoint.read_manifest(self.start_from)

    def carried(self) -> tuple[list[dict], float]:
        if self.start_from is None:
            return [], 0.0
        manifest = self._shorter()
        return list(manifest.get("metrics", [])), float(manifest.get("wall_s", 0.0))

    def restore(self, state, folder: Path, manifest: dict) -> student.StudentState:
        if folder != self.start_from and manifest.get("continued_from"):
            self.start_from = Path(manifest["continued_from"])  # a continuation resumed
        return super().restore(state, folder, manifest)

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
        more = {} if self.start_from is None else {"continued_from": str(self.start_from)}
        return {"updates": self.done(state), "net": self.config.net, **more}

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
    start_from: Path | None = None,
) -> student.StudentState:
    """One multi-task student distilled from `datas` (one Atari dataset per game) for
    `config.updates` updates in all; in `out` it checkpoints and resumes (None: in memory).
    `start_from`: a folder of `shorter_run`'s, whose training state a new run continues."""
    job = MultiStudentJob(config, datas, checkpoint_every_s, start_from)
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


def shorter_run(
    cache: str | Path, config: student.StudentConfig, datas: Sequence[dataset.Dataset], seed: int
) -> Path | None:
    """Seed `seed`'s folder, among `cache`'s students of these games, net and loss, that holds the
    furthest run of `config` with fewer `updates` (finished or stopped) on the same datasets, with
    its training state; None if there is none. A folder whose manifest cannot be read is passed
    over: it is only a candidate."""
    prefix = folder_name(config, datas).rsplit("_", 1)[0]
    seeded = dataclasses.replace(config, seed=config.seed + seed)
    best, best_updates = None, 0
    for folder in sorted(Path(cache).glob(f"{prefix}_*/seed_{seed}")):
        try:
            manifest = checkpoint.read_manifest(folder)
        except checkpoint.CheckpointError:
            continue
        done = manifest.get("updates")
        if _continues(manifest, folder, seeded, datas) and best_updates < done < config.updates:
            best, best_updates = folder, done
    return best


def _continues(
    manifest: dict, folder: Path, config: student.StudentConfig, datas: Sequence[dataset.Dataset]
) -> bool:
    """Whether `manifest` (in `folder`) is of a run of `config` but for its `updates`, on these
    datasets, with its training state on disk."""

    def but_updates(c) -> dict:
        return {k: v for k, v in student.config_identity(c).items() if k != "updates"}

    theirs, state = manifest.get("config"), checkpoint.TRAIN_STATE
    return (
        isinstance(theirs, dict)
        and but_updates(theirs) == but_updates(config)
        and isinstance(manifest.get("updates"), int)
        and manifest.get("games") == [d.env_id for d in datas]
        and same_datasets(manifest, datas)
        and state in manifest["files"]
        and checkpoint.path_of(folder, state, manifest).is_file()
    )


def same_datasets(manifest: dict, datas: Sequence[dataset.Dataset]) -> bool:
    """Whether a student's manifest names these datasets (the same sources, in this order)."""
    stored = manifest.get("datasets") or []
    return len(stored) == len(datas) and all(
        dataset.same_source(s, student.dataset_fingerprint(d))
        for s, d in zip(stored, datas, strict=True)
    )


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


def still_learning(training: list[dict], games: Sequence[str]) -> dict[tuple[int, str], bool]:
    """Per (seed, game) of `training_rows`' rows (one loss): whether that head's training
    agreement (the mean over its minibatches of a block) rose by more than `plateau.RISE` over
    the last block (`plateau.rising`, as for a single-game student)."""
    out = {}
    for seed in dict.fromkeys(r["seed"] for r in training):
        mine = [r for r in training if r["seed"] == seed]
        for g in games:
            flag = plateau.rising([r.get(f"agreement {g}", np.nan) for r in mine])
            if flag is not None:
                out[(seed, g)] = flag
    return out


def distil_seeds(
    config: student.StudentConfig,
    datas: Sequence[dataset.Dataset],
    seeds: int,
    cache: str | Path | None = None,
    progress: bool = True,
):
    """`seeds` multi-task students, seed s a `fit` of seed `config.seed + s` (in
    `cache/<folder_name>/seed_s` when `cache` is given: resumable, read back once finished, and
    a new one continuing the seed's `shorter_run`); their parameters stacked with a leading
    `[seeds]` axis."""
    params = []
    for s in range(seeds):
        folder = shorter = None
        if cache is not None:
            folder = seed_folder(cache, config, datas, s)
            if not (folder / checkpoint.MANIFEST).exists():
                shorter = shorter_run(cache, config, datas, s)
        seeded = dataclasses.replace(config, seed=config.seed + s)
        params.append(fit(seeded, datas, folder, progress=progress, start_from=shorter).params)
    return jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), *params)
