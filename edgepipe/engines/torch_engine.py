"""Pre-transform on PyTorch (CPU, or CUDA when present): runs an ED checkpoint (.pt/.pth) as saved
by `edgepipe train`."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from edgepipe.engines.base import from_model_output, to_model_input, weights_id
from edgepipe.engines.registry import EngineKind, register_engine


class TorchEngine:
    def __init__(self, path: str | Path, device: str | None = None, threads: int | None = None):
        import torch

        from edgepipe.models.ed import load_ed  # raises EdgepipeError for bad files

        path = Path(path)
        self._torch = torch
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        if threads and self.device == "cpu":
            torch.set_num_threads(threads)  # PyTorch's pool is process-wide: the budget holds for the whole process
        self._model = load_ed(path).to(self.device).eval()
        tensors = ((k, v.detach().cpu().float().numpy()) for k, v in self._model.state_dict().items())
        self.model_id = f"{path.stem}-{weights_id(tensors)}"  # the same id as its ONNX export

    def run(self, frames: np.ndarray) -> np.ndarray:
        torch = self._torch
        with torch.inference_mode():
            x = torch.from_numpy(to_model_input(frames)).to(self.device)
            y = self._model(x).float().cpu().numpy()
        return from_model_output(y)

    def close(self) -> None:
        self._model = None


def _computes_on_cpu() -> bool:
    try:
        import torch
    except ImportError:
        return True  # loading will say what is missing
    return not torch.cuda.is_available()


# threads.spin: PyTorch's pool has no such setting
register_engine(EngineKind("torch", lambda path, threads: TorchEngine(path, threads=threads.count),
                           suffixes=(".pt", ".pth"), computes_on_cpu=_computes_on_cpu))
