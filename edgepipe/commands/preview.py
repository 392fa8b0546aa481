"""`edgepipe preview`: one picture of what a pre-transform and a codec do to one image or video frame. Its options
are the fields of PreviewSettings (evaluation/preview.py), each declared once there; --json is the command's."""
from __future__ import annotations

import json

import click

from edgepipe.commands.from_dataclass import build, options_from
from edgepipe.evaluation.preview import PreviewSettings


@click.command("preview")
@click.argument("source", metavar="IMAGE|VIDEO", type=click.Path(dir_okay=True))
@options_from(PreviewSettings)
@click.option("--json", "as_json", is_flag=True, help="Print the numbers as JSON instead of a table.")
def preview(source, as_json, **params):
    """Original | ED output | ED output after the codec | the codec alone, side by side in one PNG.

    Under each panel: bytes and bits per pixel, PSNR against the original, and the recognizer's top-5.
    """
    from edgepipe.evaluation.preview import as_dict, format_table, write_preview

    pv, path = write_preview(build(PreviewSettings, params, source=source))
    click.echo(json.dumps(as_dict(pv), indent=2) if as_json else format_table(pv))
    click.echo(f"preview: wrote {path}", err=True)
