"""The encoder-decoder (ED) pre-transform and its checkpoint format.

Layout (widths c1, c2, c3 = 16, 32, 64 by default; H, W any size):

    x (3, H, W) -> stem 3x3 -> c1 @1    -> down 3x3/2 -> c2 @1/2 -> down 3x3/2 -> c3 @1/4
                -> n_blocks x [3x3, ReLU, 3x3]                                   (body @1/4)
                -> 1x1 + pixel-shuffle -> c2 @1/2 -> 1x1 + pixel-shuffle -> c1 @1 -> out 3x3 -> 3

`bypass=True` adds the structures of the paper, in the spirit of ResNet: identity shortcuts around each
body block, additive encoder->decoder skips at 1/2 and full resolution (local detail passes through), and
a long skip so the net predicts a residual: y = clamp(x + r). The last conv is zero-initialised, so a
fresh bypass model is the identity. `bypass=False` is the plain encoder-decoder of Palacio et al.
(CVPR 2018): the same convolutions without any shortcut, so the decoder has to rebuild the image itself;
its last conv starts with a 0.5 bias (mid-grey) and the output is clamp(r).

Decoding upsamples with a 1x1 conv + pixel-shuffle rather than transposed convs: as good for this budget,
far cheaper, and it maps 1:1 onto TensorRT/ONNX DepthToSpace. The output is clamped to [0, 1] because a real
encoder follows. Sizes that are not a multiple of 4 (odd ones included) are zero-padded by the strided
convolutions and cropped back after each upsampling, so the output always has the input's H x W.
"""
from __future__ import annotations

import logging
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from edgepipe.core.errors import EdgepipeError
from edgepipe.core.files import atomic_path

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "edgepipe-ed"
CHECKPOINT_VERSION = 1


@dataclass(frozen=True)
class EDConfig:
    bypass: bool = True
    widths: tuple[int, int, int] = (16, 32, 64)
    n_blocks: int = 1
    stem_stride: int = 1  # 2: the cheap variant works at half resolution from the first conv on (~1/4 FLOPs)
    context: bool = False  # a branch down to 1/16 widens what each output pixel sees from ~27 px to ~110 px

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["widths"] = list(self.widths)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "EDConfig":
        unknown = set(d) - {f for f in cls.__dataclass_fields__}
        if unknown:
            raise EdgepipeError(f"unknown ED config keys {sorted(unknown)}")
        d = dict(d)
        if "widths" in d:
            d["widths"] = tuple(int(w) for w in d["widths"])
        return cls(**d)


def _conv(cin: int, cout: int, k: int = 3, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, k, stride, padding=k // 2)


class _Block(nn.Module):
    """Two 3x3 convs; with `residual` the ResNet identity shortcut is added."""

    def __init__(self, c: int, residual: bool):
        super().__init__()
        self.conv1, self.conv2 = _conv(c, c), _conv(c, c)
        self.residual = residual
        if residual:  # start each residual branch small so the deep path does not swamp the shortcut
            nn.init.zeros_(self.conv2.weight)
            nn.init.zeros_(self.conv2.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv2(F.relu(self.conv1(x)))
        return F.relu(x + y) if self.residual else F.relu(y)


class _Context(nn.Module):
    """Two more strided convs (1/4 -> 1/16), a residual block there, and a zero-initialised 1x1 whose output is
    upsampled (bilinear) and added to the body's: each output pixel then sees ~110 px around it instead of ~27, room
    to tell an object from the background a recognition-aware ED may simplify. Zero at start, so adding the branch to a
    trained model leaves its output unchanged until training moves it."""

    def __init__(self, c: int):
        super().__init__()
        self.down1, self.down2 = _conv(c, c, stride=2), _conv(c, c, stride=2)
        self.block = _Block(c, residual=True)
        self.back = nn.Conv2d(c, c, 1)
        nn.init.zeros_(self.back.weight)
        nn.init.zeros_(self.back.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = self.block(F.relu(self.down2(F.relu(self.down1(x)))))
        # A fixed x4 (a constant Resize scale, so the engine's alignment counts it) cropped like the other levels.
        up = F.interpolate(self.back(c), scale_factor=4.0, mode="bilinear", align_corners=False)
        return up[..., : x.shape[-2], : x.shape[-1]]


class EncoderDecoder(nn.Module):
    """RGB float NCHW in [0, 1] -> RGB float NCHW in [0, 1], same size."""

    def __init__(self, config: EDConfig = EDConfig()):
        super().__init__()
        self.config = config
        c1, c2, c3 = config.widths
        if config.stem_stride not in (1, 2):
            raise ValueError(f"stem_stride must be 1 or 2, got {config.stem_stride}")
        self.stem = _conv(3, c1, stride=config.stem_stride)
        self.down1 = _conv(c1, c2, stride=2)
        self.down2 = _conv(c2, c3, stride=2)
        self.body = nn.Sequential(*[_Block(c3, config.bypass) for _ in range(config.n_blocks)])
        self.context = _Context(c3) if config.context else None
        self.up2 = nn.Conv2d(c3, c2 * 4, 1)
        self.up1 = nn.Conv2d(c2, c1 * 4, 1)
        # At stem stride 2 the last conv predicts each 2x2 block of output pixels from one half-resolution
        # position (3 x 4 channels, then pixel-shuffle), the mirror image of the strided stem.
        self.out = _conv(c1, 3 * config.stem_stride ** 2)
        if config.bypass:  # identity at start: y = clamp(x + 0)
            nn.init.zeros_(self.out.weight)
            nn.init.zeros_(self.out.bias)
        else:  # mid-grey at start, so the clamp passes gradients everywhere
            nn.init.constant_(self.out.bias, 0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Any H x W: the strided convs round sizes up (zero padding), and each pixel-shuffle output is
        # cropped to the size of the encoder level it returns to. The crops are unconditional slices, so a
        # traced ONNX export keeps them as shape-driven Slice ops and stays valid for every H and W.
        bypass = self.config.bypass
        s = F.relu(self.stem(x))
        d1 = F.relu(self.down1(s))
        d2 = F.relu(self.down2(d1))
        b = self.body(d2)
        if self.context is not None:
            b = b + self.context(d2)
        u2 = F.relu(F.pixel_shuffle(self.up2(b), 2))[..., : d1.shape[-2], : d1.shape[-1]]
        if bypass:
            u2 = u2 + d1
        u1 = F.relu(F.pixel_shuffle(self.up1(u2), 2))[..., : s.shape[-2], : s.shape[-1]]
        if bypass:
            u1 = u1 + s
        r = self.out(u1)
        if self.config.stem_stride > 1:
            r = F.pixel_shuffle(r, self.config.stem_stride)[..., : x.shape[-2], : x.shape[-1]]
        y = x + r if bypass else r
        return y.clamp(0.0, 1.0)


def flops_per_pixel(model: nn.Module, height: int = 224, width: int = 224) -> float:
    """FLOPs per input pixel, counting 2 x MACs of every conv (bias, ReLU, adds, clamp ignored: < 1 %).

    Measured with forward hooks on a real forward pass, so it follows the architecture as built."""
    macs = 0

    def hook(module: nn.Conv2d, inputs, output) -> None:
        nonlocal macs
        k = module.kernel_size[0] * module.kernel_size[1] * (module.in_channels // module.groups)
        macs += output.numel() * k

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, nn.Conv2d)]
    try:
        with torch.no_grad():
            model(torch.zeros(1, 3, height, width))
    finally:
        for handle in handles:
            handle.remove()
    return 2.0 * macs / (height * width)


# --- checkpoints -------------------------------------------------------------------------------

def save_checkpoint(path: str | Path, model: EncoderDecoder, **extra: Any) -> None:
    """Write a checkpoint atomically (tmp file + os.replace): a crash never leaves half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "config": model.config.to_dict(),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        **extra,
    }
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def _unreadable_reason(path: Path, exc: Exception) -> str:
    """torch.load's error in a few words (its own runs to paragraphs of advice about weights_only)."""
    refused = re.search(r"Unsupported global: GLOBAL (\S+)", str(exc))
    if refused:
        return (f"it holds pickled Python objects such as {refused.group(1)}, which edgepipe does not unpickle; "
                "edgepipe train saves tensors and plain values only")
    if path.stat().st_size == 0:
        return "the file is empty"
    return "not a PyTorch file, or a damaged one"


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """The checkpoint dict, validated: format tag and version. EdgepipeError (one line) otherwise."""
    path = Path(path)
    if not path.is_file():
        raise EdgepipeError(f"checkpoint not found: {path}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle/zip errors of many types all mean "not a checkpoint"
        raise EdgepipeError(f"{path} is not an edgepipe ED checkpoint (not a readable checkpoint: "
                            f"{_unreadable_reason(path, exc)})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise EdgepipeError(f"{path} is not an edgepipe ED checkpoint (no '{CHECKPOINT_FORMAT}' format tag)")
    if ckpt.get("version") != CHECKPOINT_VERSION:
        raise EdgepipeError(
            f"{path} is an ED checkpoint of format version {ckpt.get('version')}; "
            f"this edgepipe reads version {CHECKPOINT_VERSION} - retrain or use the matching edgepipe"
        )
    return ckpt


def model_from_checkpoint(ckpt: dict[str, Any], path: str | Path = "checkpoint") -> EncoderDecoder:
    try:
        config = EDConfig.from_dict(ckpt["config"])
        model = EncoderDecoder(config)
    except (KeyError, TypeError, ValueError) as exc:
        raise EdgepipeError(f"{path}: bad ED config in checkpoint ({exc})") from None
    try:
        model.load_state_dict(ckpt["state_dict"], strict=True)
    except (KeyError, RuntimeError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise EdgepipeError(f"{path}: weights do not match the ED architecture in its config: {first[:160]}") from None
    return model


def load_ed(path: str | Path) -> EncoderDecoder:
    """A trained ED from an `edgepipe train` checkpoint, in eval mode."""
    model = model_from_checkpoint(read_checkpoint(path), path)
    return model.eval()
