"""Students of one config trained side by side, one per seed (or per (tau, seed) pair), and the
on-disk cache that lets a long experiment resume between students.

Seeds run side by side under `jax.vmap`, in one compiled call per (game, loss, network); with
`distil_losses`, the seeds of several losses (the loss comparison's NLL, MSE and KL) share one
call per (game, network). A device mesh (`distill.sharding`) splits the seeds over its `seeds`
axis and each student's minibatches over its `data` axis.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from distill import checkpoint, dataset, distillation, envs, families, plateau, sharding, student
from distill.experiments import common


def distil_seeds(
    config: student.StudentConfig,
    data: dataset.Dataset,
    seeds: int,
    mesh: jax.sharding.Mesh | None = None,
    cache: str | Path | None = None,
):
    """Train `seeds` students side by side (jax.vmap); returns final params and metrics.

    Metrics are `[seeds, blocks]` numpy arrays (loss, agreement, in-env score after each block).
    With a `mesh` the seeds are split over its `seeds` axis (per seed bit-identical to the
    single-device run) and each student's minibatches over its `data` axis
    (`sharding.map_seeds`); the final state stays split over `seeds`.

    With a `cache` folder the finished students are stored there under a name derived from the
    config, the dataset's checksums and `seeds`, and a later call with the same three reads them
    back instead of training: a long experiment interrupted between students loses none. Under
    the plateau rule the students' state is also stored after every chunk (`PARTIAL` inside that
    folder), so one interrupted half-way resumes from its last chunk.

    Atari envs live on the host and Atari-size convolutions train fastest one update per
    compiled call on CPU, so there each seed is a `student.fit` run (seed `config.seed + s`,
    evaluated in the env after every block) in `cache` (or a temporary folder), which also
    resumes a student interrupted half-way.
    """
    memo_key = _memo_key(config, data, seeds, mesh)
    if memo_key in common._MEMO:
        return common._MEMO[memo_key]
    if not families.of(data.env_id).in_graph:
        # one folder per seed inside: a run with more seeds reuses the ones it has
        folder = Path(cache) / student_folder_name(config, data) if cache else None
        result = _distil_host_seeds(config, data, seeds, mesh, folder)
    else:
        folder = Path(cache) / student_folder_name(config, data, seeds) if cache else None
        if folder is not None and (folder / checkpoint.MANIFEST).exists():
            result = _read_students(folder, config, data, seeds)
        elif config.plateau_blocks:
            result = _distil_plateau_seeds(config, data, seeds, mesh, folder)
            if folder is not None:
                _write_students(folder, config, data, seeds, result)
                drop_partial(folder / PARTIAL)
        else:
            result = _distil_in_graph_seeds(config, data, seeds, mesh)
            if folder is not None:
                _write_students(folder, config, data, seeds, result)
    common._MEMO[memo_key] = result
    return result


def _memo_key(config, data, seeds, mesh) -> tuple:
    return ("distil", config, data.path, tuple(sorted(data.manifest["files"].items())), seeds, mesh)


def _distil_in_graph_seeds(config, data, seeds, mesh):
    distiller = student.make_distill(config, data.env_id, data.stack, mesh=mesh)
    keys = jax.random.split(jax.random.PRNGKey(config.seed), seeds)

    def one(key, arrays, hyper):
        state = distiller.init(key)
        return distiller.run(state, arrays, hyper, config.blocks, data.first_row, True)

    run = student.map_students(one, mesh)
    hyper = jax.tree_util.tree_map(jnp.float32, config.hyper)  # the loss's, e.g. {"tau": 0.01}
    state, metrics = run(keys, data.arrays(), hyper)
    return distiller, state, sharding.to_host(metrics)


def _distil_plateau_seeds(config, data, seeds, mesh, folder: Path | None = None):
    """Seeds side by side under the plateau rule: chunks of `plateau_blocks` blocks, one
    compiled call each, until every seed has stopped or the cap (`config.blocks`) is reached.
    Metrics are `[seeds, blocks run]`, nan after a seed stopped; the score is nan (no evaluation
    in the env: the caller scores the final students on the paired episodes). With a `folder`
    the students half-way are checkpointed in `folder/PARTIAL` (`until_plateau`)."""
    distiller = student.make_distill(config, data.env_id, data.stack, mesh=mesh)
    keys = jax.random.split(jax.random.PRNGKey(config.seed), seeds)
    train, held = student.held_out_split(config, data)
    hyper = jax.tree_util.tree_map(jnp.float32, config.hyper)
    chunk = min(config.plateau_blocks, config.blocks)

    def one(carry, train, held, hyper):
        state, rule = carry
        return distiller.run_plateau(state, rule, train, held, hyper, chunk, data.first_row)

    start = sharding.map_seeds(lambda key: (distiller.init(key), plateau.start()), mesh)
    run = student.map_students(one, mesh)
    partial = None if folder is None else (folder / PARTIAL, _identity(config, data, seeds))
    carry, metrics = until_plateau(
        lambda c: run(c, train, held, hyper), start(keys), lambda c: c[1].active, config, partial
    )
    return distiller, carry[0], metrics


def until_plateau(
    run, carry, active, config: student.StudentConfig, partial: tuple[Path, dict] | None = None
):
    """`carry, m = run(carry)` (one compiled chunk of `min(plateau_blocks, blocks)` blocks for
    every student) until no student is `active(carry)` `[n]` or the cap (`config.blocks`) is
    reached. Returns the last carry and BlockMetrics `[n, blocks run]` (numpy).

    With `partial` (a folder, and the identity of the students in it) the carry and the metrics
    so far are written there after every chunk, a carry found there is where it starts, and a
    progress bar counts the updates (a student of a full budget can train for an hour)."""
    from tqdm.auto import tqdm

    chunk, parts, blocks = min(config.plateau_blocks, config.blocks), [], 0
    if partial is not None:
        carry, parts, blocks = read_partial(*partial, carry)
    bar = tqdm(
        total=config.blocks * config.eval_every,
        initial=blocks * config.eval_every,
        unit="update",
        desc=_label(partial),
        disable=partial is None,
    )
    live = np.asarray(sharding.to_host(active(carry)))  # all True at the start
    while blocks < config.blocks and live.any():
        carry, m = run(carry)
        parts.append(sharding.to_host(m))
        blocks += chunk
        if partial is not None:
            write_partial(*partial, carry, parts, blocks)
        live = np.asarray(sharding.to_host(active(carry)))
        bar.set_postfix(improving=f"{int(live.sum())}/{live.size}", held_out=_best(parts))
        bar.update(chunk * config.eval_every)
    bar.close()
    metrics = jax.tree_util.tree_map(
        lambda *xs: np.concatenate(xs, axis=1)[:, : config.blocks], *parts
    )
    return carry, student.BlockMetrics(*metrics)


def _label(partial: tuple[Path, dict] | None) -> str:
    """'students <game>_<net>_<loss>[, <loss>...]' from the names of the students' folders."""
    if partial is None:
        return "students"
    names = partial[1].get("students") or [partial[0].parent.name]
    losses = ", ".join(n.rsplit("_", 2)[1] for n in names)  # <game>_<net>_<loss>_<hash>
    return f"students {names[0].rsplit('_', 2)[0]}_{losses}"


def _best(parts: list) -> str:
    """The best held-out agreement so far over every student, for the progress bar."""
    held = np.concatenate([np.asarray(p.held_out, np.float64) for p in parts], axis=1)
    return f"{np.nanmax(held):.3f}" if np.isfinite(held).any() else "-"


# Students under the plateau rule, half-way: the carry (states and rules) after the last chunk.
# A long run (a large MinAtar student trains for an hour or more on a CPU) resumes from there.
PARTIAL = "partial"


def _identity(config: student.StudentConfig, data: dataset.Dataset, seeds: int) -> dict:
    return {
        "config": student.config_identity(config),
        "dataset": student.dataset_fingerprint(data),
        "seeds": seeds,
    }


def write_partial(folder: Path, identity: dict, carry, parts: list, blocks: int) -> None:
    """The carry and the metrics of `blocks` blocks so far, atomically (`write_checkpoint`)."""
    metrics = jax.tree_util.tree_map(lambda *xs: np.concatenate(xs, axis=1), *parts)
    checkpoint.write_checkpoint(
        folder,
        {checkpoint.TRAIN_STATE: checkpoint.pytree_to_bytes(sharding.to_host(carry))},
        {
            "kind": "students-partial",
            "identity": identity,
            "blocks": blocks,
            "metrics": {k: np.asarray(v).tolist() for k, v in metrics._asdict().items()},
        },
    )


def read_partial(folder: Path, identity: dict, carry) -> tuple:
    """(carry, [metrics so far], blocks run) from `folder`; `(carry, [], 0)` where there is
    none. Students of another config, dataset or seed count there are refused by name."""
    if not (folder / checkpoint.MANIFEST).exists():
        return carry, [], 0
    manifest = checkpoint.read_manifest(folder)
    stored = json.loads(json.dumps(identity))  # as JSON reads it back (tuples become lists)
    if manifest.get("kind") != "students-partial" or manifest.get("identity") != stored:
        raise checkpoint.CheckpointError(
            f"{folder / checkpoint.MANIFEST}: holds another run's students half-way; remove the "
            "folder to train these from the start"
        )
    raw = checkpoint.read_verified(folder, checkpoint.TRAIN_STATE, manifest)
    name = str(checkpoint.path_of(folder, checkpoint.TRAIN_STATE, manifest))
    carry = checkpoint.pytree_from_bytes(raw, sharding.to_host(carry), name)
    m = student.BlockMetrics(
        *(np.array(manifest["metrics"][k], np.float32) for k in student.BlockMetrics._fields)
    )
    return carry, [m], int(manifest["blocks"])


def drop_partial(folder: Path) -> None:
    """Remove a finished run's `PARTIAL` folder (its students are stored whole beside it)."""
    shutil.rmtree(folder, ignore_errors=True)


def _distil_host_seeds(config, data, seeds, mesh, folder):
    """One `student.fit` per seed (in `folder`, resumable), stacked like the in-graph path."""
    import tempfile

    with tempfile.TemporaryDirectory() as scratch:
        root = folder if folder is not None else Path(scratch)
        policies = [
            student.fit(
                dataclasses.replace(config, seed=config.seed + s),
                data.path,
                str(root / f"seed_{s}"),
                resume=True,
                progress=False,
                data=data,
                mesh=mesh,
            )
            for s in range(seeds)
        ]
    rows = [p.manifest["metrics"] for p in policies]
    metrics = student.BlockMetrics(
        *(
            np.array([[r.get(k, np.nan) for r in rs] for rs in rows], np.float32)
            for k in student.BlockMetrics._fields
        )
    )
    params = jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), *(p.params for p in policies))
    state = student.StudentState(params, None, None, jnp.full((seeds,), config.updates))
    return _distiller(config, data), state, metrics


def student_folder_name(
    config: student.StudentConfig, data: dataset.Dataset, seeds: int | None = None
) -> str:
    """`<game>_<net>_<loss>_<hash>`: the hash covers the whole config, the dataset and seeds
    (students trained side by side depend on how many there are; `None` for a folder of
    independent per-seed runs)."""
    key = json.dumps(
        {
            "config": student.config_identity(config),
            "dataset": sorted(data.manifest["files"].items()),
            "seeds": seeds,
        },
        sort_keys=True,
    )
    digest = hashlib.sha256(key.encode()).hexdigest()[:12]
    return f"{envs.spec(data.env_id).safe_name}_{config.net}_{config.loss}_{digest}"


def _write_students(folder: Path, config, data, seeds, result) -> None:
    _, state, metrics = result
    checkpoint.write_checkpoint(
        folder,
        {checkpoint.TRAIN_STATE: checkpoint.pytree_to_bytes(sharding.to_host(state))},
        {
            "kind": "students",
            "env_id": data.env_id,
            "config": student.config_identity(config),
            "dataset": student.dataset_fingerprint(data),
            "seeds": seeds,
            "metrics": {k: np.asarray(v).tolist() for k, v in metrics._asdict().items()},
        },
    )


def _read_students(folder: Path, config, data, seeds):
    """Students `_write_students` stored; anything that does not match is refused by name."""
    manifest = checkpoint.read_manifest(folder)
    if (
        manifest.get("config") != student.config_identity(config)
        or manifest.get("seeds") != seeds
        or not dataset.same_source(manifest.get("dataset"), student.dataset_fingerprint(data))
    ):
        raise checkpoint.CheckpointError(
            f"{folder / checkpoint.MANIFEST}: holds students of another config, dataset or "
            "number of seeds"
        )
    distiller = _distiller(config, data)
    keys = jax.random.split(jax.random.PRNGKey(config.seed), seeds)
    template = jax.eval_shape(jax.vmap(distiller.init), keys)
    raw = checkpoint.read_verified(folder, checkpoint.TRAIN_STATE, manifest)
    state = checkpoint.pytree_from_bytes(
        raw, template, str(checkpoint.path_of(folder, checkpoint.TRAIN_STATE, manifest))
    )
    stored = manifest["metrics"]
    blocks = len(stored["loss"][0]) if seeds else 0
    metrics = student.BlockMetrics(
        *(
            np.array(stored.get(k, np.full((seeds, blocks), np.nan)), np.float32)
            for k in student.BlockMetrics._fields
        )
    )
    return distiller, state, metrics


def _distiller(config, data):
    return student.make_distill(config, data.env_id, data.stack)


def distil_tau_sweep(
    config: student.StudentConfig,
    data: dataset.Dataset,
    seeds: int,
    taus,
    mesh: jax.sharding.Mesh | None = None,
):
    """Students for every (tau, seed) pair side by side in one compiled call: `(state, metrics)`
    with a leading `[taus, seeds]` pair of axes.

    The pairs share one leading axis, split over the mesh's `seeds` axis. Seed s starts from the
    same key for every tau, so row t holds the students `distil_seeds` trains with
    `tau=taus[t]` (to float rounding: here tau is a vmapped value, there a scalar). Sweeps over
    network size change shapes: run one call per size (as `compression` does).
    """
    taus = np.asarray(taus, np.float32)
    distiller = student.make_distill(config, data.env_id, data.stack, mesh=mesh)
    keys = jax.random.split(jax.random.PRNGKey(config.seed), seeds)
    in_graph = families.of(data.env_id).in_graph
    pairs = (jnp.tile(keys, (len(taus), 1)), jnp.repeat(jnp.asarray(taus), seeds))

    def one(pair, arrays):
        key, tau = pair
        return distiller.run(
            distiller.init(key), arrays, tau, config.blocks, data.first_row, in_graph
        )

    state, metrics = sharding.map_seeds(one, mesh)(pairs, data.arrays())
    unflatten = lambda x: x.reshape(len(taus), seeds, *x.shape[1:])  # noqa: E731
    return state, jax.tree_util.tree_map(unflatten, sharding.to_host(metrics))


def distil_losses(
    configs: list[student.StudentConfig],
    data: dataset.Dataset,
    seeds: int,
    mesh: jax.sharding.Mesh | None = None,
    cache: str | Path | None = None,
) -> list[tuple]:
    """Students of several losses, `seeds` each, side by side in ONE compiled program.

    `configs` differ only in `loss` and `tau` (the same network, optimiser, budget and seed):
    their students share the program's shapes, so seeds and losses are vmapped together
    (`distillation.select_loss`: the network runs once per minibatch, the loss is picked by its
    index). Returns, per config, what `distil_seeds(config, data, seeds, mesh, cache)` returns,
    to float rounding (seed s starts from the same key; the loss's hyperparameters are vmapped
    values there, a shared scalar here); each is memoised and cached under the same name, so a
    later `distil_seeds` of one of the configs reads it back. Under the plateau rule every
    student stops at its own plateau (`student.make_distill`'s `run_plateau`: a stopped student
    is frozen, its updates masked out by a select, while the others train on), and each config's
    metrics keep the blocks its own run would have had. Configs already trained (memo or cache)
    are not trained again; Atari (host envs) and a single config go through `distil_seeds`.
    """
    base = configs[0]
    for c in configs:
        if dataclasses.replace(c, loss=base.loss, tau=base.tau) != base:
            raise ValueError(f"configs must differ only in loss and tau; got {c} and {base}")
    if not families.of(data.env_id).in_graph or len(configs) == 1:
        return [distil_seeds(c, data, seeds, mesh, cache) for c in configs]
    folders = [
        Path(cache) / student_folder_name(c, data, seeds) if cache else None for c in configs
    ]
    todo = [
        i
        for i, (c, f) in enumerate(zip(configs, folders, strict=True))
        if _memo_key(c, data, seeds, mesh) not in common._MEMO
        and not (f is not None and (f / checkpoint.MANIFEST).exists())
    ]
    if len(todo) > 1:
        partial = None
        if cache is not None and base.plateau_blocks:  # half-way state of these students together
            names = [folders[i].name for i in todo]
            digest = hashlib.sha256(json.dumps(names).encode()).hexdigest()[:12]
            partial = (Path(cache) / f"{PARTIAL}_{digest}", {"students": names, "seeds": seeds})
        trained = _distil_side_by_side([configs[i] for i in todo], data, seeds, mesh, partial)
        for i, result in zip(todo, trained, strict=True):
            if folders[i] is not None:
                _write_students(folders[i], configs[i], data, seeds, result)
            common._MEMO[_memo_key(configs[i], data, seeds, mesh)] = result
        if partial is not None:
            drop_partial(partial[0])
    return [distil_seeds(c, data, seeds, mesh, cache) for c in configs]


def _distil_side_by_side(configs, data, seeds, mesh, partial=None) -> list[tuple]:
    """`distil_losses`' training: `[len(configs) * seeds]` students (config-major) in one
    program; returns one (distiller, state, metrics) per config. `partial`: `until_plateau`'s."""
    base = configs[0]
    names = tuple(dict.fromkeys(c.loss for c in configs))
    distiller = student.make_distill(base, data.env_id, data.stack, mesh=mesh, loss_names=names)
    keys = jax.random.split(jax.random.PRNGKey(base.seed), seeds)
    hypers = [distillation.multi_hyper(names, c.loss, {"tau": c.tau}) for c in configs]
    hyper = jax.tree_util.tree_map(lambda *x: jnp.repeat(jnp.stack(x), seeds), *hypers)
    keys = jnp.tile(keys, (len(configs), 1))
    if base.plateau_blocks:
        train, held = student.held_out_split(base, data)
        chunk = min(base.plateau_blocks, base.blocks)

        def one(carry, train, held):
            (state, rule), hyper = carry
            out = distiller.run_plateau(state, rule, train, held, hyper, chunk, data.first_row)
            return (out[0], hyper), out[1]

        start = sharding.map_seeds(
            lambda kh: ((distiller.init(kh[0]), plateau.start()), kh[1]), mesh
        )
        run = student.map_students(one, mesh)
        carry, metrics = until_plateau(
            lambda c: run(c, train, held),
            start((keys, hyper)),
            lambda c: c[0][1].active,
            base,
            partial,
        )
        state = carry[0][0]
    else:

        def one(pair, arrays):
            key, hyper = pair
            return distiller.run(
                distiller.init(key), arrays, hyper, base.blocks, data.first_row, True
            )

        state, metrics = student.map_students(one, mesh)((keys, hyper), data.arrays())
        metrics = sharding.to_host(metrics)
    out = []
    for i, c in enumerate(configs):
        part = lambda x, i=i: x[i * seeds : (i + 1) * seeds]  # noqa: E731
        m = student.BlockMetrics(*jax.tree_util.tree_map(part, tuple(metrics)))
        if c.plateau_blocks:  # the blocks this config's own run would have had
            chunk = min(c.plateau_blocks, c.blocks)
            last = max(plateau.trained_blocks(h) for h in np.asarray(m.held_out))
            cols = min(-(-last // chunk) * chunk, c.blocks)
            m = student.BlockMetrics(*(x[:, :cols] for x in m))
        distil = student.make_distill(c, data.env_id, data.stack, mesh=mesh)
        out.append((distil, jax.tree_util.tree_map(part, state), m))
    return out
