"""Online policy distillation (Rusu et al. 2016, section 5.4): a student distilled, round after
round, from a teacher that is still training; both evaluated after every round."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import jax
import numpy as np

from distill import checkpoint, envs, losses, report, student, teacher
from distill import online as onl
from distill.checkpoint import atomic_write_json, atomic_write_text
from distill.config import to_dict
from distill.experiments import common
from distill.experiments.registry import Experiment


def configs(b: common.Budget, env_id: str, tau: float, seed: int) -> tuple:
    """(teacher, student, online) configs of one online run on `env_id` from `seed`: the
    budget's teacher size for teacher and student."""
    net = common.net_of(b, "teacher")
    t_config = teacher.default_config(
        env_id, total_steps=b.online_teacher_steps, net=net, seed=seed
    )
    s_config = student.StudentConfig(loss="kl", tau=tau, net=net, seed=seed)
    o_config = onl.OnlineConfig(
        rounds=b.online_rounds,
        rows_per_round=b.online_rows_per_round,
        window_rounds=b.online_window_rounds,
        updates_per_round=max(b.fixed_student_updates // 10, 100),
        eval_episodes=b.eval_episodes,
    )
    return t_config, s_config, o_config


def online(
    b: common.Budget,
    env_id: str | None = None,
    progress: bool = True,
    tau: float = losses.DEFAULT_TAU,
    snapshot_rounds: tuple[int, ...] = (),
    seed: int = 0,
) -> dict:
    """Online distillation on one game, teacher and student from `seed`: both evaluated after
    every round (and their parameters kept after `snapshot_rounds`, see
    `online.online_distillation`)."""
    t_config, s_config, o_config = configs(b, env_id or b.games[0], tau, seed)
    return onl.online_distillation(t_config, s_config, o_config, progress, snapshot_rounds)


def run(
    b: common.Budget,
    *,
    tau: float = losses.DEFAULT_TAU,
    runs_dir: Path | None = None,
    progress: bool = True,
    mesh: jax.sharding.Mesh | None = None,
) -> dict:
    """`online` as the registry calls it, once per seed of `b.online_seeds`, on one device (a
    reproduction's mesh is for the other stages): seed 0's result, its rows and those of the
    other seeds marked with their "seed", and each seed's stability under "runs"; with
    `runs_dir`, each seed's result kept in runs_dir/online-seeds (`cached_seed`: a stage stopped
    between seeds resumes at the next one) and the rounds of each seed run now as TensorBoard
    scalars in runs_dir/tb/online[/seed<s>]."""
    results = []
    for s in range(b.online_seeds):
        if runs_dir is None:
            results.append(online(b, progress=progress, tau=tau, seed=s))
            continue
        result, fresh = cached_seed(b, tau, s, runs_dir, progress)
        if fresh:  # a seed read back was logged by the run that made it
            log_rounds(result, Path(runs_dir) / "tb" / "online" / (f"seed{s}" if s else ""))
        results.append(result)
    return combine_seeds(results)


def cached_seed(
    b: common.Budget, tau: float, seed: int, runs_dir: Path, progress: bool
) -> tuple[dict, bool]:
    """(`online(b, tau=tau, seed=seed)`, whether it ran now): read from
    runs_dir/online-seeds/<game>_s<seed>_<hash>.json when a run of the same three configs
    (`configs`) made it, else run and written there atomically."""
    env_id = b.games[0]
    t_config, s_config, o_config = configs(b, env_id, tau, seed)
    identity = {"teacher": to_dict(t_config), "student": to_dict(s_config)}
    identity["online"] = to_dict(o_config)
    identity = json.loads(json.dumps(identity))  # as the file holds it (tuples as lists)
    digest = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:10]
    path = Path(runs_dir) / "online-seeds" / f"{envs.spec(env_id).safe_name}_s{seed}_{digest}.json"
    if path.exists():
        try:
            stored = json.loads(path.read_text())
            same, result = stored["identity"] == identity, stored["result"]
            if not (isinstance(result["rows"], list) and isinstance(result["teacher"], dict)):
                raise TypeError("its result has no rows or no teacher")
        except (ValueError, KeyError, TypeError, OSError) as e:
            raise checkpoint.CheckpointError(
                f"{path} is damaged ({str(e)[:200]}); delete it to run seed {seed} again"
            ) from None
        if not same:
            raise checkpoint.CheckpointError(f"{path}: holds an online run of other configs")
        return result, False
    result = online(b, progress=progress, tau=tau, seed=seed)
    atomic_write_json(path, {"identity": identity, "result": result})
    return result, True


def combine_seeds(results: list[dict]) -> dict:
    """One result of several seeds' (`online`): the first's, with every seed's rows (each
    marked with its "seed") and `runs`, each seed's teacher and student stability. With one
    seed, that seed's result unchanged."""
    if len(results) == 1:
        return results[0]
    rows = [{**row, "seed": s} for s, r in enumerate(results) for row in r["rows"]]
    runs = [
        {"seed": s, "teacher": r["teacher"], "student": r["student"]} for s, r in enumerate(results)
    ]
    return {**results[0], "rows": rows, "runs": runs}


def log_rounds(result: dict, folder: Path) -> None:
    """Each round's scores, loss and agreement as TensorBoard scalars (CleanRL's tags), by env
    step of the teacher."""
    from distill import tb

    with tb.EventWriter(folder) as writer:
        for row in result["rows"]:
            scalars = {
                "charts/teacher_episodic_return": row["teacher_score"],
                "charts/episodic_return": row["student_score"],
                "losses/distill_loss": row["student_loss"],
                "charts/agreement": row["agreement"],
            }
            writer.scalars(scalars, step=int(row["env_steps"]))


def online_table(result: dict) -> list[dict]:
    """Teacher and student: final score and stability over the second half of training (per
    seed, then their mean, when the result has several)."""
    runs = result.get("runs") or [{"teacher": result["teacher"], "student": result["student"]}]
    rows = [
        {"policy": who, **({"seed": r["seed"]} if "seed" in r else {}), **r[who]}
        for r in runs
        for who in ("teacher", "student")
    ]
    if len(runs) > 1:
        for who in ("teacher", "student"):
            keys = runs[0][who]
            mean = {k: float(np.mean([r[who][k] for r in runs])) for k in keys}
            rows.append({"policy": who, "seed": "mean", **mean})
    return rows


def write_online(result: dict, out: str | Path) -> Path:
    """results JSON, the markdown table and the figure, into folder `out`."""
    from distill import plotting

    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_json(folder / "online.json", result)
    atomic_write_text(folder / "online.md", report.markdown_table(online_table(result)) + "\n")
    plotting.online_figure(result).savefig(folder / "online.png", dpi=120)
    return folder


def console_table(result: dict) -> str:
    return report.markdown_table(online_table(result))


def report_section(result: dict) -> list[str]:
    return [
        f"## Online distillation ({result['env_id']})",
        "",
        "Paper: the online student matches the teacher and is markedly more stable (no "
        "numbers given). Spread = std of the evaluation scores over the second half of "
        "training; worst drop = largest fall between successive evaluations.",
        "",
        report.markdown_table(online_table(result)),
        "",
        "![online](online/online.png)",
        "",
    ]


EXPERIMENT = Experiment(
    name="online",
    help="a student following a training teacher",
    run=run,
    write=write_online,
    console_table=console_table,
    report_section=report_section,
    order=4,
    suites=("minatar",),
    applies=lambda b: b.online_rounds > 0,
    mesh_axes=(),
)
