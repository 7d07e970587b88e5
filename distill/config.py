"""Validation shared by every config: a bad value fails before any compute, naming the field."""

from __future__ import annotations

import dataclasses
from typing import Annotated, Any

POSITIVE = "positive"
# An int field that must be > 0: the command line refuses 0, -5 or "many" while parsing
# (distill.cliconf), with the same message as `positive_int` below.
PositiveInt = Annotated[int, POSITIVE]


class ConfigError(ValueError):
    """A user error in a config field or a command-line option; the CLI prints it and exits 2."""


def require(ok: bool, field: str, value: Any, allowed: str) -> None:
    """Raise ConfigError('field=value: allowed') unless ok."""
    if not ok:
        raise ConfigError(f"{field}={value!r} is not valid: {allowed}")


# Counts travel into compiled programs as int32: anything larger would overflow there.
MAX_COUNT = 2**31 - 1


def positive_int(field: str, value: Any) -> None:
    require(
        isinstance(value, int) and not isinstance(value, bool) and 0 < value <= MAX_COUNT,
        field,
        value,
        f"must be a positive integer (at most {MAX_COUNT:,})",
    )


def in_range(field: str, value: Any, lo: float, hi: float) -> None:
    require(
        isinstance(value, int | float) and lo <= value <= hi,
        field,
        value,
        f"must be a number in [{lo}, {hi}]",
    )


def to_dict(config: Any) -> dict:
    return dataclasses.asdict(config)


def from_dict(cls, data: dict):
    """Rebuild a config dataclass from JSON, ignoring no field silently."""
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(data) - names
    if unknown:
        raise ConfigError(f"unknown {cls.__name__} fields: {sorted(unknown)}")
    return cls(**data)
