"""`edgepipe demo`: the whole pipeline on loopback with real images; the library part is edgepipe/demo.py. Its
options are the fields of DemoSettings (edgepipe/demo.py), each declared once there."""
from __future__ import annotations

import click

from edgepipe.commands.from_dataclass import build, options_from
from edgepipe.demo import DemoSettings


@click.command()
@options_from(DemoSettings)
def demo(**params):
    """Whole pipeline on loopback with real images; prints the accuracy/bitrate table."""
    from edgepipe.demo import demo as run
    from edgepipe.server.monitor import format_table, write_report

    settings = build(DemoSettings, params)
    report = run(settings, say=lambda line: click.echo(line, err=True))
    click.echo(format_table(report))
    if settings.report_path:
        write_report(report, settings.report_path)
        click.echo(f"demo: report written to {settings.report_path}", err=True)
