"""The reproduce command written into model cards parses back to the same training settings."""
from __future__ import annotations

import shlex

from edgepipe.train.card import command_of
from edgepipe.train.cli import train
from edgepipe.train.loop import TrainConfig


def test_card_command_round_trips() -> None:
    args = TrainConfig(data="d", out="o", lambda_tv=20.0, bypass=False, max_steps=900, recon_warmup=100,
                       val_data="v", val_limit=300, crop=96, seed=3).args()
    argv = shlex.split(command_of(args, "runs/x.pt"))
    assert argv[:2] == ["edgepipe", "train"]
    params = train.make_context("train", argv[2:]).params
    assert params["lambda_tv"] == 20.0 and params["no_bypass"] is True
    assert (params["max_steps"], params["recon_warmup"], params["crop"], params["seed"]) == (900, 100, 96, 3)
    assert (params["data"], params["val_data"], params["val_limit"], params["out"]) == ("d", "v", 300, "runs/x.pt")


def test_card_command_round_trips_the_codec_recipe() -> None:
    args = TrainConfig(data="d", out="o", codec="hevc:31-47,jpeg:5-40", lambda_rate=0.5, lambda_mse=5.0,
                       lambda_tv=5.0, rescale_min=0.6, holdout=0.05, distill=2.0, widths=(16, 32, 48),
                       stem_stride=2, backward="identity").args()
    params = train.make_context("train", shlex.split(command_of(args, "x.pt"))[2:]).params
    assert (params["codec"], params["lambda_rate"], params["lambda_mse"], params["lambda_tv"]) == (
        "hevc:31-47,jpeg:5-40", 0.5, 5.0, 5.0)
    assert (params["rescale_min"], params["holdout"], params["distill"], params["backward"]) == (0.6, 0.05, 2.0, "identity")
    assert (params["widths"], params["stem_stride"]) == ("16,32,48", "2")
