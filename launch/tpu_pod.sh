#!/usr/bin/env bash
# TPU pod slice: the same command on every worker; jax.distributed finds the topology.
#   TPU_NAME=my-pod ZONE=us-central2-b launch/tpu_pod.sh /mnt/shared/runs/t5-base \
#     --config=configs/t5_v1_1.py:base --config.train.batch_size=256
# Assumes the repository is checked out at ~/t5x_lite on every worker (e.g. via `git clone`
# in a startup script) and `make install-tpu` has run there (`make install` alone gives a
# CPU-only jaxlib). WORKDIR must be one directory every worker sees (Filestore / NFS, or a
# bucket mounted with gcsfuse): each host writes its part of every checkpoint there.
# gs:// URLs are refused (the run's files are written with local file APIs).
# train.batch_size must divide by the slice's chip count, and data.num_virtual_shards (4)
# by its host count: set it to the host count (or a multiple) on slices of more hosts.
set -euo pipefail
workdir=${1:?usage: TPU_NAME=... ZONE=... $0 WORKDIR [train flags...]}
shift
# Each flag quoted for the worker's (bash) shell, so overrides with spaces, quotes or
# parentheses (e.g. --config.partitioning.logical_axis_rules=...) arrive as typed.
args=$(printf ' %q' "--workdir=$workdir" "$@")
gcloud compute tpus tpu-vm ssh "${TPU_NAME:?set TPU_NAME}" --zone="${ZONE:?set ZONE}" \
  --worker=all --command="cd ~/t5x_lite && .venv/bin/python -m t5x_lite.train --distributed=auto$args"
