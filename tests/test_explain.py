"""The linear student (`distill.explain.linear`) on a real teacher's dataset, and the whole
report through `distill explain`. Saliency and agreement have their own test files."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from distill import checkpoint, cli, dataset, explain, losses, networks, paths

BREAKOUT = "Breakout-MinAtar"

# ---------------------------------------------------------------------------- linear student


@pytest.fixture(scope="module")
def breakout_dataset(tmp_path_factory):
    """4,096 states of the shipped Breakout teacher's play."""
    folder = tmp_path_factory.mktemp("explain") / "breakout"
    config = dataset.DatasetConfig(states=4_096, num_envs=64, seed=0)
    dataset.generate(str(paths.shipped_teacher(BREAKOUT)), config, str(folder), progress=False)
    return dataset.load_dataset(str(folder))


def test_linear_student_agrees_with_its_teacher_far_above_chance(breakout_dataset):
    config = explain.LinearConfig(loss="kl", updates=500)
    fitted = explain.fit_linear(breakout_dataset, config)
    assert fitted.params["w"].shape == (10, 10, 4, 3) and np.isfinite(fitted.loss).all()
    assert fitted.loss[-50:].mean() < fitted.loss[:50].mean()
    test = explain.split_envs(breakout_dataset.arrays(), config.held_out)[1]
    assert fitted.held_out_states == 8 * 64  # 8 of 64 envs held out, 64 rows each
    teacher_actions = np.asarray(test["q"]).argmax(-1).ravel()
    majority = np.bincount(teacher_actions).max() / teacher_actions.size
    assert fitted.fidelity > majority + 0.2, (fitted.fidelity, majority)


@pytest.mark.parametrize("loss", losses.LOSSES)
def test_linear_loss_is_the_distillation_loss_plus_l2_on_w(loss):
    rng = np.random.default_rng(0)
    params = {
        "w": jnp.asarray(rng.normal(size=(2, 2, 3, 3)), jnp.float32),
        "b": jnp.asarray(rng.normal(size=3), jnp.float32),
    }
    obs = jnp.asarray(rng.random((5, 2, 2, 3)) < 0.5)
    teacher_q = jnp.asarray(rng.normal(size=(5, 3)), jnp.float32)
    config = explain.LinearConfig(loss=loss, tau=0.1, l2=0.01)
    student_q = explain.linear_q(params, obs)
    expected = losses.distillation_loss(loss, student_q, teacher_q, 0.1) + 0.01 * float(
        np.sum(np.square(params["w"]))
    )
    got = explain.linear_loss(config, params, obs, teacher_q)
    assert got.shape == () and np.isclose(got, expected, rtol=1e-6)


def test_linear_config_is_checked():
    with pytest.raises(ValueError, match="loss"):
        explain.LinearConfig(loss="hinge")
    with pytest.raises(ValueError, match="updates"):
        explain.LinearConfig(updates=0)


# ---------------------------------------------------------------------------- the command


def save_untrained(
    folder, env_id: str, net: str, actions: int, obs_shape, dtype, seed=1, zeros=False
):
    """A policy checkpoint with random initial weights (`zeros`: all zero, nothing compiled)."""
    module = networks.build(net, obs_shape, actions)
    init = lambda k: networks.init_params(module, k, obs_shape, dtype)  # noqa: E731
    if zeros:
        shapes = jax.eval_shape(init, jax.random.PRNGKey(seed))
        params = jax.tree_util.tree_map(lambda x: jnp.zeros(x.shape, x.dtype), shapes)
    else:
        params = jax.jit(init)(jax.random.PRNGKey(seed))
    manifest = checkpoint.policy_manifest("student", env_id, net, actions, {})
    checkpoint.save_policy(folder, params, manifest)
    return str(folder)


def test_cli_explain_writes_figures_and_numbers(capsys, tmp_path, breakout_dataset):
    student = save_untrained(tmp_path / "net3", BREAKOUT, "net3", 3, (10, 10, 4), jnp.bool_)
    out = tmp_path / "out"
    teacher = str(paths.shipped_teacher(BREAKOUT))
    args = ["explain", teacher, "--students", student, "--states", "16", "--out", str(out)]
    # the linear test's config: the session's compilation cache shares the compiled fit
    extra = ["--dataset", breakout_dataset.path, "--updates", "500", "--episodes", "4"]
    assert cli.main([*args, *extra]) == 0
    printed = capsys.readouterr().out
    assert "net3: agreement" in printed and "linear student: fidelity" in printed
    for name in (
        "saliency_gradient.png",
        "saliency_perturbation.png",
        "saliency_gradient_mean.png",
        "agreement.png",
        "disagreements_0.png",
        "linear_weights.png",
    ):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
    numbers = json.loads((out / "explain.json").read_text())
    assert numbers["env_id"] == BREAKOUT and numbers["states"] == 16
    s = numbers["students"]["net3"]
    cm = np.asarray(s["confusion"])
    assert cm.shape == (3, 3) and cm.sum() == 16 and np.trace(cm) / 16 == s["agreement"]
    assert set(s["similarity"]) == {"gradient", "perturbation"}
    assert s["untrained"] in numbers["baselines"]
    linear = numbers["linear"]
    assert linear["fidelity"] > 0.6 and linear["teacher_score"] > 0  # 0.89 when measured
    assert linear["config"]["updates"] == 500
    weights = np.load(out / "linear_student.npz")
    assert weights["w"].shape == (10, 10, 4, 3) and weights["b"].shape == (3,)


def one_line_error(capsys, argv, *needles):
    assert cli.main(argv) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("distill explain: error:"), captured.err
    for needle in needles:
        assert needle in lines[0], lines[0]


def test_cli_explain_bad_input(capsys, tmp_path, breakout_dataset):
    teacher = str(paths.shipped_teacher(BREAKOUT))
    out = str(tmp_path / "out")
    cartpole = save_untrained(
        tmp_path / "cp", "CartPole-v1", "net3", 2, (4,), jnp.float32, zeros=True
    )
    pong = save_untrained(
        tmp_path / "p", "ALE/Pong-v5", "net3", 6, (4, 84, 84), jnp.uint8, zeros=True
    )
    one_line_error(
        capsys, ["explain", teacher, "--students", cartpole, "--out", out], "CartPole-v1", BREAKOUT
    )
    one_line_error(capsys, ["explain", str(tmp_path / "nothing"), "--out", out], "nothing")
    one_line_error(capsys, ["explain", cartpole, "--out", out], "not images", "CartPole-v1")
    one_line_error(
        capsys, ["explain", pong, "--dataset", breakout_dataset.path, "--out", out], "MinAtar"
    )
    other = str(paths.shipped_teacher("Freeway-MinAtar"))
    one_line_error(
        capsys, ["explain", other, "--dataset", breakout_dataset.path, "--out", out], BREAKOUT
    )
    untrained = save_untrained(
        tmp_path / "t", BREAKOUT, "teacher", 3, (10, 10, 4), jnp.bool_, zeros=True
    )
    one_line_error(
        capsys, ["explain", untrained, "--dataset", breakout_dataset.path, "--out", out], "made by"
    )
    (tmp_path / "file").write_text("x")
    one_line_error(capsys, ["explain", teacher, "--out", str(tmp_path / "file")], "not a folder")
    assert not (tmp_path / "out").exists()
    with pytest.raises(SystemExit) as exit_:
        cli.main(["explain", teacher, "--states", "0", "--out", out])
    assert exit_.value.code == 2 and "positive integer" in capsys.readouterr().err
