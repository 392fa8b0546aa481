"""A command's settings declared once: a dataclass whose fields carry their command-line flag.

    @dataclass
    class TrainConfig:
        lambda_tv: float = field(default=1.0, metadata=flag(help="Weight of the TV term."))
        bypass: bool = field(default=True, metadata=flag("--no-bypass", invert=True, help="..."))

`edgepipe.commands.from_dataclass.options_from(TrainConfig)` turns the fields into click options and
`build(TrainConfig, params)` the parsed flags back into the dataclass, so a new setting is one field, not a
click option, a keyword copy and a card entry. Plain metadata here (no click): the layers below commands
stay free of the CLI library.
"""
from __future__ import annotations

import dataclasses
from typing import Any

KEY = "edgepipe.flag"


def flag(name: str | None = None, *, help: str = "", invert: bool = False, choices: tuple | None = None,
         path: bool | str = False, metavar: str | None = None, type: Any = None, min: float | None = None,
         max: float | None = None, min_open: bool = False, short: str | None = None,
         multiple: bool = False) -> dict:
    """Field metadata: the flag NAME (default --field-name), its help, and how to read it.

    invert: a boolean field set False by the flag (--no-bypass for bypass=True); choices: the values allowed
    (shown in --help); path: a file or folder name ("file": a file, not a folder; "dir": a folder); type: what
    the flag parses when it differs from the field's (e.g. str for a comma list the dataclass splits itself);
    min, max: the range a number must be in (min_open: above min, not at it), refused by the flag parser in
    one line before anything runs; short: a one-letter alias as well (-o for --output); multiple: a repeatable
    flag for a tuple field (--qp 27 --qp 32), each value read and checked as one element."""
    if path not in (False, True, "file", "dir"):
        raise ValueError(f"path must be True, 'file' or 'dir', got {path!r}")
    return {KEY: {"name": name, "help": help, "invert": invert, "choices": choices, "path": path,
                  "metavar": metavar, "type": type, "min": min, "max": max, "min_open": min_open,
                  "short": short, "multiple": multiple}}


def flag_of(field: dataclasses.Field) -> dict | None:
    return field.metadata.get(KEY)


def flag_name(field: dataclasses.Field) -> str:
    spec = flag_of(field) or {}
    return spec.get("name") or "--" + field.name.replace("_", "-")
