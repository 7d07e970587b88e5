"""`distill reproduce`: the paper's experiments end to end, a report beside the paper's numbers.

Stages run in order and each lands in `OUT/<stage>/` with a `stage.json` written last; a re-run
skips every stage whose `stage.json` says it finished with the same suite and budget, and the
long steps inside a stage (teachers, datasets) resume from their own checkpoints.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import platform
import threading
import time
from pathlib import Path

from distill import checkpoint, claims, cliconf, experiments, paths, report, stats, tb, xla

SUITES = experiments.SUITES  # suite -> budget name -> Budget

# Atari students are slow on a CPU: the compression sweep (KL students of every size, the paper's
# main table) comes first there, so that a run cut short has it
FIRST = {"atari": ("compression",)}


def stages_for(suite: str, b: experiments.Budget) -> list[str]:
    """The teachers, then every registered experiment that the suite and budget run."""
    names = [e.name for e in experiments.EXPERIMENTS.values() if suite in e.suites and e.applies(b)]
    first = [n for n in FIRST.get(suite, ()) if n in names]
    return ["teachers", *first, *(n for n in names if n not in first)]


def _machine() -> dict:
    import os

    import jax

    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "jax_backend": jax.default_backend(),
        "devices": [str(d) for d in jax.devices()],
        "compiler_options": xla.compiler_options(),
    }


def _teachers(b: experiments.Budget, runs_dir: Path, progress: bool) -> dict:
    """The first stage: every game's teacher (shipped or trained) and its reference scores."""
    experiments.common.check_teachers(b.games, b)  # as `reproduce` does, for direct calls
    rows = []
    for env_id in b.games:
        policy = experiments.ensure_teacher(env_id, b, runs_dir, progress)
        t, r = experiments.reference_scores(policy, b)
        reference = experiments.paired.teacher_reference(policy, runs_dir)
        rows.append(
            {
                "game": env_id,
                "teacher": paths.shown(policy.path),
                "env_steps": policy.manifest.get("env_steps"),
                "teacher_score": t,  # on the budget's paired evaluation episodes
                "random_score": r,
                **experiments.paired.reference_columns(reference),
            }
        )
    return {"rows": rows}


def _run_stage(
    stage: str, b: experiments.Budget, runs_dir: Path, progress: bool, mesh=None
) -> dict:
    if stage == "teachers":
        return _teachers(b, runs_dir, progress)
    if stage not in experiments.EXPERIMENTS:
        raise ValueError(f"unknown stage {stage!r}")
    experiment = experiments.EXPERIMENTS[stage]
    result = experiment.run(b, runs_dir=runs_dir, progress=progress, mesh=mesh)
    experiment.write(result, runs_dir / stage)
    return result


# budget fields added after runs were written, at the value those runs had where it is not the
# field's default (the full budget's multi-task DQN and online stage had one run before 3)
BEFORE_FIELD = {"multitask_dqn_seeds": 1, "online_seeds": 1}
# budget fields that only some stages read: the other stages' finished results stay valid when
# they change (`--multitask-dqn-seeds 3` reruns the multi-task stage, not the loss comparison;
# `--fixed-updates` the multi-task and online stages)
STAGE_FIELDS = {
    "compression": ("compression_nets",),
    "multitask": ("multitask_dqn_steps", "multitask_dqn_seeds", "multitask_net", "fixed_updates"),
    "online": (
        "fixed_updates",
        "online_teacher_steps",
        "online_rounds",
        "online_rows_per_round",
        "online_window_rounds",
        "online_seeds",
    ),
}


def _stage_view(budget: dict, stage: str) -> dict:
    """The budget's fields that `stage` reads (all but those that only other stages read,
    `STAGE_FIELDS`)."""
    own = set(STAGE_FIELDS.get(stage, ()))
    others = {f for s, fields in STAGE_FIELDS.items() if s != stage for f in fields} - own
    return {k: v for k, v in budget.items() if k not in others}


def _same_key(done: dict | None, key: dict, stage: str) -> bool:
    """A finished stage's key against this run's: the same suite and the same budget fields
    that the stage reads (`_stage_view`), where a field the finished stage's version did not
    have yet counts at the value runs had before it existed (`BEFORE_FIELD`, else its default):
    fields added later, such as `regime` or `teachers`, leave an older run's stages valid."""
    if not isinstance(done, dict) or not isinstance(done.get("budget"), dict):
        return False
    defaults = {
        f.name: f.default
        for f in dataclasses.fields(experiments.Budget)
        if f.default is not dataclasses.MISSING
    }
    filled = json.loads(json.dumps({**defaults, **BEFORE_FIELD, **done["budget"]}))
    return done.get("suite") == key["suite"] and _stage_view(filled, stage) == _stage_view(
        key["budget"], stage
    )


class StageClock:
    """A stage's wall and CPU seconds summed over every session that ran it: `OUT/<stage>/
    clock.json`, rewritten every `every` seconds while the stage runs, so that a stage
    interrupted (a session ending kills its processes) and resumed still reports its whole time.
    A clock written for another key (the stage run again with another budget) starts from zero.
    CPU seconds count this process's threads; beside the wall time they show how much of the
    machine the stage had (other jobs running at the same time make the wall time longer)."""

    def __init__(
        self, folder: Path, key: dict | None = None, every: float = 30.0, stage: str | None = None
    ):
        self.path, self.key, self.every = folder / "clock.json", key, every
        before = _read_clock(self.path, key, stage)
        self.wall_before, self.cpu_before = before["wall_s"], before["cpu_s"]
        self.sessions = before["sessions"] + 1
        self._stop, self._final = threading.Event(), None

    def __enter__(self) -> StageClock:
        self.t0, self.c0 = time.perf_counter(), time.process_time()
        self.write()
        self._thread = threading.Thread(target=self._tick, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self._final = self.totals()  # what the file and the stage's marker both record
        try:
            self.write()
        except OSError:
            if exc[0] is None:  # the stage's own error, if any, is the one to see
                raise

    def _tick(self) -> None:
        while not self._stop.wait(self.every):
            # disk full for a moment: the next tick or the exit writes again
            with contextlib.suppress(OSError):
                self.write()

    def totals(self) -> dict:
        if self._final is not None:
            return self._final
        return {
            "wall_s": round(self.wall_before + time.perf_counter() - self.t0, 1),
            "cpu_s": round(self.cpu_before + time.process_time() - self.c0, 1),
            "sessions": self.sessions,
        }

    def write(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        checkpoint.atomic_write_json(self.path, {**self.totals(), "key": self.key})


def _read_clock(path: Path, key: dict | None = None, stage: str | None = None) -> dict:
    """A stage clock's totals so far: zero where none was written or it was written for another
    key (for a named `stage`, another key as `_same_key` compares them); a damaged one is
    refused by name."""
    zero = {"wall_s": 0.0, "cpu_s": 0.0, "sessions": 0}
    if not path.exists():
        return zero
    try:
        clock = json.loads(path.read_text())
        totals = {k: float(clock[k]) for k in ("wall_s", "cpu_s")}
        totals["sessions"] = clock["sessions"]
        ok = all(math.isfinite(v) and v >= 0 for v in totals.values())
        if not ok or not isinstance(clock["sessions"], int) or clock["sessions"] < 0:
            raise ValueError(f"totals {totals} are not counts of seconds and sessions")
    except (ValueError, KeyError, TypeError) as e:
        raise checkpoint.CheckpointError(
            f"{path} is damaged ({e}); delete it to restart the stage's clock"
        ) from None
    # the first clocks had no key: they count for the run they sit in; one written when the
    # stage read other fields (`STAGE_FIELDS` since changed) counts where `_same_key` says so
    stored = clock.get("key", key)
    same = stored == key or (stage in STAGE_ORDER and _same_key(stored, key, stage))
    return totals if same else zero


def reproduce(
    suite: str,
    budget_name: str,
    out: str | Path,
    progress: bool = True,
    mesh=None,
    only: tuple[str, ...] | None = None,
    overrides: dict | None = None,
) -> Path:
    """Run (or resume) every stage; write OUT/report.md and OUT/results.json. Returns OUT.

    `mesh` (a `jax.sharding.Mesh`, see `distill.sharding`) splits the students' seeds and
    minibatches across devices; None runs on one device. `only` names the stages to run; the
    others are left as they are (their finished results still go into the report), so that
    independent stages can run in separate processes. `overrides` changes fields of the budget
    (`{"seeds": 5}`); finished stages of another budget are run again."""
    from distill.config import ConfigError

    if suite not in SUITES:
        raise ConfigError(f"suite={suite!r} is not valid: choose one of {list(SUITES)}")
    if budget_name not in SUITES[suite]:
        raise ConfigError(f"budget={budget_name!r} is not valid: choose smoke, quick or full")
    b = dataclasses.replace(SUITES[suite][budget_name], **(overrides or {}))
    experiments.common.check_teachers(b.games, b)  # a teacher it cannot train, before all else
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    stages = stages_for(suite, b)
    unknown = sorted(set(only or ()) - set(stages))
    if unknown:
        raise ConfigError(f"stages={unknown} not in the {suite} suite's stages {stages}")
    for stage in stages[1:]:  # a budget a stage cannot run, before any stage runs
        if only is None or stage in only:
            experiments.EXPERIMENTS[stage].check(b)
    # as it reads back from JSON (tuples become lists), to compare with finished stages' keys
    key = json.loads(json.dumps({"suite": suite, "budget": dataclasses.asdict(b)}))
    results, timings, cpu = {}, {}, {}
    meta = {
        "suite": suite,
        "budget": dataclasses.asdict(b),
        "machine": _machine(),
        "versions": checkpoint.versions(),
        "stage_wall_s": timings,  # summed over the sessions that ran each stage
        "stage_cpu_s": cpu,
        "stages": stages,
        "asked": list(stages if only is None else only),  # --stages (all by default)
        "command": f"distill reproduce --suite {suite} --budget {budget_name} --out {out}"
        + (f" --stages {','.join(only)}" if only else "")
        + "".join(f" {cliconf.flag(k)} {cliconf.shown(v)}" for k, v in (overrides or {}).items()),
    }
    for i, stage in enumerate(stages, 1):
        marker = out / stage / "stage.json"
        if marker.exists():
            done = json.loads(marker.read_text())
            if _same_key(done.get("key"), key, stage) and done.get("status") == "complete":
                print(f"[{i}/{len(stages)}] {stage}: finished before, skipped", flush=True)
                results[stage], timings[stage] = done["result"], done["wall_s"]
                if "cpu_s" in done:
                    cpu[stage] = done["cpu_s"]
                write_outputs(out, meta, results)
                continue
        if only is not None and stage not in only:
            print(f"[{i}/{len(stages)}] {stage}: not asked for, left", flush=True)
            continue
        print(f"[{i}/{len(stages)}] {stage} ...", flush=True)
        # the clock's key: the budget fields this stage reads (as a finished stage is matched)
        stage_key = {**key, "budget": _stage_view(key["budget"], stage)}
        with StageClock(out / stage, stage_key, stage=stage) as clock:
            result = _run_stage(stage, b, out, progress, mesh)
        spent = clock.totals()
        timings[stage], cpu[stage], results[stage] = spent["wall_s"], spent["cpu_s"], result
        checkpoint.atomic_write_json(
            marker,
            {"status": "complete", "key": key, **spent, "result": result},
        )
        print(
            f"[{i}/{len(stages)}] {stage}: done in {timings[stage]:.0f} s"
            + (f" over {spent['sessions']} sessions" if spent["sessions"] > 1 else ""),
            flush=True,
        )
        # the report so far: an interrupted run still leaves every finished stage's tables
        summaries = write_outputs(out, meta, results)
        tb.log_stage(out / tb.FOLDER, i, stage, timings[stage], summaries.get(stage))
    write_outputs(out, meta, results)  # also when no stage ran or was finished before
    return out


def write_outputs(out: Path, meta: dict, results: dict) -> dict:
    """OUT/results.json, OUT/report.md and OUT/stats/ for the stages finished so far.

    The report's claims section and OUT/stats (stats.md, stats.json, interval figures) are
    `distill stats OUT/results.json --out OUT/stats`: 95 % stratified-bootstrap intervals and
    a verdict per claim of the paper.
    """
    checkpoint.atomic_write_json(out / "results.json", {"meta": meta, "results": results})
    summaries = stats.summarise(results)
    found = claims.verdicts(results, summaries)
    claims.write(summaries, found, out / "stats")
    text = render_report(meta, results, claims.render_markdown(summaries, found))
    checkpoint.atomic_write_text(out / "report.md", text)
    return summaries


def _in_stage_order(meta: dict) -> list[str]:
    """Timed stages in the order they run (results.json stores its keys sorted)."""
    order = meta.get("stages") or list(STAGE_ORDER)
    return sorted(meta["stage_wall_s"], key=lambda s: order.index(s) if s in order else len(order))


def _cpu_note(meta: dict) -> str:
    """The stages' CPU seconds, where the run recorded them (older results.json did not)."""
    cpu = meta.get("stage_cpu_s") or {}
    if not cpu:
        return ""
    return (
        "  \nCPU time per stage (s, this process's threads): "
        + ", ".join(f"{k} {cpu[k]:.0f}" for k in _in_stage_order(meta) if k in cpu)
        + f"; total {sum(cpu.values()):.0f}"
    )


def _options_note(options: dict | None) -> str:
    """The XLA compiler options of the run (distill.xla), where it recorded any."""
    return f", XLA options {options}" if options else ""


# the order of results.json files that do not record their stages
STAGE_ORDER = ("teachers", *experiments.EXPERIMENTS)


def render_report(meta: dict, results: dict, claims_section: str = "") -> str:
    """The markdown report: the claims' verdicts with their intervals, then every table beside
    the paper's numbers, with the run's facts."""
    b = meta["budget"]
    lines = [
        f"# Policy distillation, reproduced: {meta['suite']} suite, {b['name']} budget"
        + (f", {b['teachers']} teachers" if b.get("teachers", "small") != "small" else ""),
        "",
        f"Command: `{meta['command']}`  ",
        f"Machine: {meta['machine']['platform']}, {meta['machine']['cpus']} CPUs, "
        f"JAX backend {meta['machine']['jax_backend']}"
        + _options_note(meta["machine"].get("compiler_options"))
        + "  ",
        "Versions: " + ", ".join(f"{k} {v}" for k, v in meta["versions"].items()),
        "",
        "Budget: " + ", ".join(f"{k}={v}" for k, v in b.items()),
        "",
        "Wall time per stage (s, summed over the sessions that ran it): "
        + ", ".join(f"{k} {meta['stage_wall_s'][k]:.0f}" for k in _in_stage_order(meta))
        + f"; total {sum(meta['stage_wall_s'].values()):.0f}"
        + _cpu_note(meta),
        "",
    ]
    stages = meta.get("stages", [])
    asked = meta.get("asked", stages)
    missing = [s for s in stages if s not in results and s in asked]
    if missing:
        lines += [
            f"**Unfinished, not run yet: {', '.join(missing)}** (run the command again to "
            "continue; finished students are kept in `students/`).",
            "",
        ]
    left = [s for s in stages if s not in results and s not in asked]
    if left:
        lines += [f"Not asked for (`--stages`): {', '.join(left)}.", ""]
    if claims_section:
        lines += [claims_section, ""]
    lines += [
        "Scores are mean undiscounted returns under the evaluation protocol (epsilon 0.05; "
        "no-op starts on Atari, gymnax's randomised starts on MinAtar; the paper used human "
        "starts on Atari, which are not available here). '% of teacher' = student / teacher; "
        "'normalised' = (student - random) / (teacher - random).",
        "",
    ]
    if "teachers" in results:
        columns = [
            "game",
            "teacher",
            "env_steps",
            "teacher_score",
            "random_score",
            "reference_score",
            "reference_se",
            "reference_episodes",
        ]
        lines += [
            "## Teachers",
            "",
            report.markdown_table(results["teachers"]["rows"], columns),
            "",
        ]
    for name, experiment in experiments.EXPERIMENTS.items():
        if name in results:
            lines += experiment.report_section(results[name])
    return "\n".join(lines)
