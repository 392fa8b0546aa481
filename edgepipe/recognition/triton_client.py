"""The recognizer on NVIDIA Triton Inference Server, over gRPC: `--recognizer-server grpc://HOST:8001`.

`TritonClassifier` has the interface of the in-process `Classifier` (`logits`, `top1`, `topk` and `prepare` on
uint8 RGB frames (N, H, W, 3), the same `view`) and gives the same numbers: the view (centre crop, tiles) is `Classifier.logits`
itself, and the model that `edgepipe recognizer-repo` writes takes uint8 frames and does the rest of the
preprocessing in its graph, so frames go over the wire as uint8 pixels.

Faults:
- at start, one-line `EdgepipeError`s: tritonclient not installed (the `triton` extra), a bad URL, no server
  answering, the model not ready, a model whose input or output is not the recognizer's;
- mid-run, a server that goes away (or unloads the model): `RecognizerUnavailable` for that call; the caller
  counts those frames as unclassified. Later calls reconnect, with a backoff (0.5 s doubling to 5 s) during
  which they fail at once instead of waiting on a dead server.

tritonclient is imported when a `TritonClassifier` is made, never by `import edgepipe`.
"""
from __future__ import annotations

import logging
import threading
import time

import numpy as np

from edgepipe.core.errors import EdgepipeError, RecognizerUnavailable  # noqa: F401 - re-exported for callers
from edgepipe.recognition import DEFAULT_RECOGNIZER, VIEWS, Classifier

log = logging.getLogger(__name__)

INPUT_NAME = "frames"  # as written by edgepipe.recognition.triton_repo
OUTPUT_NAME = "logits"
NUM_CLASSES = 1000
EXAMPLE_URL = "grpc://triton:8001"
INSTALL_HINT = "pip install 'edgepipe[triton]' (tritonclient[grpc])"
# gRPC status codes that mean "the request was fine, the server is not serving it now"
_OUTAGE = {"UNAVAILABLE", "DEADLINE_EXCEEDED", "CANCELLED", "ABORTED", "RESOURCE_EXHAUSTED", "NOT_FOUND",
           "INTERNAL", "UNKNOWN"}


class _Down(Exception):
    """Internal: the server or the model is not serving (becomes EdgepipeError at start, else RecognizerUnavailable)."""


class _WrongModel(Exception):
    """Internal: the served model is not a recognizer with our input and output."""


def parse_server_url(url: str) -> str:
    """grpc://HOST:PORT -> HOST:PORT (as tritonclient wants it); HOST may be [IPv6]."""
    scheme, sep, rest = url.partition("://")
    if not sep or scheme != "grpc":
        hint = " (Triton's HTTP API is not used; its gRPC port is 8001 by default)" if scheme in ("http", "https") \
            else ""
        raise EdgepipeError(f"--recognizer-server {url}: expected grpc://HOST:PORT, e.g. {EXAMPLE_URL}{hint}")
    host, colon, port = rest.rstrip("/").rpartition(":")
    if not colon or not host or "/" in host or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise EdgepipeError(f"--recognizer-server {url}: needs grpc://HOST:PORT with a port 1..65535, "
                            f"e.g. {EXAMPLE_URL}")
    if host.startswith("[") != host.endswith("]") or (":" in host and not host.startswith("[")):
        raise EdgepipeError(f"--recognizer-server {url}: write an IPv6 host in brackets, e.g. grpc://[::1]:8001")
    return f"{host}:{port}"


def _import_tritonclient():
    try:
        import tritonclient.grpc as grpcclient
        from tritonclient.utils import InferenceServerException
    except ImportError as exc:
        raise EdgepipeError(f"--recognizer-server needs tritonclient, which is not installed ({exc.name}): "
                            f"{INSTALL_HINT}") from None
    return grpcclient, InferenceServerException


def _status(exc) -> str:
    """'UNAVAILABLE' from tritonclient's 'StatusCode.UNAVAILABLE' (None when the client raised it itself)."""
    status = exc.status() if hasattr(exc, "status") else None
    return str(status).rpartition(".")[2] if status else ""


def _short(exc) -> str:
    message = exc.message() if hasattr(exc, "message") else str(exc)
    first = (message or type(exc).__name__).strip().splitlines()[0]
    status = _status(exc)
    return f"{status}: {first[:200]}" if status else first[:200]


class TritonClassifier:
    """ImageNet predictions (top-1, top-k with probabilities) for batches of uint8 RGB frames (N, H, W, 3),
    computed by a Triton server."""

    backend = "triton"

    def __init__(self, url: str, name: str = DEFAULT_RECOGNIZER, model: str | None = None, version: str = "",
                 batch_size: int = 32, timeout_s: float = 10.0, connect_timeout_s: float = 5.0,
                 retry_s: tuple[float, float] = (0.5, 5.0), view: str = "native"):
        if view not in VIEWS:
            raise EdgepipeError(f"unknown recognizer view {view!r}; choose one of {', '.join(VIEWS)}")
        self.url = url
        self.view = view
        self.address = parse_server_url(url)  # before the import: a typo needs no package to be reported
        self.name = name
        self.model = model or name
        self.version = version
        self.batch_size = batch_size
        self.timeout_s = timeout_s
        self.connect_timeout_s = connect_timeout_s
        self.retry_s = retry_s
        self._grpc, self._server_error = _import_tritonclient()
        self._lock = threading.Lock()
        self._client = None
        self._max_batch = batch_size
        self._hw: tuple[int, int] | None = None  # fixed (H, W) of the served model, None when dynamic
        self._backoff = retry_s[0]
        self._retry_at = 0.0
        self._down_since: float | None = None
        self.unavailable_calls = 0  # calls answered with RecognizerUnavailable
        self.reconnects = 0
        try:
            self._connect()
        except _Down as exc:
            raise EdgepipeError(str(exc)) from None
        except _WrongModel as exc:
            raise EdgepipeError(f"{exc}; write the repository with `edgepipe recognizer-repo`") from None

    # --- connection ---------------------------------------------------------------------------------

    def _connect(self) -> None:
        """A fresh client, checked: server live, model ready, input and output as the recognizer's."""
        where = f"Triton at {self.url}"
        client = self._grpc.InferenceServerClient(self.address)
        timeout = self.connect_timeout_s
        try:
            try:
                client.is_server_live(client_timeout=timeout)
            except self._server_error as exc:
                raise _Down(f"cannot reach {where} ({_short(exc)}); is tritonserver running with its gRPC port "
                            f"there?") from None
            try:
                ready = client.is_model_ready(self.model, self.version, client_timeout=timeout)
            except self._server_error as exc:
                raise _Down(f"{where}: asking whether model {self.model!r} is ready failed ({_short(exc)})") from None
            if not ready:
                raise _Down(f"{where}: model {self.model!r}{' version ' + self.version if self.version else ''} "
                            f"is not ready{self._loaded_models(client)}; serve a repository from "
                            f"`edgepipe recognizer-repo`, or name the model with the recognizer's name")
            try:
                meta = client.get_model_metadata(self.model, self.version, as_json=True, client_timeout=timeout)
                config = client.get_model_config(self.model, self.version, as_json=True, client_timeout=timeout)
            except self._server_error as exc:
                raise _Down(f"{where}: reading model {self.model!r}'s metadata failed ({_short(exc)})") from None
            self._check_model(meta, config.get("config", config))
        except BaseException:
            client.close()
            raise
        old, self._client = self._client, client
        if old is not None:
            old.close()

    def _loaded_models(self, client) -> str:
        try:
            index = client.get_model_repository_index(as_json=True, client_timeout=self.connect_timeout_s)
        except self._server_error:  # a server may restrict the repository API
            return ""
        models = [f"{m.get('name')} ({m.get('state', 'unknown').lower()})" for m in index.get("models", [])]
        return f" (the server has: {', '.join(models)})" if models else " (the server has no models)"

    def _check_model(self, meta: dict, config: dict) -> None:
        inputs, outputs = meta.get("inputs", []), meta.get("outputs", [])
        def describe(tensors):
            return [(t.get("name"), t.get("datatype"), [int(d) for d in t.get("shape", [])]) for t in tensors]

        signature = f"inputs {describe(inputs)}, outputs {describe(outputs)}"
        expected = (f"expected one UINT8 input {INPUT_NAME!r} [-1, H, W, 3] (H, W: -1 or fixed) and one FP32 "
                    f"output {OUTPUT_NAME!r} [-1, {NUM_CLASSES}]")
        where = f"model {self.model!r} on Triton at {self.url}"
        if len(inputs) != 1 or len(outputs) != 1:
            raise _WrongModel(f"{where} has {signature}; {expected}")
        (inp,), (out,) = inputs, outputs
        in_shape = [int(d) for d in inp.get("shape", [])]
        out_shape = [int(d) for d in out.get("shape", [])]
        max_batch = int(config.get("max_batch_size", 0) or 0)
        if (inp.get("name") != INPUT_NAME or inp.get("datatype") != "UINT8" or len(in_shape) != 4
                or in_shape[0] != -1 or in_shape[3] != 3 or out.get("name") != OUTPUT_NAME
                or out.get("datatype") != "FP32" or out_shape != [-1, NUM_CLASSES] or max_batch < 1):
            detail = "" if max_batch >= 1 else " and no batching (max_batch_size 0)"
            raise _WrongModel(f"{where} has {signature}{detail}; {expected}")
        self._max_batch = min(self.batch_size, max_batch)
        h, w = in_shape[1:3]
        self._hw = (h, w) if h > 0 and w > 0 else None

    def _reconnect_or_raise(self) -> None:
        """Under the lock, with no client: reconnect, or raise RecognizerUnavailable (during the backoff at once)."""
        now = time.monotonic()
        if now < self._retry_at:
            self.unavailable_calls += 1
            raise RecognizerUnavailable(f"Triton at {self.url} is unavailable; next try in "
                                        f"{self._retry_at - now:.1f} s")
        try:
            self._connect()
        except (_Down, _WrongModel) as exc:
            self._lost(str(exc))
            self.unavailable_calls += 1
            raise RecognizerUnavailable(f"Triton at {self.url} is still unavailable: {exc}") from None
        self.reconnects += 1
        log.warning("recognizer server %s is back after %.1f s", self.url, now - (self._down_since or now))
        self._down_since = None
        self._backoff = self.retry_s[0]

    def _lost(self, reason: str) -> None:
        """Under the lock: drop the client and schedule the next try (the caller raises RecognizerUnavailable)."""
        now = time.monotonic()
        if self._client is not None:
            self._client.close()
            self._client = None
        if self._down_since is None:
            self._down_since = now
            log.warning("recognizer server %s unavailable (%s): frames go unclassified; retrying", self.url, reason)
        self._retry_at = now + self._backoff
        self._backoff = min(self._backoff * 2, self.retry_s[1])

    # --- inference ----------------------------------------------------------------------------------

    # The view is Classifier's own code (centre crop, tiles and their averaging, or the frame as it is), so the
    # server sees the pixels the in-process recognizer would; only the model call, _logits, goes over gRPC.
    logits = Classifier.logits

    def _logits(self, frames: np.ndarray) -> np.ndarray:
        """Logits (N, 1000) for uint8 RGB frames (N, H, W, 3), in batches of at most the model's max_batch_size.

        Raises RecognizerUnavailable (the whole call is unclassified) when the server is not answering.
        Thread-safe; calls from several threads reach the server at once, so its dynamic batcher can join them.
        """
        if frames.ndim != 4 or frames.shape[-1] != 3:
            raise ValueError(f"expected (N, H, W, 3) RGB frames, got shape {frames.shape}")
        if frames.dtype != np.uint8:
            raise ValueError(f"expected uint8 frames, got {frames.dtype}")
        if len(frames) == 0:
            return np.zeros((0, NUM_CLASSES), np.float32)
        with self._lock:
            if self._client is None:
                self._reconnect_or_raise()
            client, max_batch, hw = self._client, self._max_batch, self._hw
        if hw is not None and tuple(frames.shape[1:3]) != hw:
            raise EdgepipeError(f"model {self.model!r} on Triton at {self.url} takes {hw[1]}x{hw[0]} frames only, "
                                f"got {frames.shape[2]}x{frames.shape[1]}; serve a repository from "
                                f"`edgepipe recognizer-repo` (any size)")
        out = []
        for start in range(0, len(frames), max_batch):
            out.append(self._infer(client, np.ascontiguousarray(frames[start:start + max_batch])))
        return np.concatenate(out)

    def _infer(self, client, batch: np.ndarray) -> np.ndarray:
        grpc = self._grpc
        tensor = grpc.InferInput(INPUT_NAME, list(batch.shape), "UINT8")
        tensor.set_data_from_numpy(batch)
        try:
            result = client.infer(self.model, [tensor], model_version=self.version,
                                  outputs=[grpc.InferRequestedOutput(OUTPUT_NAME)], client_timeout=self.timeout_s)
        except self._server_error as exc:
            if _status(exc) in _OUTAGE or not _status(exc):
                with self._lock:
                    if self._client is client:  # the first thread to see the loss drops the client
                        self._lost(_short(exc))
                    self.unavailable_calls += 1
                raise RecognizerUnavailable(f"Triton at {self.url} is unavailable: {_short(exc)}") from None
            raise EdgepipeError(f"Triton at {self.url} refused a batch of {len(batch)} {batch.shape[2]}x"
                                f"{batch.shape[1]} frames for model {self.model!r}: {_short(exc)}") from None
        logits = result.as_numpy(OUTPUT_NAME)
        if logits is None or logits.shape != (len(batch), NUM_CLASSES):
            shape = None if logits is None else logits.shape
            raise EdgepipeError(f"model {self.model!r} on Triton at {self.url} answered {OUTPUT_NAME} of shape "
                                f"{shape} for {len(batch)} frames; expected ({len(batch)}, {NUM_CLASSES})")
        return logits.astype(np.float32, copy=False)

    def top1(self, frames: np.ndarray) -> np.ndarray:
        return self.logits(frames).argmax(axis=1)

    # Top-k with probabilities and the per-frame part of the view: computed here from the server's logits, with
    # the in-process code, so both back ends give the same classes and probabilities for the same frames.
    topk = Classifier.topk
    prepare = Classifier.prepare

    def close(self) -> None:
        with self._lock:
            if self._client is not None:
                self._client.close()
                self._client = None
