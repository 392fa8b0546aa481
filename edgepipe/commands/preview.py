"""`edgepipe preview`: one picture of what a pre-transform and a codec do to one image or video frame."""
from __future__ import annotations

import json

import click

from edgepipe.engines import describe_specs
from edgepipe.media.codecs import CODECS, STILL_CODECS
from edgepipe.recognition import DEFAULT_RECOGNIZER, RECOGNIZERS


def _setting_help() -> str:
    """What --qp means for each still codec, and its default, as the codecs register them."""
    settings = ((name, CODECS[name].setting, CODECS[name].default_setting) for name in STILL_CODECS)
    return ", ".join(f"{name} {s.meaning} {s.low}-{s.high} ({default})" for name, s, default in settings)


@click.command("preview")
@click.argument("source", metavar="IMAGE|VIDEO", type=click.Path(dir_okay=True))
@click.option("--engine", default="none", show_default=True,
              help=f"Pre-transform: {describe_specs()}.")
@click.option("-o", "--out", required=True, type=click.Path(), help="The PNG to write (its folder must exist).")
@click.option("--codec", type=click.Choice(STILL_CODECS), default="hevc",
              show_default=True, help="The still codec, coded as `edgepipe eval` codes it.")
@click.option("--qp", type=int, default=None, help=f"Codec setting (default in brackets): {_setting_help()}.")
@click.option("--frame", type=int, default=None, help="For a video: the frame to take, from 0 (default 0).")
@click.option("--recognizer", type=click.Choice(RECOGNIZERS), default=DEFAULT_RECOGNIZER, show_default=True)
@click.option("--weights", type=click.Path(dir_okay=False), default=None, help="Recognizer weights (vgg16).")
@click.option("--json", "as_json", is_flag=True, help="Print the numbers as JSON instead of a table.")
def preview(source, engine, out, codec, qp, frame, recognizer, weights, as_json):
    """Original | ED output | ED output after the codec | the codec alone, side by side in one PNG.

    Under each panel: bytes and bits per pixel, PSNR against the original, and the recognizer's top-5.
    """
    from edgepipe.evaluation.preview import as_dict, check_output, format_table, make_preview, write_png

    check_output(out)
    pv = make_preview(source, engine=engine, codec=codec, quality=qp, frame=frame, recognizer=recognizer,
                      weights=weights)
    path = write_png(pv, out)
    click.echo(json.dumps(as_dict(pv), indent=2) if as_json else format_table(pv))
    click.echo(f"preview: wrote {path}", err=True)
