# The two commands the README gives: `make demo` (main job) and `make test` (tests).
# Each creates the virtual environment when it is missing.
PYTHON ?= python3
VENV ?= .venv
# Index torch comes from; empty: pip's own configuration. Plain PyPI serves the multi-GB CUDA build on
# Linux: TORCH_INDEX=https://download.pytorch.org/whl/cpu gets the CPU build.
TORCH_INDEX ?=
PY := $(VENV)/bin/python
STAMP := $(VENV)/.edgepipe-installed

.PHONY: demo test bench install clean triton-venv

$(STAMP): setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch first, pinned and from TORCH_INDEX when set, so the range in the extras pulls no other build.
	$(PY) -m pip install -q torch==2.13.0 $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	$(PY) -m pip install -q -e '.[all,dev]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/edgepipe demo

test: $(STAMP)
	$(PY) -m pytest -q

bench: $(STAMP)
	$(PY) bench/pipeline_bench.py --out bench/results/pipeline.json

# The venv (Debian's python3 + nvidia-pytriton) the real-server Triton test serves from (docs/triton.md).
triton-venv:
	deploy/triton/make-venv.sh

clean:
	rm -rf $(VENV) build *.egg-info
