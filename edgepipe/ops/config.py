"""`--config FILE`: TOML settings for `edgepipe capture`, `edgepipe monitor` and `edgepipe relay`.

Keys are the long flag names (`stream-id = "cam0"`; `stream_id` is accepted too), so the file and
the command line read the same. Precedence: command-line flag > config file > built-in default.
A key that is not a flag of that command is an error naming the key; so is a value of the wrong
type. The file is flat: no tables.

    # /etc/edgepipe/capture.toml
    source = "/dev/video0"
    publish = "tcp://0.0.0.0:5555"
    qp = 32
"""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10 (JetPack 6): the same parser from PyPI
    import tomli as tomllib

_SKIP = {"config", "print_config", "help"}


def read_toml(path: str | Path) -> dict[str, Any]:
    """The parsed file, or a one-line ClickException saying what is wrong with it."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise click.ClickException(f"config {path} not found") from None
    except IsADirectoryError:
        raise click.ClickException(f"config {path} is a folder, not a TOML file") from None
    except PermissionError:
        raise click.ClickException(f"config {path} is not readable by this user") from None
    try:
        return tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise click.ClickException(f"config {path}: not UTF-8 text") from None
    except tomllib.TOMLDecodeError as exc:
        raise click.ClickException(f"config {path}: invalid TOML: {exc}") from None


def _options(command: click.Command) -> dict[str, click.Option]:
    """Long flag name without dashes -> option."""
    out = {}
    for param in command.params:
        if isinstance(param, click.Option) and param.name not in _SKIP:
            for opt in param.opts:
                if opt.startswith("--"):
                    out[opt[2:]] = param
    return out


def to_default_map(command: click.Command, data: dict[str, Any], path: str | Path, ctx: click.Context) -> dict:
    """Validate the file against the command's flags; returns click's default_map (param name -> value)."""
    options = _options(command)
    result: dict[str, Any] = {}
    seen: dict[str, str] = {}
    for key, value in data.items():
        flag = key.replace("_", "-")
        param = options.get(flag)
        if param is None:
            raise click.ClickException(f"config {path}: unknown key '{key}' (`edgepipe {command.name}` has no "
                                       f"--{flag}; known keys: {', '.join(sorted(options))})")
        if flag in seen:
            raise click.ClickException(f"config {path}: key '{key}' is given twice (also as '{seen[flag]}')")
        seen[flag] = key
        if isinstance(value, dict):
            raise click.ClickException(f"config {path}: key '{key}' must be a value, not a table")
        if param.is_flag and not param.multiple:
            if not isinstance(value, bool):
                raise click.ClickException(f"config {path}: key '{key}' must be true or false, got {value!r}")
        elif param.multiple:
            value = list(value) if isinstance(value, list) else [value]
        elif isinstance(value, list):
            raise click.ClickException(f"config {path}: key '{key}' takes one value, not a list")
        try:
            param.type_cast_value(ctx, value)
        except click.BadParameter as exc:
            raise click.ClickException(f"config {path}: key '{key}': {exc.format_message()}") from None
        result[param.name] = value
    return result


def _load(ctx: click.Context, _param: click.Parameter, value: str | None) -> None:
    if value is None:
        return
    defaults = to_default_map(ctx.command, read_toml(value), value, ctx)
    # click consults default_map after the command line and before the built-in default
    ctx.default_map = {**(ctx.default_map or {}), **defaults}


def config_option(f):
    """The --config option; eager, so the file is read before any other option is resolved."""
    f = click.option("--print-config", is_flag=True,
                     help="Print the effective settings (with where each comes from) and exit.")(f)
    # a plain string: read_toml says what is wrong with the path, in one line
    return click.option("--config", metavar="FILE", is_eager=True, expose_value=False,
                        callback=_load, help="TOML file with the same keys as these flags (flags win).")(f)


def effective_settings(ctx: click.Context) -> str:
    """The resolved options as TOML, each with a comment: flag, config or default."""
    from click.core import ParameterSource

    where = {ParameterSource.COMMANDLINE: "flag", ParameterSource.ENVIRONMENT: "environment",
             ParameterSource.DEFAULT_MAP: "config", ParameterSource.DEFAULT: "default"}
    lines = []
    for flag, param in sorted(_options(ctx.command).items()):
        value = ctx.params.get(param.name)
        source = where.get(ctx.get_parameter_source(param.name), "?")
        if value is None:
            lines.append(f"# {flag} is not set ({source})")
            continue
        if isinstance(value, tuple):
            value = list(value)
        lines.append(f"{flag} = {json.dumps(value)}  # {source}")
    return "\n".join(lines)
