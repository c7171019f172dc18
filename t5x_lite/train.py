"""Pretrain or fine-tune a model (the loop is `train_loop.train`):

    python -m t5x_lite.train --config=CFG --workdir=DIR [--config.x=v ...]

What it resumes from, writes and prints, and its multi-host flags: docs/cli.md.
"""
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
