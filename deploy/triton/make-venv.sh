#!/bin/sh
# The venv that tests/recognition/test_triton.py serves a real Triton server from: PyPI's nvidia-pytriton
# (a tritonserver binary with the Python backend) plus ONNX Runtime, on Debian's /usr/bin/python3.
# pyenv's Python does not do: pytriton's Python backend failed there with
# "'_thread.RLock' object has no attribute '_recursion_count'".
#
#   deploy/triton/make-venv.sh [VENV]      default: $EDGEPIPE_TRITON_VENV, else ${EDGEPIPE_CACHE:-~/.cache/edgepipe}/triton-venv
#
# About 30 s and 450 MB from a package mirror; only the package registry is needed (no model hub).
set -eu
PYTHON=${TRITON_PYTHON:-/usr/bin/python3}
CACHE=${EDGEPIPE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/edgepipe}
VENV=${1:-${EDGEPIPE_TRITON_VENV:-$CACHE/triton-venv}}
PYTRITON_VERSION=${PYTRITON_VERSION:-0.7.0}

if [ ! -x "$PYTHON" ]; then
    echo "error: $PYTHON not found: install Debian/Ubuntu's python3 and python3-venv (or set TRITON_PYTHON)" >&2
    exit 1
fi
if ! "$PYTHON" -c 'import ensurepip' 2>/dev/null; then
    echo "error: $PYTHON has no venv support: apt-get install python3-venv" >&2
    exit 1
fi
# a venv cannot be moved once made (absolute paths inside): build in place, mark it complete at the end
rm -rf "$VENV"
"$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --disable-pip-version-check "nvidia-pytriton==$PYTRITON_VERSION" onnxruntime numpy
"$VENV/bin/python" -c 'import pytriton.triton, onnxruntime, tritonclient.grpc'  # fails here, not in the test
touch "$VENV/.edgepipe-triton-venv"  # the test uses the venv only with this mark
echo "triton test venv: $VENV ($(du -sh "$VENV" | cut -f1))"
