"""commands/from_dataclass.py: click options made from a settings dataclass's flagged fields, and back."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from edgepipe.commands.from_dataclass import build, options_from
from edgepipe.core.options import flag


@dataclass
class Settings:
    data: Path = field(metadata=flag(path="dir", help="A folder."))
    output: Path | None = field(default=None, metadata=flag(short="-o", path="file", help="A file."))
    size: int = field(default=3, metadata=flag(min=1, help="A size."))
    names: tuple[str, ...] = field(default=("a", "b"), metadata=flag(type=str, help="Comma list."))
    progress: bool = field(default=True, metadata=flag("--no-progress", invert=True, help="Quiet."))
    internal: int = 0  # no flag: not an option


@click.command()
@options_from(Settings)
def command(**params) -> None:
    click.echo(repr(build(Settings, params)))


def test_the_options_and_their_names():
    options = {p.name: p for p in command.params}
    assert list(options) == ["data", "output", "size", "names", "progress"]
    assert options["output"].opts == ["-o", "--output"] and options["progress"].opts == ["--no-progress"]
    assert options["data"].required and options["output"].default is None and options["names"].default == "a,b"


def test_parsed_back_into_the_dataclass():
    params = command.make_context("c", ["--data", "d", "-o", "f.bin", "--no-progress"]).params
    settings = build(Settings, params)
    assert settings == Settings(data=Path("d"), output=Path("f.bin"), names="a,b", progress=False)
    assert isinstance(settings.data, Path) and isinstance(settings.output, Path)


@pytest.mark.parametrize("args, message", [
    ([], "Missing option '--data'"),  # a field without a default is asked for, not None
    (["--data", "d", "--size", "0"], "0 is not in the range x>=1"),
])
def test_bad_flags_are_one_line(args, message):
    result = CliRunner().invoke(command, args)
    assert result.exit_code != 0 and message in result.output and "Traceback" not in result.output


@dataclass
class Repeated:
    qps: tuple[int, ...] = field(default=(27, 32), metadata=flag("--qp", multiple=True, min=0, max=51, help="QPs."))
    names: tuple[str, ...] = field(default=(), metadata=flag("--name", multiple=True, help="Names."))


@click.command()
@options_from(Repeated)
def repeated(**params) -> None:
    click.echo(repr(build(Repeated, params)))


def test_a_repeatable_flag_is_a_tuple_of_checked_values():
    options = {p.name: p for p in repeated.params}
    assert options["qps"].multiple and options["qps"].opts == ["--qp"] and options["names"].multiple
    assert build(Repeated, repeated.make_context("r", []).params) == Repeated()
    settings = build(Repeated, repeated.make_context("r", ["--qp", "25", "--qp", "45", "--name", "a"]).params)
    assert settings == Repeated(qps=(25, 45), names=("a",)) and isinstance(settings.qps, tuple)
    result = CliRunner().invoke(repeated, ["--qp", "99"])
    assert result.exit_code != 0 and "99 is not in the range 0<=x<=51" in result.output
