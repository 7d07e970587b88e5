"""Tests for distill.families (env families as a registry) and distill.acting (one acting step)."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from distill import acting, envs, families, networks, teacher


def test_every_env_has_its_family():
    expect = {
        "Breakout-MinAtar": ("minatar", "graph", 1, "bool"),
        "Seaquest-MinAtar": ("minatar", "graph", 1, "bool"),
        "CartPole-v1": ("vector", "graph", 1, "float32"),
        "ALE/Pong-v5": ("atari", "host", 4, "uint8"),
    }
    for env_id, (name, stepper, stack, dtype) in expect.items():
        spec = envs.spec(env_id)
        family = families.of(env_id)
        assert (spec.family, family.name, family.stepper) == (name, name, stepper)
        assert families.frame_stack(spec) == stack
        assert families.storage_dtype(spec) == jnp.dtype(dtype)
    assert families.frame_shape(envs.spec("ALE/Pong-v5")) == envs.ATARI_FRAME
    assert families.frame_shape(envs.spec("Asterix-MinAtar")) == (10, 10, 4)


def test_presets_come_from_the_family():
    assert teacher.PRESETS["atari"] == dict(families.FAMILIES["atari"].preset)
    assert (
        teacher.default_config("ALE/Pong-v5").num_envs
        == families.of("ALE/Pong-v5").preset["num_envs"]
    )


def test_networks_come_from_the_family_not_the_shape():
    """A new family with MinAtar-shaped observations gets its own networks, not MinAtar's."""
    tiny = {
        "teacher": networks.NetSpec("teacher", (), (7,)),
        "net1": networks.NetSpec("net1", (), (3,)),
    }
    family = families.register(
        dataclasses.replace(
            families.FAMILIES["minatar"],
            name="test-family",
            owns=lambda env_id: env_id == "Test-v0",
            spec=lambda env_id: dataclasses.replace(
                envs.gymnax_spec("Breakout-MinAtar"), env_id=env_id
            ),
            nets=tiny,
        )
    )
    try:
        spec = envs.spec("Test-v0")
        assert spec.family == "test-family" and spec.obs_shape == (10, 10, 4)
        assert families.of("Test-v0") is family
        net = families.build_network("Test-v0", "teacher")
        assert net.spec.hidden == (7,) and net.spec is not networks.MINATAR_NETS["teacher"]
        assert [r["name"] for r in families.param_table("Test-v0")] == ["teacher", "net1"]
        with pytest.raises(ValueError, match="choose one of"):
            families.build_network("Test-v0", "net3")
    finally:
        families.unregister("test-family")
    with pytest.raises(ValueError, match="unknown env id 'Test-v0'"):
        envs.spec("Test-v0")


def test_register_refuses_a_second_family_of_the_same_name():
    with pytest.raises(ValueError, match="already registered"):
        families.register(families.FAMILIES["atari"])


def test_epsilon_greedy_is_the_teachers():
    assert teacher.epsilon_greedy is acting.epsilon_greedy


def test_graph_step_matches_the_loop_it_replaced():
    """One step of `graph_step` is the act-then-step every loop wrote out by hand."""
    env = envs.make("Breakout-MinAtar")
    net = families.build_network("Breakout-MinAtar", "net3")
    params = networks.init_params(net, jax.random.PRNGKey(0), (10, 10, 4), jnp.float32)
    obs, state = acting.graph_reset(env, jax.random.PRNGKey(1), 5)
    k_act, k_env = jax.random.split(jax.random.PRNGKey(2))
    step = acting.graph_step(env, net.apply, params, obs, state, k_act, k_env, 0.5)
    q = net.apply(params, obs)
    action = acting.epsilon_greedy(k_act, q, 0.5)
    want = jax.vmap(env.step)(jax.random.split(k_env, 5), state, action)
    np.testing.assert_array_equal(step.q, q)
    np.testing.assert_array_equal(step.action, action)
    np.testing.assert_array_equal(step.obs, want[0])
    np.testing.assert_array_equal(step.reward, want[2])
    np.testing.assert_array_equal(step.done, want[3])
    assert step.q.shape == (5, 3) and step.action.shape == (5,)


def test_large_minatar_nets_follow_the_papers_ratios():
    """The over-parameterised MinAtar teacher and its students: 25, 7 and 4 % as in the paper."""
    rows = {r["name"]: r for r in families.param_table("Breakout-MinAtar")}
    assert rows["large-teacher"]["params"] > 4 * rows["teacher"]["params"]
    for name, percent in (("large-net1", 25.0), ("large-net2", 7.0), ("large-net3", 4.0)):
        assert abs(rows[name]["percent_of_teacher"] - percent) < 0.5, rows[name]
        assert rows[name]["paper_percent"] == percent
    # students are built like the paper's: as many layers as the teacher, fewer filters and units
    assert all(len(networks.MINATAR_LARGE_NETS[n].convs) == 3 for n in networks.MINATAR_LARGE_NETS)
    assert teacher.default_config("Breakout-MinAtar", net="large-teacher").net == "large-teacher"
    with pytest.raises(ValueError, match="net="):
        teacher.default_config("ALE/Pong-v5", net="large-teacher")
