"""Thread budgets: how many threads each capture stage's library may use, out of the cores this process has.

Alone, each heavy stage takes every core (ONNX Runtime's intra-op pool, x265's worker pool, FFmpeg's
decoder threads, OpenCV's pool), so the four stages at once fought for them and the overlapped loop ran
slower than the stages one after another (docs/benchmarks.md). One budget, planned here, caps each.

Policy `auto`, over C usable cores (the CPU affinity mask, capped by a cgroup CPU quota):
  - the heavy stage (the engine when it computes on the CPU, else the encoder) gets C threads up to 2
    cores, C - 1 from 3 on: on 2 cores, 1 thread would halve it for stages that need a fraction of the
    other core; from 3 on, one core is left to the others, so the heavy stage never waits for them;
  - each other stage gets 1 thread (source: decoder threads and OpenCV's pool; encoder: x265 workers);
  - where the engine's and the encoder's threads together outnumber the cores, ONNX Runtime's idle
    threads sleep instead of spin-waiting for the next operator (a spinning thread holds a core the
    encoder needs);
  - on 2 cores, a folder of photos gives an engine that runs one frame at a time 1 thread: every unrelated
    photo is coded like a keyframe, so the encoder costs about what the engine does, and two engine threads
    on one frame only fight it (the strict split won in all four runs measured, by 2-20 %; docs/benchmarks.md).
    A camera's P-frames cost the encoder a few milliseconds, and there the engine's second thread wins;
  - an engine that may run frames side by side (ONNX Runtime's) gets its cores as frames at once, a thread
    each, up to 4 (edge/engine_runs.py): two threads on one frame wait for each other at every operator,
    two frames on a thread each do not. On 2 cores this won at 720p (`ours` 5.0 against 4.2 frames/s,
    `ours-fast` 12.9 against 11.2) and for photos (55.7 against 53.9, the one-thread split), and was level at
    224² from a camera (61.1 against 61.3): medians of 3 runs, docs/benchmarks.md.
Overrides (`--threads`, comma-separated items): `N` plans the same over N cores; `STAGE=N` sets one stage
(source, engine, encoder; engine: threads per frame, and one frame at a time unless engine-frames is given);
`engine-frames=K` the engine's frames at once; `spin=on|off` ONNX Runtime's spinning; `defaults` leaves every
stage not named to its library's own default (the capture before budgets).
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path

from edgepipe.core.errors import EdgepipeError
from edgepipe.engines import EngineThreads, parse_spec

STAGES = ("source", "engine", "encoder")
MAX_THREADS = 256  # per stage, and cores for `N`: far above any edge box, low enough to catch a typo
# frames an engine runs at once under `auto`: past a few, more only add latency and activation memory
MAX_ENGINE_FRAMES = 4
CGROUP = Path("/sys/fs/cgroup")
MEMBERSHIP = Path("/proc/self/cgroup")

THREADS_HELP = ("CPU threads per stage, so the stages do not fight for the cores. auto: the heavy stage (the engine "
                "when it runs on the CPU, else the encoder) gets every core (all but one from 3 cores on), the "
                "others 1 each; an ONNX engine's cores run frames side by side, a thread each; N: the same over N "
                "cores; STAGE=N sets source, engine (threads per frame) or encoder; engine-frames=K: the engine's "
                "frames at once; spin=on|off: ONNX Runtime's idle threads; defaults: each library's own. Items "
                "combine: auto,encoder=2.")


# --- the cores --------------------------------------------------------------------------------------

def parse_cpu_max(text: str) -> float | None:
    """Cores a cgroup v2 `cpu.max` allows ("QUOTA PERIOD"; "max ..." is no limit)."""
    parts = text.split()
    if not parts or parts[0] == "max":
        return None
    quota, period = float(parts[0]), float(parts[1]) if len(parts) > 1 else 100000.0
    return quota / period if quota > 0 and period > 0 else None


def cgroup_cpu_limit(root: Path = CGROUP, membership: Path = MEMBERSHIP) -> float | None:
    """Cores this process may use by its cgroups' CPU quotas: the tightest over its own cgroup and those above it
    (a systemd unit's CPUQuota=, a container's --cpus); v2 cpu.max, v1 cfs quota / period. None: no quota, or
    nothing readable (not Linux, no cgroup mounted)."""
    limits = [limit for d in _cgroup_dirs(root, membership) if (limit := _quota_in(d)) is not None]
    return min(limits) if limits else None


def _cgroup_dirs(root: Path, membership: Path) -> list[Path]:
    """This process's cgroup folders that can hold a CPU quota, each with its ancestors (from /proc/self/cgroup:
    `0::/PATH` for v2, `N:cpu,cpuacct:/PATH` for v1's cpu controller)."""
    try:
        lines = membership.read_text().splitlines()
    except OSError:
        lines = []
    dirs: list[Path] = []
    for line in lines:
        hierarchy, _, rest = line.partition(":")
        controllers, _, path = rest.partition(":")
        if hierarchy == "0" and not controllers:
            base = root
        elif "cpu" in controllers.split(","):
            base = root / controllers
        else:
            continue
        d = base.joinpath(*[part for part in path.split("/") if part not in ("", "..")])
        while True:
            dirs.append(d)
            if d == base:
                break
            d = d.parent
    return dirs or [root, root / "cpu", root / "cpu,cpuacct"]  # no membership to read: the mounts' own roots


def _quota_in(folder: Path) -> float | None:
    try:
        return parse_cpu_max((folder / "cpu.max").read_text())
    except (OSError, ValueError, IndexError):
        pass
    try:
        quota = float((folder / "cpu.cfs_quota_us").read_text())
        period = float((folder / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None
    return quota / period if quota > 0 and period > 0 else None  # v1: -1 is no quota


@dataclass(frozen=True)
class Cores:
    count: int
    found: str  # how: "affinity 2", "affinity 16, cgroup quota 4.0", "--threads 4"


def usable_cores(root: Path = CGROUP, membership: Path = MEMBERSHIP) -> Cores:
    """The cores this process may run on: its affinity mask, capped by a cgroup quota (rounded down, at least
    1: threads above a quota are throttled)."""
    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    quota = cgroup_cpu_limit(root, membership)
    if quota is None or quota >= affinity:
        return Cores(affinity, f"affinity {affinity}")
    return Cores(max(1, math.floor(quota)), f"affinity {affinity}, cgroup quota {quota:g}")


# --- what --threads asks for ------------------------------------------------------------------------

@dataclass(frozen=True)
class ThreadRequest:
    text: str = "auto"
    cores: int | None = None  # N: plan over N cores rather than the machine's
    defaults: bool = False    # stages not named keep their libraries' defaults
    stages: dict[str, int] = field(default_factory=dict)
    spin: bool | None = None
    engine_frames: int | None = None  # engine-frames=K: frames the engine runs at once


def parse_threads(text: str) -> ThreadRequest:
    """A --threads value; a one-line EdgepipeError for anything else."""
    cores, defaults, spin, stages, engine_frames = None, False, None, {}, None
    base_given = False
    for item in (part.strip() for part in text.split(",")):
        name, eq, value = (part.strip().lower() for part in item.partition("="))
        if not name:
            raise EdgepipeError(f"--threads {text!r}: an empty item; e.g. auto, 2 or engine=2,encoder=1")
        if not eq:
            if base_given:
                raise EdgepipeError(f"--threads {text!r}: give one of auto, defaults or a core count, not two")
            base_given = True
            if name == "defaults":
                defaults = True
            elif name.isdigit():
                cores = _count(text, "a core count", name)
            elif name != "auto":
                raise _unknown(text, item)
        elif name == "spin":
            if value not in ("on", "off"):
                raise EdgepipeError(f"--threads {text!r}: spin is on or off, got {value!r}")
            spin = value == "on"
        elif name == "engine-frames":
            if engine_frames is not None:
                raise EdgepipeError(f"--threads {text!r}: engine-frames is given twice")
            engine_frames = _count(text, "engine-frames", value)
        elif name in STAGES:
            if name in stages:
                raise EdgepipeError(f"--threads {text!r}: {name} is given twice")
            stages[name] = _count(text, f"{name}'s threads", value)
        else:
            raise _unknown(text, item)
    return ThreadRequest(text, cores, defaults, stages, spin, engine_frames)


def _unknown(text: str, item: str) -> EdgepipeError:
    return EdgepipeError(f"--threads {text!r}: unknown item {item!r}; use auto, defaults, a core count N, "
                         f"spin=on|off, engine-frames=K or STAGE=N with STAGE one of {', '.join(STAGES)}")


def _count(text: str, what: str, value: str) -> int:
    n = int(value) if value.isdigit() else None
    if n is None or not 1 <= n <= MAX_THREADS:
        raise EdgepipeError(f"--threads {text!r}: {what} must be a whole number 1..{MAX_THREADS}, got {value!r}")
    return n


# --- the plan ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ThreadBudget:
    """Threads per stage; None: the library's own default."""

    policy: str        # the --threads text
    cores: int         # the cores divided
    cores_found: str   # how they were counted
    heavy: str         # the stage that got the most
    source: int | None = None   # decoder threads; OpenCV's process-wide pool takes the same
    engine: int | None = None   # ONNX Runtime intra-op threads, or PyTorch's: per frame
    encoder: int | None = None  # x265 worker (pool) threads; frame threads stay 1 (tune zerolatency)
    engine_spin: bool | None = None
    why: str = ""  # a plan that departs from the plain split says why, in a few words
    engine_frames: int = 1  # frames the engine runs at once, each on `engine` threads (edge/engine_runs.py)

    @property
    def opencv(self) -> int | None:
        """OpenCV's one pool serves the source's resize and the encoder's colour conversion."""
        return self.source

    def engine_threads(self) -> EngineThreads:
        return EngineThreads(self.engine, self.engine_spin)

    def as_dict(self) -> dict:
        return {"policy": self.policy, "cores": self.cores, "cores_found": self.cores_found, "heavy": self.heavy,
                "source": self.source, "engine": self.engine, "encoder": self.encoder, "opencv": self.opencv,
                "engine_spin": self.engine_spin, "engine_frames": self.engine_frames, "why": self.why}

    def describe(self) -> str:
        """One line for the start-up message: "engine 2 (idle threads sleep), encoder 1, source 1 of 2 cores (auto)"."""
        def one(stage: str) -> str:
            n = getattr(self, stage)
            text = f"{stage} {'default' if n is None else n}"
            if stage == "engine" and self.engine_frames > 1:
                text = f"engine {'default' if n is None else n} x {self.engine_frames} frames at once"
            if stage == "engine" and self.engine_spin is not None and n != 1:  # 1 thread: no pool to idle
                text += " (idle threads spin)" if self.engine_spin else " (idle threads sleep)"
            return text

        why = f": {self.why}" if self.why else ""
        return f"{', '.join(one(s) for s in ('engine', 'encoder', 'source'))} of {self.cores} cores ({self.policy}{why})"


def plan_threads(request: ThreadRequest, cores: Cores, heavy: str, photos: bool = False,
                 concurrent: bool = False) -> ThreadBudget:
    """The budget a request gives on these cores, `heavy` being the stage that does the most work; `photos`:
    the source is a folder of unrelated images, each coded like a keyframe; `concurrent`: the engine may run
    frames side by side (engines/registry.py), so its cores go to frames at once, a thread each."""
    if request.cores is not None:
        cores = Cores(request.cores, f"--threads {request.cores} ({cores.found} here)")
    c = cores.count
    why = ""
    if request.defaults:
        counts: dict[str, int | None] = dict.fromkeys(STAGES)
    else:
        counts = {stage: 1 for stage in STAGES}
        counts[heavy] = c if c <= 2 else c - 1
        if photos and heavy == "engine" and c == 2 and "engine" not in request.stages and not concurrent:
            counts["engine"], why = 1, "photos are coded like keyframes, the encoder keeps a core"
    frames = request.engine_frames or 1
    if not concurrent:
        if frames > 1:
            why = ", ".join(filter(None, (why, "this engine runs one frame at a time")))
        frames = 1  # its run() may not overlap another
    else:
        if request.engine_frames is None and not request.defaults and heavy == "engine" \
                and "engine" not in request.stages:
            # a thread per frame: one frame on two ORT threads ran 1.2-1.7x, two frames on a thread each 1.5-2.1x
            frames = min(counts["engine"], MAX_ENGINE_FRAMES)
        if "engine" not in request.stages and counts["engine"] is not None:
            counts["engine"] = max(1, counts["engine"] // frames)  # the planned cores shared among the frames
    counts.update(request.stages)
    spin = request.spin
    if spin is None and counts["engine"] is not None and not request.defaults:
        spin = counts["engine"] * frames + (counts["encoder"] or c) <= c
    return ThreadBudget(request.text, c, cores.found, heavy, counts["source"], counts["engine"], counts["encoder"],
                        spin, why, frames)


def runs_concurrently(engine_spec: str | None) -> bool:
    """Whether the engine a spec names may run frames side by side (asked before it loads)."""
    try:
        return parse_spec(engine_spec)[0].concurrent_runs
    except EdgepipeError:
        return False  # a bad spec fails with its own line when the engine loads


def heavy_stage(engine_spec: str | None, codec: str, encoder: str) -> str:
    """The stage that does the most CPU work: the engine when it computes on the CPU, else a CPU encoder."""
    try:
        engine_on_cpu = parse_spec(engine_spec)[0].computes_on_cpu()
    except EdgepipeError:
        engine_on_cpu = True  # a bad spec fails with its own line when the engine loads
    if engine_on_cpu:
        return "engine"
    return "encoder" if codec != "hevc" or encoder != "hevc_nvenc" else "source"


def capture_budget(threads: str, engine_spec: str | None, codec: str = "hevc", encoder: str = "libx265",
                   source: str = "", root: Path = CGROUP, membership: Path = MEMBERSHIP) -> ThreadBudget:
    """The capture's budget from its settings (`--threads`, `--engine`, `--codec`, `--encoder`, the source)."""
    return plan_threads(parse_threads(threads), usable_cores(root, membership), heavy_stage(engine_spec, codec, encoder),
                        photos=source.startswith("folder:"), concurrent=runs_concurrently(engine_spec))
