"""The recognizer-guided pre-transform: optimise each picture for the codec setting it is about to be coded at.

A trained ED is one network for every picture and every QP, and it sees ~27 px around each pixel. This
pre-transform instead asks the recognizer itself, per picture: a change d of the picture is optimised (Adam,
`steps` steps) so that the recognizer's answer on the *decoded* picture is as close as it can be to its answer
on the original (KL at temperature 1, as `edgepipe train --distill 1`). The forward pass is the real codec at
the setting the picture will be coded at (edgepipe/media/codecs/round_trip.py), the backward pass the codec's
differentiable model (model.py, `straight_through`). After each step d is scaled back to a fidelity budget (the
picture's PSNR against the original at least `psnr_floor_db`), so the stream stays watchable; of the iterates
(the original is the first), each picture keeps the one whose coded answer was closest to the original's.

No labels and no trained weights: nothing in it was chosen on any image set, and nothing pulls the answers
towards a data set's classes. What it needs is the recognizer the server runs (its gains are for that
recognizer) and the codec setting (the capture sets its QP; the evaluation codes at known points). Its cost is
`steps` + 1 codings and recognizer passes (forward and backward) per picture (docs/guided.md)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edgepipe.core.errors import EdgepipeError

# Codecs with a differentiable model (media/codecs/model.py); the rate-driven jpeg2000 has none.
GUIDED_CODECS = ("hevc", "jpeg", "jpeg2000-db")
KIND = "guided"
VERSION = 1  # bump when the algorithm changes what it outputs (the evaluation's cache keys on it)


@dataclass(frozen=True)
class GuidanceSettings:
    steps: int = 8
    psnr_floor_db: float = 30.0
    lr: float = 2.0 / 255.0  # Adam's step on the 0..1 scale: about 2 grey levels a step at first
    batch: int = 16

    @classmethod
    def parse(cls, spec: str) -> "GuidanceSettings":
        """`guided`, `guided:STEPS` or `guided:STEPS@PSNR_DB` (e.g. guided:4@30)."""
        kind, _, arg = spec.partition(":")
        if kind != KIND:
            raise EdgepipeError(f"not a guided pre-transform: {spec!r}")
        if not arg:
            return cls()
        steps_text, _, psnr_text = arg.partition("@")
        try:
            steps = int(steps_text)
            psnr = float(psnr_text) if psnr_text else cls.psnr_floor_db
        except ValueError:
            raise EdgepipeError(f"{spec!r}: expected guided:STEPS or guided:STEPS@PSNR_DB, e.g. guided:4@30") from None
        if not 1 <= steps <= 200:
            raise EdgepipeError(f"{spec!r}: STEPS must be 1..200, got {steps}")
        if not 10.0 <= psnr <= 60.0:
            raise EdgepipeError(f"{spec!r}: the PSNR floor must be 10..60 dB, got {psnr:g}")
        return cls(steps=steps, psnr_floor_db=psnr)

    @property
    def model_id(self) -> str:
        return f"guided-v{VERSION}-s{self.steps}-p{self.psnr_floor_db:g}-lr{self.lr:.6g}-b{self.batch}"


def is_guided(spec: str) -> bool:
    return spec == KIND or spec.startswith(KIND + ":")


def project_to_psnr(d, floor_db: float):
    """Scale each picture's change d (N, 3, H, W, on 0..1) down where its MSE exceeds the PSNR floor's."""
    import torch

    budget = 10.0 ** (-floor_db / 10.0)
    mse = d.pow(2).mean(dim=(1, 2, 3))
    scale = torch.where(mse > budget, (budget / mse.clamp_min(1e-12)).sqrt(), torch.ones_like(mse))
    return d * scale[:, None, None, None]


class GuidedPreTransform:
    """`run(frames, codec, setting)`: uint8 RGB (N, H, W, 3) in, the guided pictures of the same shape out."""

    def __init__(self, settings: GuidanceSettings, recognizer: str = "efficientnet-lite0",
                 weights: str | None = None, threads: int | None = None):
        import torch

        from edgepipe.media.codecs.round_trip import CodecRoundTrip
        from edgepipe.recognition.registry import build_recognizer

        self.settings = settings
        if threads:
            torch.set_num_threads(threads)
        self.model = build_recognizer(recognizer, weights).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.codec = CodecRoundTrip(workers=threads or None)

    def run(self, frames: np.ndarray, codec: str, setting: int) -> np.ndarray:
        if codec not in GUIDED_CODECS:
            raise EdgepipeError(f"the guided pre-transform has no model of {codec!r}; it guides {', '.join(GUIDED_CODECS)}")
        if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
            raise EdgepipeError(f"guided: expected uint8 RGB frames (N, H, W, 3), got {frames.dtype} {frames.shape}")
        b = self.settings.batch
        return np.concatenate([self._batch(frames[i:i + b], codec, setting) for i in range(0, len(frames), b)])

    def _batch(self, frames: np.ndarray, codec: str, setting: int) -> np.ndarray:
        import torch
        from torch.nn import functional as F

        from edgepipe.media.codecs.model import codec_proxy, straight_through

        s = self.settings
        x = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).float() / 255.0
        with torch.no_grad():
            target = self.model(x).log_softmax(1)
        d = torch.zeros_like(x, requires_grad=True)
        opt = torch.optim.Adam([d], lr=s.lr)
        best = frames.copy()
        best_kl = np.full(len(frames), np.inf)
        for step in range(s.steps + 1):
            y = (x + d).clamp(0.0, 1.0)
            y8 = (y.detach() * 255.0).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()  # what gets coded
            decoded, _ = self.codec(y8, codec, setting)
            dec = torch.from_numpy(decoded).permute(0, 3, 1, 2).float() / 255.0
            logits = self.model(straight_through(y, dec, codec_proxy(y, codec, setting)))
            per_image = F.kl_div(logits.log_softmax(1), target, reduction="none", log_target=True).sum(1)
            kl = per_image.detach().numpy()
            better = kl < best_kl  # the choice among iterates sees the real coded answer, never a label
            best[better] = y8[better]
            best_kl = np.where(better, kl, best_kl)
            if step == s.steps:
                break
            opt.zero_grad()
            per_image.mean().backward()
            opt.step()
            with torch.no_grad():
                d.copy_(project_to_psnr((x + d).clamp(0.0, 1.0) - x, s.psnr_floor_db))
        return best

    def close(self) -> None:
        self.codec.close()
