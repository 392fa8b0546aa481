"""core/files.py: whole-or-nothing writes and content hashes."""
from __future__ import annotations

import hashlib
import stat
from pathlib import Path

import pytest

from edgepipe.core.files import atomic_path, atomic_write, sha256_file


def test_atomic_write_text_and_bytes_leave_no_temporary_file(tmp_path: Path) -> None:
    path = tmp_path / "report.json"
    atomic_write(path, "{}\n")
    assert path.read_text() == "{}\n"
    atomic_write(path, b"\x00\x01")
    assert path.read_bytes() == b"\x00\x01"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.json"]


def test_a_failed_writer_keeps_the_old_file_and_removes_its_temporary(tmp_path: Path) -> None:
    path = tmp_path / "model.pt"
    path.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_path(path) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed mid-write")
    assert path.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.pt"]


def test_mode_is_set_whatever_the_umask(tmp_path: Path) -> None:
    secret, public = tmp_path / "k.key_secret", tmp_path / "k.key"
    atomic_write(secret, "s", mode=0o600)
    atomic_write(public, "p", mode=0o644)
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600
    assert stat.S_IMODE(public.stat().st_mode) == 0o644


def test_suffix_ends_the_temporary_name(tmp_path: Path) -> None:
    with atomic_path(tmp_path / "r.npz", suffix=".tmp.npz") as tmp:
        assert tmp.parent == tmp_path and tmp.name.startswith(".r.npz.") and tmp.name.endswith(".tmp.npz")
        tmp.write_bytes(b"x")
    assert (tmp_path / "r.npz").read_bytes() == b"x"


def test_sha256_file_matches_hashlib_across_chunks(tmp_path: Path) -> None:
    path = tmp_path / "blob"
    data = bytes(range(256)) * 5000
    path.write_bytes(data)
    assert sha256_file(path, chunk=4096) == sha256_file(path) == hashlib.sha256(data).hexdigest()
