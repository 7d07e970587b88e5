"""Checks the CLI makes before any work: numbers finite and in range, `--out` a writable folder
(not a file), enough free disk for what the job will write, a student's minibatch no larger
than its dataset. Each failure is a one-line ConfigError naming the option."""

from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path
from typing import Any

from distill.config import ConfigError

MIB = 1 << 20
SLACK = 64 * MIB  # parameters, optimiser state, manifests, metrics: small beside the data
# commands whose --out is a file (the others write a folder)
FILE_OUT = ("evaluate", "play")
JOBS = ("teacher", "dataset", "student", "export")  # whose --out is one run's folder


def option(name: str) -> str:
    return "--" + name.replace("_", "-")


def check_finite(args: Any) -> None:
    """Every float option finite: `--tau inf` or `--lr nan` would train on nonsense."""
    for name, value in sorted(vars(args).items()):
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"{option(name)}={value!r} is not valid: must be a finite number")


SEED_MIN, SEED_MAX = -(2**31), 2**32 - 1  # int32 or uint32: what every consumer of a seed takes


def check_seeds(args: Any) -> None:
    """Every `--seed`/`--*-seed` within int32/uint32: a larger one overflows a C long later."""
    for name, value in sorted(vars(args).items()):
        is_seed = name == "seed" or name.endswith("_seed")
        if is_seed and isinstance(value, int) and not SEED_MIN <= value <= SEED_MAX:
            raise ConfigError(
                f"{option(name)}={value} is not valid: must be an integer in "
                f"[{SEED_MIN}, {SEED_MAX}]"
            )


def check_range(args: Any) -> None:
    """Options whose range no config checks (the evaluation epsilon, the checkpoint interval)."""
    eps = getattr(args, "epsilon", None)
    if args.command == "evaluate" and eps is not None and not 0.0 <= eps <= 1.0:
        raise ConfigError(f"--epsilon={eps!r} is not valid: must be a number in [0, 1]")
    every = getattr(args, "checkpoint_every", None)
    if every is not None and every < 0:
        raise ConfigError(f"--checkpoint-every={every!r} is not valid: must be seconds >= 0")


def existing_parent(path: Path) -> Path:
    """The nearest folder at or above `path` that exists (where a new folder would be made)."""
    path = path.absolute()
    while not path.exists():
        path = path.parent
    return path


def check_out(out: str, is_file: bool = False, command: str = "") -> Path:
    """`--out` usable: a folder (or, `is_file`, a file) we can create or write into."""
    path = Path(out)
    if is_file:
        if path.is_dir():
            raise ConfigError(f"--out {out}: is a folder, not a file")
        check_replaceable(out, summary=command == "evaluate")
    elif path.exists() and not path.is_dir():
        raise ConfigError(f"--out {out}: is a file, not a folder")
    base = existing_parent(path.absolute().parent if is_file else path)
    if not base.is_dir():
        raise ConfigError(f"--out {out}: {base} is a file, not a folder")
    if not os.access(base, os.W_OK | os.X_OK):
        raise ConfigError(f"--out {out}: {base} is not writable")
    probe_writable(out, base)
    return base


SUMMARY_KEYS = ("scores", "source")  # what `distill evaluate --out` writes, among others


def check_replaceable(out: str, summary: bool) -> None:
    """An existing `--out` is replaced only when it is a regular file and (`summary`) an earlier
    summary of ours: the atomic rename would replace a device (/dev/null) or a checkpoint's
    manifest.json as well."""
    from distill.checkpoint import not_regular

    path = Path(out)
    if not (path.exists() or path.is_symlink()):
        return
    if not path.is_file():
        raise ConfigError(f"--out {out}: {not_regular(path)}")
    if not summary:
        return
    try:
        with open(path, "rb") as f:
            summary = json.loads(f.read(MIB))
    except (OSError, ValueError, RecursionError):
        summary = None
    if not (isinstance(summary, dict) and all(k in summary for k in SUMMARY_KEYS)):
        raise ConfigError(
            f"--out {out}: exists and is not an earlier summary of distill evaluate; choose "
            "another file (or remove it)"
        )


def probe_writable(out: str, base: Path) -> None:
    """Create and remove a hidden file in `base`: os.access says yes to root in /proc."""
    probe = base / f".distill-probe.{os.getpid()}"
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except OSError as e:
        raise ConfigError(f"--out {out}: cannot write in {base} ({e.strerror})") from None
    os.close(fd)
    probe.unlink(missing_ok=True)


def check_ours(out: str) -> None:
    """A folder `--out` already holding files that are not a run of ours (no manifest) is the
    user's: a job would write among them. Hidden names (a lock, temporary files) and the
    TensorBoard folder of a run killed before its first checkpoint do not count."""
    from distill import checkpoint

    path = Path(out)
    if not path.is_dir() or (path / checkpoint.MANIFEST).exists():
        return
    others = sorted(p.name for p in path.iterdir() if not p.name.startswith(".") and p.name != "tb")
    if others:
        shown = ", ".join(others[:3]) + (", ..." if len(others) > 3 else "")
        raise ConfigError(
            f"--out {out}: holds other files ({shown}) and no {checkpoint.MANIFEST}; choose an "
            "empty or new folder"
        )


def check_space(out: str, needed: int, what: str) -> None:
    """Refuse when the disk under `out` has less free space than `needed` bytes."""
    base = existing_parent(Path(out))
    free = shutil.disk_usage(base).free
    if needed > free:
        raise ConfigError(
            f"--out {out}: {what} needs about {needed / MIB:,.0f} MiB but {base} has "
            f"{free / MIB:,.0f} MiB free"
        )


def _bytes_per_state(env_id: str, extra: int) -> int:
    """One stored state: a frame (or a whole observation) in its storage dtype, plus `extra`."""
    from distill import envs, families

    spec = envs.spec(env_id)
    frame = math.prod(families.frame_shape(spec))
    return frame * families.storage_dtype(spec).itemsize + extra


def teacher_bytes(config: Any) -> int:
    """A teacher's peak on disk: the replay in train_state, twice while a checkpoint replaces
    the previous one (content-addressed names), plus slack. Per step: action, reward, done."""
    return 2 * config.buffer_size * _bytes_per_state(config.env_id, 4 + 4 + 1) + SLACK


def dataset_bytes(config: Any, teacher_path: str) -> int:
    """A dataset on disk: every state's observation, Q-vector, action, reward, done, time."""
    from distill import checkpoint, envs

    manifest = checkpoint.read_manifest(teacher_path)
    env_id = manifest.get("env_id")
    if not isinstance(env_id, str):
        return SLACK  # checkpoint.load refuses it with the right message
    actions = envs.spec(env_id).num_actions
    return config.states * _bytes_per_state(env_id, 4 * actions + 4 + 4 + 1 + 4) + SLACK


def check_student_batch(config: Any, dataset_path: str) -> None:
    """A minibatch larger than the dataset would sample the same states over and over."""
    from distill import checkpoint, dataset

    if not (Path(dataset_path) / checkpoint.MANIFEST).exists():
        return  # not a dataset at all: load_dataset refuses it, naming what is missing
    manifest = dataset.checked_manifest(Path(dataset_path))
    states = manifest["rows"] * manifest["num_envs"]
    if config.batch_size > states:
        raise ConfigError(
            f"--batch-size={config.batch_size} is not valid: the dataset {dataset_path} holds "
            f"only {states:,} states"
        )


# what a `distill reproduce` folder holds besides its stages' folders (OUT/<stage>/stage.json)
REPRODUCE_NAMES = ("report.md", "results.json", "stats", "students", "datasets", "tb")


def check_reproduce_folder(out: str) -> None:
    """`distill reproduce --out` resumes into an earlier run's folder, but a folder of other
    files (a home, a source tree, /) is the user's: its stages would write among them."""
    path = Path(out)
    if not path.is_dir():
        return
    names = {p.name for p in path.iterdir() if not p.name.startswith(".")}
    ours = names & set(REPRODUCE_NAMES) or {n for n in names if (path / n / "stage.json").exists()}
    if names and not ours:
        shown = ", ".join(sorted(names)[:3]) + (", ..." if len(names) > 3 else "")
        raise ConfigError(
            f"--out {out}: holds other files ({shown}) and no earlier `distill reproduce` run "
            "(report.md, results.json or a stage's stage.json); choose an empty or new folder"
        )


def check(args: Any, config: Any = None) -> None:
    """Every check before work, for the sub-command in `args` (its config already built)."""
    check_finite(args)
    check_range(args)
    check_seeds(args)
    out = getattr(args, "out", None)
    if out is not None and not str(out).strip():
        raise ConfigError("--out is empty: give a folder (or file) to write")
    if out:
        check_out(out, is_file=args.command in FILE_OUT, command=args.command)
    if out and args.command in JOBS and not getattr(args, "resume", False):
        check_ours(out)  # with --resume, a folder without a manifest is refused by the job
    if out and args.command == "reproduce":
        check_reproduce_folder(out)
    if out and args.command in JOBS:
        from distill import runs

        runs.check_unlocked(Path(out))  # a second writer refused before any loading
    if config is None or not out:
        return
    if args.command == "teacher":
        check_space(out, teacher_bytes(config), "the teacher's checkpoints")
    elif args.command == "dataset":
        check_space(out, dataset_bytes(config, args.teacher), "the dataset")
    elif args.command == "student":
        if args.dataset:  # stream and dagger students have none (distill.regimes)
            check_student_batch(config, args.dataset)
        check_space(out, SLACK, "the student's checkpoints")
