"""The training loop: ED -> frozen recognizer, loss = CE + lambda * TV, checkpoints, resume, validation log.

One checkpoint file (`out`) is rewritten atomically every `checkpoint_every` steps and at the end; it
holds the model, the optimizer, where in the data order the run is (epoch, batch), the time spent and the
validation history, so `--resume` continues the same run: same batches, same time budget, same log.
"""
from __future__ import annotations

import csv
import logging
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.nn import functional as F

from edgepipe.core.errors import EdgepipeError
from edgepipe.core.files import atomic_path
from edgepipe.engines.base import from_model_output, to_model_input
from edgepipe.models.ed import EDConfig, EncoderDecoder, model_from_checkpoint, read_checkpoint, save_checkpoint
from edgepipe.train.averaging import WeightAverage
from edgepipe.train.codec_loop import CodecRoundTrip, codec_proxy, parse_ranges, qstep, straight_through
from edgepipe.train.config import IDENTITY_ARGS, TrainConfig
from edgepipe.train.data import CropBatches, validation_set
from edgepipe.train.frames import FramePool, frames_divergence
from edgepipe.train.losses import RateCalibration, RecognitionAwareLoss, dct_rate, per_image_tv
from edgepipe.train.temporal import temporal_instability
from edgepipe.train.validate import Validator

log = logging.getLogger(__name__)

@dataclass
class _Running:
    """Means of the training metrics since the last validation (kept in the checkpoint for resume)."""

    n: int = 0
    loss: float = 0.0
    ce: float = 0.0
    tv: float = 0.0
    correct: int = 0
    images: int = 0
    coded: float = 0.0        # task loss on the decoded output (codec in the loop)
    correct_coded: int = 0
    rate: float = 0.0         # calibrated rate term, bpp
    bpp_real: float = 0.0     # measured bpp of the coded crops
    mse: float = 0.0
    n_coded: int = 0
    corr_rate: float = 0.0    # per-batch Pearson correlation of log proxy with log real bytes, across crops
    corr_tv: float = 0.0      # the same for per-crop TV
    n_corr: int = 0
    temporal: float = 0.0     # temporal-instability term (--lambda-temporal)
    n_temporal: int = 0
    frames: float = 0.0       # camera-frame divergence (--lambda-frames)
    n_frames: int = 0

    def add(self, loss: float, ce: float, tv: float, correct: int, images: int) -> None:
        self.n += 1
        self.loss += loss
        self.ce += ce
        self.tv += tv
        self.correct += correct
        self.images += images

    def add_coded(self, coded: float, correct: int, rate: float, bpp_real: float, mse: float,
                  corr_rate: float, corr_tv: float) -> None:
        self.n_coded += 1
        self.coded += coded
        self.correct_coded += correct
        self.rate += rate
        self.bpp_real += bpp_real
        self.mse += mse
        if np.isfinite(corr_rate) and np.isfinite(corr_tv):
            self.n_corr += 1
            self.corr_rate += corr_rate
            self.corr_tv += corr_tv

    def means(self) -> dict[str, float]:
        n = max(self.n, 1)
        out = {"train_loss": self.loss / n, "train_ce": self.ce / n, "train_tv": self.tv / n,
               "train_top1": self.correct / max(self.images, 1)}
        if self.n_coded:
            k = self.n_coded
            out.update(train_coded=self.coded / k, train_top1_coded=self.correct_coded / max(self.images, 1),
                       train_rate=self.rate / k, train_bpp_real=self.bpp_real / k, train_mse=self.mse / k)
        if self.n_temporal:
            out["train_temporal"] = self.temporal / self.n_temporal
        if self.n_frames:
            out["train_frames"] = self.frames / self.n_frames
        if self.n_corr:
            out.update(corr_rate_bits=self.corr_rate / self.n_corr, corr_tv_bits=self.corr_tv / self.n_corr)
        return out


LOG_FIELDS = ["epoch", "step", "minutes", "reason", "train_loss", "train_ce", "train_tv", "train_top1",
              "train_coded", "train_top1_coded", "train_rate", "train_bpp_real", "train_mse", "train_temporal", "train_frames",
              "corr_rate_bits", "corr_tv_bits", "top1_input", "top1_ed", "bpp_input", "bpp_ed", "bpp_saving",
              "tv_input", "tv_ed", "psnr_ed", "val_images", "bpp_images", "unreadable"]


def _number(v: float) -> str:
    """Five decimals, or three significant digits for small terms (the temporal term is ~1e-4)."""
    return f"{v:.5f}" if v == 0 or abs(v) >= 0.01 else f"{v:.3e}"


def _write_log(path: Path, history: list[dict[str, Any]]) -> None:
    """The whole CSV, rewritten atomically from the history (so a resumed run's log has no duplicates)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=LOG_FIELDS, extrasaction="ignore")
        writer.writeheader()
        for row in history:
            writer.writerow({k: (_number(v) if isinstance(v, float) else v) for k, v in row.items()})


def _steps_within_budget(total: int, step: int, elapsed: float, budget: float, bar: Any) -> int:
    """The step count the time budget allows at this session's pace (a --max-minutes run's progress-bar total)."""
    done_here = bar.n - bar.initial + 1
    pace = (time.time() - bar.start_t) / done_here  # tqdm clocks with time.time() if done_here > 0 else 0.0
    if pace <= 0:
        return total
    return int(min(total, step + max(0.0, budget - elapsed) / pace))


def _adopt_architecture(cfg: TrainConfig, init_ckpt: dict[str, Any], path: str) -> None:
    """A fine-tune keeps the architecture of the model it starts from; flags that ask for another one fail."""
    try:
        arch = EDConfig.from_dict(init_ckpt["config"])
    except (KeyError, TypeError, ValueError) as exc:
        raise EdgepipeError(f"--init {path}: bad ED config in checkpoint ({exc})") from None
    default = TrainConfig(data="", out="")
    for name, value in (("bypass", arch.bypass), ("widths", arch.widths), ("n_blocks", arch.n_blocks),
                        ("stem_stride", arch.stem_stride)):
        asked = getattr(cfg, name)
        if asked != getattr(default, name) and asked != value:
            raise EdgepipeError(f"--init {path} has {name}={value}, but {name}={asked} was asked for")
        setattr(cfg, name, value)
    # The context branch may be added (it starts at zero, so the model starts as its init), never taken away.
    if arch.context and not cfg.context:
        raise EdgepipeError(f"--init {path} has a context branch: pass --context to fine-tune it")


def _model_from_init(init_ckpt: dict[str, Any], cfg: TrainConfig) -> EncoderDecoder:
    """The --init model, with a fresh (zero-output) context branch when the fine-tune adds one."""
    model = model_from_checkpoint(init_ckpt, cfg.init)
    if cfg.context and not model.config.context:
        grown = EncoderDecoder(replace(model.config, context=True))
        missing, unexpected = grown.load_state_dict(model.state_dict(), strict=False)
        assert not unexpected and all(k.startswith("context.") for k in missing), (missing, unexpected)
        model = grown
    return model


def _check_resume(ckpt: dict[str, Any], cfg: TrainConfig, out: Path) -> None:
    # A setting newer than the checkpoint was trained at its default: asking for another value is another run
    # (resuming --ema on a run saved without one would also find no raw weights to go on from).
    old = {**TrainConfig(data="", out="").args(), **ckpt.get("args", {})}
    changed = [k for k in IDENTITY_ARGS if old[k] != cfg.args()[k]]
    if changed:
        pairs = ", ".join(f"{k}: {old[k]} -> {cfg.args()[k]}" for k in changed)
        raise EdgepipeError(f"cannot resume {out}: it was trained with other settings ({pairs})")


def train(cfg: TrainConfig) -> dict[str, Any]:
    """Train (or resume) an ED; returns the last validation row (or training means without --val-data)."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = cfg.device or ("cuda" if torch.cuda.is_available() else "cpu")
    out = Path(cfg.out)
    log_path = Path(cfg.log) if cfg.log else out.with_suffix(".csv")

    # Validate every input before any work, so bad input fails in one line and nothing is written.
    from edgepipe.recognition import Classifier, build_recognizer

    batches = CropBatches(cfg.data, cfg.crop, cfg.batch_size, cfg.seed, cfg.rescale_min, cfg.holdout,
                           cfg.rescale_max)
    camera = FramePool(tuple(p.strip() for p in cfg.frames.split(",")), cfg.crop, cfg.batch_size, cfg.seed,
                       view=cfg.frames_view, rescale_min=cfg.frames_rescale_min) if cfg.frames else None
    if cfg.val_data is not None:
        from edgepipe.core.datasets import list_labelled_images

        list_labelled_images(cfg.val_data)
    recognizer = build_recognizer(cfg.recognizer, cfg.weights)
    ckpt = None
    if cfg.resume:
        if not out.exists():
            raise EdgepipeError(f"nothing to resume: {out} does not exist")
        ckpt = read_checkpoint(out)
        if cfg.init is not None:  # a fine-tune took its architecture from --init, as the checkpoint it wrote has
            _adopt_architecture(cfg, ckpt, str(out))
        _check_resume(ckpt, cfg, out)
    elif out.exists():
        raise EdgepipeError(f"{out} exists: pass --resume to continue it, or choose another --out")

    init_ckpt = None
    if cfg.init is not None and ckpt is None:
        if not Path(cfg.init).is_file():
            raise EdgepipeError(f"--init {cfg.init}: no such checkpoint")
        init_ckpt = read_checkpoint(cfg.init)
        _adopt_architecture(cfg, init_ckpt, cfg.init)

    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)
    if ckpt is not None:
        model = model_from_checkpoint(ckpt, out)
    elif init_ckpt is not None:
        model = _model_from_init(init_ckpt, cfg)
    else:
        model = EncoderDecoder(EDConfig(bypass=cfg.bypass, widths=cfg.widths, n_blocks=cfg.n_blocks,
                                        stem_stride=cfg.stem_stride, context=cfg.context))
    model.to(device).train()
    averager = WeightAverage(model, cfg.ema) if cfg.ema else None
    if averager is not None and ckpt is not None:
        # The checkpoint ships the average as its state_dict; the raw weights go on training.
        averager.load(ckpt["state_dict"], ckpt.get("ema_updates", 0))
        model.load_state_dict(ckpt["train_state_dict"])
    shipped_model = EncoderDecoder(model.config).to(device).eval() if averager is not None else None

    def shipped() -> EncoderDecoder:
        """The weights a checkpoint ships and validation judges: the average with --ema, else the model."""
        return averager.copy_into(shipped_model) if averager is not None else model
    criterion = RecognitionAwareLoss(recognizer, cfg.lambda_tv, cfg.tv_kind, lambda_rate=cfg.lambda_rate,
                                     lambda_mse=cfg.lambda_mse, distill_temperature=cfg.distill,
                                     clean_weight=cfg.clean_weight,
                                     label_classes=(sorted({it.label for it in batches.items})
                                                    if cfg.label_scope == "dataset" else None)).to(device)
    ranges = parse_ranges(cfg.codec)
    codec = CodecLoop(ranges, CodecRoundTrip(cfg.codec_workers, cfg.codec_preset), RateCalibration(),
                      cfg.seed, cfg.backward) if ranges else None
    # The camera frames may take other ranges (e.g. HEVC alone, the codec they meet in the pipeline); they share
    # the coder and draw their settings from the same (seed, step).
    camera_codec = replace(codec, ranges=parse_ranges(cfg.frames_codec)) if cfg.frames_codec else codec
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    state: dict[str, Any] = {"epoch": 0, "batch": 0, "step": 0, "elapsed": 0.0, "history": [], "running": {},
                             "unreadable": []}
    if ckpt is not None:
        optimizer.load_state_dict(ckpt["optimizer"])
        for key in state:
            state[key] = ckpt.get(key, state[key])
        batches.unreadable.update(state["unreadable"])
        if codec is not None:
            codec.calibration.scale.update(ckpt.get("rate_scale", {}))
        log.info("resuming %s at epoch %d, batch %d (step %d, %.1f min done)", out, state["epoch"],
                 state["batch"], state["step"], state["elapsed"] / 60)
    elif init_ckpt is not None and codec is not None:
        codec.calibration.scale.update(init_ckpt.get("rate_scale", {}))  # skip re-learning the bits scale
    running = _Running(**state["running"])
    history: list[dict[str, Any]] = list(state["history"])

    validator = None
    if cfg.val_data is not None:
        frames, labels, bad = validation_set(cfg.val_data, cfg.val_limit)
        classifier = Classifier(cfg.recognizer, cfg.weights, threads=cfg.threads)
        validator = Validator(frames, labels, classifier, cfg.qp, cfg.bpp_limit, device)
        if bad:
            log.warning("%d unreadable validation image(s) skipped", bad)

    def checkpoint(done: bool = False) -> None:
        raw = {} if averager is None else {"ema_updates": averager.updates,
                                           "train_state_dict": {k: v.detach().cpu() for k, v in
                                                                model.state_dict().items()}}
        save_checkpoint(out, shipped(), optimizer=optimizer.state_dict(), epoch=state["epoch"], batch=state["batch"],
                        step=state["step"], elapsed=state["elapsed"], history=history,
                        running=asdict(running), unreadable=sorted(batches.unreadable), args=cfg.args(), done=done,
                        rate_scale=dict(codec.calibration.scale) if codec else {},
                        device=str(device), **raw)

    def validate(reason: str) -> dict[str, Any]:
        nonlocal running
        row: dict[str, Any] = {"epoch": state["epoch"], "step": state["step"],
                               "minutes": state["elapsed"] / 60, "reason": reason, **running.means(),
                               "unreadable": len(batches.unreadable)}
        if validator is not None:
            row.update(validator(shipped()))
            log.info("epoch %d step %d: top-1 %.3f (input %.3f), bpp %.4f (input %.4f, %+.1f %%)",
                     state["epoch"], state["step"], row["top1_ed"], row["top1_input"], row["bpp_ed"],
                     row["bpp_input"], -100 * row["bpp_saving"])
        history.append(row)
        _write_log(log_path, history)
        running = _Running()
        return row

    per_epoch = len(batches)
    total = cfg.epochs * per_epoch
    if cfg.max_steps is not None:
        total = min(total, cfg.max_steps)
    budget = cfg.max_minutes * 60 if cfg.max_minutes else None
    from tqdm import tqdm

    bar = tqdm(total=total, initial=min(state["step"], total), disable=not cfg.progress, mininterval=2.0,
               desc=out.stem, unit="step", dynamic_ncols=True)
    stop_reason = ""
    t_last = time.perf_counter()
    try:
        while state["epoch"] < cfg.epochs and not stop_reason:
            while state["batch"] < per_epoch:
                if cfg.max_steps is not None and state["step"] >= cfg.max_steps:
                    stop_reason = "max-steps"
                    break
                if budget is not None and state["elapsed"] >= budget:
                    stop_reason = "max-minutes"
                    break
                if cfg.recon_warmup and state["step"] == cfg.recon_warmup:
                    # A new phase, a fresh optimiser: Adam's second moments from the small MSE gradients
                    # would turn the first, much larger CE gradients into huge steps (seen: a collapse).
                    optimizer.state.clear()
                    for group in optimizer.param_groups:
                        group["lr"] = cfg.finetune_lr or cfg.lr
                    log.info("step %d: reconstruction warm-up done, optimiser state reset", state["step"])
                images, labels = batches.batch(state["epoch"], state["batch"])
                state["batch"] += 1
                if len(images):
                    _step(model, criterion, optimizer, images, labels, state["step"] < cfg.recon_warmup,
                          device, running, codec, state["step"], cfg, camera, camera_codec)
                    if averager is not None:
                        averager.update(model)
                state["step"] += 1
                now = time.perf_counter()
                state["elapsed"] += now - t_last
                t_last = now
                if budget is not None and not bar.disable:  # the time budget ends this run: show that
                    bar.total = _steps_within_budget(total, state["step"], state["elapsed"], budget, bar)
                bar.update(1)
                m = running.means()
                bar.set_postfix(loss=f"{m['train_loss']:.3f}", tv=f"{m['train_tv']:.4f}",
                                acc=f"{m['train_top1']:.2f}", refresh=False)
                if cfg.checkpoint_every and state["step"] % cfg.checkpoint_every == 0:
                    checkpoint()
                    t_last = time.perf_counter()  # checkpoint time is bookkeeping, not training
            if stop_reason:
                break
            state["epoch"] += 1
            state["batch"] = 0
            validate("epoch")
            checkpoint()
            t_last = time.perf_counter()
        if stop_reason:
            validate(stop_reason)
    except KeyboardInterrupt:
        # The step in flight may be half applied: keep the last periodic checkpoint, which is consistent.
        saved = read_checkpoint(out)["step"] if out.exists() else None
        where = f"the checkpoint of step {saved} is in {out}" if saved is not None else "no checkpoint was written yet"
        raise EdgepipeError(f"interrupted at step {state['step']}: {where}; continue with --resume") from None
    finally:
        bar.close()
        if codec is not None:
            codec.roundtrip.close()
    done = not stop_reason or stop_reason in ("max-minutes",)
    checkpoint(done=done)
    if batches.unreadable:
        log.warning("%d unreadable training image(s) skipped", len(batches.unreadable))
    result = dict(history[-1]) if history else running.means()
    result["stopped"] = stop_reason or "epochs"
    return result


@dataclass
class CodecLoop:
    """What a step needs to put the real codec in the loop: which ranges, the coder, the rate calibration."""

    ranges: list
    roundtrip: CodecRoundTrip
    calibration: RateCalibration
    seed: int = 0
    backward: str = "dct"

    def setting(self, step: int) -> tuple[str, int]:
        """Codecs take turns step by step; the setting is a pure function of (seed, step), for --resume."""
        r = self.ranges[step % len(self.ranges)]
        return r.codec, r.draw(np.random.default_rng([self.seed, step, 7]))

    def coded(self, y: torch.Tensor, step: int, device: str) -> tuple[torch.Tensor, np.ndarray]:
        """y through the real round trip at this step's setting (forward: the decoded pictures; backward: through
        the codec's model, or the identity), and each picture's bytes."""
        name, setting = self.setting(step)
        y8 = from_model_output(y.detach().float().cpu().numpy())  # exactly what an encoder would receive
        decoded, sizes = self.roundtrip(y8, name, setting)
        model_of_codec = codec_proxy(y, name, setting) if self.backward == "dct" else None
        return straight_through(y, torch.from_numpy(to_model_input(decoded)).to(device), model_of_codec), sizes


def _corr(a: np.ndarray, b: np.ndarray) -> float:
    if len(a) < 3 or np.std(a) == 0 or np.std(b) == 0:
        return float("nan")
    return float(np.corrcoef(a, b)[0, 1])


def _coded_terms(model_output: torch.Tensor, x: torch.Tensor, labels: torch.Tensor,
                 criterion: RecognitionAwareLoss, codec: CodecLoop, step: int, device: str,
                 running: _Running) -> dict[str, torch.Tensor]:
    """The loss terms with the real codec in the loop, and the bookkeeping of what it measured."""
    y = model_output
    name, setting = codec.setting(step)
    step_q = qstep(name, setting)
    coded, sizes = codec.coded(y, step, device)
    real = sizes * 8.0 / (y.shape[-2] * y.shape[-1])
    with torch.no_grad():
        rate_proxy = dct_rate(y, step_q).cpu().numpy()
        tv = per_image_tv(y).cpu().numpy()
    codec.calibration.update(name, float(rate_proxy.mean()), float(real.mean()))
    terms = criterion(y, labels, x=x, coded=coded, rate_step=step_q, rate_scale=codec.calibration(name))
    rate = float(terms["rate"].detach()) if "rate" in terms else float(rate_proxy.mean() * codec.calibration(name))
    running.add_coded(float(terms["coded"].detach()), int((terms["logits_coded"].argmax(1) == labels).sum()),
                      rate, float(real.mean()), float(F.mse_loss(y.detach(), x)),
                      _corr(np.log(rate_proxy + 1e-9), np.log(real)), _corr(np.log(tv + 1e-9), np.log(real)))
    return terms


def _step(model: EncoderDecoder, criterion: RecognitionAwareLoss, optimizer: torch.optim.Optimizer,
          images: np.ndarray, labels: np.ndarray, reconstruct: bool, device: str, running: _Running,
          codec: CodecLoop | None = None, step: int = 0, cfg: TrainConfig | None = None,
          camera: FramePool | None = None, camera_codec: CodecLoop | None = None) -> None:
    """One optimiser step on one batch; `cfg` carries the optional terms' weights (None: none of them), `camera`
    the --frames pool and `camera_codec` its codec ranges (None: `codec`'s)."""
    lambda_temporal = cfg.lambda_temporal if cfg is not None else 0.0
    lambda_frames = cfg.lambda_frames if cfg is not None else 0.0
    x = torch.from_numpy(to_model_input(images)).to(device)
    y_true = torch.from_numpy(labels).to(device)
    y = model(x)
    if reconstruct:  # warm-up: learn to rebuild the image; the recognizer only reports (no graph kept)
        loss = F.mse_loss(y, x)
        with torch.no_grad():
            terms = criterion(y.detach(), y_true, x=x, rate_step=qstep(*codec.setting(step)) if codec else None)
    elif codec is None:
        terms = criterion(y, y_true, x=x)
        loss = terms["loss"]
    else:
        terms = _coded_terms(model_output=y, x=x, labels=y_true, criterion=criterion, codec=codec, step=step,
                             device=device, running=running)
        loss = terms["loss"]
    if lambda_temporal and not reconstruct:
        # Drawn from (seed, step), so a resumed run simulates the same next frames.
        generator = torch.Generator().manual_seed(int(np.random.SeedSequence([cfg.seed, step, 11]).generate_state(1)[0]))
        temporal = temporal_instability(model, x, y, generator)
        loss = loss + lambda_temporal * temporal
        running.temporal += float(temporal.detach())
        running.n_temporal += 1
    if camera is not None and lambda_frames and not reconstruct:
        divergence = frames_divergence(model, criterion.recognizer, camera, camera_codec or codec, step, device)
        loss = loss + lambda_frames * divergence
        running.frames += float(divergence.detach())
        running.n_frames += 1
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    correct = int((terms["logits"].argmax(1) == y_true).sum())
    running.add(float(loss.detach()), float(terms["ce"].detach()), float(terms["tv"].detach()), correct, len(labels))
