"""The verdicts' vocabulary and the interval tests every claim's rule is built from (the rules
themselves: `distill.claims`' module doc)."""

from __future__ import annotations

import numpy as np

VERDICTS = ("reproduced", "contradicted", "unresolved at this budget")
REPRODUCED, CONTRADICTED, UNRESOLVED = VERDICTS
MIN_RUNS = 3  # fewer runs in a game leave a comparison unresolved (`claims` rules)
LEARNING_SHARE = 0.5  # more of a group's runs still learning: no contradiction (`claims`)


def fmt_interval(est: dict, digits: int = 1) -> str:
    return f"{est['point']:.{digits}f} [{est['lo']:.{digits}f}, {est['hi']:.{digits}f}]"


def above_level(est: dict, level: float) -> str:
    """The rule of every "greater" comparison: the interval above, below or around `level`."""
    if not np.isfinite([est["lo"], est["hi"]]).all():
        return UNRESOLVED
    if est["lo"] > level:
        return REPRODUCED
    if est["hi"] < level:
        return CONTRADICTED
    return UNRESOLVED


def combine(verdicts: list[str]) -> str:
    """A claim's verdict from its parts' (`claims`' rules)."""
    if CONTRADICTED in verdicts:
        return CONTRADICTED
    return REPRODUCED if all(v == REPRODUCED for v in verdicts) else UNRESOLVED
