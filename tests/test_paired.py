"""Paired evaluation (`distill.experiments.paired`): a student and its teacher share evaluation
keys, the reference's stopping rule against hand-computed cases, and the reference cache."""

import types

import jax
import numpy as np
import pytest

from distill import checkpoint, evaluate, paths
from distill.experiments import paired

GAME = "Breakout-MinAtar"


@pytest.fixture(scope="module")
def shipped():
    return checkpoint.load(paths.shipped_teacher(GAME), env_id=GAME)


def test_a_copy_of_the_teacher_scores_the_teachers_episodes(shipped):
    teacher = paired.teacher_scores(shipped, 8)
    copies = jax.tree_util.tree_map(lambda x: np.stack([x, x]), shipped.params)
    students = paired.student_scores(GAME, "teacher", copies, 8)
    assert students.shape == (2, 8)
    np.testing.assert_array_equal(students[0], teacher)
    np.testing.assert_array_equal(students[1], teacher)
    # the episodes differ from one another (each has its own key), and the first N of the
    # cached high-precision reference are these same N episodes
    assert len(set(teacher.tolist())) > 1
    reference = paired.teacher_reference(shipped, paths.runs_dir(), compute=False)
    np.testing.assert_array_equal(reference["episode_scores"][:8], teacher)


def test_episode_keys_are_a_prefix_schedule():
    long = evaluate.episode_keys(7, 0, 10)
    np.testing.assert_array_equal(evaluate.episode_keys(7, 0, 4), long[:4])
    np.testing.assert_array_equal(evaluate.episode_keys(7, 4, 6), long[4:])
    assert not np.array_equal(evaluate.episode_keys(8, 0, 4), long[:4])


def alternating(start: int, n: int) -> np.ndarray:
    """Episode e scores 10 + 3 (-1)^e: over an even n the mean is 10 and the sample variance
    9 n / (n - 1), so se = 3 / sqrt(n - 1) <= 0.3 first at n = 101."""
    e = np.arange(start, start + n)
    return 10.0 + 3.0 * (-1.0) ** e


def test_reference_stops_at_the_first_batch_within_3_percent():
    calls = []

    def play(start, n):
        calls.append((start, n))
        return alternating(start, n)

    scores = evaluate.precise_scores(play, rel_se=0.03, batch=10, cap=1_000)
    assert scores.size == 110  # the first multiple of 10 at or past 101
    assert calls == [(s, 10) for s in range(0, 110, 10)]
    assert evaluate.standard_error(scores) <= 0.03 * scores.mean()
    assert evaluate.standard_error(scores[:100]) > 0.03 * scores[:100].mean()
    assert evaluate.standard_error(scores) == pytest.approx(3 / np.sqrt(109))


def test_reference_respects_the_cap():
    noisy = lambda start, n: alternating(start, n) * 100 - 995  # noqa: E731  mean 5, std 300
    scores = evaluate.precise_scores(noisy, rel_se=0.03, batch=30, cap=100)
    assert scores.size == 100  # 30 + 30 + 30 + the last 10 up to the cap
    np.testing.assert_array_equal(scores, noisy(0, 100))


def fake_policy(folder, sha: str):
    return types.SimpleNamespace(
        env_id=GAME, path=str(folder), manifest={"files": {checkpoint.PARAMS: sha}}
    )


def test_reference_cache_is_used_when_its_identity_matches(tmp_path, monkeypatch):
    measured = []

    def measure(policy):
        measured.append(policy.manifest["files"][checkpoint.PARAMS])
        return {"identity": paired.reference_identity(policy), "episodes": 3, "mean": 1.0}

    monkeypatch.setattr(paired, "measure_reference", measure)
    runs = tmp_path / "runs"
    first = paired.teacher_reference(fake_policy(tmp_path / "t", "a" * 64), runs)
    path = paired.reference_path(fake_policy(tmp_path / "t", "a" * 64), runs)
    assert path.exists() and path.parent == runs / "references"
    again = paired.teacher_reference(fake_policy(tmp_path / "t", "a" * 64), runs)
    assert measured == ["a" * 64] and again == first  # read back, not measured again
    # another teacher's parameters with the same file name: the cache is refused
    path.rename(paired.reference_path(fake_policy(tmp_path / "t", "b" * 64), runs))
    other = paired.teacher_reference(fake_policy(tmp_path / "t", "b" * 64), runs)
    assert measured == ["a" * 64, "b" * 64]
    assert other["identity"]["teacher_params_sha256"] == "b" * 64
    assert paired.teacher_reference(fake_policy(tmp_path / "t", "c" * 64), runs, False) == {}


@pytest.mark.parametrize(
    "game", ["Breakout-MinAtar", "SpaceInvaders-MinAtar", "Asterix-MinAtar", "Freeway-MinAtar"]
)
def test_shipped_references_match_their_teachers(game):
    policy = checkpoint.load(paths.shipped_teacher(game), env_id=game)
    ref = paired.teacher_reference(policy, paths.runs_dir(), compute=False)
    assert paired.reference_path(policy, paths.runs_dir()).parent == paths.shipped_teacher(game)
    assert ref["episodes"] == len(ref["episode_scores"]) >= paired.BATCH[True]
    assert ref["se"] <= paired.REL_SE * abs(ref["mean"]) or ref["episodes"] == paired.CAP[True]
    assert ref["mean"] == pytest.approx(np.mean(ref["episode_scores"]))
