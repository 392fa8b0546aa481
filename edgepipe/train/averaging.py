"""An exponential moving average of the ED's weights (`edgepipe train --ema DECAY`).

A run that stops on a time budget keeps whatever its last step left, and with a constant learning rate the
last steps scatter the weights around where the run was heading. Models chosen by BD-rate on a few hundred
hold-out images then differ partly by that scatter. The average of the recent weights sits nearer the
middle; it is what the checkpoint ships (`state_dict`), while the raw weights travel beside it
(`train_state_dict`) so `--resume` continues the same run.
"""
from __future__ import annotations

from pathlib import Path

import torch

from edgepipe.core.errors import EdgepipeError
from edgepipe.models.ed import CHECKPOINT_FORMAT, CHECKPOINT_VERSION, read_checkpoint


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


def average_checkpoints(paths: list[str]) -> dict:
    """One checkpoint whose weights are the mean of several runs' (a "model soup", Wortsman et al. 2022).

    Runs fine-tuned from the same start with different seeds land in one basin, so their mean is a model too,
    with less of any one run's noise (in sweep 9 it scored near its members' mean, not above them); runs from
    different starts do not average into anything useful, so the caller must pass siblings. Every input must
    have the same architecture. The result carries no optimizer or raw weights, so it can be evaluated,
    exported and used as `--init`, not resumed.
    """
    if len(paths) < 2:
        raise EdgepipeError("averaging needs at least two checkpoints")
    ckpts = [read_checkpoint(p) for p in paths]
    first = ckpts[0]
    for path, ckpt in zip(paths[1:], ckpts[1:]):
        if ckpt["config"] != first["config"]:
            raise EdgepipeError(f"{path} has another ED architecture than {paths[0]}: cannot average them")
        if ckpt["state_dict"].keys() != first["state_dict"].keys():
            raise EdgepipeError(f"{path} has other weight names than {paths[0]}: cannot average them")
    state = {}
    for k, v in first["state_dict"].items():
        if v.is_floating_point():
            state[k] = torch.stack([c["state_dict"][k].float() for c in ckpts]).mean(0).to(v.dtype)
        else:  # integer buffers (counters) are not weights: keep the first run's
            state[k] = v.clone()
    scales: dict[str, list[float]] = {}
    for c in ckpts:
        for codec, s in c.get("rate_scale", {}).items():
            scales.setdefault(codec, []).append(float(s))
    return {
        "format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, "config": first["config"],
        "state_dict": state, "args": first.get("args", {}),
        "step": sum(int(c.get("step") or 0) for c in ckpts), "elapsed": sum(float(c.get("elapsed") or 0) for c in ckpts),
        "device": first.get("device", "cpu"), "done": True,
        "rate_scale": {codec: sum(v) / len(v) for codec, v in scales.items()},
        "averaged_from": [str(p) for p in paths],
        # what each run was, so a card can give every command that reproduces the average
        "members": [{"name": Path(p).stem, "args": c.get("args", {}), "step": c.get("step"),
                     "elapsed": c.get("elapsed"), "device": c.get("device", "cpu")} for p, c in zip(paths, ckpts)],
    }
