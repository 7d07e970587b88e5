"""The paper's claims as data, and a verdict on each from the bootstrap intervals of stats.py.

A verdict is one of `rules.VERDICTS`, decided from intervals only, by these rules:

- "A > B" (and "A >= B": an interval cannot show equality, so the strict part is tested):
  reproduced when the interval of P(A > B) lies above 0.5, contradicted when it lies below 0.5,
  unresolved when it contains 0.5;
- "A beats its teacher": the same rule on the interval of A's geometric mean % of teacher
  against 100;
- "A at p %" (the paper's level): reproduced when the interval of A's geometric mean % of
  teacher contains p or lies above it (as good as the paper's student), contradicted when it
  lies below p;
- a claim of several parts is contradicted when any part is, reproduced when every part is,
  unresolved otherwise;
- a part whose groups have a game with fewer than `MIN_RUNS` (3) runs is unresolved at this
  budget whatever its interval: the bootstrap of one run collapses to the point, and that of two
  runs can only draw their min, mean and max, which understates the run-to-run spread; so is a
  part whose stage or groups are missing from the results;
- a part that would be contradicted is unresolved at this budget when more than half the runs of
  one of its groups were still learning when they stopped (`plateau.still_learning`: capped
  before their plateau, or their training agreement still rising over the last block): the
  paper's claims are about trained students, and students that fall short while still learning
  have not shown that they cannot match; fewer such runs are named in the evidence only;
- "the online student matches its teacher": per run, the student's mean evaluation over the
  second half of the rounds as a % of its teacher's in the same rounds, bootstrapped over runs
  and judged by the "at p %" rule with p = 100 (fewer than `MIN_RUNS` runs: unresolved);
- "the online student is more stable than its teacher": stability is the spread (std of the
  evaluations over the second half of the run) and the worst drop between two successive
  evaluations, as `distill.online.stability` defines them. With `MIN_RUNS` runs or more, the
  difference teacher - student of each is bootstrapped over runs, and the claim is reproduced
  when both intervals lie above 0, contradicted when both lie below, unresolved otherwise. With
  fewer it is unresolved; with one run we do not bootstrap over its rounds instead: they are a
  time series, not exchangeable samples, so such intervals would be too narrow.

The teachers' reference scores are taken as exact (issue 17 measures them to a 3 % s.e. at most).
"""

from __future__ import annotations

import dataclasses
import io
import json
from pathlib import Path

import numpy as np

from distill import checkpoint, claims_online, stats
from distill.rules import (
    CONTRADICTED,
    LEARNING_SHARE,
    MIN_RUNS,
    REPRODUCED,
    UNRESOLVED,
    above_level,
    combine,
    fmt_interval,
)


@dataclasses.dataclass(frozen=True)
class Part:
    """One comparison of a claim: `x` above `y` (a group or stats.REFERENCE, kind "greater"),
    `x`'s geometric mean above 100 % ("beats_teacher"), or `x` at the paper's `value` % ("at")."""

    kind: str  # "greater" | "beats_teacher" | "at"
    x: str
    y: str | None = None
    value: float | None = None


@dataclasses.dataclass(frozen=True)
class Claim:
    name: str
    paper: str  # the paper's numbers and where they are
    stage: str  # the stage of results.json it is judged on
    parts: tuple[Part, ...]


# Sec. 5.3: geometric mean % of the single-game teachers over 3 Atari games
PAPER_MULTITASK = {"multi-dqn": 83.5, "distilled-nll": 105.1, "distilled-kl": 116.9}

CLAIMS = (
    Claim(
        "KL >= NLL > MSE (same-size students)",
        "Sec. 5.1: KL (tau 0.01) best, NLL next, MSE last (Atari games)",
        "losses",
        (Part("greater", "kl", "nll"), Part("greater", "nll", "mse")),
    ),
    Claim(
        "same-size KL student beats its teacher",
        "Sec. 5.1: a same-size KL student can score above 100 % of its DQN teacher",
        "losses",
        (Part("beats_teacher", "kl"),),
    ),
    *(
        Claim(
            f"{net} at {value} % of the teacher",
            f"Sec. 5.2, Table 2: {net} ({params}) keeps {value} % (geometric mean, 10 games)",
            "compression",
            (Part("at", net, value=value),),
        )
        for net, params, value in (
            ("net1", "25 % of the parameters", 108.3),
            ("net2", "7 %", 101.7),
            ("net3", "4 %", 83.9),
        )
    ),
    Claim(
        "multi-task KL 116.9 % > NLL 105.1 % > multi-task DQN 83.5 %",
        "Sec. 5.3: one network distilled from 3 teachers, geometric mean % of teacher",
        "multitask",
        (
            Part("greater", "distilled-kl", "distilled-nll"),
            Part("greater", "distilled-nll", "multi-dqn"),
        ),
    ),
)
# The paper's 10-game network (trunk about 4x the teacher's, a controller per game) kept about
# 89.3 % of its ten teachers (PAPER.md, a secondary source). Judged on a multi-task stage that
# trained the wide trunk (`--multitask-net wide` or `large-wide`), beside the 3-game order above.
WIDE_NETS = ("wide", "large-wide")
MULTITASK_10 = Claim(
    "multi-task KL at 89.3 % of the teachers (the 10-game network)",
    "Sec. 5.3: one network about 4x the teacher's size distilled from 10 teachers keeps about "
    "89.3 % (geometric mean)",
    "multitask",
    (Part("at", "distilled-kl", value=89.3),),
)


def _part(part: Part, summary: dict) -> tuple[str, str]:
    """(verdict, evidence) of one part, from the stage's summary."""
    groups = summary["groups"]
    names = [n for n in (part.x, part.y) if n is not None and n != stats.REFERENCE]
    missing = [n for n in names if n not in groups]
    if missing:
        return UNRESOLVED, f"no results for {', '.join(missing)}"
    few = [n for n in names if groups[n]["runs"] < MIN_RUNS]
    if part.kind == "greater":
        est = next(
            p for p in summary["improvement"] if (p["x"], p["y"]) == (part.x, part.y)
        )  # stats.PAIRS lists every pair a claim compares
        verdict, text = above_level(est, 0.5), f"P({part.x} > {part.y}) = {fmt_interval(est, 2)}"
    else:
        est = groups[part.x]["geometric_mean"]
        text = f"{part.x} geometric mean = {fmt_interval(est)} % of teacher"
        if part.kind == "beats_teacher":
            verdict = above_level(est, 100.0)
        else:
            verdict = CONTRADICTED if est["hi"] < part.value else REPRODUCED
            verdict = verdict if np.isfinite([est["lo"], est["hi"]]).all() else UNRESOLVED
            text += f" (paper {part.value} %)"
    if few:
        verdict = UNRESOLVED
        runs = " and ".join(f"{n} {groups[n]['runs']}" for n in few)
        text += f", but runs per game: {runs} (fewer than {MIN_RUNS})"
    learning = [n for n in names if groups[n].get("still_learning", [0])[0]]
    if learning:
        runs = " and ".join("{} {} of {}".format(n, *groups[n]["still_learning"]) for n in learning)
        if verdict == CONTRADICTED and any(_mostly_learning(groups[n]) for n in learning):
            verdict, text = UNRESOLVED, f"{text}, but runs still learning when they stopped: {runs}"
        else:
            text += f" (runs still learning when they stopped: {runs})"
    return verdict, text


def _mostly_learning(group: dict) -> bool:
    """Whether more than `LEARNING_SHARE` of a group's runs were still learning when they
    stopped (`stats.still_learning`'s count)."""
    n, of = group["still_learning"]
    return n > LEARNING_SHARE * of


def claims_for(results: dict) -> tuple[Claim, ...]:
    """`CLAIMS`, and `MULTITASK_10` when the multi-task stage trained a wide trunk."""
    wide = (results.get("multitask") or {}).get("net") in WIDE_NETS
    return CLAIMS + (MULTITASK_10,) if wide else CLAIMS


def verdicts(
    results: dict, summaries: dict | None = None, reps: int = stats.REPS, seed: int = 0
) -> list[dict]:
    """`[{claim, paper, stage, verdict, evidence}]` for every claim, from a results.json's
    "results" (summarised here unless `summaries` from stats.summarise are given)."""
    summaries = stats.summarise(results, reps, seed) if summaries is None else summaries
    out = []
    for c in claims_for(results):
        out_c = {"claim": c.name, "paper": c.paper, "stage": c.stage}
        if c.stage not in summaries:
            out.append({**out_c, "verdict": UNRESOLVED, "evidence": f"no {c.stage} results"})
            continue
        parts = [_part(p, summaries[c.stage]) for p in c.parts]
        out.append(
            {
                **out_c,
                "verdict": combine([v for v, _ in parts]),
                "evidence": "; ".join(f"{e} ({v})" if len(parts) > 1 else e for v, e in parts),
            }
        )
    out.append(claims_online.online_match(results.get("online"), reps, seed))
    out.append(claims_online.online_verdict(results.get("online"), reps, seed))
    return out


# ---------------------------------------------------------------------------- the report


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    return [
        "| " + " | ".join(header) + " |",
        "|" + "|".join("---" for _ in header) + "|",
        *("| " + " | ".join(r) + " |" for r in rows),
    ]


def render_markdown(summaries: dict, verdicts: list[dict]) -> str:
    """A markdown section: per stage, the aggregates with their intervals and P(X > Y); then one
    verdict line per claim."""
    lines = ["## Interval estimates", ""]
    if summaries:
        any_s = next(iter(summaries.values()))
        lines += [
            f"Point estimates with {100 * any_s['level']:.0f} % percentile intervals [lo, hi] "
            f"from a stratified bootstrap over runs (seeds) within each game ({any_s['reps']} "
            f"resamples, seed {any_s['seed']}; Agarwal et al. 2021). IQM: the mean of the middle "
            "half of all runs x games; geometric mean: over games of the per-game mean % of "
            "teacher (the paper's aggregate); random-normalised: 0 = random, 1 = teacher. The "
            "teachers' reference scores are taken as exact.",
            "",
        ]
    for name, s in summaries.items():
        lines += [f"### {name}", ""]
        header = [" / ".join(s["by"]), "games x runs", *(c[1] for c in stats.AGGREGATE_COLUMNS)]
        rows = [
            [
                g,
                f"{v['games']} x {v['runs']}",
                *(fmt_interval(v[k], d) for k, _, d in stats.AGGREGATE_COLUMNS),
            ]
            for g, v in s["groups"].items()
        ]
        learning = [v.get("still_learning", [0, 0]) for v in s["groups"].values()]
        if any(n for n, _ in learning):  # a column only where some run was still learning
            header.append("runs still learning")
            rows = [[*r, f"{n} of {of}"] for r, (n, of) in zip(rows, learning, strict=True)]
        lines += [*_table(header, rows), ""]
        if s["improvement"]:
            rows = [[p["x"], p["y"], fmt_interval(p, 2)] for p in s["improvement"]]
            lines += [*_table(["X", "Y", "P(X > Y)"], rows), ""]
    lines += ["## Verdicts", ""]
    for v in verdicts:
        lines.append(f"- **{v['claim']}** ({v['paper']}): *{v['verdict']}*. {v['evidence']}.")
    return "\n".join(lines) + "\n"


def side_by_side(found: dict[str, list[dict]], stages: dict[str, set[str]]) -> str:
    """A markdown table of the claims (rows) against several runs (columns, `{label: verdicts}`):
    each cell the verdict and its evidence, "not run" where that run's results lack the claim's
    stage (`stages`: label -> the stages its results.json holds). The premise a run changes
    (teacher size, games) is read across a row."""
    labels = list(found)
    names = list(dict.fromkeys(v["claim"] for vs in found.values() for v in vs))
    rows = []
    for name in names:
        cells, paper = [], ""
        for label in labels:
            v = next((v for v in found[label] if v["claim"] == name), None)
            paper = paper or (v or {}).get("paper", "")
            ran = v is not None and v["stage"] in stages[label]
            cells.append(f"*{v['verdict']}*: {v['evidence']}" if ran else "not run")
        rows.append([f"**{name}**", paper, *cells])
    return "\n".join(_table(["claim", "paper", *labels], rows)) + "\n"


def compare_command(
    paths: list[str], labels: list[str] | None = None, reps=stats.REPS, seed=0, games=None
):
    """`distill stats A.json B.json [--labels a,b]`: `side_by_side` of their verdicts (a column
    per results.json, labelled by its folder's name unless `labels` are given)."""
    from distill.config import ConfigError

    given = labels is not None
    labels = [x.strip() for x in labels] if given else [Path(p).parent.name for p in paths]
    if len(labels) != len(paths) or len(set(labels)) != len(labels) or not all(labels):
        what = f"--labels {','.join(labels)}" if given else f"folders {', '.join(labels)}"
        raise ConfigError(f"{what}: give --labels a,b,... (one distinct label per results.json)")
    found, stages = {}, {}
    for label, path in zip(labels, paths, strict=True):
        results = load_results(path, games)
        stages[label] = set(results)
        try:
            found[label] = verdicts(results, None, reps, seed)
        except (KeyError, TypeError, AttributeError) as e:
            raise ConfigError(f"{path}: malformed results ({type(e).__name__}: {e})") from e
    return side_by_side(found, stages)


def paper_levels(stage: str = "compression") -> dict[str, float]:
    """`{group: the paper's geometric mean %}` of a stage: the "at" claims' levels
    (compression), `PAPER_MULTITASK` (multitask); empty for other stages."""
    if stage == "multitask":
        return dict(PAPER_MULTITASK)
    return {p.x: p.value for c in CLAIMS if c.stage == stage for p in c.parts if p.kind == "at"}


def load_results(path: str | Path, games=None) -> dict:
    """The "results" of a results.json (with `games`, every stage's per-game rows of those games
    only: `only_games`); ConfigError (one line) when missing or not one."""
    from distill.config import ConfigError

    try:
        data = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ConfigError(f"{path}: cannot read a results.json ({type(e).__name__})") from e
    if not isinstance(data, dict) or not isinstance(data.get("results"), dict):
        raise ConfigError(f'{path}: not a results.json (no "results" object)')
    return data["results"] if games is None else only_games(data["results"], games, path)


def only_games(results: dict, games, path) -> dict:
    """`results` with the per-game rows of `games` only (`distill stats --games`: a subset's
    intervals and verdicts; a stage of one game, online, only when its `env_id` is among them);
    a game that no stage's rows hold is refused by name."""
    from distill.config import ConfigError

    def per_game(stage) -> list:
        rows = stage.get("rows") if isinstance(stage, dict) else None
        return (
            [r for r in rows if isinstance(r, dict) and "game" in r]
            if isinstance(rows, list)
            else []
        )

    games = [g.strip() for g in games]
    held = {r["game"] for stage in results.values() for r in per_game(stage)}
    missing = [g for g in games if g not in held]
    if missing:
        raise ConfigError(
            f"{path}: no rows of {', '.join(missing)} (it has {', '.join(sorted(held))})"
        )
    keep = lambda r: not isinstance(r, dict) or "game" not in r or r["game"] in games  # noqa: E731
    out = {}
    for name, stage in results.items():
        if per_game(stage):
            out[name] = {**stage, "rows": [r for r in stage["rows"] if keep(r)]}
        elif not isinstance(stage, dict) or stage.get("env_id", games[0]) in games:
            out[name] = stage  # a stage of one game (online) stays when its game is asked for
    return out


def _finite(x):
    """A copy of a JSON-like value with nan and inf as None (strict JSON)."""
    if isinstance(x, dict):
        return {k: _finite(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_finite(v) for v in x]
    return None if isinstance(x, float) and not np.isfinite(x) else x


def write(summaries: dict, verdicts_: list[dict], out: str | Path) -> list[Path]:
    """stats.md, stats.json and the figures (per stage: `<stage>_intervals.png`, and
    `<stage>_profile.png` for the loss comparison) in `out`; the paths written."""
    import matplotlib.pyplot as plt

    from distill import plotting_stats

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    checkpoint.atomic_write_text(out / "stats.md", render_markdown(summaries, verdicts_))
    doc = _finite({"summaries": summaries, "verdicts": verdicts_})
    checkpoint.atomic_write_text(
        out / "stats.json", json.dumps(doc, indent=1, allow_nan=False) + "\n"
    )
    written = [out / "stats.md", out / "stats.json"]
    for name, s in summaries.items():
        figs = {"intervals": plotting_stats.interval_figure(s, paper_levels(name))}
        if name == "losses":
            figs["profile"] = plotting_stats.profile_figure(s)
        for kind, fig in figs.items():
            written.append(out / f"{name}_{kind}.png")
            buf = io.BytesIO()
            fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
            checkpoint.atomic_write_bytes(written[-1], buf.getvalue())
            plt.close(fig)
    return written


def stats_command(
    path,
    out: str | Path | None = None,
    reps: int = stats.REPS,
    seed: int = 0,
    labels=None,
    games=None,
) -> str:
    """`distill stats`: the markdown of a results.json's intervals and verdicts (and, with
    `out`, the files of `write`); of several (a list), `compare_command` (`labels`: "a,b"); with
    `games` ("a,b" or a list), of those games' rows only.
    ConfigError (one line) for a file that is not a results.json or an `out` that is a file."""
    from distill.config import ConfigError

    games = games.split(",") if isinstance(games, str) else games
    if isinstance(path, list | tuple):
        if len(path) > 1:
            if out is not None:
                raise ConfigError("--out takes one results.json; several print a comparison")
            names = labels.split(",") if labels else None
            return compare_command(list(path), names, reps, seed, games)
        if labels:
            raise ConfigError("--labels names the columns of several results.json")
        path = path[0] if path else None
    if path is None:
        raise ConfigError("give a results.json, or --references A B")
    results = load_results(path, games)
    if out is not None and Path(out).exists() and not Path(out).is_dir():
        raise ConfigError(f"--out {out}: is a file, not a folder")
    try:
        summaries = stats.summarise(results, reps, seed)
        found = verdicts(results, summaries, reps, seed)
    except (KeyError, TypeError, AttributeError) as e:
        raise ConfigError(f"{path}: malformed results ({type(e).__name__}: {e})") from e
    text = render_markdown(summaries, found)
    if out is not None:
        names = ", ".join(p.name for p in write(summaries, found, out))
        text += f"\nwritten to {out}: {names}\n"
    return text
