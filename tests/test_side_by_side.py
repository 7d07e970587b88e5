"""Students of several losses trained side by side in one compiled program
(`seeds.distil_losses`): the loss picked by its index gives the named loss's values and
gradients, and a student trained inside the batch is the student trained alone (same seed, loss
and minibatches) to float rounding, with a fixed count and under the plateau rule (each student
stopping at its own plateau). Students train on a small made-up CartPole dataset (Q-values a
fixed linear function of the observation): no teacher to train, few programs to compile."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from distill import distillation, experiments, networks, plateau, shards, student
from distill.experiments import seeds

NAMES = ("nll", "mse", "kl")
SEEDS = 2
FIXED = [
    student.StudentConfig(loss=n, updates=300, eval_every=150, eval_episodes=4, tau=0.05)
    for n in NAMES
]
RULED = [
    student.StudentConfig(
        loss=n, updates=3_000, eval_every=250, eval_episodes=4, plateau_blocks=2, tau=0.05
    )
    for n in ("nll", "kl")
]
TOL = {"rtol": 1e-4, "atol": 1e-5}


def assert_close(a, b):
    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b), strict=True):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), **TOL)


@pytest.mark.parametrize("select", distillation.SELECTS)
def test_the_index_picks_the_named_loss_and_its_gradient(select):
    net = networks.build("teacher", (4,), 2)
    params = networks.init_params(net, jax.random.PRNGKey(0), (4,), jnp.float32)
    obs = jax.random.normal(jax.random.PRNGKey(1), (16, 4))
    teacher_q = 30.0 * jax.random.normal(jax.random.PRNGKey(2), (16, 2))
    multi = distillation.make_grad(NAMES, net.apply, select=select)
    hypers = [distillation.multi_hyper(NAMES, n, {"tau": 0.05}) for n in NAMES]
    stacked = jax.tree_util.tree_map(lambda *x: jnp.stack(x), *hypers)
    batched = jax.vmap(multi, in_axes=(None, None, None, 0))(params, obs, teacher_q, stacked)
    for i, name in enumerate(NAMES):
        alone = distillation.make_grad(name, net.apply)(params, obs, teacher_q, {"tau": 0.05})
        assert_close(multi(params, obs, teacher_q, hypers[i]), alone)  # unbatched: one branch
        assert_close(jax.tree_util.tree_map(lambda x, i=i: x[i], batched), alone)
    with pytest.raises(ValueError, match="select"):
        distillation.select_loss(NAMES, "sum")


def test_multi_hyper_has_one_structure_for_every_loss():
    hypers = [distillation.multi_hyper(NAMES, n, {"tau": 0.5}) for n in NAMES]
    assert {tuple(sorted(h)) for h in hypers} == {(distillation.LOSS_INDEX, "tau")}
    assert [int(h[distillation.LOSS_INDEX]) for h in hypers] == [0, 1, 2]
    assert float(hypers[2]["tau"]) == 0.5


@pytest.fixture(scope="module")
def data():
    rows, num_envs = 128, 16
    obs = jax.random.normal(jax.random.PRNGKey(0), (rows, num_envs, 4))
    q = 10.0 * obs @ jax.random.normal(jax.random.PRNGKey(1), (4, 2))
    return shards.Dataset(
        env_id="CartPole-v1",
        num_actions=2,
        stack=1,
        obs=obs,
        q=q,
        action=jnp.argmax(q, -1).astype(jnp.int32),
        reward=jnp.ones((rows, num_envs)),
        done=jnp.zeros((rows, num_envs), bool),
        first_row=0,
        manifest={"files": {"made-up": "0"}},
        path="made-up",
    )


def test_students_in_the_batch_are_the_students_trained_alone(data, monkeypatch):
    monkeypatch.setattr(experiments.common, "_MEMO", {})
    together = seeds.distil_losses(FIXED, data, SEEDS)
    keys = jax.random.split(jax.random.PRNGKey(FIXED[0].seed), SEEDS)
    for config, (_, state, m) in zip(FIXED, together, strict=True):
        assert np.asarray(m.score).shape == (SEEDS, config.blocks)
        # one student, no vmap at all (the in-env evaluation does not touch training)
        distiller = student.make_distill(config, data.env_id, data.stack)
        hyper = jax.tree_util.tree_map(jnp.float32, config.hyper)
        run = jax.jit(
            lambda k, d=distiller, h=hyper: d.run(d.init(k), data.arrays(), h, 2, 0, False)
        )
        for s in range(SEEDS):
            alone, m_alone = run(keys[s])
            assert_close(jax.tree_util.tree_map(lambda x, s=s: x[s], state.params), alone.params)
            np.testing.assert_allclose(np.asarray(m.loss)[s], np.asarray(m_alone.loss), **TOL)
            np.testing.assert_allclose(np.asarray(m.agreement)[s], m_alone.agreement, **TOL)
    # KL's seeds in a program of their own (what the experiments ran before), evaluations too
    _, state1, m1 = seeds._distil_in_graph_seeds(FIXED[2], data, SEEDS, None)
    assert_close(together[2][1].params, state1.params)
    assert_close(tuple(together[2][2]), tuple(m1))
    # memoised under distil_seeds' key: a later call of one config is served, not retrained
    assert seeds.distil_seeds(FIXED[2], data, SEEDS) is together[2]


def test_each_student_stops_at_its_own_plateau(data, monkeypatch):
    monkeypatch.setattr(experiments.common, "_MEMO", {})
    together = seeds.distil_losses(RULED, data, SEEDS)
    stops = []
    for config, (_, state, m) in zip(RULED, together, strict=True):
        _, state1, m1 = seeds._distil_plateau_seeds(config, data, SEEDS, None)
        # the same blocks (its own run's chunks), the same stops, the same students
        assert np.asarray(m.held_out).shape == np.asarray(m1.held_out).shape
        np.testing.assert_array_equal(np.asarray(state.updates), np.asarray(state1.updates))
        np.testing.assert_allclose(np.asarray(m.held_out), np.asarray(m1.held_out), **TOL)
        assert_close(state.params, state1.params)
        for s in range(SEEDS):
            cols = plateau.columns(config, m, s)
            assert cols == plateau.columns(config, m1, s)
            stops.append(cols["updates"])
    assert all(0 < u <= RULED[0].updates for u in stops)


def test_configs_must_share_everything_but_the_loss(data):
    other = student.StudentConfig(loss="kl", updates=300, eval_every=150, lr=5e-4)
    with pytest.raises(ValueError, match="differ only in loss"):
        seeds.distil_losses([FIXED[0], other], data, SEEDS)
