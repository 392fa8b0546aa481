"""`edgepipe eval`: accuracy-vs-bpp curves and BD-Rate(accuracy) tables, as in Suzuki et al., ICIP 2019. Its
options are the fields of EvalSettings (evaluation/config.py), each declared once there."""
from __future__ import annotations

import shlex
import sys

import click

from edgepipe.commands.from_dataclass import build, options_from
from edgepipe.evaluation.config import EvalSettings


@click.command("eval")
@options_from(EvalSettings)
def evaluate(**params) -> None:
    """Accuracy vs bpp for each pre-transform and codec, and BD-Rate(accuracy) against the codec alone."""
    from edgepipe.evaluation.config import evaluate as run

    command = "edgepipe eval " + " ".join(shlex.quote(a) for a in sys.argv[2:]) if len(sys.argv) > 2 else "edgepipe eval"
    click.echo(run(build(EvalSettings, params), command))
