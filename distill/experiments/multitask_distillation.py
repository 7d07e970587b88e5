"""Multi-task distillation (Rusu et al. 2016, section 5.3): one student for every game, with a
shared trunk and one controller head per game, against a multi-task DQN of the same architecture
trained on all games jointly.

On MinAtar the students of every seed train side by side, in chunks of one compiled program
(`multitask_students`: resumable, kept per loss), and the DQN in chunks of one; on Atari each
student trains in a host loop (`distill.multitask_atari`, the paper's 3-game network) and the
multi-task DQN is not run (`DQN_ON_ATARI`)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from distill import (
    claims,
    envs,
    losses,
    multitask_atari,
    networks,
    paths,
    report,
    runs,
    sharding,
    student,
    teacher,
    xla,
)
from distill import multitask as mt
from distill.checkpoint import atomic_write_json, atomic_write_text
from distill.config import ConfigError, to_dict
from distill.experiments import common, multitask_students, paired, regimes
from distill.experiments.registry import Experiment

# Rusu et al. (2016), 3-game multi-task results, geometric mean of % of single-game teachers,
# and its 10-game distilled net (the wide trunk), about 89.3 %: the claims' own numbers
PAPER_MULTITASK = claims.PAPER_MULTITASK
PAPER_MULTITASK_10 = {"distilled-kl": claims.MULTITASK_10.parts[0].value}


def is_wide(result: dict) -> bool:
    """Whether a multi-task result trained the paper's wide (10-game) trunk."""
    return result.get("net") in claims.WIDE_NETS


METHODS = ("multi-dqn", "distilled-nll", "distilled-kl")
# distill's multi-task DQN steps gymnax envs inside one compiled program; an Atari form (ale-py
# on the host, about as many env steps as the three teachers, 3 x 2M) is sized for a GPU
DQN_ON_ATARI = (
    "The multi-task DQN is not run on Atari: sized for a GPU (about as many env steps as the "
    "single-game teachers together), and distill's multi-task DQN steps gymnax envs inside "
    "jax.jit, with no ale-py form yet."
)


def check_budget(b: common.Budget) -> None:
    """Refuse, in one line and before any stage, what the Atari multi-task stage cannot do: a
    number of multi-task DQN steps (`DQN_ON_ATARI`), the stream and dagger regimes (offline
    datasets only) and the wide trunk (MinAtar's 10-game analogue)."""
    if not mt.on_host(b.games):
        return
    if b.multitask_dqn_steps is not None:
        raise ConfigError(
            f"multitask_dqn_steps={b.multitask_dqn_steps}: the multi-task DQN runs on MinAtar "
            "only (on Atari it is sized for a GPU and has no ale-py form yet); pass "
            "--multitask-dqn-steps none"
        )
    if b.regime != "offline":
        raise ConfigError(
            f"regime={b.regime!r}: Atari multi-task students train on the offline datasets "
            "only; pass --regime offline"
        )
    if b.multitask_net != "teacher":
        raise ConfigError(
            f"multitask_net={b.multitask_net!r}: Atari has the paper's 3-game net only (the "
            "teacher's trunk); pass --multitask-net teacher"
        )


def distil_multitask_students(
    config: student.StudentConfig,
    games,
    datas: tuple,
    seeds: int,
    mesh: jax.sharding.Mesh | None = None,
):
    """`seeds` multi-task students side by side: (params with a leading `[seeds]` axis, metrics
    `[seeds, blocks, ...]`). With a `mesh` the seeds are split over its `seeds` axis and the
    minibatches over `data`."""
    _, init, run = mt.make_multitask_distill(config, games, mesh)
    keys = jax.random.split(jax.random.PRNGKey(config.seed), seeds)
    blocks = config.blocks

    def one(key, d, hyper):
        state, metrics = run(init(key), d, hyper, blocks)
        return state.params, metrics

    hyper = jax.tree_util.tree_map(jnp.float32, config.hyper)  # the loss's, e.g. {"tau": 0.01}
    return sharding.map_seeds(one, mesh)(keys, datas, hyper)


def distil_multitask_seeds(
    config: student.StudentConfig,
    games,
    datas: tuple,
    seeds: int,
    mesh: jax.sharding.Mesh | None = None,
):
    """The metrics `[seeds, blocks, ...]` of `distil_multitask_students`."""
    return distil_multitask_students(config, games, datas, seeds, mesh)[1]


def heads_scores(network, params, games: tuple[str, ...], episodes: int) -> np.ndarray:
    """`[seeds, games, episodes]`: head k of each multi-task network (params with a leading
    seeds axis) in game k, on that game's paired episodes."""
    per_game = [
        paired.seeds_episode_scores(
            g, ("head", games, k, str(network)), mt.head_apply(network, games, k), params, episodes
        )
        for k, g in enumerate(games)
    ]
    return np.stack(per_game, axis=1)


def multitask(
    b: common.Budget,
    tau: float = losses.DEFAULT_TAU,
    runs_dir: Path | None = None,
    progress: bool = True,
    mesh: jax.sharding.Mesh | None = None,
    keep_students: bool = False,
) -> dict:
    """One multi-task student distilled from every game's teacher (NLL and KL), against a
    multi-task DQN with the same architecture trained on all games jointly. The trunk is the
    budget's `multitask_net` at its teacher size (`common.net_of`). On Atari the students train
    in host loops (`multitask_atari`; `mesh` unused) and the DQN is not run (`DQN_ON_ATARI`;
    `multitask_dqn_steps` refused there, `check_budget`). With `keep_students` the distilled
    students' parameters come back under "students" ({loss: params with a seeds axis}: arrays,
    for `student_policy`, not for a results.json)."""
    check_budget(b)
    runs_dir = Path(runs_dir or paths.runs_dir())
    games = tuple(b.games)
    atari = mt.on_host(games)
    trunk = common.net_of(b, b.multitask_net)
    common.prepare_games(games, b, runs_dir, progress)
    teachers, sets, teacher_steps, policies = [], [], 0, []
    for env_id in games:
        policy, data, reference = common.game_inputs(env_id, b, runs_dir, progress)
        teachers.append(reference)
        policies.append(policy)
        sets.append(data)
        teacher_steps += int(policy.manifest.get("env_steps", b.teacher_steps))
    rows, kept, training = [], {}, []

    def add_rows(method: str, scores: np.ndarray, learning: dict | None = None) -> None:
        """scores `[seeds, games, episodes]`; learning: {(seed, game): still learning}."""
        for seed in range(scores.shape[0]):
            for k, t in enumerate(teachers):
                flag = (learning or {}).get((seed, t["game"]))
                rows.append(
                    {
                        "method": method,
                        "game": t["game"],
                        "seed": seed,
                        **common.paired_row(scores[seed, k], t),
                        **({} if flag is None else {"still_learning": flag}),
                    }
                )

    for loss in ("nll", "kl"):
        config = student.StudentConfig(
            loss=loss,
            tau=tau,
            net=trunk,
            updates=b.fixed_student_updates * len(games),
            eval_every=b.eval_every * len(games),
            eval_episodes=b.eval_episodes,
        )
        learning = None  # {(seed, game): still learning}, read from the Atari students' curves
        if atari:  # a host loop per seed, cached in OUT/students/ (resumable)
            cache = runs_dir / "students"
            params = multitask_atari.distil_seeds(config, sets, b.seeds, cache, progress)
            curves = multitask_atari.training_rows(config, sets, b.seeds, cache)
            learning = multitask_atari.still_learning(curves, games)
            training += curves
        elif b.regime == "offline":  # side by side, resumable in OUT/students/ (per loss)
            cache = runs_dir / "students"
            params = multitask_students.trained(config, games, sets, b.seeds, cache, mesh, progress)
        else:  # stream or dagger (issue 18): the teachers in the loop, a buffer per game
            params = regimes.multitask_students(config, policies, b, runs_dir, progress)
        network = mt.build(games, config.net)
        scores = heads_scores(network, params, games, b.eval_episodes)
        add_rows(f"distilled-{loss}", scores, learning)
        kept[loss] = params
    dqn_steps = None if atari else b.multitask_dqn_steps or teacher_steps
    if dqn_steps is not None:
        scores = np.stack(
            [
                multitask_dqn_scores(
                    games, dqn_steps, b.eval_episodes, runs_dir, progress, mesh, net=trunk, seed=s
                )
                for s in range(b.multitask_dqn_seeds)
            ]
        )
        add_rows("multi-dqn", scores)
    return {
        "rows": rows,
        "summary": multitask_summary(rows),
        "teachers": teachers,
        "multitask_dqn_steps": dqn_steps,
        "multitask_dqn_seeds": b.multitask_dqn_seeds,
        "channels_padded_to": None if atari else mt.padded_channels(games),
        "net": trunk,
        "layers": network.spec.describe(),
        "params": multitask_params(games, trunk),
        "actions": [envs.spec(g).num_actions for g in games],
        "budget": dataclasses.asdict(b),
        **({"training": training} if training else {}),  # Atari: the students' curves
        **({"students": kept} if keep_students else {}),
    }


def student_policy(result: dict, env_id: str, loss: str = "kl", seed: int = 0):
    """The multi-task student of `multitask(..., keep_students=True)` playing `env_id` through
    its head for that game, as a `checkpoint.Policy` (what `play.watch` takes)."""
    from distill import checkpoint

    games = tuple(t["game"] for t in result["teachers"])
    k = games.index(env_id)
    network = mt.build(games, result["net"])
    one = jax.tree_util.tree_map(lambda x: np.asarray(x)[seed], result["students"][loss])
    manifest = {"kind": f"multi-task {loss.upper()}", "env_id": env_id, "net": result["net"]}
    apply = mt.head_apply(network, games, k)
    num_actions = envs.spec(env_id).num_actions
    return checkpoint.Policy(env_id, result["net"], num_actions, one, manifest, "multi-task", apply)


def multitask_dqn_scores(
    games: tuple[str, ...],
    steps: int,
    eval_episodes: int,
    runs_dir: Path,
    progress: bool = True,
    mesh: jax.sharding.Mesh | None = None,
    net: str = "teacher",
    seed: int = 0,
) -> np.ndarray:
    """The multi-task DQN baseline (trunk `net`, run `seed`) trained for `steps` env steps over
    all games (resumable, in `runs_dir`); its scores on each game's paired episodes,
    `[games, episodes]`."""
    dqn_config = teacher.default_config(games[0], total_steps=steps, net=net)
    dqn_mesh = sharding.for_one_run(mesh)  # one run: only a `data` axis splits it
    network, init, run, iterations = mt.make_multitask_train(dqn_config, games, dqn_mesh)
    key = sharding.replicate(jax.random.PRNGKey(seed), dqn_mesh)
    identity = {"config": to_dict(dqn_config), "games": list(games), "mesh": str(dqn_mesh)}
    if seed:  # seed 0 keeps the identity (and folder) it had before runs had seeds
        identity["seed"] = seed
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
    params = jax.tree_util.tree_map(lambda x: x[None], sharding.to_host(state.params))
    return heads_scores(network, params, games, eval_episodes)[0]


def multitask_params(games: tuple[str, ...], net: str) -> int:
    """Parameters of the multi-task network of trunk `net` for `games` (all heads), from shapes."""
    network = mt.build(games, net)
    shapes = jax.eval_shape(lambda k: mt.init_params(network, k, games), jax.random.PRNGKey(0))
    return networks.count_params(shapes)


def methods_of(rows: list[dict]) -> list[str]:
    """The methods that have rows, in METHODS order (Atari has no multi-task DQN)."""
    return [m for m in METHODS if any(r["method"] == m for r in rows)]


def multitask_summary(rows: list[dict]) -> list[dict]:
    """Per method: mean and std over seeds of the geometric mean across games of % of teacher,
    beside the paper's 3-game figure."""
    summary = []
    for method in methods_of(rows):
        seeds = sorted({r["seed"] for r in rows if r["method"] == method})
        geo = [
            common.geometric_mean(
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
    return summary


def multitask_table(result: dict) -> list[dict]:
    """Per game: mean % of teacher for each method, then the geometric-mean row."""
    out = []
    for t in result["teachers"]:
        row = {"game": t["game"]}
        for m in methods_of(result["rows"]):
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
    if is_wide(result):
        out.append({"game": "paper (10 Atari games, wider net)", **PAPER_MULTITASK_10})
    return out


def write_multitask(result: dict, out: str | Path) -> Path:
    """results JSON, the per-game markdown table and the figure, into folder `out`."""
    from distill import plotting, plotting_curves

    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_json(folder / "multitask.json", result)
    atomic_write_text(
        folder / "multitask.md", report.markdown_table(multitask_table(result)) + "\n"
    )
    paper = PAPER_MULTITASK_10 if is_wide(result) else PAPER_MULTITASK
    plotting.multitask_figure(result, paper).savefig(folder / "multitask.png", dpi=120)
    if result.get("training"):  # Atari: the students' learning curves
        runs.write_metrics(folder, result["training"], stem="training_agreement")
        figure = plotting_curves.training_agreement_figure(result["training"], _games(result))
        figure.savefig(folder / "training_agreement.png", dpi=120)
    return folder


def console_table(result: dict) -> str:
    return report.markdown_table(multitask_table(result))


def inputs_note(r: dict) -> str:
    """What the trunk sees and the heads output, in words: MinAtar's padding, Atari's action
    sets (the paper's parameter count fits 12 actions in all; `multitask_atari`)."""
    if r.get("channels_padded_to") is not None:
        return f"observations zero-padded to {r['channels_padded_to']} channels"
    actions = r.get("actions") or []
    sets = ", ".join(f"{g} {a}" for g, a in zip(_games(r), actions, strict=True))
    return (
        f"observations are each game's stacks of 4 84x84 frames; controllers of ale-py's minimal "
        f"action sets, as the teachers' ({sets}: {sum(actions)} actions; the paper's 3-game net "
        "has 1,882,668 parameters, 12 actions in all)"
    )


def _games(r: dict) -> list[str]:
    return [t["game"] for t in r["teachers"]]


def dqn_note(r: dict) -> str:
    if r["multitask_dqn_steps"] is None:
        return DQN_ON_ATARI
    return (
        f"The multi-task DQN has the same network and trained for {r['multitask_dqn_steps']:,} "
        f"env steps over all games ({_runs(r.get('multitask_dqn_seeds', 1))})."
    )


def report_section(result: dict) -> list[str]:
    r = result
    shape = (
        f" ({r['net']}: {r['layers']}, then fc{mt.HEAD_HIDDEN} and a controller per game; "
        f"{r['params']:,} parameters)"
        if "net" in r
        else ""
    )
    return [
        "## Multi-task distillation",
        "",
        f"One network for {len(r['teachers'])} games: a shared trunk{shape}, one controller "
        f"head per game; {inputs_note(r)}. {dqn_note(r)} " + common.teachers_note(r["budget"]),
        "",
        report.markdown_table(multitask_table(r)),
        "",
        "![multitask](multitask/multitask.png)",
        "",
        *(training_note(r["training"]) if r.get("training") else []),
    ]


def training_note(rows: list[dict]) -> list[str]:
    """The Atari students' learning curves: training agreement at the first and last block."""
    first, last = min(r["updates"] for r in rows), max(r["updates"] for r in rows)
    at = {u: np.nanmean([r["agreement"] for r in rows if r["updates"] == u]) for u in (first, last)}
    return [
        f"Training-minibatch agreement with the teachers, mean over losses and seeds: "
        f"{at[first]:.2f} over the first {first:,} updates, {at[last]:.2f} over the block "
        f"ending at {last:,} (`multitask/training_agreement.csv`); a curve still rising at its "
        "end was stopped before its plateau.",
        "",
        "![training agreement](multitask/training_agreement.png)",
        "",
    ]


def _runs(n: int) -> str:
    return "one run" if n == 1 else f"{n} runs, one per seed"


EXPERIMENT = Experiment(
    name="multitask",
    help="one student for all games vs a multi-task DQN",
    run=multitask,
    write=write_multitask,
    console_table=console_table,
    report_section=report_section,
    order=3,
    applies=lambda b: len(b.games) > 1,
    check=check_budget,
)
