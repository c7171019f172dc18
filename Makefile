# The README's two commands: `make demo` (pretrain the tiny T5 on the shipped corpus) and
# `make test` (the whole test suite on CPU, two workers). Both install pinned dependencies
# into .venv.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: demo test install install-test install-cuda install-tpu clean

$(VENV)/.runtime: requirements.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -r requirements.txt
	# tensorflow-text's wheel requires `tensorflow`; beside tensorflow-cpu it imports and works.
	$(PY) -m pip install --quiet --no-deps tensorflow-text==2.21.1
	$(PY) -m pip install --quiet --no-deps -e .
	touch $@

$(VENV)/.test: $(VENV)/.runtime requirements-test.txt
	$(PY) -m pip install --quiet -r requirements-test.txt
	touch $@

install: $(VENV)/.runtime
install-test: $(VENV)/.test

# Accelerator jaxlib plugins at requirements.txt's JAX version, for the cluster launchers
# (launch/slurm_gpu.sbatch, launch/tpu_pod.sh); `install` alone runs JAX on the CPU.
JAX_VERSION := $(shell sed -n 's/^jax==//p' requirements.txt)
install-cuda: $(VENV)/.runtime
	$(PY) -m pip install --quiet "jax[cuda12]==$(JAX_VERSION)"
install-tpu: $(VENV)/.runtime
	$(PY) -m pip install --quiet "jax[tpu]==$(JAX_VERSION)"

demo: $(VENV)/.runtime
	$(PY) -m t5x_lite.train --config=configs/default.py --workdir=runs/default

# Two workers (pytest-xdist), each test file whole on one worker (--dist loadfile): a file's
# module fixtures (a trained workdir, a reference run) are built once; the suite's many
# subprocess start-ups and compiles overlap on 2 cores. TEST_WORKERS=0: one process, serial.
TEST_WORKERS ?= 2

test: $(VENV)/.test
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile tests

clean:
	rm -rf $(VENV) runs
