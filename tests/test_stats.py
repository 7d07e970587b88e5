"""The stratified bootstrap (stats.py) against hand-computed values and scipy, and the verdict
rules (claims.py)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import scipy.stats

from distill import claims, claims_online, stats

# ---------------------------------------------------------------------------- aggregates by hand


def test_iqm_geometric_mean_and_mean_by_hand():
    scores = {"A": np.array([1.0, 2, 3, 4]), "B": np.array([10.0, 20])}
    # pooled [1, 2, 3, 4, 10, 20]: int(0.25 * 6) = 1 dropped at each end -> mean(2, 3, 4, 10)
    assert stats.aggregate_iqm(scores) == pytest.approx(4.75)
    assert stats.aggregate_iqm(scores) == pytest.approx(
        scipy.stats.trim_mean([1, 2, 3, 4, 10, 20], 0.25)
    )
    # game means 2.5 and 15
    assert stats.geometric_mean(scores) == pytest.approx(np.sqrt(2.5 * 15))
    assert stats.mean(scores) == pytest.approx(8.75)
    # three runs keep all three (int(0.75) = 0), as scipy's trim_mean
    assert stats.iqm(np.array([1.0, 2, 9])) == pytest.approx(4.0)


def test_iqm_matches_scipy_trim_mean():
    x = np.random.default_rng(1).normal(size=(5, 37))
    np.testing.assert_allclose(stats.iqm(x), scipy.stats.trim_mean(x, 0.25, axis=1))


def test_geometric_mean_of_a_nonpositive_game_is_nan():
    assert np.isnan(stats.geometric_mean({"A": np.array([-5.0, 1.0]), "B": np.array([50.0])}))


def test_probability_of_improvement_by_hand():
    x = {"A": np.array([1.0, 3]), "B": np.array([5.0])}
    y = {"A": np.array([2.0, 3]), "B": np.array([5.0, 4])}
    # A: (1>2) 0, (1>3) 0, (3>2) 1, (3=3) 1/2 -> 1.5 / 4; B: (5=5) 1/2, (5>4) 1 -> 1.5 / 2
    assert stats.probability_of_improvement(x, y) == pytest.approx((0.375 + 0.75) / 2)
    # rliable's definition: scipy's Mann-Whitney U of X over Y / (m n), averaged over games
    u = [
        scipy.stats.mannwhitneyu(x[g], y[g], alternative="greater").statistic
        / (x[g].size * y[g].size)
        for g in ("A", "B")
    ]
    assert stats.probability_of_improvement(x, y) == pytest.approx(np.mean(u))
    assert stats.probability_of_improvement(x, x) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="same games"):
        stats.probability_of_improvement(x, {"A": y["A"]})


def test_performance_profile_by_hand():
    scores = {"A": np.array([50.0, 100, 150]), "B": np.array([120.0])}
    # strictly above: 4 runs; above 0: 4, above 100: 2, above 200: 0
    np.testing.assert_allclose(stats.performance_profile(scores, [0, 100, 200]), [1, 0.5, 0])


# ---------------------------------------------------------------------------- the bootstrap


def test_a_known_distribution_is_covered_about_95_percent_of_the_time():
    """Normal scores, 2 games x 30 runs: the 95 % interval of the mean covers the true mean in
    about 95 % of 500 repeated experiments (binomial sd 1 %; the percentile interval
    under-covers a little at 30 runs, about 94 %; these 500 give 92.4 %, 1000 more 94.2 %)."""
    rng = np.random.default_rng(0)
    true_means = {"A": 80.0, "B": 120.0}
    covered = 0
    for i in range(500):
        scores = {g: rng.normal(m, 15.0, size=30) for g, m in true_means.items()}
        est = stats.interval(scores, stats.mean, reps=1000, seed=i)
        covered += est["lo"] <= 100.0 <= est["hi"]
    assert 0.90 <= covered / 500 <= 0.98, covered


def test_all_runs_equal_gives_a_zero_width_interval():
    scores = {"A": np.full(5, 90.0), "B": np.full(3, 110.0)}
    for aggregate in stats.AGGREGATES.values():
        est = stats.interval(scores, aggregate, reps=200)
        assert est["lo"] == pytest.approx(est["point"]) and est["hi"] == pytest.approx(est["point"])
    est = stats.improvement_interval(scores, scores, reps=200)
    assert est == {"point": 0.5, "lo": 0.5, "hi": 0.5}


def test_one_game():
    scores = {"A": np.array([60.0, 80, 90, 100, 130])}
    est = stats.interval(scores, stats.geometric_mean, reps=500)
    assert est["point"] == pytest.approx(92.0)  # one game: the geometric mean is its mean
    assert est["lo"] < 92.0 < est["hi"]
    assert stats.aggregate_iqm(scores) == pytest.approx(scipy.stats.trim_mean(scores["A"], 0.25))


def test_one_seed_collapses_the_interval_to_the_point():
    scores = {"A": np.array([70.0]), "B": np.array([140.0])}
    for aggregate in stats.AGGREGATES.values():
        est = stats.interval(scores, aggregate, reps=300)
        assert est["lo"] == est["point"] == est["hi"]
    band = stats.profile_interval(scores, np.array([50.0, 100.0]), reps=300)
    assert band["lo"] == band["point"] == band["hi"] == [1.0, 0.5]


def test_resampling_never_mixes_games():
    scores = {"one run": np.array([7.0]), "three runs": np.array([1.0, 2.0, 3.0])}
    boot = stats.resample(scores, reps=500, rng=np.random.default_rng(0))
    assert boot["one run"].shape == (500, 1) and (boot["one run"] == 7.0).all()
    assert boot["three runs"].shape == (500, 3)
    assert set(np.unique(boot["three runs"])) == {1.0, 2.0, 3.0}
    # each game's mean varies only within that game's own range
    means = boot["three runs"].mean(axis=1)
    assert means.min() >= 1.0 and means.max() <= 3.0


def test_a_seed_fixes_the_interval():
    scores = {"A": np.array([60.0, 80, 90, 100]), "B": np.array([95.0, 105, 120])}
    a = stats.interval(scores, stats.aggregate_iqm, reps=300, seed=3)
    assert a == stats.interval(scores, stats.aggregate_iqm, reps=300, seed=3)
    assert a != stats.interval(scores, stats.aggregate_iqm, reps=300, seed=4)


def test_resample_refuses_an_empty_game():
    with pytest.raises(ValueError, match="non-empty"):
        stats.resample({"A": np.array([])}, 10, np.random.default_rng(0))


# ---------------------------------------------------------------------------- results.json


def _row(game, seed, pct, **group):
    return {
        "game": game,
        "seed": seed,
        "score": pct,
        "teacher_score": 100.0,
        "random_score": 0.0,
        "percent_of_teacher": pct,
        "random_normalised": pct / 100,
        **group,
    }


def _losses(kl=(110, 112, 115), nll=(95, 97, 99), mse=(60, 62, 64), games=("A", "B")):
    rows = []
    for loss, values in (("nll", nll), ("mse", mse), ("kl", kl)):
        for game in games:
            rows += [_row(game, s, v, loss=loss, net="teacher") for s, v in enumerate(values)]
    return {"rows": rows}


def test_from_rows_and_grouping():
    rows = _losses()["rows"]
    assert stats.grouping(rows) == ("loss",)  # net is the same everywhere
    groups = stats.from_rows(rows, ("loss",))
    assert set(groups) == {"kl", "nll", "mse"}
    np.testing.assert_array_equal(groups["kl"]["A"], [110, 112, 115])
    assert set(stats.from_rows(rows, ("loss", "net"))) == {
        "kl/teacher",
        "nll/teacher",
        "mse/teacher",
    }
    norm = stats.from_rows(rows, ("loss",), "random_normalised")
    np.testing.assert_allclose(norm["mse"]["B"], [0.6, 0.62, 0.64])


def test_summarise_stage():
    s = stats.summarise_stage("losses", _losses(), reps=300)
    assert s["by"] == ["loss"] and set(s["groups"]) == {"kl", "nll", "mse"}
    kl = s["groups"]["kl"]
    assert (kl["games"], kl["runs"]) == (2, 3)
    assert kl["geometric_mean"]["point"] == pytest.approx(np.mean([110, 112, 115]))
    pairs = {(p["x"], p["y"]): p for p in s["improvement"]}
    assert pairs["kl", "nll"]["point"] == 1.0 and pairs["nll", "mse"]["lo"] == 1.0
    assert pairs["kl", stats.REFERENCE]["point"] == 1.0
    assert len(s["profile"]["thresholds"]) == len(s["profile"]["groups"]["kl"]["hi"])
    assert stats.summarise_stage("online", {"rows": [{"round": 1}]}) is None
    assert set(stats.summarise({"losses": _losses(), "teachers": {"rows": []}})) == {"losses"}


# ---------------------------------------------------------------------------- verdicts


def _verdicts(**stages):
    return {v["claim"]: v for v in claims.verdicts(stages, reps=300)}


def test_greater_is_reproduced_contradicted_or_unresolved_from_the_interval():
    claim = claims.CLAIMS[0].name  # KL >= NLL > MSE
    assert _verdicts(losses=_losses())[claim]["verdict"] == claims.REPRODUCED
    flipped = _losses(kl=(60, 62, 64), mse=(110, 112, 115))
    assert _verdicts(losses=flipped)[claim]["verdict"] == claims.CONTRADICTED
    overlap = _losses(kl=(90, 100, 110), nll=(92, 101, 108))
    v = _verdicts(losses=overlap)[claim]
    assert v["verdict"] == claims.UNRESOLVED and "P(kl > nll)" in v["evidence"]


def test_beats_its_teacher_is_judged_against_100_percent():
    claim = claims.CLAIMS[1].name
    assert _verdicts(losses=_losses())[claim]["verdict"] == claims.REPRODUCED
    assert _verdicts(losses=_losses(kl=(80, 85, 90)))[claim]["verdict"] == claims.CONTRADICTED
    assert _verdicts(losses=_losses(kl=(90, 100, 110)))[claim]["verdict"] == claims.UNRESOLVED


def _compression(net2):
    rows = []
    for game in ("A", "B"):
        rows += [_row(game, s, v, net="net2", params_percent=7.0) for s, v in enumerate(net2)]
        rows += [_row(game, s, 100.0, net="teacher", params_percent=100.0) for s in range(3)]
    return {"rows": rows}


def test_at_the_papers_level_is_reproduced_when_the_interval_reaches_it():
    claim = "net2 at 101.7 % of the teacher"
    assert (
        _verdicts(compression=_compression((95, 100, 105)))[claim]["verdict"] == claims.REPRODUCED
    )
    assert (
        _verdicts(compression=_compression((110, 115, 120)))[claim]["verdict"] == claims.REPRODUCED
    )
    v = _verdicts(compression=_compression((60, 70, 80)))[claim]
    assert v["verdict"] == claims.CONTRADICTED and "paper 101.7 %" in v["evidence"]
    # a stage or group not in the results: unresolved
    assert _verdicts()[claim]["verdict"] == claims.UNRESOLVED
    assert (
        _verdicts(compression=_compression((95, 100)))["net1 at 108.3 % of the teacher"]["verdict"]
        == claims.UNRESOLVED
    )


def test_students_still_learning_leave_a_contradiction_unresolved():
    """A contradicted part becomes unresolved when more than half the runs of one of its groups
    were still learning when they stopped, naming how many; with fewer the evidence names them
    and the verdict stands; a reproduced one stays reproduced, and runs at their plateau (or
    rows that could not tell) leave the verdict as it was."""
    claim = "net2 at 101.7 % of the teacher"

    def flagged(net2, flag):
        result = _compression(net2)
        for r in result["rows"]:
            r.update({} if flag is None else {"still_learning": flag and r["seed"] != 2})
        return result

    v = _verdicts(compression=flagged((60, 70, 80), True))[claim]
    assert v["verdict"] == claims.UNRESOLVED
    assert v["evidence"].endswith("but runs still learning when they stopped: net2 4 of 6")
    for flag in (False, None):
        v = _verdicts(compression=flagged((60, 70, 80), flag))[claim]
        assert v["verdict"] == claims.CONTRADICTED and "still learning" not in v["evidence"]
    few = _compression((60, 70, 80))
    for r in few["rows"]:
        r["still_learning"] = r["seed"] == 0 and r["game"] == "A"  # 1 of 6 runs
    v = _verdicts(compression=few)[claim]
    assert v["verdict"] == claims.CONTRADICTED
    assert v["evidence"].endswith("(runs still learning when they stopped: net2 1 of 6)")
    v = _verdicts(compression=flagged((110, 115, 120), True))[claim]
    assert v["verdict"] == claims.REPRODUCED
    groups = stats.summarise({"compression": flagged((60, 70, 80), True)})["compression"]["groups"]
    assert groups["net2"]["still_learning"] == [4, 6]
    assert groups["teacher"]["still_learning"] == [4, 6]
    summaries = {"compression": stats.summarise_stage("compression", flagged((60, 70, 80), True))}
    table = claims.render_markdown(summaries, [])
    assert "| runs still learning |" in table and "| 4 of 6 |" in table
    summaries = {"compression": stats.summarise_stage("compression", flagged((60, 70, 80), None))}
    assert "still learning" not in claims.render_markdown(summaries, [])


def test_a_group_with_one_run_leaves_a_claim_unresolved():
    rows = []
    for game in ("A", "B"):
        rows += [_row(game, s, v, method="distilled-kl") for s, v in enumerate((120, 121, 122))]
        rows += [_row(game, s, v, method="distilled-nll") for s, v in enumerate((100, 101, 102))]
        rows.append(_row(game, 0, 50.0, method="multi-dqn"))
    v = _verdicts(multitask={"rows": rows})[claims.CLAIMS[-1].name]
    assert v["verdict"] == claims.UNRESOLVED and "multi-dqn 1 (fewer than 3)" in v["evidence"]
    assert "P(distilled-nll > multi-dqn) = 1.00 [1.00, 1.00]" in v["evidence"]


def test_the_ten_game_claim_is_judged_on_a_wide_trunk_only():
    rows = []
    for game in ("A", "B"):
        rows += [_row(game, s, v, method="distilled-kl") for s, v in enumerate((80, 82, 84))]
    name = claims.MULTITASK_10.name
    assert name not in _verdicts(multitask={"rows": rows, "net": "teacher"})
    v = _verdicts(multitask={"rows": rows, "net": "wide"})[name]
    assert v["verdict"] == claims.CONTRADICTED and "paper 89.3 %" in v["evidence"]
    high = [_row(g, s, v, method="distilled-kl") for g in "AB" for s, v in enumerate((90, 92, 94))]
    v = _verdicts(multitask={"rows": high, "net": "large-wide"})[name]
    assert v["verdict"] == claims.REPRODUCED  # 90-94 % reaches the paper's 89.3 %


def test_two_runs_leave_a_claim_unresolved():
    # two runs: the bootstrap draws only their min, mean and max; kl is far above nll all the same
    v = _verdicts(losses=_losses(kl=(110, 112), nll=(95, 97), mse=(60, 62)))[claims.CLAIMS[0].name]
    assert v["verdict"] == claims.UNRESOLVED and "fewer than 3" in v["evidence"]
    assert "P(kl > nll) = 1.00 [1.00, 1.00]" in v["evidence"]


def test_every_pair_a_claim_compares_is_summarised():
    for c in claims.CLAIMS:
        for p in c.parts:
            assert p.kind != "greater" or (p.x, p.y) in stats.PAIRS[c.stage], (c.name, p)


def test_a_contradicted_part_contradicts_the_claim():
    assert claims.combine([claims.REPRODUCED, claims.CONTRADICTED]) == claims.CONTRADICTED
    assert claims.combine([claims.REPRODUCED, claims.UNRESOLVED]) == claims.UNRESOLVED
    assert claims.combine([claims.REPRODUCED, claims.REPRODUCED]) == claims.REPRODUCED


def _online(student, teacher, seeds=(0,)):
    return {
        "rows": [
            {"seed": s, "round": i + 1, "student_score": a + s, "teacher_score": b + s}
            for s in seeds
            for i, (a, b) in enumerate(zip(student, teacher, strict=True))
        ]
    }


def test_online_stability():
    steady, jumpy = [0, 5, 10, 10, 10, 10], [0, 5, 12, 4, 13, 3]
    one = _verdicts(online=_online(steady, jumpy))[claims_online.ONLINE_CLAIM]
    assert one["verdict"] == claims.UNRESOLVED and "one run" in one["evidence"]
    many = _verdicts(online=_online(steady, jumpy, seeds=(0, 1, 2)))[claims_online.ONLINE_CLAIM]
    assert many["verdict"] == claims.REPRODUCED
    worse = _verdicts(online=_online(jumpy, steady, seeds=(0, 1, 2)))[claims_online.ONLINE_CLAIM]
    assert worse["verdict"] == claims.CONTRADICTED
    two = _verdicts(online=_online(steady, jumpy, seeds=(0, 1)))[claims_online.ONLINE_CLAIM]
    assert two["verdict"] == claims.UNRESOLVED and "fewer than 3 runs" in two["evidence"]
    assert _verdicts()[claims_online.ONLINE_CLAIM]["verdict"] == claims.UNRESOLVED


def test_online_student_matches_its_teacher():
    name = claims_online.ONLINE_MATCH_CLAIM
    rise = [0, 2, 4, 8, 10, 10]
    # slower at first, level over the second half (rounds 4-6): 100 % of the teacher
    close = _verdicts(online=_online([0, 1, 2, 8, 10, 10], rise, seeds=(0, 1, 2)))[name]
    assert close["verdict"] == claims.REPRODUCED and "100.0 [100.0, 100.0]" in close["evidence"]
    above = _verdicts(online=_online([0, 1, 2, 9, 11, 11], rise, seeds=(0, 1, 2)))[name]
    assert above["verdict"] == claims.REPRODUCED  # better than its teacher also matches
    low = _verdicts(online=_online([0, 1, 2, 4, 5, 5], rise, seeds=(0, 1, 2)))[name]
    assert low["verdict"] == claims.CONTRADICTED and "% of the teacher" in low["evidence"]
    assert _verdicts(online=_online(rise, rise))[name]["verdict"] == claims.UNRESOLVED
    flat = _verdicts(online=_online(rise, [0] * 6, seeds=(0,)))[name]  # a teacher at 0
    assert flat["verdict"] == claims.UNRESOLVED and "no ratio" in flat["evidence"]
    assert _verdicts()[name]["verdict"] == claims.UNRESOLVED


def test_stability_is_the_online_modules():
    from distill import online

    s = [0.0, 3, 1, 7, 6, 9, 4, 8]
    full = online.stability(s)
    assert claims_online.stability(s) == {k: full[k] for k in ("spread", "worst_drop")}


def test_the_claims_carry_the_experiments_paper_numbers():
    from distill import experiments

    levels = claims.paper_levels()
    assert levels == {k: v for k, v in experiments.PAPER_COMPRESSION.items() if v}
    assert claims.paper_levels("multitask") == experiments.PAPER_MULTITASK
    for value in experiments.PAPER_MULTITASK.values():
        assert f"{value} %" in claims.CLAIMS[-1].name
    assert claims.paper_levels("losses") == {}


def test_render_markdown_has_the_tables_and_one_line_per_claim():
    results = {"losses": _losses(), "online": _online([0, 1, 2, 3], [0, 2, 1, 3])}
    summaries = stats.summarise(results, reps=200)
    found = claims.verdicts(results, summaries, reps=200)
    md = claims.render_markdown(summaries, found)
    assert "| kl | 2 x 3 | 112.2 [" in md and "| kl | nll | 1.00 [1.00, 1.00] |" in md
    assert sum(line.startswith("- **") for line in md.splitlines()) == len(claims.CLAIMS) + 2
    assert f"*{claims.REPRODUCED}*" in md and f"*{claims.UNRESOLVED}*" in md
    assert "/work" not in md


def test_write_puts_the_report_data_and_figures_in_out(tmp_path):
    import json

    results = {"losses": _losses(), "compression": _compression((95, 100, 105))}
    summaries = stats.summarise(results, reps=100)
    written = claims.write(summaries, claims.verdicts(results, summaries, reps=100), tmp_path)
    names = {p.name for p in written}
    assert names == {
        "stats.md",
        "stats.json",
        "losses_intervals.png",
        "losses_profile.png",
        "compression_intervals.png",
    }
    doc = json.loads((tmp_path / "stats.json").read_text())
    assert doc["summaries"]["losses"]["groups"]["kl"]["runs"] == 3
    assert all((tmp_path / n).stat().st_size > 1000 for n in names)
    assert claims._finite({"a": [float("nan"), 1.0], "b": float("inf")}) == {
        "a": [None, 1.0],
        "b": None,
    }


def test_figures_label_their_axes():
    from distill import plotting_stats

    s = stats.summarise_stage("losses", _losses(), reps=100)
    fig = plotting_stats.interval_figure(s, {"kl": 110.0})
    assert [ax.get_xlabel() for ax in fig.axes] == [c[1] for c in stats.AGGREGATE_COLUMNS]
    fig = plotting_stats.profile_figure(s)
    ax = fig.axes[0]
    assert "% of teacher" in ax.get_xlabel() and ax.get_ylabel()
    assert ax.get_legend() is not None and ax.get_title()


def test_paired_ratio_interval_resamples_pairs():
    """Pairs move together: y = x / 2 exactly gives a zero-width interval at 2 whatever the
    spread of x; independent noise widens it around the ratio of the means."""
    x = np.random.default_rng(1).exponential(10.0, size=400)
    tight = stats.paired_ratio_interval(x, x / 2, reps=500)
    assert tight["point"] == pytest.approx(2.0) and tight["hi"] - tight["lo"] < 1e-9
    y = np.random.default_rng(2).exponential(5.0, size=400)
    wide = stats.paired_ratio_interval(x, y, reps=500)
    assert wide["lo"] < x.mean() / y.mean() < wide["hi"] and wide["hi"] - wide["lo"] > 0.1
    with pytest.raises(ValueError, match="one length"):
        stats.paired_ratio_interval(x, y[:10])


def test_references_compared_on_their_shared_episodes(tmp_path, capsys):
    from distill import cli
    from distill.experiments import paired

    def ref(name, scores, env="Breakout-MinAtar"):
        ident = {"env_id": env, "epsilon": 0.05, "seed": 10000, "keys": "k", "batch": 100}
        (tmp_path / name).mkdir()
        (tmp_path / name / "reference.json").write_text(
            json.dumps({"identity": ident, "episode_scores": scores})
        )
        return str(tmp_path / name)

    a, b = ref("big", [4.0, 6.0, 8.0, 99.0]), ref("small", [2.0, 3.0, 4.0])
    text = paired.compare_references(a, b, reps=200)
    assert "3 shared episodes" in text and "ratio 2.00 [2.00, 2.00]" in text  # 99 not shared
    assert "difference +3.00" in text
    assert cli.main(["stats", "--references", a, ref("other", [1.0], "Asterix-MinAtar")]) == 2
    assert "not the same episode starts (env_id" in capsys.readouterr().err
    assert cli.main(["stats"]) == 2
