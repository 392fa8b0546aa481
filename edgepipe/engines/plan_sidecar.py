"""The JSON sidecar every `.plan` gets (`MODEL.plan.json`), and the check made before a plan is loaded.

A TensorRT plan is only valid for the TensorRT version that built it and for the GPU it was tuned on;
loaded elsewhere it fails deep inside TensorRT or, worse, runs with kernels tuned for another chip. The
sidecar records where the plan came from (source ONNX hash, model card fields) and what it is bound to
(TensorRT version, GPU name, compute capability), so a mismatch is one clear line telling the user to rebuild.
"""
from __future__ import annotations

import datetime as _dt
import json
import logging
from dataclasses import MISSING, asdict, dataclass, field
from pathlib import Path
from typing import Any

from edgepipe.core.errors import EdgepipeError
from edgepipe.core.files import atomic_write, sha256_file

log = logging.getLogger(__name__)

SIDECAR_FORMAT = "edgepipe-tensorrt-plan"
SIDECAR_VERSION = 1
PRECISIONS = ("fp32", "fp16", "int8")
UNKNOWN = "unknown"


@dataclass
class PlanSidecar:
    onnx_name: str  # file name of the source model (e.g. ours.onnx)
    onnx_sha256: str
    precision: str  # fp32 | fp16 | int8
    tensorrt_version: str
    gpu_name: str
    compute_capability: str  # "8.7"
    input_name: str
    output_name: str
    shapes: dict[str, list[int]]  # min / opt / max, NCHW
    edgepipe_version: str
    model_card: dict[str, Any] = field(default_factory=dict)
    workspace_bytes: int | None = None
    calibration: dict[str, Any] | None = None  # how INT8 scales were made (cache, Q/DQ model, images)
    built_at: str = ""
    weights_id: str = ""  # the source model's weights id (engines.base.weights_id); "" in older sidecars
    format: str = SIDECAR_FORMAT
    version: int = SIDECAR_VERSION

    @property
    def model_id(self) -> str:
        """Travels in the stream header: the source model's id as the ONNX engine names it, plus how it runs."""
        return f"{Path(self.onnx_name).stem}-{self.weights_id or self.onnx_sha256[:8]}-trt-{self.precision}"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def sidecar_path(plan: str | Path) -> Path:
    plan = Path(plan)
    return plan.with_name(plan.name + ".json")


def now_iso() -> str:
    return _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat()


def model_card_fields(onnx_path: str | Path) -> dict[str, Any]:
    """What is known about the source model: the ONNX file's own metadata (producer, doc string,
    metadata_props) and, when present, the model card files beside it."""
    onnx_path = Path(onnx_path)
    card: dict[str, Any] = {}
    try:
        import onnx

        model = onnx.load(str(onnx_path), load_external_data=False)
        for key in ("producer_name", "producer_version", "doc_string", "domain"):
            value = getattr(model, key, "")
            if value:
                card[key] = value
        if model.model_version:
            card["model_version"] = int(model.model_version)
        opsets = {o.domain or "ai.onnx": int(o.version) for o in model.opset_import}
        if opsets:
            card["opset"] = opsets
        card.update({p.key: p.value for p in model.metadata_props})
    except Exception as exc:  # a card is nice to have; the hash already identifies the model
        log.warning("could not read ONNX metadata of %s: %s", onnx_path, exc)
    # Beside the ONNX, as `edgepipe.train.card` writes them: STEM.md (the card) and STEM.metrics.json
    # (its validation figures); a STEM.json card is merged too.
    for extra_path, key in ((onnx_path.with_suffix(".json"), None),
                            (onnx_path.with_name(onnx_path.stem + ".metrics.json"), "metrics")):
        if not extra_path.is_file():
            continue
        try:
            extra = json.loads(extra_path.read_text())
        except (OSError, ValueError) as exc:
            log.warning("ignoring unreadable model card file %s: %s", extra_path, exc)
            continue
        if key is not None:
            card[key] = extra
        elif isinstance(extra, dict):
            card.update(extra)
    md = onnx_path.with_suffix(".md")
    if md.is_file():
        lines = [line.strip("# ").strip() for line in md.read_text(errors="replace").splitlines() if line.strip()]
        card["card"] = {"file": md.name, "title": lines[0] if lines else "", "sha256": sha256_file(md)}
    return card


def write_sidecar(plan: str | Path, sidecar: PlanSidecar) -> Path:
    if sidecar.precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {sidecar.precision!r}")
    if not sidecar.built_at:
        sidecar.built_at = now_iso()
    path = sidecar_path(plan)
    atomic_write(path, json.dumps(sidecar.to_dict(), indent=2, sort_keys=True) + "\n")  # never half a sidecar
    return path


def read_sidecar(plan: str | Path) -> PlanSidecar | None:
    """The sidecar of `plan`, None when there is none; one-line error when it is unreadable."""
    path = sidecar_path(plan)
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise EdgepipeError(f"{path} is not a readable plan sidecar ({exc}): rebuild the plan with edgepipe build-engine") from None
    if not isinstance(data, dict) or data.get("format") != SIDECAR_FORMAT:
        raise EdgepipeError(f"{path} is not an edgepipe plan sidecar: rebuild the plan with edgepipe build-engine")
    if int(data.get("version", 0)) > SIDECAR_VERSION:
        raise EdgepipeError(f"{path} was written by a newer edgepipe (sidecar v{data['version']}): upgrade edgepipe")
    known = set(PlanSidecar.__dataclass_fields__)
    missing = [k for k, f in PlanSidecar.__dataclass_fields__.items()
               if k not in data and f.default is MISSING and f.default_factory is MISSING]
    if missing:
        raise EdgepipeError(f"{path} lacks {', '.join(missing)}: rebuild the plan with edgepipe build-engine")
    return PlanSidecar(**{k: v for k, v in data.items() if k in known})


def _release(version: str) -> tuple[str, ...]:
    """10.3.0.30 -> ('10', '3', '0'): plans are bound to the release; the last field is the build."""
    return tuple(version.split(".")[:3])


def rebuild_hint(plan: str | Path, sidecar: PlanSidecar) -> str:
    return f"rebuild it on this machine: edgepipe build-engine {sidecar.onnx_name} -o {Path(plan).name} --precision {sidecar.precision}"


def check_compatible(plan: str | Path, sidecar: PlanSidecar, tensorrt_version: str,
                     gpu_name: str | None, compute_capability: str | None) -> None:
    """Raise one line when the plan was built by another TensorRT release or for another GPU."""
    plan = Path(plan)
    problems = []
    if _release(sidecar.tensorrt_version) != _release(tensorrt_version):
        problems.append(f"TensorRT {sidecar.tensorrt_version} (this machine has {tensorrt_version})")
    if gpu_name and compute_capability and sidecar.gpu_name != UNKNOWN:
        if sidecar.gpu_name != gpu_name or sidecar.compute_capability != compute_capability:
            problems.append(f"GPU {sidecar.gpu_name} (sm {sidecar.compute_capability}); this machine has "
                            f"{gpu_name} (sm {compute_capability})")
    elif sidecar.gpu_name == UNKNOWN:
        log.warning("%s does not record its GPU; TensorRT itself will refuse it if it does not fit", plan)
    if problems:
        raise EdgepipeError(f"{plan.name} was built for {' and '.join(problems)}: {rebuild_hint(plan, sidecar)}")
