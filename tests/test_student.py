"""Students: config validation, the pure distillation run (losses, vmap over seeds, tau as an
argument), `fit` with its checkpoint, bit-identical resume, refusals and a NaN fault, on the
shared CartPole teacher dataset.

Compiling is the expensive part, so every run here uses the shapes of `config_for` (2 blocks of
1,000 updates, 20 evaluation episodes), the same as `fit` below and the loss comparison in
test_experiments.py: each computation compiles once per session (see conftest.py), and the
compiled runs themselves take a fraction of a second.
"""

import dataclasses
import functools
import json
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import ENV

import distill
from distill import checkpoint, cli, dataset, experiments, runs, student, xla
from distill.config import ConfigError


def config_for(loss: str, **overrides) -> student.StudentConfig:
    return student.StudentConfig(
        loss=loss, updates=2_000, eval_every=1_000, eval_episodes=20, **overrides
    )


FIT = config_for("kl")


def leaves(tree):
    return [np.asarray(x) for x in jax.tree_util.tree_leaves(tree)]


def npz_arrays(path):
    with np.load(path) as archive:
        return {k: archive[k] for k in archive.files}


@pytest.fixture(scope="module")
def data(cartpole_dataset):
    return dataset.load_dataset(str(cartpole_dataset), env_id=ENV)


@pytest.fixture(scope="module")
def seeds_run(data):
    """experiments.distil_seeds(config_for(loss, tau=tau), data, 2), once per (loss, tau)."""

    @functools.cache
    def run(loss: str, tau: float = 0.01):
        return experiments.distil_seeds(config_for(loss, tau=tau), data, seeds=2)

    return run


def one_block_runner(config: student.StudentConfig):
    """A jitted block, built exactly as `fit` builds it: `(state, arrays, tau) -> (state, m)`."""
    distiller = student.make_distill(config, ENV)
    return distiller, xla.jit(lambda s, d, tau: distiller.run(s, d, tau, 1, 0, True))


class StopAtOnce(runs.StopRequest):
    """A stop request that has already arrived: the job stops after its first saved block."""

    def __init__(self):
        super().__init__()
        self.requested = True
        self.signal_name = "SIGTERM"


# ---------------------------------------------------------------------------- config


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("loss", "foo"),
        ("tau", 0),
        ("tau", -1),
        ("tau", "0.01"),
        ("net", "net9"),
        ("updates", 0),
        ("batch_size", -1),
        ("eval_every", 0),
        ("eval_episodes", 1.5),
        ("optimizer", "sgd"),
        ("lr", 0.0),
        ("seed", "0"),
    ],
)
def test_config_rejects_bad_values_naming_the_field(field, value):
    with pytest.raises(ConfigError, match=rf"^{field}="):
        student.StudentConfig(**{field: value})


def test_config_tau_message_mentions_the_paper_value():
    with pytest.raises(ConfigError, match=r"tau=0 .*> 0 \(the paper uses 0.01\)"):
        student.StudentConfig(tau=0)


def test_config_blocks_are_whole():
    assert student.StudentConfig(updates=200, eval_every=100).blocks == 2
    with pytest.raises(ConfigError, match="updates=250.*multiple of eval_every=100"):
        student.StudentConfig(updates=250, eval_every=100)
    assert student.StudentConfig().tau == 0.01 and student.StudentConfig().optimizer == "rmsprop"


# ---------------------------------------------------------------------------- pure run


@pytest.mark.parametrize("loss", ["nll", "mse", "kl"])
def test_run_loss_decreases_over_blocks(seeds_run, loss):
    _, state, metrics = seeds_run(loss)
    for field in metrics:
        assert field.shape == (2, 2)  # [seeds, blocks]
    np.testing.assert_array_equal(state.updates, [2_000, 2_000])
    assert np.isfinite(metrics.loss).all()
    assert (metrics.loss[:, 1] < metrics.loss[:, 0]).all(), metrics.loss
    assert ((metrics.agreement >= 0) & (metrics.agreement <= 1)).all()
    # CartPole pays 1 a step
    assert np.isfinite(metrics.score).all() and (metrics.score >= 1).all()


def test_distil_seeds_differ_and_match_single_runs(seeds_run, data):
    _, state, metrics = seeds_run("kl")
    per_seed = [leaves(jax.tree_util.tree_map(lambda x, i=i: x[i], state.params)) for i in (0, 1)]
    assert not all(np.allclose(a, b) for a, b in zip(*per_seed, strict=True))
    assert not np.allclose(metrics.loss[0], metrics.loss[1])
    distiller, block = one_block_runner(FIT)
    keys = jax.random.split(jax.random.PRNGKey(FIT.seed), 2)
    for k in (0, 1):
        single = distiller.init(keys[k])
        single_metrics = []
        for _ in range(FIT.blocks):
            single, m = block(single, data.arrays(), jnp.float32(FIT.tau))
            single_metrics.append(m)
        for got, want in zip(per_seed[k], leaves(single.params), strict=True):
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
        for name in ("loss", "agreement", "score"):
            want = np.concatenate([np.asarray(getattr(m, name)) for m in single_metrics])
            np.testing.assert_allclose(getattr(metrics, name)[k], want, rtol=1e-5, err_msg=name)


def test_distil_seeds_cache_reads_back_the_same_students(tmp_path, monkeypatch, seeds_run, data):
    """Students stored in a cache folder come back equal, without training; a folder of
    another config is refused, naming its manifest."""
    _, trained, trained_metrics = seeds_run("kl")
    monkeypatch.setattr(experiments.common, "_MEMO", {})
    experiments.distil_seeds(config_for("kl"), data, 2, cache=tmp_path)
    (folder,) = tmp_path.iterdir()
    assert folder.name == experiments.student_folder_name(config_for("kl"), data, 2)
    monkeypatch.setattr(experiments.common, "_MEMO", {})
    monkeypatch.setattr(
        experiments.seeds, "_distil_in_graph_seeds", lambda *a: pytest.fail("trained again")
    )
    _, state, metrics = experiments.distil_seeds(config_for("kl"), data, 2, cache=tmp_path)
    for got, want in zip(leaves(state), leaves(trained), strict=True):
        np.testing.assert_array_equal(got, want)
    for got, want in zip(metrics, trained_metrics, strict=True):
        np.testing.assert_array_equal(got, want)
    # a folder whose manifest holds another config (renamed by hand, say) is refused
    other = tmp_path / experiments.student_folder_name(config_for("kl", lr=5e-4), data, 2)
    folder.rename(other)
    monkeypatch.setattr(experiments.common, "_MEMO", {})
    with pytest.raises(checkpoint.CheckpointError, match=f"{other.name}.*another config"):
        experiments.distil_seeds(config_for("kl", lr=5e-4), data, 2, cache=tmp_path)


def test_tau_is_an_argument_of_the_compiled_run(data):
    distiller, block = one_block_runner(FIT)
    init = distiller.init(jax.random.PRNGKey(1))
    sharp, _ = block(init, data.arrays(), jnp.float32(0.01))
    soft, _ = block(init, data.arrays(), jnp.float32(1.0))
    assert not all(
        np.array_equal(a, b) for a, b in zip(leaves(sharp.params), leaves(soft.params), strict=True)
    )


def test_tau_is_unused_by_mse(seeds_run):
    _, sharp, _ = seeds_run("mse", 0.01)
    _, soft, _ = seeds_run("mse", 1.0)
    for a, b in zip(leaves(sharp.params), leaves(soft.params), strict=True):
        np.testing.assert_array_equal(a, b)


# ---------------------------------------------------------------------------- fit


@pytest.fixture(scope="module")
def kl_student(tmp_path_factory, cartpole_dataset):
    """FIT (KL, 2 blocks of 1,000 updates) distilled by `fit` from the shared dataset."""
    folder = tmp_path_factory.mktemp("student") / "kl"
    policy = student.fit(FIT, str(cartpole_dataset), str(folder), progress=False)
    return folder, policy


@pytest.fixture(scope="module")
def interrupted_student(tmp_path_factory, cartpole_dataset):
    """FIT stopped by a SIGTERM after its first block (copy it before resuming)."""
    folder = tmp_path_factory.mktemp("student") / "cut"
    with pytest.MonkeyPatch.context() as m:
        m.setattr(runs, "StopRequest", StopAtOnce)
        with pytest.raises(runs.Interrupted, match=r"^SIGTERM: checkpoint saved at update 1000"):
            student.fit(FIT, str(cartpole_dataset), str(folder), progress=False)
    return folder


def test_fit_writes_a_student_checkpoint(kl_student, cartpole_dataset):
    folder, policy = kl_student
    assert {p.name for p in folder.iterdir()} == {
        "manifest.json",
        checkpoint.path_of(folder, "params.npz").name,
        "metrics.csv",
        "metrics.json",
        "tb",  # TensorBoard logs (distill.tb)
    }
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["kind"] == "student" and manifest["status"] == "complete"
    assert manifest["env_id"] == ENV and manifest["net"] == "teacher"
    assert manifest["updates"] == 2_000 and set(manifest["files"]) == {"params.npz"}
    assert manifest["config"] == distill.config.to_dict(FIT)
    data_manifest = json.loads((cartpole_dataset / "manifest.json").read_text())
    assert manifest["dataset"]["path"] == str(cartpole_dataset)
    assert manifest["dataset"]["manifest_files"] == data_manifest["files"]
    assert manifest["dataset"]["teacher"] == data_manifest["teacher"]
    rows = manifest["metrics"]
    assert [r["updates"] for r in rows] == [1_000, 2_000]
    for r in rows:
        assert {"updates", "loss", "agreement", "score"} <= set(r)
        assert np.isfinite(r["loss"]) and 0 <= r["agreement"] <= 1
    assert manifest["final_score"] == rows[-1]["score"]
    assert json.loads((folder / "metrics.json").read_text()) == rows
    loaded = distill.load(folder)
    assert loaded.kind == "student" and policy.kind == "student"
    q = loaded.q_values(jnp.zeros((5, 4)))
    assert q.shape == (5, 2) and np.isfinite(np.asarray(q)).all()


def test_fit_kl_student_plays_well(kl_student, trained_cartpole):
    folder, _ = kl_student
    rows = json.loads((folder / "metrics.json").read_text())
    random_score = trained_cartpole[1].manifest["random_evaluation"]["mean"]  # about 22
    assert rows[-1]["agreement"] > 0.9
    assert rows[-1]["score"] > max(3 * random_score, 60), (rows, random_score)


def test_fit_refuses_a_finished_folder(kl_student, cartpole_dataset):
    folder, policy = kl_student
    with pytest.raises(ConfigError, match="already holds a finished student"):
        student.fit(FIT, str(cartpole_dataset), str(folder), progress=False)
    again = student.fit(FIT, str(cartpole_dataset), str(folder), resume=True, progress=False)
    for a, b in zip(leaves(again.params), leaves(policy.params), strict=True):
        np.testing.assert_array_equal(a, b)


def test_fit_interrupted_then_resumed_is_bit_identical(
    tmp_path, interrupted_student, kl_student, cartpole_dataset
):
    folder = tmp_path / "cut"
    shutil.copytree(interrupted_student, folder)
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["status"] == "running" and manifest["updates"] == 1_000
    assert set(manifest["files"]) == {"params.npz", "train_state.npz"}
    assert len(manifest["metrics"]) == 1
    with pytest.raises(ConfigError, match="--resume"):
        student.fit(FIT, str(cartpole_dataset), str(folder), progress=False)
    other = dataclasses.replace(FIT, lr=3e-4)
    with pytest.raises(distill.CheckpointError, match="another config or dataset"):
        student.fit(other, str(cartpole_dataset), str(folder), resume=True, progress=False)

    resumed = student.fit(FIT, str(cartpole_dataset), str(folder), resume=True, progress=False)
    whole_folder, whole = kl_student
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["status"] == "complete" and manifest["updates"] == 2_000
    assert not list(folder.glob("train_state*.npz"))
    cut = npz_arrays(checkpoint.path_of(folder, "params.npz"))
    full = npz_arrays(checkpoint.path_of(whole_folder, "params.npz"))
    assert cut.keys() == full.keys()
    for name in cut:
        assert np.array_equal(cut[name], full[name]), name
    for a, b in zip(leaves(resumed.params), leaves(whole.params), strict=True):
        np.testing.assert_array_equal(a, b)

    def metric_rows(f):  # the same blocks in the same order; only wall_s may differ
        rows = json.loads((f / "metrics.json").read_text())
        return [{k: v for k, v in row.items() if k != "wall_s"} for row in rows]

    assert metric_rows(folder) == metric_rows(whole_folder)


def nan_teacher(data: dataset.Dataset) -> dataset.Dataset:
    """The same dataset with every teacher Q-value NaN: any loss on it is NaN."""
    return dataclasses.replace(data, q=jnp.full_like(data.q, jnp.nan))


def test_fit_non_finite_loss_stops_and_keeps_the_last_checkpoint(
    tmp_path, interrupted_student, cartpole_dataset, data
):
    folder = tmp_path / "cut"
    shutil.copytree(interrupted_student, folder)
    before = (folder / "manifest.json").read_text()
    with pytest.raises(FloatingPointError, match="non-finite kl loss at update 2000"):
        student.fit(
            FIT,
            str(cartpole_dataset),
            str(folder),
            resume=True,
            progress=False,
            data=nan_teacher(data),
        )
    assert (folder / "manifest.json").read_text() == before  # nothing written after the fault
    manifest = checkpoint.read_manifest(folder)
    assert manifest["status"] == "running" and manifest["updates"] == 1_000
    checkpoint.read_verified(folder, "train_state.npz", manifest)


def test_fit_non_finite_loss_in_the_first_block_leaves_no_checkpoint(
    tmp_path, cartpole_dataset, data
):
    folder = tmp_path / "nan"
    with pytest.raises(FloatingPointError, match=r"non-finite kl loss at update 1000\b"):
        student.fit(FIT, str(cartpole_dataset), str(folder), progress=False, data=nan_teacher(data))
    assert not (folder / "manifest.json").exists()


# ---------------------------------------------------------------------------- compatibility


def test_check_compatible_refuses_another_env(data):
    student.check_compatible(FIT, data, None)
    student.check_compatible(FIT, data, ENV)
    with pytest.raises(ConfigError) as err:
        student.check_compatible(FIT, data, "Breakout-MinAtar")
    assert "'Breakout-MinAtar'" in str(err.value) and "'CartPole-v1'" in str(err.value)
    with pytest.raises(distill.CheckpointError, match="3 actions, but CartPole-v1 has 2"):
        student.check_compatible(FIT, dataclasses.replace(data, num_actions=3), None)


def test_cli_student_for_another_env_is_one_line(capsys, tmp_path, cartpole_dataset):
    out = tmp_path / "s"
    argv = ["student", "--dataset", str(cartpole_dataset), "--env", "Breakout-MinAtar"]
    assert cli.main([*argv, "--out", str(out)]) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    assert lines[0].startswith("distill student: error:")
    assert "Breakout-MinAtar" in lines[0] and "CartPole-v1" in lines[0]
    assert not out.exists()


@pytest.mark.parametrize("n", [2, 3, 7])
def test_in_groups_is_vmap(n):
    """Students in groups (a loop over vmapped groups, the last padded) are the vmapped ones."""
    fn = lambda b, w: (b["x"] @ w + b["k"][0], jnp.sum(b["x"]))  # noqa: E731
    batched = {"x": jnp.arange(n * 6.0).reshape(n, 2, 3), "k": jnp.arange(n * 2.0).reshape(n, 2)}
    w = jnp.ones((3, 4))
    want = jax.vmap(fn, in_axes=(0, None))(batched, w)
    got = student.in_groups(fn, 3)(batched, w)
    for a, b in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(want), strict=True):
        np.testing.assert_array_equal(a, b)
