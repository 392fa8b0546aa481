"""`edgepipe recognizer-repo`: a Triton model repository (ONNX, config) for a recognizer (docs/triton.md)."""
from __future__ import annotations

from pathlib import Path

import click

from edgepipe.recognition import DEFAULT_RECOGNIZER, RECOGNIZERS
from edgepipe.recognition.triton_repo import (
    DEFAULT_MAX_BATCH,
    DEFAULT_QUEUE_DELAY_US,
    MODEL_VERSION,
    write_model_repository,
)


@click.command("recognizer-repo")
@click.option("--out", required=True, type=click.Path(file_okay=False),
              help="Model repository directory (created; other models in it are left alone).")
@click.option("--recognizer", type=click.Choice(RECOGNIZERS), default=DEFAULT_RECOGNIZER, show_default=True)
@click.option("--weights", type=click.Path(dir_okay=False), default=None, help="Recognizer weights (vgg16).")
@click.option("--model-name", default=None, help="Model name on the server (default: the recognizer's name).")
@click.option("--max-batch", type=int, default=DEFAULT_MAX_BATCH, show_default=True,
              help="max_batch_size: the largest batch the server forms.")
@click.option("--queue-delay-us", type=int, default=DEFAULT_QUEUE_DELAY_US, show_default=True,
              help="Dynamic batching: how long a request may wait for others to join its batch.")
def recognizer_repo(out, recognizer, weights, model_name, max_batch, queue_delay_us):
    """Write a Triton model repository for a recognizer: ONNX (onnxruntime backend) + config.pbtxt.

    Serve it with `tritonserver --model-repository OUT`, then give the monitor
    `--recognizer-server grpc://HOST:8001`.
    """
    model_dir = write_model_repository(out, recognizer, weights, model_name, max_batch, queue_delay_us)
    click.echo(f"wrote {model_dir}/config.pbtxt and {model_dir}/{MODEL_VERSION}/model.onnx")
    click.echo(f"serve: tritonserver --model-repository {Path(out).resolve()}")
    click.echo(f"monitor: edgepipe monitor ... --recognizer {recognizer} --recognizer-server grpc://HOST:8001")
