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
                      stem_stride=2, backward="identity", tv_kind="isotropic", n_blocks=2, context=True)
    back = parsed(command_of(cfg.args(), "x.pt"))
    assert back.args() == {**cfg.args(), "out": "x.pt"}
    assert back.widths == (16, 32, 48) and back.stem_stride == 2 and back.tv_kind == "isotropic" and back.context


def test_every_setting_is_a_flag_with_help() -> None:
    """One declaration: each TrainConfig field is an option of the command, with a help text."""
    options = {p.name: p for p in train.params}
    assert set(options) == {f.name for f in dataclasses.fields(TrainConfig)}
    assert all(p.help for p in options.values())
    assert options["bypass"].opts == ["--no-bypass"] and options["tv_kind"].opts == ["--tv"]


def test_a_soup_card_gives_every_run_and_the_average(tmp_path) -> None:
    """A checkpoint averaged from sibling runs: its card names the runs, their seeds and steps, and reproduces it
    as one train command per run, then the average, then the export."""
    import torch

    from edgepipe.models.ed import EDConfig, EncoderDecoder, save_checkpoint
    from edgepipe.train.averaging import average_checkpoints
    from edgepipe.train.card import write_card

    paths = []
    for seed, steps in ((61, 4700), (62, 4650)):
        cfg = TrainConfig(data="d", out="o", init="edgepipe/data/models/ours.pt", seed=seed, lambda_mse=5.0)
        path = tmp_path / f"w{seed}.pt"
        save_checkpoint(path, EncoderDecoder(EDConfig()), args=cfg.args(), step=steps, elapsed=660.0, device="cuda")
        paths.append(str(path))
    soup = tmp_path / "ours.pt"
    torch.save(average_checkpoints(paths), soup)
    metrics = {"val_images": 10, "bpp_images": 5, "top1_input": 0.7, "top1_ed": 0.72, "psnr_ed": 24.0,
               "bpp_input": 1.0, "bpp_ed": 0.9, "bpp_saving": 0.1}
    write_card(soup, metrics, 32, "", tmp_path / "ours.md")
    card = (tmp_path / "ours.md").read_text()
    assert "weight soup: 4,700, 4,650 steps" in card and "9,350 in all" in card and "seeds 61, 62" in card
    block = card.split("```")[1].strip().splitlines()
    assert [parsed(line).seed for line in block[:2]] == [61, 62]
    assert [parsed(line).out for line in block[:2]] == ["runs/final/w61.pt", "runs/final/w62.pt"]
    assert block[2] == "python bench/average_checkpoints.py runs/final/w61.pt runs/final/w62.pt --out runs/final/ours.pt"
    assert block[3].startswith("edgepipe export runs/final/ours.pt")
    assert "22.0 min" in card and "no optimiser" in card


def test_the_card_names_the_camera_and_temporal_terms() -> None:
    """A model trained with the label-free camera term (or the temporal term) says so in its loss line, with
    the clips it saw; one trained without them does not mention them."""
    from edgepipe.train.card import _recipe

    cfg = TrainConfig(data="d", out="o", codec="hevc:31-47", lambda_mse=5.0, lambda_temporal=300.0,
                      frames="../shared/data/video/car.mp4,clips/person.mp4", lambda_frames=2.0)
    line = _recipe(cfg.args())
    assert "λ_frames = 2 × KL" in line and "car.mp4, person.mp4" in line
    assert "λ_temporal = 300" in line and "zoomed out" not in line
    zoomed = _recipe(TrainConfig(data="d", out="o", codec="hevc:31-47", frames="car.mp4", lambda_frames=2.0,
                                 frames_rescale_min=0.5).args())
    assert "car.mp4, zoomed out by a factor in [0.5, 1])" in zoomed
    plain = _recipe(TrainConfig(data="d", out="o", codec="hevc:31-47", lambda_mse=5.0).args())
    assert "λ_frames" not in plain and "λ_temporal" not in plain


def test_the_card_names_the_context_branch(tmp_path) -> None:
    from edgepipe.models.ed import EDConfig, EncoderDecoder, save_checkpoint
    from edgepipe.train.card import write_card

    metrics = {"val_images": 10, "bpp_images": 5, "top1_input": 0.7, "top1_ed": 0.72, "psnr_ed": 24.0,
               "bpp_input": 1.0, "bpp_ed": 0.9, "bpp_saving": 0.1}
    for context in (True, False):
        cfg = TrainConfig(data="d", out="o", context=context)
        save_checkpoint(tmp_path / "m.pt", EncoderDecoder(EDConfig(context=context)), args=cfg.args(), step=9)
        write_card(tmp_path / "m.pt", metrics, 32, "", tmp_path / "m.md")
        card = (tmp_path / "m.md").read_text()
        assert ("a context branch down to 1/16" in card) is context
        assert ("19.6 kFLOP/pixel" if context else "17.6 kFLOP/pixel") in card
