"""The reproduce command written into model cards parses back to the same training settings."""
from __future__ import annotations

import dataclasses
import shlex

from edgepipe.commands.from_dataclass import build
from edgepipe.commands.train import train
from edgepipe.train.card import command_of
from edgepipe.train.config import TrainConfig


def parsed(command: str) -> TrainConfig:
    """The settings `edgepipe train` builds from a command line."""
    argv = shlex.split(command)
    assert argv[:2] == ["edgepipe", "train"]
    return build(TrainConfig, train.make_context("train", argv[2:]).params)


def test_card_command_round_trips() -> None:
    cfg = TrainConfig(data="d", out="o", lambda_tv=20.0, bypass=False, max_steps=900, recon_warmup=100,
                      val_data="v", val_limit=300, crop=96, seed=3)
    back = parsed(command_of(cfg.args(), "runs/x.pt"))
    assert back.args() == {**cfg.args(), "out": "runs/x.pt"}
    assert back.bypass is False and back.lambda_tv == 20.0


def test_card_command_round_trips_the_codec_recipe() -> None:
    cfg = TrainConfig(data="d", out="o", codec="hevc:31-47,jpeg:5-40", lambda_rate=0.5, lambda_mse=5.0,
                      lambda_tv=5.0, rescale_min=0.6, holdout=0.05, distill=2.0, widths=(16, 32, 48),
                      stem_stride=2, backward="identity", tv_kind="isotropic", n_blocks=2)
    back = parsed(command_of(cfg.args(), "x.pt"))
    assert back.args() == {**cfg.args(), "out": "x.pt"}
    assert back.widths == (16, 32, 48) and back.stem_stride == 2 and back.tv_kind == "isotropic"


def test_every_setting_is_a_flag_with_help() -> None:
    """One declaration: each TrainConfig field is an option of the command, with a help text."""
    options = {p.name: p for p in train.params}
    assert set(options) == {f.name for f in dataclasses.fields(TrainConfig)}
    assert all(p.help for p in options.values())
    assert options["bypass"].opts == ["--no-bypass"] and options["tv_kind"].opts == ["--tv"]
