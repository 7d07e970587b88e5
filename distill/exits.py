"""How the `distill` command ends: one line and a documented exit status for every expected
failure, a traceback only for a bug (or with `distill --debug`).

    0    done
    2    usage or input: a bad option or value, an unknown env id, a missing, damaged,
         mismatched or locked folder, --out not writable or short of disk
    3    numerical stop: a non-finite loss or Q-value (the last good checkpoint is kept)
    74   OS error while working (sysexits' EX_IOERR): disk full, no permission, read-only
    130  interrupted (SIGINT/SIGTERM): a checkpoint was saved; --resume continues
"""

from __future__ import annotations

import argparse

from distill import cliconf
from distill.checkpoint import CheckpointError
from distill.config import ConfigError
from distill.runs import Interrupted

EXIT_USAGE = 2
EXIT_NUMERICAL = 3
EXIT_IOERR = 74  # sysexits.h EX_IOERR
EXIT_INTERRUPTED = 130
CHECKPOINT_EVERY_HELP = "seconds between checkpoints (0: after every chunk; default: the job's)"


def failure(e: BaseException) -> tuple[int, str] | None:
    """(exit status, word for the message) of an expected failure; None for a bug."""
    if isinstance(e, ConfigError | CheckpointError) or type(e) is ValueError:
        return EXIT_USAGE, "error"  # a plain ValueError: e.g. an unknown env id (distill.envs)
    if isinstance(e, FloatingPointError):
        return EXIT_NUMERICAL, "stopped"
    if isinstance(e, Interrupted | KeyboardInterrupt):
        return EXIT_INTERRUPTED, "stopped"
    if isinstance(e, OSError):
        return EXIT_IOERR, "error"
    return None


def message(e: BaseException) -> str:
    """The one line printed for an expected failure."""
    if isinstance(e, KeyboardInterrupt):
        return "interrupted"
    if isinstance(e, OSError) and e.strerror:
        return f"{e.strerror}: {e.filename}" if e.filename else e.strerror
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def seconds(text: str) -> float:
    """argparse type: a finite number of seconds >= 0."""
    value = cliconf.number(text)
    if not 0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"expected seconds >= 0, got {text!r}")
    return value


def add_checkpoint_every(parser: argparse.ArgumentParser) -> None:
    """--checkpoint-every SECONDS on a long job's sub-command."""
    parser.add_argument(
        "--checkpoint-every", type=seconds, metavar="SECONDS", help=CHECKPOINT_EVERY_HELP
    )


def every(args) -> dict:
    """The job's checkpoint interval from --checkpoint-every (none given: the job's default)."""
    value = getattr(args, "checkpoint_every", None)
    return {} if value is None else {"checkpoint_every_s": value}
