"""Shared plumbing for long jobs (`distill.jobs.run` uses it): stop requests from signals, the
Interrupted exception, metric files."""

from __future__ import annotations

import contextlib
import csv
import io
import math
import signal
from collections.abc import Iterator
from pathlib import Path

from distill.checkpoint import atomic_write_json, atomic_write_text


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
