"""One runner for every long job (Dopamine's Runner is the model).

A job (a teacher, a student, a dataset, the multi-task DQN) says what it is and how to take a
step; `run(job, folder)` does the rest, the same way for all of them:

    folder holds a run?   no: state = job.init()
                          finished: return job.reload(folder, manifest)
                          unfinished, same identity: state = job.restore(job.init(), ...)
                          otherwise refused (checkpoint.previous_run's messages)
    state = job.start(state)                  place on devices, open emulators
    until job.done(state) == job.total:
        state, rows, watched = job.advance(state, n)          n <= job.chunk
        a non-finite watched value: FloatingPointError naming the step (nothing is written,
            so the last good checkpoint stays)
        every checkpoint_every_s seconds (0: after every chunk), the first one already once
            first_checkpoint_s have passed, and on SIGINT/SIGTERM: a 'running' checkpoint of
            job.files(state), then state = job.written(state); on a signal, Interrupted
    the 'complete' checkpoint, with job.finish(state, rows); return job.result(state, folder)

The folder is locked for the whole run (`runs.folder_lock`: one writer; a second is refused at
once with the holder's pid), and a manifest found there is checked against the schema of its
kind (`distill.schema`) before anything in it is used.

With `tb` (the default; `--no-tb` on the command line), every metrics row is also written as
TensorBoard scalars under folder/tb/ (`distill.tb`: CleanRL's tag names, `charts/SPS`).

Every manifest has one shape: the job's identity (what makes a resume legal), `kind`, the
job's counters (`describe`), `status`, `wall_s` (summed over resumed sessions) and `metrics`
(every row `advance` returned); `checkpoint.write_checkpoint` adds the files and versions.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from distill import checkpoint, runs, schema
from distill import tb as tblog
from distill.checkpoint import CheckpointError


class Chunk(NamedTuple):
    """What one `advance` gives back."""

    state: Any
    rows: list[dict]  # metric rows, appended to the manifest and metrics.csv/json
    watched: dict[str, Any] = {}  # label ('TD loss') -> values that must all be finite


class Job:
    """What a long job supplies to `run`; subclasses set the attributes and override methods.

    Counts are in the job's own steps (`advance`'s n): vector-env steps, updates, dataset rows.
    """

    kind: str = "job"  # the manifest's 'kind'; a folder holding another kind is refused
    what: str = "job"  # in messages: 'teacher', 'student', 'dataset'
    made_from: str = "another config"  # why a refused resume is refused
    step_name: str = "step"  # what `at` counts, in messages: 'env step', 'update'
    unit: str = "step"  # the progress bar's unit
    desc: str = ""  # the progress bar's label
    total: int = 0  # steps in the whole run
    chunk: int = 1  # steps per `advance` at most
    scale: int = 1  # progress-bar units (and `at` units) per step
    checkpoint_every_s: float = 120.0  # 0: after every chunk
    # the first checkpoint comes early, so a run killed in its first minutes keeps something
    first_checkpoint_s: float = 10.0
    state_file: str = checkpoint.TRAIN_STATE  # the file a running checkpoint resumes from
    keep_state_file: bool = False  # keep it in the finished checkpoint
    resume_hint: str = "continue with --resume"

    def identity(self) -> dict:
        """Manifest entries that a resumed run must match (config, source fingerprints)."""
        return {}

    def matches(self, manifest: dict) -> bool:
        return all(manifest.get(k) == v for k, v in self.identity().items())

    def init(self) -> Any:
        raise NotImplementedError

    def restore(self, state: Any, folder: Path, manifest: dict) -> Any:
        """The saved running state, read into the shape of the fresh `state`."""
        data = checkpoint.read_verified(folder, self.state_file, manifest)
        where = str(checkpoint.path_of(folder, self.state_file, manifest))
        return checkpoint.pytree_from_bytes(data, state, where)

    def start(self, state: Any) -> Any:
        """Called once before the first `advance` (place on devices, open emulators)."""
        return state

    def done(self, state: Any) -> int:
        raise NotImplementedError

    def at(self, state: Any) -> int:
        """Where the run is, in `step_name`s, for messages."""
        return self.done(state) * self.scale

    def advance(self, state: Any, n: int) -> Chunk:
        raise NotImplementedError

    def files(self, state: Any, final: bool) -> dict[str, bytes]:
        """The files of a running (`final` False) or finished checkpoint."""
        return {} if final and not self.keep_state_file else {self.state_file: _bytes(state)}

    def written(self, state: Any) -> Any:
        """The state once its files are on disk (a job holding unsaved files drops them)."""
        return state

    def describe(self, state: Any) -> dict:
        """Manifest entries that say where the run is (counters, env, network)."""
        return {}

    def postfix(self, rows: list[dict]) -> dict:
        """The progress bar's postfix after a chunk that produced rows."""
        return {}

    def carried(self) -> tuple[list[dict], float]:
        """Metrics rows and wall seconds a fresh run starts from (a run continued elsewhere)."""
        return [], 0.0

    def finish(self, state: Any, rows: list[dict]) -> dict:
        """Entries of the finished manifest only (an evaluation, a final score)."""
        return {}

    def reload(self, folder: Path, manifest: dict) -> Any:
        """What a finished run found in `folder` returns (resume=True)."""
        return checkpoint.load(folder)

    def result(self, state: Any, folder: Path | None) -> Any:
        """What `run` returns after finishing."""
        return checkpoint.load(folder)

    def saved(self, state: Any) -> str:
        """The start of the Interrupted message, after a checkpoint was written."""
        return f"checkpoint saved at {self.step_name} {self.at(state)}"

    def close(self) -> None:
        """Release what `start` opened; called however the run ends."""


def _bytes(state: Any) -> bytes:
    return checkpoint.pytree_to_bytes(state)


def policy_files(params: Any, state: Any, final: bool) -> dict[str, bytes]:
    """A policy's checkpoint: params.npz, and train_state.npz while it trains."""
    files = {checkpoint.PARAMS: _bytes(params)}
    if not final:
        files[checkpoint.TRAIN_STATE] = _bytes(state)
    return files


def non_finite(watched: dict[str, Any]) -> str | None:
    """The label of the first watched value that is NaN or infinite, if any."""
    for label, value in watched.items():
        if not np.isfinite(np.asarray(value, dtype=np.float64)).all():
            return label
    return None


def previous(job: Job, folder: Path, resume: bool) -> dict | None:
    """The manifest of the run in `folder` (None: none); another kind or identity is refused."""
    if (folder / checkpoint.MANIFEST).exists():
        manifest = checkpoint.read_manifest(folder)
        schema.check_kind(manifest, folder / checkpoint.MANIFEST, folder, job.kind, job.what)
        schema.validate_kind(manifest, folder / checkpoint.MANIFEST, job.kind)
    return checkpoint.previous_run(folder, resume, job.what, job.matches, job.made_from)


def restore(job: Job, state: Any, folder: Path, manifest: dict) -> Any:
    """`job.restore`, naming the folder as damaged when its running state cannot be read."""
    try:
        return job.restore(state, folder, manifest)
    except CheckpointError as e:
        raise CheckpointError(
            f"{e}; {folder} is damaged and cannot be resumed: start again in another --out"
        ) from None


def run(
    job: Job,
    folder: str | Path | None,
    *,
    resume: bool = False,
    progress: bool = True,
    tb: bool = True,
) -> Any:
    """Run `job` to its end in `folder` (None: in memory, no checkpoints); see the module doc.

    With `tb` (and a folder), every metrics row is also logged for TensorBoard in folder/tb/
    (`distill.tb`: CleanRL's tag names, and the job's steps per second).
    """
    if folder is None:
        return _run(job, None, resume, progress, False)
    with runs.folder_lock(Path(folder)):
        return _run(job, Path(folder), resume, progress, tb)


def manifest_of(job: Job, state: Any, status: str, rows: list[dict], wall_s: float) -> dict:
    """The one manifest shape (before `write_checkpoint` adds files and versions)."""
    return {
        "kind": job.kind,
        **job.describe(state),
        **job.identity(),
        "status": status,
        "wall_s": round(wall_s, 3),
        "metrics": rows,
    }


def check_finite(job: Job, state: Any, watched: dict, folder: Path | None, written: bool):
    """The NaN/Inf stop: raise FloatingPointError naming the value and the step, if any."""
    bad = non_finite(watched)
    if bad is not None:
        kept = (
            f"the last good checkpoint in {folder} is kept"
            if written
            else "no checkpoint was written"
        )
        raise FloatingPointError(f"non-finite {bad} at {job.step_name} {job.at(state)}; {kept}")


def _run(job: Job, folder: Path | None, resume: bool, progress: bool, tb: bool) -> Any:
    from tqdm.auto import tqdm

    state = job.init()
    rows, wall_before = job.carried()
    manifest = None if folder is None else previous(job, folder, resume)
    if manifest is not None:
        if manifest.get("status") == "complete":
            return job.reload(folder, manifest)
        state = restore(job, state, folder, manifest)
        rows = list(manifest.get("metrics", []))
        wall_before = float(manifest.get("wall_s", 0.0))
    written = manifest is not None
    start = last_save = time.perf_counter()

    def save(state, status: str, extra: dict | None = None) -> None:
        final = status == "complete"
        wall = wall_before + time.perf_counter() - start
        manifest = {**manifest_of(job, state, status, rows, wall), **(extra or {})}
        drop = (job.state_file,) if final and not job.keep_state_file else ()
        checkpoint.write_checkpoint(folder, job.files(state, final), manifest, drop)
        runs.write_metrics(folder, rows)

    bar = log = None
    try:
        state = job.start(state)
        done = job.done(state)
        if tb:
            log = tblog.JobLog(folder / tblog.FOLDER, job.kind, job.at(state))
        bar = tqdm(
            total=job.total * job.scale,
            initial=done * job.scale,
            unit=job.unit,
            unit_scale=True,
            desc=job.desc,
            disable=not progress,
        )
        with runs.stop_on_signals() as stop:
            while done < job.total:
                n = min(job.chunk, job.total - done)
                state, new_rows, watched = job.advance(state, n)
                check_finite(job, state, watched, folder, written)
                done = job.done(state)
                rows.extend(new_rows)
                if log is not None:
                    log.log(new_rows, job.at(state))
                bar.update(n * job.scale)
                if new_rows:
                    bar.set_postfix(job.postfix(rows))
                now = time.perf_counter()
                every = job.checkpoint_every_s
                if not written:
                    every = min(every, job.first_checkpoint_s)
                if folder is not None and (stop.requested or now - last_save >= every):
                    save(state, "running")
                    state = job.written(state)
                    written, last_save = True, now
                if stop.requested and done < job.total:
                    raise runs.Interrupted(
                        f"{stop.signal_name}: {job.saved(state)} in {folder}; {job.resume_hint}"
                        if folder is not None
                        else f"{stop.signal_name}: {job.what} stopped at {job.step_name} "
                        f"{job.at(state)}"
                    )
        extra = job.finish(state, rows)
        if folder is not None:
            save(state, "complete", extra)
    finally:
        if bar is not None:
            bar.close()
        if log is not None:
            log.close()
        job.close()
    return job.result(state, folder)
