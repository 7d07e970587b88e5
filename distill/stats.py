"""Interval estimates over runs x games: the stratified bootstrap of Agarwal et al. (2021).

"Deep RL at the Edge of the Statistical Precipice" (NeurIPS 2021) and its `rliable` library: an
aggregate over runs (seeds) x games, and its 95 % percentile interval from a bootstrap that
resamples the runs of each game independently, with replacement (games are never mixed: a
game's resample holds only that game's runs). Scores are `{game: [runs]}`; games may have
different numbers of runs. Aggregates (all as rliable defines them):

- `iqm`: interquartile mean over all runs x games, scipy's `trim_mean(x, 0.25, axis=None)`: the
  sorted values with `int(0.25 n)` dropped at each end (so 3 runs keep all 3, 12 keep 6);
- `geometric_mean`: the paper's aggregate, the geometric mean over games of the per-game mean
  % of teacher (nan where a game's mean is not positive);
- `mean`: the mean over games of the per-game mean (used for random-normalised scores);
- `probability_of_improvement`: P(X > Y), per game the Mann-Whitney U statistic over m n
  (ties count 1/2), averaged over games; its interval resamples X and Y independently;
- `performance_profile`: the fraction of all runs above each threshold (rliable's "score
  distribution").

rliable or our own: rliable 1.2.0 (sdist) needs arch>=5.3.1,<8, scipy, absl-py, seaborn and
pandas. `pip install --dry-run --report` against this project's venv resolves with our pins
(checked 2026-12-01: it would add arch 7.2.0, statsmodels 0.15.0, patsy, formulaic,
interface_meta, narwhals and wrapt; numpy 2.4, scipy 1.17, pandas and seaborn already satisfy
it). We still implement it here with numpy, as rliable computes it, because: (1) eight more
packages (two compiled) for about 30 lines of arithmetic; (2) rliable draws its resamples from
numpy's global `np.random` (`StratifiedBootstrap.update_indices`), ignoring the `random_state`
it passes to arch, so its intervals are reproducible only by seeding global state; here every
interval takes a `seed`; (3) rliable needs a dense `[runs, games]` matrix, ours takes games
with different numbers of runs; (4) arch loops over the replicates in Python, ours draws
them all at once. tests/test_stats.py checks ours against scipy's `trim_mean` and
`mannwhitneyu`, the functions rliable calls.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np

Scores = Mapping[str, np.ndarray]  # {game: [..., runs]}: leading axes are bootstrap replicates
REPS = 2000
# the aggregates of a summary's groups: (key, label with units, digits shown)
AGGREGATE_COLUMNS = (
    ("iqm", "IQM, % of teacher", 1),
    ("geometric_mean", "geometric mean, % of teacher", 1),
    ("normalised_mean", "random-normalised mean", 2),
)
LEVEL = 0.95
GROUP_KEYS = ("loss", "net", "method", "regime")  # the keys a stage's rows are grouped by
REFERENCE = "teacher's score"  # the pseudo-group of the teachers' reference scores (100 %)
# the pairs P(X > Y) is reported for, per stage (X first); each group is also compared with the
# teacher's reference score
PAIRS = {
    "losses": [("kl", "nll"), ("kl", "mse"), ("nll", "mse")],
    "compression": [("teacher", "net1"), ("net1", "net2"), ("net2", "net3")],
    # regimes: by regime alone at one net (smoke), else by net/regime
    "regimes": [
        (f"{n}{x}", f"{n}{y}")
        for n in ("", "teacher/", "net2/")
        for x, y in (("stream", "offline"), ("dagger", "offline"), ("dagger", "stream"))
    ],
    "multitask": [
        ("distilled-kl", "distilled-nll"),
        ("distilled-kl", "multi-dqn"),
        ("distilled-nll", "multi-dqn"),
    ],
}


# ---------------------------------------------------------------------------- aggregates


def iqm(x: np.ndarray) -> np.ndarray:
    """Interquartile mean along the last axis: `[..., n]` -> `[...]`, scipy's
    `trim_mean(proportiontocut=0.25)` (rliable's `aggregate_iqm`)."""
    x = np.sort(np.asarray(x, dtype=float), axis=-1)
    cut = int(0.25 * x.shape[-1])
    return x[..., cut : x.shape[-1] - cut].mean(axis=-1)


def _pooled(scores: Scores) -> np.ndarray:
    """All runs of all games side by side: `[..., sum of runs]`."""
    return np.concatenate([np.asarray(scores[g], dtype=float) for g in sorted(scores)], axis=-1)


def _game_means(scores: Scores) -> np.ndarray:
    """Per-game mean over runs: `[..., games]`."""
    return np.stack([np.asarray(scores[g], dtype=float).mean(axis=-1) for g in sorted(scores)], -1)


def aggregate_iqm(scores: Scores) -> np.ndarray:
    """IQM over all runs x games: `[...]`."""
    return iqm(_pooled(scores))


def geometric_mean(scores: Scores) -> np.ndarray:
    """Geometric mean over games of the per-game mean (the paper's aggregate of % of teacher):
    `[...]`; nan where a game's mean is not positive."""
    m = _game_means(scores)
    with np.errstate(invalid="ignore", divide="ignore"):
        g = np.exp(np.log(np.where(m > 0, m, np.nan)).mean(axis=-1))
    return g


def mean(scores: Scores) -> np.ndarray:
    """Mean over games of the per-game mean (rliable's `aggregate_mean`): `[...]`."""
    return _game_means(scores).mean(axis=-1)


AGGREGATES: dict[str, Callable[[Scores], np.ndarray]] = {
    "iqm": aggregate_iqm,
    "geometric_mean": geometric_mean,
    "mean": mean,
}


def probability_of_improvement(x: Scores, y: Scores) -> np.ndarray:
    """P(X > Y): per game, the Mann-Whitney U of X over Y divided by m n (ties 1/2), averaged
    over games. `x[g]`: `[..., m]`, `y[g]`: `[..., n]` (same leading axes) -> `[...]`."""
    if set(x) != set(y):
        raise ValueError(f"P(X > Y) needs the same games: {sorted(x)} vs {sorted(y)}")
    per_game = []
    for g in sorted(x):
        a = np.asarray(x[g], dtype=float)[..., :, None]  # [..., m, 1]
        b = np.asarray(y[g], dtype=float)[..., None, :]  # [..., 1, n]
        per_game.append(((a > b) + 0.5 * (a == b)).mean(axis=(-2, -1)))
    return np.mean(per_game, axis=0)


def performance_profile(scores: Scores, thresholds: np.ndarray) -> np.ndarray:
    """Fraction of all runs (pooled over games) scoring above each threshold:
    `[..., thresholds]` (rliable's score distribution)."""
    runs = _pooled(scores)[..., None, :]  # [..., 1, runs]
    return (runs > np.asarray(thresholds, dtype=float)[:, None]).mean(axis=-1)


# ---------------------------------------------------------------------------- bootstrap


def resample(scores: Scores, reps: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """A stratified bootstrap: each game's runs drawn with replacement, within that game only.
    `{game: [runs]}` -> `{game: [reps, runs]}`; games in sorted order, so a seed fixes it."""
    out = {}
    for g in sorted(scores):
        v = np.asarray(scores[g], dtype=float)
        if v.ndim != 1 or v.size == 0:
            raise ValueError(f"{g}: runs must be a non-empty 1-d array, got shape {v.shape}")
        out[g] = v[rng.integers(0, v.size, size=(reps, v.size))]
    return out


def _interval(point, replicates: np.ndarray, level: float) -> dict:
    """The percentile interval of the replicates (rliable's default method)."""
    tail = 100 * (1 - level) / 2
    lo, hi = np.percentile(replicates, [tail, 100 - tail], axis=0)
    as_out = (lambda v: float(v)) if np.ndim(point) == 0 else (lambda v: np.asarray(v).tolist())
    return {"point": as_out(point), "lo": as_out(lo), "hi": as_out(hi)}


def interval(
    scores: Scores,
    aggregate: Callable[[Scores], np.ndarray],
    reps: int = REPS,
    seed: int = 0,
    level: float = LEVEL,
) -> dict:
    """`{"point", "lo", "hi"}`: the aggregate of the scores and its stratified-bootstrap
    percentile interval (scalars, or lists for an aggregate with an axis of its own)."""
    rng = np.random.default_rng(seed)
    return _interval(aggregate(scores), aggregate(resample(scores, reps, rng)), level)


def improvement_interval(
    x: Scores, y: Scores, reps: int = REPS, seed: int = 0, level: float = LEVEL
) -> dict:
    """P(X > Y) with its interval; X and Y resampled independently (rliable's
    `StratifiedIndependentBootstrap`)."""
    rng = np.random.default_rng(seed)
    bx, by = resample(x, reps, rng), resample(y, reps, rng)
    return _interval(probability_of_improvement(x, y), probability_of_improvement(bx, by), level)


def profile_interval(
    scores: Scores, thresholds: np.ndarray, reps: int = REPS, seed: int = 0, level: float = LEVEL
) -> dict:
    """The performance profile at each threshold with its pointwise bootstrap band (lists)."""
    return interval(scores, lambda s: performance_profile(s, thresholds), reps, seed, level)


def paired_ratio_interval(
    x: np.ndarray, y: np.ndarray, reps: int = REPS, seed: int = 0, level: float = LEVEL
) -> dict:
    """mean(x) / mean(y) of paired scores (x[i] and y[i] played from the same start) with the
    percentile interval of a bootstrap that resamples the pairs, with replacement."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if x.shape != y.shape or x.ndim != 1 or x.size == 0:
        raise ValueError(f"paired scores: two 1-d arrays of one length, got {x.shape}, {y.shape}")
    idx = np.random.default_rng(seed).integers(0, x.size, size=(reps, x.size))
    return _interval(x.mean() / y.mean(), x[idx].mean(axis=1) / y[idx].mean(axis=1), level)


# ---------------------------------------------------------------------------- results.json


def grouping(rows: Sequence[dict]) -> tuple[str, ...]:
    """The keys of `GROUP_KEYS` whose values differ between a stage's rows (losses: loss;
    compression: net; multitask: method); the one key present when none differ."""
    present = [k for k in GROUP_KEYS if any(k in r for r in rows)]
    varying = tuple(k for k in present if len({r.get(k) for r in rows}) > 1)
    return varying or tuple(present[:1])


def from_rows(
    rows: Sequence[dict], by: tuple[str, ...] = ("loss",), value: str = "percent_of_teacher"
) -> dict[str, dict[str, np.ndarray]]:
    """Per-seed rows -> `{group: {game: [runs]}}`, runs in seed order; a group is the row's
    values of `by` joined with "/"."""
    out: dict[str, dict[str, list]] = {}
    for r in sorted(rows, key=lambda r: r.get("seed", 0)):
        out.setdefault(_group(r, by), {}).setdefault(r["game"], []).append(float(r[value]))
    return {k: {g: np.asarray(v) for g, v in games.items()} for k, games in out.items()}


def _group(row: dict, by: tuple[str, ...]) -> str:
    """A row's group: its values of `by` joined with "/"."""
    return "/".join(str(row[k]) for k in by)


def still_learning(rows: Sequence[dict], by: tuple[str, ...]) -> dict[str, list[int]]:
    """Per group: `[runs still learning when they stopped, runs of all games]` (a run is a row;
    `still_learning` is `plateau.still_learning`'s flag, absent where a curve could not tell)."""
    out: dict[str, list[int]] = {}
    for r in rows:
        count = out.setdefault(_group(r, by), [0, 0])
        count[0] += r.get("still_learning") is True
        count[1] += 1
    return out


def _runs(scores: Scores) -> int:
    """The fewest runs any game has."""
    return min(np.asarray(v).size for v in scores.values())


def summarise_stage(
    stage_name: str, stage_result: dict, reps: int = REPS, seed: int = 0, level: float = LEVEL
) -> dict | None:
    """A stage's aggregates with intervals per group, P(X > Y) for its pairs (`PAIRS`, and each
    group against the teacher's score), and the profile of % of teacher; None for a stage
    without per-game rows (teachers, online). Every interval uses the same `seed`."""
    rows = [r for r in stage_result.get("rows", []) if "game" in r and "percent_of_teacher" in r]
    if not rows or not any(k in rows[0] for k in GROUP_KEYS):
        return None
    by = grouping(rows)
    pct = from_rows(rows, by)
    norm = from_rows(rows, by, "random_normalised")
    learning = still_learning(rows, by)
    groups = {}
    for name, scores in pct.items():
        groups[name] = {
            "games": len(scores),
            "runs": _runs(scores),
            "still_learning": learning.get(name, [0, 0]),
            "iqm": interval(scores, aggregate_iqm, reps, seed, level),
            "geometric_mean": interval(scores, geometric_mean, reps, seed, level),
            "normalised_mean": interval(norm[name], mean, reps, seed, level),
        }
    reference = {g: np.array([100.0]) for g in next(iter(pct.values()))}
    candidates = [*PAIRS.get(stage_name, []), *((name, REFERENCE) for name in pct)]
    improvement = []
    for x, y in candidates:
        if x in pct and (y in pct or y == REFERENCE):
            ys = reference if y == REFERENCE else pct[y]
            est = improvement_interval(pct[x], ys, reps, seed, level)
            improvement.append({"x": x, "y": y, **est})
    top = max(150.0, max(float(np.max(v)) for s in pct.values() for v in s.values()))
    thresholds = np.linspace(0.0, 10 * np.ceil(top / 10), 121)
    profile = {name: profile_interval(s, thresholds, reps, seed, level) for name, s in pct.items()}
    return {
        "stage": stage_name,
        "by": list(by),
        "level": level,
        "reps": reps,
        "seed": seed,
        "groups": groups,
        "improvement": improvement,
        "profile": {"thresholds": thresholds.tolist(), "groups": profile},
    }


def summarise(results: dict, reps: int = REPS, seed: int = 0, level: float = LEVEL) -> dict:
    """`{stage: summary}` for every stage of a results.json's "results" with per-game rows."""
    out = {}
    for name, stage in results.items():
        summary = (
            summarise_stage(name, stage, reps, seed, level) if isinstance(stage, dict) else None
        )
        if summary is not None:
            out[name] = summary
    return out
