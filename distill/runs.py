"""Shared plumbing for long jobs (`distill.jobs.run` uses it): stop requests from signals, the
Interrupted exception, metric files, and the one-writer lock on an output folder."""

from __future__ import annotations

import contextlib
import csv
import errno
import fcntl
import io
import math
import os
import signal
from collections.abc import Iterator
from pathlib import Path

from distill.checkpoint import atomic_write_json, atomic_write_text
from distill.config import ConfigError

LOCK = ".lock"


class StopRequest:
    """Turns SIGINT/SIGTERM into a flag that a training loop checks between compiled chunks.

    The loop then writes a consistent checkpoint and exits; a second signal stops at once.
    """

    def __init__(self) -> None:
        self.requested = False
        self.signal_name = ""

    def _handle(self, signum, frame) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        self.signal_name = signal.Signals(signum).name


@contextlib.contextmanager
def stop_on_signals() -> Iterator[StopRequest]:
    stop = StopRequest()
    previous = {}
    try:
        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(sig, stop._handle)
    except ValueError:  # not the main thread (e.g. inside a notebook worker): no handlers
        previous = {}
    try:
        yield stop
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


class Interrupted(Exception):
    """A job stopped on request after saving a checkpoint; `--resume` continues it."""


def write_metrics(folder: Path, rows: list[dict], stem: str = "metrics") -> None:
    """rows -> folder/{stem}.csv and folder/{stem}.json, atomically."""
    if not rows:
        return
    fields = list(rows[0])
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=fields)
    writer.writeheader()
    for row in rows:
        writer.writerow({k: _clean(row.get(k)) for k in fields})
    atomic_write_text(folder / f"{stem}.csv", buf.getvalue())
    atomic_write_json(folder / f"{stem}.json", [{k: _clean(v) for k, v in r.items()} for r in rows])


def _clean(v):
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


class FolderLocked(ConfigError):
    """Another live process is writing the folder; the message names its pid."""


def _holder(path: Path) -> str:
    try:
        return path.read_text().strip() or "?"
    except OSError:
        return "?"


def check_unlocked(folder: Path) -> None:
    """Refuse at once (FolderLocked) when a live process holds `folder`'s lock; takes nothing.
    For a check before slow loading: `folder_lock` still takes the lock for the job itself."""
    path = Path(folder) / LOCK
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return  # no lock file (or unreadable): folder_lock decides
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError as e:
        if e.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
            raise FolderLocked(
                f"{folder}: being written by another process (pid {_holder(path)}); wait for "
                "it to end or choose another --out"
            ) from None
    finally:
        os.close(fd)


@contextlib.contextmanager
def folder_lock(folder: Path) -> Iterator[Path]:
    """Hold `folder/.lock` (an flock, with our pid inside) while a job writes `folder`.

    A second writer is refused at once, naming the holder's pid. The kernel drops the flock
    when its process dies, so a lock file left by a dead process is simply taken over.
    """
    folder = Path(folder)
    made = not folder.exists()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LOCK
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(fd)
            if e.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                raise
            raise FolderLocked(
                f"{folder}: being written by another process (pid {_holder(path)}); wait for "
                "it to end or choose another --out"
            ) from None
        try:  # the file we locked may have been removed by its last holder: then lock again
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        yield path
    finally:
        with contextlib.suppress(OSError):
            path.unlink()
        os.close(fd)
        if made:  # a run that wrote nothing leaves no empty folder behind
            with contextlib.suppress(OSError):
                folder.rmdir()
