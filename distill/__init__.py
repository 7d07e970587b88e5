"""distill: a research workbench for policy distillation (Rusu et al., ICLR 2016) in JAX.

The pipeline: train a DQN teacher (`distill.teacher`), let it act to record a dataset of
(observation, teacher Q-values) (`distill.dataset`), distil students with the paper's NLL, MSE or
KL(tau) losses (`distill.student`), and evaluate them in the env (`distill.evaluate`).
`distill.load(path)` opens any teacher or student checkpoint.
"""

from distill import families  # noqa: F401  (registers the env families that envs.spec knows)
from distill import xla as _xla
from distill.checkpoint import CheckpointError, Policy, load
from distill.config import ConfigError

__version__ = "0.1.0"
__all__ = ["CheckpointError", "ConfigError", "Policy", "load", "__version__"]

_xla.enable_compilation_cache()  # compiled programs persist across processes (distill.xla)
