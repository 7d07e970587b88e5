"""Shared fixtures: one CartPole teacher and one teacher dataset, made once per test session.

Compiling is most of the cost of these tests, and many tests build the same computation through
a fresh `jax.jit` (every `fit` or `generate` call jits its own closure). A compilation cache in a
fresh temporary folder lets the second such build reuse the first's executable within this
session; nothing is kept between sessions, so every session still compiles from scratch.
"""

from __future__ import annotations

import os
import shutil
import tempfile

import pytest

from distill import dataset, teacher

ENV = "CartPole-v1"
# What experiments.ensure_dataset makes of 40,000 states: 625 rows of 64 envs, in shards of 512
# and 113 rows. Students trained on it have the shapes of the loss comparison's, so the two share
# compiled programs.
DATASET_CONFIG = dataset.DatasetConfig(states=40_000, num_envs=64, seed=0)

_CACHE_DIR: str | None = None


def pytest_configure(config):
    global _CACHE_DIR
    if os.environ.get("JAX_COMPILATION_CACHE_DIR"):
        return  # the caller chose a cache
    import jax

    _CACHE_DIR = tempfile.mkdtemp(prefix="distill-jax-cache-")
    jax.config.update("jax_compilation_cache_dir", _CACHE_DIR)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


def pytest_unconfigure(config):
    if _CACHE_DIR is not None:
        shutil.rmtree(_CACHE_DIR, ignore_errors=True)


@pytest.fixture(scope="session")
def trained_cartpole(tmp_path_factory):
    """The CartPole preset teacher (60k env steps) trained by `teacher.fit`: (folder, policy)."""
    folder = tmp_path_factory.mktemp("shared_teacher") / "cartpole"
    policy = teacher.fit(teacher.default_config(ENV), str(folder), progress=False, eval_episodes=20)
    return folder, policy


@pytest.fixture(scope="session")
def cartpole_dataset(tmp_path_factory, trained_cartpole):
    """That teacher's dataset under DATASET_CONFIG (treat as read-only; copy to damage it)."""
    folder = tmp_path_factory.mktemp("shared_dataset") / "cartpole"
    dataset.generate(str(trained_cartpole[0]), DATASET_CONFIG, str(folder), progress=False)
    return folder


def killed_after(saves: int, write, saved: list, step=lambda args: None):
    """`write` (a checkpoint writer) wrapped to stop like a killed job: each call writes, then
    appends `step(args)` (what it saved) to `saved`, and the `saves`-th raises KeyboardInterrupt."""

    def writer(*args, **kwargs):
        write(*args, **kwargs)
        saved.append(step(args))
        if len(saved) == saves:
            raise KeyboardInterrupt

    return writer
