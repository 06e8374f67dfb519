"""Options declared once: a dataclass field carries its default, range, help and form hints.

`EngineConfig` and `ServerOptions` declare their fields with `option(...)`; from that one
declaration come the checks (`check_field`, `validate`), the command-line flags of
`python -m jupyter_qwen serve` and `%qwen_serve` (`add_arguments`), the keywords of
`serve()` and the control panel's form. Nothing here imports torch.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import math
import re
import types
import typing
from dataclasses import dataclass
from functools import cache
from typing import Any


class ConfigError(ValueError):
    """A bad option value; `field` names the option (as in `serve()`'s keywords)."""

    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field


@dataclass(frozen=True, slots=True)
class OptionSpec:
    """What one option is: its help, checks, flags and how the control panel shows it.

    `low` / `high` bound numbers (inclusive; `low_open` makes the lower bound exclusive);
    `low` may name another field whose value is the bound. `choices` lists the allowed
    values. `default_text` says what a computed default (None) means. Booleans get
    `on_flags` / `off_flags` (with `on_help` / `off_help`); other options get one flag from
    their name plus `aliases`; an option typed `tuple[str, ...]` holds several values (its
    flag may be repeated, and takes comma-separated values). `cli=False` keeps an option off
    the command line. `form`
    puts it on the control panel: "number", "optional_number", "slider", "choice",
    "check", "text" or "secret", with `label`, `hint` and `placeholder`. `error` replaces
    the range message of a number ("{value}" stands for the value given).
    """

    help: str
    default_text: str | None = None
    low: float | str | None = None
    high: float | None = None
    low_open: bool = False
    unit: str = ""
    choices: tuple = ()
    aliases: tuple[str, ...] = ()
    on_flags: tuple[str, ...] = ()
    off_flags: tuple[str, ...] = ()
    on_help: str = ""
    off_help: str = ""
    cli: bool = True
    form: str | None = None
    label: str | None = None
    hint: str | None = None
    placeholder: str = ""
    error: str = ""


def option(default: Any = dataclasses.MISSING, help: str = "", *, default_factory: Any = None,
           **spec: Any) -> Any:
    """A dataclass field declared as an option (see `OptionSpec` for `spec`)."""
    metadata = {"option": OptionSpec(help=help, **spec)}
    if default_factory is not None:
        return dataclasses.field(default_factory=default_factory, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


@dataclass(frozen=True, slots=True)
class Option:
    """One declared option as the generators see it."""

    name: str
    kind: type  # int, float, bool or str (of each value, for an option of several)
    optional: bool  # None is allowed (a computed default)
    default: Any
    spec: OptionSpec
    many: bool = False  # a tuple of values of `kind` (declared `tuple[kind, ...]`)

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    @property
    def label(self) -> str:
        return self.spec.label or self.name.replace("_", "-")


@cache
def options_of(cls: type) -> tuple[Option, ...]:
    """The options a dataclass declares, in declaration order."""
    hints = typing.get_type_hints(cls)
    declared = []
    for field in dataclasses.fields(cls):
        spec = field.metadata.get("option")
        if spec is None:
            continue
        kind, optional = _plain_type(hints[field.name])
        many = typing.get_origin(kind) is tuple
        if many:
            kind = typing.get_args(kind)[0]
        default = None if field.default is dataclasses.MISSING else field.default
        declared.append(Option(field.name, kind, optional, default, spec, many))
    return tuple(declared)


def _plain_type(hint: Any) -> tuple[Any, bool]:
    args = typing.get_args(hint)
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        kinds = [arg for arg in args if arg is not type(None)]
        return kinds[0], len(kinds) < len(args)
    return hint, False


def split_values(value: str | list | tuple) -> tuple:
    """The values of an option of several: a string is split at commas and spaces, and so
    is each string of a list or tuple ("a, b" and ["a", "b,c"] give ("a", "b"...))."""
    items = [value] if isinstance(value, str) else list(value)
    values: list = []
    for item in items:
        values.extend(re.split(r"[,\s]+", item.strip()) if isinstance(item, str) else [item])
    return tuple(item for item in values if item != "")


# ---- checks ----------------------------------------------------------------------------------

def check_field(option: Option, value: Any, values: dict[str, Any] | None = None) -> None:
    """Raise ConfigError if `value` is not allowed for `option` (`values`: the other
    fields, for a bound that names one)."""
    name, spec = option.name, option.spec
    if value is None and option.optional:
        return
    if option.many:
        _check_values(option, value, values)
        return
    if spec.choices:
        if value not in spec.choices or isinstance(value, bool) != (option.kind is bool):
            allowed = ", ".join(map(str, spec.choices))
            raise ConfigError(name, f"{name} must be one of {allowed}; got {value!r}")
        return
    if option.kind is bool:
        if not isinstance(value, bool):
            raise ConfigError(name, f"{name} must be True or False, got {value!r}")
        return
    if option.kind is str:
        if not isinstance(value, str):
            raise ConfigError(name, f"{name} must be a string, got {value!r}")
        return
    _check_number(option, value, values or {})


def _check_values(option: Option, value: Any, values: dict[str, Any] | None) -> None:
    if not isinstance(value, str | list | tuple):
        raise ConfigError(option.name, f"{option.name} must be a list of values (or one "
                                       f"comma-separated string), got {value!r}")
    one = dataclasses.replace(option, many=False, optional=False)
    for item in split_values(value):
        check_field(one, item, values)


def _check_number(option: Option, value: Any, values: dict[str, Any]) -> None:
    name, spec = option.name, option.spec
    low = values.get(spec.low) if isinstance(spec.low, str) else spec.low
    if not isinstance(low, int | float) or isinstance(low, bool):
        low = None
    numbers = int if option.kind is int else int | float
    ok = isinstance(value, numbers) and not isinstance(value, bool)
    if ok and isinstance(value, float):
        ok = math.isfinite(value)
    if ok and low is not None:
        ok = value > low if spec.low_open else value >= low
    if ok and spec.high is not None:
        ok = value <= spec.high
    if ok:
        return
    if spec.error:
        raise ConfigError(name, spec.error.format(value=value))
    what = "an integer" if option.kind is int else "a number"
    unit = f" {spec.unit}" if spec.unit else ""
    opening = "(" if spec.low_open else "["
    bounds = f" in {opening}{_show(low)}, {_show(spec.high)}]" if low is not None else ""
    raise ConfigError(name, f"{name} must be {what}{unit}{bounds}, got {value!r}")


def _show(bound: float | None) -> str:
    if bound is None:
        return "inf"
    return str(int(bound)) if float(bound).is_integer() else str(bound)


def validate(instance: Any) -> None:
    """Check every declared option of a dataclass instance; raise the first ConfigError.
    An option of several values given as a string or list is stored as a tuple."""
    values = {option.name: getattr(instance, option.name) for option in options_of(type(instance))}
    for option in options_of(type(instance)):
        check_field(option, values[option.name], values)
        if option.many and values[option.name] is not None:
            object.__setattr__(instance, option.name, split_values(values[option.name]))


def field_errors(cls: type, values: dict[str, Any]) -> dict[str, str]:
    """Every option of `cls` in `values` that is wrong, with its message (all at once)."""
    merged = {option.name: option.default for option in options_of(cls)} | values
    errors = {}
    for option in options_of(cls):
        if option.name in values:
            try:
                check_field(option, values[option.name], merged)
            except ConfigError as error:
                errors[option.name] = str(error)
    return errors


def split_known(values: dict[str, Any], *classes: type) -> list[dict[str, Any]]:
    """`values` split by the class whose option each is; TypeError for one that is none's."""
    names = [{option.name for option in options_of(cls)} for cls in classes]
    unknown = sorted(set(values) - set().union(*names))
    if unknown:
        known = ", ".join(sorted(set().union(*names)))
        raise TypeError(f"unknown option(s) {', '.join(unknown)}; known: {known}")
    return [{k: v for k, v in values.items() if k in group} for group in names]


# ---- command-line flags ------------------------------------------------------------------------

def add_arguments(parser: argparse.ArgumentParser, cls: type) -> None:
    """One flag per option of `cls` (booleans: their on / off flags), defaulting to the
    option's default."""
    for option in options_of(cls):
        if not option.spec.cli:
            continue
        if option.kind is bool:
            _add_bool_flags(parser, option)
            continue
        kwargs: dict[str, Any] = {"dest": option.name, "help": _help(option),
                                  "default": option.default}
        if option.spec.choices:
            kwargs["choices"] = option.spec.choices
        kwargs["type"] = option.kind
        if option.many:
            kwargs |= {"type": None, "metavar": option.name.upper(),
                       "action": functools.partial(_AddValues, kind=option.kind)}
        parser.add_argument(option.flag, *option.spec.aliases, **kwargs)


class _AddValues(argparse.Action):
    """A repeatable flag whose values may also be comma-separated: they add up to a tuple
    of `kind`, in place of the default."""

    def __init__(self, *args: Any, kind: type = str, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.kind = kind

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        given = getattr(namespace, self.dest, None)
        if given is None or given is self.default:
            given = ()
        try:
            added = tuple(self.kind(item) for item in split_values(values))
        except ValueError:
            raise argparse.ArgumentError(
                self, f"invalid {self.kind.__name__} value in {values!r}") from None
        setattr(namespace, self.dest, (*given, *added))


def _add_bool_flags(parser: argparse.ArgumentParser, option: Option) -> None:
    spec = option.spec
    target = parser.add_mutually_exclusive_group() if spec.on_flags and spec.off_flags \
        else parser
    if spec.on_flags:
        target.add_argument(*spec.on_flags, dest=option.name, action="store_true",
                            default=option.default, help=spec.on_help or spec.help)
    if spec.off_flags:
        target.add_argument(*spec.off_flags, dest=option.name, action="store_false",
                            default=option.default, help=spec.off_help or spec.help)


def _help(option: Option) -> str:
    default = option.spec.default_text
    if default is None and option.default is not None:
        default = str(option.default)
    return f"{option.spec.help} (default {default})" if default else option.spec.help


def given_options(args: argparse.Namespace, *classes: type) -> dict[str, Any]:
    """The options of `classes` whose flags set something other than the default, as
    keyword arguments."""
    missing = object()
    return {option.name: value for cls in classes for option in options_of(cls)
            if (value := getattr(args, option.name, missing)) is not missing
            and value != option.default}


def describe(*classes: type) -> str:
    """A docstring section listing the options: name, default and help."""
    lines = []
    for cls in classes:
        for option in options_of(cls):
            default = option.spec.default_text or repr(option.default)
            lines.append(f"    {option.name} (default {default}): {option.spec.help}")
    return "\n".join(lines)


def command_line(values: dict[str, Any], *classes: type) -> list[str]:
    """The flags that give `values` (options of `classes`), the inverse of `given_options`:
    what a child process started with the same options is told. TypeError for a name that
    is no option, or one kept off the command line."""
    known = {option.name: option for cls in classes for option in options_of(cls)}
    argv: list[str] = []
    for name, value in values.items():
        option = known.get(name)
        if option is None or not option.spec.cli:
            raise TypeError(f"{name!r} is not an option of the command line")
        if value is None or value == option.default:
            continue  # the child's default is the same
        if option.kind is bool and not option.many:
            flags = option.spec.on_flags if value else option.spec.off_flags
            if not flags:
                raise TypeError(f"{option.name} has no flag for {value!r}")
            argv.append(flags[0])
        elif option.many:
            argv += [option.flag, ",".join(str(item) for item in split_values(value))]
        else:
            argv += [option.flag, str(value)]
    return argv
