"""The numbers behind the teaching figures (distill.figures), against hand-computed values, and
each figure drawn once from small literal data."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from distill import figures  # noqa: E402

Q = np.array([[1.0, 1.02, 0.5], [0.0, 0.0, 0.3]])


def test_q_gaps_are_best_minus_second_best():
    np.testing.assert_allclose(figures.q_gaps(Q), [0.02, 0.3])


def test_softmax_target_sharpens_with_tau_and_nll_is_one_hot():
    p = figures.softmax_target(Q, 0.01)
    # a gap of 0.02 at tau 0.01: the two best actions in ratio e^2
    np.testing.assert_allclose(p[0, 1] / p[0, 0], np.exp(2.0), rtol=1e-9)
    np.testing.assert_allclose(p.sum(axis=1), 1.0)
    np.testing.assert_array_equal(figures.softmax_target(Q, None), [[0, 1, 0], [0, 0, 1]])
    assert (figures.top_probability(Q, 1.0) < figures.top_probability(Q, 0.01)).all()


def test_tau_table_counts_states_below_099():
    rows = figures.tau_table(Q, [0.01, None])
    assert rows[0]["share_below_0.99"] == pytest.approx(0.5)  # 1/(1+e^-2) = 0.88 < 0.99
    assert rows[1]["share_below_0.99"] == 0.0 and rows[1]["median_top_probability"] == 1.0


def test_teacher_margins_of_a_decided_and_an_undecided_state():
    q = np.array([[1.0, 0.0, 0.0], [0.5, 0.505, 0.0]])  # gaps 1.0 and 0.005 (a near tie)
    m = figures.teacher_margins(q, tau=0.01)
    assert m["median_q_gap"] == pytest.approx(0.5025)
    assert m["near_ties"] == 0.5
    assert m["soft_targets"] == 0.5  # softmax(q / 0.01) of the tie: 0.62 on its best action
    assert m["best_action_shares"] == [0.5, 0.5, 0.0]


def test_trailing_mean_skips_nans_and_has_no_edge_artefact():
    np.testing.assert_allclose(
        figures.trailing_mean(np.array([1.0, np.nan, 3.0, 5.0]), 2), [1, 1, 3, 4]
    )


def test_figures_draw():
    rng = np.random.default_rng(0)
    q = rng.normal(size=(200, 3))
    figures.pipeline_diagram()
    figures.tau_figure(q, (1.0, 0.01))
    figures.targets_of_one_state(q[0], (1.0, 0.01), ("NOOP", "LEFT", "RIGHT"))
    figures.dataset_figure(q, q.argmax(1), ("NOOP", "LEFT", "RIGHT"))
    rows = [{"env_steps": 100 * i, "mean_return": float(i)} for i in range(1, 6)]
    figures.learning_curves({"a run": rows}, zoom_steps=200)
    teachers = [{"game": "g", "teacher_score": 10.0, "random_score": 1.0}]
    loss_rows = [
        {"game": "g", "loss": loss, "seed": s, "score": 5.0 + s}
        for loss in ("nll", "mse", "kl")
        for s in range(2)
    ]
    figures.loss_scores_figure({"teachers": teachers, "rows": loss_rows})
    comp_rows = [
        {"game": "g", "net": n, "seed": s, "params_percent": p, "percent_of_teacher": 90.0 - p / 10}
        for n, p in (("teacher", 100.0), ("net1", 25.0))
        for s in range(2)
    ]
    summary = [
        {
            "net": n,
            "params_percent": p,
            "geomean_percent_mean": 80.0,
            "geomean_percent_std": 2.0,
            "paper_percent": pp,
        }
        for n, p, pp in (("teacher", 100.0, None), ("net1", 25.0, 108.3))
    ]
    figures.compression_figure({"rows": comp_rows, "summary": summary})
    matplotlib.pyplot.close("all")


def test_teacher_curves_draw_a_panel_per_teacher_and_refuse_a_folder_without_a_curve(tmp_path):
    from distill import checkpoint, paths, teacher_curves

    pong = paths.shipped_teacher("ALE/Pong-v5")
    out = teacher_curves.main([str(pong), str(pong), "--out", str(tmp_path / "c.png")])
    assert out.stat().st_size > 10_000
    (ax,) = teacher_curves.figure([pong]).axes
    assert len(ax.lines[0].get_xdata()) == len(checkpoint.read_manifest(pong)["metrics"])
    assert ax.get_title().endswith("evaluation 16.8, random -20.2 (30 games)")
    bare = tmp_path / "bare"
    bare.mkdir()
    manifest = {k: v for k, v in checkpoint.read_manifest(pong).items() if k != "metrics"}
    checkpoint.atomic_write_json(bare / "manifest.json", manifest)
    with pytest.raises(checkpoint.CheckpointError, match="bare: its manifest holds no learning"):
        teacher_curves.figure([bare])
