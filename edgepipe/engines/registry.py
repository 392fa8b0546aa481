"""Engine kinds by name, and the one dispatcher from a spec (an `--engine` or `--pre` value) to a loaded engine.

A spec is either a kind chosen by name, `NAME` or `NAME:PARAMETERS` (`none`, `tvl1`, `tvl1:1.5`), or a model
file, or the name of a model shipped in edgepipe/data/models (`ours`), whose suffix picks the kind (`.onnx`:
ONNX Runtime, `.pt`: PyTorch, `.plan`: TensorRT). Each engine module registers its kind; capture, the demo,
preview and evaluation all load through `load_engine`.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from edgepipe.core.errors import EdgepipeError
from edgepipe.core.registry import Registry

if TYPE_CHECKING:
    from edgepipe.engines.base import Engine


@dataclass(frozen=True)
class EngineThreads:
    """The CPU threads a caller budgets for an engine (edge/threads.py plans them for the capture loop).

    An engine that computes elsewhere (TensorRT, `none`) ignores them; so does TV-L1 (OpenCV's pool).
    """

    count: int | None = None  # threads for its operators; None: the library's own default (every core)
    spin: bool | None = None  # whether idle threads spin-wait for the next operator; None: the library's default

    @classmethod
    def of(cls, threads: int | EngineThreads | None) -> EngineThreads:
        """A plain count (what evaluation and training pass) as a budget; None: the libraries' defaults."""
        return threads if isinstance(threads, EngineThreads) else cls(count=threads or None)


def _on_cpu() -> bool:
    return True


@dataclass(frozen=True)
class EngineKind:
    """How one kind of pre-transform is named and loaded.

    A kind with `suffixes` runs model files; one without is chosen by its name and has no file to hash, so its
    engines' `model_id` must name every parameter their output depends on (evaluation caches results under it).
    """

    name: str
    # (argument, threads) -> engine. argument: the model file's path; for a kind chosen by name, the text
    # after "NAME:" (None when the spec is just NAME). threads: a CPU thread budget the engine may ignore.
    load: Callable[[str | None, EngineThreads], Engine]
    suffixes: tuple[str, ...] = ()  # model files it runs, lower case (".onnx")
    spec: str = ""                  # how a user names it in help text: "tvl1[:LAMBDA]"; default: its name
    preferred_batch: int = 16       # frames per run() call in offline work (TV-L1 is fastest one at a time)
    # whether its engines would compute on this machine's CPU, asked before one loads: the capture's thread
    # budget gives most of the cores to the engine only then (else to the encoder)
    computes_on_cpu: Callable[[], bool] = _on_cpu
    # whether its engines' run() may be called from several threads at once (ONNX Runtime's may): the capture's
    # budget then runs CPU frames side by side, a thread each, rather than one frame on several threads
    concurrent_runs: bool = False


ENGINES: Registry[EngineKind] = Registry("engine")


def register_engine(kind: EngineKind) -> EngineKind:
    return ENGINES.register(kind.name, kind)


def resolve_model(spec: str) -> Path:
    """A model path, or the name of a model shipped in edgepipe/data/models (e.g. `ours`)."""
    path = Path(spec)
    if path.exists() or path.suffix:
        return path
    from importlib import resources

    shipped = Path(str(resources.files("edgepipe.data"))) / "models" / f"{spec}.onnx"
    if shipped.exists():
        return shipped
    raise EdgepipeError(f"model not found: {spec!r} is neither a file nor a shipped model name")


def _named(name: str) -> EngineKind | None:
    """The kind chosen by this name (one without model files), or None."""
    if name not in ENGINES:
        return None
    kind = ENGINES[name]
    return None if kind.suffixes else kind


def parse_spec(spec: str | None) -> tuple[EngineKind, str | None]:
    """(kind, argument) for a spec; see the module's docstring. One-line errors for what cannot be loaded."""
    if spec is None:
        spec = "none"
    name, colon, parameters = spec.partition(":")
    kind = _named(name)
    if kind is not None:
        return kind, parameters if colon else None
    path = resolve_model(spec)
    if not path.is_file():
        raise EdgepipeError(f"model file not found: {path}")
    suffix = path.suffix.lower()
    for kind in ENGINES.values():
        if suffix in kind.suffixes:
            return kind, str(path)
    raise EdgepipeError(f"unknown model type {suffix!r} for {path}: use {describe_specs()}")


def load_engine(spec: str | None, threads: int | EngineThreads | None = None) -> Engine:
    """The engine a spec names, loaded (`none` or None: no pre-transform); `threads`: its CPU thread budget."""
    kind, argument = parse_spec(spec)
    return kind.load(argument, EngineThreads.of(threads))


def model_id_of(spec: str) -> str:
    """The model id frames made by this engine carry (loaded once to read it); one line when it does not load."""
    engine = load_engine(spec, 1)
    try:
        return engine.model_id
    finally:
        engine.close()


def describe_specs() -> str:
    """Every way to name a pre-transform, for help texts and errors."""
    named = [k.spec or k.name for k in ENGINES.values() if not k.suffixes]
    suffixes = [s for k in ENGINES.values() for s in k.suffixes]
    return f"a model file ({', '.join(suffixes)}) or shipped model name (ours), or one of {', '.join(named)}"
