"""An exponential moving average of the ED's weights (`edgepipe train --ema DECAY`).

A run that stops on a time budget keeps whatever its last step left, and with a constant learning rate the
last steps scatter the weights around where the run was heading. Models chosen by BD-rate on a few hundred
hold-out images then differ partly by that scatter. The average of the recent weights sits nearer the
middle; it is what the checkpoint ships (`state_dict`), while the raw weights travel beside it
(`train_state_dict`) so `--resume` continues the same run.
"""
from __future__ import annotations

import torch


class WeightAverage:
    """avg <- d * avg + (1 - d) * w after each step, with d warming up as min(decay, (1 + n) / (10 + n)).

    The warm-up keeps the start (the random or --init weights) from lingering: after n steps the first
    weights' share is small whatever the decay.
    """

    def __init__(self, model: torch.nn.Module, decay: float) -> None:
        if not 0 < decay < 1:
            raise ValueError(f"decay must be in (0, 1), got {decay}")
        self.decay = decay
        self.updates = 0
        self.params = {k: v.detach().clone().float() for k, v in model.state_dict().items()}

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        d = min(self.decay, (1 + self.updates) / (10 + self.updates))
        for k, v in model.state_dict().items():
            self.params[k].lerp_(v.detach().float(), 1.0 - d)
        self.updates += 1

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().cpu().clone() for k, v in self.params.items()}

    def load(self, params: dict[str, torch.Tensor], updates: int) -> None:
        for k, v in params.items():
            self.params[k].copy_(v)
        self.updates = updates

    def copy_into(self, model: torch.nn.Module) -> torch.nn.Module:
        model.load_state_dict(self.params)
        return model
