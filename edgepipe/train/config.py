"""What `edgepipe train` is asked to do: TrainConfig, one field per setting, each carrying its flag and help.

The command's options are made from these fields (commands/train.py), the model card rebuilds the command
line from them (card.py), and the loop reads them (loop.py): a new setting is one field here. No torch: the
command's --help and its checks run without it.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from edgepipe.core.errors import EdgepipeError
from edgepipe.core.options import flag
from edgepipe.recognition import DEFAULT_RECOGNIZER, RECOGNIZERS
from edgepipe.train.codec_ranges import parse_ranges

TV_KINDS = ("anisotropic", "isotropic")
BACKWARD = ("dct", "identity")  # gradient through the codec: soft-quantisation DCT proxy, or identity
FRAMES_VIEWS = ("native", "monitor")  # the scale the recognizer sees camera crops at (frames.py)
# The softmax of the label CE: over the recognizer's 1000 classes, or over the training data's classes only, so
# the ED gains nothing by moving the recognizer's answers onto those classes (docs/training.md, "What top-1 over
# 1000 classes rewards"), only by telling them apart.
LABEL_SCOPES = ("all", "dataset")

# Arguments that define *what* is trained; a resumed run must not change them.
IDENTITY_ARGS = ("recognizer", "lambda_tv", "tv_kind", "bypass", "crop", "batch_size", "seed", "widths",
                 "n_blocks", "stem_stride", "context", "recon_warmup", "codec", "backward", "lambda_rate", "lambda_mse", "distill", "label_scope",
                 "clean_weight", "rescale_min", "rescale_max", "holdout", "init", "lambda_temporal", "ema",
                 "frames", "lambda_frames", "frames_codec", "frames_view",
                 "frames_rescale_min")


def setting(default: Any, *name: str, **spec: Any) -> Any:
    return field(default=default, metadata=flag(*name, **spec))


@dataclass
class TrainConfig:
    data: str = field(metadata=flag(path=True, help="Training images, ImageNet layout ROOT/<synset>/*."))
    out: str = field(metadata=flag(path=True, help="Checkpoint to write (rewritten atomically)."))
    recognizer: str = setting(DEFAULT_RECOGNIZER, choices=RECOGNIZERS, help="Frozen recognizer (vgg16 needs --weights).")
    weights: str | None = setting(None, path=True, help="Recognizer weight file (vgg16 needs one).")
    lambda_tv: float = setting(1.0, help="Weight of the per-pixel anisotropic TV term.")
    tv_kind: str = setting("anisotropic", "--tv", choices=TV_KINDS, help="Total variation: L1 of each difference, "
                                                                         "or the L2 norm of the gradient.")
    bypass: bool = setting(True, "--no-bypass", invert=True,
                           help="Plain encoder-decoder without skip/residual connections.")
    widths: tuple[int, int, int] = setting((16, 32, 64), type=str, help="ED channels at its three scales.")
    n_blocks: int = setting(1, "--blocks", help="Residual blocks in the body.")
    stem_stride: int = setting(1, choices=(1, 2), help="2: work at half resolution from the first conv on "
                                                       "(ours-fast, ~1/4 of the FLOPs).")
    context: bool = setting(False, help="Add a branch down to 1/16 resolution, so each output pixel sees ~110 px "
                                        "instead of ~27 (+2 kFLOP/pixel). With --init it starts at zero: the "
                                        "fine-tune starts from the init model's exact output.")
    epochs: int = setting(1, help="Passes over the training images.")
    crop: int = setting(128, help="Random crop side (native pixel scale).")
    batch_size: int = setting(16, help="Crops per step.")
    lr: float = setting(1e-3, help="Adam learning rate.")
    recon_warmup: int = setting(0, help="First steps train MSE(ED(x), x) only (Palacio et al. pre-train the AE "
                                        "to reconstruct).")
    finetune_lr: float | None = setting(None, help="Learning rate once the reconstruction warm-up ends "
                                                   "(default: --lr).")
    codec: str | None = setting(None, metavar="RANGES", help="Real codec in the loop: comma list of CODEC:LOW-HIGH, "
                                "taking turns per step, e.g. hevc:31-47,jpeg:5-40,jpeg2000-db:23-33 (HEVC intra QP, JPEG "
                                "quality, JPEG 2000 target PSNR in dB). "
                                "The loss then sees the decoded output.")
    codec_workers: int | None = setting(None, help="Threads coding crops (default: cores, at most 8).")
    codec_preset: str = setting("medium", help="libx265 preset in the loop.")
    backward: str = setting("dct", choices=BACKWARD, help="Gradient through the codec: a differentiable 8x8-DCT "
                                                          "soft-quantisation model, or identity.")
    clean_weight: float = setting(0.5, help="With --codec: weight of the task loss on the uncoded ED output "
                                            "(the coded one weighs 1).")
    lambda_rate: float = setting(0.0, help="Weight of the block-DCT rate term, calibrated to measured bits per "
                                           "pixel (needs --codec).")
    lambda_mse: float = setting(0.0, help="Fidelity anchor: weight of MSE(ED(x), x), keeps the stream watchable.")
    lambda_temporal: float = setting(0.0, help="Weight of the temporal-stability term: the ED's output must change "
                                               "between a crop and a moved, noisier copy of it only as its input "
                                               "does (so P-frames stay cheap).")
    frames: str | None = setting(None, metavar="CLIP,CLIP", help="Camera footage (video files) for a label-free "
                                 "term: the recognizer's answer on the decoded ED output of these frames must stay "
                                 "what it is on the frames (the first 70 % of each clip; the rest is left for "
                                 "judging). Needs --lambda-frames.")
    lambda_frames: float = setting(0.0, help="Weight of that term (docs/training.md).")
    frames_codec: str | None = setting(None, metavar="RANGES", help="Codec ranges the camera frames go through, "
                                       "e.g. hevc:31-47, the pipeline's own codec (default: --codec's, taking "
                                       "the same turns).")
    frames_view: str = setting("native", choices=FRAMES_VIEWS, help="Scale the recognizer sees the camera crops at: "
                               "native pixels, or monitor: the ED and the codec work on native pixels and the "
                               "crop is shrunk as the monitor's centre-crop view shrinks the whole frame (a "
                               "768x432 clip by 224/432) before the recognizer reads it.")
    frames_rescale_min: float = setting(1.0, help="Zoom the camera crops out by a random factor in "
                                        "[FRAMES_RESCALE_MIN, 1] (cut larger, area-filtered down): the two "
                                        "clips' scenes at more scales, so the term is not learnt by heart.")
    distill: float | None = setting(None, metavar="T", help="Distil at temperature T: match the recognizer's "
                                                            "output on the original image, no labels.")
    label_scope: str = setting("all", choices=LABEL_SCOPES, help="The label CE's softmax: over all the "
                               "recognizer's classes, or over the classes of --data only (moving answers onto "
                               "them then earns nothing; eval --score top1-among-labels scores the same way).")
    rescale_min: float = setting(1.0, help="Area-downscale each image by a random factor in [RESCALE_MIN, "
                                           "RESCALE_MAX] before cropping (washes out the JPEG grid of the "
                                           "training images).")
    rescale_max: float = setting(1.0, help="Upper end of that factor: under 1, no crop keeps the JPEG's own grid "
                                           "(needs --rescale-min below 1).")
    holdout: float = setting(0.0, help="Fraction of --data left out for choosing models (write it with "
                                       "edgepipe holdout).")
    ema: float = setting(0.0, metavar="DECAY", help="Ship an exponential moving average of the weights (decay "
                                                    "per step, e.g. 0.999) instead of the last step's: it "
                                                    "averages out the scatter of the final steps. 0: off.")
    init: str | None = setting(None, path=True, help="Fine-tune: start from this checkpoint's weights and "
                                                     "architecture (new optimiser, new run).")
    max_minutes: float | None = setting(None, help="Wall-clock training budget (summed over resumes).")
    max_steps: int | None = setting(None, help="Stop after this many steps in total.")
    val_data: str | None = setting(None, path=True, help="Labelled images validated after each epoch.")
    val_limit: int = setting(200, help="Validation images (top-1).")
    bpp_limit: int = setting(48, help="Of those, how many are HEVC-encoded.")
    qp: int = setting(32, help="HEVC intra QP for the bits-per-pixel check.")
    seed: int = setting(0, help="Seed of the data order, crops and codec settings.")
    resume: bool = setting(False, help="Continue the run saved in --out.")
    log: str | None = setting(None, path=True, help="CSV log (default: OUT with .csv).")
    checkpoint_every: int = setting(200, help="Steps between checkpoints.")
    device: str | None = setting(None, help="cpu or cuda (default: cuda when available).")
    threads: int | None = setting(None, help="CPU threads for PyTorch and ONNX Runtime.")
    progress: bool = setting(True, "--no-progress", invert=True, help="No progress bar (for logs).")

    def __post_init__(self) -> None:
        self.widths = _widths(self.widths)  # type: ignore[assignment]
        if self.tv_kind not in TV_KINDS:
            raise EdgepipeError(f"unknown TV kind {self.tv_kind!r}; choose one of {', '.join(TV_KINDS)}")
        if self.lambda_tv < 0:
            raise EdgepipeError(f"--lambda-tv must be >= 0, got {self.lambda_tv}")
        if not 0 <= self.qp <= 51:
            raise EdgepipeError(f"--qp must be in 0..51, got {self.qp}")
        if self.stem_stride not in (1, 2):
            raise EdgepipeError(f"--stem-stride must be 1 or 2, got {self.stem_stride}")
        if self.epochs < 1:
            raise EdgepipeError(f"--epochs must be >= 1, got {self.epochs}")
        for name in ("lambda_rate", "lambda_mse", "clean_weight", "lambda_temporal", "lambda_frames"):
            if getattr(self, name) < 0:
                raise EdgepipeError(f"--{name.replace('_', '-')} must be >= 0, got {getattr(self, name)}")
        if self.distill is not None and not self.distill > 0:
            raise EdgepipeError(f"--distill (a temperature) must be > 0, got {self.distill}")
        if self.label_scope not in LABEL_SCOPES:
            raise EdgepipeError(f"--label-scope must be one of {', '.join(LABEL_SCOPES)}, got {self.label_scope!r}")
        if self.label_scope != "all" and self.distill is not None:
            raise EdgepipeError("--label-scope shapes the label CE, and --distill replaces it: use one of them")
        if not 0 <= self.ema < 1:
            raise EdgepipeError(f"--ema (a decay per step) must be in [0, 1), got {self.ema}")
        if not 0 <= self.holdout < 1:
            raise EdgepipeError(f"--holdout must be in [0, 1), got {self.holdout}")
        if self.backward not in BACKWARD:
            raise EdgepipeError(f"--backward must be one of {', '.join(BACKWARD)}, got {self.backward!r}")
        if bool(self.frames) != bool(self.lambda_frames):
            raise EdgepipeError("--frames and --lambda-frames go together: the clips, and the weight of their term")
        if self.frames_view not in FRAMES_VIEWS:
            raise EdgepipeError(f"--frames-view must be one of {', '.join(FRAMES_VIEWS)}, got {self.frames_view!r}")
        if self.frames_view != "native" and not self.frames:
            raise EdgepipeError("--frames-view needs --frames: it says how the camera frames are seen")
        if self.frames_rescale_min != 1.0 and not self.frames:  # its range: FramePool, as --rescale-min's is CropBatches'
            raise EdgepipeError("--frames-rescale-min needs --frames: it zooms the camera crops")
        if self.frames_codec is not None:
            if not self.frames:
                raise EdgepipeError("--frames-codec needs --frames: it says how the camera frames are coded")
            if not parse_ranges(self.codec):
                raise EdgepipeError("--frames-codec needs --codec: the camera frames share its coder")
            if not parse_ranges(self.frames_codec):
                raise EdgepipeError("--frames-codec is empty: give ranges like hevc:31-47")
        if self.lambda_rate and not parse_ranges(self.codec):
            raise EdgepipeError("--lambda-rate needs --codec: the rate term is calibrated to the bytes it measures")

    def args(self) -> dict[str, Any]:
        d = asdict(self)
        d["widths"] = list(self.widths)
        return d


def _widths(value) -> tuple[int, ...]:
    """Three positive channel counts, from a tuple or the flag's "16,32,64"."""
    try:
        widths = tuple(int(w) for w in (value.split(",") if isinstance(value, str) else value))
    except ValueError:
        raise EdgepipeError(f"--widths must be three integers like 16,32,64, got {value!r}") from None
    if len(widths) != 3 or min(widths) < 1:
        raise EdgepipeError(f"--widths needs three positive channel counts, got {widths}")
    return widths
