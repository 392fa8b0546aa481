"""Serve a model repository written by `edgepipe recognizer-repo` on the Triton server that PyPI's
nvidia-pytriton bundles, for tests and trials on machines without a Triton install.

That bundled tritonserver has only the Python backend, not onnxruntime, so each model's config.pbtxt is read
(with tritonclient's ModelConfig protobuf: a field name we got wrong fails here) and its ONNX file is bound
through pytriton with the same input and output names, dims, max_batch_size and dynamic batching, running on
ONNX Runtime inside the Python backend. A production Triton serves the same directory with its onnxruntime
backend: `tritonserver --model-repository DIR`.

Run it with the Python of the venv from deploy/triton/make-venv.sh (Debian's /usr/bin/python3; pytriton's
Python backend failed under pyenv's 3.11.7):

    VENV/bin/python deploy/triton/pytriton_serve.py --model-repository DIR --grpc-port 8001

Needs only that venv (pytriton, onnxruntime, numpy), not edgepipe. Exit status 2: the repository is not what
`recognizer-repo` writes (a bug on our side, not a missing library).
"""
from __future__ import annotations

import argparse
import logging
import signal
import sys
from pathlib import Path

import numpy as np

_DTYPES = {"TYPE_UINT8": np.uint8, "TYPE_FP32": np.float32, "TYPE_FP16": np.float16, "TYPE_INT64": np.int64,
           "TYPE_INT32": np.int32}


def read_repository(root: Path) -> list[tuple[object, Path]]:
    """(ModelConfig, model.onnx path) for every model directory; SystemExit(2) on anything malformed."""
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    models = []
    if not root.is_dir():
        sys.exit(f"error: --model-repository {root} is not a directory")
    for config_path in sorted(root.glob("*/config.pbtxt")):
        model_dir = config_path.parent
        try:
            config = text_format.Parse(config_path.read_text(), model_config_pb2.ModelConfig())
        except text_format.ParseError as exc:
            print(f"error: {config_path}: {exc}", file=sys.stderr)
            sys.exit(2)
        if config.name and config.name != model_dir.name:
            print(f"error: {config_path}: name {config.name!r} is not the directory's {model_dir.name!r}",
                  file=sys.stderr)
            sys.exit(2)
        if config.backend != "onnxruntime" and config.platform != "onnxruntime_onnx":
            print(f"error: {config_path}: not an ONNX Runtime model", file=sys.stderr)
            sys.exit(2)
        versions = sorted((int(p.name) for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit()))
        filename = config.default_model_filename or "model.onnx"
        if not versions or not (model_dir / str(versions[-1]) / filename).is_file():
            print(f"error: {model_dir}: no <version>/{filename}", file=sys.stderr)
            sys.exit(2)
        models.append((config, model_dir / str(versions[-1]) / filename))
    if not models:
        print(f"error: no */config.pbtxt under {root}", file=sys.stderr)
        sys.exit(2)
    return models


def _interrupt(*_) -> None:
    raise KeyboardInterrupt


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-repository", required=True, type=Path)
    parser.add_argument("--address", default="127.0.0.1", help="Listen address (default: loopback only).")
    parser.add_argument("--grpc-port", type=int, default=8001)
    parser.add_argument("--http-port", type=int, default=8000)
    parser.add_argument("--metrics-port", type=int, default=8002)
    parser.add_argument("--workspace", type=Path, default=None,
                        help="pytriton's working directory (default: a new one under ~/.cache/pytriton).")
    parser.add_argument("--batch-log", type=Path, default=None,
                        help="Append 'MODEL BATCH_SIZE' for every batch run (shows the dynamic batcher at work).")
    parser.add_argument("--threads", type=int, default=0, help="ONNX Runtime intra-op threads (0: its default).")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    models = read_repository(args.model_repository)

    import onnxruntime as ort
    from pytriton.decorators import batch
    from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor
    from pytriton.triton import Triton, TritonConfig
    from tritonclient.grpc import model_config_pb2

    def tensors(specs) -> list:
        out = []
        for spec in specs:
            name = model_config_pb2.DataType.Name(spec.data_type)
            if name not in _DTYPES:
                print(f"error: tensor {spec.name}: data type {name} is not served here", file=sys.stderr)
                sys.exit(2)
            out.append(Tensor(name=spec.name, dtype=_DTYPES[name], shape=tuple(spec.dims)))
        return out

    def infer_function(model_name, session, output_names):
        @batch
        def infer(**inputs):
            if args.batch_log:
                with open(args.batch_log, "a") as log:
                    log.write(f"{model_name} {len(next(iter(inputs.values())))}\n")
            return dict(zip(output_names, session.run(output_names, inputs)))

        return infer

    config = TritonConfig(grpc_address=args.address, grpc_port=args.grpc_port, http_address=args.address,
                          http_port=args.http_port, metrics_port=args.metrics_port, allow_metrics=False)
    with Triton(config=config, workspace=args.workspace) as triton:
        for model_config, onnx_path in models:
            options = ort.SessionOptions()
            if args.threads:
                options.intra_op_num_threads = args.threads
            session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
            batching = model_config.dynamic_batching
            model_name = onnx_path.parent.parent.name
            triton.bind(
                model_name=model_name,
                infer_func=infer_function(model_name, session, [o.name for o in model_config.output]),
                inputs=tensors(model_config.input),
                outputs=tensors(model_config.output),
                config=ModelConfig(
                    batching=model_config.max_batch_size > 0,
                    max_batch_size=max(model_config.max_batch_size, 1),
                    batcher=DynamicBatcher(
                        max_queue_delay_microseconds=batching.max_queue_delay_microseconds,
                        preferred_batch_size=list(batching.preferred_batch_size) or None,
                    ),
                ),
            )
        signal.signal(signal.SIGTERM, _interrupt)  # serve() stops the server cleanly on KeyboardInterrupt
        print(f"serving {', '.join(p.parent.parent.name for _, p in models)} on grpc://{args.address}:"
              f"{args.grpc_port}", flush=True)
        triton.serve()  # returns on SIGINT/SIGTERM, or when the server or its Python backend dies


if __name__ == "__main__":
    main()
