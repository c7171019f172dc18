#!/usr/bin/env bash
# TPU pod slice: the same command on every worker; jax.distributed finds the topology.
#   TPU_NAME=my-pod ZONE=us-central2-b launch/tpu_pod.sh gs://bucket/run --config=configs/t5_v1_1.py:base
# Assumes the repository is checked out at ~/t5x_lite on every worker (e.g. via `git clone`
# in a startup script) and `make install` has run there.
set -euo pipefail
workdir=${1:?usage: TPU_NAME=... ZONE=... $0 WORKDIR [train flags...]}
shift
# Each flag quoted for the worker's (bash) shell, so overrides with spaces, quotes or
# parentheses (e.g. --config.partitioning.logical_axis_rules=...) arrive as typed.
args=$(printf ' %q' "--workdir=$workdir" "$@")
gcloud compute tpus tpu-vm ssh "${TPU_NAME:?set TPU_NAME}" --zone="${ZONE:?set ZONE}" \
  --worker=all --command="cd ~/t5x_lite && .venv/bin/python -m t5x_lite.train --distributed=auto$args"
