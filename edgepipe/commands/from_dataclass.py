"""click options from a settings dataclass whose fields carry `core.options.flag` metadata, and back."""
from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, Callable

import click

from edgepipe.core.options import flag_name, flag_of


def _value_type(hint: Any, multiple: bool = False) -> Any:
    """int for `int`, `int | None`, `Optional[int]` (and for `tuple[int, ...]` read by a repeatable flag); the
    hint itself otherwise."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        return args[0] if len(args) == 1 else str
    if multiple and typing.get_origin(hint) is tuple:
        return typing.get_args(hint)[0]
    return hint


def _click_type(spec: dict, value_type: Any):
    if spec["choices"] is not None:
        return click.Choice([str(c) for c in spec["choices"]])
    if spec["path"]:
        return click.Path(dir_okay=spec["path"] != "file", file_okay=spec["path"] != "dir",
                          path_type=Path if value_type is Path else None)
    if spec.get("min") is not None or spec.get("max") is not None:
        ranged = click.IntRange if value_type is int else click.FloatRange
        return ranged(min=spec["min"], max=spec["max"], min_open=spec.get("min_open", False))
    return spec["type"] or (value_type if value_type in (int, float, str) else str)


def _option(field: dataclasses.Field, hint: Any) -> Callable:
    spec = flag_of(field)
    names = [n for n in (spec.get("short"), flag_name(field)) if n]
    value_type = _value_type(hint, spec.get("multiple", False))
    required = field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING
    if value_type is bool:
        return click.option(*names, field.name, is_flag=True, help=spec["help"])
    if required:  # no default at all: click 8.5 takes an explicit default=None as given, and asks for nothing
        return click.option(*names, field.name, type=_click_type(spec, value_type), required=True,
                            help=spec["help"], metavar=spec["metavar"])
    if spec.get("multiple"):  # repeatable: the default is the field's tuple, said in the help
        return click.option(*names, field.name, type=_click_type(spec, value_type), multiple=True,
                            default=field.default, help=spec["help"], metavar=spec["metavar"])
    default = field.default
    if isinstance(default, tuple):
        default = ",".join(map(str, default))
    return click.option(*names, field.name, type=_click_type(spec, value_type), default=default,
                        show_default=default is not None, help=spec["help"], metavar=spec["metavar"])


def flagged_fields(cls) -> list[tuple[dataclasses.Field, Any]]:
    hints = typing.get_type_hints(cls)
    return [(f, hints[f.name]) for f in dataclasses.fields(cls) if flag_of(f) is not None]


def options_from(cls) -> Callable:
    """Decorator: one click option per flagged field, in field order."""
    def decorate(command):
        for field, hint in reversed(flagged_fields(cls)):
            command = _option(field, hint)(command)
        return command
    return decorate


def build(cls, params: dict[str, Any], **extra: Any):
    """The dataclass from parsed flags: inverted flags flipped, choices back to the field's type."""
    values = dict(extra)
    for field, hint in flagged_fields(cls):
        if field.name not in params:
            continue
        spec = flag_of(field)
        value, value_type = params[field.name], _value_type(hint, spec.get("multiple", False))
        if spec.get("multiple"):
            value = tuple(value_type(v) if spec["choices"] is not None and value_type in (int, float) else v
                          for v in value)
        elif value_type is bool and spec["invert"]:
            value = not value
        elif spec["choices"] is not None and value is not None and value_type in (int, float):
            value = value_type(value)
        values[field.name] = value
    return cls(**values)
