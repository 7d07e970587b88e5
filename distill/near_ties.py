"""How much of a teacher's score rests on its closest decisions.

A student that cannot tell the teacher's best action from its runner-up where their Q-values are
nearly equal agrees less with its teacher, and the KL target there stays soft
(`figures.teacher_margins`). Whether that costs score is a question about the teacher, not the
student: play the teacher itself on the paired evaluation episodes with its best and
second-best actions swapped wherever their Q-gap is under `g` (`runner_up`), and read its score
against `g`. A flat curve says the near ties are harmless and a student's lost score comes from
elsewhere (its other mistakes, or states the teacher never showed it); a curve that falls at the
gaps where the student disagrees says those decisions carry the score.

    python -m distill.near_ties --games Asterix-MinAtar,Breakout-MinAtar --gaps 0,0.01,0.03,0.1
        [--teachers small|large] [--episodes 100] [--out FILE.json]

With `--students RUNS` it reads instead the same-size students a `distill reproduce --budget
full` run cached in `RUNS/students/` (never training one) and tells where their disagreements
with the teacher lie: held-out agreement per band of the teacher's Q-gap (`by_gap`). `--nets
net1,net2,net3` reads the compression stage's KL students instead (with `--teachers large
--seeds 3` those of a large-teacher run).

`--plot A.json,B.json --figure OUT.png` draws what earlier `--out` files hold (`figure`), running
nothing: the teachers' score against g, and the students' agreement per band.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from distill import checkpoint, evaluate, figures, paths
from distill.config import ConfigError
from distill.experiments import paired


def runner_up(q: jax.Array, g: jax.Array) -> jax.Array:
    """`q [..., actions]` with its best and second-best values swapped where their gap is
    under `g` (an argmax then picks the runner-up there; elsewhere nothing changes)."""
    values, index = jax.lax.top_k(q, 2)
    gap = (values[..., 0] - values[..., 1])[..., None]
    n = q.shape[-1]
    moved = q - gap * jax.nn.one_hot(index[..., 0], n) + gap * jax.nn.one_hot(index[..., 1], n)
    return jnp.where(gap < g, moved, q)


def runner_up_apply(apply: Callable) -> Callable:
    """A policy function of `(teacher params, g)`: the teacher's Q-values through `runner_up`."""
    return lambda params, obs: runner_up(apply(params[0], obs), params[1])


def scores(policy: checkpoint.Policy, gaps: Sequence[float], episodes: int) -> np.ndarray:
    """`[gaps, episodes]`: the teacher with its near ties (gap under each g) lost, on the paired
    evaluation episodes (g = 0 is the teacher itself)."""
    tag = ("runner-up", policy.net)  # g is an argument: one compiled evaluator for every g
    apply = runner_up_apply(policy.apply)
    return np.stack(
        [
            paired.episode_scores(
                policy.env_id, tag, apply, (policy.params, jnp.float32(g)), episodes
            )
            for g in gaps
        ]
    )


def table(env_id: str, gaps: Sequence[float], s: np.ndarray) -> list[dict]:
    """Rows per g: mean score, its standard error, and % of the teacher's (g = 0) score on the
    same episodes."""
    base = float(s[0].mean())
    return [
        {
            "game": env_id,
            "g": float(g),
            "score": float(row.mean()),
            "se": evaluate.standard_error(row),
            "percent_of_teacher": 100.0 * float(row.mean()) / base if base else float("nan"),
        }
        for g, row in zip(gaps, s, strict=True)
    ]


def by_gap(q_teacher: np.ndarray, q_students: np.ndarray, edges: Sequence[float]) -> list[dict]:
    """Per band [lo, hi) of the teacher's Q-gap: its share of the states, the students'
    agreement there (`q_students [seeds, states, actions]`) and its share of all their
    disagreements."""
    gaps = figures.q_gaps(q_teacher)
    agree = np.asarray(q_students).argmax(-1) == np.asarray(q_teacher).argmax(-1)[None]
    wrong = max(int((~agree).sum()), 1)
    rows = []
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        band = (gaps >= lo) & (gaps < hi)
        rows.append(
            {
                "gap": f"[{lo:g}, {hi:g})",
                "states": float(band.mean()),
                "agreement": float(agree[:, band].mean()) if band.any() else float("nan"),
                "share_of_disagreements": float((~agree[:, band]).sum() / wrong),
            }
        )
    return rows


def cached_students(runs: Path, env_id: str, loss: str, net: str = "teacher", **budget_fields):
    """The full budget's (with `budget_fields`, e.g. teachers="large", seeds=3) `loss` students
    of size `net` (teacher, net1-3) of `env_id` that a reproduce run cached in `runs`, with
    their dataset: (params `[seeds, ...]`, dataset, config). Refused by name when they are not
    there: this never trains."""
    from distill import dataset, experiments
    from distill.experiments import common, seeds

    b = experiments.budget("full", **budget_fields)
    teacher = checkpoint.load(paths.shipped_teacher(env_id, b.teachers), env_id=env_id)
    where = common.dataset_folder(teacher, b, runs)
    if not (where / checkpoint.MANIFEST).exists():
        raise ConfigError(f"{where}: no full-budget dataset of {env_id} there")
    data = dataset.load_dataset(str(where), env_id=env_id)
    config = common.student_config(b, loss=loss, net=common.net_of(b, net))
    folder = runs / "students" / seeds.student_folder_name(config, data, b.seeds)
    if not (folder / checkpoint.MANIFEST).exists():
        raise ConfigError(f"{folder}: no finished {loss} {net} students of {env_id} there")
    _, state, _ = seeds._read_students(folder, config, data, b.seeds)
    return state.params, data, config


def student_rows(
    runs: Path,
    env_id: str,
    losses: Sequence[str],
    edges,
    nets: Sequence[str] = ("teacher",),
    **budget_fields,
) -> list[dict]:
    """`by_gap` of each loss's and size's cached students on the plateau rule's held-out
    states, each row naming its game, loss and "net" (teacher: the same-size students)."""
    from distill import families, student

    rows = []
    for net in nets:
        for loss in losses:
            params, data, config = cached_students(runs, env_id, loss, net, **budget_fields)
            _, (obs, q_teacher) = student.held_out_split(config, data)
            apply = families.build_network(env_id, config.net).apply
            q = jax.vmap(lambda p, o=obs, f=apply: f(p, o))(params)
            tag = {"game": env_id, "loss": loss, "net": net}
            rows += [{**tag, **r} for r in by_gap(q_teacher, q, edges)]
    return rows


NET_STYLES = {"net1": "--", "net2": "-.", "net3": ":"}


def figure(sets: dict[str, Sequence[dict]], title: str = ""):
    """One panel per kind of `--out` file among `sets` (label -> its rows): the teachers' % of
    their own score against g (error bars: 1.96 standard errors of the mean, relative to the
    g = 0 score), and the students' held-out agreement per band of the teacher's Q-gap."""
    import matplotlib.pyplot as plt

    teachers = {k: v for k, v in sets.items() if v and "g" in v[0]}
    students = {k: v for k, v in sets.items() if v and "gap" in v[0]}
    if not teachers and not students:
        raise ConfigError("nothing to draw: no near_ties rows among the files given")
    panels = [p for p in (teachers, students) if p]
    fig, axes = plt.subplots(1, len(panels), figsize=(6.0 * len(panels), 5.5), squeeze=False)
    styles = ("-", "--", ":", "-.")
    colours = {}
    for ax, panel in zip(axes[0], panels, strict=True):
        for (label, rows), style in zip(panel.items(), styles * 4, strict=False):
            for key in dict.fromkeys((r["game"], r.get("loss"), r.get("net")) for r in rows):
                mine = [r for r in rows if (r["game"], r.get("loss"), r.get("net")) == key]
                game = key[0].replace("-MinAtar", "")
                c = colours.setdefault(game, f"C{len(colours)}")
                name = f"{game}, {label}" + (f", {key[1].upper()}" if key[1] else "")
                name += f", {key[2]}" if key[2] not in (None, "teacher") else ""
                if panel is teachers:
                    x = np.arange(len(mine))
                    base = mine[0]["score"] or 1.0
                    err = [196.0 * r["se"] / abs(base) for r in mine]
                    y = [r["percent_of_teacher"] for r in mine]
                    ax.errorbar(x, y, yerr=err, ls=style, color=c, marker="o", ms=3, label=name)
                    ax.set_xticks(x, [f"{r['g']:g}" for r in mine])
                else:
                    ls = style if key[1] in (None, "kl") else ":"
                    ls = NET_STYLES.get(key[2], ls)  # a compressed student: by its size
                    x = np.arange(len(mine))
                    ax.plot(
                        x,
                        [r["agreement"] for r in mine],
                        ls=ls,
                        color=c,
                        marker="o",
                        ms=3,
                        label=name,
                    )
                    ax.set_xticks(x, [r["gap"] for r in mine], fontsize=8)
        if panel is teachers:
            ax.axhline(100.0, color="grey", lw=0.8)
            ax.set_xlabel("g: best and runner-up swapped where their Q-gap is under g")
            ax.set_ylabel("% of the teacher's score (same episodes)")
            ax.set_title("the teacher with its near ties lost")
        else:
            ax.set_xlabel("band of the teacher's Q-gap (best minus runner-up)")
            ax.set_ylabel("students' held-out agreement with the teacher")
            ax.set_ylim(0, 1.02)
            ax.set_title("where the students disagree")
        ax.grid(alpha=0.3)
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=2, fontsize=7, frameon=False)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot(files: Sequence[str], out: str) -> Path:
    """`figure` of saved `--out` files (each labelled by its file name), written to `out`."""
    import json

    sets = {}
    for f in files:
        try:
            rows = json.loads(Path(f).read_text()).get("rows")
        except (OSError, ValueError, AttributeError) as e:
            raise ConfigError(f"{f}: not a readable near_ties --out file ({e})") from None
        if not isinstance(rows, list):
            raise ConfigError(f"{f}: not a near_ties --out file (no rows)")
        if Path(f).stem in sets:
            raise ConfigError(f"{f}: a second file named {Path(f).stem}; rename one")
        sets[Path(f).stem] = rows
    for kind in ("g", "gap"):  # the panels' x: every file of a kind on the same g or bands
        xs = {
            tuple(r[kind] for r in rows if r["game"] == rows[0]["game"])
            for rows in sets.values()
            if rows and kind in rows[0]
        }
        if len(xs) > 1:
            raise ConfigError(f"{', '.join(files)}: their {kind} values differ; draw them apart")
    fig = figure(sets)
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    return path


def main(argv: Sequence[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--games", default="Breakout-MinAtar", help="comma-separated env ids")
    p.add_argument("--gaps", default="0,0.01,0.03,0.1", help="comma-separated g, the first 0")
    p.add_argument("--teachers", default="small", choices=paths.TEACHER_SIZES)
    p.add_argument("--episodes", type=int, default=100)
    p.add_argument("--out", default=None, help="write the rows as JSON here")
    p.add_argument("--students", default=None, metavar="RUNS", help="a full reproduce run's folder")
    p.add_argument("--losses", default=None, help="with --students: whose (kl,nll; --nets: kl)")
    p.add_argument("--nets", default="teacher", help="with --students: their sizes (net1, ...)")
    p.add_argument("--seeds", type=int, default=None, help="with --students: the run's seeds")
    p.add_argument("--plot", default=None, metavar="JSONS", help="draw these --out files")
    p.add_argument("--figure", default=None, metavar="PNG", help="with --plot: where to draw")
    args = p.parse_args(argv)
    if args.plot:
        if not args.figure:
            p.error("--plot needs --figure PNG")
        print(plot(args.plot.split(","), args.figure))
        return []
    gaps = [float(x) for x in args.gaps.split(",")]
    if gaps[0] != 0.0 or any(g < 0 for g in gaps):
        p.error(f"--gaps {args.gaps}: non-negative, starting with 0 (the teacher itself)")
    from distill import report

    rows = []
    for env_id in args.games.split(","):
        if args.students:  # bands between the gaps, the last one open
            edges = [*gaps, float("inf")]
            fields = {"teachers": args.teachers}
            fields |= {"seeds": args.seeds} if args.seeds else {}
            nets = args.nets.split(",")
            same_size = nets == ["teacher"]  # the compression stage trains KL students only
            losses = (args.losses or ("kl,nll" if same_size else "kl")).split(",")
            rows += student_rows(Path(args.students), env_id, losses, edges, nets, **fields)
            continue
        policy = checkpoint.load(paths.shipped_teacher(env_id, args.teachers), env_id=env_id)
        rows += table(env_id, gaps, scores(policy, gaps, args.episodes))
    shown = [{**r, "g": f"{r['g']:g}"} if "g" in r else r for r in rows]
    print(report.markdown_table(shown))
    if args.out:
        command = ["python", "-m", "distill.near_ties", *(sys.argv[1:] if argv is None else argv)]
        checkpoint.atomic_write_json(args.out, {"command": " ".join(command), "rows": rows})
    return rows


if __name__ == "__main__":
    main()
