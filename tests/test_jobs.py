"""The job runner on a toy job: resume or refuse, signals, the NaN/Inf stop, checkpoint cadence,
one manifest shape; and the multi-task DQN's new NaN stop through it."""

from __future__ import annotations

import json

import jax.numpy as jnp
import numpy as np
import pytest

from distill import checkpoint, jobs, runs
from distill import multitask as mt
from distill.checkpoint import CheckpointError
from distill.config import ConfigError


class Counter(jobs.Job):
    """Adds 1.5 per step to `x`; one row per chunk; `x` turns NaN from step `nan_at` on."""

    kind, what = "counter", "counter"
    desc = "counter"

    def __init__(self, total=10, chunk=3, seed=0, nan_at=None, every_s=0.0):
        self.total, self.chunk, self.seed, self.nan_at = total, chunk, seed, nan_at
        self.checkpoint_every_s = every_s

    def identity(self) -> dict:
        return {"config": {"seed": self.seed, "total": self.total}}

    def init(self):
        return {"x": jnp.float32(self.seed), "i": jnp.int32(0)}

    def done(self, state) -> int:
        return int(state["i"])

    def describe(self, state) -> dict:
        return {"steps": self.done(state)}

    def advance(self, state, n):
        i = int(state["i"]) + n
        x = state["x"] + 1.5 * n
        if self.nan_at is not None and i >= self.nan_at:
            x = jnp.float32(jnp.nan)
        state = {"x": x, "i": jnp.int32(i)}
        return jobs.Chunk(state, [{"steps": i, "x": float(x)}], {"x": x})

    def finish(self, state, rows) -> dict:
        return {"final_x": float(state["x"])}

    def reload(self, folder, manifest):
        return manifest["final_x"]

    def result(self, state, folder):
        return float(state["x"])


class StopAtOnce(runs.StopRequest):
    def __init__(self):
        super().__init__()
        self.requested = True
        self.signal_name = "SIGTERM"


def manifest_of(folder):
    return json.loads((folder / checkpoint.MANIFEST).read_text())


def test_a_whole_run_writes_one_manifest_shape(tmp_path):
    folder = tmp_path / "c"
    assert jobs.run(Counter(), folder, progress=False) == 15.0
    m = manifest_of(folder)
    assert m["kind"] == "counter" and m["status"] == "complete"
    assert m["config"] == {"seed": 0, "total": 10} and m["steps"] == 10 and m["final_x"] == 15.0
    assert [r["steps"] for r in m["metrics"]] == [3, 6, 9, 10]
    assert m["wall_s"] >= 0 and set(m["files"]) == set()  # the running state is dropped
    assert not list(folder.glob("train_state*"))
    assert json.loads((folder / "metrics.json").read_text()) == m["metrics"]
    with pytest.raises(ConfigError, match="already holds a finished counter"):
        jobs.run(Counter(), folder, progress=False)
    assert jobs.run(Counter(), folder, resume=True, progress=False) == 15.0  # reload


def test_interrupted_then_resumed_equals_a_whole_run(tmp_path, monkeypatch):
    folder = tmp_path / "c"
    with monkeypatch.context() as m:
        m.setattr(runs, "StopRequest", StopAtOnce)
        with pytest.raises(runs.Interrupted, match=r"^SIGTERM: checkpoint saved at step 3 in "):
            jobs.run(Counter(), folder, progress=False)
    m = manifest_of(folder)
    assert (m["status"], m["steps"], set(m["files"])) == ("running", 3, {checkpoint.TRAIN_STATE})
    with pytest.raises(ConfigError, match="--resume"):
        jobs.run(Counter(), folder, progress=False)
    with pytest.raises(CheckpointError, match="another config"):
        jobs.run(Counter(seed=1), folder, resume=True, progress=False)
    assert jobs.run(Counter(), folder, resume=True, progress=False) == 15.0
    whole = tmp_path / "whole"
    jobs.run(Counter(), whole, progress=False)
    rows = [manifest_of(f)["metrics"] for f in (folder, whole)]
    assert rows[0] == rows[1]


def test_a_stop_after_the_last_chunk_finishes(tmp_path, monkeypatch):
    monkeypatch.setattr(runs, "StopRequest", StopAtOnce)
    assert jobs.run(Counter(total=3), tmp_path / "c", progress=False) == 4.5
    assert manifest_of(tmp_path / "c")["status"] == "complete"


def test_a_folder_of_another_kind_is_refused(tmp_path):
    folder = tmp_path / "t"
    checkpoint.write_checkpoint(folder, {}, {"kind": "teacher", "status": "complete"})
    with pytest.raises(CheckpointError, match=r"holds a 'teacher', not a counter"):
        jobs.run(Counter(), folder, resume=True, progress=False)


def test_non_finite_stops_naming_the_step_and_keeps_the_last_checkpoint(tmp_path, monkeypatch):
    folder = tmp_path / "c"
    with monkeypatch.context() as m:
        m.setattr(runs, "StopRequest", StopAtOnce)
        with pytest.raises(runs.Interrupted):
            jobs.run(Counter(), folder, progress=False)
    before = (folder / checkpoint.MANIFEST).read_text()
    with pytest.raises(FloatingPointError, match=r"^non-finite x at step 6; the last good checkp"):
        jobs.run(Counter(nan_at=5), folder, resume=True, progress=False)
    assert (folder / checkpoint.MANIFEST).read_text() == before
    fresh = tmp_path / "fresh"
    with pytest.raises(FloatingPointError, match="at step 3; no checkpoint was written"):
        jobs.run(Counter(nan_at=1), fresh, progress=False)
    assert not (fresh / checkpoint.MANIFEST).exists()
    with pytest.raises(FloatingPointError, match="at step 3"):
        jobs.run(Counter(nan_at=1), None, progress=False)


@pytest.mark.parametrize(("every_s", "saves"), [(0.0, [3, 6, 9, 10, 10]), (1e9, [10])])
def test_checkpoint_cadence(tmp_path, monkeypatch, every_s, saves):
    written, write = [], checkpoint.write_checkpoint

    def counting(folder, files, manifest, drop=()):
        written.append(manifest["steps"])
        write(folder, files, manifest, drop)

    monkeypatch.setattr(checkpoint, "write_checkpoint", counting)
    jobs.run(Counter(every_s=every_s), tmp_path / "c", progress=False)
    assert written == saves  # the last one is the finished checkpoint


def test_in_memory_run_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert jobs.run(Counter(), None, progress=False) == 15.0
    assert not list(tmp_path.iterdir())
    monkeypatch.setattr(runs, "StopRequest", StopAtOnce)
    with pytest.raises(runs.Interrupted, match=r"^SIGTERM: counter stopped at step 3$"):
        jobs.run(Counter(), None, progress=False)


def fake_multitask_run(nan_from: int):
    """A stand-in for `make_multitask_train`'s run: learns from iteration 4, NaN from nan_from."""

    def run(state, n):
        its = state.iteration + 1 + jnp.arange(n)
        learned = its > 4
        loss = jnp.where(learned, jnp.where(its >= nan_from, jnp.nan, 0.5), jnp.nan)
        new = state._replace(
            iteration=state.iteration + n, updates=state.updates + jnp.sum(learned)
        )
        return new, (jnp.ones((n, 2)), jnp.ones((n, 2), jnp.int32), loss)

    return run


def fake_multitask_state():
    z = jnp.zeros(())
    return mt.MultiTrainState(z, z, z, (z,), (z,), (z,), (z,), z, jnp.int32(0), jnp.int32(0))


def test_multitask_dqn_stops_on_a_non_finite_loss(tmp_path):
    games = ("Breakout-MinAtar", "SpaceInvaders-MinAtar")
    state = fake_multitask_state()
    # NaN losses before learning starts are no fault
    out = mt.train_in_chunks(fake_multitask_run(99), state, 12, games, chunks=4, progress=False)
    assert int(out.iteration) == 12
    kw = dict(chunks=4, progress=False, folder=tmp_path / "dqn", identity={"games": games})
    with pytest.raises(FloatingPointError, match="non-finite TD loss at iteration 9; the last"):
        mt.train_in_chunks(fake_multitask_run(8), state, 12, games, checkpoint_every_s=0, **kw)
    m = checkpoint.read_manifest(tmp_path / "dqn")
    assert (m["status"], m["iteration"]) == ("running", 6)
    assert np.isnan(m["metrics"][0]["loss"]) and m["metrics"][1]["loss"] == 0.5
