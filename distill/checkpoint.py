"""Checkpoints, manifests and atomic writes; `load(path)` gives a policy any later step can use.

A checkpoint is a folder:
    manifest.json     what made it: kind, env id, network, config, steps, score, versions, and the
                      sha256 of every file beside it
    params.npz        the network's parameters (a flattened pytree)
    train_state.npz   (while training) everything needed to resume: parameters, optimiser,
                      replay, env state, random key, counters
Every file is written to a temporary name and renamed into place, and the manifest goes last, so
a crash leaves either the previous checkpoint or the new one, never a torn one. Reading checks the
checksum, the pytree structure, and (when asked) the env id and network; a mismatch is refused
with a message that names the file.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.metadata
import io
import json
import os
import platform
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from distill import envs, families, networks, schema
from distill.schema import CheckpointError

MANIFEST = "manifest.json"
PARAMS = "params.npz"
TRAIN_STATE = "train_state.npz"
FORMAT_VERSION = 1


# ---------------------------------------------------------------------------- atomic writes


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write `data` to `path` so that readers see the old file or the new one, never a part."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        tmp.unlink(missing_ok=True)
        if isinstance(e, OSError) and e.filename is None:  # a full disk names no file: we do
            raise OSError(e.errno, e.strerror, str(path)) from e
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def versions() -> dict[str, str]:
    """Versions of Python and the packages a result depends on."""
    out = {"python": platform.python_version()}
    for pkg in ("distill", "jax", "jaxlib", "flax", "optax", "gymnax", "ale-py", "numpy"):
        try:
            out[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            out[pkg] = "not installed"
    return out


# ---------------------------------------------------------------------------- pytrees on disk


def pytree_to_bytes(tree: Any) -> bytes:
    """Leaves of a pytree as an .npz archive (key arrays are stored as their raw key data)."""
    leaves = jax.tree_util.tree_leaves(tree)
    arrays = {}
    for i, leaf in enumerate(leaves):
        if jnp.issubdtype(leaf.dtype, jax.dtypes.prng_key):
            leaf = jax.random.key_data(leaf)
        arrays[f"leaf_{i:05d}"] = np.asarray(leaf)
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def pytree_from_bytes(data: bytes, template: Any, name: str) -> Any:
    """Rebuild a pytree shaped like `template`; any mismatch is refused, naming `name`."""
    try:
        archive = np.load(io.BytesIO(data))
        arrays = [archive[k] for k in sorted(archive.files)]
    except Exception as e:  # zipfile, ValueError, OSError: all mean a damaged file
        raise CheckpointError(f"{name}: cannot be read as a checkpoint archive ({e})") from e
    leaves, treedef = jax.tree_util.tree_flatten(template)
    if len(arrays) != len(leaves):
        raise CheckpointError(
            f"{name}: holds {len(arrays)} arrays but this network/state has {len(leaves)}"
        )
    out = []
    for i, (arr, ref) in enumerate(zip(arrays, leaves, strict=True)):
        ref_shape = tuple(ref.shape)
        ref_dtype = ref.dtype if hasattr(ref, "dtype") else np.asarray(ref).dtype
        if arr.shape != ref_shape and not jnp.issubdtype(ref_dtype, jax.dtypes.prng_key):
            raise CheckpointError(
                f"{name}: array {i} has shape {arr.shape}, expected {ref_shape} "
                "(another network, env or config?)"
            )
        if jnp.issubdtype(ref_dtype, jax.dtypes.prng_key):
            out.append(jax.random.wrap_key_data(jnp.asarray(arr)))
            continue
        if arr.dtype != np.dtype(ref_dtype):
            raise CheckpointError(
                f"{name}: array {i} has dtype {arr.dtype}, expected {np.dtype(ref_dtype)}"
            )
        out.append(jnp.asarray(arr))
    return jax.tree_util.tree_unflatten(treedef, out)


# ---------------------------------------------------------------------------- manifests


def read_manifest(folder: str | Path) -> dict:
    folder = Path(folder)
    path = folder / MANIFEST
    if not path.is_file():
        if not folder.exists():
            raise CheckpointError(f"{folder}: no such checkpoint folder")
        if not folder.is_dir():
            raise CheckpointError(f"{folder}: is a file, not a checkpoint folder")
        if path.exists() or path.is_symlink():
            raise CheckpointError(f"{path}: {not_regular(path)}")
        raise CheckpointError(f"{path}: missing (not a finished checkpoint folder?)")
    try:
        manifest = json.loads(path.read_text())
    except (ValueError, RecursionError) as e:
        # JSONDecodeError, UnicodeDecodeError, an integer of > 4300 digits (all ValueErrors),
        # or nesting deep enough to exhaust the stack
        raise CheckpointError(f"{path}: damaged manifest ({str(e)[:200]})") from None
    if not isinstance(manifest, dict) or "files" not in manifest:
        raise CheckpointError(f"{path}: not a distill manifest")
    return schema.validate(manifest, schema.COMMON, path)


def not_regular(path: Path) -> str:
    """What a path that exists but is no regular file is, for a message (a link to /dev/zero
    must not be called missing, nor be read without end)."""
    import stat

    try:
        mode = path.stat().st_mode
    except OSError:
        return f"is a broken link (to {os.readlink(path)}), not a regular file"
    kinds = ((stat.S_ISDIR, "a folder"), (stat.S_ISCHR, "a character device"),
             (stat.S_ISBLK, "a block device"), (stat.S_ISFIFO, "a named pipe"),
             (stat.S_ISSOCK, "a socket"))  # fmt: skip
    kind = next((word for test, word in kinds if test(mode)), "not a file")
    target = f" ({os.path.realpath(path)})" if path.is_symlink() else ""
    return f"is {kind}{target}, not a regular file"


def stored_name(name: str, sha: str) -> str:
    """The file a logical name is stored under: 'params.npz' -> 'params.<sha[:12]>.npz'.

    Content-addressed names mean a rewrite never touches the file the current manifest points
    to, so a crash at any moment leaves the previous checkpoint intact.
    """
    stem, dot, suffix = name.partition(".")
    return f"{stem}.{sha[:12]}{dot}{suffix}"


def path_of(folder: str | Path, filename: str, manifest: dict | None = None) -> Path:
    """Where the manifest says logical file `filename` is stored."""
    folder = Path(folder)
    manifest = manifest if manifest is not None else read_manifest(folder)
    return folder / manifest.get("paths", {}).get(filename, filename)


def read_verified(folder: str | Path, filename: str, manifest: dict | None = None) -> bytes:
    """The bytes of logical file `filename`, after checking them against the manifest's sha256."""
    folder = Path(folder)
    manifest = manifest if manifest is not None else read_manifest(folder)
    path = path_of(folder, filename, manifest)
    expected = manifest["files"].get(filename)
    if expected is None:
        raise CheckpointError(f"{path}: not listed in {folder / MANIFEST}")
    if not path.is_file():
        what = not_regular(path) if path.exists() or path.is_symlink() else "missing"
        raise CheckpointError(f"{path}: {what}")
    data = path.read_bytes()
    if sha256_bytes(data) != expected:
        raise CheckpointError(
            f"{path}: checksum mismatch with {MANIFEST} (truncated, corrupted or replaced)"
        )
    return data


def write_checkpoint(
    folder: str | Path, files: dict[str, bytes], manifest: dict, drop: tuple[str, ...] = ()
) -> None:
    """Write files under content-addressed names, then the manifest (the commit point).

    Files listed in an existing manifest and not rewritten keep their entries, unless named in
    `drop`. Only after the new manifest is in place are files it no longer lists deleted, so a
    process killed at any moment leaves a complete checkpoint: the old one or the new one.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    listed, paths = {}, {}
    if (folder / MANIFEST).is_file():
        try:
            old = read_manifest(folder)
            listed = dict(old.get("files", {}))
            paths = {n: old.get("paths", {}).get(n, n) for n in listed}
        except CheckpointError:
            listed, paths = {}, {}
    for name in drop:
        listed.pop(name, None)
        paths.pop(name, None)
    for name, data in files.items():
        sha = sha256_bytes(data)
        target = stored_name(name, sha)
        if not (folder / target).is_file() or sha256_file(folder / target) != sha:
            atomic_write_bytes(folder / target, data)
        listed[name], paths[name] = sha, target
    listed = {n: h for n, h in listed.items() if (folder / paths[n]).is_file()}
    paths = {n: paths[n] for n in listed}
    manifest = {
        **manifest,
        "format_version": FORMAT_VERSION,
        "files": listed,
        "paths": paths,
        "written_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "versions": versions(),
    }
    atomic_write_json(folder / MANIFEST, manifest)
    # the old versions of rewritten or dropped files are garbage now
    keep = set(paths.values()) | {MANIFEST}
    for name in {*files, *drop}:
        stem, _, suffix = name.partition(".")
        for candidate in folder.glob(f"{stem}*{suffix}"):
            if candidate.name not in keep and (
                candidate.name == name
                or re.fullmatch(
                    rf"{re.escape(stem)}\.[0-9a-f]{{12}}\.{re.escape(suffix)}", candidate.name
                )
            ):
                candidate.unlink(missing_ok=True)


def previous_run(
    folder: str | Path, resume: bool, what: str, matches: Callable[[dict], bool], made_from: str
) -> dict | None:
    """What a job about to write a `what` (teacher, student, dataset) into `folder` finds there.

    None: nothing, start afresh. Otherwise the manifest of the run there, finished (`status`
    'complete': the caller returns it) or not (the caller continues it). Without `resume` a
    folder that holds a run is refused; with it, a run that `matches` rejects is refused as made
    from `made_from` (e.g. 'another config'), and so is a non-empty folder without a manifest.
    """
    from distill.config import ConfigError

    folder = Path(folder)
    if not (folder / MANIFEST).exists():
        # hidden names (the lock, temporary files) are no run
        if resume and folder.exists() and any(not p.name.startswith(".") for p in folder.iterdir()):
            raise CheckpointError(f"{folder}: no {MANIFEST}; nothing to resume")
        return None
    manifest = read_manifest(folder)
    if not resume:
        if manifest.get("status") == "complete":
            raise ConfigError(
                f"out={str(folder)!r} already holds a finished {what}; choose another --out"
            )
        raise ConfigError(
            f"out={str(folder)!r} holds an unfinished {what}; pass --resume to continue it or "
            "choose another --out"
        )
    if not matches(manifest):
        raise CheckpointError(
            f"{folder / MANIFEST}: was made from {made_from}; resume with the same options"
        )
    return manifest


# ---------------------------------------------------------------------------- policies


@dataclasses.dataclass(frozen=True)
class Policy:
    """A loaded teacher or student. `q_values(obs)` maps env-format observations to Q-values.

    `apply(params, obs)` is the same function with parameters as an argument, for jitted code
    that should not bake large arrays in as constants.
    """

    env_id: str
    net: str
    num_actions: int
    params: Any
    manifest: dict
    path: str
    apply: Callable = dataclasses.field(repr=False)

    @property
    def spec(self) -> envs.EnvSpec:
        return envs.spec(self.env_id)

    @property
    def kind(self) -> str:
        return self.manifest.get("kind", "?")

    def q_values(self, obs: jax.Array) -> jax.Array:
        """`[batch, *obs_shape]` env-format observations -> `[batch, actions]` Q-values."""
        return self.apply(self.params, obs)


def policy_manifest(
    kind: str, env_id: str, net: str, num_actions: int, config: dict, **extra
) -> dict:
    return {
        "kind": kind,
        "env_id": env_id,
        "net": net,
        "num_actions": num_actions,
        "config": config,
        **extra,
    }


def save_policy(folder: str | Path, params: Any, manifest: dict, extra_files=None) -> None:
    """Write params.npz (+ any extra files) and the manifest."""
    files = {PARAMS: pytree_to_bytes(params), **(extra_files or {})}
    write_checkpoint(folder, files, manifest)


def load(path: str | Path, *, env_id: str | None = None, net: str | None = None) -> Policy:
    """Load a teacher or student checkpoint folder, refusing damaged or mismatched files."""
    folder = Path(path)
    manifest = read_manifest(folder)
    if manifest.get("kind") == "dataset":  # not "has no 'net'": say what the folder is
        raise CheckpointError(f"{folder}: holds a 'dataset', not a teacher or student checkpoint")
    for key in ("env_id", "net", "num_actions"):
        if key not in manifest:
            raise CheckpointError(f"{folder / MANIFEST}: has no {key!r}; not a policy checkpoint")
    schema.validate_policy(manifest, folder / MANIFEST)
    if env_id is not None and manifest["env_id"] != env_id:
        raise CheckpointError(
            f"{folder}: made for env {manifest['env_id']!r}, but {env_id!r} was asked for"
        )
    if net is not None and manifest["net"] != net:
        raise CheckpointError(f"{folder}: holds network {manifest['net']!r}, not {net!r}")
    spec = env_of(manifest, folder / MANIFEST)
    if manifest["num_actions"] != spec.num_actions:
        raise CheckpointError(
            f"{folder}: has {manifest['num_actions']} actions but {spec.env_id} has "
            f"{spec.num_actions}"
        )
    try:
        module = families.build_network(spec.env_id, manifest["net"])
    except ValueError as e:
        raise CheckpointError(f"{folder / MANIFEST}: {e}") from None
    template = jax.eval_shape(
        lambda k: networks.init_params(module, k, spec.obs_shape, spec.obs_dtype),
        jax.random.PRNGKey(0),
    )
    data = read_verified(folder, PARAMS, manifest)
    params = pytree_from_bytes(data, template, str(path_of(folder, PARAMS, manifest)))
    check_finite_params(params, path_of(folder, PARAMS, manifest))
    return Policy(
        env_id=spec.env_id,
        net=manifest["net"],
        num_actions=spec.num_actions,
        params=params,
        manifest=manifest,
        path=str(folder),
        apply=module.apply,
    )


def env_of(manifest: dict, where: str | Path) -> envs.EnvSpec:
    """The spec of the manifest's env id; an id this version does not know is refused naming
    the file and the field (a bare "unknown env id" reads as a bad option)."""
    try:
        return envs.spec(manifest["env_id"])
    except ValueError as e:
        raise CheckpointError(f"{where}: field 'env_id': {str(e).splitlines()[0]}") from None


def check_finite_params(params: Any, where: str | Path) -> None:
    """Refuse parameters holding NaN or inf: every Q-value would be nonsense (argmax of NaN
    picks action 0), yet evaluation would print a score."""
    for leaf in jax.tree_util.tree_leaves(params):
        a = np.asarray(leaf)
        if jnp.issubdtype(a.dtype, jnp.floating) and not np.isfinite(a).all():
            raise CheckpointError(f"{where}: parameters hold NaN or infinite values")


def export_policy(source: str | Path, out: str | Path, **extra) -> Policy:
    """A finished policy checkpoint in `out` from the parameters of `source`, finished or not.

    For shipping a teacher from a run that is still training: the manifest keeps the source's
    config, steps and metrics, says where the parameters came from, and adds `extra` (such as
    the evaluation the caller measured on them). `out` must not hold a checkpoint already.
    """
    src, out = Path(source), Path(out)
    if (out / MANIFEST).exists():
        raise CheckpointError(f"{out}: already holds a checkpoint; choose another --out")
    policy = load(src)
    skip = ("files", "paths", "written_at", "versions", "format_version")
    manifest = {k: v for k, v in policy.manifest.items() if k not in skip}
    manifest.update(
        status="complete",
        exported_from={
            "path": str(src),
            "status": policy.manifest.get("status"),
            "params_sha256": policy.manifest["files"][PARAMS],
        },
        **extra,
    )
    save_policy(out, policy.params, manifest)
    return load(out)
