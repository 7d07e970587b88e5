"""Checkpoints: atomic writes, a save/load roundtrip, and refusal of damaged or mismatched files."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import distill
from distill import checkpoint, networks
from distill.checkpoint import CheckpointError

ENV = "CartPole-v1"


@pytest.fixture(scope="module")
def params():
    module = networks.build("teacher", (4,), 2)
    return networks.init_params(module, jax.random.PRNGKey(0), (4,), jnp.float32)


@pytest.fixture
def saved(tmp_path, params):
    """A teacher checkpoint folder for CartPole-v1."""
    folder = tmp_path / "policy"
    manifest = checkpoint.policy_manifest("teacher", ENV, "teacher", 2, {})
    checkpoint.save_policy(folder, params, manifest)
    return folder


def assert_trees_equal(a, b):
    assert jax.tree_util.tree_structure(a) == jax.tree_util.tree_structure(b)
    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b), strict=True):
        assert x.dtype == y.dtype
        np.testing.assert_array_equal(x, y)


def test_atomic_write_bytes_replaces_and_leaves_no_temp_files(tmp_path):
    path = tmp_path / "sub" / "file.bin"
    checkpoint.atomic_write_bytes(path, b"old")
    checkpoint.atomic_write_bytes(path, b"new content")
    assert path.read_bytes() == b"new content"
    assert [p.name for p in path.parent.iterdir()] == ["file.bin"]


def test_atomic_write_json_roundtrip(tmp_path):
    checkpoint.atomic_write_json(tmp_path / "x.json", {"b": [1, 2], "a": None})
    assert json.loads((tmp_path / "x.json").read_text()) == {"a": None, "b": [1, 2]}


def test_save_and_load_roundtrip(saved, params):
    manifest = checkpoint.read_manifest(saved)
    assert set(manifest["files"]) == {checkpoint.PARAMS}
    assert manifest["files"][checkpoint.PARAMS] == checkpoint.sha256_file(
        checkpoint.path_of(saved, checkpoint.PARAMS)
    )
    assert manifest["format_version"] == checkpoint.FORMAT_VERSION
    assert "jax" in manifest["versions"]
    policy = distill.load(saved)
    assert (policy.env_id, policy.net, policy.num_actions, policy.kind) == (
        ENV,
        "teacher",
        2,
        "teacher",
    )
    assert_trees_equal(policy.params, params)
    obs = jnp.ones((3, 4))
    np.testing.assert_array_equal(
        policy.q_values(obs), networks.build("teacher", (4,), 2).apply(params, obs)
    )
    assert distill.load(saved, env_id=ENV, net="teacher").path == str(saved)


def test_flipped_byte_is_a_checksum_error(saved):
    path = checkpoint.path_of(saved, checkpoint.PARAMS)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="checksum") as err:
        distill.load(saved)
    assert str(path) in str(err.value)


def test_truncated_file_is_a_checksum_error(saved):
    path = checkpoint.path_of(saved, checkpoint.PARAMS)
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(CheckpointError, match="checksum") as err:
        distill.load(saved)
    assert str(path) in str(err.value)


def test_missing_params_file(saved):
    path = checkpoint.path_of(saved, checkpoint.PARAMS)
    path.unlink()
    with pytest.raises(CheckpointError, match="missing") as err:
        distill.load(saved)
    assert str(path) in str(err.value)


def test_missing_manifest_names_the_folder(saved):
    (saved / checkpoint.MANIFEST).unlink()
    with pytest.raises(CheckpointError, match="missing") as err:
        distill.load(saved)
    assert str(saved) in str(err.value)


def test_missing_folder(tmp_path):
    with pytest.raises(CheckpointError, match="no such checkpoint folder") as err:
        distill.load(tmp_path / "nowhere")
    assert str(tmp_path / "nowhere") in str(err.value)


@pytest.mark.parametrize("text", ['{"kind": "teacher", "files": {', "\xff\xfe", "[1, 2]"])
def test_damaged_manifest(saved, text):
    (saved / checkpoint.MANIFEST).write_bytes(text.encode("latin-1"))
    with pytest.raises(CheckpointError) as err:
        distill.load(saved)
    assert str(saved / checkpoint.MANIFEST) in str(err.value)


def test_wrong_env_names_both_envs(saved):
    with pytest.raises(CheckpointError) as err:
        distill.load(saved, env_id="Breakout-MinAtar")
    assert "CartPole-v1" in str(err.value) and "Breakout-MinAtar" in str(err.value)


def test_wrong_net_is_refused(saved):
    with pytest.raises(CheckpointError, match="net1"):
        distill.load(saved, net="net1")


def test_manifest_with_another_net_mentions_shape(tmp_path, params):
    # teacher parameters (fc64 fc64) under a manifest that claims net1 (fc32 fc32)
    folder = tmp_path / "liar"
    manifest = checkpoint.policy_manifest("teacher", ENV, "net1", 2, {})
    checkpoint.save_policy(folder, params, manifest)
    with pytest.raises(CheckpointError, match="shape") as err:
        distill.load(folder)
    assert str(checkpoint.path_of(folder, checkpoint.PARAMS)) in str(err.value)


def test_manifest_with_wrong_action_count(tmp_path, params):
    folder = tmp_path / "actions"
    checkpoint.save_policy(
        folder, params, checkpoint.policy_manifest("teacher", ENV, "teacher", 3, {})
    )
    with pytest.raises(CheckpointError, match="3 actions"):
        distill.load(folder)


def test_pytree_roundtrip():
    tree = {"a": jnp.arange(6, dtype=jnp.int32).reshape(2, 3), "b": (jnp.ones(2), jnp.array(True))}
    assert_trees_equal(
        checkpoint.pytree_from_bytes(checkpoint.pytree_to_bytes(tree), tree, "t"), tree
    )


def test_pytree_from_bytes_wrong_template():
    data = checkpoint.pytree_to_bytes({"a": jnp.zeros((2, 3)), "b": jnp.zeros(4)})
    with pytest.raises(
        CheckpointError, match=r"x\.npz: array 0 has shape \(2, 3\), expected \(3, 2\)"
    ):
        checkpoint.pytree_from_bytes(data, {"a": jnp.zeros((3, 2)), "b": jnp.zeros(4)}, "x.npz")
    with pytest.raises(CheckpointError, match="x.npz: holds 2 arrays but .* has 3"):
        checkpoint.pytree_from_bytes(
            data, {"a": jnp.zeros((2, 3)), "b": jnp.zeros(4), "c": 0.0}, "x.npz"
        )
    with pytest.raises(CheckpointError, match="x.npz: cannot be read"):
        checkpoint.pytree_from_bytes(b"not a zip archive", {"a": jnp.zeros(1)}, "x.npz")


def test_pytree_roundtrip_with_typed_key():
    tree = {"key": jax.random.key(3), "x": jnp.arange(3)}
    out = checkpoint.pytree_from_bytes(checkpoint.pytree_to_bytes(tree), tree, "k.npz")
    np.testing.assert_array_equal(jax.random.key_data(out["key"]), jax.random.key_data(tree["key"]))


def test_pytree_from_bytes_refuses_another_dtype():
    data = checkpoint.pytree_to_bytes({"x": jnp.array([1.7, 2.2])})
    with pytest.raises(CheckpointError, match="dtype"):
        checkpoint.pytree_from_bytes(data, {"x": jnp.zeros(2, jnp.int32)}, "x.npz")


def test_write_checkpoint_keeps_and_drops_listed_files(tmp_path):
    folder = tmp_path / "ck"
    checkpoint.write_checkpoint(folder, {"a.bin": b"a", "b.bin": b"b"}, {"kind": "x"})
    checkpoint.write_checkpoint(folder, {"a.bin": b"a2"}, {"kind": "x"})
    files = checkpoint.read_manifest(folder)["files"]
    assert set(files) == {"a.bin", "b.bin"}  # b.bin kept its entry
    assert checkpoint.read_verified(folder, "a.bin") == b"a2"
    checkpoint.path_of(folder, "b.bin").unlink()
    checkpoint.write_checkpoint(folder, {}, {"kind": "x"})
    assert set(checkpoint.read_manifest(folder)["files"]) == {"a.bin"}
    with pytest.raises(CheckpointError, match="not listed"):
        checkpoint.read_verified(folder, "b.bin")
