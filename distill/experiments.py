"""The paper's experiments as functions that return tidy results (a list of flat dicts).

Each experiment takes a `Budget` (how many states, updates, seeds, episodes) so the same code runs
as a smoke test, a quick look or a full reproduction. Seeds run side by side under `jax.vmap`, in
one compiled call per (game, loss, network). Every experiment takes an optional device mesh
(`distill.sharding`): its `seeds` axis splits the seeds across devices, its `data` axis each
student's minibatches; across hosts (`jax.distributed`) each process also makes its share of the
teachers and datasets first.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from distill import checkpoint, dataset, envs, evaluate, paths, sharding, student, teacher, xla
from distill.config import to_dict


@dataclasses.dataclass(frozen=True)
class Budget:
    """How much compute an experiment spends."""

    name: str
    games: tuple[str, ...]
    teacher_steps: int  # for teachers that have to be trained (none shipped)
    dataset_states: int
    updates: int
    eval_every: int
    seeds: int
    eval_episodes: int
    multitask_dqn_steps: int | None  # None: as many as the single-game teachers used together
    online_teacher_steps: int
    online_rounds: int


MINATAR_GAMES = ("Breakout-MinAtar", "SpaceInvaders-MinAtar", "Asterix-MinAtar", "Freeway-MinAtar")

BUDGETS = {
    "smoke": Budget(
        "smoke", ("Breakout-MinAtar",), 50_000, 4_096, 200, 100, 2, 8, 20_000, 20_000, 3
    ),
    "quick": Budget(
        "quick", MINATAR_GAMES, 1_000_000, 32_768, 1_000, 500, 2, 24, 200_000, 150_000, 8
    ),
    "full": Budget(
        "full", MINATAR_GAMES, 1_000_000, 262_144, 10_000, 2_000, 3, 50, None, 1_000_000, 40
    ),
}


def budget(name: str) -> Budget:
    if name not in BUDGETS:
        raise ValueError(f"budget={name!r}: choose one of {list(BUDGETS)}")
    return BUDGETS[name]


# ---------------------------------------------------------------------------- ingredients


def ensure_teacher(env_id: str, b: Budget, runs_dir: Path, progress: bool = True):
    """The shipped teacher for env_id, or one trained (and cached) at the budget's steps."""
    shipped = paths.shipped_teacher(env_id)
    if (shipped / checkpoint.MANIFEST).exists():
        return checkpoint.load(shipped, env_id=env_id)
    out = runs_dir / "teachers" / f"{envs.spec(env_id).safe_name}_{b.teacher_steps}"
    if envs.spec(env_id).is_atari:
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


def ensure_dataset(policy, b: Budget, runs_dir: Path, progress: bool = True) -> dataset.Dataset:
    """The teacher's dataset at the budget's size, generated once and reused."""
    sha = policy.manifest["files"][checkpoint.PARAMS][:10]
    out = runs_dir / "datasets" / f"{envs.spec(policy.env_id).safe_name}_{sha}_{b.dataset_states}"
    config = dataset.DatasetConfig(states=b.dataset_states, num_envs=64, seed=0)
    dataset.generate(policy.path, config, str(out), resume=True, progress=progress)
    return dataset.load_dataset(str(out), env_id=policy.env_id)


# Results already computed in this process, so that the stages of `distill reproduce` (and the
# cells of a notebook) share them instead of recomputing: the same students and the same
# reference evaluations appear in the loss comparison, the compression sweep and the report.
_MEMO: dict[tuple, object] = {}


def reference_scores(policy, b: Budget) -> tuple[float, float]:
    """(teacher, random) mean scores under the evaluation protocol, same episodes and seed."""
    key = ("reference", policy.manifest["files"][checkpoint.PARAMS], b.eval_episodes)
    if key not in _MEMO:
        t = evaluate.evaluate_policy(policy, b.eval_episodes, seed=10_000).mean
        r = evaluate.evaluate_random(policy.env_id, b.eval_episodes, seed=10_000).mean
        _MEMO[key] = (t, r)
    return _MEMO[key]


def prepare_games(games, b: Budget, runs_dir: Path, progress: bool = True) -> None:
    """Across several hosts, each process makes its share of the teachers and datasets (games
    p, p + P, ...) and then waits for the others; with `runs_dir` on a shared file system every
    one is made once. Nothing on a single host (each is made when first needed)."""
    if jax.process_count() == 1:
        return
    for env_id in sharding.process_share(tuple(games)):
        ensure_dataset(ensure_teacher(env_id, b, runs_dir, progress), b, runs_dir, progress)
    sharding.barrier("distill-prepare-games")


def distil_seeds(
    config: student.StudentConfig,
    data: dataset.Dataset,
    seeds: int,
    mesh: jax.sharding.Mesh | None = None,
    cache: str | Path | None = None,
):
    """Train `seeds` students side by side (jax.vmap); returns final params and metrics.

    Metrics are `[seeds, blocks]` numpy arrays (loss, agreement, in-env score after each block).
    With a `mesh` the seeds are split over its `seeds` axis (per seed bit-identical to the
    single-device run) and each student's minibatches over its `data` axis
    (`sharding.map_seeds`); the final state stays split over `seeds`.

    With a `cache` folder the finished students are stored there under a name derived from the
    config, the dataset's checksums and `seeds`, and a later call with the same three reads them
    back instead of training: a long experiment interrupted between students loses none.

    Atari envs live on the host and Atari-size convolutions train fastest one update per
    compiled call on CPU, so there each seed is a `student.fit` run (seed `config.seed + s`,
    evaluated in the env after every block) in `cache` (or a temporary folder), which also
    resumes a student interrupted half-way.
    """
    memo_key = (
        "distil",
        config,
        data.path,
        tuple(sorted(data.manifest["files"].items())),
        seeds,
        mesh,
    )
    if memo_key in _MEMO:
        return _MEMO[memo_key]
    if envs.spec(data.env_id).is_atari:
        # one folder per seed inside: a run with more seeds reuses the ones it has
        folder = Path(cache) / student_folder_name(config, data) if cache else None
        result = _distil_host_seeds(config, data, seeds, mesh, folder)
    else:
        folder = Path(cache) / student_folder_name(config, data, seeds) if cache else None
        if folder is not None and (folder / checkpoint.MANIFEST).exists():
            result = _read_students(folder, config, data, seeds)
        else:
            result = _distil_in_graph_seeds(config, data, seeds, mesh)
            if folder is not None:
                _write_students(folder, config, data, seeds, result)
    _MEMO[memo_key] = result
    return result


def _distil_in_graph_seeds(config, data, seeds, mesh):
    distiller = student.make_distill(config, data.env_id, data.stack, mesh=mesh)
    keys = jax.random.split(jax.random.PRNGKey(config.seed), seeds)

    def one(key, arrays, tau):
        state = distiller.init(key)
        return distiller.run(state, arrays, tau, config.blocks, data.first_row, True)

    run = sharding.map_seeds(one, mesh)
    state, metrics = run(keys, data.arrays(), jnp.float32(config.tau))
    return distiller, state, sharding.to_host(metrics)


def _distil_host_seeds(config, data, seeds, mesh, folder):
    """One `student.fit` per seed (in `folder`, resumable), stacked like the in-graph path."""
    import tempfile

    with tempfile.TemporaryDirectory() as scratch:
        root = folder if folder is not None else Path(scratch)
        policies = [
            student.fit(
                dataclasses.replace(config, seed=config.seed + s),
                data.path,
                str(root / f"seed_{s}"),
                resume=True,
                progress=False,
                data=data,
                mesh=mesh,
            )
            for s in range(seeds)
        ]
    rows = [p.manifest["metrics"] for p in policies]
    metrics = student.BlockMetrics(
        *(
            np.array([[r[k] for r in rs] for rs in rows], np.float32)
            for k in student.BlockMetrics._fields
        )
    )
    params = jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), *(p.params for p in policies))
    state = student.StudentState(params, None, None, jnp.full((seeds,), config.updates))
    return _distiller(config, data), state, metrics


def student_folder_name(
    config: student.StudentConfig, data: dataset.Dataset, seeds: int | None = None
) -> str:
    """`<game>_<net>_<loss>_<hash>`: the hash covers the whole config, the dataset and seeds
    (students trained side by side depend on how many there are; `None` for a folder of
    independent per-seed runs)."""
    key = json.dumps(
        {
            "config": dataclasses.asdict(config),
            "dataset": sorted(data.manifest["files"].items()),
            "seeds": seeds,
        },
        sort_keys=True,
    )
    digest = hashlib.sha256(key.encode()).hexdigest()[:12]
    return f"{envs.spec(data.env_id).safe_name}_{config.net}_{config.loss}_{digest}"


def _write_students(folder: Path, config, data, seeds, result) -> None:
    _, state, metrics = result
    checkpoint.write_checkpoint(
        folder,
        {checkpoint.TRAIN_STATE: checkpoint.pytree_to_bytes(sharding.to_host(state))},
        {
            "kind": "students",
            "env_id": data.env_id,
            "config": dataclasses.asdict(config),
            "dataset": student.dataset_fingerprint(data),
            "seeds": seeds,
            "metrics": {k: np.asarray(v).tolist() for k, v in metrics._asdict().items()},
        },
    )


def _read_students(folder: Path, config, data, seeds):
    """Students `_write_students` stored; anything that does not match is refused by name."""
    manifest = checkpoint.read_manifest(folder)
    if (
        manifest.get("config") != dataclasses.asdict(config)
        or manifest.get("seeds") != seeds
        or not dataset.same_source(manifest.get("dataset"), student.dataset_fingerprint(data))
    ):
        raise checkpoint.CheckpointError(
            f"{folder / checkpoint.MANIFEST}: holds students of another config, dataset or "
            "number of seeds"
        )
    distiller = _distiller(config, data)
    keys = jax.random.split(jax.random.PRNGKey(config.seed), seeds)
    template = jax.eval_shape(jax.vmap(distiller.init), keys)
    raw = checkpoint.read_verified(folder, checkpoint.TRAIN_STATE, manifest)
    state = checkpoint.pytree_from_bytes(
        raw, template, str(checkpoint.path_of(folder, checkpoint.TRAIN_STATE, manifest))
    )
    metrics = student.BlockMetrics(
        *(np.array(manifest["metrics"][k], np.float32) for k in student.BlockMetrics._fields)
    )
    return distiller, state, metrics


def _distiller(config, data):
    return student.make_distill(config, data.env_id, data.stack)


def distil_tau_sweep(
    config: student.StudentConfig,
    data: dataset.Dataset,
    seeds: int,
    taus,
    mesh: jax.sharding.Mesh | None = None,
):
    """Students for every (tau, seed) pair side by side in one compiled call: `(state, metrics)`
    with a leading `[taus, seeds]` pair of axes.

    The pairs share one leading axis, split over the mesh's `seeds` axis. Seed s starts from the
    same key for every tau, so row t holds the students `distil_seeds` trains with
    `tau=taus[t]` (to float rounding: here tau is a vmapped value, there a scalar). Sweeps over
    network size change shapes: run one call per size (as `compression` does).
    """
    taus = np.asarray(taus, np.float32)
    distiller = student.make_distill(config, data.env_id, data.stack, mesh=mesh)
    keys = jax.random.split(jax.random.PRNGKey(config.seed), seeds)
    in_graph = not envs.spec(data.env_id).is_atari
    pairs = (jnp.tile(keys, (len(taus), 1)), jnp.repeat(jnp.asarray(taus), seeds))

    def one(pair, arrays):
        key, tau = pair
        return distiller.run(
            distiller.init(key), arrays, tau, config.blocks, data.first_row, in_graph
        )

    state, metrics = sharding.map_seeds(one, mesh)(pairs, data.arrays())
    unflatten = lambda x: x.reshape(len(taus), seeds, *x.shape[1:])  # noqa: E731
    return state, jax.tree_util.tree_map(unflatten, sharding.to_host(metrics))


def percent_of_teacher(score: float, teacher_score: float) -> float:
    return 100.0 * score / teacher_score if teacher_score else float("nan")


def random_normalised(score: float, teacher_score: float, random_score: float) -> float:
    gap = teacher_score - random_score
    return (score - random_score) / gap if gap else float("nan")


def geometric_mean(values) -> float:
    v = np.asarray(list(values), dtype=float)
    if v.size == 0 or (v <= 0).any() or not np.isfinite(v).all():
        return float("nan")
    return float(math.exp(np.mean(np.log(v))))


# ---------------------------------------------------------------------------- experiments


def loss_comparison(
    b: Budget,
    losses: tuple[str, ...] = ("nll", "mse", "kl"),
    tau: float = 0.01,
    net: str = "teacher",
    runs_dir: Path | None = None,
    progress: bool = True,
    mesh: jax.sharding.Mesh | None = None,
) -> dict:
    """Same-size students with each loss on each game (Rusu et al. 2016, section 5.1).

    Returns {"rows": per (game, loss, seed) results, "curves": per (game, loss) learning curves,
    "teachers": per game teacher and random scores}.
    """
    runs_dir = Path(runs_dir or paths.runs_dir())
    prepare_games(b.games, b, runs_dir, progress)
    rows, curves, teachers = [], [], []
    for env_id in b.games:
        policy = ensure_teacher(env_id, b, runs_dir, progress)
        data = ensure_dataset(policy, b, runs_dir, progress)
        t_score, r_score = reference_scores(policy, b)
        teachers.append({"game": env_id, "teacher_score": t_score, "random_score": r_score})
        for loss in losses:
            config = student.StudentConfig(
                loss=loss,
                tau=tau,
                net=net,
                updates=b.updates,
                eval_every=b.eval_every,
                eval_episodes=b.eval_episodes,
            )
            _, _, m = distil_seeds(config, data, b.seeds, mesh, runs_dir / "students")
            for seed in range(b.seeds):
                score = float(m.score[seed, -1])
                rows.append(
                    {
                        "game": env_id,
                        "loss": loss,
                        "net": net,
                        "seed": seed,
                        "score": score,
                        "teacher_score": t_score,
                        "random_score": r_score,
                        "percent_of_teacher": percent_of_teacher(score, t_score),
                        "random_normalised": random_normalised(score, t_score, r_score),
                        "agreement": float(m.agreement[seed, -1]),
                    }
                )
            curves.append(
                {
                    "game": env_id,
                    "loss": loss,
                    "updates": [(i + 1) * b.eval_every for i in range(config.blocks)],
                    "score_mean": m.score.mean(axis=0).tolist(),
                    "score_std": m.score.std(axis=0).tolist(),
                }
            )
    return {"rows": rows, "curves": curves, "teachers": teachers, "budget": dataclasses.asdict(b)}


def summarise(rows: list[dict], by: tuple[str, ...]) -> list[dict]:
    """Mean and std over seeds of % of teacher and random-normalised score, grouped by `by`."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault(tuple(r[k] for k in by), []).append(r)
    out = []
    for key, rs in groups.items():
        pct = np.array([r["percent_of_teacher"] for r in rs])
        norm = np.array([r["random_normalised"] for r in rs])
        out.append(
            {
                **dict(zip(by, key, strict=True)),
                "seeds": len(rs),
                "score_mean": float(np.mean([r["score"] for r in rs])),
                "percent_mean": float(np.mean(pct)),
                "percent_std": float(np.std(pct)),
                "normalised_mean": float(np.mean(norm)),
                "normalised_std": float(np.std(norm)),
            }
        )
    return out


def summary_columns(by: tuple[str, ...]) -> list[str]:
    """The columns of a `summarise` table, in reading order."""
    stats = ("score_mean", "percent_mean", "percent_std", "normalised_mean", "normalised_std")
    return [*by, "seeds", *stats]


# ---------------------------------------------------------------------------- outputs


def loss_comparison_figure(result: dict):
    """Learning curves per loss, one panel per game, teacher and random scores marked."""
    import matplotlib.pyplot as plt

    from distill import plotting

    games = [t["game"] for t in result["teachers"]]
    fig, axes = plt.subplots(1, len(games), figsize=(4.2 * len(games), 3.3), squeeze=False)
    for ax, t in zip(axes[0], result["teachers"], strict=True):
        curves = [c for c in result["curves"] if c["game"] == t["game"]]
        plotting.score_curves(curves, key="loss", ax=ax, title=t["game"])
        plotting.reference_line(ax, t["teacher_score"], "teacher", "black")
        plotting.reference_line(ax, t["random_score"], "random", "grey")
    fig.tight_layout()
    return fig


def write_loss_comparison(result: dict, out: str | Path) -> Path:
    """results JSON, a markdown table and the figure, into folder `out`."""
    from distill import report
    from distill.checkpoint import atomic_write_json, atomic_write_text

    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    summary = summarise(result["rows"], ("game", "loss"))
    atomic_write_json(folder / "loss_comparison.json", {**result, "summary": summary})
    atomic_write_text(
        folder / "loss_comparison.md",
        report.markdown_table(summary, summary_columns(("game", "loss"))) + "\n",
    )
    fig = loss_comparison_figure(result)
    fig.savefig(folder / "loss_comparison.png", dpi=120)
    return folder


# ---------------------------------------------------------------------------- compression

# Rusu et al. (2016), Table 2: geometric mean over 10 games of KL students, % of the teacher.
PAPER_COMPRESSION = {"teacher": None, "net1": 108.3, "net2": 101.7, "net3": 83.9}


def compression(
    b: Budget,
    nets: tuple[str, ...] = ("teacher", "net1", "net2", "net3"),
    tau: float = 0.01,
    runs_dir: Path | None = None,
    progress: bool = True,
    mesh: jax.sharding.Mesh | None = None,
) -> dict:
    """KL students of every size on every game (Rusu et al. 2016, section 5.2).

    Returns {"rows": per (game, net, seed), "geomean": per (net, seed) geometric mean of % of
    teacher across games, "summary": per net mean and std of that geometric mean over seeds}.
    """
    from distill import networks

    runs_dir = Path(runs_dir or paths.runs_dir())
    prepare_games(b.games, b, runs_dir, progress)
    rows, teachers = [], []
    for env_id in b.games:
        policy = ensure_teacher(env_id, b, runs_dir, progress)
        data = ensure_dataset(policy, b, runs_dir, progress)
        t_score, r_score = reference_scores(policy, b)
        teachers.append({"game": env_id, "teacher_score": t_score, "random_score": r_score})
        spec = envs.spec(env_id)
        teacher_params = networks.param_count("teacher", spec.obs_shape, spec.num_actions)
        for net in nets:
            config = student.StudentConfig(
                loss="kl",
                tau=tau,
                net=net,
                updates=b.updates,
                eval_every=b.eval_every,
                eval_episodes=b.eval_episodes,
            )
            _, _, m = distil_seeds(config, data, b.seeds, mesh, runs_dir / "students")
            n_params = networks.param_count(net, spec.obs_shape, spec.num_actions)
            for seed in range(b.seeds):
                score = float(m.score[seed, -1])
                rows.append(
                    {
                        "game": env_id,
                        "net": net,
                        "params": n_params,
                        "params_percent": 100.0 * n_params / teacher_params,
                        "seed": seed,
                        "score": score,
                        "teacher_score": t_score,
                        "random_score": r_score,
                        "percent_of_teacher": percent_of_teacher(score, t_score),
                        "random_normalised": random_normalised(score, t_score, r_score),
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
                    "geomean_percent": geometric_mean(r["percent_of_teacher"] for r in per_game),
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


def compression_figure(result: dict):
    """Parameters (% of teacher, log axis) against % of teacher score, with the paper's points."""
    import matplotlib.pyplot as plt

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


def write_compression(result: dict, out: str | Path) -> Path:
    from distill import report
    from distill.checkpoint import atomic_write_json, atomic_write_text

    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_json(folder / "compression.json", result)
    atomic_write_text(
        folder / "compression.md",
        report.markdown_table(
            result["summary"],
            [
                "net",
                "params_percent",
                "geomean_percent_mean",
                "geomean_percent_std",
                "normalised_mean",
                "normalised_std",
                "paper_percent",
            ],
        )
        + "\n",
    )
    compression_figure(result).savefig(folder / "compression.png", dpi=120)
    return folder


# ---------------------------------------------------------------------------- multi-task

# Rusu et al. (2016), 3-game multi-task results, geometric mean of % of single-game teachers.
PAPER_MULTITASK = {"multi-dqn": 83.5, "distilled-nll": 105.1, "distilled-kl": 116.9}


def distil_multitask_seeds(
    config: student.StudentConfig,
    games,
    datas: tuple,
    seeds: int,
    mesh: jax.sharding.Mesh | None = None,
):
    """`seeds` multi-task students side by side; metrics `[seeds, blocks, ...]`. With a `mesh`
    the seeds are split over its `seeds` axis and the minibatches over `data`."""
    from distill import multitask as mt

    _, init, run = mt.make_multitask_distill(config, games, mesh)
    keys = jax.random.split(jax.random.PRNGKey(config.seed), seeds)
    blocks = config.blocks

    def one(key, d, tau):
        return run(init(key), d, tau, blocks)[1]

    return sharding.map_seeds(one, mesh)(keys, datas, jnp.float32(config.tau))


def multitask(
    b: Budget,
    tau: float = 0.01,
    runs_dir: Path | None = None,
    progress: bool = True,
    mesh: jax.sharding.Mesh | None = None,
) -> dict:
    """One multi-task student distilled from every game's teacher (NLL and KL), against a
    multi-task DQN with the same architecture trained on all games jointly."""
    from distill import multitask as mt

    runs_dir = Path(runs_dir or paths.runs_dir())
    games = tuple(b.games)
    prepare_games(games, b, runs_dir, progress)
    teachers, datas, teacher_steps = [], [], 0
    for env_id in games:
        policy = ensure_teacher(env_id, b, runs_dir, progress)
        data = ensure_dataset(policy, b, runs_dir, progress)
        t_score, r_score = reference_scores(policy, b)
        teachers.append({"game": env_id, "teacher_score": t_score, "random_score": r_score})
        datas.append(data.arrays())
        teacher_steps += int(policy.manifest.get("env_steps", b.teacher_steps))
    rows = []

    def add_rows(method: str, scores: np.ndarray) -> None:  # scores [seeds, games]
        for seed in range(scores.shape[0]):
            for k, t in enumerate(teachers):
                score = float(scores[seed, k])
                rows.append(
                    {
                        "method": method,
                        "game": t["game"],
                        "seed": seed,
                        "score": score,
                        "teacher_score": t["teacher_score"],
                        "random_score": t["random_score"],
                        "percent_of_teacher": percent_of_teacher(score, t["teacher_score"]),
                        "random_normalised": random_normalised(
                            score, t["teacher_score"], t["random_score"]
                        ),
                    }
                )

    for loss in ("nll", "kl"):
        config = student.StudentConfig(
            loss=loss,
            tau=tau,
            updates=b.updates * len(games),
            eval_every=b.eval_every * len(games),
            eval_episodes=b.eval_episodes,
        )
        m = distil_multitask_seeds(config, games, tuple(datas), b.seeds, mesh)
        add_rows(f"distilled-{loss}", sharding.to_host(m.score)[:, -1, :])
    dqn_steps = b.multitask_dqn_steps or teacher_steps
    dqn_config = teacher.default_config(games[0], total_steps=dqn_steps)
    dqn_mesh = sharding.for_one_run(mesh)  # one run: only a `data` axis splits it
    network, init, run, iterations = mt.make_multitask_train(dqn_config, games, dqn_mesh)
    key = sharding.replicate(jax.random.PRNGKey(0), dqn_mesh)
    identity = {"config": to_dict(dqn_config), "games": list(games), "mesh": str(dqn_mesh)}
    digest = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:12]
    state = mt.train_in_chunks(
        run,
        xla.jit(init)(key),
        iterations,
        games,
        progress=progress,
        folder=runs_dir / f"multitask-dqn_{digest}",
        identity=identity,
        mesh=dqn_mesh,
    )
    params = sharding.to_host(state.params)
    scores = mt.evaluate_heads(network, params, games, b.eval_episodes, seed=10_000)
    add_rows("multi-dqn", np.array([[s.mean for s in scores]]))
    summary = []
    for method in ("multi-dqn", "distilled-nll", "distilled-kl"):
        seeds = sorted({r["seed"] for r in rows if r["method"] == method})
        geo = [
            geometric_mean(
                r["percent_of_teacher"] for r in rows if r["method"] == method and r["seed"] == s
            )
            for s in seeds
        ]
        summary.append(
            {
                "method": method,
                "seeds": len(seeds),
                "geomean_percent_mean": float(np.mean(geo)),
                "geomean_percent_std": float(np.std(geo)),
                "paper_percent_3_games": PAPER_MULTITASK[method],
            }
        )
    return {
        "rows": rows,
        "summary": summary,
        "teachers": teachers,
        "multitask_dqn_steps": dqn_steps,
        "channels_padded_to": mt.padded_channels(games),
        "budget": dataclasses.asdict(b),
    }


def multitask_table(result: dict) -> list[dict]:
    """Per game: mean % of teacher for each method, then the geometric-mean row."""
    out = []
    methods = ("multi-dqn", "distilled-nll", "distilled-kl")
    for t in result["teachers"]:
        row = {"game": t["game"]}
        for m in methods:
            vals = [
                r["percent_of_teacher"]
                for r in result["rows"]
                if r["method"] == m and r["game"] == t["game"]
            ]
            row[m] = float(np.mean(vals))
        out.append(row)
    geo = {s["method"]: s["geomean_percent_mean"] for s in result["summary"]}
    out.append({"game": "geometric mean", **geo})
    out.append({"game": "paper (3 Atari games)", **PAPER_MULTITASK})
    return out


def write_multitask(result: dict, out: str | Path) -> Path:
    from distill import report
    from distill.checkpoint import atomic_write_json, atomic_write_text

    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_json(folder / "multitask.json", result)
    atomic_write_text(
        folder / "multitask.md", report.markdown_table(multitask_table(result)) + "\n"
    )
    multitask_figure(result).savefig(folder / "multitask.png", dpi=120)
    return folder


def multitask_figure(result: dict):
    import matplotlib.pyplot as plt

    table = multitask_table(result)[:-1]
    methods = ("multi-dqn", "distilled-nll", "distilled-kl")
    fig, ax = plt.subplots(figsize=(7, 3.5))
    x = np.arange(len(table))
    for i, m in enumerate(methods):
        ax.bar(x + (i - 1) * 0.27, [r[m] for r in table], width=0.27, label=m)
    ax.axhline(100, color="grey", ls="--", lw=1)
    ax.set_xticks(x)
    ax.set_xticklabels([r["game"].replace("-MinAtar", "") for r in table], fontsize=8)
    ax.set_ylabel("% of single-game teacher")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


# ---------------------------------------------------------------------------- online


def online(b: Budget, env_id: str | None = None, progress: bool = True) -> dict:
    """Online distillation on one game: teacher and student evaluated after every round."""
    from distill import online as onl

    env_id = env_id or b.games[0]
    t_config = teacher.default_config(env_id, total_steps=b.online_teacher_steps)
    s_config = student.StudentConfig(loss="kl")
    o_config = onl.OnlineConfig(
        rounds=b.online_rounds,
        updates_per_round=max(b.updates // 10, 100),
        eval_episodes=b.eval_episodes,
    )
    return onl.online_distillation(t_config, s_config, o_config, progress=progress)


def online_figure(result: dict):
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    steps = [r["env_steps"] for r in result["rows"]]
    ax.plot(steps, [r["teacher_score"] for r in result["rows"]], "o-", ms=3, label="teacher")
    ax.plot(steps, [r["student_score"] for r in result["rows"]], "s-", ms=3, label="student")
    ax.set_xlabel("teacher env steps")
    ax.set_ylabel("evaluation score")
    ax.set_title(f"online distillation, {result['env_id']}", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    return fig


def online_table(result: dict) -> list[dict]:
    return [{"policy": who, **result[who]} for who in ("teacher", "student")]


def write_online(result: dict, out: str | Path) -> Path:
    from distill import report
    from distill.checkpoint import atomic_write_json, atomic_write_text

    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_json(folder / "online.json", result)
    atomic_write_text(folder / "online.md", report.markdown_table(online_table(result)) + "\n")
    online_figure(result).savefig(folder / "online.png", dpi=120)
    return folder
