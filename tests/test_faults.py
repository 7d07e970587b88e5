"""Fault injection: a process killed with SIGKILL in the middle of writing loses nothing.

A child process rewrites a checkpoint folder in a loop (a large params file, then the manifest);
the parent kills it at arbitrary moments. Every time, the folder must still hold a complete,
verified checkpoint: the previous one or the new one, never a torn one.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from distill import checkpoint

WRITER = textwrap.dedent(
    """
    import sys
    import numpy as np
    from distill import checkpoint
    folder = sys.argv[1]
    i = 0
    while True:
        i += 1
        params = {"w": np.full((2_000_000,), i, np.float32)}  # 8 MB: writes take a while
        manifest = checkpoint.policy_manifest("teacher", "CartPole-v1", "teacher", 2, {}, step=i)
        checkpoint.write_checkpoint(folder, {"params.npz": checkpoint.pytree_to_bytes(params)},
                                    manifest)
        print(i, flush=True)
    """
)


def _check_consistent(folder) -> int:
    manifest = checkpoint.read_manifest(folder)
    data = checkpoint.read_verified(folder, "params.npz", manifest)
    tree = checkpoint.pytree_from_bytes(data, {"w": np.zeros((2_000_000,), np.float32)}, "p")
    values = np.unique(np.asarray(tree["w"]))
    assert values.size == 1 and int(values[0]) == manifest["step"]
    return manifest["step"]


@pytest.mark.parametrize("delay", [0.35, 0.6, 0.9, 1.3])
def test_sigkill_during_writes_never_tears_a_checkpoint(tmp_path, delay):
    folder = tmp_path / "ck"
    proc = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(folder)], stdout=subprocess.PIPE, text=True
    )
    try:
        first = proc.stdout.readline()  # one complete checkpoint exists before the kill
        assert first.strip() == "1"
        time.sleep(delay)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    step = _check_consistent(folder)
    assert step >= 1
    # no stray temporary file is ever mistaken for data; the next writer can take over
    leftovers = [p.name for p in folder.iterdir() if p.name.endswith(".tmp")]
    checkpoint.write_checkpoint(
        folder,
        {"params.npz": checkpoint.pytree_to_bytes({"w": np.full((2_000_000,), 99, np.float32)})},
        checkpoint.policy_manifest("teacher", "CartPole-v1", "teacher", 2, {}, step=99),
    )
    assert _check_consistent(folder) == 99
    assert all(name.startswith(".") for name in leftovers)  # hidden temp names only
