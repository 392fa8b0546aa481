"""edgepipe: a learned, recognition-aware pre-transform in front of a standard video codec."""

__version__ = "0.1.0"
