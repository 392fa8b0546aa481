"""Files written whole or not at all, and files named by their content.

Every writer of a file another process may read while it is being written (a report a dashboard polls, a
checkpoint a resumed run reloads, a model a server loads, a CURVE key) goes through `atomic_path`: the
bytes go to a hidden temporary file in the same directory (so the rename never crosses a file system),
and `os.replace` then swaps it in in one step. A reader sees the old file or the new one, never half of
one; a writer that fails or is killed leaves the old file as it was and removes its temporary file.
"""
from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_path(path: str | os.PathLike, *, suffix: str = ".tmp", mode: int | None = None) -> Iterator[Path]:
    """Yield a temporary path next to `path`; when the block ends without error, it replaces `path`.

    For writers that want a file name (torch.save, np.savez, an ONNX exporter, csv). `suffix` ends the
    temporary name (np.savez appends ".npz" to any other ending); `mode`, when given, is the new file's
    permission bits, set before it becomes visible under its real name (the umask may have narrowed them).
    Whatever the block raises, the temporary file is removed.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}{suffix}")
    try:
        yield tmp
        if mode is not None:
            os.chmod(tmp, mode)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write(path: str | os.PathLike, data: str | bytes, *, mode: int | None = None) -> Path:
    """Write `data` (text as UTF-8, or bytes) to `path` atomically; returns the path.

    With `mode` the temporary file is created with those permissions from the start (O_EXCL), so a secret
    is never readable by others, not even for the moment before the rename.
    """
    path = Path(path)
    raw = data.encode() if isinstance(data, str) else bytes(data)
    with atomic_path(path, mode=mode) as tmp:
        flags = os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if mode is None else os.O_EXCL)
        fd = os.open(tmp, flags, 0o666 if mode is None else mode)
        with os.fdopen(fd, "wb") as f:
            f.write(raw)
    return path


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """The hex SHA-256 of a file's bytes, read in chunks (plans and models may be large)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()
