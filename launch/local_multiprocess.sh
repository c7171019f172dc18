#!/usr/bin/env bash
# Multi-host on one machine: N processes x D fake CPU devices, coordinated by
# jax.distributed over localhost. Exactly what a pod does, minus the network.
#   [CONFIG=configs/default.py] [PYTHON=.venv/bin/python] \
#   launch/local_multiprocess.sh WORKDIR [NUM_PROCESSES=2] [DEVICES_PER_PROCESS=4] [--config.x=v ...]
# Prints process 0's log (WORKDIR.process_0.log; a rerun moves the previous one to .log.prev),
# then the exit status and the end of the log of every process that failed.
set -euo pipefail
workdir=${1:?usage: $0 WORKDIR [NUM_PROCESSES] [DEVICES_PER_PROCESS] [overrides...]}
nproc=${2:-2}
ndev=${3:-4}
shift $(( $# < 3 ? $# : 3 ))
python=${PYTHON:-.venv/bin/python}  # what `make install` set up
mkdir -p "$(dirname "$workdir")"
# A port the OS reports free (two launches at once, e.g. parallel tests, never share one).
port=${PORT:-$("$python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')}
pids=()
for ((i = 0; i < nproc; i++)); do
  # A rerun (a resume) keeps the previous run's log, e.g. the one that says why it stopped.
  if [[ -f "$workdir.process_$i.log" ]]; then mv -f "$workdir.process_$i.log" "$workdir.process_$i.log.prev"; fi
  "$python" -m t5x_lite.train --config="${CONFIG:-configs/default.py}" --workdir="$workdir" \
    --distributed=manual --coordinator_address="127.0.0.1:$port" --num_processes="$nproc" \
    --process_id="$i" --num_cpu_devices="$ndev" "$@" > "$workdir.process_$i.log" 2>&1 &
  pids+=($!)
done
status=0
codes=()
for pid in "${pids[@]}"; do
  code=0
  wait "$pid" || code=$?
  codes+=("$code")
  (( code == 0 )) || status=$code
done
cat "$workdir.process_0.log"
for ((i = 0; i < nproc; i++)); do
  if (( codes[i] != 0 )); then
    echo "--- process $i exited with status ${codes[i]}; the end of $workdir.process_$i.log:" >&2
    tail -n 40 "$workdir.process_$i.log" >&2
  fi
done
exit $status
