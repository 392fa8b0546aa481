"""Training: loss goes down on real images, resume continues exactly, logs, bad input in one line."""
from __future__ import annotations

import csv
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from edgepipe.cli import cli
from edgepipe.core.errors import EdgepipeError
from edgepipe.engines.base import to_model_input
from edgepipe.models.ed import EDConfig, EncoderDecoder, load_ed, read_checkpoint
from edgepipe.train.data import CropBatches
from edgepipe.train.loop import TrainConfig, _Running, _step, train
from edgepipe.train.losses import RecognitionAwareLoss


@pytest.mark.parametrize("bypass", [True, False])
def test_steps_reduce_loss_on_real_batch(recognizer, real_frames, bypass: bool) -> None:
    torch.manual_seed(0)
    frames, labels = real_frames
    images, labels = np.ascontiguousarray(frames[::3, 40:136, 40:136]), labels[::3]  # 4 real 96x96 crops
    model = EncoderDecoder(EDConfig(bypass=bypass))
    criterion = RecognitionAwareLoss(recognizer, lambda_tv=1.0)
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
    x, y = torch.from_numpy(to_model_input(images)), torch.from_numpy(labels)

    def loss() -> float:
        with torch.no_grad():
            return float(criterion(model(x), y)["loss"])

    before = loss()
    for _ in range(8):
        _step(model, criterion, optimizer, images, labels, False, "cpu", _Running())
    assert loss() < before - 0.05


def _cfg(data: Path, out: Path, **kw) -> TrainConfig:
    base = dict(data=str(data), out=str(out), crop=48, batch_size=4, lambda_tv=5.0, progress=False,
                checkpoint_every=1, threads=2)
    base.update(kw)
    return TrainConfig(**base)


def test_resume_continues_where_it_stopped(small_val_folder: Path, tmp_path: Path) -> None:
    """4 steps in one go == 2 steps, stop, resume to 4 (crossing an epoch boundary: 3 batches per epoch)."""
    straight = train(_cfg(small_val_folder, tmp_path / "a.pt", max_steps=4, epochs=3))
    assert straight["stopped"] == "max-steps"
    train(_cfg(small_val_folder, tmp_path / "b.pt", max_steps=2, epochs=3))
    assert read_checkpoint(tmp_path / "b.pt")["step"] == 2
    train(_cfg(small_val_folder, tmp_path / "b.pt", max_steps=4, epochs=3, resume=True))
    a, b = read_checkpoint(tmp_path / "a.pt"), read_checkpoint(tmp_path / "b.pt")
    assert (a["step"], a["epoch"], a["batch"]) == (b["step"], b["epoch"], b["batch"]) == (4, 1, 1)
    for key, value in a["state_dict"].items():
        torch.testing.assert_close(b["state_dict"][key], value, rtol=1e-5, atol=1e-6)
    assert not torch.equal(a["state_dict"]["out.weight"], torch.zeros_like(a["state_dict"]["out.weight"]))
    # resuming with another lambda is another run: refused
    with pytest.raises(EdgepipeError, match="lambda_tv"):
        train(_cfg(small_val_folder, tmp_path / "b.pt", max_steps=6, epochs=3, resume=True, lambda_tv=1.0))


def test_cli_train_validates_and_logs(small_val_folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "run" / "ed.pt"
    result = CliRunner().invoke(cli, [
        "train", "--data", str(small_val_folder), "--val-data", str(small_val_folder), "--out", str(out),
        "--crop", "48", "--batch-size", "4", "--epochs", "1", "--val-limit", "6", "--bpp-limit", "2",
        "--no-bypass", "--recon-warmup", "1", "--no-progress", "--threads", "2"])
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(open(out.with_suffix(".csv"))))
    assert len(rows) == 1 and rows[0]["reason"] == "epoch" and rows[0]["step"] == "3"
    for key in ("top1_input", "top1_ed", "bpp_input", "bpp_ed"):
        assert 0.0 <= float(rows[0][key]) and (float(rows[0][key]) <= 1.0 or key.startswith("bpp"))
    assert float(rows[0]["bpp_input"]) > 0.1 and float(rows[0]["bpp_ed"]) > 0.0
    assert load_ed(out).config.bypass is False
    assert read_checkpoint(out)["done"] is True


def test_unreadable_images_are_skipped_and_counted(small_val_folder: Path, tmp_path: Path) -> None:
    root = tmp_path / "data"
    shutil.copytree(small_val_folder, root, symlinks=True)
    synset = sorted(p for p in root.iterdir())[0]
    (synset / "broken.JPEG").write_bytes(b"\xff\xd8 this is not a jpeg")
    batches = CropBatches(root, crop=32, batch_size=13, seed=0)  # all 13 files in one batch
    images, labels = batches.batch(0, 0)
    assert images.shape == (12, 32, 32, 3) and labels.shape == (12,)
    assert len(batches.unreadable) == 1


def _one_line_error(args: list[str]) -> str:
    result = CliRunner().invoke(cli, args)
    assert result.exit_code != 0
    assert "Traceback" not in result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1, result.output
    return lines[0]


def test_bad_input_is_one_clear_line(small_val_folder: Path, tmp_path: Path) -> None:
    out = str(tmp_path / "x.pt")
    assert "data folder not found" in _one_line_error(["train", "--data", str(tmp_path / "nope"), "--out", out])
    (tmp_path / "empty").mkdir()
    assert "no labelled images" in _one_line_error(["train", "--data", str(tmp_path / "empty"), "--out", out])
    assert "nothing to resume" in _one_line_error(
        ["train", "--data", str(small_val_folder), "--out", out, "--resume"])
    junk = tmp_path / "vgg.pth"
    torch.save({"features.0.weight": torch.zeros(3)}, junk)
    assert "not a vgg16 weight file" in _one_line_error(
        ["train", "--data", str(small_val_folder), "--out", out, "--recognizer", "vgg16", "--weights", str(junk)])
    assert not (tmp_path / "x.pt").exists() and not (tmp_path / "x.csv").exists()  # nothing half-written
    stale = tmp_path / "old.pt"
    torch.save({"format": "edgepipe-ed", "version": 0}, stale)
    assert "format version 0" in _one_line_error(
        ["train", "--data", str(small_val_folder), "--out", str(stale), "--resume"])
    assert "format version 0" in _one_line_error(["export", str(stale), "--onnx", str(tmp_path / "o.onnx")])


def test_validation_bpp_equals_single_image_encodes(real_frames) -> None:
    from edgepipe.media.codecs import bits_per_pixel, encode_image
    from edgepipe.train.validate import mean_bpp

    frames = real_frames[0][:3]
    single = np.mean([bits_per_pixel(len(encode_image("hevc", f, 37)), 224, 224) for f in frames])
    assert mean_bpp(frames, 37) == pytest.approx(single, rel=1e-9)


def test_optimizer_state_is_reset_after_reconstruction_warmup(small_val_folder: Path, tmp_path: Path) -> None:
    """Adam moments from the MSE phase must not scale the first CE steps (that collapsed a plain ED)."""
    train(_cfg(small_val_folder, tmp_path / "w.pt", max_steps=3, recon_warmup=2, bypass=False, lambda_tv=0.0))
    state = read_checkpoint(tmp_path / "w.pt")["optimizer"]["state"]
    assert state and all(float(s["step"]) == 1 for s in state.values())  # 2 warm-up steps, reset, 1 CE step


def test_codec_in_the_loop_trains_logs_and_resumes(small_val_folder: Path, tmp_path: Path) -> None:
    """Three real HEVC/JPEG/JPEG 2000 steps: the log has the coded loss, measured bpp and the proxy's correlation."""
    kw = dict(codec="hevc:35-45,jpeg:10-30,jpeg2000-db:25-31", lambda_tv=0.0, lambda_rate=0.3, lambda_mse=2.0,
              rescale_min=0.7, codec_workers=2, crop=64, batch_size=3)  # 4 batches an epoch: 3 steps stay in one
    train(_cfg(small_val_folder, tmp_path / "c.pt", max_steps=3, epochs=3, **kw))
    ckpt = read_checkpoint(tmp_path / "c.pt")
    assert set(ckpt["rate_scale"]) == {"hevc", "jpeg", "jpeg2000-db"}
    assert all(v > 0 for v in ckpt["rate_scale"].values())
    row = list(csv.DictReader(open(tmp_path / "c.csv")))[-1]
    assert float(row["train_bpp_real"]) > 0.05 and float(row["train_rate"]) > 0
    assert 0 <= float(row["train_top1_coded"]) <= 1 and float(row["train_coded"]) > 0
    train(_cfg(small_val_folder, tmp_path / "c.pt", max_steps=4, epochs=3, resume=True, **kw))
    assert read_checkpoint(tmp_path / "c.pt")["step"] == 4
    with pytest.raises(EdgepipeError, match="codec"):
        train(_cfg(small_val_folder, tmp_path / "c.pt", max_steps=5, epochs=3, resume=True,
                   **{**kw, "codec": "hevc:31-47"}))
    with pytest.raises(EdgepipeError, match="needs --codec"):
        _cfg(small_val_folder, tmp_path / "d.pt", lambda_rate=1.0)


def test_ctrl_c_says_where_the_checkpoint_is(small_val_folder: Path, tmp_path: Path, monkeypatch) -> None:
    real_batch = CropBatches.batch

    def interrupted(self, epoch, index):
        if index == 3:
            raise KeyboardInterrupt
        return real_batch(self, epoch, index)

    monkeypatch.setattr(CropBatches, "batch", interrupted)
    with pytest.raises(EdgepipeError, match=r"interrupted at step 3: the checkpoint of step 2 .* --resume"):
        train(_cfg(small_val_folder, tmp_path / "i.pt", max_steps=6, epochs=3, checkpoint_every=2, batch_size=2))
    assert read_checkpoint(tmp_path / "i.pt")["step"] == 2


def test_init_fine_tunes_from_a_checkpoint(small_val_folder: Path, tmp_path: Path) -> None:
    """--init starts from the given weights and architecture with a fresh step count; a clashing architecture fails."""
    train(_cfg(small_val_folder, tmp_path / "base.pt", max_steps=2, widths=(8, 16, 24)))
    base = read_checkpoint(tmp_path / "base.pt")
    # zero steps of fine-tuning: the weights must be the base model's, not a fresh initialisation
    train(_cfg(small_val_folder, tmp_path / "ft0.pt", max_steps=0, init=str(tmp_path / "base.pt")))
    ft0 = read_checkpoint(tmp_path / "ft0.pt")
    assert ft0["config"]["widths"] == [8, 16, 24] and ft0["args"]["init"] == str(tmp_path / "base.pt")
    for key, value in base["state_dict"].items():
        torch.testing.assert_close(ft0["state_dict"][key], value)
    train(_cfg(small_val_folder, tmp_path / "ft.pt", max_steps=2, lr=1e-4, init=str(tmp_path / "base.pt")))
    ft = read_checkpoint(tmp_path / "ft.pt")
    assert ft["step"] == 2 and ft["optimizer"]["param_groups"][0]["lr"] == 1e-4
    assert not torch.equal(ft["state_dict"]["out.weight"], base["state_dict"]["out.weight"])
    with pytest.raises(EdgepipeError, match="widths"):
        train(_cfg(small_val_folder, tmp_path / "bad.pt", max_steps=1, widths=(16, 32, 48),
                   init=str(tmp_path / "base.pt")))
    # The fine-tune's own command, repeated with --resume, goes on with the architecture it took from --init.
    train(_cfg(small_val_folder, tmp_path / "ft.pt", max_steps=3, lr=1e-4, init=str(tmp_path / "base.pt"),
               resume=True))
    resumed = read_checkpoint(tmp_path / "ft.pt")
    assert resumed["step"] == 3 and resumed["config"]["widths"] == [8, 16, 24]
    with pytest.raises(EdgepipeError, match="widths"):
        train(_cfg(small_val_folder, tmp_path / "ft.pt", max_steps=4, widths=(16, 32, 48),
                   init=str(tmp_path / "base.pt"), resume=True))
    with pytest.raises(EdgepipeError, match="no such checkpoint"):
        train(_cfg(small_val_folder, tmp_path / "bad.pt", max_steps=1, init=str(tmp_path / "nope.pt")))


def test_weight_average_follows_its_formula() -> None:
    """avg_n = d_n avg_{n-1} + (1 - d_n) w_n with d_n = min(decay, (1 + n) / (10 + n)), from the start weights."""
    model = torch.nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        model.weight.fill_(1.0)
    from edgepipe.train.averaging import WeightAverage

    average, expected = WeightAverage(model, 0.5), 1.0
    for n, w in enumerate([3.0, -2.0, 5.0, 0.5]):
        with torch.no_grad():
            model.weight.fill_(w)
        average.update(model)
        d = min(0.5, (1 + n) / (10 + n))
        expected = d * expected + (1 - d) * w
    torch.testing.assert_close(average.state_dict()["weight"], torch.full((1, 2), expected))
    assert average.updates == 4 and float(model.weight.detach()[0, 0]) == 0.5  # the model itself is untouched
    with pytest.raises(ValueError):
        WeightAverage(model, 1.0)


def test_ema_ships_the_average_and_resumes_exactly(small_val_folder: Path, tmp_path: Path) -> None:
    """--ema: state_dict is the average (what eval and export load), train_state_dict the raw weights; a
    run stopped and resumed gives both exactly as one run straight through."""
    train(_cfg(small_val_folder, tmp_path / "a.pt", max_steps=4, epochs=3, ema=0.9))
    train(_cfg(small_val_folder, tmp_path / "b.pt", max_steps=2, epochs=3, ema=0.9))
    train(_cfg(small_val_folder, tmp_path / "b.pt", max_steps=4, epochs=3, ema=0.9, resume=True))
    a, b = read_checkpoint(tmp_path / "a.pt"), read_checkpoint(tmp_path / "b.pt")
    assert a["ema_updates"] == b["ema_updates"] == 4
    for part in ("state_dict", "train_state_dict"):
        for key, value in a[part].items():
            torch.testing.assert_close(b[part][key], value, rtol=1e-5, atol=1e-6)
    assert not torch.equal(a["state_dict"]["out.weight"], a["train_state_dict"]["out.weight"])
    shipped = load_ed(tmp_path / "a.pt").state_dict()
    torch.testing.assert_close(shipped["out.weight"], a["state_dict"]["out.weight"])
    # without --ema the checkpoint is as before: no second copy of the weights
    train(_cfg(small_val_folder, tmp_path / "c.pt", max_steps=1))
    assert "train_state_dict" not in read_checkpoint(tmp_path / "c.pt")
    with pytest.raises(EdgepipeError, match="ema"):
        train(_cfg(small_val_folder, tmp_path / "b.pt", max_steps=6, epochs=3, ema=0.99, resume=True))
    with pytest.raises(EdgepipeError, match="--ema"):
        _cfg(small_val_folder, tmp_path / "d.pt", ema=1.0)


def test_a_setting_newer_than_the_checkpoint_counts_as_its_default(small_val_folder: Path, tmp_path: Path) -> None:
    """A checkpoint saved before --ema existed has no 'ema' in its args: resuming it with --ema is another run,
    refused in one line (not a KeyError on the raw weights it never saved); with the default it resumes."""
    train(_cfg(small_val_folder, tmp_path / "old.pt", max_steps=1, epochs=3))
    ckpt = torch.load(tmp_path / "old.pt", weights_only=True)
    del ckpt["args"]["ema"], ckpt["args"]["rescale_max"]
    torch.save(ckpt, tmp_path / "old.pt")
    with pytest.raises(EdgepipeError, match=r"ema: 0.0 -> 0.9"):
        train(_cfg(small_val_folder, tmp_path / "old.pt", max_steps=2, epochs=3, ema=0.9, resume=True))
    train(_cfg(small_val_folder, tmp_path / "old.pt", max_steps=2, epochs=3, resume=True))
    assert read_checkpoint(tmp_path / "old.pt")["step"] == 2


def test_init_with_context_adds_the_branch_at_zero(small_val_folder: Path, tmp_path: Path) -> None:
    """--init M --context: M's weights plus a branch whose output starts at zero, so the fine-tune starts from M's
    exact output; it resumes; a context model cannot be fine-tuned without its branch."""
    train(_cfg(small_val_folder, tmp_path / "base.pt", max_steps=2, widths=(8, 16, 24)))
    base = read_checkpoint(tmp_path / "base.pt")
    train(_cfg(small_val_folder, tmp_path / "ft0.pt", max_steps=0, init=str(tmp_path / "base.pt"), context=True))
    ft0 = read_checkpoint(tmp_path / "ft0.pt")
    assert ft0["config"]["context"] is True and ft0["config"]["widths"] == [8, 16, 24]
    for key, value in base["state_dict"].items():
        torch.testing.assert_close(ft0["state_dict"][key], value)
    x = torch.rand(1, 3, 40, 56)
    with torch.no_grad():
        torch.testing.assert_close(load_ed(tmp_path / "ft0.pt")(x), load_ed(tmp_path / "base.pt")(x))
    train(_cfg(small_val_folder, tmp_path / "ft.pt", max_steps=2, init=str(tmp_path / "base.pt"), context=True))
    train(_cfg(small_val_folder, tmp_path / "ft.pt", max_steps=3, init=str(tmp_path / "base.pt"), context=True,
               resume=True))
    ft = read_checkpoint(tmp_path / "ft.pt")
    assert ft["step"] == 3 and ft["config"]["context"] is True
    assert ft["state_dict"]["context.back.weight"].abs().max() > 0  # the branch trains
    with pytest.raises(EdgepipeError, match="pass --context"):
        train(_cfg(small_val_folder, tmp_path / "bad.pt", max_steps=1, init=str(tmp_path / "ft.pt")))
    with pytest.raises(EdgepipeError, match="context"):  # nor resumed without it
        train(_cfg(small_val_folder, tmp_path / "ft.pt", max_steps=4, init=str(tmp_path / "base.pt"), resume=True))


def test_label_scope_dataset_trains_resumes_and_is_refused_with_distill(small_val_folder: Path, tmp_path: Path) -> None:
    """--label-scope dataset: the CE over the folder's 3 classes trains and is written into the card's recipe;
    a resume cannot change it, and --distill (which replaces the CE) refuses it."""
    from edgepipe.train.card import _recipe

    kw = dict(label_scope="dataset", lambda_tv=0.0, crop=64, batch_size=3)
    train(_cfg(small_val_folder, tmp_path / "s.pt", max_steps=2, **kw))
    ckpt = read_checkpoint(tmp_path / "s.pt")
    assert ckpt["step"] == 2 and ckpt["args"]["label_scope"] == "dataset"
    assert "softmax over the training data's classes only" in _recipe(ckpt["args"])
    with pytest.raises(EdgepipeError, match=r"label_scope: dataset -> all"):
        train(_cfg(small_val_folder, tmp_path / "s.pt", max_steps=3, resume=True, **{**kw, "label_scope": "all"}))
    with pytest.raises(EdgepipeError, match="--distill replaces it"):
        _cfg(small_val_folder, tmp_path / "d.pt", label_scope="dataset", distill=1.0)
