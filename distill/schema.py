"""Hand-written schemas of every manifest kind and of dataset shards: a file that does not fit is
refused with one line naming the file and the field, before any of it is used.

A schema is a mapping `field -> Field(check, wants, required)`; `validate(manifest, schema,
where)` raises `CheckpointError("where: field 'x' must be <wants>, got <what it is>")`. The
kinds: every manifest (`COMMON`: files, paths, format version), a running job's (`JOB`: kind,
status, metrics, wall_s), a policy's (`POLICY`: teacher, student, any exported policy) and a
dataset's (`DATASET`). `check_shard` holds a shard's arrays against its dataset's manifest.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

KNOWN_FORMAT_VERSIONS = (1,)
STATUSES = ("running", "complete")


class CheckpointError(ValueError):
    """A missing, damaged or mismatched file; the message names it."""


class Field(NamedTuple):
    check: Callable[[Any], bool]
    wants: str  # what the message says the field must be
    required: bool = True


def _int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _positive_int(v: Any) -> bool:
    return _int(v) and v > 0


def _count(v: Any) -> bool:
    return _int(v) and v >= 0


def _str(v: Any) -> bool:
    return isinstance(v, str) and v != ""


def _number(v: Any) -> bool:
    return (_int(v) or isinstance(v, float)) and math.isfinite(v)


COUNT_MAX = 2**31 - 1  # steps and updates: every config caps its counts at int32's maximum


def _bounded_count(v: Any) -> bool:
    return _count(v) and v <= COUNT_MAX


def _plain_name(v: Any) -> bool:
    """A file name inside the folder: no separators, not '.' or '..' (a hostile manifest could
    otherwise point outside the folder)."""
    return _str(v) and "/" not in v and "\\" not in v and v not in (".", "..")


def _name_map(v: Any) -> bool:
    return isinstance(v, dict) and all(_plain_name(k) and _plain_name(x) for k, x in v.items())


def _checksums(v: Any) -> bool:
    """Plain file names (a name such as '../../etc/passwd' would be read or kept from outside
    the folder) to non-empty checksum strings."""
    return isinstance(v, dict) and all(_plain_name(k) and _str(x) for k, x in v.items())


def _list_of(check: Callable[[Any], bool]) -> Callable[[Any], bool]:
    return lambda v: isinstance(v, list) and all(check(x) for x in v)


def _dict(v: Any) -> bool:
    return isinstance(v, dict)


def _real(v: Any) -> bool:
    """A number, NaN allowed (a score not measured is stored as NaN)."""
    return _int(v) or isinstance(v, float)


def _unique_names(v: Any) -> bool:
    """Shard names, each once: a shard listed twice would be trained on twice."""
    return _list_of(_plain_name)(v) and len(set(v)) == len(v)


COMMON = {
    "files": Field(_checksums, "a mapping of plain file names to sha256 strings"),
    "paths": Field(_name_map, "a mapping of plain file names to stored ones", required=False),
    "format_version": Field(
        lambda v: v in KNOWN_FORMAT_VERSIONS and _int(v),
        f"a known format version {KNOWN_FORMAT_VERSIONS}",
        required=False,
    ),
    "kind": Field(_str, "a non-empty string", required=False),
    "status": Field(lambda v: v in STATUSES, f"one of {STATUSES}", required=False),
}
JOB = {
    "kind": Field(_str, "a non-empty string"),
    "status": Field(lambda v: v in STATUSES, f"one of {STATUSES}"),
    "metrics": Field(_list_of(_dict), "a list of metric rows (mappings)", required=False),
    "wall_s": Field(lambda v: _number(v) and v >= 0, "a number >= 0", required=False),
}
POLICY = {
    "env_id": Field(_str, "an env id (a non-empty string)"),
    "net": Field(_str, "a network name (a non-empty string)"),
    "num_actions": Field(_positive_int, "a positive integer"),
    "config": Field(_dict, "a mapping", required=False),
    # written when a run finishes; the CLI prints them
    "evaluation": Field(_dict, "a mapping (the evaluation's summary)", required=False),
    "random_evaluation": Field(_dict, "a mapping (the evaluation's summary)", required=False),
    "final_score": Field(_real, "a number", required=False),
    "env_steps": Field(_bounded_count, f"an integer in [0, {COUNT_MAX:,}]", required=False),
    "updates": Field(_bounded_count, f"an integer in [0, {COUNT_MAX:,}]", required=False),
    "dataset": Field(
        lambda v: v is None or _dict(v),
        "a mapping (the dataset's fingerprint) or null",
        required=False,
    ),
}
DATASET = {
    "env_id": Field(_str, "an env id (a non-empty string)"),
    "num_actions": Field(_positive_int, "a positive integer"),
    "obs_shape": Field(_list_of(_positive_int), "a list of positive integers"),
    "stack": Field(_positive_int, "a positive integer"),
    "shards": Field(_unique_names, "a list of distinct shard file names"),
    "rows": Field(_bounded_count, f"an integer in [0, {COUNT_MAX:,}]"),
    "num_envs": Field(_positive_int, "a positive integer"),
    "teacher": Field(_dict, "a mapping (the teacher's fingerprint)", required=False),
    "config": Field(_dict, "a mapping", required=False),
    "coverage": Field(lambda v: v is None or _dict(v), "a mapping or null", required=False),
}
KINDS = {"teacher": POLICY, "student": POLICY, "dataset": DATASET}


def describe(v: Any) -> str:
    """A short account of a value for messages: its type, and the value when short."""
    text = repr(v)
    return f"{type(v).__name__} {text}" if len(text) <= 40 else type(v).__name__


def validate(manifest: Any, schema: Mapping[str, Field], where: str | Path) -> dict:
    """`manifest` if it fits `schema`; else CheckpointError naming `where` and the field."""
    if not isinstance(manifest, dict):
        raise CheckpointError(f"{where}: not a distill manifest (a {type(manifest).__name__})")
    for name, field in schema.items():
        if name not in manifest:
            if field.required:
                raise CheckpointError(f"{where}: field {name!r} is missing")
            continue
        if not field.check(manifest[name]):
            raise CheckpointError(
                f"{where}: field {name!r} must be {field.wants}, got {describe(manifest[name])}"
            )
    return manifest


def validate_kind(manifest: dict, where: str | Path, kind: str | None = None) -> dict:
    """The job fields and the schema of the manifest's kind (`kind`: the schema to use)."""
    validate(manifest, JOB, where)
    kind = kind or manifest["kind"]
    validate(manifest, KINDS.get(kind, {}), where)
    unlisted = [n for n in manifest.get("shards", []) if n not in manifest.get("files", {})]
    if kind == "dataset" and unlisted:
        raise CheckpointError(f"{where}: field 'shards' names {unlisted[0]}, which 'files' lacks")
    return check_counts(manifest, where) if kind in COUNTERS else manifest


def validate_policy(manifest: dict, where: str | Path) -> dict:
    """A policy's manifest (teacher, student, exported): POLICY's fields and plausible counts."""
    return check_counts(validate(manifest, POLICY, where), where)


COUNTERS = {"teacher": "env_steps", "student": "updates"}  # where a policy's run is


def _config_int(manifest: dict, name: str) -> int | None:
    config = manifest.get("config")
    value = config.get(name) if isinstance(config, dict) else None
    return value if _positive_int(value) else None


def check_counts(manifest: dict, where: str | Path) -> dict:
    """`env_steps` at most the config's total_steps plus one vector step, `updates` at most the
    config's updates (where the config says them): a larger count is no run of that config.
    A running teacher or student must say where it is (every job writes it)."""
    counter = COUNTERS.get(manifest.get("kind"))
    if manifest.get("status") == "running" and counter and counter not in manifest:
        raise CheckpointError(f"{where}: field {counter!r} is missing")
    total, envs_n = _config_int(manifest, "total_steps"), _config_int(manifest, "num_envs")
    steps = manifest.get("env_steps")
    if total is not None and steps is not None and steps > total + (envs_n or 0):
        raise CheckpointError(
            f"{where}: field 'env_steps' is {steps:,}, more than the config's total_steps "
            f"({total:,}) allow"
        )
    cap, updates = _config_int(manifest, "updates"), manifest.get("updates")
    if cap is not None and updates is not None and updates > cap:
        raise CheckpointError(
            f"{where}: field 'updates' is {updates:,}, more than the config's updates ({cap:,})"
        )
    return manifest


def check_kind(manifest: dict, where: str | Path, folder: str | Path, kind: str, what: str) -> None:
    """Refuse a manifest of another kind, naming both; a missing or mistyped `kind` is named as
    such (not as a kind called None)."""
    validate(manifest, {"kind": JOB["kind"]}, where)
    if manifest["kind"] != kind:
        raise CheckpointError(f"{folder}: holds a {manifest['kind']!r}, not a {what}")


def describe_counter(manifest: dict) -> str:
    """Where a policy's run stopped, for a summary line: '4,000 env steps', '200 updates'."""
    for field, unit in (("env_steps", "env steps"), ("updates", "updates")):
        if _count(manifest.get(field)):
            return f"{manifest[field]:,} {unit}"
    return "no step count recorded"


# ---------------------------------------------------------------------------- shards


def shard_rows(name: str) -> int | None:
    """The rows a shard's name promises ('shard_00003_512.npz' -> 512); None if not of that form."""
    try:
        return int(name.rsplit("_", 1)[1].split(".")[0])
    except (IndexError, ValueError):
        return None


def _shape(a: np.ndarray) -> str:
    return f"{list(a.shape)} {a.dtype}"


def check_shard(
    where: str | Path, arrays: Mapping[str, np.ndarray], manifest: dict, obs_dtype: Any = None
) -> int:
    """Hold one shard's arrays against its dataset's manifest; return its rows.

    Required: obs `[rows, envs, *frame]`, q `[rows, envs, actions]` float32 and finite, action
    `[rows, envs]` int32 in [0, actions), reward `[rows, envs]` float32 and finite, done
    `[rows, envs]` bool; with `stack` > 1 also history_obs `[h, envs, *frame]` and
    history_done `[h, envs]`.
    Optional: t `[rows, envs]` int32 (time in episode). `rows` is the one in the shard's name.
    """
    envs_n, actions, stack = manifest["num_envs"], manifest["num_actions"], manifest["stack"]
    obs_shape = tuple(manifest["obs_shape"])
    frame = obs_shape[1:] if stack > 1 else obs_shape
    rows = shard_rows(Path(str(where)).name)
    if rows is None:
        raise CheckpointError(f"{where}: not a shard name (shard_<index>_<rows>.npz)")
    need = ["obs", "q", "action", "reward", "done"]
    if stack > 1:
        need += ["history_obs", "history_done"]
    missing = [k for k in need if k not in arrays]
    if missing:
        raise CheckpointError(f"{where}: shard has no {', '.join(missing)}")
    h = arrays["history_obs"].shape[0] if stack > 1 else 0
    expected = {
        "obs": ((rows, envs_n, *frame), obs_dtype),
        "q": ((rows, envs_n, actions), np.float32),
        "action": ((rows, envs_n), np.int32),
        "reward": ((rows, envs_n), np.float32),
        "done": ((rows, envs_n), np.bool_),
        "t": ((rows, envs_n), np.int32),
        "history_obs": ((h, envs_n, *frame), obs_dtype),
        "history_done": ((h, envs_n), np.bool_),
    }
    for key, (shape, dtype) in expected.items():
        if key not in arrays:
            continue
        a = arrays[key]
        if tuple(a.shape) != shape or (dtype is not None and a.dtype != np.dtype(dtype)):
            want = f"{list(shape)} {np.dtype(dtype) if dtype is not None else ''}".rstrip()
            raise CheckpointError(f"{where}: {key!r} is {_shape(a)}, expected {want}")
    if not np.isfinite(arrays["q"]).all():
        raise CheckpointError(f"{where}: 'q' holds NaN or infinite teacher Q-values")
    for key in ("obs", "history_obs"):  # float observations (CartPole's) come finite from an env
        a = arrays.get(key)
        if a is not None and np.issubdtype(a.dtype, np.floating) and not np.isfinite(a).all():
            raise CheckpointError(f"{where}: {key!r} holds NaN or infinite observations")
    if not np.isfinite(arrays["reward"]).all():
        raise CheckpointError(f"{where}: 'reward' holds NaN or infinite rewards")
    action = arrays["action"]
    if action.size and (action.min() < 0 or action.max() >= actions):
        raise CheckpointError(f"{where}: 'action' holds actions outside [0, {actions})")
    if "t" in arrays and arrays["t"].size and arrays["t"].min() < 0:
        raise CheckpointError(f"{where}: 't' holds negative times in episode")
    return rows


def check_rows(where: str | Path, manifest: dict, rows: int) -> None:
    """The shards' rows together must be the manifest's `rows`."""
    if rows != manifest["rows"]:
        raise CheckpointError(
            f"{where}: field 'rows' says {manifest['rows']} but the shards hold {rows}"
        )
