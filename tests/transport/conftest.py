"""Fixtures shared by the transport tests."""
from __future__ import annotations

import pytest

from edgepipe.transport.security import write_keypair


@pytest.fixture
def keys(tmp_path):
    """A folder with the CURVE key pairs of a capture, its allowed monitor and a stranger."""
    d = tmp_path / "keys"
    for name in ("capture", "monitor", "stranger"):
        write_keypair(d, name)
    return d
