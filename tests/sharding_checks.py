"""Sharded runs against single-device runs on forced CPU devices; run by tests/test_sharding.py.

XLA_FLAGS=--xla_force_host_platform_device_count=N must be set before jax is imported, and the
rest of the suite runs on one device, so these checks run in processes of their own:

    python tests/sharding_checks.py student OUT.json       # with 4 forced devices
    python tests/sharding_checks.py teacher OUT.json       # with 4 forced devices
    python tests/sharding_checks.py multitask OUT.json     # with 4 forced devices
    python tests/sharding_checks.py distributed OUT.json PORT PROCESSES PROCESS_ID

Each writes facts (equalities, largest differences, where arrays live) as JSON, and the metrics
of one sharded run as OUT.npz; the tests assert on them. Everything is tiny: CartPole MLP
students on a synthetic dataset, a CartPole DQN of 300 updates, multi-task MinAtar students
(two games, synthetic datasets) and a multi-task DQN of 300 updates.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time

import numpy as np

STUDENT = dict(loss="kl", net="net1", updates=20, eval_every=10, eval_episodes=4, batch_size=64)
TEACHER = dict(
    total_steps=1_600,
    num_envs=4,
    buffer_size=800,
    batch_size=32,
    learning_starts=400,
    target_update_every=50,
)


def synthetic_dataset(rows: int = 64, num_envs: int = 16):
    """A CartPole-shaped teacher dataset with random observations and Q-values."""
    import jax.numpy as jnp

    from distill import dataset

    rng = np.random.default_rng(0)
    return dataset.Dataset(
        env_id="CartPole-v1",
        num_actions=2,
        stack=1,
        obs=jnp.asarray(rng.normal(size=(rows, num_envs, 4)).astype(np.float32)),
        q=jnp.asarray(rng.normal(size=(rows, num_envs, 2)).astype(np.float32)),
        action=jnp.zeros((rows, num_envs), jnp.int32),
        reward=jnp.zeros((rows, num_envs), jnp.float32),
        done=jnp.zeros((rows, num_envs), bool),
        first_row=0,
        manifest={"files": {"synthetic": "0"}, "teacher": {"path": "synthetic"}},
        path="synthetic",
    )


# Pong, 8 envs x 40 iterations: 24 iterations of 2 updates of 32 after 16 of filling replay
ATARI = dict(total_steps=320, buffer_size=320, learning_starts=128, target_update_every=20)
MULTI_GAMES = ("Breakout-MinAtar", "SpaceInvaders-MinAtar")
MULTI_STUDENT = dict(STUDENT, net="net3", eval_episodes=2)
MULTI_DQN = dict(
    TEACHER, learning_starts=800
)  # 100 iterations of 2 games x 4 envs, then 200 updates


def synthetic_minatar(env_id: str, rows: int = 32, num_envs: int = 8):
    """A MinAtar-shaped teacher dataset: random sparse boolean frames and random Q-values."""
    import jax.numpy as jnp

    from distill import dataset, envs

    spec = envs.spec(env_id)
    rng = np.random.default_rng(len(env_id))
    return dataset.Dataset(
        env_id=env_id,
        num_actions=spec.num_actions,
        stack=1,
        obs=jnp.asarray(rng.random((rows, num_envs, *spec.obs_shape)) < 0.1),
        q=jnp.asarray(rng.normal(size=(rows, num_envs, spec.num_actions)).astype(np.float32)),
        action=jnp.zeros((rows, num_envs), jnp.int32),
        reward=jnp.zeros((rows, num_envs), jnp.float32),
        done=jnp.zeros((rows, num_envs), bool),
        first_row=0,
        manifest={"files": {"synthetic": env_id}, "teacher": {"path": "synthetic"}},
        path="synthetic",
    )


def use_compilation_cache() -> None:
    """Programs with the same HLO (the padded run) compile once: in the caller's cache
    (`make test` sets JAX_COMPILATION_CACHE_DIR), else in a fresh one."""
    import atexit
    import os
    import shutil
    import tempfile

    import jax

    if os.environ.get("JAX_COMPILATION_CACHE_DIR"):
        return

    folder = tempfile.mkdtemp(prefix="distill-sharding-")
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    jax.config.update("jax_compilation_cache_dir", folder)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


def leaves(tree) -> list[np.ndarray]:
    import jax

    from distill import sharding

    return [np.asarray(x) for x in jax.tree_util.tree_leaves(sharding.to_host(tree))]


def row(tree, i: int):
    import jax

    return jax.tree_util.tree_map(lambda x: np.asarray(x)[i], tree)


def same(a, b) -> bool:
    """Bit-identical pytrees (nan equal to nan)."""
    return all(
        x.shape == y.shape and np.array_equal(x, y, equal_nan=True)
        for x, y in zip(leaves(a), leaves(b), strict=True)
    )


def max_diff(a, b) -> float:
    return max(
        float(np.nanmax(np.abs(x.astype(np.float64) - y))) if x.size else 0.0
        for x, y in zip(leaves(a), leaves(b), strict=True)
    )


def where(tree, mesh) -> dict:
    """How the leaves of `tree` lie on `mesh`: specs, device sets and which rows each device has."""
    import jax

    mesh_ids = sorted(d.id for d in mesh.devices.flat)
    xs = jax.tree_util.tree_leaves(tree)
    return {
        "specs": sorted({str(x.sharding.spec) for x in xs}),
        "on_mesh_devices": all(sorted(d.id for d in x.sharding.device_set) == mesh_ids for x in xs),
        "replicated": all(x.sharding.is_fully_replicated for x in xs),
        "shard_rows": sorted({x.sharding.shard_shape(x.shape)[0] for x in xs if x.ndim}),
        # [device id, first row of the leading axis it holds] for the first leaf, on this host
        "rows_by_device": [
            [s.device.id, s.index[0].start or 0]
            for s in sorted(xs[0].addressable_shards, key=lambda s: s.device.id)
        ],
    }


def timed(facts: dict, name: str, fn):
    t0 = time.perf_counter()
    out = fn()
    facts.setdefault("seconds", {})[name] = round(time.perf_counter() - t0, 2)
    return out


def single_student_runs(config, data, keys, taus):
    """Each (key, tau) trained alone on one device, without vmap: [(state, metrics)]."""
    import jax.numpy as jnp

    from distill import student, xla

    d = student.make_distill(config, data.env_id)
    run = xla.jit(lambda k, a, t: d.run(d.init(k), a, t, config.blocks, 0, True))
    return [run(k, data.arrays(), jnp.float32(t)) for k, t in zip(keys, taus, strict=True)]


def save_metrics(out: str, metrics) -> None:
    np.savez(out + ".npz", **{k: np.asarray(v) for k, v in metrics._asdict().items()})


def student_checks(out: str) -> dict:
    import atexit
    import shutil
    import tempfile

    import jax
    import jax.numpy as jnp

    from distill import experiments, sharding, student, xla

    use_compilation_cache()
    facts: dict = {"devices": jax.device_count()}
    data = synthetic_dataset()
    config = student.StudentConfig(**STUDENT)
    seeds4 = sharding.make_mesh("seeds=4")
    data4 = sharding.make_mesh("data=4")
    keys = jax.random.split(jax.random.PRNGKey(config.seed), 4)
    singles = timed(
        facts, "single_runs", lambda: single_student_runs(config, data, keys, [config.tau] * 4)
    )

    # (a) 4 seeds on 4 devices: each bit-identical to that seed trained alone on one device
    _, state, m = timed(facts, "seeds", lambda: experiments.distil_seeds(config, data, 4, seeds4))
    save_metrics(out, m)
    facts["seeds"] = {
        "params_equal": [same(row(state.params, i), s.params) for i, (s, _) in enumerate(singles)],
        "metrics_equal": [same(row(m, i), sm) for i, (_, sm) in enumerate(singles)],
        "seeds_differ": not np.allclose(m.loss[0], m.loss[1]),
        "where": where(state.params, seeds4),
        "metrics_on_host": all(isinstance(x, np.ndarray) for x in m),
    }
    # 3 seeds on 4 devices: padded with a copy of the last seed, dropped from the results (the
    # same program as above, so it comes from the compilation cache)
    keys3 = jax.random.split(jax.random.PRNGKey(config.seed), 3)
    _, pad_state, pad_m = timed(
        facts, "padded", lambda: experiments.distil_seeds(config, data, 3, seeds4)
    )
    singles3 = timed(
        facts, "padded_reference", lambda: single_student_runs(config, data, keys3, [0.01] * 3)
    )
    facts["padded"] = {
        "rows": int(pad_m.loss.shape[0]),
        "params_equal": [
            same(row(pad_state.params, i), s.params) for i, (s, _) in enumerate(singles3)
        ],
        "metrics_equal": [same(row(pad_m, i), sm) for i, (_, sm) in enumerate(singles3)],
        "where": where(pad_state.params, seeds4),
    }

    # (a) a tau sweep: 2 taus x 2 seeds share the seeds axis. The reference is each (seed, tau)
    # pair run alone on one device through the same vmapped function (tau then is a vmapped
    # value too: with tau as a scalar argument XLA may rewrite q / tau differently).
    taus = (0.01, 1.0)
    sweep_state, sweep_m = timed(
        facts, "tau_sweep", lambda: experiments.distil_tau_sweep(config, data, 2, taus, seeds4)
    )
    d = student.make_distill(config, data.env_id)
    alone = sharding.map_seeds(
        lambda pair, a: d.run(d.init(pair[0]), a, pair[1], config.blocks, 0, True)
    )
    pairs = [(t, s) for t in range(2) for s in range(2)]
    references = timed(
        facts,
        "tau_sweep_reference",
        lambda: [
            alone((keys[s : s + 1], jnp.full((1,), taus[t])), data.arrays())[1] for t, s in pairs
        ],
    )
    facts["tau_sweep"] = {
        "shape": list(sweep_m.loss.shape),
        "metrics_equal": [
            same(row(row(sweep_m, t), s), row(ref, 0))
            for (t, s), ref in zip(pairs, references, strict=True)
        ],
        "taus_differ": not np.allclose(sweep_m.loss[0], sweep_m.loss[1]),
        "where": where(sweep_state.params, seeds4),
    }

    # (b) `student.fit` (as `distill student --mesh data=4` calls it): one student whose
    # minibatches are split over 4 devices, against the same seed trained on one device
    folder = tempfile.mkdtemp(prefix="distill-sharding-fit-")
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    meshes = []  # where fit placed its state, recorded through sharding.replicate
    replicate = sharding.replicate
    sharding.replicate = lambda tree, mesh: meshes.append(dict(mesh.shape)) or replicate(tree, mesh)
    policy = timed(
        facts,
        "data",
        lambda: student.fit(config, data.path, folder, progress=False, data=data, mesh=data4),
    )
    sharding.replicate = replicate
    key = jax.random.PRNGKey(config.seed)
    ((ref, ref_m),) = timed(
        facts, "data_reference", lambda: single_student_runs(config, data, [key], [config.tau])
    )
    # the block program fit compiled, lowered again here (from the compilation cache) to see
    # what XLA made of it and where its results land
    d = student.make_distill(config, data.env_id, mesh=data4)
    state0, arrays = sharding.replicate((d.init(key), data.arrays()), data4)
    block = xla.jit(lambda s, a, t: d.run(s, a, t, 1, 0, True))
    compiled = timed(
        facts, "data_lowering", lambda: block.lower(state0, arrays, jnp.float32(0.01)).compile()
    )
    hlo = compiled.as_text()
    state1, _ = compiled(state0, arrays, jnp.float32(config.tau))
    facts["data"] = {
        "replicated_on": meshes,
        "status": policy.manifest["status"],
        "max_param_diff": max_diff(ref.params, policy.params),
        "losses": [[r["loss"] for r in policy.manifest["metrics"]], ref_m.loss.tolist()],
        "trained_change": max_diff(ref.params, d.init(key).params),
        "where": where(state1.params, data4),
        "dataset_where": where(arrays, data4),
        "all_reduce": "all-reduce" in hlo,
        # each device's program sees a quarter of the minibatch of 64 observations of 4 floats
        "per_device_batch": "f32[16,4]" in hlo and "f32[64,4]" not in hlo,
    }

    return facts


def teacher_checks(out: str) -> dict:
    import jax

    from distill import sharding, teacher, xla

    use_compilation_cache()
    facts: dict = {"devices": jax.device_count()}
    seeds4 = sharding.make_mesh("seeds=4")
    data4 = sharding.make_mesh("data=4")
    config = teacher.default_config("CartPole-v1", **TEACHER)
    trainer = teacher.make_train(config)
    keys = jax.random.split(jax.random.PRNGKey(config.seed), 4)
    train = xla.jit(trainer.train)
    singles = timed(facts, "single_runs", lambda: [train(k) for k in keys])
    state, m = timed(facts, "seeds", lambda: teacher.train_seeds(config, 4, seeds4))
    dp_trainer = teacher.make_train(config, data4)
    dp, dp_m = timed(
        facts, "data", lambda: xla.jit(dp_trainer.train)(sharding.replicate(keys[0], data4))
    )
    ref, ref_m = singles[0]
    facts["atari"] = atari_checks(data4)
    facts["seeds"] = {
        "params_equal": [same(row(state.params, i), s.params) for i, (s, _) in enumerate(singles)],
        "max_param_diff": max(
            max_diff(row(state.params, i), s.params) for i, (s, _) in enumerate(singles)
        ),
        "returns_equal": [
            same(row(m.return_sum, i), sm.return_sum) for i, (_, sm) in enumerate(singles)
        ],
        "updates": int(np.asarray(state.updates)[0]),
        "where": where(state.params, seeds4),
    }
    facts["data"] = {
        "max_param_diff": max_diff(ref.params, dp.params),
        "trained_change": max_diff(ref.params, trainer.init(keys[0]).params),
        "where": where(dp.params, data4),
        "replay_where": where(dp.replay, data4),
    }
    return facts


def atari_checks(mesh) -> dict:
    """`fit_atari` on a data=4 mesh against the same run on one device (Pong, a few updates)."""
    import tempfile

    from distill import sharding, teacher

    config = teacher.default_config("ALE/Pong-v5", **ATARI)
    replicate = sharding.replicate
    meshes = []
    sharding.replicate = lambda tree, m: meshes.append(dict(m.shape)) or replicate(tree, m)
    with tempfile.TemporaryDirectory() as folder:
        run = lambda name, m: teacher.fit_atari(  # noqa: E731
            config, f"{folder}/{name}", eval_episodes=1, progress=False, log_every=8, mesh=m
        )
        ref = run("one", None)
        dp = run("data", mesh)
        sharding.replicate = replicate
    return {
        "replicated_on": meshes,
        "status": [ref.manifest["status"], dp.manifest["status"]],
        "returns_equal": [r["mean_return"] for r in ref.manifest["metrics"]]
        == [r["mean_return"] for r in dp.manifest["metrics"]],
        "max_param_diff": max_diff(ref.params, dp.params),
        "losses": [
            [r["loss"] for r in ref.manifest["metrics"]],
            [r["loss"] for r in dp.manifest["metrics"]],
        ],
    }


def multitask_checks(out: str) -> dict:
    """Multi-task students over seeds=4 and data=4 meshes, and a data-parallel multi-task DQN,
    against the same runs on one device."""
    import jax

    from distill import experiments, networks, sharding, student, teacher, xla
    from distill import multitask as mt

    use_compilation_cache()
    # MinAtar convolutions in their im2col form, not "matmul" (what "auto" picks on a CPU): as a
    # dot, the forward convolution of 4 vmapped seeds and of one seed per device get kernels
    # picked by shape that round differently, and after 200 RMSProp updates the losses differ
    # by 6.7e-4 of their scale (measured, jaxlib 0.10.2), where with im2col they agree to 1 ulp
    # (1.2e-7). The seeds' sharding is what this checks; the forms agree in tests/test_networks.
    networks.MATMUL_MAX_SIDE = 0
    facts: dict = {"devices": jax.device_count()}
    seeds4 = sharding.make_mesh("seeds=4")
    data4 = sharding.make_mesh("data=4")
    config = student.StudentConfig(**MULTI_STUDENT)
    datas = tuple(synthetic_minatar(g).arrays() for g in MULTI_GAMES)
    run = lambda mesh, c=config: experiments.distil_multitask_seeds(  # noqa: E731
        c, MULTI_GAMES, datas, 4, mesh
    )
    ref = timed(facts, "students_reference", lambda: run(None))
    by_seeds = timed(facts, "students_seeds", lambda: run(seeds4))
    by_data = timed(facts, "students_data", lambda: run(data4))
    # the loss of each of the first updates, before RMSProp amplifies rounding (a gradient near
    # zero gets a step of the full learning rate whatever its sign)
    first = dataclasses.replace(config, updates=6, eval_every=1, eval_episodes=1)
    first_ref, first_data = (run(mesh, first).loss for mesh in (None, data4))
    facts["students"] = {
        "shape": list(np.asarray(ref.score).shape),  # [seeds, blocks, games]
        "seeds_scores_equal": [same(row(by_seeds.score, i), row(ref.score, i)) for i in range(4)],
        "seeds_max_loss_diff": max_diff(by_seeds.loss, ref.loss),
        "seeds_differ": not np.allclose(np.asarray(ref.loss)[0], np.asarray(ref.loss)[1]),
        "where_seeds": where(by_seeds, seeds4),
        "data_max_loss_diff": max_diff(by_data.loss, ref.loss),
        "data_first_updates_max_rel_diff": float(
            np.max(np.abs(np.asarray(first_data) / np.asarray(first_ref) - 1))
        ),
        "loss_scale": float(np.abs(np.asarray(ref.loss)).min()),
        "scores_finite": bool(np.isfinite(np.asarray(by_data.score)).all()),
    }
    dqn = teacher.default_config(MULTI_GAMES[0], **MULTI_DQN)
    key = jax.random.PRNGKey(0)
    states = {}
    for name, mesh in (("dqn_reference", None), ("dqn_data", data4)):
        network, init, train, iterations = mt.make_multitask_train(dqn, MULTI_GAMES, mesh)
        k = key if mesh is None else sharding.replicate(key, mesh)
        states[name] = timed(
            facts,
            name,
            lambda init=init, train=train, k=k, n=iterations: xla.jit(
                lambda kk: train(init(kk), n)
            )(k),
        )
    (ref_state, ref_m), (dp_state, dp_m) = states["dqn_reference"], states["dqn_data"]
    facts["dqn"] = {
        "updates": int(ref_state.updates),
        "max_param_diff": max_diff(ref_state.params, dp_state.params),
        "trained_change": max_diff(ref_state.params, init(key).params),
        "where": where(dp_state.params, data4),
        "replay_where": where(dp_state.replays, data4),
        # the acting policy follows the parameters: once rounding flips one greedy action the
        # two runs see different games, so the run is kept short enough that none flips
        "returns_equal": same(ref_m[0], dp_m[0]),
        "max_loss_rel_diff": float(
            np.nanmax(np.abs(np.asarray(ref_m[2]) - np.asarray(dp_m[2])) / np.asarray(ref_m[2]))
        ),
    }
    return facts


def distributed_checks(out: str, port: int, processes: int, process_id: int) -> dict:
    from distill import sharding

    use_compilation_cache()
    sharding.initialize_distributed(f"localhost:{port}", processes, process_id)
    sharding.initialize_distributed(f"localhost:{port}", processes, process_id)  # a no-op
    import jax

    from distill import experiments, student

    facts: dict = {
        "process_count": jax.process_count(),
        "process_index": jax.process_index(),
        "devices": jax.device_count(),
        "local_devices": jax.local_device_count(),
        "share": sharding.process_share(["a", "b", "c"]),
        "main": sharding.is_main_process(),
    }
    config = student.StudentConfig(**STUDENT)
    # seeds over the processes, each student's minibatch over the devices of its process
    mesh = sharding.make_mesh(f"seeds={processes},data=all")
    _, state, m = experiments.distil_seeds(config, synthetic_dataset(), 4, mesh)
    sharding.barrier("sharding-checks")
    save_metrics(out, m)
    facts["mesh_shape"] = dict(mesh.shape)
    facts["mesh_processes"] = [[d.process_index for d in r] for r in mesh.devices.tolist()]
    facts["where"] = where(state.params, mesh)
    facts["fully_addressable"] = jax.tree_util.tree_leaves(state.params)[0].is_fully_addressable
    return facts


if __name__ == "__main__":
    mode, out = sys.argv[1], sys.argv[2]
    checks = {"student": student_checks, "teacher": teacher_checks, "multitask": multitask_checks}
    if mode in checks:
        result = checks[mode](out)
    else:
        result = distributed_checks(out, *(int(a) for a in sys.argv[3:6]))
    with open(out, "w") as f:
        json.dump(result, f, indent=1)
