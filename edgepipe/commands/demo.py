"""`edgepipe demo`: the whole pipeline on loopback with real images; the library part is edgepipe/demo.py."""
from __future__ import annotations

import click

from edgepipe.recognition import DEFAULT_RECOGNIZER, RECOGNIZERS


@click.command()
@click.option("--data", type=click.Path(file_okay=False), default=None,
              help="Labelled ImageNet-layout folder (default: the 50 bundled Imagenette images).")
@click.option("--engine", "engines", multiple=True,
              help="Pre-transform(s) to compare (repeatable; default: none and the shipped ours).")
@click.option("--qp", "qps", type=click.IntRange(0, 51), multiple=True,
              help="HEVC QPs, 0-51 (repeatable; default 27 32 37 42).")
@click.option("--recognizer", type=click.Choice(RECOGNIZERS), default=DEFAULT_RECOGNIZER, show_default=True)
@click.option("--weights", type=click.Path(dir_okay=False), default=None)
@click.option("--report", "report_path", type=click.Path(dir_okay=False), default=None, help="Write the report as JSON.")
def demo(data, engines, qps, recognizer, weights, report_path):
    """Whole pipeline on loopback with real images; prints the accuracy/bitrate table."""
    from edgepipe.core.datasets import list_labelled_images
    from edgepipe.demo import DEFAULT_QPS, default_engines, run_demo
    from edgepipe.server.monitor import format_table, write_report

    if data:
        list_labelled_images(data)  # a wrong folder is named before the recognizer loads and sockets bind
    asked = list(engines)
    engines = asked or default_engines()
    if not asked and engines == ["none"]:  # an install without the shipped model files
        click.echo("demo: no trained pre-transform found, running with --engine none only", err=True)

    def progress(spec, qp, stats):
        click.echo(f"demo: {spec:<12} QP {qp}: sent {stats.frames_sent} frames", err=True)

    report = run_demo(data, engines, tuple(qps) or DEFAULT_QPS, recognizer, weights, progress=progress)
    click.echo(format_table(report))
    if report_path:
        write_report(report, report_path)
        click.echo(f"demo: report written to {report_path}", err=True)
