"""The ED: sizes, both bypass settings, speed budget, frozen recognizer, checkpoints and their errors."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from edgepipe.core.errors import EdgepipeError
from edgepipe.engines.base import to_model_input
from edgepipe.models.ed import CHECKPOINT_VERSION, EDConfig, EncoderDecoder, flops_per_pixel, load_ed, save_checkpoint
from edgepipe.train.losses import RecognitionAwareLoss

SIZES = [(224, 224), (17, 31), (1, 1), (5, 9), (64, 66), (90, 160)]


@pytest.mark.parametrize("bypass", [True, False])
def test_any_size_in_unit_range(bypass: bool) -> None:
    torch.manual_seed(0)
    model = EncoderDecoder(EDConfig(bypass=bypass))
    torch.nn.init.normal_(model.out.weight, std=0.5)  # make the output non-trivial
    for h, w in SIZES:
        with torch.no_grad():
            y = model(torch.rand(2, 3, h, w))
        assert y.shape == (2, 3, h, w)
        assert float(y.min()) >= 0.0 and float(y.max()) <= 1.0


def test_bypass_starts_as_identity_and_plain_does_not(real_frames) -> None:
    frames, _ = real_frames
    x = torch.from_numpy(to_model_input(frames[0][None, :101, :77]))
    assert torch.equal(EncoderDecoder(EDConfig(bypass=True))(x), x)
    plain = EncoderDecoder(EDConfig(bypass=False))(x)
    assert (plain - x).abs().mean() > 0.05  # it has to learn to rebuild the image


def test_bypass_switch_changes_the_graph() -> None:
    """Same weights, bypass on vs off: different outputs (the shortcuts are really there)."""
    torch.manual_seed(0)
    a = EncoderDecoder(EDConfig(bypass=True))
    for p in a.parameters():
        torch.nn.init.normal_(p, std=0.05)
    b = EncoderDecoder(EDConfig(bypass=False))
    b.load_state_dict(a.state_dict())
    x = torch.rand(1, 3, 32, 32)
    assert (a(x) - b(x)).abs().max() > 1e-3


def test_speed_budget() -> None:
    for bypass in (True, False):
        model = EncoderDecoder(EDConfig(bypass=bypass))
        fpp = flops_per_pixel(model)
        assert 1_000 < fpp <= 22_000
        assert fpp * 1280 * 720 <= 20e9
    # analytic count for the default widths (16, 32, 64), one body block: MACs per full-resolution pixel
    macs = 3 * 16 * 9 + 16 * 32 * 9 / 4 + 32 * 64 * 9 / 16 + 2 * 64 * 64 * 9 / 16 + 64 * 128 / 16 + 32 * 64 / 4 + 16 * 3 * 9
    assert flops_per_pixel(EncoderDecoder(), 64, 64) == pytest.approx(2 * macs)


def test_gradients_reach_ed_not_recognizer(recognizer, real_frames) -> None:
    torch.manual_seed(0)
    model = EncoderDecoder(EDConfig(bypass=False))
    criterion = RecognitionAwareLoss(recognizer, lambda_tv=1.0).train()
    bn_before = recognizer._bn0.running_mean.clone()
    frames, labels = real_frames
    x = torch.from_numpy(to_model_input(frames[:2, :96, :96]))
    terms = criterion(model(x), torch.from_numpy(labels[:2]))
    terms["loss"].backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())
    assert all(p.grad is None and not p.requires_grad for p in recognizer.parameters())
    assert not recognizer.training
    assert torch.equal(recognizer._bn0.running_mean, bn_before)


def test_checkpoint_roundtrip(tmp_path: Path) -> None:
    torch.manual_seed(1)
    model = EncoderDecoder(EDConfig(bypass=False, widths=(8, 16, 24), n_blocks=2))
    path = tmp_path / "m.pt"
    save_checkpoint(path, model, step=3)
    loaded = load_ed(path)
    assert loaded.config == model.config and not loaded.training
    x = torch.rand(1, 3, 20, 28)
    assert torch.equal(loaded(x), model(x))
    assert not list(tmp_path.glob("*.tmp"))  # atomic write leaves no temp file


def test_torch_engine_runs_a_checkpoint(tmp_path: Path, real_frames) -> None:
    from edgepipe.engines.torch_engine import TorchEngine

    path = tmp_path / "m.pt"
    save_checkpoint(path, EncoderDecoder())
    engine = TorchEngine(path, device="cpu")
    frames = np.ascontiguousarray(real_frames[0][:2, :45, :67])
    np.testing.assert_array_equal(engine.run(frames), frames)  # fresh bypass ED = identity


def test_load_errors(tmp_path: Path) -> None:
    with pytest.raises(EdgepipeError, match="not found"):
        load_ed(tmp_path / "missing.pt")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint at all")
    with pytest.raises(EdgepipeError, match="not a readable checkpoint"):
        load_ed(junk)
    other = tmp_path / "other.pt"
    torch.save({"state_dict": EncoderDecoder().state_dict()}, other)
    with pytest.raises(EdgepipeError, match="not an edgepipe ED checkpoint"):
        load_ed(other)
    path = tmp_path / "m.pt"
    save_checkpoint(path, EncoderDecoder())
    ckpt = torch.load(path, weights_only=True)
    ckpt["version"] = CHECKPOINT_VERSION + 1
    torch.save(ckpt, path)
    with pytest.raises(EdgepipeError, match="format version"):
        load_ed(path)
    ckpt["version"] = CHECKPOINT_VERSION
    ckpt["config"]["widths"] = [8, 16, 32]  # config says one architecture, weights are another
    torch.save(ckpt, path)
    with pytest.raises(EdgepipeError, match="do not match"):
        load_ed(path)
    for bad in (junk, other, path):  # messages are one line
        with pytest.raises(EdgepipeError) as info:
            load_ed(bad)
        assert "\n" not in str(info.value)


def test_cheap_variant_is_identity_at_start_any_size_and_under_4_kflop() -> None:
    """ours-fast: strided stem + pixel-shuffled output, same H x W out, a quarter of the FLOPs."""
    from edgepipe.models.ed import flops_per_pixel

    cfg = EDConfig(stem_stride=2, widths=(16, 32, 48))
    model = EncoderDecoder(cfg).eval()
    for h, w in [(224, 224), (101, 77), (9, 8)]:
        x = torch.rand(2, 3, h, w)
        torch.testing.assert_close(model(x), x)
    assert flops_per_pixel(model) <= 4000 < flops_per_pixel(EncoderDecoder())
    assert EDConfig.from_dict(cfg.to_dict()) == cfg
    assert EDConfig.from_dict({"bypass": True}).stem_stride == 1  # checkpoints from before the option


def _randomised(model: EncoderDecoder, seed: int = 0) -> EncoderDecoder:
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(std=0.1)
    return model.eval()


def test_context_branch_starts_at_zero_and_widens_what_a_pixel_sees() -> None:
    """--context: a trained model plus the fresh branch gives the model's own output; once the branch has weights,
    pixels 40-55 px from a change move (the plain ED sees ~27 px, so it cannot); any size; +2 kFLOP/pixel."""
    plain = _randomised(EncoderDecoder())
    grown = EncoderDecoder(EDConfig(context=True)).eval()
    missing, unexpected = grown.load_state_dict(plain.state_dict(), strict=False)
    assert not unexpected and missing and all(k.startswith("context.") for k in missing)
    x = torch.rand(1, 3, 192, 192)
    with torch.no_grad():
        torch.testing.assert_close(grown(x), plain(x))
        _randomised(grown.context, seed=1)
        for h, w in SIZES:
            assert grown(torch.rand(1, 3, h, w)).shape == (1, 3, h, w)
        x2 = x.clone()
        x2[..., 96, 96] = 1.0 - x2[..., 96, 96]
        far = (slice(None), slice(None), 96, slice(96 + 40, 96 + 56))  # 40-55 px to the right of the change
        assert torch.equal(plain(x)[far], plain(x2)[far])
        assert (grown(x)[far] - grown(x2)[far]).abs().max() > 1e-6
    # 1/8: 3x3 conv 64->64; 1/16: 3x3 conv, two in the block, a 1x1: MACs per full-resolution pixel
    extra = 64 * 64 * 9 / 64 + 3 * 64 * 64 * 9 / 256 + 64 * 64 / 256
    assert flops_per_pixel(grown, 64, 64) == pytest.approx(flops_per_pixel(plain, 64, 64) + 2 * extra)
    assert flops_per_pixel(grown) <= 20_000
    assert EDConfig.from_dict({"bypass": True}).context is False  # checkpoints from before the option
