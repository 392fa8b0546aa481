"""`edgepipe recognizer-repo`: a Triton model repository (ONNX, config) for a recognizer (docs/triton.md). Its
options are the fields of RepoSettings (recognition/triton_repo.py), each declared once there."""
from __future__ import annotations

from pathlib import Path

import click

from edgepipe.commands.from_dataclass import build, options_from
from edgepipe.recognition.triton_repo import MODEL_VERSION, RepoSettings, write_model_repository


@click.command("recognizer-repo")
@options_from(RepoSettings)
def recognizer_repo(**params) -> None:
    """Write a Triton model repository for a recognizer: ONNX (onnxruntime backend) + config.pbtxt.

    Serve it with `tritonserver --model-repository OUT`, then give the monitor
    `--recognizer-server grpc://HOST:8001`.
    """
    s = build(RepoSettings, params)
    model_dir = write_model_repository(s.out, s.recognizer, s.weights, s.model_name, s.max_batch, s.queue_delay_us)
    click.echo(f"wrote {model_dir}/config.pbtxt and {model_dir}/{MODEL_VERSION}/model.onnx")
    click.echo(f"serve: tritonserver --model-repository {Path(s.out).resolve()}")
    click.echo(f"monitor: edgepipe monitor ... --recognizer {s.recognizer} --recognizer-server grpc://HOST:8001")
