"""Command-line options generated from config dataclasses: the configs are the CLI.

Each field of a config becomes one `--field-name` option whose `--help` line is the field's
docstring: the string literal written under its declaration (CleanRL's and tyro's convention)::

    total_steps: PositiveInt = 1_000_000
    \"\"\"env steps, all envs together\"\"\"

An option the user did not give is left out of the namespace (argparse.SUPPRESS), so that only
given values override whatever the config starts from (a dataclass default or a preset). A bad
value is refused by the config's own validation (ConfigError, naming the field), except where the
annotation already says what is allowed (`PositiveInt`), which argparse refuses while parsing.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import functools
import inspect
import textwrap
import types
import typing
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from distill.config import POSITIVE


def positive_int(text: str) -> int:
    """argparse type: an integer > 0."""
    value = _int(text, "a positive integer")
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def integer(text: str) -> int:
    """argparse type: an integer; 1_000_000 and 1e6 are accepted."""
    return _int(text, "an integer")


def number(text: str) -> float:
    """argparse type: a float."""
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None


def existing_dir(text: str) -> str:
    """argparse type: a folder that exists."""
    if not Path(text).is_dir():
        raise argparse.ArgumentTypeError(f"no such folder: {text}")
    return text


def _int(text: str, what: str) -> int:
    try:
        return int(text)
    except ValueError:
        pass
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not value.is_integer():  # nan and inf are not integers either
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
    return int(value)


@functools.cache
def field_docs(cls: type) -> dict[str, str]:
    """{field: one-line doc} from the string literal under each field of a dataclass."""
    source = textwrap.dedent(inspect.getsource(cls))
    body = ast.parse(source).body[0].body
    docs = {}
    for stmt, after in zip(body, body[1:], strict=False):
        if (
            isinstance(stmt, ast.AnnAssign)
            and isinstance(stmt.target, ast.Name)
            and isinstance(after, ast.Expr)
            and isinstance(after.value, ast.Constant)
            and isinstance(after.value.value, str)
        ):
            docs[stmt.target.id] = " ".join(after.value.value.split())
    return docs


def names(text: str) -> tuple[str, ...]:
    """argparse type: a comma-separated list, e.g. Breakout-MinAtar,Asterix-MinAtar."""
    items = tuple(t.strip() for t in text.split(",") if t.strip())
    if not items:
        raise argparse.ArgumentTypeError(f"expected a comma-separated list, got {text!r}")
    return items


def _or_none(kind):
    """argparse type: `kind`, or None for the word 'none'."""

    def parse(text: str):
        return None if text.strip().lower() == "none" else kind(text)

    parse.__name__ = getattr(kind, "__name__", "value")
    return parse


def _parser_type(hint: Any) -> tuple[Any, dict]:
    """(argparse type, extra add_argument keywords) for a field's type hint."""
    args = typing.get_args(hint)
    if typing.get_origin(hint) in (typing.Union, types.UnionType) and type(None) in args:
        (base,) = [a for a in args if a is not type(None)]
        kind, extra = _parser_type(base)
        return _or_none(kind), extra
    if typing.get_origin(hint) is tuple and args in ((str, ...),):
        return names, {}
    if typing.get_origin(hint) is typing.Annotated:
        base, *marks = typing.get_args(hint)
        if base is int and POSITIVE in marks:
            return positive_int, {}
        hint = base
    if hint is bool:
        return None, {"action": argparse.BooleanOptionalAction}
    if hint is int:
        return integer, {}
    if hint is float:
        return number, {}
    if hint is str:
        return str, {}
    raise TypeError(f"no command-line form for a field of type {hint!r}")


_METAVARS = {positive_int: "N", integer: "N", number: "X", names: "A,B"}


def flag(name: str, prefix: str = "") -> str:
    """The option of a field: total_steps -> --total-steps."""
    return f"--{prefix}{name.replace('_', '-')}"


def shown(value: Any) -> str:
    """A value as the command line writes it: 1_000_000, a,b, 0.01."""
    if isinstance(value, tuple):
        return ",".join(map(str, value))
    return f"{value:_}" if isinstance(value, int) and not isinstance(value, bool) else str(value)


def add_config_options(
    parser: argparse.ArgumentParser,
    cls: type,
    *,
    prefix: str = "",
    aliases: Mapping[str, Iterable[str]] | None = None,
    required: Iterable[str] = (),
    skip: Iterable[str] = (),
    presets: Mapping[str, Mapping[str, Any]] | None = None,
    title: str | None = None,
) -> None:
    """One option per field of the dataclass `cls`, in a group of `parser`'s help.

    aliases: older spellings of a field's option (e.g. {"total_steps": ["--steps"]}).
    required: fields the command line must give. skip: fields not offered.
    presets: named sets of defaults ({"atari": {"lr": 1e-4}}) shown in each field's help.
    prefix: put before each option and namespace name ("teacher." -> --teacher.lr), so that two
    configs with a field of the same name can share one command.
    """
    aliases, required, skip = aliases or {}, set(required), set(skip)
    docs, hints = field_docs(cls), typing.get_type_hints(cls, include_extras=True)
    group = parser.add_argument_group(title or f"{cls.__name__} (each field of the config)")
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        kind, extra = _parser_type(hints[f.name])
        if f.name in required:
            default = "required"
        elif f.default is dataclasses.MISSING:  # a value of each preset, nothing of its own
            default = "; ".join(f"{k} {shown(p[f.name])}" for k, p in (presets or {}).items())
        else:
            default = f"default {shown(f.default)}"
            varied = {
                k: p[f.name]
                for k, p in (presets or {}).items()
                if f.name in p and p[f.name] != f.default
            }
            if varied:
                default += "; " + ", ".join(f"{k} {shown(v)}" for k, v in varied.items())
        help_ = f"{docs.get(f.name, '')} ({default})".strip().replace("%", "%%")
        group.add_argument(
            flag(f.name, prefix),
            *aliases.get(f.name, ()),
            dest=prefix + f.name,
            metavar=_METAVARS.get(kind, f.name.upper()) if kind else None,
            type=kind,
            required=f.name in required,
            default=argparse.SUPPRESS,
            help=help_,
            **extra,
        )


def overrides(
    cls: type, args: argparse.Namespace, prefix: str = "", skip: Iterable[str] = ()
) -> dict[str, Any]:
    """{field: value} of the fields of `cls` given on the command line (and only those); `skip`
    as given to `add_config_options` (those names may belong to other options)."""
    given, skip = vars(args), set(skip)
    return {
        f.name: given[prefix + f.name]
        for f in dataclasses.fields(cls)
        if prefix + f.name in given and f.name not in skip
    }


def config_from_args(cls: type, args: argparse.Namespace, base: Any = None, prefix: str = ""):
    """`base` (default: cls()) with the fields given on the command line; validated."""
    given = overrides(cls, args, prefix)
    return cls(**given) if base is None else dataclasses.replace(base, **given)


# ---------------------------------------------------------------------------- shared options
# (moved here from cli.py, which re-exports them)

MESH_HELP = (
    "split the work over devices: seeds=N (independent runs), data=N (each minibatch), or "
    "both, e.g. seeds=2,data=4; N may be 'all'. Default: one device"
)


def mesh_from_args(args, axes: tuple[str, ...] = ("seeds", "data")):
    """The device mesh of --mesh (None: one device), after joining a multi-host run if asked."""
    from distill import sharding

    if getattr(args, "distributed", None):
        sharding.initialize_distributed(**sharding.parse_distributed(args.distributed))
    check_axes(args, axes)
    return None if args.mesh is None else sharding.make_mesh(args.mesh)


def check_axes(args, axes: tuple[str, ...]) -> None:
    """Refuse a --mesh that names axes the command cannot use (before any other check)."""
    from distill import sharding
    from distill.config import ConfigError

    if getattr(args, "mesh", None) and set(sharding.parse_mesh(args.mesh)) - set(axes):
        raise ConfigError(
            f"--mesh {args.mesh}: distill {args.command} trains one run, so only "
            f"{' and '.join(f'{a}=N' for a in axes)} applies"
        )


def add_budget_options(parser, experiments) -> None:
    """Every field of a Budget (`experiments.Budget`) as an option that changes --budget."""
    add_config_options(
        parser,
        experiments.Budget,
        skip=("name",),
        presets={n: dataclasses.asdict(b) for n, b in experiments.BUDGETS.items()},
        title="budget fields (each changes the chosen --budget; MinAtar values shown)",
    )


def budget_overrides(args, experiments) -> dict:
    """The budget fields given on the command line."""
    return overrides(experiments.Budget, args, skip=("name",))
