"""What every experiment shares: budgets and its ingredients (teachers, datasets, reference
scores); the scores and summaries it reports are in `scores` (also importable from here).

Each experiment takes a `Budget` (how many states, updates, seeds, episodes) so the same code runs
as a smoke test, a quick look or a full reproduction. Across hosts (`jax.distributed`) each
process makes its share of the teachers and datasets first (`prepare_games`).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import jax
import numpy as np

from distill import checkpoint, dataset, envs, families, paths, sharding, student, teacher
from distill.experiments import paired
from distill.experiments.scores import (  # noqa: F401 (experiments read them from here)
    geometric_mean,
    paired_row,
    percent_of_teacher,
    random_normalised,
    scored,
    summarise,
    summary_columns,
)

# ---------------------------------------------------------------------------- budgets


@dataclasses.dataclass(frozen=True, kw_only=True)
class Budget:
    """How much compute an experiment spends. Built by keyword: eleven numbers in a row are
    easy to misplace."""

    name: str
    """the budget's name (smoke, quick, full)"""
    games: tuple[str, ...]
    """env ids the experiments run on, comma-separated"""
    teacher_steps: int
    """env steps of a teacher that has to be trained (none is shipped for the game)"""
    dataset_states: int
    """states in each game's teacher dataset"""
    updates: int
    """minibatch updates of each student"""
    eval_every: int
    """updates between a student's evaluations (updates must be a multiple of it)"""
    seeds: int
    """students (and multi-task runs) per configuration, one per seed"""
    eval_episodes: int
    """episodes of every evaluation (epsilon 0.05)"""
    multitask_dqn_steps: int | None
    """env steps of the multi-task DQN; none: as many as the single-game teachers together (the
    multi-task stage refuses a number on Atari, where the DQN is not run: sized for a GPU)"""
    online_teacher_steps: int
    """env steps of the teacher that trains during online distillation (0: no online stage)"""
    online_rounds: int
    """rounds of online distillation (teacher chunk, new data, student updates, evaluation)"""
    plateau_blocks: int = 0
    """the students' rule: 0, exactly `updates` each; n > 0, each trains until its held-out
    agreement has not improved for n blocks of `eval_every` updates (`distill.plateau`), with
    `updates` the cap"""
    plateau_delta: float = 0.0
    """least rise of held-out agreement that counts as an improvement under the plateau rule"""
    fixed_updates: int | None = None
    """updates of the students that train a fixed count whatever the rule (multi-task per game,
    online per 10 rounds); none: `updates`"""
    online_rows_per_round: int = 64
    """rows the online teacher records a round (x 64 envs of fresh states)"""
    online_window_rounds: int = 8
    """the online student samples from the most recent rounds' data"""
    regime: str = "offline"
    """the multi-task students' regime: offline (the datasets), stream or dagger (a buffer per
    game, `distill.multitask_regimes`); the regimes stage compares all three on single games"""
    teachers: str = "small"
    """teacher size: small (data/teachers/<env>; students teacher, net1-3) or large (MinAtar's
    over-parameterised large-teacher, data/teachers/<env>-large; students large-teacher,
    large-net1-3)"""
    multitask_net: str = "teacher"
    """the multi-task student's and DQN's trunk: teacher (the paper's 3-game net: the teacher's
    trunk) or wide (its 10-game net: a wider trunk); a per-game fc2 of 128 and controller each"""
    compression_nets: tuple[str, ...] = ("teacher", "net1", "net2", "net3")
    """the compression stage's student sizes, of teacher (same size), net1, net2, net3 (the
    paper's Table 2 has net1-3; the same-size student is the loss comparison's KL student)"""
    multitask_dqn_seeds: int = 1
    """multi-task DQN runs, one per seed (the claim that the distilled student beats it needs an
    interval over runs: at least 3)"""
    online_seeds: int = 1
    """independent online runs (teacher and student seeds 0, 1, ...): the stability claim needs
    an interval over runs, at least 3"""

    @property
    def fixed_student_updates(self) -> int:
        return self.fixed_updates if self.fixed_updates is not None else self.updates

    @property
    def rule(self) -> str:
        """The students' budget in words, as reports state it."""
        return rule_of(dataclasses.asdict(self))

    def __post_init__(self):
        from distill.config import positive_int, require

        require(
            isinstance(self.games, tuple) and len(self.games) > 0,
            "games",
            self.games,
            "must be a non-empty tuple of env ids",
        )
        for game in self.games:  # cheap here (no emulator loaded); envs.spec checks in full later
            require(families.owner(game) is not None, "games", game, "an env id of distill.envs")
        for name in ("teacher_steps", "dataset_states", "updates", "eval_every", "seeds"):
            positive_int(name, getattr(self, name))
        positive_int("eval_episodes", self.eval_episodes)
        require(
            self.updates % self.eval_every == 0,
            "updates",
            self.updates,
            f"must be a multiple of eval_every={self.eval_every}",
        )
        if self.multitask_dqn_steps is not None:
            positive_int("multitask_dqn_steps", self.multitask_dqn_steps)
        if self.fixed_updates is not None:
            positive_int("fixed_updates", self.fixed_updates)
            require(
                self.fixed_updates % self.eval_every == 0,
                "fixed_updates",
                self.fixed_updates,
                f"must be a multiple of eval_every={self.eval_every}",
            )
        for name in ("online_teacher_steps", "online_rounds", "plateau_blocks"):
            value = getattr(self, name)
            require(isinstance(value, int) and value >= 0, name, value, "must be an integer >= 0")
        positive_int("multitask_dqn_seeds", self.multitask_dqn_seeds)
        positive_int("online_seeds", self.online_seeds)
        require(
            isinstance(self.compression_nets, tuple)
            and len(self.compression_nets) > 0
            and len(set(self.compression_nets)) == len(self.compression_nets)
            and set(self.compression_nets) <= set(COMPRESSION_NETS),
            "compression_nets",
            self.compression_nets,
            f"a non-empty tuple of distinct sizes of {COMPRESSION_NETS}",
        )
        positive_int("online_rows_per_round", self.online_rows_per_round)
        positive_int("online_window_rounds", self.online_window_rounds)
        require(
            self.regime in ("offline", "stream", "dagger"),
            "regime",
            self.regime,
            "one of offline, stream, dagger",
        )
        sizes = paths.TEACHER_SIZES
        require(self.teachers in sizes, "teachers", self.teachers, f"one of {sizes}")
        require(
            self.multitask_net in MULTITASK_NETS,
            "multitask_net",
            self.multitask_net,
            f"one of {MULTITASK_NETS}",
        )
        for game in self.games:  # only MinAtar has the large nets
            require(
                net_of(self, "teacher") in families.owner(game).nets,
                "teachers",
                self.teachers,
                f"{game} has no {self.teachers} nets (large: MinAtar games only)",
            )


MULTITASK_NETS = ("teacher", "wide")  # the paper's 3-game and 10-game multi-task shapes


COMPRESSION_NETS = ("teacher", "net1", "net2", "net3")  # the paper's sizes, largest first


def net_of(b: Budget, size: str) -> str:
    """The network a budget's experiments build for the paper's size `size` (teacher, net1-3,
    wide): itself with small teachers, 'large-' + it with large ones ('net2' -> 'large-net2')."""
    return size if b.teachers == "small" else f"{b.teachers}-{size}"


def teachers_note(b: dict) -> str:
    """The teacher size of a result's budget (as results.json holds it), in words."""
    if b.get("teachers", "small") == "small":
        return "Teachers: small (the shipped teachers; students teacher, net1, net2, net3)."
    return (
        f"Teachers: {b['teachers']} (the shipped {b['teachers']}-teacher of each game; students "
        f"{', '.join(b['teachers'] + '-' + n for n in ('teacher', 'net1', 'net2', 'net3'))})."
    )


def rule_of(b: dict) -> str:
    """The students' budget in words, from a budget's dict (as results.json holds it)."""
    if not b.get("plateau_blocks"):
        return f"{b['updates']:,} updates each (fixed)"
    return (
        f"to the plateau of held-out agreement (no rise over {b['plateau_delta']:g} in "
        f"{b['plateau_blocks']} blocks of {b['eval_every']:,} updates), at most "
        f"{b['updates']:,} updates"
    )


MINATAR_GAMES = ("Breakout-MinAtar", "SpaceInvaders-MinAtar", "Asterix-MinAtar", "Freeway-MinAtar")
# the full budget adds Seaquest (one of the paper's ten games; its gymnax step is the slowest, so
# the quick budget, which the demo and the notebooks run, keeps four)
MINATAR_FIVE = (*MINATAR_GAMES, "Seaquest-MinAtar")

BUDGETS = {
    "smoke": Budget(
        name="smoke",
        games=("Breakout-MinAtar",),
        teacher_steps=50_000,
        dataset_states=4_096,
        updates=200,
        eval_every=100,
        seeds=2,
        eval_episodes=8,
        multitask_dqn_steps=20_000,
        online_teacher_steps=20_000,
        online_rounds=3,
    ),
    "quick": Budget(
        name="quick",
        games=MINATAR_GAMES,
        teacher_steps=1_000_000,
        dataset_states=32_768,
        # a fixed count, so that `make demo` and the notebooks' default stay about ten minutes;
        # students are not converged at it (see the README): `--plateau-blocks 5 --updates
        # 30000 --dataset-states 131072 --eval-every 1000` trains them to their plateau
        updates=1_000,
        eval_every=500,
        seeds=3,
        eval_episodes=50,
        multitask_dqn_steps=200_000,
        online_teacher_steps=150_000,
        online_rounds=8,
    ),
    "full": Budget(
        name="full",
        games=MINATAR_FIVE,
        teacher_steps=1_000_000,
        dataset_states=262_144,
        updates=60_000,
        eval_every=2_000,
        seeds=5,
        eval_episodes=100,
        multitask_dqn_steps=None,
        online_teacher_steps=1_000_000,
        online_rounds=40,
        plateau_blocks=5,
        plateau_delta=0.001,
        fixed_updates=10_000,
        multitask_dqn_seeds=3,  # an interval over runs for the distilled-vs-DQN claim
        online_seeds=3,  # and for the online student's stability
    ),
}

# Atari budgets: smoke (Pong, a tiny teacher trained by the budget itself) runs on a CPU in the
# tests; quick and full run three of the paper's games, ATARI_GAMES, from the shipped teachers
# (refused without them: `check_teachers`): compression, the loss comparison and a three-game
# multi-task student (`distill.multitask_atari`; no multi-task DQN on Atari, sized for a GPU).
# Quick is sized for one long background run on a 2-core CPU: 3 seeds, the fewest for which a
# claim can be judged (claims.MIN_RUNS), and 30 paired episodes, the paper's protocol's count
# (measured at three games: teachers 209 s, multi-task 6,568 s at 10,000 updates a game,
# compression 8,100 s, losses 9,950 s); full is sized for a GPU.
ATARI_GAMES = ("ALE/Pong-v5", "ALE/Breakout-v5", "ALE/SpaceInvaders-v5")
ATARI_BUDGETS = {
    "smoke": Budget(
        name="smoke",
        games=("ALE/Pong-v5",),
        teacher_steps=2_000,
        dataset_states=512,
        updates=40,
        eval_every=20,
        seeds=1,
        eval_episodes=1,
        multitask_dqn_steps=None,
        online_teacher_steps=0,
        online_rounds=0,
    ),
    "quick": Budget(
        name="quick",
        games=ATARI_GAMES,
        teacher_steps=2_000_000,
        dataset_states=100_000,
        updates=10_000,
        eval_every=5_000,
        seeds=3,
        eval_episodes=30,
        multitask_dqn_steps=None,
        online_teacher_steps=0,
        online_rounds=0,
        # the multi-task student trains 20,000 updates per game (60,000 in all): from 10,000
        # to 20,000 the KL students went from 94.1 to 97.9 % of the teachers (NLL: 86.9 to
        # 84.3), still learning (data/results/atari-quick3/); a run of 10,000 in OUT is
        # continued, not trained again (`multitask_atari.shorter_run`)
        fixed_updates=20_000,
    ),
    "full": Budget(
        name="full",
        games=ATARI_GAMES,
        teacher_steps=2_000_000,
        dataset_states=500_000,
        updates=100_000,
        eval_every=10_000,
        seeds=3,
        eval_episodes=30,
        multitask_dqn_steps=None,
        online_teacher_steps=0,
        online_rounds=0,
    ),
}

# `distill reproduce --suite S --budget B` runs SUITES[S][B]
SUITES = {"minatar": BUDGETS, "atari": ATARI_BUDGETS}


def student_config(b: Budget, **fields) -> student.StudentConfig:
    """An experiment's StudentConfig at the budget: its updates (the cap under the plateau
    rule), evaluation blocks, episodes and rule, with `fields` (loss, tau, net) on top."""
    return student.StudentConfig(
        updates=b.updates,
        eval_every=b.eval_every,
        eval_episodes=b.eval_episodes,
        plateau_blocks=b.plateau_blocks,
        plateau_delta=b.plateau_delta,
        **fields,
    )


def budget(name: str, **overrides) -> Budget:
    """The MinAtar budget `name` (smoke, quick or full), with `overrides` of its fields."""
    if name not in BUDGETS:
        raise ValueError(f"budget={name!r}: choose one of {list(BUDGETS)}")
    return dataclasses.replace(BUDGETS[name], **overrides)


# ---------------------------------------------------------------------------- ingredients


def trains_teachers(game: str, b: Budget) -> bool:
    """Whether an experiment trains a missing teacher of `game` itself: small MinAtar ones
    (minutes), Atari ones at the smoke budget only (2,000 steps, for tests). The others take
    hours (large MinAtar) or days (Atari), jobs for `distill teacher` in the background."""
    return b.teachers == "small" and (families.owner(game).in_graph or b.name == "smoke")


def missing_teachers(games, b: Budget) -> list[str]:
    """The games without a shipped teacher of the budget's size that the budget does not train
    itself (`trains_teachers`)."""
    return [
        g
        for g in games
        if not trains_teachers(g, b)
        and not (paths.shipped_teacher(g, b.teachers) / checkpoint.MANIFEST).exists()
    ]


def teacher_command(game: str, b: Budget) -> str:
    """The `distill teacher` command that trains the budget's teacher of `game` (then shipped
    with `distill export`, data/teachers/README.md)."""
    name = envs.spec(game).safe_name + ("" if b.teachers == "small" else f"-{b.teachers}")
    net = "" if b.teachers == "small" else f" --net {net_of(b, 'teacher')}"
    return f"distill teacher --env {game}{net} --seed 0 --out runs/teachers/{name}"


def check_teachers(games, b: Budget) -> None:
    """Refuse (ConfigError, one line) teachers that are not shipped and that the budget does not
    train (`trains_teachers`), before any work, naming each game and the command that trains it."""
    from distill.config import ConfigError

    missing = missing_teachers(games, b)
    if missing:
        size = "" if b.teachers == "small" else f"{b.teachers} "
        where = ", ".join(paths.shown(paths.shipped_teacher(g, b.teachers)) for g in missing)
        train = "; ".join(f"`{teacher_command(g, b)}`" for g in missing)
        other = "--budget smoke (tiny teachers)" if b.teachers == "small" else "--teachers small"
        it = "it" if len(missing) == 1 else "each"
        raise ConfigError(
            f"no {size}teacher shipped for {', '.join(missing)} ({where}): train {it} with "
            f"{train} and ship {it} (data/teachers/README.md), or leave the game out with "
            f"--games, or use {other}"
        )


def ensure_teacher(
    env_id: str, b: Budget, runs_dir: Path, progress: bool = True
) -> checkpoint.Policy:
    """The shipped teacher of the budget's size for env_id; without one, a small teacher is
    trained (and cached) at the budget's steps where the budget trains it (`trains_teachers`),
    and refused otherwise (`check_teachers`)."""
    shipped = paths.shipped_teacher(env_id, b.teachers)
    if (shipped / checkpoint.MANIFEST).exists():
        return checkpoint.load(shipped, env_id=env_id)
    check_teachers((env_id,), b)
    out = runs_dir / "teachers" / f"{envs.spec(env_id).safe_name}_{b.teacher_steps}"
    if not families.of(env_id).in_graph:
        preset = teacher.default_config(env_id)
        config = teacher.default_config(
            env_id,
            total_steps=b.teacher_steps,
            buffer_size=min(preset.buffer_size, max(b.teacher_steps, 1_000)),
            learning_starts=min(preset.learning_starts, b.teacher_steps // 2),
        )
        return teacher.fit_atari(
            config, str(out), resume=True, progress=progress, eval_episodes=b.eval_episodes
        )
    config = teacher.default_config(env_id, total_steps=b.teacher_steps)
    return teacher.fit(config, str(out), resume=True, progress=progress)


def ensure_dataset(
    policy: checkpoint.Policy, b: Budget, runs_dir: Path, progress: bool = True
) -> dataset.Dataset:
    """The teacher's dataset at the budget's size, generated once and reused."""
    config = dataset.DatasetConfig(states=b.dataset_states, num_envs=64, seed=0)
    out = dataset_folder(policy, b, runs_dir)
    dataset.generate(policy.path, config, str(out), resume=True, progress=progress)
    return dataset.load_dataset(str(out), env_id=policy.env_id)


def dataset_folder(policy: checkpoint.Policy, b: Budget, runs_dir: Path) -> Path:
    """Where `ensure_dataset` keeps the teacher's dataset at the budget's size."""
    sha = policy.manifest["files"][checkpoint.PARAMS][:10]
    # "_staggered": datasets from before staggered starts (all envs from reset) are not reused
    name = f"{envs.spec(policy.env_id).safe_name}_{sha}_{b.dataset_states}_staggered"
    return runs_dir / "datasets" / name


# Results already computed in this process, so that the stages of `distill reproduce` (and the
# cells of a notebook) share them instead of recomputing: the same students and the same
# reference evaluations appear in the loss comparison, the compression sweep and the report.
_MEMO: dict[tuple, object] = {}


def paired_reference(policy: checkpoint.Policy, b: Budget) -> dict:
    """The teacher's and the random policy's per-episode scores on the budget's paired episodes
    (`paired`: the same episodes every student is scored on): `{"eval_seed",
    "teacher_episode_scores", "random_episode_scores"}`, lists of `b.eval_episodes` floats."""
    key = ("reference", policy.manifest["files"][checkpoint.PARAMS], b.eval_episodes)
    if key not in _MEMO:
        _MEMO[key] = {
            "eval_seed": paired.EVAL_SEED,
            "teacher_episode_scores": paired.teacher_scores(policy, b.eval_episodes).tolist(),
            "random_episode_scores": paired.random_scores(policy.env_id, b.eval_episodes).tolist(),
        }
    return _MEMO[key]


def reference_scores(policy: checkpoint.Policy, b: Budget) -> tuple[float, float]:
    """(teacher, random) mean scores under the evaluation protocol, on the paired episodes."""
    ref = paired_reference(policy, b)
    return (
        float(np.mean(ref["teacher_episode_scores"])),
        float(np.mean(ref["random_episode_scores"])),
    )


def prepare_games(games, b: Budget, runs_dir: Path, progress: bool = True) -> None:
    """Across several hosts, each process makes its share of the teachers and datasets (games
    p, p + P, ...) and then waits for the others; with `runs_dir` on a shared file system every
    one is made once. Nothing on a single host (each is made when first needed). Either way a
    missing large teacher is refused first (`check_teachers`)."""
    check_teachers(games, b)
    if jax.process_count() == 1:
        return
    for env_id in sharding.process_share(tuple(games)):
        ensure_dataset(ensure_teacher(env_id, b, runs_dir, progress), b, runs_dir, progress)
    sharding.barrier("distill-prepare-games")


def game_inputs(
    env_id: str, b: Budget, runs_dir: Path, progress: bool = True
) -> tuple[checkpoint.Policy, dataset.Dataset, dict]:
    """A game's `(teacher policy, its dataset, reference row)`; the row is
    `{"game", "teacher_score", "random_score"}` on the paired episodes (as the results'
    "teachers" list holds it), their per-episode scores, the evaluation seed, and the teacher's
    high-precision score (`paired.teacher_reference`, cached with the teacher): its
    "reference_episodes", "reference_score" and "reference_se"."""
    policy = ensure_teacher(env_id, b, runs_dir, progress)
    data = ensure_dataset(policy, b, runs_dir, progress)
    t_score, r_score = reference_scores(policy, b)
    reference = paired.teacher_reference(policy, runs_dir)
    return (
        policy,
        data,
        {
            "game": env_id,
            "teacher_score": t_score,
            "random_score": r_score,
            **paired_reference(policy, b),
            **paired.reference_columns(reference),
        },
    )
