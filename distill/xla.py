"""XLA compiler options for the package's compiled programs, and `jit` that passes them.

jaxlib 0.10 on a CPU hands convolutions and dots to YNNPACK (`__ynn_fusion` in the compiled
program). On this project's CPU (2-core AMD EPYC) its convolutions run slower than XLA's own
(Eigen) ones: listing only dots as YNN fusions (`xla_cpu_experimental_ynn_fusion_type`) gives the
convolutions back to XLA and keeps the dots in YNNPACK. Measured with
`python benchmarks/distill_throughput.py` (README, "Benchmarks"): an Atari student update at
batch 32 runs about 1.5 times faster (1,230-1,530 samples/s without, 2,060-2,170 with), with the
same results to float rounding (tests/test_xla.py); `fit_atari` about 1.2 times (its double-DQN
update 27-29 ms against 35-42 ms, the env and acting unchanged).

Where this jaxlib does not take the option, or the backend is not a CPU, `compiler_options()` is
empty and `jit` is plain `jax.jit`; `DISTILL_XLA_OPTIONS=0` in the environment turns the options
off, to compare. They are passed per compiled program (`jax.jit(..., compiler_options=...)`), not
through `XLA_FLAGS`: an unknown flag there aborts the process, an unknown option here is caught.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

# LibraryFusionType in xla/xla.proto: only dots are YNN fusions (this replaces the default list)
CPU_OPTIONS = {"xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_DOT"}
ENV_SWITCH = "DISTILL_XLA_OPTIONS"


@functools.cache
def compiler_options() -> dict[str, str]:
    """The options `jit` passes on this backend: CPU_OPTIONS where this jaxlib takes them, else {}.

    Read once per process (the first compiled program initialises the backend anyway).
    """
    if os.environ.get(ENV_SWITCH, "1") == "0" or jax.default_backend() != "cpu":
        return {}
    try:
        jax.jit(lambda x: x @ x, compiler_options=CPU_OPTIONS).lower(jnp.ones((2, 2))).compile()
    except (jax.errors.JaxRuntimeError, TypeError, ValueError):
        return {}  # an older or newer jaxlib without this option
    return dict(CPU_OPTIONS)


def jit(fn: Callable, **kwargs: Any) -> Callable:
    """`jax.jit(fn, **kwargs)` compiled with `compiler_options()`.

    The options are resolved at the first call, not here, so that decorating a module-level
    function does not start the backend at import (device counts set later would be ignored).
    `.lower(...)` is forwarded, for cost analysis.
    """

    @functools.cache
    def jitted():
        return jax.jit(fn, compiler_options=compiler_options() or None, **kwargs)

    @functools.wraps(fn)
    def call(*args, **kw):
        return jitted()(*args, **kw)

    call.lower = lambda *args, **kw: jitted().lower(*args, **kw)
    return call


# ---------------------------------------------------------------------------- compilation cache

CACHE_SWITCH = "DISTILL_COMPILATION_CACHE"  # "0": no persistent cache
CACHE_DIR = "DISTILL_CACHE_DIR"  # where it lives (default ~/.cache/distill/jax)
CACHE_MIN_COMPILE_S = 0.5  # programs that compile faster than this are not worth a file


def enable_compilation_cache() -> str | None:
    """Turn on JAX's persistent compilation cache for every process that imports distill.

    Compiling is most of a short run's wall time here (a MinAtar student's training loop ~5 s,
    its in-graph evaluation 10-14 s): a second run of the same shapes, in another process, reads
    the compiled program from disk instead. `JAX_COMPILATION_CACHE_DIR` set by the caller wins
    (the tests and `make` set it); `DISTILL_COMPILATION_CACHE=0` turns it off. Returns the
    folder in use, or None.
    """
    if os.environ.get(CACHE_SWITCH, "1") == "0":
        return None
    if os.environ.get("JAX_COMPILATION_CACHE_DIR"):
        return os.environ["JAX_COMPILATION_CACHE_DIR"]  # jax reads it itself
    folder = os.environ.get(CACHE_DIR) or os.path.join(
        os.path.expanduser("~"), ".cache", "distill", "jax"
    )
    jax.config.update("jax_compilation_cache_dir", folder)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", CACHE_MIN_COMPILE_S)
    return folder
