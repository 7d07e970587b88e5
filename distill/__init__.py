"""distill: a research workbench for policy distillation (Rusu et al., ICLR 2016) in JAX.

The pipeline: train a DQN teacher (`distill.teacher`), let it act to record a dataset of
(observation, teacher Q-values) (`distill.dataset`), distil students with the paper's NLL, MSE or
KL(tau) losses (`distill.student`), and evaluate them in the env (`distill.evaluate`).
`distill.load(path)` opens any teacher or student checkpoint.
"""


def _early_interrupt(signum, frame):
    """SIGINT or SIGTERM while the `distill` command is still importing: one line, exit 130
    (as for an interrupted job; SIGTERM's default would end it with 143). Nothing is
    written yet; an exception raised inside a C extension's import would abort the process, so
    exit at once."""
    import os
    import sys

    sys.stderr.write("distill: interrupted\n")
    sys.stderr.flush()
    os._exit(130)


def _cli_signals() -> None:
    """Run as the `distill` command (the console script or `python -m distill.cli`): a Ctrl-C
    during the seconds of imports below exits 130 with one line, not a KeyboardInterrupt
    traceback. `distill.cli.main` puts Python's handler back once it can catch the interrupt;
    a library user (a notebook, the tests) keeps its own handler."""
    import os
    import signal
    import sys

    argv = list(getattr(sys, "orig_argv", []))
    as_module = any(a == "-m" and b == "distill.cli" for a, b in zip(argv, argv[1:], strict=False))
    script = bool(sys.argv) and os.path.basename(sys.argv[0]) == "distill"
    if as_module or script:
        signal.signal(signal.SIGINT, _early_interrupt)
        signal.signal(signal.SIGTERM, _early_interrupt)


_cli_signals()

from distill import families  # noqa: E402, F401  (registers the env families envs.spec knows)
from distill import xla as _xla  # noqa: E402
from distill.checkpoint import CheckpointError, Policy, load  # noqa: E402
from distill.config import ConfigError  # noqa: E402

__version__ = "0.1.0"
__all__ = ["CheckpointError", "ConfigError", "Policy", "load", "__version__"]

_xla.enable_compilation_cache()  # compiled programs persist across processes (distill.xla)
