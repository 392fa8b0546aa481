"""Averaging sibling checkpoints (a model soup): the mean of the weights, refused across architectures."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from edgepipe.core.errors import EdgepipeError
from edgepipe.models.ed import EDConfig, EncoderDecoder, load_ed, save_checkpoint
from edgepipe.train.averaging import average_checkpoints


def _saved(tmp_path: Path, name: str, seed: int, config: EDConfig | None = None, **extra) -> str:
    torch.manual_seed(seed)
    model = EncoderDecoder(config or EDConfig())
    with torch.no_grad():
        for p in model.parameters():
            p.normal_()
    path = tmp_path / f"{name}.pt"
    save_checkpoint(path, model, **extra)
    return str(path)


def test_the_average_is_the_mean_of_the_weights_and_loads_as_a_model(tmp_path: Path) -> None:
    a = _saved(tmp_path, "a", 1, rate_scale={"hevc": 1.0}, step=100, args={"seed": 1})
    b = _saved(tmp_path, "b", 2, rate_scale={"hevc": 3.0}, step=50, args={"seed": 2})
    soup = average_checkpoints([a, b])
    wa, wb = load_ed(a).state_dict(), load_ed(b).state_dict()
    for k, v in soup["state_dict"].items():
        if v.is_floating_point():
            torch.testing.assert_close(v, (wa[k] + wb[k]) / 2)
    assert soup["rate_scale"] == {"hevc": 2.0}
    assert soup["step"] == 150 and soup["args"] == {"seed": 1}
    assert soup["averaged_from"] == [a, b]
    assert [(m["name"], m["args"], m["step"]) for m in soup["members"]] == [("a", {"seed": 1}, 100), ("b", {"seed": 2}, 50)]
    out = tmp_path / "soup.pt"
    torch.save(soup, out)
    x = torch.rand(1, 3, 32, 32)
    assert load_ed(out)(x).shape == x.shape  # a checkpoint every reader takes


def test_other_architectures_and_single_inputs_are_refused(tmp_path: Path) -> None:
    a = _saved(tmp_path, "a", 1)
    fast = _saved(tmp_path, "fast", 2, EDConfig(stem_stride=2, widths=(16, 32, 48)))
    with pytest.raises(EdgepipeError, match="another ED architecture"):
        average_checkpoints([a, fast])
    with pytest.raises(EdgepipeError, match="at least two"):
        average_checkpoints([a])
    with pytest.raises(EdgepipeError, match="not found"):
        average_checkpoints([a, str(tmp_path / "missing.pt")])
