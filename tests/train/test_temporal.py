"""The temporal-stability term: zero for an ED that passes change through, larger for one that amplifies it,
and it trains the residual towards stability on real crops."""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from edgepipe.engines.base import to_model_input
from edgepipe.models.ed import EDConfig, EncoderDecoder
from edgepipe.train.loop import TrainConfig, train
from edgepipe.train.temporal import next_frame, temporal_instability, translate


def _crops(real_frames, n: int = 4, side: int = 64) -> torch.Tensor:
    frames, _ = real_frames
    return torch.from_numpy(to_model_input(np.ascontiguousarray(frames[:n, 50:50 + side, 60:60 + side])))


def test_translate_by_whole_pixels_moves_the_content(real_frames) -> None:
    x = _crops(real_frames)
    moved = translate(x, torch.tensor([[2.0, -1.0]] * len(x)))
    # content at (u, v) lands at (u + 2, v - 1); compare away from the reflected border
    torch.testing.assert_close(moved[..., 3:-3, 4:-4], x[..., 4:-2, 2:-6], atol=1e-5, rtol=0)
    torch.testing.assert_close(translate(x, torch.zeros(len(x), 2)), x, atol=1e-5, rtol=0)


def test_next_frame_is_seeded_and_close_to_the_crop(real_frames) -> None:
    x = _crops(real_frames)
    a, shift_a = next_frame(x, torch.Generator().manual_seed(3))
    b, shift_b = next_frame(x, torch.Generator().manual_seed(3))
    torch.testing.assert_close(a, b)
    torch.testing.assert_close(shift_a, shift_b)
    assert shift_a.abs().max() <= 1.5 and 0 < float((a - x).abs().mean()) < 0.1


class _Sharpen(nn.Module):
    """x + k * (x - blur(x)): amplifies noise and sub-pixel change, like an ED that emphasises detail."""

    def __init__(self, k: float):
        super().__init__()
        self.k = k

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x + self.k * (x - F.avg_pool2d(x, 3, 1, 1, count_include_pad=False))).clamp(0, 1)


def test_zero_for_pass_through_and_growing_with_amplification(real_frames) -> None:
    x = _crops(real_frames)

    def term(model: nn.Module) -> float:
        with torch.no_grad():
            return float(temporal_instability(model, x, model(x), torch.Generator().manual_seed(0)))

    identity = EncoderDecoder(EDConfig())  # bypass with a zeroed last conv: ED(x) = x
    assert term(identity) < 1e-12
    weak, strong = term(_Sharpen(0.5)), term(_Sharpen(2.0))
    assert 1e-6 < weak < strong / 4


def test_training_with_the_term_logs_it(small_val_folder: Path, tmp_path: Path) -> None:
    """Training with the term logs its mean; without it the column stays empty."""
    base = dict(data=str(small_val_folder), crop=48, batch_size=4, lambda_tv=0.0, progress=False,
                checkpoint_every=0, threads=2, max_steps=5, epochs=10, lr=3e-3)
    out = tmp_path / "t.pt"
    train(TrainConfig(out=str(out), lambda_temporal=500.0, **base))
    rows = list(csv.DictReader(open(out.with_suffix(".csv"))))
    assert all(float(r["train_temporal"]) > 0 for r in rows)  # 3 steps, then 2 (one row per epoch and at the stop)
    plain = tmp_path / "p.pt"
    train(TrainConfig(out=str(plain), **base))
    assert list(csv.DictReader(open(plain.with_suffix(".csv"))))[-1]["train_temporal"] == ""


def test_its_gradient_makes_an_unstable_ed_stable(real_frames) -> None:
    torch.manual_seed(0)
    x = _crops(real_frames)
    model = EncoderDecoder(EDConfig())
    nn.init.normal_(model.out.weight, std=0.3)  # a residual that reacts strongly to its input

    def term(seed: int) -> torch.Tensor:
        return temporal_instability(model, x, model(x), torch.Generator().manual_seed(seed))

    with torch.no_grad():
        before = float(term(99))
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    for step in range(15):
        optimizer.zero_grad()
        term(step).backward()
        optimizer.step()
    with torch.no_grad():
        assert float(term(99)) < before / 3
