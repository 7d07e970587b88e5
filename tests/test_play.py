"""`distill play`: policies on the same episode starts, drawn side by side, written as a video."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import distill
from distill import cli, envs, play
from distill.explain import untrained_policy

TEACHER = "data/teachers/Breakout-MinAtar"
ENV = "Breakout-MinAtar"


@pytest.fixture(scope="module")
def policies():
    """The shipped Breakout teacher and an untrained net1 (a student that disagrees often)."""
    return [distill.load(TEACHER), untrained_policy(ENV, "net1", seed=1)]


@pytest.fixture(scope="module")
def tracks(policies):
    return play.record(policies, episodes=2, seed=3, max_steps=30)


def frames_of(path) -> int:
    with Image.open(path) as im:
        im.load()
        return im.n_frames


def test_the_cli_writes_a_gif_with_a_frame_per_step(tmp_path, capsys):
    out = tmp_path / "sub" / "play.gif"
    argv = ["play", TEACHER, TEACHER, "--out", str(out), "--episodes", "2", "--max-steps", "12"]
    assert cli.main(argv) == 0
    expected = play.frame_count(play.record([distill.load(TEACHER)] * 2, 2, 0, 12))
    assert 12 <= expected <= 24 and frames_of(out) == expected
    lines = capsys.readouterr().out.splitlines()
    assert lines[-1] == f"{expected} frames in {out}"
    assert "differs from the teacher's on 0% of its states" in lines[1]  # the teacher twice


def test_a_student_panel_is_drawn_beside_the_teacher(tmp_path, policies, tracks):
    done = play.watch(policies, tmp_path / "two.gif", episodes=2, seed=3, max_steps=30)
    assert done["frames"] == play.frame_count(tracks) == frames_of(tmp_path / "two.gif")
    teacher, student = done["policies"]
    assert teacher["name"] == "teacher" and student["name"] == "untrained net1"
    assert teacher["disagreement"] == 0 and 0 < student["disagreement"] <= 1
    with Image.open(tmp_path / "two.gif") as im:
        assert im.width >= 2 * 150  # one panel per policy


def test_every_policy_starts_each_episode_from_the_same_state(tracks):
    teacher, student = tracks
    for e in range(2):
        np.testing.assert_array_equal(teacher[e].obs[0], student[e].obs[0])
    for t in (*teacher, *student):
        assert 1 <= t.steps <= 30 and t.obs.shape[1:] == envs.spec(ENV).obs_shape
        assert np.all(np.diff(t.score) >= 0)  # Breakout's rewards are never negative
    # the teacher asks itself: it never disagrees; the student's greedy actions are compared
    # with the teacher's on the student's own states
    assert not any(t.disagrees.any() for t in teacher)
    assert any(t.disagrees.any() for t in student)


def test_a_disagreement_is_framed_in_red(tracks):
    frames = list(play.render_frames(tracks, ["teacher", "student"], ENV))
    assert len(frames) == play.frame_count(tracks)
    student = tracks[1][0]

    def red_in_student_panel(frame) -> bool:
        a = np.asarray(frame)[:, frame.width // 2 :]
        return bool(np.all(a == play.RED, axis=-1).any())

    marked = [red_in_student_panel(frames[t]) for t in range(student.steps)]
    assert marked == list(student.disagrees)
    assert any(marked) and not red_in_student_panel(
        play.panel(np.zeros((20, 20, 3), np.uint8), "x", ["teacher NOOP"], disagree=False)
    )


def test_minatar_states_are_drawn_in_their_channels_colours_with_a_legend():
    c = len(envs.MINATAR_CHANNELS[ENV])
    colours = play.channel_colours(c)
    assert colours.shape == (c, 3) and len({tuple(x) for x in colours}) == c
    obs = np.zeros((10, 10, c), np.float32)
    obs[2, 3, 1] = 1
    image = play.state_image(obs, cell=4)
    assert image.shape == (40, 40, 3) and image.dtype == np.uint8
    assert tuple(image[2 * 4 + 1, 3 * 4 + 1]) == tuple(colours[1])
    assert tuple(image[0, 0]) == (255, 255, 255)
    strip = play.legend(ENV, 300)
    assert strip.width == 300 and play.legend("CartPole-v1", 300) is None


def test_an_mp4_is_written_or_refused_in_one_line(tmp_path, tracks):
    frames = list(play.render_frames([t[:1] for t in tracks], ["a", "b"], ENV))[:6]
    try:
        path = play.write(frames, tmp_path / "v.mp4", fps=10)
    except play.NoEncoder as e:
        assert "no MP4 encoder" in str(e)
        return
    import cv2

    video = cv2.VideoCapture(str(path))
    assert int(video.get(cv2.CAP_PROP_FRAME_COUNT)) == 6
    video.release()


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--out", "x.avi"], "write a .gif or an .mp4"),
        (["--out", "x.gif", "--epsilon", "2"], "[0, 1]"),
    ],
)
def test_bad_options_are_one_line(tmp_path, capsys, monkeypatch, extra, message):
    teacher = str(Path(TEACHER).resolve())
    monkeypatch.chdir(tmp_path)
    assert cli.main(["play", teacher, *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err
    assert not list(tmp_path.iterdir())


def test_two_envs_are_refused(policies):
    other = untrained_policy("Asterix-MinAtar", "net3")
    with pytest.raises(distill.ConfigError, match="different envs"):
        play.record([policies[0], other], 1, 0, 5)


def test_atari_plays_from_the_rgb_screen(tmp_path):
    pong = distill.load("data/teachers/ALE-Pong-v5")
    done = play.watch([pong, pong], tmp_path / "pong.gif", episodes=1, seed=0, max_steps=6)
    assert done["frames"] == 6 == frames_of(tmp_path / "pong.gif")
    [[track]] = play.record([pong], 1, 0, 3)
    assert track.obs.shape == (3, 210, 160, 3) and track.obs.dtype == np.uint8
    assert track.action.shape == (3,) and (track.greedy == track.teacher_greedy).all()
