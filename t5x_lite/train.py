"""Pretrain or fine-tune a model (the loop is `train_loop.train`):

    python -m t5x_lite.train --config=CFG --workdir=DIR [--config.x=v ...]

What it resumes from, writes and prints, and its multi-host flags: docs/cli.md.
"""
import sys
import threading
import time

from absl import flags

from t5x_lite import cli

FLAGS = flags.FLAGS


def _define_flags():
  cli.define_common_flags()
  flags.DEFINE_float('peak_flops', 0.0, 'Peak FLOP/s per device for MFU (0 = from the table).')
  flags.DEFINE_enum('distributed', 'off', ['off', 'auto', 'manual'],
                    'auto: jax.distributed cluster detection (TPU, SLURM); manual: use '
                    '--coordinator_address, --num_processes, --process_id.')
  flags.DEFINE_string('coordinator_address', None, 'host:port of process 0 (manual mode).')
  flags.DEFINE_integer('num_processes', None, 'Number of processes (manual mode).')
  flags.DEFINE_integer('process_id', None, 'This process (manual mode).')


def initialize_distributed(mode: str):
  import jax
  if mode == 'auto':
    jax.distributed.initialize(initialization_timeout=120, heartbeat_timeout_seconds=30)
  elif mode == 'manual':
    missing = [n for n in ('coordinator_address', 'num_processes', 'process_id')
               if getattr(FLAGS, n) is None]
    if missing:
      raise ValueError(f'--distributed=manual needs --{missing[0]}.')
    jax.distributed.initialize(FLAGS.coordinator_address, FLAGS.num_processes,
                               FLAGS.process_id, initialization_timeout=120,
                               heartbeat_timeout_seconds=30)
  else:
    return
  from jax._src import distributed  # its client: JAX has no public handle (xla_bridge uses this)
  state = distributed.global_state
  if state.num_processes > 1:
    _PeerFailures(state).start()


class _PeerFailures:
  """A process of a multi-process run that fails stops the others at once, with one line.

  An error only one process hits (a bad input line only its streams read, a file missing on
  one host) left the others blocked in the step's collective: the failed process waited in
  jax.distributed's shutdown barrier, which they never reach, until both aborted 5 minutes
  later. Now the failed process, after its error line, writes that line to the coordination
  service's key-value store (`cli.on_failure`) and exits without the barrier (cli.run's exit
  path); every other process polls the store from a daemon thread (twice a second) and, once
  a peer's line is there, says so in one line and exits 1 (os._exit: its main thread is
  inside a collective that will never finish). A checkpoint being written is then left as a
  SIGKILL leaves it: never committed, never taken for a checkpoint. Process 0 hosts the
  coordination service, so when it is the one that fails it waits (up to `ACK_TIMEOUT_S`)
  until every peer has read its line. A process that dies without a word
  (SIGKILL, a lost host) still stops the others through the missed heartbeats (30 s)."""

  FAILED = 't5x_lite/failed/'    # + process id: that process's error line
  STOPPED = 't5x_lite/stopped/'  # + process id: stopped because a peer failed
  POLL_S = 0.5
  ACK_TIMEOUT_S = 10.0

  def __init__(self, state):  # jax.distributed's, just initialised
    self.state, self.client = state, state.client
    self.process_id, self.num_processes = state.process_id, state.num_processes
    self.hosts_service = state.service is not None
    self.lock = threading.Lock()  # the first of a failure here and a peer's wins
    self.done = False

  def start(self) -> None:
    cli.on_failure(self.fail)
    threading.Thread(target=self._watch, name='t5x_lite-peer-failures', daemon=True).start()

  def _entries(self, prefix: str) -> dict:
    return {int(key.rsplit('/', 1)[1]): value
            for key, value in self.client.key_value_dir_get(prefix)}

  def _watch(self) -> None:
    while True:
      time.sleep(self.POLL_S)
      try:
        failed = self._entries(self.FAILED)
      except Exception:  # retried, unless the run's end shut jax.distributed down
        if self.state.client is not self.client:
          return
        continue
      failed.pop(self.process_id, None)
      if not failed:
        continue
      with self.lock:
        if self.done:  # this process failed too, and is on its way out
          return
        self.done = True
      peer = min(failed)
      print(f'error: process {peer} of {self.num_processes} failed, so process '
            f'{self.process_id} stops too: {failed[peer]}', file=sys.stderr, flush=True)
      try:
        self.client.key_value_set(self.STOPPED + str(self.process_id), str(peer))
      except Exception:
        pass
      cli.flush_and_exit(1)

  def fail(self, error_line: str) -> None:
    """This process failed: `error_line` goes to the others (cli runs this before exiting)."""
    with self.lock:
      if self.done:  # a peer failed first and this process is already stopping
        return
      self.done = True
    self.client.key_value_set(self.FAILED + str(self.process_id), error_line)
    if not self.hosts_service:
      return
    deadline = time.monotonic() + self.ACK_TIMEOUT_S
    while time.monotonic() < deadline:
      told = set(self._entries(self.FAILED)) | set(self._entries(self.STOPPED))
      if len(told) >= self.num_processes:
        return
      time.sleep(0.05)


def main():
  from t5x_lite import train_loop
  if not 0 <= FLAGS.peak_flops < float('inf'):  # NaN fails too
    raise ValueError(f'--peak_flops={FLAGS.peak_flops} must be >= 0 and finite (0 = from the '
                     'table of known devices).')
  initialize_distributed(FLAGS.distributed)
  train_loop.train(FLAGS.config, FLAGS.workdir, FLAGS.peak_flops, FLAGS.show_predictions)


if __name__ == '__main__':
  _define_flags()
  cli.run(main)
