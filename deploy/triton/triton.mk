# `make triton-venv`: the venv the real-server Triton test runs its server from (see docs/triton.md).
# Included by the Makefile with: include deploy/triton/triton.mk
.PHONY: triton-venv
triton-venv:
	deploy/triton/make-venv.sh
