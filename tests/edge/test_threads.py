"""The thread budget: the cores (affinity, cgroup quota), the split per policy, the overrides, one-line errors."""
from __future__ import annotations

import pytest

from edgepipe.core.errors import EdgepipeError
from edgepipe.edge import threads
from edgepipe.edge.threads import (
    Cores,
    ThreadBudget,
    capture_budget,
    cgroup_cpu_limit,
    heavy_stage,
    parse_cpu_max,
    parse_threads,
    plan_threads,
    usable_cores,
)


def plan(text: str, cores: int, heavy: str = "engine") -> tuple:
    b = plan_threads(parse_threads(text), Cores(cores, f"affinity {cores}"), heavy)
    return b.source, b.engine, b.encoder, b.engine_spin


@pytest.mark.parametrize("text, cores, heavy, expected", [
    # auto: the heavy stage every core up to 2, all but one from 3; the others 1; ORT sleeps where it shares
    ("auto", 1, "engine", (1, 1, 1, False)),
    ("auto", 2, "engine", (1, 2, 1, False)),
    ("auto", 3, "engine", (1, 2, 1, True)),
    ("auto", 8, "engine", (1, 7, 1, True)),
    ("auto", 2, "encoder", (1, 1, 2, False)),
    ("auto", 8, "encoder", (1, 1, 7, True)),
    ("auto", 4, "source", (3, 1, 1, True)),
    # N: the same policy over N cores, whatever the machine has
    ("4", 2, "engine", (1, 3, 1, True)),
    ("1", 16, "engine", (1, 1, 1, False)),
    # STAGE=N overrides one stage; the spin rule follows the counts
    ("auto,encoder=2", 2, "engine", (1, 2, 2, False)),
    ("engine=1", 2, "engine", (1, 1, 1, True)),
    ("engine=1,encoder=1,source=2", 2, "engine", (2, 1, 1, True)),
    ("spin=on", 2, "engine", (1, 2, 1, True)),
    ("4,spin=off", 4, "engine", (1, 3, 1, False)),
    # defaults: the libraries' own, as the capture was before budgets
    ("defaults", 2, "engine", (None, None, None, None)),
    ("defaults,engine=1", 2, "engine", (None, 1, None, None)),
    ("defaults,spin=off", 2, "engine", (None, None, None, False)),
    (" Auto , ENCODER = 2 ", 2, "engine", (1, 2, 2, False)),
])
def test_split_per_policy(text, cores, heavy, expected):
    assert plan(text, cores, heavy) == expected


def test_a_core_count_is_said_against_what_the_machine_has():
    b = plan_threads(parse_threads("4"), Cores(2, "affinity 2"), "engine")
    assert b.cores == 4 and b.cores_found == "--threads 4 (affinity 2 here)"


@pytest.mark.parametrize("text, phrase", [
    ("", "an empty item"),
    ("auto,", "an empty item"),
    ("fast", "unknown item 'fast'"),
    ("gpu=2", "unknown item 'gpu=2'; use auto, defaults, a core count N, spin=on|off, engine-frames=K or STAGE=N"),
    ("engine-frames=0", "engine-frames must be a whole number 1..256, got '0'"),
    ("engine-frames=2,engine-frames=1", "engine-frames is given twice"),
    ("auto,4", "give one of auto, defaults or a core count, not two"),
    ("defaults,auto", "not two"),
    ("0", "a core count must be a whole number 1..256, got '0'"),
    ("999", "a core count must be a whole number 1..256"),
    ("-1", "unknown item '-1'"),
    ("engine=0", "engine's threads must be a whole number 1..256, got '0'"),
    ("encoder=two", "encoder's threads must be a whole number 1..256, got 'two'"),
    ("source=", "source's threads must be a whole number 1..256, got ''"),
    ("engine=1,engine=2", "engine is given twice"),
    ("spin=maybe", "spin is on or off, got 'maybe'"),
])
def test_bad_specs_are_one_line(text, phrase):
    with pytest.raises(EdgepipeError) as err:
        parse_threads(text)
    message = str(err.value)
    assert phrase in message and "\n" not in message
    assert message.startswith(f"--threads {text!r}: ")


@pytest.mark.parametrize("text, cores", [("max 100000", None), ("200000 100000", 2.0), ("150000 100000", 1.5),
                                         ("50000 100000", 0.5), ("max", None), ("", None)])
def test_cgroup_v2_cpu_max(text, cores):
    assert parse_cpu_max(text) == cores


@pytest.fixture
def eight_cores(monkeypatch):
    monkeypatch.setattr(threads.os, "sched_getaffinity", lambda pid: set(range(8)), raising=False)


def fake_cgroup(tmp_path, membership: str | None, files: dict[str, str]):
    """A cgroup tree under tmp_path/sys and a /proc/self/cgroup: (root, membership path)."""
    root = tmp_path / "sys"
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    root.mkdir(exist_ok=True)
    proc = tmp_path / "proc-self-cgroup"
    if membership is not None:
        proc.write_text(membership)
    return root, proc


@pytest.mark.parametrize("cpu_max, expected", [
    (None, Cores(8, "affinity 8")),                                  # no cgroup file: the affinity mask
    ("max 100000\n", Cores(8, "affinity 8")),                        # no quota
    ("400000 100000\n", Cores(4, "affinity 8, cgroup quota 4")),     # a quota below the mask
    ("250000 100000\n", Cores(2, "affinity 8, cgroup quota 2.5")),   # rounded down: threads above it are throttled
    ("50000 100000\n", Cores(1, "affinity 8, cgroup quota 0.5")),    # at least one
    ("1600000 100000\n", Cores(8, "affinity 8")),                    # a quota above the mask: the mask
    ("garbage\n", Cores(8, "affinity 8")),                           # unreadable: no quota
])
def test_usable_cores_in_a_container_cgroup_v2(tmp_path, eight_cores, cpu_max, expected):
    """In a container's cgroup namespace the process sees its own cgroup as the root."""
    root, proc = fake_cgroup(tmp_path, "0::/\n", {} if cpu_max is None else {"cpu.max": cpu_max})
    assert usable_cores(root, proc) == expected


def test_a_systemd_unit_quota_and_the_tighter_one_above_it(tmp_path, eight_cores):
    unit = "system.slice/edgepipe-capture.service"
    root, proc = fake_cgroup(tmp_path, f"0::/{unit}\n", {f"{unit}/cpu.max": "300000 100000\n",
                                                          "system.slice/cpu.max": "max 100000\n"})
    assert cgroup_cpu_limit(root, proc) == 3.0  # CPUQuota=300%
    (root / "system.slice" / "cpu.max").write_text("150000 100000\n")
    assert usable_cores(root, proc) == Cores(1, "affinity 8, cgroup quota 1.5")
    root.joinpath("cpu.max").write_text("100000 100000\n")  # the root's own (absent on a host): tighter still
    assert cgroup_cpu_limit(root, proc) == 1.0


def test_usable_cores_from_a_fake_cgroup_v1(tmp_path, eight_cores):
    quota = "cpu,cpuacct/docker/abc/cpu.cfs_quota_us"
    root, proc = fake_cgroup(tmp_path, "4:memory:/docker/abc\n3:cpu,cpuacct:/docker/abc\n0::/\n",
                             {quota: "300000\n", "cpu,cpuacct/docker/abc/cpu.cfs_period_us": "100000\n"})
    assert cgroup_cpu_limit(root, proc) == 3.0
    assert usable_cores(root, proc) == Cores(3, "affinity 8, cgroup quota 3")
    (root / quota).write_text("-1\n")  # v1's "no quota"
    assert usable_cores(root, proc) == Cores(8, "affinity 8")


def test_without_a_membership_file_the_mounts_roots_are_read(tmp_path, eight_cores):
    root, proc = fake_cgroup(tmp_path, None, {"cpu/cpu.cfs_quota_us": "200000\n", "cpu/cpu.cfs_period_us": "100000\n"})
    assert not proc.exists()
    assert usable_cores(root, proc) == Cores(2, "affinity 8, cgroup quota 2")


def test_this_machine_is_counted():
    import os

    cores = usable_cores()
    assert 1 <= cores.count <= len(os.sched_getaffinity(0)) and cores.found.startswith("affinity ")


def test_the_heavy_stage(tmp_path):
    from edgepipe.engines import ENGINES

    plan_file = tmp_path / "ed.plan"
    plan_file.write_bytes(b"")  # a TensorRT plan runs on the GPU: the encoder is the CPU's heavy stage
    assert heavy_stage(str(plan_file), "hevc", "libx265") == "encoder"
    assert heavy_stage("none", "hevc", "libx265") == "encoder"
    assert heavy_stage("none", "hevc", "hevc_nvenc") == "source"
    assert heavy_stage("none", "jpeg", "libx265") == "encoder"
    assert heavy_stage("tvl1", "hevc", "libx265") == "engine"
    assert heavy_stage("ours", "hevc", "libx265") == ("engine" if ENGINES["onnx"].computes_on_cpu() else "encoder")


def test_the_budget_reads_as_one_line_and_as_json(tmp_path, eight_cores):
    b = capture_budget("auto", "tvl1", root=tmp_path, membership=tmp_path / "none")
    assert b.describe() == "engine 7 (idle threads spin), encoder 1, source 1 of 8 cores (auto)"
    assert b.as_dict() == {"policy": "auto", "cores": 8, "cores_found": "affinity 8", "heavy": "engine",
                           "source": 1, "engine": 7, "encoder": 1, "opencv": 1, "engine_spin": True,
                           "engine_frames": 1, "why": ""}
    default = ThreadBudget("defaults", 2, "affinity 2", "engine")
    assert default.describe() == "engine default, encoder default, source default of 2 cores (defaults)"
    assert plan_threads(parse_threads("engine=1"), Cores(2, "affinity 2"), "engine").describe().startswith(
        "engine 1, ")  # one thread: no pool, nothing to spin


@pytest.mark.parametrize("text, cores, heavy, expected", [
    ("auto", 2, "engine", (1, 1, 1, True)),  # 2 cores: each photo is a keyframe, the encoder keeps a core
    ("auto", 1, "engine", (1, 1, 1, False)),
    ("auto", 4, "engine", (1, 3, 1, True)),  # from 3 cores the light stages have theirs already
    ("auto", 2, "encoder", (1, 1, 2, False)),  # engine off the CPU: nothing to take from it
    ("auto,engine=2", 2, "engine", (1, 2, 1, False)),  # a stage the user names is theirs
    ("2", 2, "engine", (1, 1, 1, True)),
    ("defaults", 2, "engine", (None, None, None, None)),
])
def test_a_folder_of_photos_splits_two_cores(text, cores, heavy, expected):
    b = plan_threads(parse_threads(text), Cores(cores, f"affinity {cores}"), heavy, photos=True)
    assert (b.source, b.engine, b.encoder, b.engine_spin) == expected
    assert bool(b.why) == (expected == (1, 1, 1, True) and cores == 2)


@pytest.mark.parametrize("text, cores, heavy, photos, expected", [
    # an engine that may run frames side by side: its cores go to frames at once, a thread each (up to 4)
    ("auto", 2, "engine", False, (1, 2, False)),
    ("auto", 1, "engine", False, (1, 1, False)),
    ("auto", 3, "engine", False, (1, 2, True)),
    ("auto", 8, "engine", False, (1, 4, True)),  # 7 cores: 4 frames, the rest would only add latency
    ("auto", 16, "engine", False, (3, 4, True)),  # 15 cores: 4 frames of 3 threads
    ("auto", 2, "engine", True, (1, 2, False)),  # photos too: two frames on a thread each do not fight the encoder
    ("auto", 2, "encoder", False, (1, 1, False)),  # the engine is not the heavy stage: as before
    ("auto,engine=2", 2, "engine", False, (2, 1, False)),  # threads the user gives go to one frame, as before
    ("auto,engine-frames=1", 2, "engine", False, (2, 1, False)),  # the plan before frames at once
    ("auto,engine-frames=3", 2, "engine", False, (1, 3, False)),
    ("engine=2,engine-frames=2", 4, "engine", False, (2, 2, False)),
    ("defaults", 2, "engine", False, (None, 1, None)),
    ("defaults,engine-frames=2", 2, "engine", False, (None, 2, None)),
])
def test_frames_at_once_for_an_engine_that_allows_them(text, cores, heavy, photos, expected):
    b = plan_threads(parse_threads(text), Cores(cores, f"affinity {cores}"), heavy, photos=photos, concurrent=True)
    assert (b.engine, b.engine_frames, b.engine_spin) == expected
    assert b.as_dict()["engine_frames"] == expected[1]


def test_an_engine_that_may_not_overlap_runs_one_frame(tmp_path, monkeypatch):
    monkeypatch.setattr(threads.os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    none = tmp_path / "none"
    for text in ("auto", "auto,engine-frames=2"):
        b = capture_budget(text, "tvl1", source="clip.mp4", root=tmp_path, membership=none)
        assert (b.engine, b.engine_frames) == (2, 1)
        assert ("one frame at a time" in b.describe()) == ("engine-frames" in text)  # an asked-for K not kept is said
    ours = capture_budget("auto", "ours", source="clip.mp4", root=tmp_path, membership=none)
    if ours.heavy == "engine":  # ONNX Runtime on the CPU
        assert (ours.engine, ours.engine_frames) == (1, 2)
        assert ours.describe() == "engine 1 x 2 frames at once, encoder 1, source 1 of 2 cores (auto)"


def test_the_source_decides_the_photo_split(tmp_path, monkeypatch):
    monkeypatch.setattr(threads.os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    none = tmp_path / "none"
    folder = capture_budget("auto", "tvl1", source="folder:/photos", root=tmp_path, membership=none)
    assert (folder.engine, folder.encoder) == (1, 1)
    assert folder.describe() == ("engine 1, encoder 1, source 1 of 2 cores "
                                 "(auto: photos are coded like keyframes, the encoder keeps a core)")
    for camera in ("/dev/video0", "clip.mp4", "rtsp://cam/1"):
        budget = capture_budget("auto", "tvl1", source=camera, root=tmp_path, membership=none)
        assert (budget.engine, budget.why) == (2, "")
