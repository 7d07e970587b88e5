"""The teaching notebooks' figures draw from the shapes their experiments return, and label
what a class needs: titles, axis labels, colour bars."""

from __future__ import annotations

import jax
import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from distill import figures_more, multitask  # noqa: E402

GAMES = ("Breakout-MinAtar", "SpaceInvaders-MinAtar")


def test_multitask_diagram_reads_the_head_sizes_from_the_parameters():
    params = multitask.init_params(multitask.build(GAMES), jax.random.PRNGKey(0), GAMES)
    sizes = figures_more._layer_sizes(params)
    assert sizes["hidden"] == [multitask.HEAD_HIDDEN] * 2 and sizes["actions"] == [3, 4]
    assert sizes["convs"][0][2] == multitask.padded_channels(GAMES)
    fig = figures_more.multitask_diagram(params, GAMES)
    text = " ".join(t.get_text() for t in fig.axes[0].texts)
    assert "fc 128, ReLU" in text and "3 Q-values" in text and "NOOP LEFT RIGHT FIRE" in text
    plt.close(fig)


def test_result_figures_are_labelled():
    rows = [
        {"method": m, "game": g, "seed": s, "percent_of_teacher": 50.0 + s}
        for m in figures_more.METHODS
        for g in GAMES
        for s in range(1 if m == "multi-dqn" else 2)
    ]
    summary = [
        {"method": m, "geomean_percent_mean": 50.0, "geomean_percent_std": 1.0}
        for m in figures_more.METHODS
    ]
    result = {"rows": rows, "teachers": [{"game": g} for g in GAMES], "summary": summary}
    online = {
        "env_id": GAMES[0],
        "rows": [
            {"env_steps": 1000 * i, "teacher_score": i, "student_score": i / 2, "agreement": 0.1}
            for i in range(1, 5)
        ],
        "config": {"online": {"eval_episodes": 8}},
    }
    for fig in (
        figures_more.multitask_bars(result),
        figures_more.online_curves(online),
        figures_more.student_curves(
            [{"updates": 20, "loss": 1.0, "agreement": 0.5, "score": -20.0}], -20.5
        ),
        figures_more.target_top_probability(
            np.random.default_rng(0).normal(size=(50, 6)), (1, 0.01)
        ),
        figures_more.time_in_episode({"a": np.arange(10), "b": np.arange(100)}),
    ):
        for ax in fig.axes:
            assert ax.get_ylabel() and ax.get_xlabel() or not ax.has_data(), ax
        assert any(ax.get_title() for ax in fig.axes) or fig._suptitle is not None
        plt.close(fig)


def test_saliency_rows_share_one_scale_and_have_colour_bars():
    rng = np.random.default_rng(0)
    obs = (rng.random((10, 10, 4)) > 0.7).astype(np.float32)
    maps = {"teacher": rng.random((10, 10, 4)), "student": 100 * rng.random((10, 10, 4))}
    fig = figures_more.saliency_rows(obs, maps, ["paddle", "ball", "trail", "brick"])
    images = [ax.images[0] for ax in fig.axes if ax.images and ax.get_title() != "state"]
    channel_limits = {im.get_clim() for im in images if im.get_cmap().name == "magma"}
    assert len(channel_limits) == 1  # teacher and student on one scale despite 100x the values
    assert len(fig.axes) == 2 * 6 + 2  # panels and two colour bars
    plt.close(fig)
    atari = figures_more.saliency_rows(
        rng.integers(0, 255, (4, 84, 84)), {"a": rng.random((84, 84)), "b": rng.random((84, 84))}
    )
    assert len(atari.axes) == 3
    plt.close(atari)


def test_maps_carry_labelled_colour_bars_and_scores_their_references():
    from distill import plotting

    ax = plotting.confusion_matrix(np.array([[3, 1], [0, 4]]), ["NOOP", "FIRE"])
    bars = [a for a in ax.figure.axes if a is not ax]
    assert len(bars) == 1 and "share" in bars[0].get_ylabel()
    fig = plotting.linear_weights(np.zeros((2, 2, 3, 2)), action_names=["NOOP", "FIRE"])
    assert any("mean over actions" in a.get_ylabel() for a in fig.axes)
    rows = [{"updates": u, "loss": 1.0, "agreement": 0.5, "score": -20.0} for u in (10, 20)]
    fig = figures_more.student_curves(rows, -20.5, teacher_score=18.0)
    names = [t.get_text() for t in fig.axes[2].get_legend().get_texts()]
    assert names == ["student", "teacher player", "random player"]
    plt.close("all")
